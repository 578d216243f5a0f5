//! `tracebench proxy`: a measuring reverse proxy in front of one
//! OpenAI-compatible server, for clients that cannot be changed. It feeds
//! the same records, join and sinks as a run, in stages:
//! [`listener`] (accept, limits, graceful stop) → [`forward`] (pass the
//! request to the fixed [`upstream`], answer as it arrives) → [`measure`] and
//! [`relay`] (per-request timings from the client's own SSE framing and
//! chunk reader, metrics handed back) → [`sink`] (span join, `requests.jsonl`,
//! the SQLite history), with [`exposition`] (Prometheus text), [`gpu`]
//! (memory per request) and the live dashboard beside them. The records
//! folder is a run folder: `report`, `compare` and `join` read it, and
//! [`window`] cuts a time window of it.

pub mod config;
mod exposition;
mod forward;
mod gpu;
mod listener;
mod measure;
mod relay;
mod sink;
mod upstream;
pub mod window;

pub use config::{Limits, ProxyConfig};
pub use forward::METRICS_HEADER;
pub use sink::SinkTotals;

use crate::analysis::live::LiveStats;
use crate::analysis::Slo;
use crate::clock::RunClock;
use crate::record::RecordLog;
use crate::report::run_folder::RunFolder;
use crate::report::sqlite::HistoryWriter;
use crate::run::manifest::{RunManifest, Server};
use crate::telemetry::ServerMetricsSpec;
use crate::trace::receiver::Receiver;
use crate::trace::store::SpanStore;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What every request handler shares.
pub(crate) struct Shared {
    config: ProxyConfig,
    upstream: upstream::Upstream,
    clock: RunClock,
    sink: sink::SinkHandle,
    metrics: Arc<exposition::ProxyMetrics>,
    recent: Arc<sink::Recent>,
    gpu: Option<Arc<gpu::GpuWatch>>,
    /// Measured requests in flight.
    in_flight: Arc<AtomicU64>,
    /// Measured requests started (their record index).
    started: AtomicU64,
    /// Cancelled once the proxy is stopping.
    stop: CancellationToken,
}

/// A running proxy.
pub struct Proxy {
    addr: SocketAddr,
    dir: PathBuf,
    stop: CancellationToken,
    /// Cancelled when the dashboard's user quits.
    quit: Arc<tokio::sync::Notify>,
    serving: JoinHandle<()>,
    rest: Rest,
}

/// What is stopped after the listener.
struct Rest {
    shared: Arc<Shared>,
    sink_task: JoinHandle<Option<HistoryWriter>>,
    clock: RunClock,
    receiver: Option<Receiver>,
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    background: CancellationToken,
    view: Option<crate::run::live::View>,
    manifest: RunManifest,
}

/// What a stopped proxy wrote.
#[derive(Debug)]
pub struct ProxyOutcome {
    pub dir: PathBuf,
    pub totals: SinkTotals,
    pub summary: crate::analysis::Summary,
}

