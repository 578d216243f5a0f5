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
/// 2 KiB each): the last ones written or still waiting for their span.
pub const RECENT: usize = 4096;
/// Records waiting for their span at most; beyond, the oldest is written unjoined.
pub const MAX_PENDING: usize = 10_000;
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

/// Records' JSON by request id, and the ids oldest first.
type RecentRecords = (HashMap<String, Bytes>, VecDeque<String>);

impl Recent {
    pub fn get(&self, request_id: &str) -> Option<Bytes> {
        lock(&self.inner).0.get(request_id).cloned()
    }

    fn put(&self, record: &RequestRecord) {
        let json = Bytes::from(serde_json::to_vec(record).expect("a record serializes"));
        let mut inner = lock(&self.inner);
        let (map, order) = &mut *inner;
        let id = record.request_id.clone();
        if map.insert(id.clone(), json).is_none() {
            order.push_back(id);
            if order.len() > RECENT {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }
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
    /// least 1 s): a span is kept for one to two such periods, time enough
    /// for the record it belongs to, which looks for it within [`TICK`].
    fn rotate(&mut self) {
        if self.rotated.elapsed() < (self.span_wait / 3).max(Duration::from_secs(1)) {
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
        self.recent.put(&record);
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
        if let Err(e) = self.log.append(&record) {
            self.totals.write_errors += 1;
            if self.totals.write_errors == 1 {
                eprintln!("error: cannot append to {}: {e}", self.log.path().display());
            }
        }
        if let Some(history) = &self.history {
            history.record(&record);
        }
        self.recent.put(&record);
    }
}
