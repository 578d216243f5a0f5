//! One inference request measured where it passes: what the request asked
//! for (model, stream, `include_usage` added when the client did not ask),
//! and an [`Exchange`] that stamps the response as the client's own reader
//! does ([`crate::client`]'s progress and record), turns it into a
//! `tracebench.request/1` record with `source: proxy`, hands it to the sink,
//! and gives back the metrics object for the client. An exchange dropped
//! before it completed (the client went away, the proxy stopped) is recorded
//! as cancelled.

use super::gpu::GpuStart;
use super::Shared;
use crate::client::traceparent::TraceParent;
use crate::client::{build_record, Origin, PreparedRequest, Progress};
use crate::record::{Endpoint, ErrorKind, RecordSource, RequestError, RequestRecord};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// What an inference request body asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inference {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    /// The proxy added `stream_options.include_usage` (so it removes the usage chunk).
    pub injected_usage: bool,
}

/// The endpoint of an inference path, if it is one.
pub(crate) fn endpoint_of(method: &hyper::Method, path: &str) -> Option<Endpoint> {
    if method != hyper::Method::POST {
        return None;
    }
    [Endpoint::Chat, Endpoint::Completions]
        .into_iter()
        .find(|e| e.path() == path)
}

/// Reads an inference body; for a stream without `include_usage` returns the
/// body that asks for it. `None` when the body is not a JSON object (the
/// request passes through unmeasured; the server will say what is wrong).
pub(crate) fn inspect(endpoint: Endpoint, body: &[u8]) -> Option<(Inference, Option<Bytes>)> {
    let Value::Object(mut object) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    let stream = object.get("stream").and_then(Value::as_bool) == Some(true);
    let asked = object
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    let inference = Inference {
        endpoint,
        model: object
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        stream,
        max_tokens: ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| object.get(*k).and_then(Value::as_u64)),
        injected_usage: stream && !asked,
    };
    if !inference.injected_usage {
        return Some((inference, None));
    }
    let options = object
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()));
    if !options.is_object() {
        *options = Value::Object(Default::default());
    }
    options
        .as_object_mut()
        .expect("an object")
        .insert("include_usage".into(), Value::Bool(true));
    let rewritten = serde_json::to_vec(&object).expect("JSON serializes");
    Some((inference, Some(Bytes::from(rewritten))))
}

/// One measured request, from the moment it goes upstream until its record is made.
pub(crate) struct Exchange {
    shared: Arc<Shared>,
    request: PreparedRequest,
    inference: Inference,
    trace: Option<TraceParent>,
    pub progress: Progress,
    gpu: Option<GpuStart>,
    /// Others were in flight when it started, or started while it ran.
    others_at_start: bool,
    started_mark: u64,
    /// The status the client got (the server's, or the proxy's own 502/504).
    pub client_status: Option<u16>,
    done: bool,
}

