//! One benchmark run from start to finish: discover the server, prepare the
//! workload, start span collection and telemetry, drive the load through the
//! one dispatch loop, append every record as it completes, then join spans,
//! summarise and write every output. Ctrl-C stops scheduling, lets in-flight
//! requests finish for a grace period, and still writes everything (partial).

use crate::analysis::live::{Gauge, LiveSnapshot, LiveStats, PhaseMeans};
use crate::analysis::{summarize, Summary};
use crate::client::{http_client, Client, ClientOptions, PreparedRequest};
use crate::clock::RunClock;
use crate::config::{RunConfig, Source, StopAfter};
use crate::dispatch::{Dispatcher, PhaseRequests};
use crate::record::{RecordLog, RequestRecord};
use crate::report::sqlite::HistoryWriter;
use crate::workload::tokens::TokenCounter;
use crate::workload::{dataset, synthetic::Synthetic, BodyOptions, Item};
use anyhow::{bail, Context};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub summary: Summary,
    /// Stopped by Ctrl-C (or `q` in the dashboard).
    pub interrupted: bool,
    /// More failed requests than `--max-error-rate` allows.
    pub too_many_errors: bool,
}

impl RunOutcome {
    /// The documented exit code: 0 ok, 1 too many failures, 130 interrupted.
    pub fn exit_code(&self) -> i32 {
        if self.interrupted {
            130
        } else if self.too_many_errors {
            1
        } else {
            0
        }
    }
}

/// What the server says about itself, when it answers.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub version: Option<serde_json::Value>,
    pub models: Option<serde_json::Value>,
    /// Why `/v1/models` could not be read.
    pub models_error: Option<String>,
}

impl ServerInfo {
    /// Reads `/version` and `/v1/models` (each optional).
    pub async fn discover(http: &reqwest::Client, base_url: &str) -> Self {
        let get = |path: &str| {
            let url = format!("{base_url}{path}");
            async move {
                let response = http
                    .get(&url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {}", crate::client::error_chain(&e)))?;
                if !response.status().is_success() {
                    return Err(format!("GET {url}: HTTP {}", response.status().as_u16()));
                }
                response
                    .json::<serde_json::Value>()
                    .await
                    .map_err(|e| format!("GET {url}: not JSON: {e}"))
            }
        };
        let (version, models) = tokio::join!(get("/version"), get("/v1/models"));
        let (models, models_error) = match models {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e)),
        };
        Self {
            version: version.ok(),
            models,
            models_error,
        }
    }

    /// The first model `/v1/models` lists.
    pub fn first_model(&self) -> Option<String> {
        self.models
            .as_ref()?
            .pointer("/data/0/id")?
            .as_str()
            .map(str::to_string)
    }
}

/// A fresh run id: UTC timestamp and a random suffix.
pub fn new_run_id() -> String {
    let suffix: u16 = rand::random();
    format!(
        "{}-{suffix:04x}",
        chrono::Utc::now().format("%Y%m%d-%H%M%S")
    )
}

