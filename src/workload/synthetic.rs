//! Synthetic prompts: random words from a small vocabulary, fitted to a target
//! token count, unique per request (so prefix caching cannot flatter the
//! numbers) unless a shared prefix is asked for: one for all prompts, or
//! `--prefix-groups G` distinct ones, each prompt drawing one.
//!
//! Fitting does not ask the counter per prompt: [`Synthetic::new`] learns once
//! what each word costs (alone at the start of a prompt, and after a space)
//! and checks on sample prompts that costs add up; prompts are then sized by
//! arithmetic, exactly. A tokenizer whose costs do not add up (it merges
//! across words) falls back to counting every prompt.

use super::tokens::TokenCounter;
use super::{Item, Lengths, Prompt};
use futures::future::try_join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

const WORDS: &[&str] = &[
    "the",
    "model",
    "serves",
    "tokens",
    "quickly",
    "while",
    "queue",
    "waits",
    "for",
    "prefill",
    "and",
    "decode",
    "latency",
    "throughput",
    "request",
    "response",
    "server",
    "client",
    "trace",
    "span",
    "metric",
    "time",
    "first",
    "token",
    "inter",
    "cache",
    "memory",
    "batch",
    "continuous",
    "static",
    "scheduler",
    "prompt",
    "output",
    "input",
    "river",
    "stone",
    "light",
    "garden",
    "window",
    "music",
    "paper",
    "number",
    "city",
    "market",
    "winter",
    "summer",
    "history",
    "science",
    "answer",
    "question",
    "story",
    "water",
    "forest",
    "engine",
    "signal",
    "bridge",
];

/// Sample prompts (word counts) that check a calibration.
const CALIBRATION_CHECKS: [u64; 8] = [2, 5, 7, 16, 31, 64, 100, 255];

/// Makes synthetic workload items, deterministic for a seed.
pub struct Synthetic {
    input: Lengths,
    output: Lengths,
    /// The shared prefixes (one per group) and their token counts.
    prefixes: Vec<(String, u64)>,
    shared_prefix_tokens: u64,
    seed: u64,
    fitter: Fitter,
}

/// How prompts reach their token count.
enum Fitter {
    /// Word costs known: sized by arithmetic.
    Calibrated(WordCosts),
    /// Costs do not add up: count each candidate prompt.
    Counting,
}

/// Where fitted words go: at the start of the text, or after a prefix and a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Start,
    AfterSpace,
}

/// Tokens each vocabulary word costs at the start of a text and after a space.
#[derive(Debug, Clone, PartialEq)]
struct WordCosts {
    first: Vec<u64>,
    next: Vec<u64>,
}

impl Synthetic {
    /// `shared_prefix_tokens` words (fitted like any prompt) begin every
    /// prompt: one of `groups` distinct prefixes, drawn per prompt.
    pub async fn new(
        input: Lengths,
        output: Lengths,
        shared_prefix_tokens: u64,
        groups: u64,
        seed: u64,
        counter: &TokenCounter,
    ) -> anyhow::Result<Self> {
        let fitter = match WordCosts::calibrate(counter).await? {
            Some(costs) => Fitter::Calibrated(costs),
            None => Fitter::Counting,
        };
        let mut synthetic = Self {
            input,
            output,
            prefixes: Vec::new(),
            shared_prefix_tokens,
            seed,
            fitter,
        };
        if shared_prefix_tokens > 0 {
            for group in 0..groups.max(1) {
                let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0f5b_a7ed ^ (group << 40));
                let prefix = synthetic
                    .fit(&mut rng, shared_prefix_tokens, Position::Start, counter)
                    .await?;
                synthetic.prefixes.push(prefix);
            }
        }
        Ok(synthetic)
    }

    /// `tokens` words drawn from `key` alone (the same key, length and place
    /// always give the same text), at the start of a prompt or after a space.
    pub async fn words(
        &self,
        key: u64,
        tokens: u64,
        at_start: bool,
        counter: &TokenCounter,
    ) -> anyhow::Result<(String, u64)> {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_mul(0xff51_afd7_ed55_8ccd) ^ key);
        let position = match at_start {
            true => Position::Start,
            false => Position::AfterSpace,
        };
        self.fit(&mut rng, tokens, position, counter).await
    }

    /// True when prompts are sized without asking the counter.
    pub fn is_calibrated(&self) -> bool {
        matches!(self.fitter, Fitter::Calibrated(_))
    }

    /// Item `index`: the same index and seed always give the same prompt.
    pub async fn item(&self, index: u64, counter: &TokenCounter) -> anyhow::Result<Item> {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index);
        let input = sample(&mut rng, self.input);
        let output = sample(&mut rng, self.output);
        let unique = input.saturating_sub(self.shared_prefix_tokens).max(1);
        let prefix = match self.prefixes.len() {
            0 => None,
            1 => Some(&self.prefixes[0]),
            n => Some(&self.prefixes[rng.random_range(0..n)]),
        };
        let position = match prefix {
            None => Position::Start,
            Some(_) => Position::AfterSpace,
        };
        let (body, count) = self.fit(&mut rng, unique, position, counter).await?;
        let (text, prefix_count) = match prefix {
            None => (body, 0),
            Some((prefix, n)) => (format!("{prefix} {body}"), *n),
        };
        Ok(Item {
            input_tokens: Some(count + prefix_count),
            input_tokens_source: counter.source(),
            ..Item::new(Prompt::Text(text), Some(output))
        })
    }

    /// Random words whose token count is `target` (exact when the counter
    /// is, and when the vocabulary can reach it); returns them and their count.
    async fn fit(
        &self,
        rng: &mut StdRng,
        target: u64,
        position: Position,
        counter: &TokenCounter,
    ) -> anyhow::Result<(String, u64)> {
        match &self.fitter {
            Fitter::Calibrated(costs) => Ok(costs.fit(rng, target, position)),
            Fitter::Counting => fit_by_counting(rng, target, counter).await,
        }
    }
}

