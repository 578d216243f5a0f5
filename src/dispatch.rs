//! The one send loop every load shape shares: it takes requests in order,
//! waits for each one's intended instant (open loop) or a free slot (closed
//! loop, batches), sends it on its own task and hands the finished record on.
//! The schedule only decides *when*; this loop decides nothing else.

use crate::client::{Client, PreparedRequest};
use crate::record::RequestRecord;
use crate::schedule::Schedule;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// What one dispatch phase sends.
pub enum PhaseRequests {
    Ready(std::vec::IntoIter<PreparedRequest>),
    Produced(mpsc::Receiver<PreparedRequest>),
}

impl PhaseRequests {
    async fn next(&mut self) -> Option<PreparedRequest> {
        match self {
            PhaseRequests::Ready(items) => items.next(),
            PhaseRequests::Produced(rx) => rx.recv().await,
        }
    }

    /// True when nothing is left to send (known only for ready lists).
    pub fn is_empty(&self) -> bool {
        matches!(self, PhaseRequests::Ready(items) if items.len() == 0)
    }
}

/// The one send loop every schedule shares.
pub struct Dispatcher {
    pub client: Client,
    pub schedule: Schedule,
    pub seed: u64,
    /// Cancelled: send nothing more.
    pub stop: CancellationToken,
    /// Cancelled: abandon requests in flight.
    pub cancel: CancellationToken,
    pub records: mpsc::UnboundedSender<RequestRecord>,
    pub in_flight: Arc<AtomicU64>,
}

impl Dispatcher {
    /// Sends `requests` by the schedule until they run out, the deadline passes
    /// or the run is stopped; returns when every request it sent has finished.
    pub async fn run_phase(&self, mut requests: PhaseRequests, deadline: Option<Instant>) {
        let limit = self.schedule.in_flight_limit();
        let slots = Arc::new(Semaphore::new(limit));
        let mut arrivals = self.schedule.arrivals(self.seed);
        let batch = match self.schedule {
            Schedule::Batch { size } => Some(size),
            _ => None,
        };
        let start = Instant::now();
        let mut batch_start = start;
        let mut sent_in_batch = 0usize;
        let mut tasks = tokio::task::JoinSet::new();
        let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);
        while !requests.is_empty() && !self.stop.is_cancelled() && !past_deadline() {
            let arrival = arrivals
                .as_mut()
                .and_then(|a| a.next())
                .map(|offset| start + offset);
            if let Some(at) = arrival {
                let wake = deadline.map_or(at, |d| at.min(d));
                tokio::select! {
                    _ = tokio::time::sleep_until(wake.into()) => {}
                    _ = self.stop.cancelled() => break,
                }
                if past_deadline() {
                    break;
                }
            }
            if let Some(size) = batch {
                if sent_in_batch == size {
                    // Wait for the whole batch to finish before the next one.
                    tokio::select! {
                        permits = slots.acquire_many(size as u32) => drop(permits),
                        _ = self.stop.cancelled() => break,
                    }
                    sent_in_batch = 0;
                }
                if sent_in_batch == 0 {
                    batch_start = Instant::now();
                }
            }
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                _ = self.stop.cancelled() => break,
            };
            let Some(request) = requests.next().await else {
                break;
            };
            let intended = match (arrival, batch) {
                (Some(at), _) => at,
                (None, Some(_)) => batch_start,
                (None, None) => Instant::now(),
            };
            sent_in_batch += 1;
            let client = self.client.clone();
            let cancel = self.cancel.clone();
            let records = self.records.clone();
            let in_flight = self.in_flight.clone();
            tasks.spawn(async move {
                in_flight.fetch_add(1, Ordering::Relaxed);
                let record = client.send(&request, intended, &cancel).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
                let _ = records.send(record);
            });
            // Reap finished tasks without waiting, so memory stays flat in long runs.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }
}
