//! The span store: every span received, in the compact form of
//! [`SpanNode`], grouped by trace id, with an index by `gen_ai.request.id`;
//! the live phase means; and the successful traced requests still waiting for
//! their request span (so waiting needs no list of all records, and what it
//! holds is bounded by what is outstanding).

use super::engines::{has_request_span, request_views};
use super::node::SpanNode;
use super::span::Span;
use crate::analysis::live::PhaseMeans;
use crate::client::traceparent::TraceId;
use crate::record::{Endpoint, RequestRecord, ServerView};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Received spans, grouped by trace.
#[derive(Debug, Default)]
pub struct SpanStore {
    traces: HashMap<TraceId, TraceEntry>,
    /// Hash of a `gen_ai.request.id` → the traces holding a span with it. A hash
    /// is 8 bytes where the id is about 40; whoever looks up compares the id itself.
    by_request_key: HashMap<u64, TraceIds>,
    spans: u64,
    /// Service names, shared by the spans that name them.
    services: Vec<Arc<str>>,
    /// Traces changed since the live phase means were last brought up to date;
    /// `None` when the store keeps no live means.
    dirty: Option<HashSet<TraceId>>,
    phases: PhaseSums,
    awaited: Awaited,
}

/// The spans of one trace.
#[derive(Debug, Default)]
struct TraceEntry {
    nodes: Vec<SpanNode>,
    /// A joined record sent this trace or was joined to it.
    used: bool,
    /// This trace's part of the live phase means.
    phases: PhaseSums,
}

/// One trace id, or several (a request id seen in more than one trace).
#[derive(Debug, Clone)]
enum TraceIds {
    One(TraceId),
    Many(Vec<TraceId>),
}

impl TraceIds {
    fn add(&mut self, id: TraceId) {
        match self {
            TraceIds::One(one) if *one == id => {}
            TraceIds::One(one) => *self = TraceIds::Many(vec![*one, id]),
            TraceIds::Many(many) if many.contains(&id) => {}
            TraceIds::Many(many) => many.push(id),
        }
    }

    fn as_slice(&self) -> &[TraceId] {
        match self {
            TraceIds::One(one) => std::slice::from_ref(one),
            TraceIds::Many(many) => many,
        }
    }
}

/// Successful traced requests whose request span has not arrived yet.
#[derive(Debug, Default)]
struct Awaited {
    /// Trace id → the request-id keys of its record.
    by_trace: HashMap<TraceId, [u64; 2]>,
    /// Request-id key → the trace id of the record waiting for it.
    by_key: HashMap<u64, TraceId>,
    /// Successful traced records observed.
    observed: u64,
    /// A span arrived in the trace of an observed record.
    ours_seen: bool,
}

impl Awaited {
    fn remove(&mut self, trace_id: &TraceId) {
        if let Some(keys) = self.by_trace.remove(trace_id) {
            for key in keys {
                if self.by_key.get(&key) == Some(trace_id) {
                    self.by_key.remove(&key);
                }
            }
        }
    }
}

/// Sums behind [`PhaseMeans`], kept per trace so a trace can be recounted.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct PhaseSums {
    views: u32,
    /// Queue, prefill, decode: sums in ms and how many views had each.
    sums: [f64; 3],
    counts: [u32; 3],
}

impl PhaseSums {
    fn of(views: &[ServerView]) -> Self {
        let mut sums = Self::default();
        for view in views {
            sums.views += 1;
            for (i, value) in [view.queue_ms, view.prefill_ms, view.decode_ms]
                .into_iter()
                .enumerate()
            {
                if let Some(v) = value {
                    sums.sums[i] += v;
                    sums.counts[i] += 1;
                }
            }
        }
        sums
    }

    fn add(&mut self, other: &Self) {
        self.views += other.views;
        for i in 0..3 {
            self.sums[i] += other.sums[i];
            self.counts[i] += other.counts[i];
        }
    }

    fn subtract(&mut self, other: &Self) {
        self.views = self.views.saturating_sub(other.views);
        for i in 0..3 {
            self.sums[i] -= other.sums[i];
            self.counts[i] = self.counts[i].saturating_sub(other.counts[i]);
        }
    }
}

/// Spans made compact before they go into a store. Made outside the store's
/// lock (the attributes are written as JSON text then), it keeps the lock
/// short for whoever else waits on it, such as a run's record aggregator.
pub struct CompactSpans {
    spans: Vec<CompactSpan>,
}

