//! The workload as a stream: requests (and sessions) are made a bounded
//! distance ahead of the dispatcher, so a run's start-up and memory do not
//! depend on how many requests it sends or how big its dataset file is (the
//! first leaves as soon as the first is made; files are read entry by entry).
//!
//! Before the first request, a dataset or trace is checked up front
//! ([`reader::check_upfront`]: whole when small, its start when large); the
//! rest is checked as it is read, and a bad entry there ends the run early
//! with its place named, every finished record kept.
//!
//! One file (about 630 lines of code, the rest its tests): the feed task, the
//! sources it reads from and the positions a shard keeps are one loop over
//! one position counter; split, each part would need the others' internals.

use super::dataset::{self, Cycling};
use super::images::ImageConfig;
use super::reader::{self, EntryReader};
use super::sessions::{Session, SessionRun, SyntheticSessions, Turn};
use super::sharegpt::{self, LengthFilters, Turns};
use super::synthetic::Synthetic;
use super::tokens::TokenCounter;
use super::trace::{self, Order, Rows};
use super::{BodyOptions, DatasetFormat, Item, Lengths, Prompt, Source};
use crate::client::PreparedRequest;
use crate::shard::Shard;
use anyhow::Context;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Requests made ahead of the dispatcher, at most.
pub const AHEAD: usize = 1024;
/// Ahead when requests carry images (each may be hundreds of kilobytes).
const AHEAD_WITH_IMAGES: usize = 64;

/// What the workload needs to know, and nothing else of the run.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub source: Source,
    /// Output budget of every request (overrides the source's output lengths).
    pub max_tokens: Option<u64>,
    pub seed: u64,
    /// Requests (or sessions) sent first and not counted.
    pub warmup: u64,
    /// Measured requests (or sessions); `None`: as many as the run takes.
    pub requests: Option<u64>,
    pub body: BodyOptions,
    /// Request ids are `RUN_ID-INDEX` (a shard's `RUN_ID` is its request id prefix).
    pub run_id: String,
    /// Only this shard's work is made, at its positions in the whole run.
    pub shard: Option<Shard>,
    /// `--images N` generated or from `--image-dir`, added to every request.
    pub images: Option<ImageConfig>,
}

/// How much work a feed makes in each phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    pub warmup: u64,
    /// `None`: as much as the run takes.
    pub measured: Option<u64>,
}

/// One unit the dispatcher sends on one slot: a request, or a whole session.
#[derive(Debug)]
pub enum Work {
    Request(PreparedRequest),
    Session(SessionRun),
}

impl Work {
    /// Trace replay: when, after the trace's first request, this is meant to go.
    pub fn at(&self) -> Option<Duration> {
        match self {
            Work::Request(request) => request.meta.at,
            Work::Session(_) => None,
        }
    }
}

/// The work of a run in sending order: the first `warmup` are the warm-up.
pub struct Feed {
    work: mpsc::Receiver<Work>,
    /// Why the feed ended before the run wanted it to, and what it skipped.
    notes: Arc<Mutex<FeedNotes>>,
    phases: Phases,
}

#[derive(Debug, Default)]
struct FeedNotes {
    failure: Option<String>,
    /// Reason -> entries skipped (ShareGPT's length filters).
    skipped: BTreeMap<&'static str, u64>,
    read: u64,
}

/// Where work comes from.
enum ItemSource {
    Synthetic {
        synthetic: Synthetic,
        counter: TokenCounter,
        sessions: Option<SyntheticSessions>,
    },
    Prompts(Cycling),
    ShareGpt {
        entries: Cycling,
        counter: TokenCounter,
        turns: Turns,
        filters: LengthFilters,
    },
    Sessions(Cycling),
    Trace {
        rows: Rows,
        order: Order,
        first_ms: Option<f64>,
        time_scale: f64,
        words: Synthetic,
        counter: TokenCounter,
    },
}

