//! Shared pieces of the trace integration tests: request records
//! built from the captured vLLM client timings, and trace flags on port 0.
#![allow(dead_code)]

use std::time::Duration;
use tracebench::cli::{Switch, TraceArgs};
use tracebench::record::RequestRecord;
use tracebench::trace::{TraceConfig, TraceSource};

/// Client instants in ns since the run's start.
pub struct Timing {
    pub sent_unix_ns: u64,
    pub sent: u64,
    pub first_token: u64,
    pub last_token: u64,
    pub end: u64,
}

/// A successful streaming chat record with the given ids and timings.
pub fn record(
    request_id: &str,
    trace_id: Option<&str>,
    span_id: Option<&str>,
    t: &Timing,
) -> RequestRecord {
    let ms = |ns: u64| ns as f64 / 1e6;
    serde_json::from_value(serde_json::json!({
        "schema": "tracebench.request/1", "run_id": "test-run", "request_id": request_id, "index": 0,
        "warmup": false, "endpoint": "chat", "model": "tiny", "stream": true,
        "trace_id": trace_id, "span_id": span_id, "max_tokens": 64,
        "input_tokens": 606, "input_tokens_source": "usage", "output_tokens": 64, "output_tokens_source": "usage",
        "status": 200, "response_id": null, "finish_reason": "length", "error": null,
        "sent_unix_ns": t.sent_unix_ns,
        "instants_ns": {"intended": t.sent, "sent": t.sent, "headers": null, "first_byte": null,
                        "first_token": t.first_token, "last_token": t.last_token, "end": t.end},
        "ttft_ms": ms(t.first_token - t.sent), "e2e_ms": ms(t.last_token - t.sent), "e2e_end_ms": ms(t.end - t.sent),
        "tpot_ms": ms(t.last_token - t.first_token) / 63.0, "schedule_lag_ms": 0.0,
        "chunks": 64, "itl_chunk_ms": [], "itl_token_ms": null, "server": null,
        "server_missing_reason": "pending", "decomposition": null, "trace_url": null, "gpu": null
    }))
    .expect("a valid record")
}

/// The 12 concurrent requests of the vLLM capture as records (request ids `c12-<i>`).
pub fn concurrent12_records() -> Vec<RequestRecord> {
    let client: serde_json::Value = serde_json::from_slice(&tracebench::testing::fixture_bytes(
        "vllm/concurrent-12.client.json",
    ))
    .expect("client json");
    let ns = |r: &serde_json::Value, k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k}"));
    client["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| {
            let timing = Timing {
                sent_unix_ns: ns(r, "send_wall_ns"),
                sent: ns(r, "send_ns"),
                first_token: ns(r, "first_token_ns"),
                last_token: ns(r, "last_token_ns"),
                end: ns(r, "eof_ns"),
            };
            let mut rec = record(
                &format!("c12-{}", ns(r, "i")),
                r["trace_id"].as_str(),
                r["parent_span_id"].as_str(),
                &timing,
            );
            rec.response_id = r["response_id"].as_str().map(str::to_string);
            rec
        })
        .collect()
}

/// Trace flags with both receivers on 127.0.0.1 port 0.
pub fn trace_args(source: TraceSource, span_wait: Duration) -> TraceArgs {
    TraceArgs {
        trace_source: source,
        otlp_grpc: "127.0.0.1:0".parse().unwrap(),
        otlp_http: "127.0.0.1:0".parse().unwrap(),
        otlp_forward: None,
        jaeger_url: None,
        tempo_url: None,
        jaeger_ui: None,
        span_wait,
        export_client_spans: None,
        trace_header: Switch::On,
    }
}

/// The checked configuration of some trace flags.
pub fn config(args: &TraceArgs) -> TraceConfig {
    TraceConfig::from_args(args).expect("valid trace flags")
}
