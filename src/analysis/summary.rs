//! The run summary (`summary.json`, `tracebench.summary/1`): statistics of every
//! client and server metric, throughput, goodput, errors by kind, the span join
//! rate, and vLLM-spelled keys so a `vllm bench serve` result diffs directly.
//!
//! A [`SummaryBuilder`] sees the records one at a time, so a run of any size
//! is summarised in bounded memory (see [`super::stats`] for what stays exact).
//! What the workloads add (TTFT by session turn, the prefix-cache hit rate,
//! TTFT against images, chunks carrying several tokens) is in [`super::workload`].

use super::diagnosis::TtftSplit;
use super::goodput::{Goodput, GoodputCounter, Slo};
use super::stats::{Distribution, Stats};
use super::workload::{WorkloadBuilder, WorkloadSummary};
use crate::record::{ErrorKind, RequestRecord};
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
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
    /// Sessions, prefix cache, images and tokens per chunk, when the run had any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSummary>,
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

/// Metrics of reasoning models and prefix caches, present when records carry them.
pub const WORKLOAD_METRICS: [&str; 4] = [
    "ttfo_ms",
    "reasoning_tokens",
    "answer_tokens",
    "cached_tokens",
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
        "ttfo_ms" => one(record.ttfo_ms),
        "reasoning_tokens" => one(record.reasoning_tokens.map(|v| v as f64)),
        "answer_tokens" => one(record.answer_tokens.map(|v| v as f64)),
        "cached_tokens" => one(super::workload::cached_tokens(record).map(|v| v as f64)),
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

/// Summarises the measured (non-warm-up) records of a run held in memory.
pub fn summarize(run_id: &str, records: &[RequestRecord], slo: &Slo, partial: bool) -> Summary {
    let mut builder = SummaryBuilder::new(slo);
    records.iter().for_each(|r| builder.observe(r));
    let mut summary = builder.finish(run_id, partial);
    diagnose_from(&mut summary, records.iter());
    summary
}

/// Fills in `summary.diagnosis` from a second look at the records (the
/// TTFT split needs the run's p50 and p99 first).
pub fn diagnose_from<R: Borrow<RequestRecord>>(
    summary: &mut Summary,
    records: impl Iterator<Item = R>,
) {
    let Some(ttft) = summary.metrics.get("ttft_ms") else {
        return;
    };
    let mut split = TtftSplit::new(ttft);
    for record in records {
        let record = record.borrow();
        if !record.warmup && record.ok() {
            split.observe(record);
        }
    }
    summary.diagnosis = split.diagnosis();
}

/// The summary's aggregates, fed one record at a time.
pub struct SummaryBuilder {
    metrics: Vec<(&'static str, Distribution)>,
    counts: Counts,
    errors: BTreeMap<String, u64>,
    window: MeasuredWindow,
    total_input_tokens: u64,
    total_output_tokens: u64,
    join: JoinStats,
    goodput: Option<GoodputCounter>,
    workload: WorkloadBuilder,
    values: Vec<f64>,
}

impl SummaryBuilder {
    pub fn new(slo: &Slo) -> Self {
        Self {
            metrics: CLIENT_METRICS
                .iter()
                .chain(WORKLOAD_METRICS.iter())
                .chain(SERVER_METRICS.iter())
                .map(|name| (*name, Distribution::default()))
                .collect(),
            counts: Counts::default(),
            errors: BTreeMap::new(),
            window: MeasuredWindow::default(),
            total_input_tokens: 0,
            total_output_tokens: 0,
            join: JoinStats::default(),
            goodput: (!slo.is_empty()).then(|| GoodputCounter::new(slo)),
            workload: WorkloadBuilder::default(),
            values: Vec::new(),
        }
    }

    pub fn observe(&mut self, record: &RequestRecord) {
        if record.warmup {
            self.counts.warmup += 1;
            return;
        }
        self.counts.total += 1;
        self.window.observe(record);
        if let Some(goodput) = &mut self.goodput {
            goodput.observe(record);
        }
        self.observe_join(record);
        if let Some(error) = &record.error {
            *self
                .errors
                .entry(error.kind.as_str().to_string())
                .or_insert(0) += 1;
        }
        let ok = record.ok();
        if ok {
            self.workload.observe(record);
            self.counts.ok += 1;
            self.total_input_tokens += record.input_tokens.unwrap_or(0);
            self.total_output_tokens += record.output_tokens.unwrap_or(0);
        } else {
            self.counts.failed += 1;
        }
        for (name, distribution) in &mut self.metrics {
            // Schedule lag is a property of the load, kept for failed requests too.
            if ok || *name == "schedule_lag_ms" {
                self.values.clear();
                push_metric_values(record, name, &mut self.values);
                self.values.iter().for_each(|v| distribution.observe(*v));
            }
        }
    }

    /// Join statistics leave out records that were never considered for a
    /// join (tracing off: every record's reason is `tracing_off`).
    fn observe_join(&mut self, record: &RequestRecord) {
        if record.server_missing_reason.as_deref() == Some("tracing_off") {
            return;
        }
        self.join.requests += 1;
        if record.server.is_some() {
            self.join.joined += 1;
        } else {
            let reason = record.server_missing_reason.as_deref().unwrap_or("unknown");
            *self.join.missing.entry(reason.to_string()).or_insert(0) += 1;
        }
    }

    /// The summary (without the diagnosis: see [`diagnose_from`]).
    pub fn finish(self, run_id: &str, partial: bool) -> Summary {
        let duration_s = self.window.seconds();
        let per_s = |v: f64| {
            if duration_s > 0.0 {
                v / duration_s
            } else {
                0.0
            }
        };
        let (input, output) = (self.total_input_tokens, self.total_output_tokens);
        let mut join = self.join;
        join.rate = join.joined as f64 / join.requests.max(1) as f64;
        let mut summary = Summary {
            schema: SUMMARY_SCHEMA.to_string(),
            run_id: run_id.to_string(),
            partial,
            request_throughput: per_s(self.counts.ok as f64),
            requests: self.counts,
            duration_s,
            input_throughput: per_s(input as f64),
            output_throughput: per_s(output as f64),
            total_token_throughput: per_s((input + output) as f64),
            total_input_tokens: input,
            total_output_tokens: output,
            metrics: self
                .metrics
                .iter()
                .filter_map(|(name, d)| Some((name.to_string(), d.stats()?)))
                .collect(),
            errors: self.errors,
            goodput: self.goodput.map(|g| g.finish(duration_s)),
            join: (join.requests > 0).then_some(join),
            diagnosis: None,
            gpu: None,
            server_metrics: None,
            workload: self.workload.finish(),
            vllm_keys: BTreeMap::new(),
        };
        summary.vllm_keys = vllm_keys(&summary);
        summary
    }
}

/// The measured window: the first send to the last completion of the
/// measured requests, run-relative nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeasuredWindow {
    span: Option<(u64, u64)>,
}

impl MeasuredWindow {
    pub fn observe(&mut self, record: &RequestRecord) {
        let sent = record.instants_ns.sent;
        let end = record.instants_ns.end.unwrap_or(sent).max(sent);
        self.span = Some(match self.span {
            None => (sent, end),
            Some((first, last)) => (first.min(sent), last.max(end)),
        });
    }

    /// `(first send, last completion)`; `(0, 0)` before any record.
    pub fn ns(&self) -> (u64, u64) {
        self.span.unwrap_or((0, 0))
    }

    pub fn seconds(&self) -> f64 {
        let (first, last) = self.ns();
        (last - first) as f64 / 1e9
    }
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
