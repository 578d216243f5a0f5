//! The normalized server span every other trace module works on, built from
//! OpenTelemetry protobuf types, plus decoding of OTLP export requests from
//! protobuf bytes and OTLP/JSON and the `spans.jsonl` line format.

use crate::client::traceparent::{hex, TraceId};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span as ProtoSpan};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// One span with ids as fixed-size arrays and attributes as JSON values.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// Integers and doubles as JSON numbers, strings, bools, arrays, key-value lists as objects.
    pub attributes: Map<String, Value>,
    /// The resource's `service.name`.
    pub service_name: Option<String>,
    /// The instrumentation scope's name (empty when the sender gave none).
    pub scope_name: String,
}

/// Why an export request or a span could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an OTLP protobuf message: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("not OTLP/JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("span `{span}`: {field} has {len} bytes, expected {expected}")]
    IdLength {
        span: String,
        field: &'static str,
        len: usize,
        expected: usize,
    },
}

impl Span {
    /// Builds a span from its OTLP parts; an id of the wrong length is an error
    /// (an empty parent id means "no parent").
    pub fn from_proto(
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        span: &ProtoSpan,
    ) -> Result<Self, DecodeError> {
        let id_error = |field, len, expected| DecodeError::IdLength {
            span: span.name.clone(),
            field,
            len,
            expected,
        };
        let trace_id: [u8; 16] = span
            .trace_id
            .as_slice()
            .try_into()
            .map_err(|_| id_error("traceId", span.trace_id.len(), 16))?;
        let span_id: [u8; 8] = span
            .span_id
            .as_slice()
            .try_into()
            .map_err(|_| id_error("spanId", span.span_id.len(), 8))?;
        let parent_span_id = if span.parent_span_id.is_empty() {
            None
        } else {
            Some(
                span.parent_span_id
                    .as_slice()
                    .try_into()
                    .map_err(|_| id_error("parentSpanId", span.parent_span_id.len(), 8))?,
            )
        };
        let attributes = span
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), any_value_to_json(kv.value.as_ref())))
            .collect();
        let service_name = resource.and_then(|r| {
            r.attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
        });
        Ok(Self {
            trace_id: TraceId::from_bytes(trace_id),
            span_id,
            parent_span_id,
            name: span.name.clone(),
            kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
            start_unix_ns: span.start_time_unix_nano,
            end_unix_ns: span.end_time_unix_nano,
            attributes,
            service_name,
            scope_name: scope.map(|s| s.name.clone()).unwrap_or_default(),
        })
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// End minus start (0 when the end is before the start).
    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }

    /// A numeric attribute (an int, a double, or a string holding a number).
    pub fn attr_f64(&self, key: &str) -> Option<f64> {
        attr_f64(&self.attributes, key)
    }

    /// A non-negative integer attribute (an int, or a string holding one).
    pub fn attr_u64(&self, key: &str) -> Option<u64> {
        attr_u64(&self.attributes, key)
    }

    /// A string attribute.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        attr_str(&self.attributes, key)
    }
}

/// A numeric attribute (an int, a double, or a string holding a number).
pub fn attr_f64(attributes: &Map<String, Value>, key: &str) -> Option<f64> {
    match attributes.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A non-negative integer attribute (an int, or a string holding one).
pub fn attr_u64(attributes: &Map<String, Value>, key: &str) -> Option<u64> {
    match attributes.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A string attribute.
pub fn attr_str<'a>(attributes: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    attributes.get(key)?.as_str()
}

/// An OTLP attribute value as JSON. Bytes become lower-case hex; a double that
/// JSON cannot hold (NaN, infinity) becomes its text.
pub fn any_value_to_json(value: Option<&AnyValue>) -> Value {
    let Some(value) = value.and_then(|v| v.value.as_ref()) else {
        return Value::Null;
    };
    match value {
        any_value::Value::StringValue(s) => Value::String(s.clone()),
        any_value::Value::BoolValue(b) => Value::Bool(*b),
        any_value::Value::IntValue(i) => Value::from(*i),
        any_value::Value::DoubleValue(d) => serde_json::Number::from_f64(*d)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(d.to_string())),
        any_value::Value::ArrayValue(array) => Value::Array(
            array
                .values
                .iter()
                .map(|v| any_value_to_json(Some(v)))
                .collect(),
        ),
        any_value::Value::KvlistValue(list) => Value::Object(
            list.values
                .iter()
                .map(|kv| (kv.key.clone(), any_value_to_json(kv.value.as_ref())))
                .collect(),
        ),
        any_value::Value::BytesValue(bytes) => Value::String(hex(bytes)),
        // An index into a profiles string table, which spans never carry: kept as is.
        any_value::Value::StringValueStrindex(index) => {
            serde_json::json!({ "stringValueStrindex": index })
        }
    }
}

