//! The simulator's prefix cache (`tracebench sim --prefix-caching`): prompts
//! are cut into blocks of 16 words (the simulator's tokens), each block
//! identified by a hash of everything up to its end, as vLLM's automatic
//! prefix caching identifies its KV blocks. A prompt's leading blocks seen
//! before are cached tokens: they cost no prefill and are reported in
//! `usage.prompt_tokens_details.cached_tokens`. Oldest blocks go first when
//! the cache is full.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// Words (tokens) per cached block.
pub(crate) const BLOCK_TOKENS: usize = 16;

#[derive(Debug)]
pub(crate) struct PrefixCache {
    blocks: Mutex<Blocks>,
}

#[derive(Debug)]
struct Blocks {
    seen: HashSet<u64>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl PrefixCache {
    /// A cache of `capacity_tokens` tokens (whole blocks).
    pub fn new(capacity_tokens: u64) -> Self {
        let capacity = (capacity_tokens as usize / BLOCK_TOKENS).max(1);
        Self {
            blocks: Mutex::new(Blocks {
                seen: HashSet::new(),
                order: VecDeque::new(),
                capacity,
            }),
        }
    }

    /// Forgets every block (`POST /reset_prefix_cache`).
    pub fn reset(&self) {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        blocks.seen.clear();
        blocks.order.clear();
    }

    /// The tokens of `words` served from the cache (its leading blocks seen
    /// before, short of the last token, which is always computed); every
    /// block of `words` is remembered.
    pub fn cached(&self, words: &[&str]) -> u32 {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let mut hash = crate::hash::FNV_OFFSET;
        let mut cached = 0usize;
        let mut hit = true;
        for block in words.chunks_exact(BLOCK_TOKENS) {
            for word in block {
                hash = crate::hash::fnv1a_extend(hash, word.bytes().chain([b' ']));
            }
            if hit && blocks.seen.contains(&hash) {
                cached += BLOCK_TOKENS;
                continue;
            }
            hit = false;
            if blocks.seen.insert(hash) {
                blocks.order.push_back(hash);
                if blocks.order.len() > blocks.capacity {
                    let oldest = blocks.order.pop_front().expect("not empty");
                    blocks.seen.remove(&oldest);
                }
            }
        }
        cached.min(words.len().saturating_sub(1)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_leading_blocks_are_cached() {
        let cache = PrefixCache::new(1 << 20);
        let words: Vec<String> = (0..50).map(|i| format!("w{i}")).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        assert_eq!(cache.cached(&words), 0);
        assert_eq!(cache.cached(&words), 48, "three whole blocks");
        assert_eq!(cache.cached(&words[..32]), 31, "the last token is computed");
        let mut other = words.clone();
        other[20] = "changed";
        assert_eq!(cache.cached(&other), 16, "blocks after a change are new");
        cache.reset();
        assert_eq!(cache.cached(&words), 0, "a reset forgets every block");
        let tiny = PrefixCache::new(16);
        tiny.cached(&words);
        assert_eq!(tiny.cached(&words), 0, "evicted");
    }
}
