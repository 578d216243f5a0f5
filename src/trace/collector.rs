//! The run-time side of tracing: start the receiver (or nothing), observe each
//! finished record as it comes, wait for the spans still outstanding (or query
//! Jaeger/Tempo), then join records one at a time. Nothing here holds a list
//! of all records, so a run's finish can be one streaming pass:
//!
//! 1. [`start_collector`] before the load;
//! 2. [`SpanCollector::observe`] for every finished record;
//! 3. [`SpanCollector::wait`] once after the last response;
//! 4. [`SpanCollector::join`] for every record while rewriting `requests.jsonl`;
//! 5. [`SpanCollector::report`] for the counts.

use super::backend::{Backend, BackendError};
use super::config::{BackendUrl, TraceConfig};
use super::join::{join_record, mark_tracing_off, JoinCounts, JoinOptions};
use super::receiver::{Receiver, ReceiverConfig, ReceiverCounters};
use super::span::{for_each_span_in_jsonl, spans_of, SpanLine};
use super::store::SpanStore;
use crate::analysis::live::PhaseMeans;
use crate::client::traceparent::TraceId;
use crate::record::RequestRecord;
use anyhow::Context;
use futures::StreamExt;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// How often the store is checked while waiting for spans.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// How long after the last response a receiver that got no export at all stops
/// waiting: twice OpenTelemetry's default batch export delay (5 s), so a server
/// that exports at all has sent something by then.
pub const NO_EXPORT_WAIT: Duration = Duration::from_secs(10);

/// Shown while waiting for spans: requests still without one, and time left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitProgress {
    pub missing: usize,
    pub remaining: Duration,
}

/// What waiting found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitOutcome {
    /// What the run should say about its spans (for `run.json` notes and stderr).
    pub notes: Vec<String>,
    /// The embedded receiver's counters, when it ran.
    pub receiver: Option<ReceiverCounters>,
}

/// What the join found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinReport {
    pub joined: u64,
    pub missing: u64,
    /// Extra request spans for one request (counted, not used).
    pub duplicates: u64,
    /// Spans of traces no request sent (start-up spans, other clients).
    pub unrelated_spans: u64,
    /// The embedded receiver's counters, when it ran.
    pub receiver: Option<ReceiverCounters>,
}

/// Collects spans during a run and joins them onto records one at a time.
pub struct SpanCollector {
    config: TraceConfig,
    /// Nothing is collected: every record gets `tracing_off`.
    off: bool,
    spans_path: PathBuf,
    store: Arc<Mutex<SpanStore>>,
    receiver: Option<Receiver>,
    /// The latest end of an observed response, wall clock ns (0: none yet).
    last_end_unix_ns: AtomicU64,
    /// With Jaeger/Tempo: the trace id of every successful traced record, 16
    /// bytes each, since each is asked for after the run (nothing arrives by itself).
    backend_traces: Mutex<Vec<TraceId>>,
    options: JoinOptions,
    counts: Mutex<JoinCounts>,
    receiver_counters: Option<ReceiverCounters>,
}

/// Starts collecting for a run: the receiver listens for `otlp`; for `jaeger`
/// and `tempo` nothing listens (they are queried in [`SpanCollector::wait`]);
/// for `none` or `--trace-header off` the collector is inert.
pub async fn start_collector(
    config: &TraceConfig,
    run_dir: &Path,
) -> anyhow::Result<SpanCollector> {
    let mut collector = SpanCollector::new(config, run_dir.join("spans.jsonl"), config.is_off());
    if collector.listens() {
        let store = Arc::new(Mutex::new(SpanStore::with_live_phases()));
        let receiver_config = receiver_config(config, collector.spans_path.clone());
        collector.receiver = Some(Receiver::start(receiver_config, Some(store.clone())).await?);
        collector.store = store;
    }
    Ok(collector)
}

