//! Plain-language reading of a run: where the TTFT of typical and slow
//! requests went (network+frontend, queue, prefill), from the joined spans.

use super::summary::Summary;
use crate::record::RequestRecord;

/// Shares of TTFT among the requests at or above one TTFT percentile.
#[derive(Debug, Clone, PartialEq)]
pub struct TtftShares {
    pub ttft_ms: f64,
    pub queue: f64,
    pub prefill: f64,
    pub network_frontend: f64,
}

/// Average TTFT split of the requests whose TTFT is at or above `threshold_ms`.
pub fn ttft_shares(ok: &[&RequestRecord], threshold_ms: f64) -> Option<TtftShares> {
    let (mut queue, mut prefill, mut other, mut total) = (0.0, 0.0, 0.0, 0.0);
    for record in ok {
        let (Some(ttft), Some(d)) = (record.ttft_ms, record.decomposition.as_ref()) else {
            continue;
        };
        let (Some(q), Some(p)) = (d.queue_ms, d.prefill_ms) else {
            continue;
        };
        if ttft < threshold_ms || ttft <= 0.0 {
            continue;
        }
        queue += q;
        prefill += p;
        other += ttft - q - p;
        total += ttft;
    }
    (total > 0.0).then(|| TtftShares {
        ttft_ms: threshold_ms,
        queue: queue / total,
        prefill: prefill / total,
        network_frontend: other / total,
    })
}

/// The paragraph for `summary.json` and the console; `None` without joined spans.
pub fn diagnose(summary: &Summary, ok: &[&RequestRecord]) -> Option<String> {
    let ttft = summary.metrics.get("ttft_ms")?;
    let median = ttft_shares(ok, ttft.p50)?;
    let tail = ttft_shares(ok, ttft.p99)?;
    let pct = |v: f64| (v * 100.0).round();
    let mut text = format!(
        "p50 TTFT {:.0} ms: {}% queue, {}% prefill, {}% network+frontend. \
         p99 TTFT {:.0} ms: {}% queue, {}% prefill, {}% network+frontend.",
        ttft.p50,
        pct(median.queue),
        pct(median.prefill),
        pct(median.network_frontend),
        ttft.p99,
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
    Some(text)
}
