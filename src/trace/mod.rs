//! Trace correlation: receive the servers' OpenTelemetry spans (embedded OTLP
//! receiver) or fetch them (Jaeger, Tempo), keep what the join needs of each
//! (compact, per trace), map each engine's request span onto the common server
//! view, and join it onto the client's request records one at a time.

pub mod backend;
pub mod client_span;
pub mod collector;
pub mod commands;
pub mod config;
pub mod engines;
pub mod jaeger;
pub mod join;
pub mod node;
pub mod receiver;
pub mod show;
pub mod span;
pub mod store;
pub mod tempo;

pub use client_span::{export_client_spans, ClientSpanExporter};
pub use collector::{
    start_collector, JoinReport, SpanCollector, WaitOutcome, WaitProgress, NO_EXPORT_WAIT,
};
pub use commands::{collect_until_ctrl_c, join_run_dir};
pub use config::{BackendUrl, OtlpEndpoint, TraceConfig, TraceSource};
pub use receiver::ReceiverCounters;
pub use show::show_request;

#[cfg(test)]
pub(crate) mod test_support {
    //! Records and fixture spans for the trace modules' unit tests.

    use crate::record::RequestRecord;
    use crate::trace::node::SpanNode;
    use crate::trace::span::{decode_json, decode_protobuf, spans_of, Span};
    use std::sync::Arc;

    /// The compact form of some spans, each with its own service name.
    pub fn nodes_of(spans: &[Span]) -> Vec<SpanNode> {
        spans
            .iter()
            .map(|s| SpanNode::of(s, |name| Arc::from(name)))
            .collect()
    }

    /// The spans of a fixture file (`.pb` protobuf, else OTLP/JSON).
    pub fn fixture_spans(name: &str) -> Vec<Span> {
        let bytes = crate::testing::fixture_bytes(name);
        let request = if name.ends_with(".pb") {
            decode_protobuf(&bytes)
        } else {
            decode_json(&bytes)
        }
        .unwrap();
        spans_of(&request.resource_spans).unwrap()
    }

    /// A successful streaming chat record (TTFT 40 ms) with these ids.
    pub fn record(request_id: &str, trace_id: Option<&str>) -> RequestRecord {
        serde_json::from_value(serde_json::json!({
            "schema": "tracebench.request/1", "run_id": "r", "request_id": request_id, "index": 0,
            "warmup": false, "endpoint": "chat", "model": "tiny", "stream": true,
            "trace_id": trace_id, "span_id": trace_id.map(|_| "0123456789abcdef"),
            "max_tokens": 16, "input_tokens": null, "input_tokens_source": null, "output_tokens": 16,
            "output_tokens_source": "usage", "status": 200, "response_id": null, "finish_reason": "length",
            "error": null, "sent_unix_ns": 0,
            "instants_ns": {"intended": 0, "sent": 0, "headers": null, "first_byte": null,
                            "first_token": 40_000_000u64, "last_token": 70_000_000u64, "end": 71_000_000u64},
            "ttft_ms": 40.0, "e2e_ms": 70.0, "e2e_end_ms": 71.0, "tpot_ms": 2.0, "schedule_lag_ms": 0.0,
            "chunks": 16, "itl_chunk_ms": [], "itl_token_ms": null, "server": null,
            "server_missing_reason": "pending", "decomposition": null, "trace_url": null, "gpu": null
        }))
        .unwrap()
    }
}