/// The receiver settings of a trace configuration.
pub fn receiver_config(config: &TraceConfig, spans_path: PathBuf) -> ReceiverConfig {
    let mut receiver = ReceiverConfig::new(config.otlp_grpc, config.otlp_http, spans_path);
    receiver.forward = config.otlp_forward.clone();
    receiver
}

/// Locks a mutex; one poisoned by a panic elsewhere is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SpanCollector {
    /// A collector with no receiver; `off` makes it inert.
    fn new(config: &TraceConfig, spans_path: PathBuf, off: bool) -> Self {
        Self {
            config: config.clone(),
            off,
            spans_path,
            store: Arc::new(Mutex::new(SpanStore::new())),
            receiver: None,
            last_end_unix_ns: AtomicU64::new(0),
            backend_traces: Mutex::new(Vec::new()),
            options: JoinOptions {
                jaeger_ui: config.jaeger_ui.clone(),
                no_span_reason: format!("no span arrived within {}", human(config.span_wait)),
                backend_errors: HashMap::new(),
            },
            counts: Mutex::new(JoinCounts::default()),
            receiver_counters: None,
        }
    }

    /// A collector for joining a finished run again (never inert, no receiver).
    pub(super) fn for_rejoin(config: &TraceConfig) -> Self {
        Self::new(config, PathBuf::new(), false)
    }

    fn listens(&self) -> bool {
        !self.off && self.config.backend.is_none()
    }

    /// Mean queue/prefill/decode of the request spans seen so far (cheap).
    pub fn live_phases(&self) -> Option<PhaseMeans> {
        lock(&self.store).live_phases()
    }

    /// Spans received so far.
    pub fn spans_seen(&self) -> u64 {
        match &self.receiver {
            Some(receiver) => receiver.counters().accepted_spans,
            None => lock(&self.store).span_count(),
        }
    }

    /// The receiver's addresses (gRPC, HTTP) when it listens.
    pub fn receiver_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.receiver
            .as_ref()
            .map(|r| (r.grpc_addr(), r.http_addr()))
    }

    /// Notes one finished record (call it for every record as it comes; cheap).
    /// A successful traced record whose span has not come is waited for.
    pub fn observe(&self, record: &RequestRecord) {
        if self.off {
            return;
        }
        let end = record.instants_ns.end.unwrap_or(record.instants_ns.sent);
        let end_unix_ns = record
            .sent_unix_ns
            .saturating_add(end.saturating_sub(record.instants_ns.sent));
        self.last_end_unix_ns
            .fetch_max(end_unix_ns, Ordering::Relaxed);
        if self.config.backend.is_some() {
            if let Some(trace_id) = record.trace_id.filter(|_| record.ok()) {
                lock(&self.backend_traces).push(trace_id);
            }
        } else {
            lock(&self.store).await_span_of(record);
        }
    }

    /// Waits up to `--span-wait` after the last response for the spans still
    /// outstanding (calling `on_wait` about every 100 ms), or queries
    /// Jaeger/Tempo for the observed traces; then stops the receiver. When the
    /// receiver got no export at all it stops [`NO_EXPORT_WAIT`] after the last
    /// response. The outcome's notes say what to check when no span came.
    pub async fn wait(
        &mut self,
        mut on_wait: impl FnMut(WaitProgress),
    ) -> anyhow::Result<WaitOutcome> {
        let mut outcome = WaitOutcome::default();
        if self.off {
            return Ok(outcome);
        }
        let span_wait = self.config.span_wait;
        if let Some(url) = self.config.backend.clone() {
            let within = format!(" within {}", human(span_wait));
            let spans_path = self.spans_path.clone();
            let remaining = self.wait_left(span_wait);
            self.query_backend(&url, remaining, Some(&spans_path), &within, &mut on_wait)
                .await?;
        } else if let Some(addrs) = self.receiver_addrs() {
            self.wait_for_receiver(&mut on_wait).await;
            // Stopping the receiver first lets the writer put every queued span in the store.
            let counters = self.stop_receiver().await?;
            outcome.notes = self.receiver_notes(&counters, addrs);
            outcome.receiver = Some(counters);
        }
        lock(&self.store).stop_awaiting();
        self.receiver_counters = outcome.receiver;
        Ok(outcome)
    }

    /// `wait` minus the time since the last response ended, wall clock.
    fn wait_left(&self, wait: Duration) -> Duration {
        match self.last_end_unix_ns.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            end => {
                let since = crate::units::unix_now_ns().saturating_sub(end);
                wait.saturating_sub(Duration::from_nanos(since))
            }
        }
    }

    async fn wait_for_receiver(&self, on_wait: &mut impl FnMut(WaitProgress)) {
        let Some(receiver) = &self.receiver else {
            return;
        };
        let now = Instant::now();
        let deadline = now + self.wait_left(self.config.span_wait);
        let quiet_deadline = now + self.wait_left(self.config.span_wait.min(NO_EXPORT_WAIT));
        loop {
            let missing = lock(&self.store).awaited();
            let end = if got_nothing(&receiver.counters()) {
                quiet_deadline
            } else {
                deadline
            };
            let left = end.saturating_duration_since(Instant::now());
            on_wait(WaitProgress {
                missing,
                remaining: left,
            });
            if missing == 0 || left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(WAIT_POLL)).await;
        }
    }

    async fn stop_receiver(&mut self) -> anyhow::Result<ReceiverCounters> {
        match self.receiver.take() {
            Some(receiver) => receiver.shutdown().await,
            None => Ok(ReceiverCounters::default()),
        }
    }

    /// What to say when none of the awaited spans came, and why no span came
    /// for the records still missing one.
    fn receiver_notes(
        &mut self,
        counters: &ReceiverCounters,
        (grpc, http): (SocketAddr, SocketAddr),
    ) -> Vec<String> {
        let store = lock(&self.store);
        if store.observed() == 0 {
            return Vec::new();
        }
        if got_nothing(counters) {
            self.options.no_span_reason =
                "no span arrived: the receiver got no OTLP export".to_string();
            return vec![no_export_note(grpc, http, self.config.span_wait)];
        }
        if !store.saw_span_of_ours() {
            return vec![foreign_spans_note(
                counters.accepted_spans,
                store.observed(),
            )];
        }
        Vec::new()
    }

    /// Queries the backend for every observed trace id, writing what it gives
    /// to `spans_path` (when given) and the store. `within` ends the reason of
    /// a trace not found (e.g. ` within 15s`).
    pub(super) async fn query_backend(
        &mut self,
        url: &BackendUrl,
        remaining: Duration,
        spans_path: Option<&Path>,
        within: &str,
        on_wait: &mut impl FnMut(WaitProgress),
    ) -> anyhow::Result<()> {
        let backend = Backend::new(url)?;
        let mut trace_ids = std::mem::take(&mut *lock(&self.backend_traces));
        trace_ids.sort_unstable();
        trace_ids.dedup();
        let mut out = spans_path.map(SpanLines::create).transpose()?;
        let deadline = Instant::now() + remaining;
        let mut missing = trace_ids.len();
        let mut results = std::pin::pin!(backend.fetch_each(trace_ids, deadline));
        while let Some((trace_id, fetched)) = results.next().await {
            missing -= 1;
            let stored = fetched.and_then(|found| self.keep(found.unwrap_or_default(), &mut out));
            if let Err(error) = stored {
                self.options
                    .backend_errors
                    .insert(trace_id, error.to_string());
            }
            on_wait(WaitProgress {
                missing,
                remaining: deadline.saturating_duration_since(Instant::now()),
            });
        }
        if let Some(out) = out {
            out.finish()?;
        }
        self.options.no_span_reason = format!("trace not found in {}{within}", backend.name());
        Ok(())
    }

    /// Puts one fetched trace in the store (and `spans.jsonl`).
    fn keep(
        &self,
        found: Vec<ResourceSpans>,
        out: &mut Option<SpanLines>,
    ) -> Result<(), BackendError> {
        let spans = spans_of(&found)?;
        if let Some(out) = out {
            out.write(&found);
        }
        lock(&self.store).insert_all(spans);
        Ok(())
    }

    /// Loads a run folder's `spans.jsonl` into the store.
    pub(super) fn load_spans_jsonl(&mut self, path: &Path) -> anyhow::Result<()> {
        let mut store = lock(&self.store);
        for_each_span_in_jsonl(path, |span| store.insert(span))?;
        drop(store);
        self.options.no_span_reason = "no span in spans.jsonl".to_string();
        Ok(())
    }

    /// Joins one record: its server view, span-derived fields and trace link,
    /// or the reason it has none (`tracing_off` when the collector is inert).
    /// Call it after [`SpanCollector::wait`], once per record.
    pub fn join(&self, record: &mut RequestRecord) {
        if self.off {
            mark_tracing_off(record, self.config.jaeger_ui.as_deref());
            return;
        }
        let counts = join_record(record, &mut lock(&self.store), &self.options);
        lock(&self.counts).add(counts);
    }

    /// What the joins so far found.
    pub fn report(&self) -> JoinReport {
        let counts = *lock(&self.counts);
        let unrelated_spans = if self.off {
            0
        } else {
            lock(&self.store).unrelated_spans()
        };
        JoinReport {
            joined: counts.joined,
            missing: counts.missing,
            duplicates: counts.duplicates,
            unrelated_spans,
            receiver: self.receiver_counters,
        }
    }
}

