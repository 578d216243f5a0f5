//! Metric names shared by SLO constraints, saturation rules, `points.csv`,
//! the experiment report and `compare --fail-on`: a statistic and a summary
//! metric (`p99_ttft_ms`, `median_tpot_ms`, `mean_server.queue_ms`), a
//! throughput (`output_throughput`, `request_goodput`), or a derived figure
//! (`error_rate`, `goodput_fraction`, `join_rate`, `ttft_share.queue`).
//! vLLM's spellings (`p99_itl_ms`, `mean_e2el_ms`) are accepted.

use crate::analysis::summary::{CLIENT_METRICS, SERVER_METRICS};
use crate::analysis::Summary;
use std::collections::BTreeMap;

/// Statistics a metric name may start with.
const STATS: [&str; 9] = [
    "mean", "median", "p50", "p90", "p95", "p99", "std", "min", "max",
];

/// Whole-run figures.
const RUN_FIGURES: [&str; 18] = [
    "request_throughput",
    "output_throughput",
    "input_throughput",
    "total_token_throughput",
    "duration_s",
    "completed",
    "failed",
    "error_rate",
    "request_goodput",
    "output_goodput",
    "goodput_fraction",
    "join_rate",
    "total_output_tokens",
    "server_running_max",
    "server_waiting_max",
    "server_kv_cache_max",
    "gpu_util_mean",
    "gpu_peak_memory_mib",
];

/// The TTFT parts whose share of the mean TTFT `ttft_share.<part>` gives.
pub const TTFT_PARTS: [&str; 5] = ["connect", "network", "frontend", "queue", "prefill"];

/// The figures every point reports (`points.csv` columns, the report's curves).
pub const HEADLINE: [&str; 29] = [
    "completed",
    "failed",
    "error_rate",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "p99_itl_ms",
    "median_e2el_ms",
    "p99_e2el_ms",
    "request_goodput",
    "goodput_fraction",
    "median_server.queue_ms",
    "p99_server.queue_ms",
    "median_server.prefill_ms",
    "median_server.decode_ms",
    "ttft_share.network",
    "ttft_share.frontend",
    "ttft_share.queue",
    "ttft_share.prefill",
    "server_running_max",
    "server_waiting_max",
    "server_kv_cache_max",
    "gpu_util_mean",
    "gpu_peak_memory_mib",
];

/// vLLM's metric spellings for ours.
fn canonical_metric(name: &str) -> &str {
    match name {
        "itl_ms" => "itl_chunk_ms",
        "e2el_ms" => "e2e_ms",
        other => other,
    }
}

/// Splits `p99_ttft_ms` into (`p99`, `ttft_ms`).
fn split_stat(name: &str) -> Option<(&str, &str)> {
    let (stat, metric) = name.split_once('_')?;
    STATS
        .contains(&stat)
        .then_some((stat, canonical_metric(metric)))
}

/// True for a percentile (or median) statistic: never averaged across repeats.
pub fn is_percentile(name: &str) -> bool {
    split_stat(name).is_some_and(|(stat, _)| stat == "median" || stat.starts_with('p'))
}

/// Whether a larger value of the metric is better.
pub fn higher_is_better(name: &str) -> bool {
    name.ends_with("throughput")
        || name.ends_with("goodput")
        || matches!(
            name,
            "completed" | "goodput_fraction" | "join_rate" | "total_output_tokens"
        )
}

/// Every name [`value`] knows, for checks and suggestions.
pub fn known() -> Vec<String> {
    let mut names: Vec<String> = RUN_FIGURES.iter().map(|s| s.to_string()).collect();
    names.extend(TTFT_PARTS.iter().map(|p| format!("ttft_share.{p}")));
    let metrics = CLIENT_METRICS
        .iter()
        .chain(SERVER_METRICS.iter())
        .copied()
        .chain(["itl_ms", "e2el_ms"]);
    for metric in metrics {
        names.extend(STATS.iter().map(|stat| format!("{stat}_{metric}")));
    }
    names
}

/// True when [`value`] knows `name`.
pub fn is_known(name: &str) -> bool {
    RUN_FIGURES.contains(&name)
        || name
            .strip_prefix("ttft_share.")
            .is_some_and(|part| TTFT_PARTS.contains(&part))
        || split_stat(name).is_some_and(|(_, metric)| {
            CLIENT_METRICS.contains(&metric) || SERVER_METRICS.contains(&metric)
        })
}