/// Runs a benchmark as configured. `command_line` is kept in `run.json`.
pub async fn execute(config: RunConfig, command_line: String) -> anyhow::Result<RunOutcome> {
    let run_id = config.run_id.clone().unwrap_or_else(new_run_id);
    let run_dir = config.out.join(&run_id);
    if run_dir.join("requests.jsonl").exists() {
        bail!(
            "{} already holds a run: choose another --run-id or --out",
            run_dir.display()
        );
    }

    let http = http_client()?;
    let server = ServerInfo::discover(&http, &config.url).await;
    let model = match (&config.model, server.first_model()) {
        (Some(model), _) => model.clone(),
        (None, Some(model)) => model,
        (None, None) => bail!(
            "no --model given and the server's model list is unavailable ({}); pass --model",
            server
                .models_error
                .as_deref()
                .unwrap_or("it lists no model")
        ),
    };
    let mut notes = Vec::new();
    let items = Workload::prepare(&config, &run_id, &http, &model, &mut notes).await?;
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;

    let started_unix_ns = crate::units::unix_now_ns();
    let mut run_json = run_json(
        &config,
        &run_id,
        &command_line,
        &model,
        &server,
        started_unix_ns,
    );
    write_json(&run_dir.join("run.json"), &run_json)?;

    let collector = crate::trace::start_collector(&config.trace, &run_dir).await?;
    let clock = RunClock::start();
    let telemetry =
        crate::telemetry::start(&config.telemetry, &config.url, &run_dir, clock).await?;
    notes.extend(telemetry.notes());
    for note in &notes {
        eprintln!("note: {note}");
    }

    let history = match &config.db {
        Some(db) => open_history(db, &run_id, &run_json),
        None => None,
    };
    let history = history.map(Arc::new);

    let client = Client::new(
        ClientOptions {
            base_url: config.url.clone(),
            endpoint: config.endpoint,
            model: model.clone(),
            stream: config.stream,
            headers: config.headers.clone(),
            trace_header: config.trace.sends_trace_header(),
            first_byte_timeout: config.first_byte_timeout,
            request_timeout: config.request_timeout,
            run_id: run_id.clone(),
        },
        clock,
    )?;
    if config.preconnect {
        let note = match client.preconnect(config.preconnect_connections()).await {
            Ok(done) => done.to_string(),
            Err(e) => format!("preconnect: {e:#}"),
        };
        eprintln!("note: {note}");
        notes.push(note);
    }

    let total = match config.stop {
        StopAfter::Requests(n) => Some(n),
        StopAfter::Duration(_) => None,
    };
    let live = Arc::new(Mutex::new(LiveStats::new(total)));
    let in_flight = Arc::new(AtomicU64::new(0));
    let (record_tx, record_rx) = mpsc::unbounded_channel();
    let log = RecordLog::create(&run_dir.join("requests.jsonl"))?;
    let aggregator = tokio::spawn(aggregate(record_rx, log, live.clone(), history.clone()));

    let stop = CancellationToken::new();
    let cancel = CancellationToken::new();
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let quit = Arc::new(tokio::sync::Notify::new());
    let interrupter = tokio::spawn(interrupt_on_signal(
        stop.clone(),
        cancel.clone(),
        config.grace_period,
        interrupted.clone(),
        quit.clone(),
    ));

    let (snapshot_tx, snapshot_rx) = watch::channel(LiveSnapshot::default());
    let view = start_view(&config, snapshot_rx, &run_id, quit.clone());
    let dispatcher = Dispatcher {
        client,
        schedule: config.schedule.clone(),
        seed: config.seed,
        stop: stop.clone(),
        cancel: cancel.clone(),
        records: record_tx,
        in_flight: in_flight.clone(),
    };
    let (warmup, measured) = items.split().await;
    let deadline = match config.stop {
        StopAfter::Duration(d) => Some(d),
        StopAfter::Requests(_) => None,
    };
    let load = async {
        if !warmup.is_empty() {
            dispatcher.run_phase(warmup, None).await;
        }
        let deadline = deadline.map(|d| Instant::now() + d);
        dispatcher.run_phase(measured, deadline).await;
    };
    let extras = || (collector.live_phases(), telemetry.gauges());
    tokio::select! {
        _ = load => {}
        _ = publish_snapshots(snapshot_tx, &live, &in_flight, clock, extras) => {}
    }
    drop(dispatcher);

    let mut records = aggregator.await.context("the record writer stopped")??;
    view.finish().await;
    let partial = interrupted.load(Ordering::SeqCst);

    // Telemetry stops with the load (nothing to measure while spans trickle in),
    // so GPU attribution is in the records before the join writes them the last time.
    let measured_records: Vec<&RequestRecord> = records.iter().filter(|r| !r.warmup).collect();
    let window = measured_window_ns(&measured_records);
    let output_tokens = measured_records
        .iter()
        .filter_map(|r| r.output_tokens)
        .sum();
    let (gpu, server_metrics) = match telemetry.finish(window, output_tokens).await {
        Ok(report) => {
            report.attribute(&mut records);
            notes.extend(report.notes.iter().cloned());
            (report.gpu, report.server_metrics)
        }
        Err(e) => {
            notes.push(format!("telemetry failed: {e:#}"));
            (None, None)
        }
    };

    // The join rewrites requests.jsonl with the joined records.
    let mut countdown = Countdown::new();
    let join = collector
        .finish(&mut records, |progress| {
            countdown.show(&format!(
                "waiting for server spans: {} missing, {:.0}s left",
                progress.missing,
                progress.remaining.as_secs_f64()
            ))
        })
        .await;
    countdown.done();
    match &join {
        Ok(report) if report.duplicates > 0 => notes.push(format!(
            "{} requests had more than one server span (e.g. n>1); the first was used",
            report.duplicates
        )),
        Ok(_) => {}
        Err(e) => {
            notes.push(format!("span join failed: {e:#}"));
            crate::record::rewrite_records(&run_dir.join("requests.jsonl"), &records)?;
        }
    }
    interrupter.abort();
    if let Some(url) = &config.trace.export_client_spans {
        if let Err(e) = crate::trace::export_client_spans(&records, url).await {
            notes.push(format!("client spans were not exported to {url}: {e:#}"));
        }
    }

    let mut summary = summarize(&run_id, &records, &config.slo, partial);
    summary.gpu = gpu;
    summary.server_metrics = server_metrics;
    write_outputs(&run_dir, &records, &summary)?;

    run_json["ended_unix_ns"] = json!(crate::units::unix_now_ns());
    run_json["partial"] = json!(partial);
    run_json["notes"] = json!(notes);
    write_json(&run_dir.join("run.json"), &run_json)?;
    if let Err(e) = crate::report::html::write_report(&run_dir) {
        eprintln!("note: the HTML report could not be written: {e:#}");
    }
    if let Some(history) = history {
        let history = Arc::try_unwrap(history)
            .ok()
            .context("history writer still shared")?;
        if let Err(e) = history.finish(&run_dir, &records, &summary) {
            eprintln!("note: the run was not recorded in the history database: {e:#}");
        }
    }

    let failed_fraction = if summary.requests.total > 0 {
        summary.requests.failed as f64 / summary.requests.total as f64
    } else {
        0.0
    };
    Ok(RunOutcome {
        run_dir,
        too_many_errors: failed_fraction > config.max_error_rate,
        interrupted: partial,
        summary,
    })
}