impl WordCosts {
    /// Learns the word costs from the counter and checks them on sample
    /// prompts; `None` when the costs do not add up.
    async fn calibrate(counter: &TokenCounter) -> anyhow::Result<Option<Self>> {
        let first = try_join_all(WORDS.iter().map(|w| counter.count(w))).await?;
        let pairs = try_join_all(
            WORDS
                .iter()
                .map(|w| async move { counter.count(&format!("{w} {w}")).await }),
        )
        .await?;
        let next = pairs
            .iter()
            .zip(&first)
            .map(|(pair, one)| pair.saturating_sub(*one))
            .collect();
        let costs = Self { first, next };
        if costs.next.iter().all(|c| *c == 0) {
            return Ok(None);
        }
        let mut rng = StdRng::seed_from_u64(0xca11_b7a7e);
        for words in CALIBRATION_CHECKS {
            let picks: Vec<usize> = (0..words)
                .map(|_| rng.random_range(0..WORDS.len()))
                .collect();
            let text = join_words(&picks);
            if counter.count(&text).await? != costs.cost(&picks) {
                return Ok(None);
            }
        }
        Ok(Some(costs))
    }

    /// Tokens of these words joined by spaces.
    fn cost(&self, picks: &[usize]) -> u64 {
        picks
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    self.first[*w]
                } else {
                    self.next[*w]
                }
            })
            .sum()
    }

    /// Random words adding up to `target` tokens: any word while the rest is
    /// large, then only words that still fit (at least one word).
    fn fit(&self, rng: &mut StdRng, target: u64, position: Position) -> (String, u64) {
        let mut picks = Vec::with_capacity(target as usize);
        let mut total = 0;
        while total < target {
            let costs = match (picks.is_empty(), position) {
                (true, Position::Start) => &self.first,
                _ => &self.next,
            };
            let left = target - total;
            let word = rng.random_range(0..WORDS.len());
            let word = if costs[word] <= left && costs[word] > 0 {
                word
            } else {
                let fitting: Vec<usize> = (0..WORDS.len())
                    .filter(|w| costs[*w] <= left && costs[*w] > 0)
                    .collect();
                match fitting.len() {
                    // Nothing fits: a prompt still has one word (and its true count).
                    0 if picks.is_empty() => {
                        (0..WORDS.len()).min_by_key(|w| costs[*w]).unwrap_or(0)
                    }
                    0 => break,
                    n => fitting[rng.random_range(0..n)],
                }
            };
            total += costs[word];
            picks.push(word);
        }
        (join_words(&picks), total)
    }
}

fn join_words(picks: &[usize]) -> String {
    let words: Vec<&str> = picks.iter().map(|w| WORDS[*w]).collect();
    words.join(" ")
}

/// A length drawn from the distribution (at least 1).
pub fn sample(rng: &mut StdRng, lengths: Lengths) -> u64 {
    if lengths.stddev == 0.0 {
        return lengths.mean;
    }
    let normal = Normal::new(lengths.mean as f64, lengths.stddev).expect("stddev checked >= 0");
    normal.sample(rng).round().max(1.0) as u64
}

