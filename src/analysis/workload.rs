//! What the summary says about the workload's shape, beside the plain
//! metrics: TTFT by session turn (does the prefix cache make later turns
//! faster?), the prefix-cache hit rate (per run and per turn), TTFT against
//! the number and size of images, and whether ITL is per token or per chunk
//! (how many chunks carried more than one token). Fed one record at a time;
//! groups are capped, so memory stays bounded.

use super::stats::{Distribution, Stats};
use crate::record::RequestRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Turns from this one on are summarised together (`"32+"`).
const LAST_TURN_GROUP: u32 = 32;
/// Distinct image pixel sizes summarised apart; the rest go to `"other"`.
const PIXEL_GROUPS: usize = 64;

/// The `workload` object of `summary.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSummary {
    /// Session turn (0-based; `"32+"` for the rest) -> its requests.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_turn: BTreeMap<String, TurnSummary>,
    /// Prompt tokens served from the prefix cache, over requests that said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSummary>,
    /// Images per request -> TTFT.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ttft_by_image_count: BTreeMap<String, Stats>,
    /// Total image pixels per request (`WxH` summed) -> TTFT.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ttft_by_image_pixels: BTreeMap<String, Stats>,
    /// Whether per-token ITL was known, and chunks carrying several tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<ChunkSummary>,
}

