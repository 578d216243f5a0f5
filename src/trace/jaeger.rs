//! Fetching one trace from Jaeger: the stable `GET /api/v3/traces/{id}` (OTLP
//! JSON), falling back to the UI's `GET /api/traces/{id}` (µs times, tags,
//! processes), converted to OTLP resource spans.

use super::backend::{get_found, BackendError, Fetched};
use super::span::decode_json;
use crate::client::traceparent::{unhex, TraceId};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as ProtoSpan};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

/// A Jaeger query service (`--jaeger-url`, e.g. `http://localhost:16686`).
pub struct JaegerClient {
    http: reqwest::Client,
    base: String,
    /// Set once the stable API turned out not to exist on this server.
    ui_api_only: AtomicBool,
}

impl JaegerClient {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            ui_api_only: AtomicBool::new(false),
        }
    }

    /// One look for a trace. `Ok(None)` while Jaeger does not have it.
    pub async fn fetch(&self, trace_id: &TraceId) -> Fetched {
        if !self.ui_api_only.load(Ordering::Relaxed) {
            match self.fetch_v3(trace_id).await? {
                V3::Found(spans) => return Ok(Some(spans)),
                V3::NotYet => return Ok(None),
                V3::NoSuchApi => self.ui_api_only.store(true, Ordering::Relaxed),
            }
        }
        self.fetch_ui(trace_id).await
    }

    async fn fetch_v3(&self, trace_id: &TraceId) -> Result<V3, BackendError> {
        let url = format!("{}/api/v3/traces/{trace_id}", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| BackendError::unreachable(&url, &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| BackendError::unreachable(&url, &e))?;
        if status == reqwest::StatusCode::NOT_FOUND {
            // Jaeger's own "not found" is a JSON error; anything else means no such route.
            let is_jaeger_error = serde_json::from_slice::<Value>(&body)
                .ok()
                .is_some_and(|v| v.get("error").is_some());
            return Ok(if is_jaeger_error {
                V3::NotYet
            } else {
                V3::NoSuchApi
            });
        }
        if !status.is_success() {
            return Err(BackendError::status(&url, status));
        }
        #[derive(Deserialize)]
        struct Envelope {
            result: Value,
        }
        let envelope: Envelope =
            serde_json::from_slice(&body).map_err(|e| BackendError::unreadable(&url, e))?;
        let traces = decode_json(envelope.result.to_string().as_bytes())
            .map_err(|e| BackendError::unreadable(&url, e))?;
        Ok(if traces.resource_spans.is_empty() {
            V3::NotYet
        } else {
            V3::Found(traces.resource_spans)
        })
    }

    async fn fetch_ui(&self, trace_id: &TraceId) -> Fetched {
        let url = format!("{}/api/traces/{trace_id}", self.base);
        let Some(body) = get_found(&self.http, &url, None).await? else {
            return Ok(None);
        };
        let envelope: UiEnvelope =
            serde_json::from_slice(&body).map_err(|e| BackendError::unreadable(&url, e))?;
        let mut resource_spans = Vec::new();
        for trace in &envelope.data {
            resource_spans
                .extend(ui_trace_to_otlp(trace).map_err(|e| BackendError::unreadable(&url, e))?);
        }
        Ok((!resource_spans.is_empty()).then_some(resource_spans))
    }
}

enum V3 {
    Found(Vec<ResourceSpans>),
    NotYet,
    NoSuchApi,
}

/// `{"data":[trace],"errors":...}` of the UI API.
#[derive(Debug, Deserialize)]
pub struct UiEnvelope {
    #[serde(default)]
    pub data: Vec<UiTrace>,
}

