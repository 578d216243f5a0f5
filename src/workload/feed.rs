//! The workload as a stream: requests are made a bounded distance ahead of
//! the dispatcher, so a run's start-up and memory do not depend on how many
//! requests it sends (the first leaves as soon as the first is made).

use super::synthetic::Synthetic;
use super::tokens::TokenCounter;
use super::{dataset, BodyOptions, Item, Lengths, Source};
use crate::client::PreparedRequest;
use crate::shard::{Shard, UnitOwnership};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Requests made ahead of the dispatcher, at most.
pub const AHEAD: usize = 1024;

/// What the workload needs to know, and nothing else of the run.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub source: Source,
    /// Output budget of every request (overrides the source's output lengths).
    pub max_tokens: Option<u64>,
    pub seed: u64,
    /// Requests sent first and not counted.
    pub warmup: u64,
    /// Measured requests; `None`: as many as the run takes.
    pub requests: Option<u64>,
    pub body: BodyOptions,
    /// Request ids are `RUN_ID-INDEX` (a shard's `RUN_ID` is its request id prefix).
    pub run_id: String,
    /// Only this shard's requests are made, at their positions in the whole run.
    pub shard: Option<Shard>,
}

/// How many requests a feed makes in each phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    pub warmup: u64,
    /// `None`: as many as the run takes.
    pub measured: Option<u64>,
}

/// The requests of a run in sending order: the first `warmup` are the warm-up.
pub struct Feed {
    requests: mpsc::Receiver<PreparedRequest>,
    phases: Phases,
    /// Why the feed ended before the run wanted it to, if it did.
    failure: Arc<Mutex<Option<String>>>,
}

/// Where items come from.
enum ItemSource {
    Synthetic(Synthetic, TokenCounter),
    Dataset(Vec<Item>),
}

impl Feed {
    /// Loads or calibrates the source and starts making requests; the first
    /// one is made here, so a workload that cannot make any fails now.
    /// `notes` gets what a user should know about the prompts.
    pub async fn start(
        config: WorkloadConfig,
        counter: TokenCounter,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Self> {
        let source = ItemSource::new(&config, counter, notes).await?;
        let positions = source.positions(config.shard)?;
        let end = config.requests.map(|n| n + config.warmup);
        let warmup = positions.count_below(config.warmup);
        let phases = Phases {
            warmup,
            measured: end.map(|end| positions.count_below(end) - warmup),
        };
        let mut index = positions.next_from(0);
        if end.is_some_and(|end| index >= end) {
            anyhow::bail!("this shard gets none of the run's requests: send more requests or use fewer shards");
        }
        let first = source.request(&config, index).await?;
        let failure = Arc::new(Mutex::new(None));
        let (tx, requests) = mpsc::channel(AHEAD);
        let failed = failure.clone();
        tokio::spawn(async move {
            let mut next = Some(first);
            while let Some(request) = next.take() {
                if tx.send(request).await.is_err() {
                    return;
                }
                index = positions.next_from(index + 1);
                if end.is_some_and(|end| index >= end) {
                    return;
                }
                match source.request(&config, index).await {
                    Ok(request) => next = Some(request),
                    Err(e) => {
                        let why = format!("the workload stopped at request {index}: {e:#}");
                        *failed.lock().expect("feed failure lock") = Some(why);
                    }
                }
            }
        });
        Ok(Self {
            requests,
            phases,
            failure,
        })
    }

    /// How many requests the feed makes in the warm-up and the measured phase.
    pub fn phases(&self) -> Phases {
        self.phases
    }

    /// A feed of requests made beforehand (examples, tests, selfcheck); all measured.
    pub fn from_requests(requests: Vec<PreparedRequest>) -> Self {
        let phases = Phases {
            warmup: 0,
            measured: Some(requests.len() as u64),
        };
        let (tx, rx) = mpsc::channel(AHEAD);
        tokio::spawn(async move {
            for request in requests {
                if tx.send(request).await.is_err() {
                    return;
                }
            }
        });
        Self {
            requests: rx,
            phases,
            failure: Arc::new(Mutex::new(None)),
        }
    }

    /// The next request; `None` when the workload is done.
    pub async fn next(&mut self) -> Option<PreparedRequest> {
        self.requests.recv().await
    }

    /// Why the workload ended early, when it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("feed failure lock").clone()
    }
}

