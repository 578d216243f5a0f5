//! The span store (spans grouped by their 16-byte trace id, with an index by
//! `gen_ai.request.id`) and the join that fills each record's server view,
//! decomposition, trace link, or the reason it has none.

use super::engines::request_views;
use super::span::Span;
use crate::analysis::live::PhaseMeans;
use crate::client::traceparent::unhex;
use crate::record::{Endpoint, ErrorKind, RequestRecord, ServerView};
use std::collections::{HashMap, HashSet};

/// Reason written for records sent without a trace header.
pub const TRACING_OFF: &str = "tracing_off";

/// Received spans, grouped by trace.
#[derive(Debug, Default)]
pub struct SpanStore {
    traces: HashMap<[u8; 16], Vec<Span>>,
    /// `gen_ai.request.id` → the traces holding a span with it.
    by_request_id: HashMap<String, Vec<[u8; 16]>>,
    spans: u64,
    /// Traces changed since the live phase means were last brought up to date.
    dirty: HashSet<[u8; 16]>,
    phases: PhaseSums,
    phases_by_trace: HashMap<[u8; 16], PhaseSums>,
}

/// Sums behind [`PhaseMeans`], kept per trace so a trace can be recounted.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct PhaseSums {
    views: u64,
    queue: (f64, u64),
    prefill: (f64, u64),
    decode: (f64, u64),
}

impl PhaseSums {
    fn of(views: &[ServerView]) -> Self {
        let mut sums = Self::default();
        for view in views {
            sums.views += 1;
            for (slot, value) in [
                (&mut sums.queue, view.queue_ms),
                (&mut sums.prefill, view.prefill_ms),
                (&mut sums.decode, view.decode_ms),
            ] {
                if let Some(v) = value {
                    slot.0 += v;
                    slot.1 += 1;
                }
            }
        }
        sums
    }

    fn add(&mut self, other: &Self, sign: f64) {
        let count = |a: u64, b: u64| {
            if sign > 0.0 {
                a + b
            } else {
                a.saturating_sub(b)
            }
        };
        self.views = count(self.views, other.views);
        for (mine, theirs) in [
            (&mut self.queue, other.queue),
            (&mut self.prefill, other.prefill),
            (&mut self.decode, other.decode),
        ] {
            mine.0 += sign * theirs.0;
            mine.1 = count(mine.1, theirs.1);
        }
    }
}

impl SpanStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one span.
    pub fn insert(&mut self, span: Span) {
        if let Some(id) = span.attr_str("gen_ai.request.id") {
            let traces = self.by_request_id.entry(id.to_string()).or_default();
            if !traces.contains(&span.trace_id) {
                traces.push(span.trace_id);
            }
        }
        self.dirty.insert(span.trace_id);
        self.spans += 1;
        self.traces.entry(span.trace_id).or_default().push(span);
    }

    /// The spans of one trace (empty when none arrived).
    pub fn trace(&self, trace_id: &[u8; 16]) -> &[Span] {
        self.traces.get(trace_id).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Number of spans held.
    pub fn span_count(&self) -> u64 {
        self.spans
    }

    /// Ids of every trace held.
    pub fn trace_ids(&self) -> impl Iterator<Item = &[u8; 16]> {
        self.traces.keys()
    }

    /// The request views for a record: by its trace id, else by the request id
    /// the engine recorded (for proxies that drop `traceparent`), with the trace
    /// ids they came from.
    pub fn views_for(&self, record: &RequestRecord) -> (Vec<ServerView>, Vec<[u8; 16]>) {
        if let Some(trace_id) = record_trace_id(record) {
            let views = request_views(self.trace(&trace_id));
            if !views.is_empty() {
                return (views, vec![trace_id]);
            }
        }
        for key in fallback_request_ids(record) {
            let Some(traces) = self.by_request_id.get(&key) else {
                continue;
            };
            let mut views: Vec<ServerView> = traces
                .iter()
                .flat_map(|t| request_views(self.trace(t)))
                .filter(|v| v.request_id.as_deref() == Some(key.as_str()))
                .collect();
            if !views.is_empty() {
                views.sort_by_key(|v| v.start_unix_ns);
                return (views, traces.clone());
            }
        }
        (Vec::new(), Vec::new())
    }

    /// True when a request span for this record has arrived.
    pub fn has_view_for(&self, record: &RequestRecord) -> bool {
        !self.views_for(record).0.is_empty()
    }

    /// Mean queue/prefill/decode over the request spans seen so far. Only traces
    /// changed since the last call are looked at again.
    pub fn live_phases(&mut self) -> Option<PhaseMeans> {
        for trace_id in std::mem::take(&mut self.dirty) {
            let fresh = PhaseSums::of(&request_views(self.trace(&trace_id)));
            if let Some(old) = self.phases_by_trace.insert(trace_id, fresh) {
                self.phases.add(&old, -1.0);
            }
            self.phases.add(&fresh, 1.0);
        }
        let sums = &self.phases;
        let mean = |(sum, n): (f64, u64)| if n > 0 { sum / n as f64 } else { 0.0 };
        (sums.views > 0).then(|| PhaseMeans {
            spans: sums.views,
            queue_ms: mean(sums.queue),
            prefill_ms: mean(sums.prefill),
            decode_ms: mean(sums.decode),
        })
    }
}