/// Writes `requests.csv` and `summary.json`.
pub fn write_outputs(
    run_dir: &Path,
    records: &[RequestRecord],
    summary: &Summary,
) -> anyhow::Result<()> {
    crate::report::csv::write_records(&run_dir.join("requests.csv"), records)?;
    write_json(&run_dir.join("summary.json"), summary)
}

/// Writes pretty JSON atomically (temp file + rename).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(value)?;
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The first send to the last completion of these records, run-relative ns.
fn measured_window_ns(records: &[&RequestRecord]) -> (u64, u64) {
    let start = records
        .iter()
        .map(|r| r.instants_ns.sent)
        .min()
        .unwrap_or(0);
    let end = records
        .iter()
        .map(|r| r.instants_ns.end.unwrap_or(r.instants_ns.sent))
        .max()
        .unwrap_or(start);
    (start, end)
}

fn open_history(db: &Path, run_id: &str, run_json: &serde_json::Value) -> Option<HistoryWriter> {
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(parent);
    }
    match HistoryWriter::open(db, run_id, run_json) {
        Ok(writer) => Some(writer),
        Err(e) => {
            eprintln!(
                "note: the history database {} is unavailable, files only: {e:#}",
                db.display()
            );
            None
        }
    }
}

/// `run.json` as known at the start; the end fills in the rest.
fn run_json(
    config: &RunConfig,
    run_id: &str,
    command_line: &str,
    model: &str,
    server: &ServerInfo,
    started_unix_ns: u64,
) -> serde_json::Value {
    json!({
        "schema": "tracebench.run/1",
        "run_id": run_id,
        "started_unix_ns": started_unix_ns,
        "ended_unix_ns": null,
        "partial": true,
        "tool": {
            "name": "tracebench",
            "version": env!("CARGO_PKG_VERSION"),
            "git_commit": option_env!("TRACEBENCH_GIT_COMMIT"),
        },
        "host": {
            "hostname": gethostname::gethostname().to_string_lossy(),
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "cpus": crate::cli::cores(),
        },
        "command_line": command_line,
        "config": config,
        "model": model,
        "server": {
            "url": config.url,
            "version": server.version,
            "models": server.models,
        },
        "notes": [],
    })
}

/// The workload, split into warm-up and measured parts, fed to the dispatcher.
struct Workload {
    warmup: u64,
    feed: Feed,
}

/// Requests ready ahead of time (count runs) or made just ahead of the schedule (timed runs).
enum Feed {
    Ready(Vec<PreparedRequest>),
    Produced(mpsc::Receiver<PreparedRequest>),
}

/// Where items come from, with the counter that sized them.
struct ItemSource {
    synthetic: Option<Synthetic>,
    dataset: Vec<Item>,
    counter: TokenCounter,
    body: BodyOptions,
    run_id: String,
    warmup: u64,
}

