//! The live side of a run: snapshots of the running statistics four times a
//! second, shown as the dashboard on a terminal or a progress line on
//! stderr, and the countdown line while spans trickle in.

use crate::analysis::live::{Gauge, LiveSnapshot, LiveStats, PhaseMeans};
use crate::clock::RunClock;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Publishes a snapshot of the live statistics four times a second, with the
/// span phases and telemetry gauges that `extras` reads; runs until dropped.
pub async fn publish_snapshots(
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
pub enum View {
    Dashboard(tokio::task::JoinHandle<std::io::Result<crate::tui::DashboardExit>>),
    Progress(tokio::task::JoinHandle<()>),
}

pub fn start_view(
    dashboard: bool,
    context: &[String],
    url: &str,
    snapshots: watch::Receiver<LiveSnapshot>,
    run_id: &str,
    quit: Arc<tokio::sync::Notify>,
) -> View {
    if dashboard && std::io::stdout().is_terminal() {
        let title = format!("tracebench {run_id} → {url}");
        let context = context.to_vec();
        View::Dashboard(tokio::task::spawn_blocking(move || {
            let exit = crate::tui::run_dashboard(snapshots, title, context);
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
    pub async fn finish(self) {
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

/// Waits for the spans `collector` still misses, counting down on stderr.
pub async fn wait_with_countdown(
    collector: &mut crate::trace::SpanCollector,
) -> anyhow::Result<crate::trace::WaitOutcome> {
    let mut countdown = Countdown::on_stderr();
    let waited = collector
        .wait(|progress| {
            countdown.show(&format!(
                "waiting for server spans: {} missing, {:.0}s left",
                progress.missing,
                progress.remaining.as_secs_f64()
            ))
        })
        .await;
    countdown.done();
    waited
}

/// A status line on stderr: rewritten in place on a terminal, else printed
/// at most every few seconds so logs stay readable.
struct Countdown {
    terminal: bool,
    last: Option<Instant>,
}

impl Countdown {
    /// A countdown on stderr.
    pub fn on_stderr() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    pub fn show(&mut self, line: &str) {
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

    pub fn done(self) {
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
