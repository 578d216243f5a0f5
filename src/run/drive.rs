//! Driving the load: the dispatcher sends the feed's requests by the
//! schedule (warm-up first, then `--idle-window` with nothing in flight,
//! then the measured phase) while every finished record is appended to
//! `requests.jsonl` the moment it arrives and handed to the live view, the
//! span collector and the history database. Records are not kept: what the
//! end needs is on disk or in running aggregates.

use super::live::{publish_snapshots, start_view};
use crate::analysis::live::{LiveSnapshot, LiveStats};
use crate::analysis::summary::MeasuredWindow;
use crate::client::Client;
use crate::clock::RunClock;
use crate::config::{RunConfig, StopAfter};
use crate::dispatch::{Dispatcher, Finished, Stops};
use crate::record::{RecordLog, RequestRecord};
use crate::report::sqlite::HistoryWriter;
use crate::telemetry::Telemetry;
use crate::trace::SpanCollector;
use crate::workload::feed::Feed;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// The run's clock and what watches the records as they finish.
pub struct Observers {
    pub clock: RunClock,
    pub collector: Arc<SpanCollector>,
    pub telemetry: Telemetry,
    pub history: Option<Arc<HistoryWriter>>,
}

/// What the end of the run needs from the load phase.
#[derive(Debug)]
pub struct Driven {
    /// Stopped by Ctrl-C (or `q` in the dashboard).
    pub interrupted: bool,
    /// First send to last completion of the measured requests.
    pub window: MeasuredWindow,
    /// Output tokens of the measured requests.
    pub output_tokens: u64,
    /// What a user should know (a workload or a write that failed).
    pub notes: Vec<String>,
}

/// Sends the whole workload and returns when the last request is done.
pub async fn drive(
    config: &RunConfig,
    run_id: &str,
    run_dir: &Path,
    client: Client,
    mut feed: Feed,
    observers: &Observers,
) -> anyhow::Result<Driven> {
    let mut notes = Vec::new();
    if config.preconnect {
        // Before the first request, so it does not pay the connection storm.
        let note = match client.preconnect(config.preconnect_connections()).await {
            Ok(done) => done.to_string(),
            Err(e) => format!("preconnect: {e:#}"),
        };
        eprintln!("note: {note}");
        notes.push(note);
    }
    let phases = feed.phases();
    let total = phases.measured;
    // Sessions: --requests counts sessions, and their turns are not known ahead.
    let live_total = total.filter(|_| !config.source.is_sessions());
    let live = Arc::new(Mutex::new(LiveStats::new(live_total)));
    let stops = Stops::default();
    let stop = stops.stop.clone();
    let (dispatcher, finished) = Dispatcher::new(
        client,
        config.load_schedule(),
        config.arrival_seed(),
        stops.clone(),
    );
    let log = RecordLog::create(&run_dir.join("requests.jsonl"))?;
    let aggregator = tokio::spawn(aggregate(
        finished,
        log,
        live.clone(),
        observers.collector.clone(),
        observers.history.clone(),
        observers.telemetry.samples_gpu(),
    ));

    let interrupted = Arc::new(AtomicBool::new(false));
    let quit = Arc::new(Notify::new());
    let interrupter = tokio::spawn(interrupt_on_signal(
        stops,
        config.grace_period,
        interrupted.clone(),
        quit.clone(),
    ));
    let (snapshot_tx, snapshot_rx) = watch::channel(LiveSnapshot::default());
    let view = start_view(
        config.tui,
        &config.live_context,
        &config.url,
        snapshot_rx,
        run_id,
        quit,
    );
    let in_flight = dispatcher.in_flight();
    let deadline = match config.stop {
        StopAfter::Duration(d) => Some(d),
        StopAfter::Requests(_) | StopAfter::WorkloadEnd => None,
    };
    let load = async move {
        let late = match config.start_at {
            Some(at) => crate::shard::clock::wait_until(at, &stop).await,
            None => None,
        };
        dispatcher
            .run_phase(&mut feed, Some(phases.warmup), None)
            .await;
        tokio::select! {
            _ = tokio::time::sleep(config.idle_window) => {}
            _ = stop.cancelled() => {}
        }
        let deadline = deadline.map(|d| tokio::time::Instant::now() + d);
        dispatcher.run_phase(&mut feed, total, deadline).await;
        late.into_iter().chain(feed.notes()).collect::<Vec<_>>()
    };
    let extras = || {
        (
            observers.collector.live_phases(),
            observers.telemetry.gauges(),
        )
    };
    let clock = observers.clock;
    let load_notes = tokio::select! {
        notes = load => notes,
        _ = publish_snapshots(snapshot_tx, &live, &in_flight, clock, extras) => Vec::new(),
    };
    let mut driven = aggregator.await??;
    view.finish().await;
    interrupter.abort();
    driven.interrupted = interrupted.load(Ordering::SeqCst);
    notes.append(&mut driven.notes);
    notes.extend(load_notes);
    driven.notes = notes;
    Ok(driven)
}

/// Appends each record the moment it arrives and hands it to the live
/// statistics, the span collector and the history; records whose append
/// failed are kept and appended again at the end.
async fn aggregate(
    mut finished: mpsc::UnboundedReceiver<Finished<RequestRecord>>,
    mut log: RecordLog,
    live: Arc<Mutex<LiveStats>>,
    collector: Arc<SpanCollector>,
    history: Option<Arc<HistoryWriter>>,
    mark_overlaps: bool,
) -> anyhow::Result<Driven> {
    let mut window = MeasuredWindow::default();
    let mut output_tokens = 0;
    let mut unwritten = Vec::new();
    let mut write_error = None;
    while let Some(Finished { mut record, alone }) = finished.recv().await {
        if mark_overlaps && !alone {
            crate::telemetry::gpu::mark_overlapped(&mut record);
        }
        if !record.warmup {
            window.observe(&record);
            output_tokens += record.output_tokens.unwrap_or(0);
        }
        live.lock().expect("live stats lock").observe(&record);
        collector.observe(&record);
        if let Some(history) = &history {
            history.record(&record);
        }
        if let Err(e) = log.append(&record) {
            write_error.get_or_insert(e);
            unwritten.push(record);
        }
    }
    let mut notes = Vec::new();
    if let Some(e) = write_error {
        notes.push(format!("appending to {} failed: {e}", log.path().display()));
        for record in &unwritten {
            log.append(record)?;
        }
    }
    Ok(Driven {
        interrupted: false,
        window,
        output_tokens,
        notes,
    })
}

/// Ctrl-C (or `q` in the dashboard): stop scheduling, give in-flight requests
/// the grace period, then cancel them. A second Ctrl-C cancels at once.
async fn interrupt_on_signal(
    stops: Stops,
    grace: Duration,
    interrupted: Arc<AtomicBool>,
    quit: Arc<Notify>,
) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = quit.notified() => {}
    }
    interrupted.store(true, Ordering::SeqCst);
    stops.stop.cancel();
    eprintln!(
        "\nstopping: no new requests; in-flight ones get {} to finish (Ctrl-C again to cancel them now)",
        humantime::format_duration(grace)
    );
    tokio::select! {
        _ = tokio::time::sleep(grace) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    stops.cancel.cancel();
}
