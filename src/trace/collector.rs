//! The run-time side of tracing: start the receiver (or nothing), wait for the
//! spans of finished requests, fetch from Jaeger/Tempo, join, write; plus the
//! `join` and `collect` commands.

use super::backend::{fetch_settled, http_client, Backoff, Fetched};
use super::jaeger::JaegerClient;
use super::join::{join, record_trace_id, JoinOptions, SpanStore, TRACING_OFF};
use super::receiver::{Receiver, ReceiverConfig, ReceiverCounters};
use super::span::{read_spans_jsonl, spans_of, SpanLine};
use super::tempo::TempoClient;
use super::{TraceArgs, TraceSource};
use crate::analysis::live::PhaseMeans;
use crate::client::traceparent::hex;
use crate::record::{read_records, rewrite_records, RequestRecord};
use anyhow::Context;
use futures::StreamExt;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How often the store is checked while waiting for spans.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// Traces fetched from a backend at once.
const BACKEND_CONCURRENCY: usize = 16;

/// Shown while waiting for spans: requests still without one, and time left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitProgress {
    pub missing: usize,
    pub remaining: Duration,
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

/// Collects spans during a run; [`SpanCollector::finish`] joins them.
pub struct SpanCollector {
    args: TraceArgs,
    run_dir: PathBuf,
    store: Arc<Mutex<SpanStore>>,
    receiver: Option<Receiver>,
}

