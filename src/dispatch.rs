//! The one send loop every load shape shares: it takes requests in order,
//! waits for each one's intended instant (open loop, trace replay) or a free
//! slot (closed loop, batches), sends it on its own task and hands the
//! finished record on. A session is one unit of work: its turns go in order
//! on the slot it took, each after the previous answer and its think time.
//! The schedule only decides *when*; this loop decides nothing else. It runs
//! on tokio's clock, so its timing is tested under paused time.

use crate::client::{Client, PreparedRequest};
use crate::record::RequestRecord;
use crate::schedule::Schedule;
use crate::workload::feed::{Feed, Work};
use crate::workload::sessions::SessionRun;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What sends one request and makes its record (the HTTP client in a run).
pub trait RequestSender: Clone + Send + Sync + 'static {
    type Record: Send + 'static;
    /// Sends `request`, meant to leave at `intended`; never fails: errors are data.
    fn send(
        &self,
        request: PreparedRequest,
        intended: Instant,
        cancel: CancellationToken,
    ) -> impl Future<Output = Self::Record> + Send;

    /// The answer's text of a request that finished well and asked to keep
    /// it (a session's next turn needs it); `None` otherwise.
    fn take_reply(_record: &mut Self::Record) -> Option<String> {
        None
    }
}

impl RequestSender for Client {
    type Record = RequestRecord;
    async fn send(
        &self,
        request: PreparedRequest,
        intended: Instant,
        cancel: CancellationToken,
    ) -> RequestRecord {
        Client::send(self, &request, intended.into_std(), &cancel).await
    }

    fn take_reply(record: &mut RequestRecord) -> Option<String> {
        let reply = record.reply.take();
        reply.filter(|_| record.ok())
    }
}

/// A finished request as the loop hands it on.
#[derive(Debug)]
pub struct Finished<R> {
    pub record: R,
    /// No other request was in flight at any moment of this one.
    pub alone: bool,
}

/// The one send loop every schedule shares.
pub struct Dispatcher<S: RequestSender = Client> {
    worker: Worker<S>,
    schedule: Schedule,
    seed: u64,
}

/// What a request's task needs: cheap to clone.
struct Worker<S: RequestSender> {
    sender: S,
    stop: CancellationToken,
    cancel: CancellationToken,
    finished: mpsc::UnboundedSender<Finished<S::Record>>,
    in_flight: Arc<AtomicU64>,
    started: Arc<AtomicU64>,
}

impl<S: RequestSender> Clone for Worker<S> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            stop: self.stop.clone(),
            cancel: self.cancel.clone(),
            finished: self.finished.clone(),
            in_flight: self.in_flight.clone(),
            started: self.started.clone(),
        }
    }
}

/// Ends a dispatch early: `stop` sends nothing more, `cancel` abandons requests in flight.
#[derive(Debug, Clone, Default)]
pub struct Stops {
    pub stop: CancellationToken,
    pub cancel: CancellationToken,
}

impl<S: RequestSender> Dispatcher<S> {
    /// A loop sending with `sender` by `schedule`; finished requests come out
    /// of the returned receiver, which closes when the dispatcher is dropped
    /// and its last request is done.
    pub fn new(
        sender: S,
        schedule: Schedule,
        seed: u64,
        stops: Stops,
    ) -> (Self, mpsc::UnboundedReceiver<Finished<S::Record>>) {
        let (finished, rx) = mpsc::unbounded_channel();
        let worker = Worker {
            sender,
            stop: stops.stop,
            cancel: stops.cancel,
            finished,
            in_flight: Arc::new(AtomicU64::new(0)),
            started: Arc::new(AtomicU64::new(0)),
        };
        let dispatcher = Self {
            worker,
            schedule,
            seed,
        };
        (dispatcher, rx)
    }

    /// Requests in flight now (for the live view).
    pub fn in_flight(&self) -> Arc<AtomicU64> {
        self.worker.in_flight.clone()
    }