impl Exchange {
    /// Starts measuring now: `sent` is the moment the request goes upstream.
    pub fn start(
        shared: Arc<Shared>,
        request_id: String,
        inference: Inference,
        trace: Option<TraceParent>,
    ) -> Self {
        let others_at_start = shared.in_flight.fetch_add(1, Ordering::Relaxed) > 0;
        let started_mark = shared.started.fetch_add(1, Ordering::Relaxed);
        let gpu = shared.gpu.as_ref().map(|g| g.start());
        let request = PreparedRequest {
            index: started_mark,
            request_id,
            warmup: false,
            body: Bytes::new(),
            max_tokens: inference.max_tokens,
            input_tokens: None,
            input_tokens_source: None,
            meta: Default::default(),
        };
        let mut progress = Progress::new(inference.max_tokens, false);
        progress.sent = Instant::now();
        progress.sent_unix_ns = crate::units::unix_now_ns();
        Self {
            shared,
            request,
            inference,
            trace,
            progress,
            gpu,
            others_at_start,
            started_mark,
            client_status: None,
            done: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn inference(&self) -> &Inference {
        &self.inference
    }

    /// Makes the record (once), hands it to the sink, and returns the metrics
    /// object the client gets.
    pub fn complete(&mut self, error: Option<RequestError>) -> Value {
        if self.done {
            return Value::Null;
        }
        self.done = true;
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut progress = std::mem::replace(&mut self.progress, Progress::new(Some(0), false));
        progress.end.get_or_insert_with(Instant::now);
        let ended = progress.end.expect("set above");
        let sent = progress.sent;
        let origin = Origin {
            run_id: &self.shared.config.run_id,
            endpoint: self.inference.endpoint,
            model: &self.inference.model,
            stream: self.inference.stream,
            clock: &self.shared.clock,
            shard: None,
        };
        let mut record = build_record(&origin, &self.request, sent, self.trace, progress, error);
        record.source = Some(RecordSource::Proxy);
        if let (Some(gpu), Some(watch)) = (&self.gpu, &self.shared.gpu) {
            let overlapped = self.others_at_start
                || self.shared.started.load(Ordering::Relaxed) > self.started_mark + 1;
            record.gpu = Some(watch.attribute(gpu, ended, overlapped));
        }
        let metrics = metrics_of(&record, self.gpu.as_ref());
        let status = self.client_status.or(record.status).unwrap_or(499);
        self.shared.sink.record(record, status);
        metrics
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let message = if self.shared.stop.is_cancelled() {
            "the proxy stopped (grace period over) while this request was in flight"
        } else {
            "the client disconnected; the request to the server was cancelled"
        };
        self.complete(Some(RequestError {
            kind: ErrorKind::Cancelled,
            message: message.into(),
            status: None,
            body_excerpt: None,
        }));
    }
}

/// The metrics object handed back with a response.
pub(crate) fn metrics_of(record: &RequestRecord, gpu: Option<&GpuStart>) -> Value {
    json!({
        "request_id": record.request_id,
        "trace_id": record.trace_id,
        "ttft_ms": record.ttft_ms,
        "tpot_ms": record.tpot_ms,
        "e2e_ms": record.e2e_ms,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "chunks": record.chunks,
        "gpu": gpu.map(|g| json!({
            "memory_before_mib": g.memory_before_mib,
            "attribution": record.gpu,
        })),
        "record": format!("/tracebench/requests/{}", record.request_id),
    })
}

/// The `Server-Timing` header of a JSON answer.
pub(crate) fn server_timing(metrics: &Value) -> String {
    ["ttft", "tpot", "e2e"]
        .iter()
        .filter_map(|name| {
            let ms = metrics.get(format!("{name}_ms"))?.as_f64()?;
            Some(format!("{name};dur={ms:.3}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `body` (a JSON object) with `"metrics": {...}` added before its closing
/// brace, its bytes otherwise untouched; `None` when it is not an object.
pub(crate) fn with_metrics(body: &[u8], metrics: &Value) -> Option<Bytes> {
    let close = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if body[close] != b'}' || body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let before = body[..close]
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())?;
    let separator = if body[before] == b'{' { "" } else { "," };
    let mut out = Vec::with_capacity(body.len() + 512);
    out.extend_from_slice(&body[..close]);
    out.extend_from_slice(format!("{separator}\"metrics\":{metrics}}}").as_bytes());
    out.extend_from_slice(&body[close + 1..]);
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_usage_is_asked_for_only_when_the_client_did_not() {
        let body = br#"{"model":"m","stream":true,"messages":[],"max_tokens":7}"#;
        let (inference, rewritten) = inspect(Endpoint::Chat, body).unwrap();
        assert!(inference.injected_usage);
        assert_eq!(
            (inference.model.as_str(), inference.max_tokens),
            ("m", Some(7))
        );
        let rewritten: Value = serde_json::from_slice(&rewritten.unwrap()).unwrap();
        assert_eq!(rewritten["stream_options"]["include_usage"], true);
        assert_eq!(rewritten["max_tokens"], 7);

        let asked = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let (inference, rewritten) = inspect(Endpoint::Chat, asked).unwrap();
        assert!(!inference.injected_usage && rewritten.is_none());
        let whole = br#"{"model":"m","prompt":"x","max_completion_tokens":3}"#;
        let (inference, rewritten) = inspect(Endpoint::Completions, whole).unwrap();
        assert!(!inference.stream && !inference.injected_usage && rewritten.is_none());
        assert_eq!(inference.max_tokens, Some(3));
        let kept = br#"{"stream":true,"stream_options":{"continuous_usage_stats":true}}"#;
        let (_, rewritten) = inspect(Endpoint::Chat, kept).unwrap();
        let rewritten: Value = serde_json::from_slice(&rewritten.unwrap()).unwrap();
        assert_eq!(rewritten["stream_options"]["continuous_usage_stats"], true);
        assert!(inspect(Endpoint::Chat, b"[1,2]").is_none());
        assert!(inspect(Endpoint::Chat, b"not json").is_none());
    }

    #[test]
    fn metrics_go_before_the_closing_brace() {
        let metrics = json!({"ttft_ms": 1.5, "e2e_ms": 2.0, "tpot_ms": null});
        let out = with_metrics(b"{\"id\":\"x\"}\n", &metrics).unwrap();
        assert_eq!(
            &out[..],
            b"{\"id\":\"x\",\"metrics\":{\"e2e_ms\":2.0,\"tpot_ms\":null,\"ttft_ms\":1.5}}\n"
        );
        let empty = with_metrics(b"{ }", &metrics).unwrap();
        let value: Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(value["metrics"]["ttft_ms"], 1.5);
        assert!(with_metrics(b"[1]", &metrics).is_none());
        assert_eq!(server_timing(&metrics), "ttft;dur=1.500, e2e;dur=2.000");
    }
}