/// Decodes an export request from protobuf bytes (ids are checked by [`spans_of`]).
pub fn decode_protobuf(bytes: &[u8]) -> Result<ExportTraceServiceRequest, DecodeError> {
    Ok(ExportTraceServiceRequest::decode(bytes)?)
}

/// Decodes an export request from OTLP/JSON (hex ids in either case, 64-bit
/// integers as strings or numbers).
pub fn decode_json(bytes: &[u8]) -> Result<ExportTraceServiceRequest, DecodeError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Every span of some resource spans, normalized; the first span with a bad id
/// makes the whole batch an error, so a malformed request is refused as a whole.
pub fn spans_of(resource_spans: &[ResourceSpans]) -> Result<Vec<Span>, DecodeError> {
    let mut spans = Vec::new();
    for resource_span in resource_spans {
        for scope_spans in &resource_span.scope_spans {
            for span in &scope_spans.spans {
                spans.push(Span::from_proto(
                    resource_span.resource.as_ref(),
                    scope_spans.scope.as_ref(),
                    span,
                )?);
            }
        }
    }
    Ok(spans)
}

/// One line of `spans.jsonl`: a span with its resource and scope, in OTLP/JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanLine {
    #[serde(default)]
    pub resource: Resource,
    #[serde(default)]
    pub scope: InstrumentationScope,
    pub span: ProtoSpan,
}

impl SpanLine {
    /// The lines of some resource spans, one per span.
    pub fn all_of(resource_spans: &[ResourceSpans]) -> Vec<SpanLine> {
        let mut lines = Vec::new();
        for resource_span in resource_spans {
            for scope_spans in &resource_span.scope_spans {
                for span in &scope_spans.spans {
                    lines.push(SpanLine {
                        resource: resource_span.resource.clone().unwrap_or_default(),
                        scope: scope_spans.scope.clone().unwrap_or_default(),
                        span: span.clone(),
                    });
                }
            }
        }
        lines
    }

    /// The normalized span of this line.
    pub fn to_span(&self) -> Result<Span, DecodeError> {
        Span::from_proto(Some(&self.resource), Some(&self.scope), &self.span)
    }
}

