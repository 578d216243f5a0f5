//! The workload as a stream: requests are made a bounded distance ahead of
//! the dispatcher, so a run's start-up and memory do not depend on how many
//! requests it sends (the first leaves as soon as the first is made).

use super::synthetic::Synthetic;
use super::tokens::TokenCounter;
use super::{dataset, BodyOptions, Item, Lengths, Source};
use crate::client::PreparedRequest;
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
    pub run_id: String,
}

/// The requests of a run in sending order: the first `warmup` are the warm-up.
pub struct Feed {
    requests: mpsc::Receiver<PreparedRequest>,
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
        let first = source.request(&config, 0).await?;
        let total = config.requests.map(|n| n + config.warmup);
        let failure = Arc::new(Mutex::new(None));
        let (tx, requests) = mpsc::channel(AHEAD);
        let failed = failure.clone();
        tokio::spawn(async move {
            let mut next = Some(first);
            let mut index = 0;
            while let Some(request) = next.take() {
                if tx.send(request).await.is_err() {
                    return;
                }
                index += 1;
                if total.is_some_and(|total| index >= total) {
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
        Ok(Self { requests, failure })
    }

    /// A feed of requests made beforehand (examples, tests, selfcheck).
    pub fn from_requests(requests: Vec<PreparedRequest>) -> Self {
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
