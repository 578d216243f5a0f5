//! Where finished requests go: one task takes each record, counts it into
//! the Prometheus histograms and the live view, holds it until its server
//! span is joined (from the embedded receiver's store, [`crate::trace::join`])
//! or `--span-wait` passes, then appends it to `requests.jsonl` and the
//! SQLite history. The last records are kept for
//! `GET /tracebench/requests/{id}`. What is held is bounded: records still
//! waiting for a span (at most [`MAX_PENDING`]), the recent records, and
//! the spans of the last two thirds of `--span-wait` (the store is swapped
//! for a fresh one every third).

use super::exposition::ProxyMetrics;
use crate::analysis::live::LiveStats;
use crate::record::{RecordLog, RequestRecord};
use crate::report::sqlite::HistoryWriter;
use crate::trace::join::{join_record, mark_tracing_off, JoinOptions};
use crate::trace::store::SpanStore;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Records kept for `GET /tracebench/requests/{id}` (as JSON text, about
/// 2 KiB each): the last ones written or still waiting for their span, up
/// to [`RECENT_BYTES`] of them.
pub const RECENT: usize = 4096;
/// Most JSON the recent records hold: records of long answers are larger.
pub const RECENT_BYTES: usize = 4 << 20;
/// Records waiting for their span at most; beyond, the oldest is written unjoined.
pub const MAX_PENDING: usize = 10_000;
/// Spans the store takes before it is swapped early (the one before it is kept too).
pub const MAX_HELD_SPANS: u64 = 5_000;
/// How often the store is looked at for the spans of waiting records.
const TICK: Duration = Duration::from_millis(100);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Message {
    Record(Box<RequestRecord>, u16),
    Finish(oneshot::Sender<SinkTotals>),
}

/// Hands records to the sink task; cheap to clone.
#[derive(Clone)]
pub(crate) struct SinkHandle {
    tx: mpsc::UnboundedSender<Message>,
}

impl SinkHandle {
    /// Queues a finished record; `status` is what the client got.
    pub fn record(&self, record: RequestRecord, status: u16) {
        let _ = self.tx.send(Message::Record(Box::new(record), status));
    }

    /// Waits for the spans of the records still waiting (up to `--span-wait`),
    /// writes every record, and stops the task.
    pub async fn finish(&self) -> SinkTotals {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Finish(tx)).is_err() {
            return SinkTotals::default();
        }
        rx.await.unwrap_or_default()
    }
}

/// What the sink wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkTotals {
    pub records: u64,
    pub joined: u64,
    pub write_errors: u64,
}

/// The last records by request id, as JSON.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    inner: Mutex<RecentRecords>,
}

/// Records' JSON by request id, the ids oldest first, and the JSON's bytes.
#[derive(Debug, Default)]
struct RecentRecords {
    by_id: HashMap<String, Bytes>,
    order: VecDeque<String>,
    bytes: usize,
}

impl Recent {
    pub fn get(&self, request_id: &str) -> Option<Bytes> {
        lock(&self.inner).by_id.get(request_id).cloned()
    }

    /// Keeps `json` as the record of `request_id` (in place of an earlier
    /// one), dropping the oldest beyond [`RECENT`] records or [`RECENT_BYTES`].
    fn put(&self, request_id: &str, json: Bytes) {
        let mut inner = lock(&self.inner);
        let RecentRecords {
            by_id,
            order,
            bytes,
        } = &mut *inner;
        *bytes += json.len();
        match by_id.insert(request_id.to_string(), json) {
            Some(earlier) => *bytes -= earlier.len(),
            None => order.push_back(request_id.to_string()),
        }
        while order.len() > RECENT || (*bytes > RECENT_BYTES && order.len() > 1) {
            let Some(old) = order.pop_front() else { break };
            if let Some(json) = by_id.remove(&old) {
                *bytes -= json.len();
            }
        }
    }
}

/// A record's JSON line (the line's end included).
fn json_line(record: &RequestRecord) -> Bytes {
    let mut line = serde_json::to_vec(record).expect("a record serializes");
    line.push(b'\n');
    Bytes::from(line)
}

/// The record without the line's end.
fn json_of(line: &Bytes) -> Bytes {
    line.slice(..line.len() - 1)
}

/// The span join of the proxy: the receiver's store and the one before it.
pub(crate) struct Joiner {
    pub store: Arc<Mutex<SpanStore>>,
    previous: SpanStore,
    options: JoinOptions,
    span_wait: Duration,
    rotated: Instant,
    spans_seen: u64,
}