/// One trace in Jaeger's UI model.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UiTrace {
    #[serde(default)]
    pub spans: Vec<UiSpan>,
    #[serde(default)]
    pub processes: HashMap<String, UiProcess>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UiSpan {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
    pub operation_name: String,
    #[serde(default)]
    pub references: Vec<UiReference>,
    /// Microseconds since the epoch.
    pub start_time: u64,
    /// Microseconds.
    pub duration: u64,
    #[serde(default)]
    pub tags: Vec<UiTag>,
    #[serde(rename = "processID", default)]
    pub process_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UiReference {
    pub ref_type: String,
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UiProcess {
    pub service_name: String,
    #[serde(default)]
    pub tags: Vec<UiTag>,
}

#[derive(Debug, Deserialize)]
pub struct UiTag {
    pub key: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    pub value: Value,
}

/// An id in a Jaeger UI trace that is not a hex id of the right size.
#[derive(Debug, thiserror::Error)]
pub enum BadId {
    #[error("id `{0}` does not fit {1} bytes")]
    Size(String, usize),
    #[error("id `{0}` is not hex")]
    NotHex(String),
}

/// Hex id of `bytes` bytes; Jaeger drops leading zeros, so shorter ids are padded.
fn padded_id(text: &str, bytes: usize) -> Result<Vec<u8>, BadId> {
    let width = bytes * 2;
    if text.is_empty() || text.len() > width {
        return Err(BadId::Size(text.to_string(), bytes));
    }
    unhex(&format!("{text:0>width$}")).ok_or_else(|| BadId::NotHex(text.to_string()))
}

fn tag_value(tag: &UiTag) -> AnyValue {
    let value = match (tag.kind.as_str(), &tag.value) {
        ("int64", Value::Number(n)) => n.as_i64().map(any_value::Value::IntValue),
        ("int64", Value::String(s)) => s.parse().ok().map(any_value::Value::IntValue),
        ("float64", Value::Number(n)) => n.as_f64().map(any_value::Value::DoubleValue),
        ("bool", Value::Bool(b)) => Some(any_value::Value::BoolValue(*b)),
        ("bool", Value::String(s)) => s.parse().ok().map(any_value::Value::BoolValue),
        _ => None,
    };
    let value = value.unwrap_or_else(|| {
        any_value::Value::StringValue(match &tag.value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    });
    AnyValue { value: Some(value) }
}

fn key_value(tag: &UiTag) -> KeyValue {
    KeyValue {
        key: tag.key.clone(),
        value: Some(tag_value(tag)),
        ..KeyValue::default()
    }
}

fn tag_text<'a>(tags: &'a [UiTag], keys: &[&str]) -> Option<&'a str> {
    tags.iter()
        .find(|t| keys.contains(&t.key.as_str()))
        .and_then(|t| t.value.as_str())
}

/// Tags Jaeger makes up from OTLP fields; they go back to those fields.
const SYNTHETIC_TAGS: [&str; 5] = [
    "span.kind",
    "otel.scope.name",
    "otel.scope.version",
    "otel.library.name",
    "otel.library.version",
];

/// Converts one UI-model trace to OTLP resource spans (one per process and scope).
pub fn ui_trace_to_otlp(trace: &UiTrace) -> Result<Vec<ResourceSpans>, BadId> {
    let mut grouped: BTreeMap<(String, String, String), Vec<ProtoSpan>> = BTreeMap::new();
    for span in &trace.spans {
        let trace_id = padded_id(&span.trace_id, 16)?;
        let parent = span
            .references
            .iter()
            .filter(|r| r.ref_type == "CHILD_OF")
            .find(|r| padded_id(&r.trace_id, 16).is_ok_and(|t| t == trace_id))
            .map(|r| padded_id(&r.span_id, 8))
            .transpose()?;
        let kind = match tag_text(&span.tags, &["span.kind"]) {
            Some("server") => SpanKind::Server,
            Some("client") => SpanKind::Client,
            Some("producer") => SpanKind::Producer,
            Some("consumer") => SpanKind::Consumer,
            Some("internal") => SpanKind::Internal,
            _ => SpanKind::Unspecified,
        };
        let scope_name =
            tag_text(&span.tags, &["otel.scope.name", "otel.library.name"]).unwrap_or_default();
        let scope_version = tag_text(&span.tags, &["otel.scope.version", "otel.library.version"])
            .unwrap_or_default();
        let start = span.start_time.saturating_mul(1000);
        let proto = ProtoSpan {
            trace_id,
            span_id: padded_id(&span.span_id, 8)?,
            parent_span_id: parent.unwrap_or_default(),
            name: span.operation_name.clone(),
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start.saturating_add(span.duration.saturating_mul(1000)),
            attributes: span
                .tags
                .iter()
                .filter(|t| !SYNTHETIC_TAGS.contains(&t.key.as_str()))
                .map(key_value)
                .collect(),
            ..ProtoSpan::default()
        };
        grouped
            .entry((
                span.process_id.clone(),
                scope_name.to_string(),
                scope_version.to_string(),
            ))
            .or_default()
            .push(proto);
    }
    Ok(grouped
        .into_iter()
        .map(|((process_id, scope_name, scope_version), spans)| {
            let process = trace.processes.get(&process_id);
            let mut attributes: Vec<KeyValue> = process
                .map(|p| p.tags.iter().map(key_value).collect())
                .unwrap_or_default();
            if let Some(process) = process {
                attributes.push(KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(process.service_name.clone())),
                    }),
                    ..KeyValue::default()
                });
            }
            ResourceSpans {
                resource: Some(Resource {
                    attributes,
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: scope_name,
                        version: scope_version,
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::spans_of;

    fn fixture(name: &str) -> Vec<u8> {
        crate::testing::fixture_bytes(&format!("jaeger/{name}"))
    }

    #[test]
    fn ui_and_v3_views_of_one_trace_agree() {
        let capture: Value =
            serde_json::from_slice(&fixture("ui-parser-parity-capture.json")).unwrap();
        let legacy: UiEnvelope = serde_json::from_value(capture["legacy"].clone()).unwrap();
        let from_ui = spans_of(&ui_trace_to_otlp(&legacy.data[0]).unwrap()).unwrap();
        let v3 = decode_json(capture["v3"]["result"].to_string().as_bytes()).unwrap();
        let from_v3 = spans_of(&v3.resource_spans).unwrap();
        assert_eq!(from_ui.len(), from_v3.len());
        for span in &from_v3 {
            let twin = from_ui.iter().find(|s| s.span_id == span.span_id).unwrap();
            assert_eq!(twin.trace_id, span.trace_id);
            assert_eq!(twin.parent_span_id, span.parent_span_id);
            assert_eq!(twin.name, span.name);
            assert_eq!(twin.kind, span.kind);
            assert_eq!(twin.start_unix_ns, span.start_unix_ns);
            assert_eq!(twin.end_unix_ns, span.end_unix_ns);
            assert_eq!(twin.service_name, span.service_name);
        }
    }

    #[test]
    fn short_ids_are_padded_and_tag_types_kept() {
        let trace: UiTrace = serde_json::from_slice(&fixture("ui_01.json")).unwrap();
        let spans = spans_of(&ui_trace_to_otlp(&trace).unwrap()).unwrap();
        assert_eq!(spans.len(), 5);
        assert!(spans
            .iter()
            .all(|s| s.trace_id.to_string() == "00000000000000000000000000000001"));
        let tagged = spans
            .iter()
            .find(|s| s.attributes.contains_key("peer.ipv4"))
            .unwrap();
        assert_eq!(tagged.attributes["peer.ipv4"], 23456);
        assert_eq!(tagged.attributes["error"], true);
        assert_eq!(tagged.attributes["temperature"], 72.5);
        assert_eq!(
            tagged.service_name.as_deref(),
            Some("service-x"),
            "process p1"
        );
        let five = spans
            .iter()
            .find(|s| s.span_id == [0, 0, 0, 0, 0, 0, 0, 5])
            .unwrap();
        assert_eq!(
            five.service_name.as_deref(),
            Some("service-y"),
            "process p2"
        );
        // A CHILD_OF into another trace is not a parent; the one in this trace is.
        let four = spans
            .iter()
            .find(|s| s.span_id == [0, 0, 0, 0, 0, 0, 0, 4])
            .unwrap();
        assert_eq!(four.parent_span_id, Some([0, 0, 0, 0, 0, 0, 0, 2]));
    }

    #[test]
    fn otlp_translation_output_reads_back() {
        let envelope: UiEnvelope =
            serde_json::from_slice(&fixture("otlp2jaeger-out.json")).unwrap();
        let spans = spans_of(&ui_trace_to_otlp(&envelope.data[0]).unwrap()).unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].kind, SpanKind::Server);
        assert_eq!(spans[0].scope_name, "telemetrygen");
        assert!(!spans[0].attributes.contains_key("span.kind"));
        assert_eq!(spans[0].end_unix_ns - spans[0].start_unix_ns, 123_000);
    }

    #[test]
    fn bad_ids_are_errors() {
        assert!(padded_id("xyz", 8).is_err());
        assert!(padded_id("", 8).is_err());
        assert!(padded_id("00000000000000000", 8).is_err());
        assert_eq!(padded_id("ff", 8).unwrap(), vec![0, 0, 0, 0, 0, 0, 0, 255]);
    }
}