impl ItemSource {
    async fn request(&self, index: u64) -> anyhow::Result<PreparedRequest> {
        let item = match &self.synthetic {
            Some(synthetic) => synthetic.item(index, &self.counter).await?,
            None => self.dataset[(index % self.dataset.len() as u64) as usize].clone(),
        };
        Ok(self
            .body
            .prepare(index, &self.run_id, index < self.warmup, &item))
    }
}

impl Workload {
    async fn prepare(
        config: &RunConfig,
        run_id: &str,
        http: &reqwest::Client,
        model: &str,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Self> {
        let body = BodyOptions {
            endpoint: config.endpoint,
            model: model.to_string(),
            stream: config.stream,
            ignore_eos: config.ignore_eos,
            temperature: config.temperature,
            extra_body: config.extra_body.clone(),
        };
        let (synthetic, dataset, counter) = match &config.source {
            Source::Dataset { path } => (
                None,
                dataset::load(path, config.max_tokens)?,
                TokenCounter::Estimate,
            ),
            Source::Synthetic {
                input_tokens,
                output_tokens,
                shared_prefix_tokens,
                tokenizer,
            } => {
                let counter = match tokenizer {
                    Some(path) => TokenCounter::from_file(path)?,
                    None => match TokenCounter::from_server(http, &config.url, model).await {
                        Some(counter) => counter,
                        None => {
                            notes.push(
                                "prompt lengths are approximate (no --tokenizer, no /tokenize); \
                                 the server's usage counts are recorded"
                                    .into(),
                            );
                            TokenCounter::Estimate
                        }
                    },
                };
                let mut output = (*output_tokens).into();
                if let Some(max_tokens) = config.max_tokens {
                    output = crate::workload::Lengths {
                        mean: max_tokens,
                        stddev: 0.0,
                    };
                }
                let synthetic = Synthetic::new(
                    (*input_tokens).into(),
                    output,
                    *shared_prefix_tokens,
                    config.seed,
                    &counter,
                )
                .await?;
                (Some(synthetic), Vec::new(), counter)
            }
        };
        let source = ItemSource {
            synthetic,
            dataset,
            counter,
            body,
            run_id: run_id.to_string(),
            warmup: config.warmup,
        };
        let feed = match config.stop {
            StopAfter::Requests(n) => {
                let mut ready = Vec::with_capacity((n + config.warmup) as usize);
                for index in 0..n + config.warmup {
                    ready.push(source.request(index).await?);
                }
                Feed::Ready(ready)
            }
            StopAfter::Duration(_) => {
                // Made just ahead of the schedule; the first ones are checked now.
                source.request(0).await?;
                let (tx, rx) = mpsc::channel(1024);
                tokio::spawn(async move {
                    for index in 0.. {
                        let Ok(request) = source.request(index).await else {
                            break;
                        };
                        if tx.send(request).await.is_err() {
                            break;
                        }
                    }
                });
                Feed::Produced(rx)
            }
        };
        Ok(Self {
            warmup: config.warmup,
            feed,
        })
    }

    /// The warm-up requests and the measured ones.
    async fn split(self) -> (PhaseRequests, PhaseRequests) {
        match self.feed {
            Feed::Ready(mut all) => {
                let measured = all.split_off(self.warmup as usize);
                (
                    PhaseRequests::Ready(all.into_iter()),
                    PhaseRequests::Ready(measured.into_iter()),
                )
            }
            Feed::Produced(mut rx) => {
                let mut warmup = Vec::new();
                for _ in 0..self.warmup {
                    match rx.recv().await {
                        Some(r) => warmup.push(r),
                        None => break,
                    }
                }
                (
                    PhaseRequests::Ready(warmup.into_iter()),
                    PhaseRequests::Produced(rx),
                )
            }
        }
    }
}

/// Appends each record the moment it arrives, feeds live statistics and the
/// history database, and returns every record at the end.
async fn aggregate(
    mut rx: mpsc::UnboundedReceiver<RequestRecord>,
    mut log: RecordLog,
    live: Arc<Mutex<LiveStats>>,
    history: Option<Arc<HistoryWriter>>,
) -> anyhow::Result<Vec<RequestRecord>> {
    let mut records = Vec::new();
    let mut write_error = None;
    while let Some(record) = rx.recv().await {
        if let Err(e) = log.append(&record) {
            // Keep going: the records stay in memory and are written again at the end.
            write_error.get_or_insert(e);
        }
        live.lock().expect("live stats lock").observe(&record);
        if let Some(history) = &history {
            history.record(&record);
        }
        records.push(record);
    }
    if let Some(e) = write_error {
        eprintln!("note: appending to {} failed: {e}", log.path().display());
    }
    Ok(records)
}

/// Ctrl-C (or `q` in the dashboard): stop scheduling, give in-flight requests
/// the grace period, then cancel them. A second Ctrl-C cancels at once.
async fn interrupt_on_signal(
    stop: CancellationToken,
    cancel: CancellationToken,
    grace: Duration,
    interrupted: Arc<std::sync::atomic::AtomicBool>,
    quit: Arc<tokio::sync::Notify>,
) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = quit.notified() => {}
    }
    interrupted.store(true, Ordering::SeqCst);
    stop.cancel();
    eprintln!(
        "\nstopping: no new requests; in-flight ones get {} to finish (Ctrl-C again to cancel them now)",
        humantime::format_duration(grace)
    );
    tokio::select! {
        _ = tokio::time::sleep(grace) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    cancel.cancel();
}