/// Starts the proxy: binds `--listen` and the OTLP receiver (an address in
/// use is an error naming its flag), creates the records folder, starts the
/// sink, telemetry and (with `--tui`) the dashboard.
pub async fn start(config: ProxyConfig, command_line: String) -> anyhow::Result<Proxy> {
    let upstream = upstream::Upstream::new(&config.upstream)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (--listen): {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let dir = config.dir.clone();
    if dir.join("requests.jsonl").exists() {
        anyhow::bail!(
            "{} already holds records: choose another --run-id or --out",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let manifest = manifest(&config, &command_line);
    manifest.write(&dir)?;
    let clock = RunClock::start();
    let (receiver, joiner) = start_join(&config, &dir).await?;
    let telemetry_off = config.telemetry.gpu.is_empty()
        && config.telemetry.server_metrics == ServerMetricsSpec::Off;
    let telemetry = match telemetry_off {
        true => None,
        false => Some(Arc::new(
            crate::telemetry::start(&config.telemetry, config.upstream.as_str(), &dir, clock)
                .await?,
        )),
    };
    let background = CancellationToken::new();
    let gpu = telemetry.as_ref().filter(|t| t.samples_gpu()).map(|t| {
        let watch = Arc::new(gpu::GpuWatch::default());
        let interval = config.telemetry.gpu_interval;
        tokio::spawn(gpu::follow(
            t.clone(),
            watch.clone(),
            interval,
            background.clone(),
        ));
        watch
    });
    let metrics = Arc::new(exposition::ProxyMetrics::default());
    let recent = Arc::new(sink::Recent::default());
    let in_flight = Arc::new(AtomicU64::new(0));
    let live = config
        .tui
        .then(|| Arc::new(Mutex::new(LiveStats::new(None))));
    let quit = Arc::new(tokio::sync::Notify::new());
    let view = live.as_ref().map(|live| {
        let feed = ViewFeed {
            live: live.clone(),
            in_flight: in_flight.clone(),
            clock,
            store: joiner.as_ref().map(|j| j.store.clone()),
            telemetry: telemetry.clone(),
            stop: background.clone(),
        };
        start_view(&config, feed, quit.clone())
    });
    let history = config
        .db
        .as_deref()
        .and_then(|db| open_history(db, &config.run_id, &manifest));
    let log = RecordLog::create(&dir.join("requests.jsonl"))?;
    let sink = sink::Sink::new(log, history, metrics.clone(), recent.clone(), live, joiner);
    let (sink, sink_task) = sink.spawn();
    let stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        config,
        upstream,
        clock,
        sink,
        metrics,
        recent,
        gpu,
        in_flight,
        started: AtomicU64::new(0),
        stop: stop.clone(),
    });
    let grace = shared.config.grace_period;
    let serving = tokio::spawn(listener::serve(
        listener,
        shared.clone(),
        stop.clone(),
        grace,
    ));
    Ok(Proxy {
        addr,
        dir,
        stop,
        quit,
        serving,
        rest: Rest {
            shared,
            sink_task,
            clock,
            receiver,
            telemetry,
            background,
            view,
            manifest,
        },
    })
}

/// The receiver and the joiner, unless tracing is off.
async fn start_join(
    config: &ProxyConfig,
    dir: &Path,
) -> anyhow::Result<(Option<Receiver>, Option<sink::Joiner>)> {
    if config.trace.is_off() {
        return Ok((None, None));
    }
    let store = Arc::new(Mutex::new(SpanStore::with_live_phases()));
    let receiver_config =
        crate::trace::collector::receiver_config(&config.trace, dir.join("spans.jsonl"));
    let receiver = Receiver::start(receiver_config, Some(store.clone())).await?;
    let joiner = sink::Joiner::new(
        store,
        config.trace.span_wait,
        config.trace.jaeger_ui.clone(),
    );
    Ok((Some(receiver), Some(joiner)))
}

/// What the dashboard's snapshots are made from.
struct ViewFeed {
    live: Arc<Mutex<LiveStats>>,
    in_flight: Arc<AtomicU64>,
    clock: RunClock,
    /// The span store, for the server phases.
    store: Option<Arc<Mutex<SpanStore>>>,
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    stop: CancellationToken,
}

/// The dashboard of `run`, fed with the proxy's records until `feed.stop`.
fn start_view(
    config: &ProxyConfig,
    feed: ViewFeed,
    quit: Arc<tokio::sync::Notify>,
) -> crate::run::live::View {
    let (tx, rx) = tokio::sync::watch::channel(Default::default());
    tokio::spawn(async move {
        let ViewFeed {
            live,
            in_flight,
            clock,
            store,
            telemetry,
            stop,
        } = feed;
        let extras = || {
            let phases = store.as_ref().and_then(|s| s.lock().ok()?.live_phases());
            let gauges = telemetry.as_ref().map(|t| t.gauges()).unwrap_or_default();
            (phases, gauges)
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = crate::run::live::publish_snapshots(tx, &live, &in_flight, clock, extras) => {}
        }
    });
    crate::run::live::start_view(
        true,
        &[],
        config.upstream.as_str(),
        rx,
        &config.run_id,
        quit,
    )
}

fn manifest(config: &ProxyConfig, command_line: &str) -> RunManifest {
    let settings = serde_json::json!({
        "mode": "proxy",
        "listen": config.listen.to_string(),
        "url": config.upstream.as_str(),
        "max_body": config.limits.max_body,
        "max_headers": config.limits.max_headers,
        "max_header_bytes": config.limits.max_header_bytes,
        "idle_timeout": humantime::format_duration(config.limits.idle_timeout).to_string(),
        "request_timeout": humantime::format_duration(config.limits.request_timeout).to_string(),
        "max_connections": config.limits.max_connections,
        "span_wait": humantime::format_duration(config.trace.span_wait).to_string(),
        "trace_header": config.trace.trace_header,
    });
    let server = Server {
        url: config.upstream.as_str().to_string(),
        version: None,
        models: None,
    };
    RunManifest::new(&config.run_id, command_line, settings, "", server)
}

fn open_history(db: &Path, run_id: &str, manifest: &RunManifest) -> Option<HistoryWriter> {
    let run_json = serde_json::to_value(manifest).expect("the manifest serializes");
    HistoryWriter::open(db, run_id, &run_json)
        .map_err(|e| {
            eprintln!(
                "note: the history database {} is unavailable, files only: {e:#}",
                db.display()
            )
        })
        .ok()
}

impl Proxy {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` and the address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The records folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The OTLP receiver's gRPC and HTTP addresses, when it listens.
    pub fn receiver_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.rest
            .receiver
            .as_ref()
            .map(|r| (r.grpc_addr(), r.http_addr()))
    }

    /// Waits for Ctrl-C (or `q` in the dashboard), then stops.
    pub async fn serve_until_ctrl_c(self) -> anyhow::Result<ProxyOutcome> {
        let quit = self.quit.clone();
        tokio::select! {
            signal = tokio::signal::ctrl_c() => signal.context("cannot wait for Ctrl-C")?,
            _ = quit.notified() => {}
        }
        self.shutdown().await
    }

    /// Stops accepting, lets requests in flight finish within the grace
    /// period, waits for their spans (up to `--span-wait`), writes every
    /// record, `summary.json`, `requests.csv`, the report and the history.
    pub async fn shutdown(self) -> anyhow::Result<ProxyOutcome> {
        self.stop.cancel();
        let _ = self.serving.await;
        let Rest {
            shared,
            sink_task,
            clock,
            receiver,
            telemetry,
            background,
            view,
            mut manifest,
        } = self.rest;
        let totals = shared.sink.finish().await;
        drop(shared);
        let history = sink_task.await.context("the record sink stopped")?;
        let mut notes = Vec::new();
        if let Some(receiver) = receiver {
            if let Err(e) = receiver.shutdown().await {
                notes.push(format!("spans.jsonl is incomplete: {e:#}"));
            }
        }
        background.cancel();
        if let Some(view) = view {
            view.finish().await;
        }
        if let Some(telemetry) = telemetry.and_then(|t| Arc::try_unwrap(t).ok()) {
            if let Err(e) = telemetry.finish((0, clock.now_ns()), 0).await {
                notes.push(format!("telemetry failed: {e:#}"));
            }
        }
        let summary = RunFolder::open(&self.dir)?.summarize(
            Some(&manifest.run_id),
            &Slo::default(),
            false,
        )?;
        crate::run::write_summary(&self.dir, &summary)?;
        manifest.end(false, notes);
        manifest.write(&self.dir)?;
        if let Err(e) = crate::report::html::write_report(&self.dir) {
            eprintln!("note: the HTML report could not be written: {e:#}");
        }
        if let Some(history) = history {
            if let Err(e) = history.finish(&self.dir, &summary) {
                eprintln!(
                    "note: the requests were not all recorded in the history database: {e:#}"
                );
            }
        }
        Ok(ProxyOutcome {
            dir: self.dir,
            totals,
            summary,
        })
    }
}

/// `tracebench proxy`: serve until Ctrl-C, then print where the records are.
pub async fn run_until_ctrl_c(config: ProxyConfig, command_line: String) -> anyhow::Result<i32> {
    let tui = config.tui;
    let upstream = config.upstream.to_string();
    let proxy = start(config, command_line).await?;
    if !tui {
        let receiving = proxy
            .receiver_addrs()
            .map(|(grpc, http)| format!("; spans: grpc://{grpc} or http://{http}/v1/traces"))
            .unwrap_or_default();
        eprintln!(
            "proxy {} → {upstream}{receiving}; records in {}; Ctrl-C stops",
            proxy.url(),
            proxy.dir().display()
        );
    }
    let outcome = proxy.serve_until_ctrl_c().await?;
    crate::report::console::print(&crate::report::console::render(&outcome.summary));
    crate::report::console::print(&format!(
        "{} requests recorded ({} joined with their span) in {}\n",
        outcome.totals.records,
        outcome.totals.joined,
        outcome.dir.display()
    ));
    Ok(0)
}
