//! Where output tokens come from: a continuous-batching engine loop (one task
//! that admits, prefills in chunks and decodes in steps, so requests queue under
//! load like on a real server) or, in deterministic mode, a per-request pacer
//! that emits the first token `ttft` after arrival and then one every `itl`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::mpsc;
use tokio::time::Sleep;

use super::metrics::Metrics;

/// Most tokens one engine step processes (prefill chunks plus one per decoding
/// sequence), like vLLM's `max_num_batched_tokens`.
const STEP_TOKEN_BUDGET: u64 = 2048;

/// What a request learns from the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EngineEvent {
    /// Left the waiting queue and joined the running batch.
    Scheduled(Instant),
    /// One output token was produced.
    Token(Instant),
}

/// The engine's fixed parameters.
#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    pub max_num_seqs: usize,
    pub kv_capacity_tokens: u64,
    pub prefill_tokens_per_s: f64,
    pub decode_step: Duration,
    pub decode_step_per_seq: Duration,
}

struct Submission {
    prompt_tokens: u32,
    max_tokens: u32,
    events: mpsc::UnboundedSender<EngineEvent>,
}

/// Submits requests to the running engine.
#[derive(Debug, Clone)]
pub(crate) struct EngineHandle {
    submissions: mpsc::UnboundedSender<Submission>,
}

impl EngineHandle {
    /// Queues a request; its events arrive on the returned receiver. Dropping
    /// the receiver aborts the request. `None` when the engine has stopped.
    pub fn submit(
        &self,
        prompt_tokens: u32,
        max_tokens: u32,
    ) -> Option<mpsc::UnboundedReceiver<EngineEvent>> {
        let (events, receiver) = mpsc::unbounded_channel();
        self.submissions
            .send(Submission {
                prompt_tokens,
                max_tokens,
                events,
            })
            .ok()?;
        Some(receiver)
    }
}

/// Starts the engine loop; it ends when every handle is dropped and the batch
/// has drained.
pub(crate) fn start(
    config: EngineConfig,
    metrics: Arc<Metrics>,
) -> (EngineHandle, tokio::task::JoinHandle<()>) {
    let (submissions, receiver) = mpsc::unbounded_channel();
    let task = tokio::spawn(run_engine(config, receiver, metrics));
    (EngineHandle { submissions }, task)
}

struct Sequence {
    prompt_tokens: u32,
    max_tokens: u32,
    prefilled: u32,
    generated: u32,
    /// Set by the step plan: this sequence outputs a token when the step ends.
    emits_this_step: bool,
    events: mpsc::UnboundedSender<EngineEvent>,
}

impl Sequence {
    fn reserved_tokens(&self) -> u64 {
        self.prompt_tokens as u64 + self.max_tokens as u64
    }

    fn used_tokens(&self) -> u64 {
        self.prefilled as u64 + self.generated as u64
    }
}

struct Batch {
    config: EngineConfig,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    reserved_tokens: u64,
}

impl Batch {
    fn push(&mut self, submission: Submission) {
        self.waiting.push_back(Sequence {
            prompt_tokens: submission.prompt_tokens,
            max_tokens: submission.max_tokens,
            prefilled: 0,
            generated: 0,
            emits_this_step: false,
            events: submission.events,
        });
    }

    /// Moves waiting requests into the batch, first come first served, while
    /// there is a free slot and room to reserve their KV tokens.
    fn admit(&mut self, now: Instant) {
        self.waiting.retain(|seq| !seq.events.is_closed());
        while self.running.len() < self.config.max_num_seqs {
            let Some(next) = self.waiting.front() else {
                break;
            };
            if self.reserved_tokens + next.reserved_tokens() > self.config.kv_capacity_tokens {
                break;
            }
            let Some(seq) = self.waiting.pop_front() else {
                break;
            };
            if seq.events.send(EngineEvent::Scheduled(now)).is_ok() {
                self.reserved_tokens += seq.reserved_tokens();
                self.running.push(seq);
            }
        }
    }

