//! Synthetic prompts: random words from a small vocabulary, fitted to a target
//! token count with the token counter, unique per request (so prefix caching
//! cannot flatter the numbers) unless a shared prefix is asked for.

use super::tokens::TokenCounter;
use super::{Item, Lengths, Prompt};
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

/// Makes synthetic workload items, deterministic for a seed.
pub struct Synthetic {
    input: Lengths,
    output: Lengths,
    shared_prefix: String,
    shared_prefix_tokens: u64,
    seed: u64,
}

impl Synthetic {
    /// `shared_prefix_tokens` words (fitted like any prompt) begin every prompt.
    pub async fn new(
        input: Lengths,
        output: Lengths,
        shared_prefix_tokens: u64,
        seed: u64,
        counter: &TokenCounter,
    ) -> anyhow::Result<Self> {
        let shared_prefix = if shared_prefix_tokens > 0 {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0f5b_a7ed);
            fit(&mut rng, "", shared_prefix_tokens, counter).await?.0
        } else {
            String::new()
        };
        Ok(Self {
            input,
            output,
            shared_prefix,
            shared_prefix_tokens,
            seed,
        })
    }

    /// Item `index`: the same index and seed always give the same prompt.
    pub async fn item(&self, index: u64, counter: &TokenCounter) -> anyhow::Result<Item> {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index);
        let input = sample(&mut rng, self.input);
        let output = sample(&mut rng, self.output);
        let unique = input.saturating_sub(self.shared_prefix_tokens).max(1);
        let (text, count) = fit(&mut rng, &self.shared_prefix, unique, counter).await?;
        Ok(Item {
            prompt: Prompt::Text(text),
            input_tokens: Some(count + self.shared_prefix_tokens),
            input_tokens_source: counter.source(),
            max_tokens: Some(output),
        })
    }
}

/// A length drawn from the distribution (at least 1).
fn sample(rng: &mut StdRng, lengths: Lengths) -> u64 {
    if lengths.stddev == 0.0 {
        return lengths.mean;
    }
    let normal = Normal::new(lengths.mean as f64, lengths.stddev).expect("stddev checked >= 0");
    normal.sample(rng).round().max(1.0) as u64
}

/// Random words after `prefix` whose own token count is `target` (exact when
/// the counter is, within a few steps); returns the whole text and the count
/// of the part after the prefix.
async fn fit(
    rng: &mut StdRng,
    prefix: &str,
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
    let body = words.join(" ");
    let text = if prefix.is_empty() {
        body
    } else {
        format!("{prefix} {body}")
    };
    Ok((text, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prompts_are_exact_unique_and_reproducible() {
        let counter = TokenCounter::Estimate;
        let lengths = "64".parse().unwrap();
        let synthetic = Synthetic::new(lengths, "16:4".parse().unwrap(), 0, 7, &counter)
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
        let synthetic =
            Synthetic::new("40".parse().unwrap(), "8".parse().unwrap(), 32, 1, &counter)
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
}
