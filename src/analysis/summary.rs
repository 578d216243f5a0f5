//! The run summary (`summary.json`, `tracebench.summary/1`): statistics of every
//! client and server metric, throughput, goodput, errors by kind, the span join
//! rate, and vLLM-spelled keys so a `vllm bench serve` result diffs directly.

use super::diagnosis::diagnose;
use super::goodput::{Goodput, Slo};
use super::stats::Stats;
use crate::record::{ErrorKind, RequestRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Schema name of `summary.json`.
pub const SUMMARY_SCHEMA: &str = "tracebench.summary/1";

/// Request counts of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Measured requests (warm-up excluded).
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    pub warmup: u64,
}

/// How many requests got their server span, and why the rest did not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinStats {
    pub requests: u64,
    pub joined: u64,
    pub rate: f64,
    /// Reason -> number of requests without a span.
    pub missing: BTreeMap<String, u64>,
}

/// Everything `summary.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub schema: String,
    pub run_id: String,
    /// True when the run was stopped before its end (Ctrl-C).
    pub partial: bool,
    pub requests: Counts,
    /// The measured window: first send to last completion, seconds.
    pub duration_s: f64,
    pub request_throughput: f64,
    pub input_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    /// Metric name (`ttft_ms`, `server.queue_ms`, `decomposition.network_ms`, ...) -> statistics.
    pub metrics: BTreeMap<String, Stats>,
    /// Error kind -> count.
    pub errors: BTreeMap<String, u64>,
    pub goodput: Option<Goodput>,
    pub join: Option<JoinStats>,
    /// One paragraph reading of where TTFT went, when server spans were joined.
    pub diagnosis: Option<String>,
    /// GPU telemetry summary, when sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<serde_json::Value>,
    /// Server `/metrics` summary, when scraped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_metrics: Option<serde_json::Value>,
    /// vLLM-spelled keys (`mean_ttft_ms`, `p99_itl_ms`, `request_throughput`, ...).
    #[serde(flatten)]
    pub vllm_keys: BTreeMap<String, serde_json::Value>,
}

/// Client metrics taken from each record, by name, in display order.
pub const CLIENT_METRICS: [&str; 8] = [
    "ttft_ms",
    "tpot_ms",
    "itl_chunk_ms",
    "itl_token_ms",
    "e2e_ms",
    "schedule_lag_ms",
    "input_tokens",
    "output_tokens",
];

/// Server and decomposition metrics, by name, in display order.
pub const SERVER_METRICS: [&str; 15] = [
    "server.queue_ms",
    "server.prefill_ms",
    "server.decode_ms",
    "server.inference_ms",
    "server.ttft_ms",
    "server.e2e_ms",
    "server.prompt_tokens",
    "server.completion_tokens",
    "decomposition.connect_ms",
    "decomposition.network_ms",
    "decomposition.frontend_ms",
    "decomposition.queue_ms",
    "decomposition.prefill_ms",
    "decomposition.arrival_delay_ms",
    "decomposition.stream_overhead_ms",
];