/// One session turn's requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnSummary {
    pub requests: u64,
    pub ttft_ms: Option<Stats>,
    pub cache_hit_rate: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheSummary {
    /// Requests whose cached tokens were reported.
    pub requests: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    /// `cached_tokens / prompt_tokens`.
    pub hit_rate: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkSummary {
    /// Streamed requests that finished.
    pub requests: u64,
    /// `per_token` (every request's tokens per chunk known), `per_chunk`, or `mixed`.
    pub itl: String,
    /// Chunks known to have carried more than one token.
    pub multi_token_chunks: u64,
    /// Requests whose usage count exceeded their chunk count (tokens per chunk unknown).
    pub requests_with_unsplit_tokens: u64,
    /// Tokens beyond one per chunk in those requests (usage minus chunks).
    pub tokens_beyond_chunks: u64,
    /// What this means for `itl_chunk_ms` and throughput.
    pub note: String,
}

impl WorkloadSummary {
    /// The console's lines: TTFT by turn, the cache, TTFT by images, ITL's basis.
    pub fn lines(&self) -> String {
        let mut out = String::new();
        let percent = |rate: Option<f64>| rate.map_or("-".into(), |r| format!("{:.0}%", r * 100.0));
        for (turn, t) in sorted_turns(&self.by_turn) {
            let p50 = t
                .ttft_ms
                .as_ref()
                .map_or("-".into(), |s| format!("{:.2} ms", s.p50));
            out.push_str(&format!(
                "turn {turn}: {} requests, TTFT p50 {p50}, cache hit {}\n",
                t.requests,
                percent(t.cache_hit_rate)
            ));
        }
        if let Some(c) = &self.cache {
            out.push_str(&format!(
                "prefix cache: {} of {} prompt tokens cached ({}) over {} requests\n",
                c.cached_tokens,
                c.prompt_tokens,
                percent(Some(c.hit_rate)),
                c.requests
            ));
        }
        for (count, s) in &self.ttft_by_image_count {
            out.push_str(&format!(
                "{count} images a request: {} requests, TTFT p50 {:.2} ms\n",
                s.count, s.p50
            ));
        }
        if let Some(chunks) = self.chunks.as_ref().filter(|c| c.itl != "per_token") {
            out.push_str(&format!("{}\n", chunks.note));
        }
        out
    }
}

/// Turns in numeric order (`"32+"` last).
fn sorted_turns(by_turn: &BTreeMap<String, TurnSummary>) -> Vec<(&String, &TurnSummary)> {
    let mut turns: Vec<_> = by_turn.iter().collect();
    turns.sort_by_key(|(k, _)| k.trim_end_matches('+').parse::<u32>().unwrap_or(u32::MAX));
    turns
}

/// Prompt tokens from the prefix cache: the client's usage, else SGLang's
/// `cached_tokens` span attribute.
pub fn cached_tokens(record: &RequestRecord) -> Option<u64> {
    record.cached_tokens.or_else(|| {
        let server = record.server.as_ref()?;
        server.attributes.get("cached_tokens")?.as_u64()
    })
}

#[derive(Debug, Default)]
struct Cache {
    requests: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
}

impl Cache {
    fn observe(&mut self, record: &RequestRecord) {
        if let (Some(cached), Some(prompt)) = (cached_tokens(record), record.input_tokens) {
            self.requests += 1;
            self.cached_tokens += cached;
            self.prompt_tokens += prompt;
        }
    }

    fn hit_rate(&self) -> Option<f64> {
        (self.prompt_tokens > 0).then(|| self.cached_tokens as f64 / self.prompt_tokens as f64)
    }
}

#[derive(Debug, Default)]
struct Chunks {
    requests: u64,
    per_token: u64,
    multi_token_chunks: u64,
    unsplit: u64,
    beyond: u64,
}

/// The workload's aggregates, fed the finished measured records.
#[derive(Debug, Default)]
pub struct WorkloadBuilder {
    by_turn: BTreeMap<u32, (u64, Distribution, Cache)>,
    cache: Cache,
    by_image_count: BTreeMap<u32, Distribution>,
    by_image_pixels: BTreeMap<Option<u64>, Distribution>,
    chunks: Chunks,
}

impl WorkloadBuilder {
    /// One measured request that finished without error.
    pub fn observe(&mut self, record: &RequestRecord) {
        let ttft = record.ttft_ms;
        if let Some(turn) = record.turn {
            let group = self.by_turn.entry(turn.min(LAST_TURN_GROUP)).or_default();
            group.0 += 1;
            observe(&mut group.1, ttft);
            group.2.observe(record);
        }
        self.cache.observe(record);
        let count = record.images.map_or(0, |i| i.count);
        if count > 0 || !self.by_image_count.is_empty() {
            observe(self.by_image_count.entry(count).or_default(), ttft);
        }
        if let Some(images) = record.images {
            let key = images.pixels.filter(|p| {
                self.by_image_pixels.len() < PIXEL_GROUPS
                    || self.by_image_pixels.contains_key(&Some(*p))
            });
            observe(self.by_image_pixels.entry(key).or_default(), ttft);
        }
        if record.stream {
            self.observe_chunks(record);
        }
    }

    fn observe_chunks(&mut self, record: &RequestRecord) {
        let chunks = &mut self.chunks;
        chunks.requests += 1;
        match record.multi_token_chunks {
            Some(n) => {
                chunks.per_token += 1;
                chunks.multi_token_chunks += n;
            }
            None => {
                let beyond = record
                    .output_tokens
                    .unwrap_or(0)
                    .saturating_sub(record.chunks);
                if beyond > 0 {
                    chunks.unsplit += 1;
                    chunks.beyond += beyond;
                }
            }
        }
    }

    /// The summary's `workload` object; `None` when there is nothing to say.
    pub fn finish(self) -> Option<WorkloadSummary> {
        let by_turn = self
            .by_turn
            .into_iter()
            .map(|(turn, (requests, ttft, cache))| {
                let key = match turn {
                    LAST_TURN_GROUP => format!("{LAST_TURN_GROUP}+"),
                    n => n.to_string(),
                };
                let summary = TurnSummary {
                    requests,
                    ttft_ms: ttft.stats(),
                    cache_hit_rate: cache.hit_rate(),
                };
                (key, summary)
            })
            .collect();
        let cache = self.cache.hit_rate().map(|hit_rate| CacheSummary {
            requests: self.cache.requests,
            prompt_tokens: self.cache.prompt_tokens,
            cached_tokens: self.cache.cached_tokens,
            hit_rate,
        });
        let stats = |(key, d): (String, Distribution)| Some((key, d.stats()?));
        let summary = WorkloadSummary {
            by_turn,
            cache,
            ttft_by_image_count: (self.by_image_count.into_iter())
                .filter_map(|(k, d)| stats((k.to_string(), d)))
                .collect(),
            ttft_by_image_pixels: (self.by_image_pixels.into_iter())
                .filter_map(|(k, d)| stats((k.map_or("other".into(), |p| p.to_string()), d)))
                .collect(),
            chunks: chunk_summary(self.chunks),
        };
        (summary != WorkloadSummary::default()).then_some(summary)
    }
}

fn observe(distribution: &mut Distribution, value: Option<f64>) {
    if let Some(v) = value {
        distribution.observe(v);
    }
}

fn chunk_summary(c: Chunks) -> Option<ChunkSummary> {
    if c.requests == 0 {
        return None;
    }
    let itl = match (c.per_token, c.requests) {
        (0, _) => "per_chunk",
        (known, all) if known == all => "per_token",
        _ => "mixed",
    };
    let note = match (itl, c.unsplit) {
        ("per_token", _) => format!(
            "tokens per chunk were known for every request: itl_token_ms is per token; {} chunks carried more than one token",
            c.multi_token_chunks
        ),
        (_, 0) => "itl_chunk_ms is per chunk; every chunk whose count is not known carried one token (usage matched the chunk count)".to_string(),
        _ => format!(
            "itl_chunk_ms is per chunk, not per token: in {} requests chunks carried {} tokens more than one each (speculative decoding or bundled chunks); ask for stream_options.continuous_usage_stats or logprobs for per-token ITL",
            c.unsplit, c.beyond
        ),
    };
    Some(ChunkSummary {
        requests: c.requests,
        itl: itl.to_string(),
        multi_token_chunks: c.multi_token_chunks,
        requests_with_unsplit_tokens: c.unsplit,
        tokens_beyond_chunks: c.beyond,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ImagesInfo;

    fn record(turn: Option<u32>, ttft: f64, cached: Option<u64>) -> RequestRecord {
        let mut r: RequestRecord = serde_json::from_value(serde_json::json!({
            "schema": "tracebench.request/1", "run_id": "r", "request_id": "x", "index": 0,
            "warmup": false, "endpoint": "chat", "model": "m", "stream": true,
            "trace_id": null, "span_id": null, "max_tokens": 8, "input_tokens": 100,
            "input_tokens_source": "usage", "output_tokens": 8, "output_tokens_source": "usage",
            "status": 200, "response_id": null, "finish_reason": "length", "error": null,
            "connection": null, "sent_unix_ns": 0,
            "instants_ns": {"intended": 0, "sent": 0, "written": null, "headers": null,
                            "first_byte": null, "first_token": null, "last_token": null, "end": null},
            "ttft_ms": ttft, "e2e_ms": null, "e2e_end_ms": null, "tpot_ms": null,
            "schedule_lag_ms": 0.0, "chunks": 8, "itl_chunk_ms": [], "itl_token_ms": null,
            "server": null, "server_missing_reason": null, "decomposition": null,
            "trace_url": null, "gpu": null
        }))
        .unwrap();
        r.turn = turn;
        r.cached_tokens = cached;
        r
    }

    #[test]
    fn turns_cache_images_and_chunks() {
        let mut builder = WorkloadBuilder::default();
        builder.observe(&record(Some(0), 100.0, Some(0)));
        builder.observe(&record(Some(1), 20.0, Some(80)));
        builder.observe(&record(Some(40), 30.0, Some(90)));
        let mut with_images = record(None, 300.0, None);
        with_images.images = Some(ImagesInfo {
            count: 2,
            pixels: Some(2 * 512 * 512),
            bytes: Some(90_000),
        });
        with_images.output_tokens = Some(12);
        builder.observe(&with_images);
        let summary = builder.finish().unwrap();
        let turn = |k: &str| &summary.by_turn[k];
        assert_eq!(turn("0").ttft_ms.as_ref().unwrap().p50, 100.0);
        assert_eq!(turn("1").cache_hit_rate, Some(0.8));
        assert_eq!(turn("32+").requests, 1);
        let cache = summary.cache.unwrap();
        assert_eq!((cache.requests, cache.cached_tokens), (3, 170));
        assert_eq!(summary.ttft_by_image_count["2"].count, 1);
        assert_eq!(summary.ttft_by_image_pixels["524288"].mean, 300.0);
        let chunks = summary.chunks.unwrap();
        assert_eq!(chunks.itl, "per_chunk");
        assert_eq!(
            (
                chunks.requests_with_unsplit_tokens,
                chunks.tokens_beyond_chunks
            ),
            (1, 4)
        );
        assert!(chunks.note.contains("not per token"), "{}", chunks.note);
        let lines = summary_lines();
        assert!(
            lines.contains("turn 1: 1 requests, TTFT p50 20.00 ms, cache hit 80%"),
            "{lines}"
        );
        assert!(lines.find("turn 1:") < lines.find("turn 32+:"), "{lines}");
    }

    fn summary_lines() -> String {
        let mut builder = WorkloadBuilder::default();
        builder.observe(&record(Some(40), 30.0, Some(90)));
        builder.observe(&record(Some(1), 20.0, Some(80)));
        builder.finish().unwrap().lines()
    }

    #[test]
    fn known_splits_are_per_token_and_sglang_spans_give_cached_tokens() {
        let mut r = record(None, 10.0, None);
        r.multi_token_chunks = Some(2);
        let mut server = crate::record::ServerView::default();
        server.attributes.insert("cached_tokens".into(), 64.into());
        r.server = Some(server);
        assert_eq!(cached_tokens(&r), Some(64));
        let mut builder = WorkloadBuilder::default();
        builder.observe(&r);
        let summary = builder.finish().unwrap();
        assert_eq!(summary.chunks.unwrap().itl, "per_token");
        assert_eq!(summary.cache.unwrap().hit_rate, 0.64);
    }
}