/// Starts collecting for a run: the receiver listens for `otlp`; for `jaeger`
/// and `tempo` nothing listens (they are queried in `finish`); for `none` or
/// `--trace-header off` the collector is inert.
pub async fn start_collector(args: &TraceArgs, run_dir: &Path) -> anyhow::Result<SpanCollector> {
    check_backend_url(args)?;
    let store = Arc::new(Mutex::new(SpanStore::new()));
    let receiver = if args.trace_source == TraceSource::Otlp && args.sends_trace_header() {
        Some(
            Receiver::start(
                receiver_config(args, run_dir.join("spans.jsonl")),
                store.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    Ok(SpanCollector {
        args: args.clone(),
        run_dir: run_dir.to_path_buf(),
        store,
        receiver,
    })
}

fn receiver_config(args: &TraceArgs, spans_path: PathBuf) -> ReceiverConfig {
    let mut config = ReceiverConfig::new(args.otlp_grpc, args.otlp_http, spans_path);
    config.forward = args.otlp_forward.clone();
    config
}

fn check_backend_url(args: &TraceArgs) -> anyhow::Result<()> {
    match args.trace_source {
        TraceSource::Jaeger if args.jaeger_url.is_none() => {
            anyhow::bail!("--trace-source jaeger needs --jaeger-url (e.g. http://localhost:16686)")
        }
        TraceSource::Tempo if args.tempo_url.is_none() => {
            anyhow::bail!("--trace-source tempo needs --tempo-url (e.g. http://localhost:3200)")
        }
        _ => Ok(()),
    }
}

impl SpanCollector {
    /// Mean queue/prefill/decode of the request spans seen so far (cheap).
    pub fn live_phases(&self) -> Option<PhaseMeans> {
        self.store.lock().ok()?.live_phases()
    }

    /// Spans received so far.
    pub fn spans_seen(&self) -> u64 {
        match &self.receiver {
            Some(receiver) => receiver.counters().accepted_spans,
            None => self.store.lock().map(|s| s.span_count()).unwrap_or(0),
        }
    }

    /// The receiver's addresses (gRPC, HTTP) when it listens.
    pub fn receiver_addrs(&self) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
        self.receiver
            .as_ref()
            .map(|r| (r.grpc_addr(), r.http_addr()))
    }

    /// Waits up to `--span-wait` after the last response for the spans of the
    /// successful traced records (calling `on_wait` about every 100 ms), or
    /// queries Jaeger/Tempo; then joins, rewrites `requests.jsonl` in the run
    /// folder, and stops the receiver.
    pub async fn finish(
        mut self,
        records: &mut [RequestRecord],
        mut on_wait: impl FnMut(WaitProgress),
    ) -> anyhow::Result<JoinReport> {
        let inert = !self.args.sends_trace_header() || self.args.trace_source == TraceSource::None;
        let mut report = JoinReport::default();
        if inert {
            mark_tracing_off(records, self.args.jaeger_ui.as_deref());
        } else {
            let wait = self.args.span_wait;
            let remaining = wait_left_after_last_response(records, wait);
            let mut options = JoinOptions {
                jaeger_ui: self.args.jaeger_ui.clone(),
                no_span_reason: format!(
                    "no span arrived within {}",
                    humantime::format_duration(wait)
                ),
                backend_errors: HashMap::new(),
            };
            match backend_of(&self.args)? {
                Some(backend) => {
                    let fetched =
                        fetch_from_backend(&backend, records, remaining, &mut on_wait).await;
                    write_span_lines(&self.run_dir.join("spans.jsonl"), &fetched.resource_spans)?;
                    fetched.insert_into(&mut *lock(&self.store)?);
                    options.no_span_reason = format!(
                        "trace not found in {} within {}",
                        backend.name(),
                        humantime::format_duration(wait)
                    );
                    options.backend_errors = fetched.errors;
                }
                None => {
                    self.wait_for_spans(records, remaining, &mut on_wait)
                        .await?
                }
            }
            // Stopping the receiver first lets the writer put every queued span in the store.
            report.receiver = self.stop_receiver().await?;
            let counts = join(records, &*lock(&self.store)?, &options);
            report.joined = counts.joined;
            report.missing = counts.missing;
            report.duplicates = counts.duplicates;
            report.unrelated_spans = counts.unrelated_spans;
        }
        report.receiver = report.receiver.or(self.stop_receiver().await?);
        let requests = self.run_dir.join("requests.jsonl");
        rewrite_records(&requests, records)
            .with_context(|| format!("cannot rewrite {}", requests.display()))?;
        Ok(report)
    }

    async fn stop_receiver(&mut self) -> anyhow::Result<Option<ReceiverCounters>> {
        match self.receiver.take() {
            Some(receiver) => Ok(Some(receiver.shutdown().await?)),
            None => Ok(None),
        }
    }

    async fn wait_for_spans(
        &self,
        records: &[RequestRecord],
        remaining: Duration,
        on_wait: &mut impl FnMut(WaitProgress),
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + remaining;
        let mut pending: Vec<&RequestRecord> = records
            .iter()
            .filter(|r| r.ok() && r.trace_id.is_some())
            .collect();
        loop {
            {
                let store = lock(&self.store)?;
                pending.retain(|r| !store.has_view_for(r));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            on_wait(WaitProgress {
                missing: pending.len(),
                remaining: left,
            });
            if pending.is_empty() || left.is_zero() {
                return Ok(());
            }
            tokio::time::sleep(left.min(WAIT_POLL)).await;
        }
    }
}

fn lock(store: &Mutex<SpanStore>) -> anyhow::Result<std::sync::MutexGuard<'_, SpanStore>> {
    store
        .lock()
        .map_err(|_| anyhow::anyhow!("the span store was poisoned by a panic"))
}

/// Every record gets `tracing_off` (and the trace link, when one was sent).
fn mark_tracing_off(records: &mut [RequestRecord], jaeger_ui: Option<&str>) {
    for record in records {
        record.server = None;
        record.decomposition = None;
        record.server_missing_reason = Some(TRACING_OFF.to_string());
        record.trace_url = jaeger_ui
            .zip(record.trace_id.as_deref())
            .map(|(ui, id)| format!("{}/trace/{id}", ui.trim_end_matches('/')));
    }
}

/// `wait` minus the time since the last response ended, wall clock.
fn wait_left_after_last_response(records: &[RequestRecord], wait: Duration) -> Duration {
    let last_end_unix_ns = records
        .iter()
        .map(|r| {
            let end = r.instants_ns.end.unwrap_or(r.instants_ns.sent);
            r.sent_unix_ns + end.saturating_sub(r.instants_ns.sent)
        })
        .max();
    match last_end_unix_ns {
        Some(end) => {
            let since = Duration::from_nanos(crate::units::unix_now_ns().saturating_sub(end));
            wait.saturating_sub(since)
        }
        None => Duration::ZERO,
    }
}

/// A trace backend to query.
enum Backend {
    Jaeger(JaegerClient),
    Tempo(TempoClient),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Jaeger(_) => "Jaeger",
            Backend::Tempo(_) => "Tempo",
        }
    }

    async fn fetch(&self, trace_id: &[u8; 16]) -> Fetched {
        match self {
            Backend::Jaeger(client) => client.fetch(trace_id).await,
            Backend::Tempo(client) => client.fetch(trace_id).await,
        }
    }
}

fn backend_of(args: &TraceArgs) -> anyhow::Result<Option<Backend>> {
    check_backend_url(args)?;
    let client = || http_client().map_err(anyhow::Error::msg);
    Ok(
        match (args.trace_source, &args.jaeger_url, &args.tempo_url) {
            (TraceSource::Jaeger, Some(url), _) => {
                Some(Backend::Jaeger(JaegerClient::new(client()?, url)))
            }
            (TraceSource::Tempo, _, Some(url)) => {
                Some(Backend::Tempo(TempoClient::new(client()?, url)))
            }
            _ => None,
        },
    )
}

/// What a round of backend queries gave.
struct BackendSpans {
    resource_spans: Vec<ResourceSpans>,
    /// Trace id (hex) → why it could not be fetched.
    errors: HashMap<String, String>,
}