struct CompactSpan {
    trace_id: TraceId,
    /// The key of its `gen_ai.request.id`.
    request_key: Option<u64>,
    node: SpanNode,
}

impl CompactSpans {
    /// The compact form of some spans.
    pub fn of(spans: impl IntoIterator<Item = Span>) -> Self {
        let mut services = Vec::new();
        let spans = spans
            .into_iter()
            .map(|span| CompactSpan {
                trace_id: span.trace_id,
                request_key: span.attr_str("gen_ai.request.id").map(request_key),
                node: SpanNode::of(&span, |name| intern(&mut services, name)),
            })
            .collect();
        Self { spans }
    }
}

/// The key of a request id in the store's index.
fn request_key(request_id: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    request_id.hash(&mut hasher);
    hasher.finish()
}

/// The `gen_ai.request.id` values vLLM gives this request: from `X-Request-Id`,
/// and from the response id the client saw.
pub fn fallback_request_ids(record: &RequestRecord) -> Vec<String> {
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

impl SpanStore {
    /// A store without live phase means (for joins after the fact).
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that keeps the live phase means of [`SpanStore::live_phases`].
    pub fn with_live_phases() -> Self {
        Self {
            dirty: Some(HashSet::new()),
            ..Self::default()
        }
    }

    /// Adds one span.
    pub fn insert(&mut self, span: Span) {
        self.insert_all([span]);
    }

    /// Adds spans (e.g. one export request); see [`SpanStore::insert_compact`].
    pub fn insert_all(&mut self, spans: impl IntoIterator<Item = Span>) {
        self.insert_compact(CompactSpans::of(spans));
    }

    /// Adds spans made compact beforehand; each trace they touch is looked at
    /// once afterwards, for the live means and the requests waiting for it.
    pub fn insert_compact(&mut self, compact: CompactSpans) {
        let mut touched: Vec<TraceId> = Vec::new();
        let mut keys_awaited: Vec<(u64, TraceId)> = Vec::new();
        for CompactSpan {
            trace_id,
            request_key,
            mut node,
        } in compact.spans
        {
            if let Some(key) = request_key {
                self.by_request_key
                    .entry(key)
                    .and_modify(|ids| ids.add(trace_id))
                    .or_insert(TraceIds::One(trace_id));
                if self.awaited.by_key.contains_key(&key) {
                    keys_awaited.push((key, trace_id));
                }
            }
            if let Some(service) = node.detail.as_mut().and_then(|d| d.service_name.as_mut()) {
                *service = share(&mut self.services, service);
            }
            let entry = self.traces.entry(trace_id).or_default();
            if entry.nodes.is_empty() {
                // Most traces hold one span: no room for more until a second comes.
                entry.nodes.reserve_exact(1);
            }
            entry.nodes.push(node);
            self.spans += 1;
            if touched.last() != Some(&trace_id) {
                touched.push(trace_id);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for trace_id in touched {
            self.touched(trace_id);
        }
        for (key, trace_id) in keys_awaited {
            self.check_awaited_key(key, &trace_id);
        }
    }

    fn touched(&mut self, trace_id: TraceId) {
        if let Some(dirty) = &mut self.dirty {
            dirty.insert(trace_id);
        }
        if self.awaited.by_trace.contains_key(&trace_id) {
            self.awaited.ours_seen = true;
            if self
                .traces
                .get(&trace_id)
                .is_some_and(|e| has_request_span(&e.nodes))
            {
                self.awaited.remove(&trace_id);
            }
        }
    }

    /// A span with an awaited request id arrived in `trace_id`: the record
    /// waiting for that id is done when the trace has a view with it.
    fn check_awaited_key(&mut self, key: u64, trace_id: &TraceId) {
        let Some(&waiting) = self.awaited.by_key.get(&key) else {
            return;
        };
        let matched = self.traces.get(trace_id).is_some_and(|entry| {
            request_views(&entry.nodes)
                .iter()
                .any(|v| v.request_id.as_deref().map(request_key) == Some(key))
        });
        if matched {
            self.awaited.remove(&waiting);
        }
    }

    /// Number of spans held.
    pub fn span_count(&self) -> u64 {
        self.spans
    }

    /// Number of spans held in one trace.
    pub fn trace_span_count(&self, trace_id: &TraceId) -> usize {
        self.traces.get(trace_id).map_or(0, |e| e.nodes.len())
    }

    /// The request views for a record: by its trace id, else by the request id
    /// the engine recorded (for proxies that drop `traceparent`), with the trace
    /// ids they came from.
    pub fn views_for(&self, record: &RequestRecord) -> (Vec<ServerView>, Vec<TraceId>) {
        if let Some(trace_id) = record.trace_id {
            let views = self.views_of(&trace_id);
            if !views.is_empty() {
                return (views, vec![trace_id]);
            }
        }
        for key in fallback_request_ids(record) {
            let Some(traces) = self.by_request_key.get(&request_key(&key)) else {
                continue;
            };
            let mut views: Vec<ServerView> = traces
                .as_slice()
                .iter()
                .flat_map(|t| self.views_of(t))
                .filter(|v| v.request_id.as_deref() == Some(key.as_str()))
                .collect();
            if !views.is_empty() {
                views.sort_by_key(|v| v.start_unix_ns);
                return (views, traces.as_slice().to_vec());
            }
        }
        (Vec::new(), Vec::new())
    }

    fn views_of(&self, trace_id: &TraceId) -> Vec<ServerView> {
        self.traces
            .get(trace_id)
            .map(|e| request_views(&e.nodes))
            .unwrap_or_default()
    }

    /// Marks traces as belonging to a request (they are not unrelated).
    pub fn mark_used(&mut self, trace_ids: impl IntoIterator<Item = TraceId>) {
        for trace_id in trace_ids {
            if let Some(entry) = self.traces.get_mut(&trace_id) {
                entry.used = true;
            }
        }
    }

    /// Spans of the traces no request was marked with (start-up spans, other clients).
    pub fn unrelated_spans(&self) -> u64 {
        self.traces
            .values()
            .filter(|e| !e.used)
            .map(|e| e.nodes.len() as u64)
            .sum()
    }

    /// Mean queue/prefill/decode over the request spans seen so far. Only traces
    /// changed since the last call are looked at again. `None` before the first
    /// view, and always for a store made by [`SpanStore::new`].
    pub fn live_phases(&mut self) -> Option<PhaseMeans> {
        for trace_id in std::mem::take(self.dirty.as_mut()?) {
            let Some(entry) = self.traces.get_mut(&trace_id) else {
                continue;
            };
            let fresh = PhaseSums::of(&request_views(&entry.nodes));
            self.phases.subtract(&entry.phases);
            self.phases.add(&fresh);
            entry.phases = fresh;
        }
        let sums = &self.phases;
        let mean = |i: usize| {
            if sums.counts[i] > 0 {
                sums.sums[i] / f64::from(sums.counts[i])
            } else {
                0.0
            }
        };
        (sums.views > 0).then(|| PhaseMeans {
            spans: u64::from(sums.views),
            queue_ms: mean(0),
            prefill_ms: mean(1),
            decode_ms: mean(2),
        })
    }

    /// Notes a finished record: a successful traced one whose request span has
    /// not arrived is waited for until it does.
    pub fn await_span_of(&mut self, record: &RequestRecord) {
        let Some(trace_id) = record.trace_id.filter(|_| record.ok()) else {
            return;
        };
        self.awaited.observed += 1;
        if self.traces.contains_key(&trace_id) {
            self.awaited.ours_seen = true;
        }
        if !self.views_for(record).0.is_empty() {
            return;
        }
        let keys = fallback_request_ids(record);
        let first = request_key(&keys[0]);
        let keys = [first, keys.get(1).map_or(first, |k| request_key(k))];
        self.awaited.by_trace.insert(trace_id, keys);
        for key in keys {
            self.awaited.by_key.entry(key).or_insert(trace_id);
        }
    }

    /// Successful traced records observed whose request span has not arrived.
    pub fn awaited(&self) -> usize {
        self.awaited.by_trace.len()
    }

    /// Successful traced records observed.
    pub fn observed(&self) -> u64 {
        self.awaited.observed
    }

    /// True when a span arrived in the trace of an observed record.
    pub fn saw_span_of_ours(&self) -> bool {
        self.awaited.ours_seen
    }

    /// Stops waiting for anything (frees what waiting held).
    pub fn stop_awaiting(&mut self) {
        self.awaited.by_trace = HashMap::new();
        self.awaited.by_key = HashMap::new();
    }
}

/// Distinct service names shared; beyond these each span keeps its own copy.
const SHARED_SERVICES: usize = 64;

/// The shared copy of a service name.
fn intern(services: &mut Vec<Arc<str>>, name: &str) -> Arc<str> {
    match services.iter().find(|s| &***s == name) {
        Some(known) => known.clone(),
        None => share(services, &Arc::from(name)),
    }
}

/// The shared copy of a service name; a new name is shared from now on.
fn share(services: &mut Vec<Arc<str>>, name: &Arc<str>) -> Arc<str> {
    if let Some(known) = services.iter().find(|s| **s == *name) {
        return known.clone();
    }
    if services.len() < SHARED_SERVICES {
        services.push(name.clone());
    }
    name.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::test_support::{fixture_spans, record};

    #[test]
    fn live_phases_follow_arriving_spans() {
        let mut store = SpanStore::with_live_phases();
        assert_eq!(store.live_phases(), None);
        let all = fixture_spans("vllm/concurrent-12.spans.pb");
        let queue_mean = all
            .iter()
            .map(|s| s.attr_f64("gen_ai.latency.time_in_queue").unwrap() * 1e3)
            .sum::<f64>()
            / 12.0;
        store.insert_all(all.iter().take(3).cloned());
        assert_eq!(store.live_phases().unwrap().spans, 3);
        store.insert_all(all.iter().skip(3).cloned());
        let phases = store.live_phases().unwrap();
        assert_eq!(phases.spans, 12);
        assert!((phases.queue_ms - queue_mean).abs() < 1e-6);
        assert!(phases.prefill_ms > 0.0 && phases.decode_ms > 0.0);

        let mut quiet = SpanStore::new();
        quiet.insert_all(all);
        assert_eq!(quiet.live_phases(), None, "no live means asked for");
    }

    #[test]
    fn awaited_records_leave_when_their_span_comes() {
        let spans = fixture_spans("vllm/traced-chat-n2.spans.pb");
        let trace_id = spans[0].trace_id.to_string();
        let mut store = SpanStore::new();
        let mut failed = record("failed", Some("0102030405060708090a0b0c0d0e0f10"));
        failed.error = Some(crate::record::RequestError {
            kind: crate::record::ErrorKind::Stream,
            message: "reset".into(),
            status: None,
            body_excerpt: None,
        });
        for r in [failed, record("untraced", None)] {
            store.await_span_of(&r);
        }
        assert_eq!(
            (store.awaited(), store.observed()),
            (0, 0),
            "not waited for"
        );

        store.await_span_of(&record("a", Some(&trace_id)));
        store.await_span_of(&record("b", Some("1112131415161718191a1b1c1d1e1f20")));
        assert_eq!((store.awaited(), store.observed()), (2, 2));
        assert!(!store.saw_span_of_ours());
        store.insert_all(spans);
        assert_eq!(store.awaited(), 1, "only b is still missing");
        assert!(store.saw_span_of_ours());

        // A record observed after its span came is not waited for.
        store.await_span_of(&record("late", Some(&trace_id)));
        assert_eq!((store.awaited(), store.observed()), (1, 3));
        store.stop_awaiting();
        assert_eq!(store.awaited(), 0);
    }

    #[test]
    fn a_span_found_by_request_id_ends_the_wait_of_its_record() {
        // A proxy dropped the traceparent: the span is in a trace of its own.
        let spans = fixture_spans("vllm/untraced-chat.spans.pb");
        let gen_ai_id = spans[0].attr_str("gen_ai.request.id").unwrap().to_string();
        let request_id = gen_ai_id.strip_prefix("chatcmpl-").unwrap();
        let mut store = SpanStore::new();
        store.await_span_of(&record(
            request_id,
            Some("0102030405060708090a0b0c0d0e0f10"),
        ));
        store.await_span_of(&record("other", Some("1112131415161718191a1b1c1d1e1f20")));
        assert_eq!(store.awaited(), 2);
        store.insert_all(spans);
        assert_eq!(store.awaited(), 1);
        assert!(!store.saw_span_of_ours(), "no span in a trace we sent");
    }

    #[test]
    fn a_trace_waits_until_its_request_span_is_complete() {
        // TGI's handler span closes last: the trace has no view until it comes.
        let spans = fixture_spans("tgi/chat-stream.request-trace.otlp.json");
        let trace_id = spans[0].trace_id.to_string();
        let (handler, rest): (Vec<Span>, Vec<Span>) = spans
            .into_iter()
            .partition(|s| s.name == "chat_completions");
        let mut store = SpanStore::new();
        store.await_span_of(&record("tgi", Some(&trace_id)));
        store.insert_all(rest);
        assert_eq!(store.awaited(), 1);
        assert!(store.saw_span_of_ours());
        store.insert_all(handler);
        assert_eq!(store.awaited(), 0);
        assert_eq!(store.trace_span_count(&trace_id.parse().unwrap()), 50);
    }
}