    /// Sends up to `count` requests of `feed` (all when `None`) by the
    /// schedule until they run out, the deadline passes or the run is
    /// stopped; returns when every request it sent has finished.
    pub async fn run_phase(&self, feed: &mut Feed, count: Option<u64>, deadline: Option<Instant>) {
        let limit = self.schedule.in_flight_limit();
        let slots = Arc::new(Semaphore::new(limit));
        let mut arrivals = self.schedule.arrivals(self.seed);
        let batch = match self.schedule {
            Schedule::Batch { size } => Some(size),
            _ => None,
        };
        let replay = matches!(self.schedule, Schedule::Replay { .. });
        // Replay: the phase's first request goes at once, the rest by the trace.
        let mut replay_base = None;
        let stop = &self.worker.stop;
        let start = Instant::now();
        let mut batch_start = start;
        let mut sent_in_batch = 0usize;
        let mut sent = 0u64;
        let mut tasks = tokio::task::JoinSet::new();
        let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);
        while count.is_none_or(|n| sent < n) && !stop.is_cancelled() && !past_deadline() {
            // Trace replay: the work itself says when it goes.
            let mut taken = None;
            if replay {
                let Some(work) = feed.next().await else {
                    break;
                };
                let at = work.at().unwrap_or_default();
                let base = *replay_base.get_or_insert(at);
                taken = Some((work, start + at.saturating_sub(base)));
            }
            let arrival = match &taken {
                Some((_, at)) => Some(*at),
                None => arrivals
                    .as_mut()
                    .and_then(|a| a.next())
                    .map(|offset| start + offset),
            };
            if let Some(at) = arrival {
                let wake = deadline.map_or(at, |d| at.min(d));
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = stop.cancelled() => break,
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
                        _ = stop.cancelled() => break,
                    }
                    sent_in_batch = 0;
                }
                if sent_in_batch == 0 {
                    batch_start = Instant::now();
                }
            }
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                _ = stop.cancelled() => break,
            };
            // A closed loop waits for its slot: the deadline may have passed meanwhile.
            if past_deadline() {
                break;
            }
            let work = match taken {
                Some((work, _)) => work,
                None => match feed.next().await {
                    Some(work) => work,
                    None => break,
                },
            };
            let intended = match (arrival, batch) {
                (Some(at), _) => at,
                (None, Some(_)) => batch_start,
                (None, None) => Instant::now(),
            };
            sent_in_batch += 1;
            sent += 1;
            let worker = self.worker.clone();
            tasks.spawn(async move {
                match work {
                    Work::Request(request) => drop(worker.send_one(request, intended).await),
                    Work::Session(session) => {
                        worker.send_session(session, intended, deadline).await
                    }
                }
                drop(slot);
            });
            // Reap finished tasks without waiting, so memory stays flat in long runs.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }
}

impl<S: RequestSender> Worker<S> {
    /// Sends one request, notes whether it overlapped another and hands it
    /// on; returns the reply it kept.
    async fn send_one(&self, request: PreparedRequest, intended: Instant) -> Option<String> {
        let others_before = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let started_before = self.started.fetch_add(1, Ordering::SeqCst);
        let mut record = self
            .sender
            .send(request, intended, self.cancel.clone())
            .await;
        let started_during = self.started.load(Ordering::SeqCst) - started_before - 1;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let alone = others_before == 0 && started_during == 0;
        let reply = S::take_reply(&mut record);
        let _ = self.finished.send(Finished { record, alone });
        reply
    }