/// Publishes a snapshot of the live statistics four times a second, with the
/// span phases and telemetry gauges that `extras` reads; runs until dropped.
async fn publish_snapshots(
    tx: watch::Sender<LiveSnapshot>,
    live: &Mutex<LiveStats>,
    in_flight: &AtomicU64,
    clock: RunClock,
    extras: impl Fn() -> (Option<PhaseMeans>, Vec<Gauge>),
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        ticker.tick().await;
        let now_ns = clock.now_ns();
        let flying = in_flight.load(Ordering::Relaxed);
        let snapshot = {
            let mut stats = live.lock().expect("live stats lock");
            stats.sample_in_flight(now_ns / 1_000_000_000, flying);
            stats.snapshot(flying, now_ns as f64 / 1e9)
        };
        let (phases, gauges) = extras();
        let _ = tx.send(LiveSnapshot {
            phases,
            gauges,
            ..snapshot
        });
    }
}

/// The live view: the dashboard on a terminal, else a progress line on stderr.
enum View {
    Dashboard(tokio::task::JoinHandle<std::io::Result<crate::tui::DashboardExit>>),
    Progress(tokio::task::JoinHandle<()>),
}

fn start_view(
    config: &RunConfig,
    snapshots: watch::Receiver<LiveSnapshot>,
    run_id: &str,
    quit: Arc<tokio::sync::Notify>,
) -> View {
    if config.tui && std::io::stdout().is_terminal() {
        let title = format!("tracebench {run_id} → {}", config.url);
        View::Dashboard(tokio::task::spawn_blocking(move || {
            let exit = crate::tui::run_dashboard(snapshots, title);
            if let Ok(crate::tui::DashboardExit::UserQuit) = exit {
                quit.notify_one();
            }
            exit
        }))
    } else {
        View::Progress(tokio::spawn(print_progress(snapshots)))
    }
}

impl View {
    async fn finish(self) {
        match self {
            View::Dashboard(handle) => {
                let _ = handle.await;
            }
            View::Progress(handle) => {
                handle.abort();
                eprintln!();
            }
        }
    }
}

/// A status line on stderr: rewritten in place on a terminal, else printed
/// at most every few seconds so logs stay readable.
struct Countdown {
    terminal: bool,
    last: Option<Instant>,
}

impl Countdown {
    fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn show(&mut self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{line:<72}");
        } else if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            let _ = writeln!(err, "{line}");
        } else {
            return;
        }
        self.last = Some(Instant::now());
        let _ = err.flush();
    }

    fn done(self) {
        if self.terminal && self.last.is_some() {
            eprintln!();
        }
    }
}

/// One progress line: rewritten in place on a terminal, a line every 10 s otherwise.
async fn print_progress(mut snapshots: watch::Receiver<LiveSnapshot>) {
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(10)
    };
    let mut last = Instant::now() - every;
    while snapshots.changed().await.is_ok() {
        if last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        let s = snapshots.borrow().clone();
        let total = s.total.map_or("?".to_string(), |t| t.to_string());
        let eta = s
            .eta_s()
            .map_or(String::new(), |e| format!(", ETA {e:.0}s"));
        let line = format!(
            "{}/{} done, {} failed, {} in flight, {:.1} req/s, TTFT p50 {:.1} ms{}",
            s.done,
            total,
            s.failed,
            s.in_flight,
            s.rate(),
            s.ttft.p50,
            eta
        );
        let mut err = std::io::stderr().lock();
        if terminal {
            let _ = write!(err, "\r{line:<100}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}