/// The record's trace id as bytes, when it sent one.
pub fn record_trace_id(record: &RequestRecord) -> Option<[u8; 16]> {
    unhex(record.trace_id.as_deref()?)?.try_into().ok()
}

/// The `gen_ai.request.id` values vLLM gives this request: from `X-Request-Id`,
/// and from the response id the client saw.
fn fallback_request_ids(record: &RequestRecord) -> Vec<String> {
    let mut keys = match record.endpoint {
        Endpoint::Chat => vec![format!("chatcmpl-{}", record.request_id)],
        Endpoint::Completions => vec![format!("cmpl-{}-0", record.request_id)],
    };
    if let Some(response_id) = &record.response_id {
        keys.push(match record.endpoint {
            Endpoint::Chat => response_id.clone(),
            Endpoint::Completions => format!("{response_id}-0"),
        });
    }
    keys
}

/// How the join words the records it cannot fill.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    /// `--jaeger-ui`: base of the per-request trace link.
    pub jaeger_ui: Option<String>,
    /// Reason for a successful traced request without a span, e.g. `no span arrived within 15s`.
    pub no_span_reason: String,
    /// Per trace id (32 hex): why the trace backend could not give it.
    pub backend_errors: HashMap<String, String>,
}

/// What a join did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinCounts {
    pub joined: u64,
    pub missing: u64,
    /// Request spans beyond the first for one request (e.g. one per choice with `n=2`).
    pub duplicates: u64,
    /// Spans whose trace matched no record (start-up spans, other clients).
    pub unrelated_spans: u64,
}

/// Fills `server`, `decomposition`, `trace_url` and `server_missing_reason` of
/// every record from the store. Several request spans for one request count as
/// duplicates; the earliest is used.
pub fn join(records: &mut [RequestRecord], store: &SpanStore, options: &JoinOptions) -> JoinCounts {
    let mut counts = JoinCounts::default();
    let mut used_traces: HashSet<[u8; 16]> = HashSet::new();
    for record in records.iter_mut() {
        record.trace_url = match (&options.jaeger_ui, &record.trace_id) {
            (Some(ui), Some(trace_id)) => {
                Some(format!("{}/trace/{trace_id}", ui.trim_end_matches('/')))
            }
            _ => None,
        };
        if let Some(trace_id) = record_trace_id(record) {
            used_traces.insert(trace_id);
        }
        let (views, traces) = store.views_for(record);
        used_traces.extend(traces);
        let mut views = views.into_iter();
        match views.next() {
            Some(first) => {
                counts.joined += 1;
                counts.duplicates += views.len() as u64;
                record.server = Some(first);
                record.server_missing_reason = None;
                record.decomposition = crate::analysis::decompose(record);
            }
            None => {
                counts.missing += 1;
                record.server = None;
                record.decomposition = None;
                record.server_missing_reason = Some(missing_reason(record, options));
            }
        }
    }
    counts.unrelated_spans = store
        .traces
        .iter()
        .filter(|(id, _)| !used_traces.contains(*id))
        .map(|(_, spans)| spans.len() as u64)
        .sum();
    counts
}

