//! The one task that takes every finished request off the response path and
//! turns it into latency histograms, an OTLP span and a truth-log line, and
//! flushes the truth log at least every 100 ms and on shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::metrics::Metrics;
use super::request::FinishedRequest;
use super::spans::SpanSink;
use super::truth::TruthLog;
use crate::clock::RunClock;

const TRUTH_FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Where responses hand their finished requests.
#[derive(Debug, Clone)]
pub(crate) struct FinishedRequests {
    finished: mpsc::UnboundedSender<FinishedRequest>,
}

impl FinishedRequests {
    pub fn record(&self, request: FinishedRequest) {
        // The task only stops after every sender is gone, so this cannot fail
        // while a response still holds a recorder.
        let _ = self.finished.send(request);
    }
}

/// Starts the recorder task; it ends (flushing everything) when every
/// [`FinishedRequests`] has been dropped.
pub(crate) fn start(
    metrics: Arc<Metrics>,
    spans: Option<SpanSink>,
    truth: Option<TruthLog>,
    clock: RunClock,
) -> (FinishedRequests, JoinHandle<anyhow::Result<()>>) {
    let (finished, receiver) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(receiver, metrics, spans, truth, clock));
    (FinishedRequests { finished }, task)
}

async fn run(
    mut finished: mpsc::UnboundedReceiver<FinishedRequest>,
    metrics: Arc<Metrics>,
    spans: Option<SpanSink>,
    mut truth: Option<TruthLog>,
    clock: RunClock,
) -> anyhow::Result<()> {
    let mut flush_tick = tokio::time::interval(TRUTH_FLUSH_EVERY);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut truth_error = None;
    loop {
        tokio::select! {
            request = finished.recv() => {
                let Some(request) = request else { break };
                metrics.record_finished(&request);
                if let Some(spans) = &spans {
                    spans.emit(&request);
                }
                if let Some(log) = &mut truth {
                    if let Err(e) = log.append(&request, &clock) {
                        truth_error.get_or_insert(e);
                    }
                }
            }
            _ = flush_tick.tick() => {
                if let Some(log) = &mut truth {
                    if let Err(e) = log.flush() {
                        truth_error.get_or_insert(e);
                    }
                }
            }
        }
    }
    if let Some(log) = &mut truth {
        log.flush()?;
    }
    if let Some(spans) = spans {
        spans.shutdown().await?;
    }
    truth_error.map_or(Ok(()), Err)
}