    /// Decides what the next step computes and returns how long it takes:
    /// every decoding sequence yields a token, prefill chunks fill the rest of
    /// the token budget, and a sequence whose prefill completes yields its
    /// first token.
    fn plan_step(&mut self) -> Duration {
        let mut budget = STEP_TOKEN_BUDGET;
        for seq in &mut self.running {
            seq.emits_this_step = seq.prefilled == seq.prompt_tokens;
            if seq.emits_this_step {
                budget = budget.saturating_sub(1);
            }
        }
        let mut prefill_tokens = 0u64;
        for seq in self
            .running
            .iter_mut()
            .filter(|s| s.prefilled < s.prompt_tokens)
        {
            let chunk = budget.min((seq.prompt_tokens - seq.prefilled) as u64);
            if chunk == 0 {
                break;
            }
            budget -= chunk;
            prefill_tokens += chunk;
            seq.prefilled += chunk as u32;
            seq.emits_this_step = seq.prefilled == seq.prompt_tokens;
        }
        let per_seq = self.config.decode_step_per_seq * self.running.len() as u32;
        let prefill =
            Duration::from_secs_f64(prefill_tokens as f64 / self.config.prefill_tokens_per_s);
        self.config.decode_step + per_seq + prefill
    }

    /// Hands out the step's tokens; drops finished and abandoned sequences.
    fn finish_step(&mut self, now: Instant) {
        let mut freed = 0;
        self.running.retain_mut(|seq| {
            let keep = if seq.events.is_closed() {
                false
            } else if seq.emits_this_step {
                seq.generated += 1;
                seq.events.send(EngineEvent::Token(now)).is_ok() && seq.generated < seq.max_tokens
            } else {
                true
            };
            if !keep {
                freed += seq.reserved_tokens();
            }
            keep
        });
        self.reserved_tokens -= freed;
    }

    fn publish(&self, metrics: &Metrics) {
        let used: u64 = self.running.iter().map(Sequence::used_tokens).sum();
        metrics.set_batch(
            self.running.len(),
            self.waiting.len(),
            used as f64 / self.config.kv_capacity_tokens as f64,
        );
    }
}

async fn run_engine(
    config: EngineConfig,
    mut submissions: mpsc::UnboundedReceiver<Submission>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Batch {
        config,
        waiting: VecDeque::new(),
        running: Vec::new(),
        reserved_tokens: 0,
    };
    loop {
        if batch.running.is_empty() && batch.waiting.is_empty() {
            batch.publish(&metrics);
            match submissions.recv().await {
                Some(submission) => batch.push(submission),
                None => return,
            }
        }
        while let Ok(submission) = submissions.try_recv() {
            batch.push(submission);
        }
        let step_start = Instant::now();
        batch.admit(step_start);
        batch.publish(&metrics);
        if batch.running.is_empty() {
            // Every waiting request was abandoned before it was scheduled.
            continue;
        }
        let duration = batch.plan_step();
        tokio::time::sleep_until(step_start + duration).await;
        batch.finish_step(Instant::now());
    }
}

/// A request's source of engine events: the engine, or a deterministic pacer.
pub(crate) enum TokenSource {
    Engine(mpsc::UnboundedReceiver<EngineEvent>),
    Paced(PacedTokens),
}

impl TokenSource {
    /// The next event; `None` when the source is exhausted or the engine stopped.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<EngineEvent>> {
        match self {
            TokenSource::Engine(receiver) => receiver.poll_recv(cx),
            TokenSource::Paced(paced) => paced.poll_event(cx),
        }
    }
}

/// Deterministic mode: every request on its own, scheduled at arrival, token
/// `k` (0-based) due at `arrival + ttft + k * itl`; no batching effects.
pub(crate) struct PacedTokens {
    arrival: Instant,
    scheduled_sent: bool,
    sleep: Pin<Box<Sleep>>,
    next_due: Instant,
    itl: Duration,
    remaining: u32,
    _in_flight: InFlight,
}