/// Appends the values of one metric in one record to `out` (several for the ITL lists).
fn push_metric_values(record: &RequestRecord, name: &str, out: &mut Vec<f64>) {
    let mut one = |v: Option<f64>| out.extend(v);
    let server = record.server.as_ref();
    let decomposition = record.decomposition.as_ref();
    match name {
        "ttft_ms" => one(record.ttft_ms),
        "tpot_ms" => one(record.tpot_ms),
        "itl_chunk_ms" => out.extend_from_slice(&record.itl_chunk_ms),
        "itl_token_ms" => out.extend_from_slice(record.itl_token_ms.as_deref().unwrap_or_default()),
        "e2e_ms" => one(record.e2e_ms),
        "schedule_lag_ms" => out.push(record.schedule_lag_ms),
        "input_tokens" => one(record.input_tokens.map(|v| v as f64)),
        "output_tokens" => one(record.output_tokens.map(|v| v as f64)),
        "server.queue_ms" => one(server.and_then(|s| s.queue_ms)),
        "server.prefill_ms" => one(server.and_then(|s| s.prefill_ms)),
        "server.decode_ms" => one(server.and_then(|s| s.decode_ms)),
        "server.inference_ms" => one(server.and_then(|s| s.inference_ms)),
        "server.ttft_ms" => one(server.and_then(|s| s.ttft_ms)),
        "server.e2e_ms" => one(server.and_then(|s| s.e2e_ms)),
        "server.prompt_tokens" => one(server.and_then(|s| s.prompt_tokens.map(|v| v as f64))),
        "server.completion_tokens" => {
            one(server.and_then(|s| s.completion_tokens.map(|v| v as f64)))
        }
        "decomposition.connect_ms" => one(decomposition.and_then(|d| d.connect_ms)),
        "decomposition.network_ms" => one(decomposition.and_then(|d| d.network_ms)),
        "decomposition.frontend_ms" => one(decomposition.and_then(|d| d.frontend_ms)),
        "decomposition.queue_ms" => one(decomposition.and_then(|d| d.queue_ms)),
        "decomposition.prefill_ms" => one(decomposition.and_then(|d| d.prefill_ms)),
        "decomposition.arrival_delay_ms" => one(decomposition.and_then(|d| d.arrival_delay_ms)),
        "decomposition.stream_overhead_ms" => one(decomposition.and_then(|d| d.stream_overhead_ms)),
        _ => {}
    }
}

/// Summarises the measured (non-warm-up) records of a run.
pub fn summarize(run_id: &str, records: &[RequestRecord], slo: &Slo, partial: bool) -> Summary {
    let measured: Vec<&RequestRecord> = records.iter().filter(|r| !r.warmup).collect();
    let ok: Vec<&RequestRecord> = measured.iter().copied().filter(|r| r.ok()).collect();

    let mut metrics = BTreeMap::new();
    for name in CLIENT_METRICS.iter().chain(SERVER_METRICS.iter()) {
        let source: &[&RequestRecord] = if *name == "schedule_lag_ms" {
            &measured
        } else {
            &ok
        };
        let mut values = Vec::new();
        for record in source {
            push_metric_values(record, name, &mut values);
        }
        if let Some(stats) = Stats::of(&values) {
            metrics.insert(name.to_string(), stats);
        }
    }

    let mut errors = BTreeMap::new();
    for record in &measured {
        if let Some(error) = &record.error {
            *errors.entry(error.kind.as_str().to_string()).or_insert(0) += 1;
        }
    }

    let duration_s = measured_window_s(&measured);
    let total_input_tokens: u64 = ok.iter().filter_map(|r| r.input_tokens).sum();
    let total_output_tokens: u64 = ok.iter().filter_map(|r| r.output_tokens).sum();
    let per_s = |v: f64| {
        if duration_s > 0.0 {
            v / duration_s
        } else {
            0.0
        }
    };

    let join = join_stats(&measured);
    let goodput = (!slo.is_empty()).then(|| slo.goodput(&measured, duration_s));
    let mut summary = Summary {
        schema: SUMMARY_SCHEMA.to_string(),
        run_id: run_id.to_string(),
        partial,
        requests: Counts {
            total: measured.len() as u64,
            ok: ok.len() as u64,
            failed: (measured.len() - ok.len()) as u64,
            warmup: (records.len() - measured.len()) as u64,
        },
        duration_s,
        request_throughput: per_s(ok.len() as f64),
        input_throughput: per_s(total_input_tokens as f64),
        output_throughput: per_s(total_output_tokens as f64),
        total_token_throughput: per_s((total_input_tokens + total_output_tokens) as f64),
        total_input_tokens,
        total_output_tokens,
        metrics,
        errors,
        goodput,
        join,
        diagnosis: None,
        gpu: None,
        server_metrics: None,
        vllm_keys: BTreeMap::new(),
    };
    summary.diagnosis = diagnose(&summary, &ok);
    summary.vllm_keys = vllm_keys(&summary);
    summary
}

/// First send to last completion of the measured requests, in seconds.
fn measured_window_s(measured: &[&RequestRecord]) -> f64 {
    let first = measured.iter().map(|r| r.instants_ns.sent).min();
    let last = measured
        .iter()
        .map(|r| r.instants_ns.end.unwrap_or(r.instants_ns.sent))
        .max();
    match (first, last) {
        (Some(first), Some(last)) if last > first => (last - first) as f64 / 1e9,
        _ => 0.0,
    }
}