/// Random words whose token count is `target`, adjusted by counting the
/// candidate text (exact when the counter is, within a few steps).
async fn fit_by_counting(
    rng: &mut StdRng,
    target: u64,
    counter: &TokenCounter,
) -> anyhow::Result<(String, u64)> {
    let mut words: Vec<&str> = (0..target)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect();
    let mut count = counter.count(&words.join(" ")).await?;
    for _ in 0..16 {
        if count == target {
            break;
        }
        if count > target {
            let excess = (count - target).div_ceil(2).max(1) as usize;
            words.truncate(words.len().saturating_sub(excess).max(1));
        } else {
            for _ in 0..(target - count).div_ceil(2).max(1) {
                words.push(WORDS[rng.random_range(0..WORDS.len())]);
            }
        }
        count = counter.count(&words.join(" ")).await?;
    }
    Ok((words.join(" "), count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prompts_are_exact_unique_and_reproducible() {
        let counter = TokenCounter::Estimate;
        let lengths = "64".parse().unwrap();
        let synthetic = Synthetic::new(lengths, "16:4".parse().unwrap(), 0, 1, 7, &counter)
            .await
            .unwrap();
        let a = synthetic.item(0, &counter).await.unwrap();
        let b = synthetic.item(1, &counter).await.unwrap();
        assert_eq!(a, synthetic.item(0, &counter).await.unwrap());
        assert_ne!(a.prompt, b.prompt);
        let Prompt::Text(text) = &a.prompt else {
            panic!()
        };
        assert_eq!(text.split_whitespace().count(), 64);
        assert_eq!(a.input_tokens, Some(64));
        assert!(a.max_tokens.unwrap() >= 1);
    }

    #[tokio::test]
    async fn shared_prefix_is_common_to_all_prompts() {
        let counter = TokenCounter::Estimate;
        let synthetic = Synthetic::new(
            "40".parse().unwrap(),
            "8".parse().unwrap(),
            32,
            1,
            1,
            &counter,
        )
        .await
        .unwrap();
        let text = |item: Item| match item.prompt {
            Prompt::Text(t) => t,
            Prompt::Messages(_) => unreachable!(),
        };
        let a = text(synthetic.item(0, &counter).await.unwrap());
        let b = text(synthetic.item(1, &counter).await.unwrap());
        let prefix_a: Vec<&str> = a.split_whitespace().take(32).collect();
        let prefix_b: Vec<&str> = b.split_whitespace().take(32).collect();
        assert_eq!(prefix_a, prefix_b);
        assert_ne!(a, b);
        assert_eq!(a.split_whitespace().count(), 40);
    }

    #[tokio::test]
    async fn prefix_groups_give_that_many_distinct_prefixes() {
        let counter = TokenCounter::Estimate;
        let synthetic = Synthetic::new(
            "40".parse().unwrap(),
            "8".parse().unwrap(),
            30,
            3,
            1,
            &counter,
        )
        .await
        .unwrap();
        let mut prefixes = std::collections::BTreeSet::new();
        for index in 0..60 {
            let item = synthetic.item(index, &counter).await.unwrap();
            let Prompt::Text(text) = item.prompt else {
                unreachable!()
            };
            assert_eq!(item.input_tokens, Some(40));
            prefixes.insert(text.split(' ').take(30).collect::<Vec<_>>().join(" "));
        }
        assert_eq!(prefixes.len(), 3);
    }

    /// A character-level BPE tokenizer; `merges` may join across words.
    fn char_tokenizer(merges: &str) -> TokenCounter {
        let chars: std::collections::BTreeSet<char> =
            WORDS.iter().flat_map(|w| w.chars()).chain([' ']).collect();
        let mut vocab: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        vocab.push("e ".into());
        vocab.push("e t".into());
        vocab.push("an".into());
        let vocab: serde_json::Map<String, serde_json::Value> = vocab
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i.into()))
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "vocab": vocab,
                      "merges": serde_json::from_str::<serde_json::Value>(merges).unwrap()}
        });
        let tokenizer: tokenizers::Tokenizer = json.to_string().parse().unwrap();
        TokenCounter::Tokenizer(Box::new(tokenizer))
    }

    async fn counted(synthetic: &Synthetic, index: u64, counter: &TokenCounter) -> (u64, u64) {
        let item = synthetic.item(index, counter).await.unwrap();
        let Prompt::Text(text) = &item.prompt else {
            panic!()
        };
        (
            item.input_tokens.unwrap(),
            counter.count(text).await.unwrap(),
        )
    }

    #[tokio::test]
    async fn calibrated_prompts_have_the_exact_count_of_a_real_tokenizer() {
        // Words cost several tokens each and "an" merges inside words only.
        let counter = char_tokenizer(r#"[["a", "n"]]"#);
        let synthetic = Synthetic::new(
            "100:30".parse().unwrap(),
            "8".parse().unwrap(),
            12,
            1,
            3,
            &counter,
        )
        .await
        .unwrap();
        assert!(synthetic.is_calibrated());
        for index in 0..40 {
            let (claimed, actual) = counted(&synthetic, index, &counter).await;
            assert_eq!(claimed, actual, "item {index}");
        }
    }

    #[tokio::test]
    async fn a_tokenizer_merging_across_words_is_counted_per_prompt() {
        // "e t" becomes one token: a word's cost depends on its neighbours.
        let counter = char_tokenizer(r#"[["e", " "], ["e ", "t"]]"#);
        let synthetic = Synthetic::new(
            "60".parse().unwrap(),
            "8".parse().unwrap(),
            0,
            1,
            5,
            &counter,
        )
        .await
        .unwrap();
        assert!(!synthetic.is_calibrated());
        for index in 0..10 {
            let (claimed, actual) = counted(&synthetic, index, &counter).await;
            assert_eq!(claimed, actual);
        }
    }
}