impl Joiner {
    pub fn new(
        store: Arc<Mutex<SpanStore>>,
        span_wait: Duration,
        jaeger_ui: Option<String>,
    ) -> Self {
        Self {
            store,
            previous: SpanStore::new(),
            options: JoinOptions {
                jaeger_ui,
                no_span_reason: format!(
                    "no span arrived within {}",
                    humantime::format_duration(span_wait)
                ),
                backend_errors: HashMap::new(),
            },
            span_wait,
            rotated: Instant::now(),
            spans_seen: 0,
        }
    }

    /// Joins `record` when its span is in; false when it is still missing.
    fn try_join(&mut self, record: &mut RequestRecord) -> bool {
        let mut current = lock(&self.store);
        for store in [&mut *current, &mut self.previous] {
            if !store.views_for(record).0.is_empty() {
                join_record(record, store, &self.options);
                return true;
            }
        }
        false
    }

    /// True when spans came since the last call (or the store was swapped).
    fn news(&mut self) -> bool {
        let now = lock(&self.store).span_count();
        let news = now != self.spans_seen;
        self.spans_seen = now;
        news
    }

    /// Swaps the store for a fresh one every third of `--span-wait` (at
    /// least 1 s), or sooner once it holds [`MAX_HELD_SPANS`] (at least
    /// 1 s all the same): a span is kept for one to two such periods, time
    /// enough for the record it belongs to, which looks for it within
    /// [`TICK`], and the spans held do not grow with the request rate.
    fn rotate(&mut self) {
        let age = self.rotated.elapsed();
        let full = lock(&self.store).span_count() >= MAX_HELD_SPANS;
        if age < Duration::from_secs(1) || (age < self.span_wait / 3 && !full) {
            return;
        }
        let mut current = lock(&self.store);
        self.previous = std::mem::replace(&mut *current, SpanStore::with_live_phases());
        self.rotated = Instant::now();
        self.spans_seen = 0;
    }

    fn give_up(&self, record: &mut RequestRecord) {
        record.server = None;
        record.decomposition = None;
        record.server_missing_reason =
            Some(crate::trace::join::missing_reason(record, &self.options));
    }
}

struct Pending {
    record: RequestRecord,
    status: u16,
    deadline: Instant,
}

/// The sink task's state.
pub(crate) struct Sink {
    log: RecordLog,
    history: Option<HistoryWriter>,
    metrics: Arc<ProxyMetrics>,
    recent: Arc<Recent>,
    live: Option<Arc<Mutex<LiveStats>>>,
    /// `None` when tracing is off: records are written at once, `tracing_off`.
    joiner: Option<Joiner>,
    pending: VecDeque<Pending>,
    totals: SinkTotals,
}

impl Sink {
    pub fn new(
        log: RecordLog,
        history: Option<HistoryWriter>,
        metrics: Arc<ProxyMetrics>,
        recent: Arc<Recent>,
        live: Option<Arc<Mutex<LiveStats>>>,
        joiner: Option<Joiner>,
    ) -> Self {
        Self {
            log,
            history,
            metrics,
            recent,
            live,
            joiner,
            pending: VecDeque::new(),
            totals: SinkTotals::default(),
        }
    }

    /// Starts the task; returns its handle.
    pub fn spawn(self) -> (SinkHandle, tokio::task::JoinHandle<Option<HistoryWriter>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (SinkHandle { tx }, tokio::spawn(self.run(rx)))
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Message>) -> Option<HistoryWriter> {
        let mut ticker = tokio::time::interval(TICK);
        let done = loop {
            tokio::select! {
                message = rx.recv() => match message {
                    Some(Message::Record(record, status)) => self.take(*record, status),
                    Some(Message::Finish(done)) => break Some(done),
                    None => break None,
                },
                _ = ticker.tick() => self.tick(false),
            }
        };
        // Drain what came before the finish, then wait for the last spans.
        while let Ok(Message::Record(record, status)) = rx.try_recv() {
            self.take(*record, status);
        }
        while !self.pending.is_empty() {
            ticker.tick().await;
            self.tick(false);
        }
        self.tick(true);
        if let Some(done) = done {
            let _ = done.send(self.totals);
        }
        self.history
    }

    /// One record as it finishes: counted now, written once joined.
    fn take(&mut self, mut record: RequestRecord, status: u16) {
        self.metrics.observe(&record, status);
        if let Some(live) = &self.live {
            lock(live).observe(&record);
        }
        let waits = match &mut self.joiner {
            Some(joiner) if record.trace_id.is_some() => {
                (!joiner.try_join(&mut record)).then_some(joiner.span_wait)
            }
            _ => {
                mark_tracing_off(&mut record, None);
                None
            }
        };
        let Some(span_wait) = waits else {
            return self.write(record, status);
        };
        self.recent
            .put(&record.request_id, json_of(&json_line(&record)));
        if self.pending.len() >= MAX_PENDING {
            if let Some(mut oldest) = self.pending.pop_front() {
                oldest.record.server_missing_reason = Some(format!(
                    "not joined: more than {MAX_PENDING} requests were waiting for their spans"
                ));
                self.write(oldest.record, oldest.status);
            }
        }
        let deadline = Instant::now() + span_wait;
        self.pending.push_back(Pending {
            record,
            status,
            deadline,
        });
    }

