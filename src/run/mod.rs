//! One benchmark run, as five stages each owned by its module: **prepare**
//! (discover the server, start the workload feed; nothing on disk yet),
//! **open** (the run folder, `run.json`, span collection, telemetry, the
//! history), **drive** ([`drive`]: the load, every record appended as it
//! finishes), **finish** ([`finish`]: join spans and summarise in one pass)
//! and **write** (summary, CSV, report, history). Ctrl-C stops scheduling,
//! lets in-flight requests finish for a grace period, and still writes
//! everything (partial).

mod drive;
mod finish;
pub mod live;
pub mod manifest;

pub use manifest::{write_json, RunManifest};

use crate::analysis::Summary;
use crate::client::discover::ServerInfo;
use crate::client::{http_client, Client};
use crate::clock::RunClock;
use crate::config::RunConfig;
use crate::report::sqlite::HistoryWriter;
use crate::trace::ClientSpanExporter;
use crate::workload::feed::Feed;
use crate::workload::tokens::TokenCounter;
use crate::workload::{DatasetFormat, Source};
use anyhow::{bail, Context};
use drive::{Driven, Observers};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    let prepared = prepare(&config).await?;
    let (opened, observers) = open(&config, &prepared, &command_line).await?;
    let driven = drive::drive(
        &config,
        &opened.run_id,
        &opened.run_dir,
        prepared.client,
        prepared.feed,
        &observers,
    )
    .await?;
    let mut notes = prepared.notes;
    notes.extend(driven.notes.iter().cloned());
    let (summary, history) = finish(&config, &opened, observers, &driven, &mut notes).await?;
    let too_many_errors =
        summary.requests.failed as f64 > summary.requests.total as f64 * config.max_error_rate;
    let run_dir = write(opened, &summary, history, driven.interrupted, notes)?;
    Ok(RunOutcome {
        run_dir,
        interrupted: driven.interrupted,
        too_many_errors,
        summary,
    })
}

/// What a run knows before it touches the disk.
struct Prepared {
    run_id: String,
    run_dir: PathBuf,
    model: String,
    server: ServerInfo,
    clock: RunClock,
    client: Client,
    feed: Feed,
    /// What this host knows of its clock (shards and `--start-at` runs).
    clock_check: Option<crate::shard::clock::ClockCheck>,
    notes: Vec<String>,
}

/// Discovers the server, picks the model, starts the workload feed.
async fn prepare(config: &RunConfig) -> anyhow::Result<Prepared> {
    let run_id = config.run_id.clone().unwrap_or_else(new_run_id);
    let run_dir = config.out.join(config.folder_name(&run_id));
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
    let clock_check = if config.shard.is_some() || config.start_at.is_some() {
        Some(crate::shard::clock::check(&http, &config.url).await)
    } else {
        None
    };
    let mut notes = Vec::new();
    let counter = match &config.source {
        Source::Synthetic { tokenizer, .. }
        | Source::Trace { tokenizer, .. }
        | Source::Dataset {
            format: DatasetFormat::Sharegpt,
            tokenizer,
            ..
        } => {
            TokenCounter::choose(tokenizer.as_deref(), &http, &config.url, &model, &mut notes)
                .await?
        }
        Source::Dataset { .. } => TokenCounter::Estimate,
    };
    let feed = Feed::start(config.workload(&run_id, &model), counter, &mut notes).await?;
    let clock = RunClock::start();
    let client = Client::new(config.client_options(&run_id, &model), clock)?;
    Ok(Prepared {
        run_id,
        run_dir,
        model,
        server,
        clock,
        client,
        feed,
        clock_check,
        notes,
    })
}

/// The run on disk and the instruments around it.
struct Opened {
    run_id: String,
    run_dir: PathBuf,
    manifest: RunManifest,
}

/// Makes the run folder and `run.json`, starts span collection, telemetry and the history.
async fn open(
    config: &RunConfig,
    prepared: &Prepared,
    command_line: &str,
) -> anyhow::Result<(Opened, Observers)> {
    let run_dir = &prepared.run_dir;
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let mut manifest = RunManifest::at_start(
        config,
        &prepared.run_id,
        command_line,
        &prepared.model,
        &prepared.server,
    );
    manifest.shard = config.shard.map(|shard| manifest::ShardInfo {
        index: shard.index,
        count: shard.count,
        clock_origin_unix_ns: prepared.clock.start_unix_ns(),
    });
    manifest.clock = prepared.clock_check.clone();
    manifest.write(run_dir)?;
    let clock = prepared.clock;
    let collector = crate::trace::start_collector(&config.trace, run_dir).await?;
    let telemetry = crate::telemetry::start(&config.telemetry, &config.url, run_dir, clock).await?;
    for note in prepared.notes.iter().chain(&telemetry.notes()) {
        eprintln!("note: {note}");
    }
    let history = config
        .db
        .as_deref()
        .and_then(|db| open_history(db, &prepared.run_id, &manifest))
        .map(Arc::new);
    let opened = Opened {
        run_id: prepared.run_id.clone(),
        run_dir: run_dir.clone(),
        manifest,
    };
    let observers = Observers {
        clock,
        collector: Arc::new(collector),
        telemetry,
        history,
    };
    Ok((opened, observers))
}