    /// A session's turns in order: each after the previous answer and its
    /// think time. A failed turn, a stopped run, or a turn that would start
    /// after the phase's deadline ends the session (a later turn would build
    /// on an answer that never came).
    async fn send_session(
        &self,
        mut session: SessionRun,
        intended: Instant,
        deadline: Option<Instant>,
    ) {
        let mut intended = intended;
        while let Some((request, think)) = session.next_turn() {
            if request.meta.turn != Some(0) {
                intended = Instant::now() + think;
                if deadline.is_some_and(|d| intended >= d) {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(intended) => {}
                    _ = self.stop.cancelled() => return,
                }
            }
            let last = request.meta.turn.map(|t| t as usize + 1) == Some(session.turns());
            match self.send_one(request, intended).await {
                Some(reply) => session.answered(reply),
                None if !last => return,
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Arrival;
    use std::time::Duration;

    /// When each request was meant to go and when it went, in ms after the phase began.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Sent {
        index: u64,
        intended_ms: u64,
        started_ms: u64,
    }

    /// Takes `durations[index % len]` ms to answer, on tokio's clock.
    #[derive(Clone)]
    struct Sleeper {
        durations: Arc<Vec<u64>>,
        origin: Instant,
    }

    impl RequestSender for Sleeper {
        type Record = Sent;
        async fn send(
            &self,
            request: PreparedRequest,
            intended: Instant,
            _: CancellationToken,
        ) -> Sent {
            let started = Instant::now();
            let ms = self.durations[request.index as usize % self.durations.len()];
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let since = |t: Instant| (t - self.origin).as_millis() as u64;
            Sent {
                index: request.index,
                intended_ms: since(intended),
                started_ms: since(started),
            }
        }
    }

    fn request(index: u64) -> PreparedRequest {
        PreparedRequest {
            index,
            request_id: format!("r{index}"),
            warmup: false,
            body: bytes::Bytes::new(),
            max_tokens: None,
            input_tokens: None,
            input_tokens_source: None,
            meta: Default::default(),
        }
    }

    fn requests(n: u64) -> Feed {
        Feed::from_requests((0..n).map(request).collect())
    }

    async fn dispatch(schedule: Schedule, durations: &[u64], n: u64) -> Vec<Finished<Sent>> {
        let sender = Sleeper {
            durations: Arc::new(durations.to_vec()),
            origin: Instant::now(),
        };
        let (dispatcher, mut rx) = Dispatcher::new(sender, schedule, 7, Stops::default());
        dispatcher.run_phase(&mut requests(n), None, None).await;
        drop(dispatcher);
        let mut out = Vec::new();
        while let Some(finished) = rx.recv().await {
            out.push(finished);
        }
        out.sort_by_key(|f| f.record.index);
        out
    }

    fn starts(finished: &[Finished<Sent>]) -> Vec<u64> {
        finished.iter().map(|f| f.record.started_ms).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_sends_the_next_request_when_one_finishes() {
        let out = dispatch(Schedule::Closed { concurrency: 2 }, &[100, 30], 5).await;
        // 0 runs 0-100 and 1 runs 0-30; 2 takes 1's slot at 30 (to 130), 3 takes
        // 0's at 100 (to 130), 4 the first slot free at 130.
        assert_eq!(starts(&out), [0, 0, 30, 100, 130]);
        assert!(out
            .iter()
            .all(|f| f.record.intended_ms == f.record.started_ms));
        // Only the last ran with nothing else in flight.
        let alone: Vec<bool> = out.iter().map(|f| f.alone).collect();
        assert_eq!(alone, [false, false, false, false, true]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_loop_of_one_runs_every_request_alone() {
        let out = dispatch(Schedule::Closed { concurrency: 1 }, &[10], 4).await;
        assert_eq!(starts(&out), [0, 10, 20, 30]);
        assert!(out.iter().all(|f| f.alone));
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_keeps_constant_arrivals_whatever_the_server_does() {
        let open = |max_concurrency| Schedule::Open {
            rate: 10.0,
            arrival: Arrival::Constant,
            burstiness: 1.0,
            max_concurrency,
        };
        let out = dispatch(open(None), &[250], 4).await;
        let intended: Vec<u64> = out.iter().map(|f| f.record.intended_ms).collect();
        assert_eq!(intended, starts(&out));
        let gaps: Vec<u64> = intended.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, [100, 100, 100]);

        // Capped at one in flight: arrivals wait for the slot, and the lag shows.
        let capped = dispatch(open(Some(1)), &[250], 3).await;
        let lag: Vec<u64> = capped
            .iter()
            .map(|f| f.record.started_ms - f.record.intended_ms)
            .collect();
        assert_eq!(lag, [0, 150, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_wait_for_the_slowest_request_of_the_batch() {
        let out = dispatch(Schedule::Batch { size: 2 }, &[10, 50, 20], 5).await;
        // Batch 1: 0 and 1 (done at 50); batch 2 at 50: 2 and 3 (done at 70); then 4.
        assert_eq!(starts(&out), [0, 0, 50, 50, 70]);
        let intended: Vec<u64> = out.iter().map(|f| f.record.intended_ms).collect();
        assert_eq!(intended, [0, 0, 50, 50, 70]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replay_sends_each_request_at_its_own_offset_and_a_cap_shows_as_lag() {
        let replay = |offsets: Vec<u64>, cap| async move {
            let requests = offsets
                .into_iter()
                .enumerate()
                .map(|(i, ms)| PreparedRequest {
                    meta: crate::client::RequestMeta {
                        at: Some(Duration::from_millis(1000 + ms)),
                        ..Default::default()
                    },
                    ..request(i as u64)
                });
            let sender = Sleeper {
                durations: Arc::new(vec![200]),
                origin: Instant::now(),
            };
            let schedule = Schedule::Replay {
                max_concurrency: cap,
            };
            let (dispatcher, mut rx) = Dispatcher::new(sender, schedule, 0, Stops::default());
            let mut feed = Feed::from_requests(requests.collect());
            dispatcher.run_phase(&mut feed, None, None).await;
            drop(dispatcher);
            let mut out = Vec::new();
            while let Some(f) = rx.recv().await {
                out.push((f.record.intended_ms, f.record.started_ms));
            }
            out.sort();
            out
        };
        // Offsets count from the phase's first request (the trace's 1000 ms is its start).
        let free = replay(vec![0, 100, 100, 350], None).await;
        assert_eq!(free, [(0, 0), (100, 100), (100, 100), (350, 350)]);
        let capped = replay(vec![0, 100, 350], Some(1)).await;
        assert_eq!(capped, [(0, 0), (100, 200), (350, 400)]);
    }

    /// Answers in 10 ms with a reply naming the request; notes each turn's start.
    #[derive(Clone)]
    struct Turns {
        origin: Instant,
    }

    impl RequestSender for Turns {
        /// Request id, start (ms), the reply, earlier replies the body carried.
        type Record = (String, u64, Option<String>, usize);
        async fn send(
            &self,
            request: PreparedRequest,
            _: Instant,
            _: CancellationToken,
        ) -> Self::Record {
            let started = (Instant::now() - self.origin).as_millis() as u64;
            tokio::time::sleep(Duration::from_millis(10)).await;
            let reply = request
                .meta
                .keep_reply
                .then(|| format!("reply to {}", request.request_id));
            let replies = String::from_utf8_lossy(&request.body)
                .matches("reply to r-")
                .count();
            (request.request_id, started, reply, replies)
        }

        fn take_reply(record: &mut Self::Record) -> Option<String> {
            record.2.take()
        }
    }

    /// Two sessions of three turns (think times 0, 100, 50 ms) on one slot:
    /// each turn's id, start (ms) and the earlier replies its body carried.
    async fn two_sessions(deadline_ms: Option<u64>) -> Vec<(String, u64, usize)> {
        use crate::workload::sessions::{Session, SessionRun, Turn};
        let body = Arc::new(crate::workload::BodyOptions::new(
            crate::record::Endpoint::Chat,
            "m",
        ));
        let session = |index: u64| {
            let turn = |delay_ms| Turn {
                messages: vec![serde_json::json!({"role": "user", "content": "q"})],
                max_tokens: Some(4),
                delay: Duration::from_millis(delay_ms),
                images: Vec::new(),
            };
            let session = Session {
                id: format!("s{index}").into(),
                turns: vec![turn(0), turn(100), turn(50)],
            };
            Work::Session(SessionRun::new(
                session,
                index,
                false,
                body.clone(),
                "r".into(),
            ))
        };
        let origin = Instant::now();
        let schedule = Schedule::Closed { concurrency: 1 };
        let (dispatcher, mut rx) = Dispatcher::new(Turns { origin }, schedule, 0, Stops::default());
        let mut feed = Feed::from_work(vec![session(0), session(1)]);
        let deadline = deadline_ms.map(|ms| origin + Duration::from_millis(ms));
        dispatcher.run_phase(&mut feed, None, deadline).await;
        drop(dispatcher);
        let mut seen = Vec::new();
        while let Some(finished) = rx.recv().await {
            seen.push((finished.record.0, finished.record.1, finished.record.3));
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn a_sessions_turns_go_in_order_on_its_slot_after_each_answer_and_think_time() {
        let expect = |id: &str, ms, replies| (id.to_string(), ms, replies);
        // One slot: session 1 waits for all of session 0; each turn waits for
        // the answer (10 ms) and its think time, and carries the earlier replies.
        assert_eq!(
            two_sessions(None).await,
            [
                expect("r-000000-t0", 0, 0),
                expect("r-000000-t1", 110, 1),
                expect("r-000000-t2", 170, 2),
                expect("r-000001-t0", 180, 0),
                expect("r-000001-t1", 290, 1),
                expect("r-000001-t2", 350, 2),
            ]
        );
        // A deadline at 150 ms: no turn starts after it.
        assert_eq!(
            two_sessions(Some(150)).await,
            [
                expect("r-000000-t0", 0, 0),
                expect("r-000000-t1", 110, 1),
                expect("r-000001-t0", 120, 0),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_phase_sends_only_its_count_and_stops_at_its_deadline() {
        let sender = Sleeper {
            durations: Arc::new(vec![10]),
            origin: Instant::now(),
        };
        let schedule = Schedule::Closed { concurrency: 1 };
        let (dispatcher, mut rx) = Dispatcher::new(sender, schedule, 0, Stops::default());
        let mut feed = requests(100);
        dispatcher.run_phase(&mut feed, Some(3), None).await;
        let deadline = Instant::now() + Duration::from_millis(45);
        dispatcher.run_phase(&mut feed, None, Some(deadline)).await;
        drop(dispatcher);
        let mut indices = Vec::new();
        while let Some(finished) = rx.recv().await {
            indices.push(finished.record.index);
        }
        // Three warm-up requests, then those started before 45 ms: at 0, 10, 20, 30, 40.
        assert_eq!(indices, [0, 1, 2, 3, 4, 5, 6, 7]);
    }
}