/// True when the receiver got no export at all: no span from anyone, and no
/// refused or malformed request.
fn got_nothing(counters: &ReceiverCounters) -> bool {
    counters.accepted_spans == 0
        && counters.refused_requests == 0
        && counters.malformed_requests == 0
}

fn human(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(duration)
}

/// The note for a run whose receiver got no OTLP export at all.
fn no_export_note(grpc: SocketAddr, http: SocketAddr, span_wait: Duration) -> String {
    let waited = span_wait.min(NO_EXPORT_WAIT);
    let stopped = if span_wait > NO_EXPORT_WAIT {
        format!(
            " (so the wait stopped there, not after --span-wait {})",
            human(span_wait)
        )
    } else {
        String::new()
    };
    format!(
        "no span came: the OTLP receiver (grpc://{grpc}, http://{http}/v1/traces) got no export \
         at all within {} of the last response{stopped}. Check that the server exports traces to \
         it (vLLM: --otlp-traces-endpoint grpc://{grpc}; SGLang: --enable-trace \
         --otlp-traces-endpoint {grpc}; TGI: --otlp-endpoint http://{grpc}) and can reach that \
         address: a server in a container or on another host needs --otlp-grpc/--otlp-http on an \
         address it can reach (e.g. 0.0.0.0:4317)",
        human(waited)
    )
}

/// The note for a run whose receiver got spans, none in its requests' traces.
fn foreign_spans_note(spans: u64, requests: u64) -> String {
    format!(
        "the OTLP receiver got {spans} spans, but none in the traces of the {requests} requests \
         sent: something between tracebench and the server (a proxy, gateway or frontend) may \
         drop the traceparent header, or the server starts traces of its own; requests are then \
         matched by request id where the engine records one"
    )
}

/// `spans.jsonl` written one fetched trace at a time.
struct SpanLines {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    error: Option<std::io::Error>,
}

impl SpanLines {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: std::io::BufWriter::new(file),
            error: None,
        })
    }

    fn write(&mut self, resource_spans: &[ResourceSpans]) {
        for line in SpanLine::all_of(resource_spans) {
            let written = serde_json::to_writer(&mut self.out, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| self.out.write_all(b"\n"));
            if let Err(error) = written {
                self.error.get_or_insert(error);
            }
        }
    }

    fn finish(mut self) -> anyhow::Result<()> {
        let flushed = self.out.flush();
        match self.error.take().map_or(flushed, Err) {
            Ok(()) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot write {}", self.path.display())),
        }
    }
}