/// Reads a `spans.jsonl` one line at a time, handing each span to `each`;
/// returns how many lines could not be read (each such line is reported on
/// stderr, never fatal).
pub fn for_each_span_in_jsonl(path: &Path, mut each: impl FnMut(Span)) -> anyhow::Result<u64> {
    let mut unreadable = 0;
    for line in crate::jsonl::JsonLines::<SpanLine>::open(path)? {
        match line.map(|l| l.to_span()) {
            Ok(Ok(span)) => each(span),
            Err(error @ crate::jsonl::JsonlError::Io { .. }) => return Err(error.into()),
            Err(error) => {
                unreadable += 1;
                eprintln!("skipped: {error:#}");
            }
            Ok(Err(error)) => {
                unreadable += 1;
                eprintln!("{}: skipped a span: {error}", path.display());
            }
        }
    }
    Ok(unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::fixture_bytes as fixture;

    #[test]
    fn vllm_protobuf_and_json_fixtures_give_equal_spans() {
        for name in [
            "traced-chat",
            "traced-completions",
            "untraced-chat",
            "traced-chat-n2",
            "concurrent-12",
        ] {
            let pb = decode_protobuf(&fixture(&format!("vllm/{name}.spans.pb"))).unwrap();
            let json = decode_json(&fixture(&format!("vllm/{name}.spans.otlp.json"))).unwrap();
            let from_pb = spans_of(&pb.resource_spans).unwrap();
            let from_json = spans_of(&json.resource_spans).unwrap();
            assert!(!from_pb.is_empty(), "{name}");
            assert_eq!(from_pb, from_json, "{name}");
        }
    }

    #[test]
    fn vllm_span_fields_are_normalized() {
        let request = decode_protobuf(&fixture("vllm/traced-chat.spans.pb")).unwrap();
        let spans = spans_of(&request.resource_spans).unwrap();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(
            span.trace_id.to_string(),
            "00112233445566778899aabbccddeeff"
        );
        assert_eq!(
            span.parent_span_id.map(|p| hex(&p)).as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(span.name, "llm_request");
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.service_name.as_deref(), Some("vllm"));
        assert_eq!(span.scope_name, "vllm.tracing.otel");
        assert!(span.end_unix_ns > span.start_unix_ns);
        assert!(span.attributes["gen_ai.usage.prompt_tokens"].is_u64());
        assert!(span.attributes["gen_ai.latency.e2e"].is_f64());
        assert!(span.attributes["gen_ai.request.id"].is_string());
    }

    #[test]
    fn untraced_vllm_span_has_no_parent() {
        let request = decode_protobuf(&fixture("vllm/untraced-chat.spans.pb")).unwrap();
        let spans = spans_of(&request.resource_spans).unwrap();
        assert_eq!(spans[0].parent_span_id, None);
        assert_eq!(
            spans[0].trace_id.to_string(),
            "89f9666c87f0be809ed01422084094fc"
        );
    }

    #[test]
    fn sglang_tgi_and_spec_example_decode() {
        let sglang = decode_json(&fixture("sglang/chat-stream.overlap.otlp.json")).unwrap();
        let spans = spans_of(&sglang.resource_spans).unwrap();
        assert_eq!(spans.len(), 28);
        assert!(spans
            .iter()
            .all(|s| s.trace_id.to_string() == "4bf92f3577b34da6a3ce929d0e0e4736"));

        let tgi = decode_json(&fixture("tgi/chat-stream.request-trace.otlp.json")).unwrap();
        let spans = spans_of(&tgi.resource_spans).unwrap();
        assert_eq!(spans.len(), 50);
        assert_eq!(
            spans.iter().filter(|s| s.name == "send_generation").count(),
            20
        );

        let example = decode_json(&fixture("otlp/trace.json")).unwrap();
        let spans = spans_of(&example.resource_spans).unwrap();
        assert_eq!(spans.len(), 1);
        // Upper-case hex ids in the file are read case-insensitively.
        assert_eq!(
            spans[0].trace_id.to_string(),
            "5b8efff798038103d269b633813fc60c"
        );
        assert_eq!(spans[0].kind, SpanKind::Server);
    }

    #[test]
    fn ints_may_be_strings_or_numbers() {
        let json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"00112233445566778899aabbccddeeff",
            "spanId":"0123456789abcdef","name":"x","kind":2,"startTimeUnixNano":1000,"endTimeUnixNano":"2000",
            "attributes":[{"key":"a","value":{"intValue":7}},{"key":"b","value":{"intValue":"-8"}},
            {"key":"c","value":{"arrayValue":{"values":[{"stringValue":"s"},{"boolValue":true}]}}}]}]}]}]}"#;
        let spans = spans_of(&decode_json(json).unwrap().resource_spans).unwrap();
        assert_eq!(spans[0].start_unix_ns, 1000);
        assert_eq!(spans[0].end_unix_ns, 2000);
        assert_eq!(spans[0].attributes["a"], 7);
        assert_eq!(spans[0].attributes["b"], -8);
        assert_eq!(spans[0].attributes["c"], serde_json::json!(["s", true]));
        assert_eq!(spans[0].service_name, None);
    }

    #[test]
    fn wrong_id_lengths_are_errors() {
        for (trace, span, parent, field) in [
            ("0011", "0123456789abcdef", "", "traceId"),
            ("00112233445566778899aabbccddeeff", "0123", "", "spanId"),
            (
                "00112233445566778899aabbccddeeff",
                "0123456789abcdef",
                "01",
                "parentSpanId",
            ),
            ("", "0123456789abcdef", "", "traceId"),
        ] {
            let json = format!(
                r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"{trace}","spanId":"{span}","parentSpanId":"{parent}","name":"x"}}]}}]}}]}}"#
            );
            let request = decode_json(json.as_bytes()).unwrap();
            let error = spans_of(&request.resource_spans).unwrap_err();
            assert!(error.to_string().contains(field), "{error}");
        }
        assert!(decode_json(
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#
        )
        .is_err());
        assert!(decode_protobuf(&[0x0a, 0xff, 0xff]).is_err());
    }

    #[test]
    fn span_lines_round_trip() {
        let request = decode_protobuf(&fixture("vllm/traced-chat-n2.spans.pb")).unwrap();
        let lines = SpanLine::all_of(&request.resource_spans);
        assert_eq!(lines.len(), 2);
        for line in &lines {
            let text = serde_json::to_string(line).unwrap();
            let back: SpanLine = serde_json::from_str(&text).unwrap();
            assert_eq!(&back, line);
            assert_eq!(
                back.to_span().unwrap().service_name.as_deref(),
                Some("vllm")
            );
        }
    }
}