impl PacedTokens {
    pub fn new(
        arrival: Instant,
        ttft: Duration,
        itl: Duration,
        tokens: u32,
        metrics: Arc<Metrics>,
    ) -> Self {
        let next_due = arrival + ttft;
        Self {
            arrival,
            scheduled_sent: false,
            sleep: Box::pin(tokio::time::sleep_until(next_due)),
            next_due,
            itl,
            remaining: tokens,
            _in_flight: InFlight::new(metrics),
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<EngineEvent>> {
        if !self.scheduled_sent {
            self.scheduled_sent = true;
            return Poll::Ready(Some(EngineEvent::Scheduled(self.arrival)));
        }
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.remaining -= 1;
        self.next_due += self.itl;
        let next_due = self.next_due;
        self.sleep.as_mut().reset(next_due);
        Poll::Ready(Some(EngineEvent::Token(Instant::now())))
    }
}

/// Counts a deterministic-mode request as running while it lives.
struct InFlight(Arc<Metrics>);

impl InFlight {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.add_running(1);
        Self(metrics)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.add_running(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_num_seqs: usize) -> EngineConfig {
        EngineConfig {
            max_num_seqs,
            kv_capacity_tokens: 100_000,
            prefill_tokens_per_s: 10_000.0,
            decode_step: Duration::from_millis(10),
            decode_step_per_seq: Duration::from_millis(1),
        }
    }

    /// Drains a receiver: (scheduled, token instants).
    async fn collect(
        mut events: mpsc::UnboundedReceiver<EngineEvent>,
    ) -> (Option<Instant>, Vec<Instant>) {
        let mut scheduled = None;
        let mut tokens = Vec::new();
        while let Some(event) = events.recv().await {
            match event {
                EngineEvent::Scheduled(at) => scheduled = Some(at),
                EngineEvent::Token(at) => tokens.push(at),
            }
        }
        (scheduled, tokens)
    }

    #[tokio::test(start_paused = true)]
    async fn steps_cost_base_plus_per_sequence_plus_prefill() {
        let metrics = Arc::new(Metrics::new("m"));
        let (engine, task) = start(config(8), metrics);
        let start = Instant::now();
        let events = engine.submit(100, 3).expect("engine runs");
        let (scheduled, tokens) = collect(events).await;
        assert_eq!(scheduled, Some(start));
        assert_eq!(tokens.len(), 3);
        // Prefill step: 10 ms + 1 ms + 100 tokens at 10k/s = 21 ms; decode steps 11 ms.
        let offsets: Vec<_> = tokens
            .iter()
            .map(|t| t.duration_since(start).as_millis())
            .collect();
        assert_eq!(offsets, [21, 32, 43]);
        drop(engine);
        task.await.expect("engine ends");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_max_num_seqs_wait_in_the_queue() {
        let metrics = Arc::new(Metrics::new("m"));
        let (engine, _task) = start(config(2), metrics.clone());
        let start = Instant::now();
        let receivers: Vec<_> = (0..3)
            .map(|_| engine.submit(10, 4).expect("engine runs"))
            .collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(metrics
            .render()
            .contains("vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 1.0"));
        let mut results = Vec::new();
        for receiver in receivers {
            results.push(collect(receiver).await);
        }
        assert_eq!(results[0].0, Some(start));
        assert_eq!(results[1].0, Some(start));
        let third_scheduled = results[2].0.expect("scheduled");
        // The third request starts only after one of the first two finished.
        assert!(third_scheduled >= *results[0].1.last().expect("tokens"));
        assert!(results.iter().all(|(_, tokens)| tokens.len() == 4));
    }

    #[tokio::test(start_paused = true)]
    async fn kv_capacity_limits_admission_and_dropping_the_receiver_aborts() {
        let metrics = Arc::new(Metrics::new("m"));
        let mut cfg = config(8);
        cfg.kv_capacity_tokens = 150;
        let (engine, _task) = start(cfg, metrics.clone());
        let first = engine.submit(50, 50).expect("engine runs");
        let second = engine.submit(50, 50).expect("engine runs");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(metrics
            .render()
            .contains("vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 1.0"));
        drop(first);
        let (scheduled, tokens) = collect(second).await;
        assert!(scheduled.is_some());
        assert_eq!(tokens.len(), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn long_prompts_prefill_in_chunks_across_steps() {
        let metrics = Arc::new(Metrics::new("m"));
        let mut cfg = config(8);
        cfg.prefill_tokens_per_s = 10_240.0;
        let (engine, _task) = start(cfg, metrics);
        let start = Instant::now();
        let (_, tokens) = collect(engine.submit(5120, 1).expect("engine runs")).await;
        // Three steps (2048 + 2048 + 1024 tokens): 3 × 11 ms + 500 ms of prefill.
        assert_eq!(tokens[0].duration_since(start).as_millis(), 533);
    }

    #[tokio::test(start_paused = true)]
    async fn paced_tokens_follow_ttft_and_itl() {
        let metrics = Arc::new(Metrics::new("m"));
        let arrival = Instant::now();
        let mut source = TokenSource::Paced(PacedTokens::new(
            arrival,
            Duration::from_millis(50),
            Duration::from_millis(10),
            3,
            metrics.clone(),
        ));
        assert!(metrics
            .render()
            .contains("vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 1.0"));
        let mut events = Vec::new();
        while let Some(event) = std::future::poll_fn(|cx| source.poll_event(cx)).await {
            events.push(event);
        }
        let ms = |d: u64| arrival + Duration::from_millis(d);
        assert_eq!(
            events,
            [
                EngineEvent::Scheduled(arrival),
                EngineEvent::Token(ms(50)),
                EngineEvent::Token(ms(60)),
                EngineEvent::Token(ms(70)),
            ]
        );
        drop(source);
        assert!(metrics
            .render()
            .contains("vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 0.0"));
    }
}