/// Join statistics; `None` when no record was ever considered for a join
/// (tracing off: every record's reason is `tracing_off`).
fn join_stats(measured: &[&RequestRecord]) -> Option<JoinStats> {
    let considered: Vec<&&RequestRecord> = measured
        .iter()
        .filter(|r| r.server_missing_reason.as_deref() != Some("tracing_off"))
        .collect();
    if considered.is_empty() {
        return None;
    }
    let joined = considered.iter().filter(|r| r.server.is_some()).count() as u64;
    let mut missing = BTreeMap::new();
    for record in considered.iter().filter(|r| r.server.is_none()) {
        let reason = record
            .server_missing_reason
            .clone()
            .unwrap_or_else(|| "unknown".into());
        *missing.entry(reason).or_insert(0) += 1;
    }
    Some(JoinStats {
        requests: considered.len() as u64,
        joined,
        rate: joined as f64 / considered.len() as f64,
        missing,
    })
}

/// Keys spelled as `vllm bench serve --save-result` spells them, beside the
/// struct fields that already carry vLLM's names (throughputs, token totals).
fn vllm_keys(summary: &Summary) -> BTreeMap<String, serde_json::Value> {
    let mut keys = BTreeMap::new();
    let number = |v: f64| serde_json::json!(v);
    keys.insert("completed".into(), serde_json::json!(summary.requests.ok));
    keys.insert("failed".into(), serde_json::json!(summary.requests.failed));
    keys.insert("duration".into(), number(summary.duration_s));
    for (ours, theirs) in [
        ("ttft_ms", "ttft"),
        ("tpot_ms", "tpot"),
        ("itl_chunk_ms", "itl"),
        ("e2e_ms", "e2el"),
    ] {
        if let Some(stats) = summary.metrics.get(ours) {
            keys.insert(format!("mean_{theirs}_ms"), number(stats.mean));
            keys.insert(format!("median_{theirs}_ms"), number(stats.p50));
            keys.insert(format!("std_{theirs}_ms"), number(stats.std));
            for p in ["p90", "p95", "p99"] {
                keys.insert(
                    format!("{p}_{theirs}_ms"),
                    number(stats.get(p).unwrap_or(0.0)),
                );
            }
        }
    }
    if let Some(goodput) = &summary.goodput {
        keys.insert("request_goodput".into(), number(goodput.requests_per_s));
    }
    keys
}

/// The server's span-derived TTFT pieces for one record, per METRICS.md.
pub fn decompose(record: &RequestRecord) -> Option<crate::record::Decomposition> {
    let server = record.server.as_ref()?;
    let ttft = record.ttft_ms;
    let connect = record.connection.as_ref().map(|c| c.setup_ms());
    // Network is what is left of TTFT once the connection was set up.
    let ttft = ttft.map(|t| t - connect.unwrap_or(0.0));
    let sub = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
    let frontend = match (server.ttft_ms, server.queue_ms, server.prefill_ms) {
        (Some(t), Some(q), Some(p)) => Some(t - q - p),
        _ => None,
    };
    let stream_overhead = match (
        record.instants_ns.first_token,
        record.instants_ns.last_token,
    ) {
        (Some(first), Some(last)) => sub(Some((last - first) as f64 / 1e6), server.decode_ms),
        _ => None,
    };
    Some(crate::record::Decomposition {
        connect_ms: connect,
        network_ms: sub(ttft, server.ttft_ms),
        frontend_ms: frontend,
        queue_ms: server.queue_ms,
        prefill_ms: server.prefill_ms,
        arrival_delay_ms: Some((server.start_unix_ns as f64 - record.sent_unix_ns as f64) / 1e6),
        stream_overhead_ms: stream_overhead,
    })
}

/// Number of failed measured requests of each kind, in [`ErrorKind::ALL`] order.
pub fn error_counts(summary: &Summary) -> Vec<(ErrorKind, u64)> {
    ErrorKind::ALL
        .iter()
        .filter_map(|k| summary.errors.get(k.as_str()).map(|n| (*k, *n)))
        .collect()
}