    /// Joins waiting records whose spans came, writes those past their
    /// deadline (all of them when `flush`), swaps the store when due.
    fn tick(&mut self, flush: bool) {
        let Some(joiner) = &mut self.joiner else {
            return;
        };
        let mut ready = Vec::new();
        if joiner.news() && !self.pending.is_empty() {
            let mut waiting = VecDeque::with_capacity(self.pending.len());
            for mut pending in self.pending.drain(..) {
                if joiner.try_join(&mut pending.record) {
                    ready.push(pending);
                } else {
                    waiting.push_back(pending);
                }
            }
            self.pending = waiting;
        }
        let now = Instant::now();
        while let Some(first) = self.pending.front() {
            if !flush && first.deadline > now {
                break;
            }
            let mut late = self.pending.pop_front().expect("a front");
            joiner.give_up(&mut late.record);
            ready.push(late);
        }
        joiner.rotate();
        for pending in ready {
            self.write(pending.record, pending.status);
        }
    }

    fn write(&mut self, record: RequestRecord, status: u16) {
        self.totals.records += 1;
        if record.server.is_some() {
            self.totals.joined += 1;
            self.metrics.observe_join(&record, status);
        }
        let line = json_line(&record);
        if let Err(e) = self.log.append_line(&line) {
            self.totals.write_errors += 1;
            if self.totals.write_errors == 1 {
                eprintln!("error: cannot append to {}: {e}", self.log.path().display());
            }
        }
        if let Some(history) = &self.history {
            history.record(&record);
        }
        self.recent.put(&record.request_id, json_of(&line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(bytes: usize) -> Bytes {
        Bytes::from(vec![b'x'; bytes])
    }

    #[test]
    fn recent_records_stay_within_their_count_and_bytes() {
        let recent = Recent::default();
        for i in 0..RECENT + 10 {
            recent.put(&format!("r{i}"), json(10));
        }
        assert!(recent.get("r9").is_none(), "the oldest beyond the count go");
        assert!(recent.get("r10").is_some());
        let big = RECENT_BYTES / 4 + 1;
        for i in 0..4 {
            recent.put(&format!("big{i}"), json(big));
        }
        assert!(
            recent.get("big0").is_none(),
            "the oldest beyond the bytes go"
        );
        assert!(recent.get("big3").is_some() && recent.get("big1").is_some());
        let inner = lock(&recent.inner);
        let held: usize = inner.by_id.values().map(Bytes::len).sum();
        assert_eq!(inner.bytes, held);
        assert!(held <= RECENT_BYTES);
        assert_eq!(inner.order.len(), inner.by_id.len());
    }

    #[test]
    fn the_span_store_is_swapped_early_once_it_is_full() {
        let spans = crate::trace::test_support::fixture_spans("vllm/concurrent-12.spans.pb");
        let store = Arc::new(Mutex::new(SpanStore::with_live_phases()));
        let mut joiner = Joiner::new(store.clone(), Duration::from_secs(15), None);
        let fill = |count: u64| {
            let batch = spans.iter().cycle().take(count as usize).cloned();
            lock(&store).insert_all(batch);
        };
        fill(MAX_HELD_SPANS - 1);
        joiner.rotated = Instant::now() - Duration::from_secs(2);
        joiner.rotate();
        assert_eq!(
            lock(&store).span_count(),
            MAX_HELD_SPANS - 1,
            "not full, not due"
        );
        fill(1);
        joiner.rotate();
        assert_eq!(lock(&store).span_count(), 0, "full: swapped");
        assert_eq!(
            joiner.previous.span_count(),
            MAX_HELD_SPANS,
            "and still looked in"
        );
        fill(MAX_HELD_SPANS);
        joiner.rotate();
        assert_eq!(
            lock(&store).span_count(),
            MAX_HELD_SPANS,
            "full, but swapped under 1 s ago"
        );
    }

    #[test]
    fn a_record_put_again_replaces_its_json() {
        let recent = Recent::default();
        recent.put("a", json(5));
        recent.put("a", json(7));
        assert_eq!(recent.get("a").map(|j| j.len()), Some(7));
        let inner = lock(&recent.inner);
        assert_eq!((inner.bytes, inner.order.len()), (7, 1));
    }
}