/// The value of a named metric in a run summary, when the run has it.
pub fn value(summary: &Summary, name: &str) -> Option<f64> {
    let counts = &summary.requests;
    let goodput = summary.goodput.as_ref();
    Some(match name {
        "request_throughput" => summary.request_throughput,
        "output_throughput" => summary.output_throughput,
        "input_throughput" => summary.input_throughput,
        "total_token_throughput" => summary.total_token_throughput,
        "duration_s" => summary.duration_s,
        "completed" => counts.ok as f64,
        "failed" => counts.failed as f64,
        "total_output_tokens" => summary.total_output_tokens as f64,
        "error_rate" => counts.failed as f64 / counts.total.max(1) as f64,
        "request_goodput" => goodput?.requests_per_s,
        "output_goodput" => goodput?.output_tokens_per_s,
        "goodput_fraction" => goodput?.fraction,
        "join_rate" => summary.join.as_ref()?.rate,
        "server_running_max" => summary.server_metrics.as_ref()?["running"]["max"].as_f64()?,
        "server_waiting_max" => summary.server_metrics.as_ref()?["waiting"]["max"].as_f64()?,
        "server_kv_cache_max" => {
            summary.server_metrics.as_ref()?["kv_cache_usage"]["max"].as_f64()?
        }
        "gpu_util_mean" => gpu_mean(summary, "mean_gpu_util_pct")?,
        "gpu_peak_memory_mib" => gpu_max(summary, "peak_memory_mib")?,
        _ => {
            if let Some(part) = name.strip_prefix("ttft_share.") {
                let part = summary.metrics.get(&format!("decomposition.{part}_ms"))?;
                let ttft = summary.metrics.get("ttft_ms")?;
                return (ttft.mean > 0.0).then(|| part.mean / ttft.mean);
            }
            let (stat, metric) = split_stat(name)?;
            return summary.metrics.get(metric)?.get(stat);
        }
    })
}

/// The mean over the run's GPUs of a per-GPU figure.
fn gpu_mean(summary: &Summary, key: &str) -> Option<f64> {
    let values: Vec<f64> = gpus(summary).filter_map(|g| g[key].as_f64()).collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The largest over the run's GPUs of a per-GPU figure.
fn gpu_max(summary: &Summary, key: &str) -> Option<f64> {
    gpus(summary)
        .filter_map(|g| g[key].as_f64())
        .reduce(f64::max)
}

fn gpus(summary: &Summary) -> impl Iterator<Item = &serde_json::Value> {
    summary
        .gpu
        .as_ref()
        .and_then(|g| g["gpus"].as_array())
        .into_iter()
        .flatten()
}

/// The [`HEADLINE`] figures of a run that it has.
pub fn headline(summary: &Summary) -> BTreeMap<String, f64> {
    HEADLINE
        .iter()
        .filter_map(|name| Some((name.to_string(), value(summary, name)?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Stats;

    #[test]
    fn names_resolve_in_a_summary() {
        let mut summary = Summary::default();
        summary.requests.total = 10;
        summary.requests.ok = 9;
        summary.requests.failed = 1;
        summary.output_throughput = 120.0;
        let ttft = Stats {
            mean: 100.0,
            p99: 180.0,
            ..Stats::default()
        };
        summary.metrics.insert("ttft_ms".into(), ttft);
        let queue = Stats {
            mean: 40.0,
            ..Stats::default()
        };
        summary
            .metrics
            .insert("decomposition.queue_ms".into(), queue);
        summary.metrics.insert(
            "itl_chunk_ms".into(),
            Stats {
                p99: 7.0,
                ..Stats::default()
            },
        );
        assert_eq!(value(&summary, "p99_ttft_ms"), Some(180.0));
        assert_eq!(value(&summary, "p99_itl_ms"), Some(7.0));
        assert_eq!(value(&summary, "error_rate"), Some(0.1));
        assert_eq!(value(&summary, "ttft_share.queue"), Some(0.4));
        assert_eq!(value(&summary, "output_throughput"), Some(120.0));
        assert_eq!(
            value(&summary, "goodput_fraction"),
            None,
            "no SLO, no goodput"
        );
        assert!(is_known("p99_server.queue_ms") && is_known("mean_e2el_ms"));
        assert!(!is_known("p99_ttft") && !is_known("p42_ttft_ms"));
        assert!(
            HEADLINE.iter().all(|name| is_known(name)),
            "headline names are known"
        );
        assert!(is_percentile("median_ttft_ms") && !is_percentile("mean_ttft_ms"));
    }
}