impl BackendSpans {
    fn insert_into(&self, store: &mut SpanStore) {
        for span in spans_of(&self.resource_spans).unwrap_or_default() {
            store.insert(span);
        }
    }
}

/// Fetches the trace of every successful traced record, `BACKEND_CONCURRENCY`
/// at a time, each until its span set settles or `remaining` has passed.
async fn fetch_from_backend(
    backend: &Backend,
    records: &[RequestRecord],
    remaining: Duration,
    on_wait: &mut impl FnMut(WaitProgress),
) -> BackendSpans {
    let deadline = Instant::now() + remaining;
    let mut trace_ids: Vec<[u8; 16]> = records
        .iter()
        .filter(|r| r.ok())
        .filter_map(record_trace_id)
        .collect();
    trace_ids.sort_unstable();
    trace_ids.dedup();
    let mut missing = trace_ids.len();
    let mut results = futures::stream::iter(trace_ids)
        .map(|trace_id| async move {
            let fetched =
                fetch_settled(|| backend.fetch(&trace_id), deadline, Backoff::default()).await;
            (trace_id, fetched)
        })
        .buffer_unordered(BACKEND_CONCURRENCY);
    let mut out = BackendSpans {
        resource_spans: Vec::new(),
        errors: HashMap::new(),
    };
    while let Some((trace_id, fetched)) = results.next().await {
        match fetched {
            Ok(Some(found)) => {
                // A span with a bad id would fail the whole set later: check here.
                match spans_of(&found) {
                    Ok(_) => out.resource_spans.extend(found),
                    Err(e) => {
                        out.errors.insert(
                            hex(&trace_id),
                            format!("trace backend sent an unreadable span: {e}"),
                        );
                    }
                }
                missing -= 1;
            }
            Ok(None) => missing -= 1,
            Err(error) => {
                out.errors.insert(hex(&trace_id), error);
                missing -= 1;
            }
        }
        on_wait(WaitProgress {
            missing,
            remaining: deadline.saturating_duration_since(Instant::now()),
        });
    }
    out
}

fn write_span_lines(path: &Path, resource_spans: &[ResourceSpans]) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for line in SpanLine::all_of(resource_spans) {
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `tracebench join RUN_DIR`: joins again from `requests.jsonl` and
/// `spans.jsonl`, or from Jaeger/Tempo when that is the source, and rewrites
/// `requests.jsonl` atomically.
pub async fn join_run_dir(run_dir: &Path, args: &TraceArgs) -> anyhow::Result<JoinReport> {
    let requests = run_dir.join("requests.jsonl");
    let mut records = read_records(&requests)?;
    let mut store = SpanStore::new();
    let mut options = JoinOptions {
        jaeger_ui: args.jaeger_ui.clone(),
        ..JoinOptions::default()
    };
    match backend_of(args)? {
        Some(backend) => {
            let fetched = fetch_from_backend(&backend, &records, args.span_wait, &mut |_| {}).await;
            fetched.insert_into(&mut store);
            options.no_span_reason = format!("trace not found in {}", backend.name());
            options.backend_errors = fetched.errors;
        }
        None => {
            let spans_path = run_dir.join("spans.jsonl");
            let (spans, _unreadable) = read_spans_jsonl(&spans_path).with_context(|| {
                "nothing to join from: give --trace-source jaeger --jaeger-url URL (or tempo) to query a backend"
            })?;
            for span in spans {
                store.insert(span);
            }
            options.no_span_reason = "no span in spans.jsonl".to_string();
        }
    }
    let counts = join(&mut records, &store, &options);
    rewrite_records(&requests, &records)
        .with_context(|| format!("cannot rewrite {}", requests.display()))?;
    Ok(JoinReport {
        joined: counts.joined,
        missing: counts.missing,
        duplicates: counts.duplicates,
        unrelated_spans: counts.unrelated_spans,
        receiver: None,
    })
}

/// `tracebench collect --out spans.jsonl`: the receiver alone, until Ctrl-C.
pub async fn collect_until_ctrl_c(args: &TraceArgs, out: &Path) -> anyhow::Result<()> {
    let store = Arc::new(Mutex::new(SpanStore::new()));
    let receiver = Receiver::start(receiver_config(args, out.to_path_buf()), store).await?;
    eprintln!(
        "receiving OTLP on grpc://{} and http://{}/v1/traces, writing {}; Ctrl-C stops",
        receiver.grpc_addr(),
        receiver.http_addr(),
        out.display()
    );
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    let counters = receiver.shutdown().await?;
    eprintln!(
        "stopped: {} spans accepted, {} requests refused, {} malformed, {} forward failures",
        counters.accepted_spans,
        counters.refused_requests,
        counters.malformed_requests,
        counters.forward_failures
    );
    Ok(())
}