/// Why a record has no server view.
pub fn missing_reason(record: &RequestRecord, options: &JoinOptions) -> String {
    if record.trace_id.is_none() {
        return TRACING_OFF.to_string();
    }
    if let Some(error) = &record.error {
        return match error.kind {
            ErrorKind::Connect => "request failed before the server answered (connect)".to_string(),
            kind => format!("request failed ({}) and no span arrived", kind.as_str()),
        };
    }
    if let Some(error) = record
        .trace_id
        .as_ref()
        .and_then(|t| options.backend_errors.get(t))
    {
        return error.clone();
    }
    options.no_span_reason.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::{decode_protobuf, spans_of};

    fn store_of(file: &str) -> SpanStore {
        let path = format!(
            "{}/../shared/fixtures/vllm/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let request = decode_protobuf(&std::fs::read(path).unwrap()).unwrap();
        let mut store = SpanStore::new();
        for span in spans_of(&request.resource_spans).unwrap() {
            store.insert(span);
        }
        store
    }

    fn record(request_id: &str, trace_id: Option<&str>) -> RequestRecord {
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

    #[test]
    fn joins_by_trace_id_and_counts_duplicates() {
        let store = store_of("traced-chat-n2.spans.pb");
        let mut records = vec![record("a", Some("2222222222222222222222222222aaaa"))];
        let options = JoinOptions {
            jaeger_ui: Some("http://localhost:16686/".into()),
            ..JoinOptions::default()
        };
        let counts = join(&mut records, &store, &options);
        assert_eq!(
            counts,
            JoinCounts {
                joined: 1,
                missing: 0,
                duplicates: 1,
                unrelated_spans: 0
            }
        );
        let r = &records[0];
        assert!(r.server.is_some());
        assert_eq!(r.server_missing_reason, None);
        assert_eq!(
            r.trace_url.as_deref(),
            Some("http://localhost:16686/trace/2222222222222222222222222222aaaa")
        );
        let d = r.decomposition.as_ref().unwrap();
        let s = r.server.as_ref().unwrap();
        assert!((d.network_ms.unwrap() - (40.0 - s.ttft_ms.unwrap())).abs() < 1e-9);
    }

    #[test]
    fn falls_back_to_the_request_id_and_reports_unrelated_spans() {
        // The untraced capture's span is a root of a trace the client never saw.
        let store = store_of("untraced-chat.spans.pb");
        let gen_ai_id = store
            .trace_ids()
            .flat_map(|t| store.trace(t))
            .find_map(|s| s.attr_str("gen_ai.request.id"))
            .unwrap()
            .to_string();
        let request_id = gen_ai_id.strip_prefix("chatcmpl-").unwrap();
        let mut records = vec![
            record(request_id, Some("0102030405060708090a0b0c0d0e0f10")),
            record("other", Some("1112131415161718191a1b1c1d1e1f20")),
        ];
        let options = JoinOptions {
            no_span_reason: "no span arrived within 15s".into(),
            ..JoinOptions::default()
        };
        let counts = join(&mut records, &store, &options);
        assert_eq!(counts.joined, 1);
        assert_eq!(counts.missing, 1);
        assert_eq!(counts.unrelated_spans, 0);
        assert_eq!(
            records[0].server.as_ref().unwrap().request_id.as_deref(),
            Some(gen_ai_id.as_str())
        );
        assert_eq!(
            records[1].server_missing_reason.as_deref(),
            Some("no span arrived within 15s")
        );

        let mut lonely = vec![record("nobody", Some("1112131415161718191a1b1c1d1e1f20"))];
        assert_eq!(join(&mut lonely, &store, &options).unrelated_spans, 1);
    }

    #[test]
    fn reasons_for_missing_spans() {
        let store = SpanStore::new();
        let off = record("a", None);
        let mut failed = record("b", Some("0102030405060708090a0b0c0d0e0f10"));
        failed.error = Some(crate::record::RequestError {
            kind: ErrorKind::Connect,
            message: "refused".into(),
            status: None,
            body_excerpt: None,
        });
        let unreachable = record("c", Some("1112131415161718191a1b1c1d1e1f20"));
        let options = JoinOptions {
            backend_errors: HashMap::from([(
                "1112131415161718191a1b1c1d1e1f20".to_string(),
                "trace backend unreachable: connection refused".to_string(),
            )]),
            ..JoinOptions::default()
        };
        let mut records = vec![off, failed, unreachable];
        join(&mut records, &store, &options);
        assert_eq!(
            records[0].server_missing_reason.as_deref(),
            Some(TRACING_OFF)
        );
        assert_eq!(records[0].trace_url, None);
        assert_eq!(
            records[1].server_missing_reason.as_deref(),
            Some("request failed before the server answered (connect)")
        );
        assert_eq!(
            records[2].server_missing_reason.as_deref(),
            Some("trace backend unreachable: connection refused")
        );
        assert!(records
            .iter()
            .all(|r| r.server.is_none() && r.decomposition.is_none()));
    }

    #[test]
    fn live_phases_follow_arriving_spans() {
        let mut store = SpanStore::new();
        assert_eq!(store.live_phases(), None);
        let full = store_of("concurrent-12.spans.pb");
        let all: Vec<Span> = full
            .trace_ids()
            .flat_map(|t| full.trace(t).to_vec())
            .collect();
        let queue_mean = all
            .iter()
            .map(|s| s.attr_f64("gen_ai.latency.time_in_queue").unwrap() * 1e3)
            .sum::<f64>()
            / 12.0;
        for span in all.iter().take(3).cloned() {
            store.insert(span);
        }
        assert_eq!(store.live_phases().unwrap().spans, 3);
        for span in all.iter().skip(3).cloned() {
            store.insert(span);
        }
        let phases = store.live_phases().unwrap();
        assert_eq!(phases.spans, 12);
        assert!((phases.queue_ms - queue_mean).abs() < 1e-6);
        assert!(phases.prefill_ms > 0.0 && phases.decode_ms > 0.0);
    }
}