impl Feed {
    /// Checks and opens the source and starts making work; the first item
    /// is made here, so a workload that cannot make any fails now. `notes`
    /// gets what a user should know about the prompts.
    pub async fn start(
        config: WorkloadConfig,
        counter: TokenCounter,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Self> {
        check_upfront(&config, notes)?;
        let ahead = match config.images {
            Some(_) => AHEAD_WITH_IMAGES,
            None => AHEAD,
        };
        let mut source = ItemSource::new(&config, counter, notes).await?;
        let shared = Arc::new(Mutex::new(FeedNotes::default()));
        let body = Arc::new(config.body.clone());
        let total = config.requests.map(|n| n + config.warmup);
        let positions = Positions(config.shard);
        let phases = Phases {
            warmup: positions.count_below(config.warmup),
            measured: total
                .map(|end| positions.count_below(end) - positions.count_below(config.warmup)),
        };
        if phases.measured == Some(0) {
            anyhow::bail!("this shard gets none of the run's requests: send more requests or use fewer shards");
        }
        let (mut index, first) = source
            .next_owned(&config, &body, 0, &shared, positions, total)
            .await?;
        let (tx, work) = mpsc::channel(ahead);
        let feed_notes = shared.clone();
        tokio::spawn(async move {
            let mut next = first;
            while let Some(work) = next.take() {
                if tx.send(work).await.is_err() {
                    return;
                }
                let from = index + 1;
                match source
                    .next_owned(&config, &body, from, &shared, positions, total)
                    .await
                {
                    Ok((at, work)) => (index, next) = (at, work),
                    Err(e) => {
                        let why = format!("the workload stopped at request {from}: {e:#}");
                        shared.lock().expect("feed notes lock").failure = Some(why);
                    }
                }
            }
        });
        Ok(Self {
            work,
            notes: feed_notes,
            phases,
        })
    }

    /// How many requests the feed makes in the warm-up and the measured phase.
    pub fn phases(&self) -> Phases {
        self.phases
    }

    /// A feed of requests made beforehand (examples, tests, selfcheck); all measured.
    pub fn from_requests(requests: Vec<PreparedRequest>) -> Self {
        Self::from_work(requests.into_iter().map(Work::Request).collect())
    }

    /// A feed of work made beforehand; all measured.
    pub fn from_work(work: Vec<Work>) -> Self {
        let phases = Phases {
            warmup: 0,
            measured: Some(work.len() as u64),
        };
        let (tx, rx) = mpsc::channel(AHEAD);
        tokio::spawn(async move {
            for item in work {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Self {
            work: rx,
            notes: Arc::default(),
            phases,
        }
    }

    /// The next request or session; `None` when the workload is done.
    pub async fn next(&mut self) -> Option<Work> {
        self.work.recv().await
    }

    /// Why the workload ended early, when it did.
    pub fn failure(&self) -> Option<String> {
        self.notes.lock().expect("feed notes lock").failure.clone()
    }

    /// What a user should know of the workload at the end: entries skipped
    /// by the length filters, and why it ended early if it did.
    pub fn notes(&self) -> Vec<String> {
        let notes = self.notes.lock().expect("feed notes lock");
        let mut out = Vec::new();
        if !notes.skipped.is_empty() {
            let reasons: Vec<String> = notes
                .skipped
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect();
            out.push(format!(
                "the dataset's length filters skipped {} of {} entries read ({})",
                notes.skipped.values().sum::<u64>(),
                notes.read,
                reasons.join(", ")
            ));
        }
        out.extend(notes.failure.clone());
        out
    }
}

/// The check before the first request (see [`reader::check_upfront`]).
fn check_upfront(config: &WorkloadConfig, notes: &mut Vec<String>) -> anyhow::Result<()> {
    let (path, (checked, whole)) = match &config.source {
        Source::Synthetic { .. } => return Ok(()),
        Source::Dataset { path, format, .. } => {
            let base = path.parent().unwrap_or(Path::new("."));
            let entries = EntryReader::open(path)?;
            let checked = reader::check_upfront(path, entries, |entry| match format {
                DatasetFormat::Prompts => dataset::item(&entry.value, None, base).map(drop),
                DatasetFormat::Sharegpt => sharegpt::parse(&entry.value).map(drop),
                DatasetFormat::Sessions => {
                    super::sessions::parse(&entry.value, None, base).map(drop)
                }
            })?;
            (path, checked)
        }
        Source::Trace { path, .. } => {
            let mut order = Order::default();
            let checked = reader::check_upfront(path, Rows::open(path)?, |entry| {
                order.check(&trace::parse(&entry.value)?)
            })?;
            (path, checked)
        }
    };
    if !whole {
        notes.push(format!(
            "{} is large: its first {checked} entries were checked before the run, the rest \
             is checked as it is read",
            path.display()
        ));
    }
    Ok(())
}

impl ItemSource {
    async fn new(
        config: &WorkloadConfig,
        counter: TokenCounter,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Self> {
        let calibrated = |synthetic: &Synthetic, notes: &mut Vec<String>| {
            if !synthetic.is_calibrated() {
                notes.push(
                    "the tokenizer's word costs do not add up, so every prompt is counted \
                     as it is made"
                        .into(),
                );
            }
        };
        Ok(match &config.source {
            Source::Dataset {
                path,
                format,
                sharegpt_turns,
                filters,
                ..
            } => {
                let entries = Cycling::open(path)?;
                match format {
                    DatasetFormat::Prompts => ItemSource::Prompts(entries),
                    DatasetFormat::Sessions => ItemSource::Sessions(entries),
                    DatasetFormat::Sharegpt => ItemSource::ShareGpt {
                        entries,
                        counter,
                        turns: *sharegpt_turns,
                        filters: *filters,
                    },
                }
            }
            Source::Trace {
                path, time_scale, ..
            } => {
                let one = Lengths {
                    mean: 1,
                    stddev: 0.0,
                };
                let words = Synthetic::new(one, one, 0, 1, config.seed, &counter).await?;
                calibrated(&words, notes);
                ItemSource::Trace {
                    rows: Rows::open(path)?,
                    order: Order::default(),
                    first_ms: None,
                    time_scale: *time_scale,
                    words,
                    counter,
                }
            }
            Source::Synthetic {
                input_tokens,
                output_tokens,
                shared_prefix_tokens,
                prefix_groups,
                sessions,
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
                    *prefix_groups,
                    config.seed,
                    &counter,
                )
                .await?;
                calibrated(&synthetic, notes);
                ItemSource::Synthetic {
                    synthetic,
                    counter,
                    sessions: *sessions,
                }
            }
        })
    }

    /// The first work at or after position `from` that is this process's,
    /// and its position. Synthetic work is a function of its position, so
    /// the positions before it are skipped; a file is read in order, so its
    /// positions before it are made and dropped. Either way every position
    /// gets exactly what it gets in one process (a dataset line, a whole
    /// session); `None` at `end` or when the source ends.
    async fn next_owned(
        &mut self,
        config: &WorkloadConfig,
        body: &Arc<BodyOptions>,
        from: u64,
        notes: &Mutex<FeedNotes>,
        positions: Positions,
        end: Option<u64>,
    ) -> anyhow::Result<(u64, Option<Work>)> {
        let by_position = matches!(self, ItemSource::Synthetic { .. });
        let mut index = if by_position {
            positions.next_from(from)
        } else {
            from
        };
        loop {
            if end.is_some_and(|end| index >= end) {
                return Ok((index, None));
            }
            let work = self.next(config, body, index, notes).await?;
            if work.is_none() || positions.owns(index) {
                return Ok((index, work));
            }
            index += 1;
        }
    }

    /// Work `index`; `None` when a finite source (a trace) has ended.
    async fn next(
        &mut self,
        config: &WorkloadConfig,
        body: &Arc<BodyOptions>,
        index: u64,
        notes: &Mutex<FeedNotes>,
    ) -> anyhow::Result<Option<Work>> {
        let warmup = index < config.warmup;
        let session = |session: Session| {
            let run = SessionRun::new(
                session,
                index,
                warmup,
                body.clone(),
                config.run_id.as_str().into(),
            );
            Some(Work::Session(run))
        };
        let mut item = match self {
            ItemSource::Synthetic {
                synthetic,
                counter,
                sessions: Some(sessions),
            } => {
                let planned =
                    synthetic_session(synthetic, counter, sessions, config, index).await?;
                return Ok(session(planned));
            }
            ItemSource::Synthetic {
                synthetic, counter, ..
            } => synthetic.item(index, counter).await?,
            ItemSource::Prompts(entries) => {
                let entry = entries.next_entry("a prompt")?;
                let item = dataset::item(&entry.value, config.max_tokens, entries.base())
                    .with_context(|| entries.place(&entry))?;
                entries.used();
                item
            }
            ItemSource::Sessions(entries) => {
                let entry = entries.next_entry("a session")?;
                let planned =
                    super::sessions::parse(&entry.value, config.max_tokens, entries.base())
                        .with_context(|| entries.place(&entry))?;
                entries.used();
                return Ok(session(planned));
            }
            ItemSource::ShareGpt {
                entries,
                counter,
                turns,
                filters,
            } => {
                let work = sharegpt_next(entries, counter, *turns, *filters, config, index, notes);
                match work.await? {
                    ShareGptWork::Item(item) => item,
                    ShareGptWork::Session(planned) => return Ok(session(planned)),
                }
            }
            ItemSource::Trace {
                rows,
                order,
                first_ms,
                time_scale,
                words,
                counter,
            } => {
                use reader::Entries;
                let Some(entry) = rows.next_entry()? else {
                    return Ok(None);
                };
                let request = trace::parse(&entry.value)
                    .and_then(|r| order.check(&r).map(|()| r))
                    .with_context(|| rows.place(&entry))?;
                let first = *first_ms.get_or_insert(request.timestamp_ms);
                let (text, count) = trace::prompt(&request, entry.line, words, counter).await?;
                Item {
                    input_tokens: Some(count),
                    input_tokens_source: counter.source(),
                    at: Some(Duration::from_secs_f64(
                        (request.timestamp_ms - first) * *time_scale / 1e3,
                    )),
                    ..Item::new(
                        Prompt::Text(text),
                        Some(config.max_tokens.unwrap_or(request.output_length)),
                    )
                }
            }
        };
        if let Some(images) = &config.images {
            item.images
                .extend(generate_images(images, config.seed, index).await?);
        }
        Ok(Some(Work::Request(body.prepare(
            index,
            &config.run_id,
            warmup,
            &item,
        ))))
    }
}

/// `config.images(seed, index)` off the async threads (encoding is CPU work).
async fn generate_images(
    images: &ImageConfig,
    seed: u64,
    index: u64,
) -> anyhow::Result<Vec<Arc<super::images::Image>>> {
    let images = images.clone();
    tokio::task::spawn_blocking(move || images.images(seed, index))
        .await
        .context("image generation panicked")?
}

/// A synthetic session: `--turns` turns of synthetic prompts, `--think-time` apart.
async fn synthetic_session(
    synthetic: &Synthetic,
    counter: &TokenCounter,
    sessions: &SyntheticSessions,
    config: &WorkloadConfig,
    index: u64,
) -> anyhow::Result<Session> {
    let mut rng = StdRng::seed_from_u64(config.seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let turns: Lengths = sessions.turns.into();
    let count = super::synthetic::sample(&mut rng, turns).min(1 << 16);
    let mut planned = Vec::new();
    for turn in 0..count {
        let key = index << 16 | turn;
        let item = synthetic.item(key, counter).await?;
        let Prompt::Text(text) = item.prompt else {
            unreachable!("synthetic prompts are text")
        };
        let images = match &config.images {
            Some(images) => generate_images(images, config.seed, key).await?,
            None => Vec::new(),
        };
        planned.push(Turn {
            messages: vec![json!({"role": "user", "content": text})],
            max_tokens: item.max_tokens,
            delay: match turn {
                0 => Duration::ZERO,
                _ => sessions.think_time.sample(&mut rng),
            },
            images,
        });
    }
    Ok(Session {
        id: format!("{}-s{index:06}", config.run_id).into(),
        turns: planned,
    })
}

enum ShareGptWork {
    Item(Item),
    Session(Session),
}

/// The next usable conversation: its first exchange as an item (skipping
/// those the length filters refuse), or all of it as a session.
async fn sharegpt_next(
    entries: &mut Cycling,
    counter: &TokenCounter,
    turns: Turns,
    filters: LengthFilters,
    config: &WorkloadConfig,
    index: u64,
    notes: &Mutex<FeedNotes>,
) -> anyhow::Result<ShareGptWork> {
    let skip = |why: &'static str| {
        let mut notes = notes.lock().expect("feed notes lock");
        *notes.skipped.entry(why).or_insert(0) += 1;
    };
    loop {
        let entry = entries.next_entry("a usable conversation")?;
        notes.lock().expect("feed notes lock").read += 1;
        let conversation = sharegpt::parse(&entry.value).with_context(|| entries.place(&entry))?;
        let answered: Vec<&(String, String)> = conversation
            .exchanges
            .iter()
            .filter(|(_, reply)| !reply.is_empty())
            .collect();
        let Some((prompt, reply)) = answered.first() else {
            skip("without a human turn and its reply");
            continue;
        };
        if turns == Turns::All {
            let mut texts = Vec::new();
            for (human, reply) in &answered {
                let output = counter.count(reply).await?.max(1);
                texts.push((human.clone(), config.max_tokens.unwrap_or(output)));
            }
            entries.used();
            let id = match conversation.id.is_empty() {
                true => format!("{}-s{index:06}", config.run_id),
                false => conversation.id.clone(),
            };
            let session = Session::from_texts(id.into(), conversation.system.as_deref(), texts);
            return Ok(ShareGptWork::Session(session));
        }
        let prompt_tokens = counter.count(prompt).await?;
        let output_tokens = counter.count(reply).await?;
        if let Some(why) = filters.reject(prompt_tokens, output_tokens, config.max_tokens.is_some())
        {
            skip(why);
            continue;
        }
        entries.used();
        let prompt = match &conversation.system {
            None => Prompt::Text(prompt.clone()),
            Some(system) => Prompt::Messages(json!([
                {"role": "system", "content": system},
                {"role": "user", "content": prompt}
            ])),
        };
        let item = Item {
            input_tokens: Some(prompt_tokens),
            input_tokens_source: counter.source(),
            ..Item::new(prompt, Some(config.max_tokens.unwrap_or(output_tokens)))
        };
        return Ok(ShareGptWork::Item(item));
    }
}

/// The positions of the whole run that one process sends: all of them, or
/// a shard's round robin (position `k` is shard `k mod N`'s).
#[derive(Debug, Clone, Copy)]
struct Positions(Option<Shard>);

impl Positions {
    fn owns(&self, position: u64) -> bool {
        self.0.is_none_or(|shard| shard.owns_index(position))
    }

    /// The first position at or after `from` that is this process's.
    fn next_from(&self, from: u64) -> u64 {
        self.0.map_or(from, |shard| {
            let (n, i) = (u64::from(shard.count), u64::from(shard.index));
            from + (i + n - from % n) % n
        })
    }

    /// How many of the positions `0..end` are this process's.
    fn count_below(&self, end: u64) -> u64 {
        self.0.map_or(end, |shard| shard.share(end))
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
                prefix_groups: 1,
                tokenizer: None,
                sessions: None,
            },
            max_tokens: None,
            seed: 1,
            warmup,
            requests,
            body: BodyOptions::new(Endpoint::Chat, "m"),
            run_id: "run".into(),
            shard: None,
            images: None,
        }
    }

    fn request(work: Work) -> PreparedRequest {
        match work {
            Work::Request(request) => request,
            Work::Session(_) => panic!("a session"),
        }
    }

    #[tokio::test]
    async fn a_count_run_makes_warmup_and_measured_requests_in_order() {
        let mut feed = Feed::start(config(Some(3), 2), TokenCounter::Estimate, &mut Vec::new())
            .await
            .unwrap();
        let mut seen = Vec::new();
        while let Some(work) = feed.next().await {
            let request = request(work);
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
        while let Some(work) = feed.next().await {
            let r = request(work);
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
                format: DatasetFormat::Prompts,
                sharegpt_turns: Turns::First,
                filters: LengthFilters::default(),
                tokenizer: None,
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
        assert_eq!(request(feed.next().await.unwrap()).index, 0);
        assert_eq!(request(feed.next().await.unwrap()).index, 1);
    }
}