impl ItemSource {
    async fn new(
        config: &WorkloadConfig,
        counter: TokenCounter,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Self> {
        Ok(match &config.source {
            Source::Dataset { path } => {
                ItemSource::Dataset(dataset::load(path, config.max_tokens)?)
            }
            Source::Synthetic {
                input_tokens,
                output_tokens,
                shared_prefix_tokens,
                ..
            } => {
                let output = match config.max_tokens {
                    Some(mean) => Lengths { mean, stddev: 0.0 },
                    None => (*output_tokens).into(),
                };
                let synthetic = Synthetic::new(
                    (*input_tokens).into(),
                    output,
                    *shared_prefix_tokens,
                    config.seed,
                    &counter,
                )
                .await?;
                if !synthetic.is_calibrated() {
                    notes.push(
                        "the tokenizer's word costs do not add up, so every prompt is counted \
                         as it is made"
                            .into(),
                    );
                }
                ItemSource::Synthetic(synthetic, counter)
            }
        })
    }

    /// The positions of the whole run this process sends: all of them, a
    /// shard's round robin of synthetic prompts, or the positions of the
    /// dataset units (by [`Item::unit_key`]) the shard owns.
    fn positions(&self, shard: Option<Shard>) -> anyhow::Result<Positions> {
        Ok(match (shard, self) {
            (None, _) => Positions::All,
            (Some(shard), ItemSource::Synthetic(..)) => Positions::RoundRobin(shard),
            (Some(shard), ItemSource::Dataset(items)) => {
                let keys: Vec<String> = items
                    .iter()
                    .enumerate()
                    .map(|(line, item)| item.unit_key(line))
                    .collect();
                let owned = UnitOwnership::new(shard, keys.iter().map(String::as_str));
                if owned.owned() == 0 {
                    anyhow::bail!(
                        "shard {shard} owns none of the dataset's {} units: use fewer shards",
                        items.len()
                    );
                }
                Positions::Units(owned)
            }
        })
    }

    async fn request(
        &self,
        config: &WorkloadConfig,
        index: u64,
    ) -> anyhow::Result<PreparedRequest> {
        let item = match self {
            ItemSource::Synthetic(synthetic, counter) => synthetic.item(index, counter).await?,
            ItemSource::Dataset(items) => items[(index % items.len() as u64) as usize].clone(),
        };
        let warmup = index < config.warmup;
        Ok(config.body.prepare(index, &config.run_id, warmup, &item))
    }
}

/// The positions of the whole run that one process sends.
enum Positions {
    All,
    RoundRobin(Shard),
    Units(UnitOwnership),
}

impl Positions {
    /// The first position at or after `from` that is this process's.
    fn next_from(&self, from: u64) -> u64 {
        match self {
            Positions::All => from,
            Positions::RoundRobin(shard) => {
                let n = u64::from(shard.count);
                from + (u64::from(shard.index) + n - from % n) % n
            }
            Positions::Units(owned) => (from..).find(|p| owned.owns(*p)).expect("owns a unit"),
        }
    }

    /// How many of the positions `0..end` are this process's.
    fn count_below(&self, end: u64) -> u64 {
        match self {
            Positions::All => end,
            Positions::RoundRobin(shard) => shard.share(end),
            Positions::Units(owned) => owned.count_below(end),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Endpoint;

    fn config(requests: Option<u64>, warmup: u64) -> WorkloadConfig {
        WorkloadConfig {
            source: Source::Synthetic {
                input_tokens: Lengths {
                    mean: 16,
                    stddev: 0.0,
                }
                .into(),
                output_tokens: Lengths {
                    mean: 4,
                    stddev: 0.0,
                }
                .into(),
                shared_prefix_tokens: 0,
                tokenizer: None,
            },
            max_tokens: None,
            seed: 1,
            warmup,
            requests,
            body: BodyOptions::new(Endpoint::Chat, "m"),
            run_id: "run".into(),
            shard: None,
        }
    }

    #[tokio::test]
    async fn a_count_run_makes_warmup_and_measured_requests_in_order() {
        let mut feed = Feed::start(config(Some(3), 2), TokenCounter::Estimate, &mut Vec::new())
            .await
            .unwrap();
        let mut seen = Vec::new();
        while let Some(request) = feed.next().await {
            seen.push((request.index, request.warmup));
        }
        assert_eq!(
            seen,
            [(0, true), (1, true), (2, false), (3, false), (4, false)]
        );
        assert_eq!(feed.failure(), None);
    }

    /// Every request a feed makes: (position, warm-up, body).
    async fn drain(config: WorkloadConfig) -> (Phases, Vec<(u64, bool, bytes::Bytes)>) {
        let mut feed = Feed::start(config, TokenCounter::Estimate, &mut Vec::new())
            .await
            .unwrap();
        let mut made = Vec::new();
        while let Some(r) = feed.next().await {
            made.push((r.index, r.warmup, r.body));
        }
        (feed.phases(), made)
    }

    #[tokio::test]
    async fn shards_make_exactly_the_runs_requests_between_them() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (0..7)
            .map(|i| format!("{{\"prompt\": \"line {i}\"}}\n"))
            .collect();
        std::fs::write(dir.path().join("d.jsonl"), lines).unwrap();
        let dataset = WorkloadConfig {
            source: Source::Dataset {
                path: dir.path().join("d.jsonl"),
            },
            ..config(Some(17), 3)
        };
        for whole in [config(Some(17), 3), dataset] {
            let (_, mut all) = drain(whole.clone()).await;
            let mut union = Vec::new();
            for index in 0..3 {
                let shard = Some(Shard { index, count: 3 });
                let (phases, made) = drain(WorkloadConfig {
                    shard,
                    ..whole.clone()
                })
                .await;
                let warm = made.iter().filter(|m| m.1).count() as u64;
                assert_eq!(
                    (phases.warmup, phases.measured),
                    (warm, Some(made.len() as u64 - warm))
                );
                union.extend(made);
            }
            union.sort_by_key(|m| m.0);
            all.sort_by_key(|m| m.0);
            assert_eq!(
                union, all,
                "the same bodies at the same positions, none twice"
            );
        }
    }

    #[tokio::test]
    async fn a_huge_run_starts_at_once_and_holds_only_what_is_ahead() {
        let mut feed = Feed::start(
            config(Some(10_000_000_000), 0),
            TokenCounter::Estimate,
            &mut Vec::new(),
        )
        .await
        .unwrap();
        // Made up front, ten billion requests would never let this line run.
        assert_eq!(feed.next().await.unwrap().index, 0);
        assert_eq!(feed.next().await.unwrap().index, 1);
    }
}