/// Stops telemetry, waits for the spans, then joins and summarises in one pass.
async fn finish(
    config: &RunConfig,
    opened: &Opened,
    observers: Observers,
    driven: &Driven,
    notes: &mut Vec<String>,
) -> anyhow::Result<(Summary, Option<Arc<HistoryWriter>>)> {
    let Observers {
        collector,
        telemetry,
        history,
        ..
    } = observers;
    let telemetry = match telemetry
        .finish(driven.window.ns(), driven.output_tokens)
        .await
    {
        Ok(report) => {
            notes.extend(report.notes.iter().cloned());
            Some(report)
        }
        Err(e) => {
            notes.push(format!("telemetry failed: {e:#}"));
            None
        }
    };
    let mut collector = Arc::try_unwrap(collector)
        .ok()
        .context("the span collector is still shared")?;
    let waited = live::wait_with_countdown(&mut collector).await;
    match waited {
        Ok(outcome) => {
            for note in outcome.notes {
                eprintln!("note: {note}");
                notes.push(note);
            }
        }
        Err(e) => notes.push(format!("waiting for spans failed: {e:#}")),
    }
    let mut client_spans = match &config.trace.export_client_spans {
        Some(endpoint) => match ClientSpanExporter::new(endpoint) {
            Ok(exporter) => Some(exporter),
            Err(e) => {
                notes.push(format!("client spans are not exported: {e:#}"));
                None
            }
        },
        None => None,
    };
    let finishers = finish::Finishers {
        telemetry: telemetry.as_ref(),
        collector: &collector,
        client_spans: client_spans.as_mut(),
    };
    let (run_dir, run_id) = (&opened.run_dir, &opened.run_id);
    let partial = driven.interrupted;
    let mut summary =
        finish::join_and_summarise(run_dir, run_id, &config.slo, partial, finishers, notes).await?;
    let duplicates = collector.report().duplicates;
    if duplicates > 0 {
        notes.push(format!(
            "{duplicates} requests had more than one server span (e.g. n>1); the first was used"
        ));
    }
    if let Some(exporter) = client_spans {
        if let Err(e) = exporter.finish().await {
            notes.push(format!("client spans were not all exported: {e:#}"));
        }
    }
    if let Some(report) = telemetry {
        summary.gpu = report.gpu;
        summary.server_metrics = report.server_metrics;
    }
    Ok((summary, history))
}

/// Writes the summary, the CSV, the final `run.json`, the report and the history.
fn write(
    mut opened: Opened,
    summary: &Summary,
    history: Option<Arc<HistoryWriter>>,
    partial: bool,
    notes: Vec<String>,
) -> anyhow::Result<PathBuf> {
    let run_dir = opened.run_dir;
    write_summary(&run_dir, summary)?;
    opened.manifest.end(partial, notes);
    opened.manifest.write(&run_dir)?;
    if let Err(e) = crate::report::html::write_report(&run_dir) {
        eprintln!("note: the HTML report could not be written: {e:#}");
    }
    if let Some(history) = history {
        let history = Arc::try_unwrap(history)
            .ok()
            .context("history writer still shared")?;
        if let Err(e) = history.finish(&run_dir, summary) {
            eprintln!("note: the run was not recorded in the history database: {e:#}");
        }
    }
    Ok(run_dir)
}

/// Writes `requests.csv` (from the final `requests.jsonl`) and `summary.json`.
pub fn write_summary(run_dir: &Path, summary: &Summary) -> anyhow::Result<()> {
    crate::report::csv::write_from_jsonl(
        &run_dir.join("requests.jsonl"),
        &run_dir.join("requests.csv"),
    )?;
    write_json(&run_dir.join("summary.json"), summary)
}

fn open_history(db: &Path, run_id: &str, manifest: &RunManifest) -> Option<HistoryWriter> {
    let run_json = serde_json::to_value(manifest).expect("the manifest serializes");
    match HistoryWriter::open(db, run_id, &run_json) {
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
