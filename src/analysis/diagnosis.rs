//! Plain-language reading of a run: where the TTFT of typical and slow
//! requests went (network+frontend, queue, prefill), from the joined spans.

use super::stats::Stats;
use crate::record::RequestRecord;

/// Shares of TTFT among the requests at or above one TTFT percentile.
#[derive(Debug, Clone, PartialEq)]
struct TtftShares {
    pub ttft_ms: f64,
    pub queue: f64,
    pub prefill: f64,
    pub network_frontend: f64,
}

/// Sums of the TTFT pieces of the requests at or above a threshold.
#[derive(Debug, Clone, Copy, Default)]
struct PhaseSums {
    threshold_ms: f64,
    queue: f64,
    prefill: f64,
    other: f64,
    total: f64,
}

impl PhaseSums {
    fn observe(&mut self, ttft: f64, queue: f64, prefill: f64) {
        if ttft < self.threshold_ms || ttft <= 0.0 {
            return;
        }
        self.queue += queue;
        self.prefill += prefill;
        self.other += ttft - queue - prefill;
        self.total += ttft;
    }

    fn shares(&self) -> Option<TtftShares> {
        (self.total > 0.0).then(|| TtftShares {
            ttft_ms: self.threshold_ms,
            queue: self.queue / self.total,
            prefill: self.prefill / self.total,
            network_frontend: self.other / self.total,
        })
    }
}

/// The TTFT split of typical (at or above p50) and slow (at or above p99)
/// successful requests, fed one record at a time.
#[derive(Debug, Clone)]
pub struct TtftSplit {
    p50: f64,
    p99: f64,
    median: PhaseSums,
    tail: PhaseSums,
}

impl TtftSplit {
    /// For a run whose TTFT statistics are `ttft`.
    pub fn new(ttft: &Stats) -> Self {
        let sums = |threshold_ms| PhaseSums {
            threshold_ms,
            ..PhaseSums::default()
        };
        Self {
            p50: ttft.p50,
            p99: ttft.p99,
            median: sums(ttft.p50),
            tail: sums(ttft.p99),
        }
    }

    /// Counts a successful measured record with a joined span (others are skipped).
    pub fn observe(&mut self, record: &RequestRecord) {
        let (Some(ttft), Some(d)) = (record.ttft_ms, record.decomposition.as_ref()) else {
            return;
        };
        let (Some(queue), Some(prefill)) = (d.queue_ms, d.prefill_ms) else {
            return;
        };
        self.median.observe(ttft, queue, prefill);
        self.tail.observe(ttft, queue, prefill);
    }

    /// The paragraph for `summary.json` and the console; `None` without joined spans.
    pub fn diagnosis(&self) -> Option<String> {
        let median = self.median.shares()?;
        let tail = self.tail.shares()?;
        Some(paragraph(self.p50, self.p99, &median, &tail))
    }
}

fn paragraph(p50: f64, p99: f64, median: &TtftShares, tail: &TtftShares) -> String {
    let pct = |v: f64| (v * 100.0).round();
    let mut text = format!(
        "p50 TTFT {:.0} ms: {}% queue, {}% prefill, {}% network+frontend. \
         p99 TTFT {:.0} ms: {}% queue, {}% prefill, {}% network+frontend.",
        p50,
        pct(median.queue),
        pct(median.prefill),
        pct(median.network_frontend),
        p99,
        pct(tail.queue),
        pct(tail.prefill),
        pct(tail.network_frontend),
    );
    let verdict = if tail.queue >= 0.5 {
        " The tail is queueing: requests waited for a batch slot; fewer concurrent requests \
         or a larger batch (vLLM --max-num-seqs, KV cache) would cut it."
    } else if tail.prefill >= 0.5 {
        " The tail is prefill: long prompts or chunked prefill sharing steps with decode; \
         shorter prompts, prefix caching or a larger prefill budget would cut it."
    } else if tail.network_frontend >= 0.5 {
        " The tail is outside the engine: transport, HTTP handling, tokenization or \
         detokenization in the API server, or a saturated client (see schedule lag)."
    } else {
        " No single phase dominates the tail."
    };
    text.push_str(verdict);
    text
}
