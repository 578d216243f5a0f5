//! Engine `/metrics` scraping: first-class fields for vLLM, SGLang and TGI (running, waiting,
//! KV-cache usage, token and preemption counters) plus every other series raw, written to
//! `server_metrics.jsonl`, and the window summary with the server's own latency percentiles
//! computed from histogram bucket deltas.

use super::prom::{self, Exposition, SeriesValue};
use super::sink::SamplerContext;
use crate::client::error_chain;
pub use crate::record::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::MissedTickBehavior;

/// Schema name of every `server_metrics.jsonl` line.
pub const SERVER_METRICS_SCHEMA: &str = "tracebench.server_metrics/1";

/// A scrape that takes longer than this is a gap.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Recognises the engine by its metric names.
pub fn detect_engine(exposition: &Exposition) -> Option<Engine> {
    let names = || exposition.families.keys();
    if names().any(|name| name.starts_with("vllm:")) {
        Some(Engine::Vllm)
    } else if names().any(|name| name.starts_with("sglang:")) {
        Some(Engine::Sglang)
    } else if names().any(|name| name.starts_with("tgi_")) {
        Some(Engine::Tgi)
    } else {
        None
    }
}

/// The names of an engine's first-class series.
fn engine_metrics(engine: Engine) -> &'static EngineMetrics {
    match engine {
        Engine::Vllm => &VLLM,
        Engine::Sglang => &SGLANG,
        Engine::Tgi => &TGI,
    }
}

/// Where a first-class value comes from.
#[derive(Debug, Clone, Copy)]
enum Field {
    /// Sum over the series of a gauge or counter.
    Scalar(&'static str),
    /// Sum of a histogram's `_sum` (TGI counts tokens only in histograms).
    HistogramSum(&'static str),
    Absent,
}

/// The metric names of one engine.
struct EngineMetrics {
    running: Field,
    waiting: Field,
    kv_cache_usage: Field,
    preemptions_total: Field,
    prompt_tokens_total: Field,
    generation_tokens_total: Field,
    /// `(summary key, histogram family in seconds)`.
    latency_histograms: &'static [(&'static str, &'static str)],
}

const VLLM: EngineMetrics = EngineMetrics {
    running: Field::Scalar("vllm:num_requests_running"),
    waiting: Field::Scalar("vllm:num_requests_waiting"),
    kv_cache_usage: Field::Scalar("vllm:kv_cache_usage_perc"),
    preemptions_total: Field::Scalar("vllm:num_preemptions_total"),
    prompt_tokens_total: Field::Scalar("vllm:prompt_tokens_total"),
    generation_tokens_total: Field::Scalar("vllm:generation_tokens_total"),
    latency_histograms: &[
        ("ttft", "vllm:time_to_first_token_seconds"),
        ("itl", "vllm:inter_token_latency_seconds"),
        ("tpot", "vllm:request_time_per_output_token_seconds"),
        ("e2e", "vllm:e2e_request_latency_seconds"),
        ("queue", "vllm:request_queue_time_seconds"),
        ("prefill", "vllm:request_prefill_time_seconds"),
        ("decode", "vllm:request_decode_time_seconds"),
        ("inference", "vllm:request_inference_time_seconds"),
    ],
};

const SGLANG: EngineMetrics = EngineMetrics {
    running: Field::Scalar("sglang:num_running_reqs"),
    waiting: Field::Scalar("sglang:num_queue_reqs"),
    kv_cache_usage: Field::Scalar("sglang:token_usage"),
    preemptions_total: Field::Absent,
    prompt_tokens_total: Field::Scalar("sglang:prompt_tokens_total"),
    generation_tokens_total: Field::Scalar("sglang:generation_tokens_total"),
    latency_histograms: &[
        ("ttft", "sglang:time_to_first_token_seconds"),
        ("itl", "sglang:inter_token_latency_seconds"),
        ("tpot", "sglang:time_per_output_token_seconds"),
        ("e2e", "sglang:e2e_request_latency_seconds"),
        ("queue", "sglang:queue_time_seconds"),
    ],
};

const TGI: EngineMetrics = EngineMetrics {
    running: Field::Scalar("tgi_batch_current_size"),
    waiting: Field::Scalar("tgi_queue_size"),
    kv_cache_usage: Field::Absent,
    preemptions_total: Field::Absent,
    prompt_tokens_total: Field::HistogramSum("tgi_request_input_length"),
    generation_tokens_total: Field::HistogramSum("tgi_request_generated_tokens"),
    latency_histograms: &[
        ("tpot", "tgi_request_mean_time_per_token_duration"),
        ("e2e", "tgi_request_duration"),
        ("queue", "tgi_request_queue_duration"),
        ("inference", "tgi_request_inference_duration"),
    ],
};

impl Field {
    fn read(self, exposition: &Exposition) -> Option<f64> {
        match self {
            Field::Scalar(name) => exposition.scalar_sum(name),
            Field::HistogramSum(name) => {
                let sums: Vec<f64> = exposition
                    .family(name)?
                    .series
                    .iter()
                    .filter_map(|series| match series.value {
                        SeriesValue::Histogram { sum, .. } => sum,
                        _ => None,
                    })
                    .collect();
                (!sums.is_empty()).then(|| sums.iter().sum())
            }
            Field::Absent => None,
        }
    }
}

/// The first-class values of one scrape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FirstClass {
    pub running: Option<f64>,
    pub waiting: Option<f64>,
    /// 0..1
    pub kv_cache_usage: Option<f64>,
    pub preemptions_total: Option<f64>,
    pub prompt_tokens_total: Option<f64>,
    pub generation_tokens_total: Option<f64>,
}

impl FirstClass {
    fn read(engine: Option<Engine>, exposition: &Exposition) -> Self {
        let Some(names) = engine.map(engine_metrics) else {
            return Self::default();
        };
        Self {
            running: names.running.read(exposition),
            waiting: names.waiting.read(exposition),
            kv_cache_usage: names.kv_cache_usage.read(exposition),
            preemptions_total: names.preemptions_total.read(exposition),
            prompt_tokens_total: names.prompt_tokens_total.read(exposition),
            generation_tokens_total: names.generation_tokens_total.read(exposition),
        }
    }
}

/// A scrape line of `server_metrics.jsonl`. `raw` holds every series (Prometheus sample names
/// with labels) on the first line and after a gap; on the other lines only the series whose
/// value changed since the line before, so an idle server costs a few bytes a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMetricsLine {
    pub schema: String,
    pub t_ns: u64,
    pub unix_ns: u64,
    pub url: String,
    pub engine: Option<String>,
    #[serde(flatten)]
    pub values: FirstClass,
    pub raw: BTreeMap<String, f64>,
}

/// A gap line of `server_metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerGapLine {
    pub schema: String,
    pub t_ns: u64,
    pub unix_ns: u64,
    pub url: String,
    pub gap: String,
}

/// Scrapes one URL.
#[derive(Debug, Clone)]
pub struct Scraper {
    url: String,
    client: reqwest::Client,
}

impl Scraper {
    pub fn new(url: String, client: reqwest::Client) -> Self {
        Self { url, client }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One scrape: an error when unreachable, not 200, or not Prometheus text.
    pub async fn scrape(&self) -> Result<Exposition, super::Unavailable> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|error| format!("unreachable: {}", error_chain(&error)))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(format!("answered HTTP {status}").into());
        }
        let text = response
            .text()
            .await
            .map_err(|error| format!("body unreadable: {}", error_chain(&error)))?;
        let exposition = prom::parse(&text);
        if exposition.families.is_empty() {
            let why = exposition
                .skipped
                .first()
                .map(|s| s.reason.as_str())
                .unwrap_or("empty body");
            return Err(format!("not Prometheus text ({why})").into());
        }
        Ok(exposition)
    }
}

/// Aggregated cumulative buckets `(le, count)` of one latency histogram, summed over its series.
type Buckets = Vec<(f64, f64)>;

/// What is kept of one scrape for the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapePoint {
    pub t_ns: u64,
    pub values: FirstClass,
    /// Summary key (`ttft`, ...) → buckets.
    pub histograms: BTreeMap<&'static str, Buckets>,
}

/// What the server sampler collected.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSamplerOutput {
    pub url: String,
    pub engine: Option<Engine>,
    pub points: Vec<ScrapePoint>,
    pub gaps: Vec<(u64, String)>,
}

/// Sums the buckets of every series of a histogram family, by bound.
fn aggregate_buckets(exposition: &Exposition, family: &str) -> Option<Buckets> {
    let mut merged: Buckets = Vec::new();
    for series in &exposition.family(family)?.series {
        if let SeriesValue::Histogram { buckets, .. } = &series.value {
            for &(bound, count) in buckets {
                match merged.iter_mut().find(|(b, _)| *b == bound) {
                    Some((_, total)) => *total += count,
                    None => merged.push((bound, count)),
                }
            }
        }
    }
    merged.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!merged.is_empty()).then_some(merged)
}

/// Turns scrapes into lines, points and gauges.
pub struct ScrapeRecorder {
    context: SamplerContext,
    output: ServerSamplerOutput,
    previous_raw: Option<BTreeMap<String, f64>>,
}

impl ScrapeRecorder {
    pub fn new(url: &str, context: SamplerContext) -> Self {
        Self {
            output: ServerSamplerOutput {
                url: url.to_string(),
                engine: None,
                points: Vec::new(),
                gaps: Vec::new(),
            },
            context,
            previous_raw: None,
        }
    }

    /// Writes one scrape (or its failure) taken at `t_ns`.
    pub fn record(&mut self, t_ns: u64, scrape: Result<Exposition, super::Unavailable>) {
        let unix_ns = self.context.clock.unix_ns_of(t_ns);
        let url = self.output.url.clone();
        let exposition = match scrape {
            Ok(exposition) => exposition,
            Err(super::Unavailable(reason)) => {
                self.context.sink.write(&ServerGapLine {
                    schema: SERVER_METRICS_SCHEMA.to_string(),
                    t_ns,
                    unix_ns,
                    url,
                    gap: reason.clone(),
                });
                self.output.gaps.push((t_ns, reason));
                self.previous_raw = None;
                return;
            }
        };
        if let Some(first) = exposition.skipped.first() {
            self.context.notes.push(format!(
                "server metrics: {url}: skipped {} unreadable line(s) (line {}: {})",
                exposition.skipped.len(),
                first.line,
                first.reason
            ));
        }
        let engine = detect_engine(&exposition).or(self.output.engine);
        self.output.engine = engine;
        let values = FirstClass::read(engine, &exposition);
        self.publish_live(&values);
        let histograms = engine
            .map(|engine| {
                engine_metrics(engine)
                    .latency_histograms
                    .iter()
                    .filter_map(|(key, family)| {
                        Some((*key, aggregate_buckets(&exposition, family)?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let raw = exposition.flatten();
        let changed = match &self.previous_raw {
            Some(previous) => raw
                .iter()
                .filter(|(key, value)| {
                    previous.get(*key).map(|old| old.to_bits()) != Some(value.to_bits())
                })
                .map(|(key, value)| (key.clone(), *value))
                .collect(),
            None => raw.clone(),
        };
        self.previous_raw = Some(raw);
        self.context.sink.write(&ServerMetricsLine {
            schema: SERVER_METRICS_SCHEMA.to_string(),
            t_ns,
            unix_ns,
            url,
            engine: engine.map(|engine| engine.as_str().to_string()),
            values: values.clone(),
            raw: changed,
        });
        self.output.points.push(ScrapePoint {
            t_ns,
            values,
            histograms,
        });
    }

    fn publish_live(&self, values: &FirstClass) {
        let live = &self.context.live;
        if let Some(running) = values.running {
            live.set("server running", "reqs", running);
        }
        if let Some(waiting) = values.waiting {
            live.set("server waiting", "reqs", waiting);
        }
        if let Some(usage) = values.kv_cache_usage {
            live.set("server KV cache", "%", usage * 100.0);
        }
    }
}

/// Scrapes every interval until stopped, and once more at the stop. `recorder` already holds
/// the probe `start` made.
pub async fn run_sampler(scraper: Scraper, mut recorder: ScrapeRecorder) -> ServerSamplerOutput {
    let mut stop = recorder.context.stop.clone();
    let interval = recorder.context.interval;
    let clock = recorder.context.clock;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            biased;
            changed = stop.changed() => changed.is_err() || *stop.borrow(),
            _ = ticker.tick() => false,
        };
        let t_ns = super::now_ns(&clock);
        let scrape = scraper.scrape().await;
        recorder.record(t_ns, scrape);
        if stopping {
            return recorder.output;
        }
    }
}

/// Prometheus' `histogram_quantile`: the bucket holding rank `q × total`, with linear
/// interpolation inside it (the lowest bucket starts at 0 when its bound is positive; a rank
/// in the `+Inf` bucket answers the highest finite bound). `None` without observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let &(last_bound, total) = buckets.last()?;
    if last_bound != f64::INFINITY || total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let index = buckets.iter().position(|&(_, count)| count >= rank)?;
    let (upper, count) = buckets[index];
    if upper == f64::INFINITY {
        return Some(if index == 0 {
            f64::INFINITY
        } else {
            buckets[index - 1].0
        });
    }
    let (lower, below) = match index {
        0 if upper <= 0.0 => return Some(upper),
        0 => (0.0, 0.0),
        _ => buckets[index - 1],
    };
    if count == below {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

/// `end − start` per bucket, kept cumulative and monotonic. A counter that went backwards
/// (server restart) makes the delta the end counts alone.
fn bucket_delta(start: Option<&Buckets>, end: &Buckets) -> Buckets {
    let Some(start) = start else {
        return end.clone();
    };
    let before = |bound: f64| {
        start
            .iter()
            .find(|(b, _)| *b == bound)
            .map_or(0.0, |(_, c)| *c)
    };
    if end.iter().any(|&(bound, count)| count < before(bound)) {
        return end.clone();
    }
    let mut running_max = 0.0_f64;
    end.iter()
        .map(|&(bound, count)| {
            running_max = running_max.max(count - before(bound));
            (bound, running_max)
        })
        .collect()
}

fn counter_delta(start: Option<f64>, end: Option<f64>) -> Option<f64> {
    let end = end?;
    Some(match start {
        Some(start) if end >= start => end - start,
        Some(_) => end,
        None => end,
    })
}

fn max_mean(values: impl Iterator<Item = Option<f64>>) -> Value {
    let present: Vec<f64> = values.flatten().collect();
    if present.is_empty() {
        return Value::Null;
    }
    let max = present.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({ "mean": present.iter().sum::<f64>() / present.len() as f64, "max": max })
}

/// The `summary.json` `server_metrics` value over the window (run-relative ns): mean and max of
/// running/waiting/KV usage from scrapes inside it; counter deltas and the server's latency
/// percentiles (ms) between the last scrape at or before its start and the first at or after
/// its end.
pub fn summarize(output: &ServerSamplerOutput, (from, to): (u64, u64)) -> Value {
    let points = &output.points;
    let inside: Vec<&ScrapePoint> = points
        .iter()
        .filter(|p| p.t_ns >= from && p.t_ns <= to)
        .collect();
    let start = points
        .iter()
        .rev()
        .find(|p| p.t_ns <= from)
        .or_else(|| points.first());
    let end = points
        .iter()
        .find(|p| p.t_ns >= to)
        .or_else(|| points.last());
    let mut gap_reasons: Vec<&str> = Vec::new();
    for (_, reason) in &output.gaps {
        if !gap_reasons.contains(&reason.as_str()) {
            gap_reasons.push(reason);
        }
    }
    let mut summary = json!({
        "url": output.url,
        "engine": output.engine.map(Engine::as_str),
        "scrapes": points.len(),
        "scrapes_in_window": inside.len(),
        "gaps": output.gaps.len(),
        "gap_reasons": gap_reasons,
        "running": max_mean(inside.iter().map(|p| p.values.running)),
        "waiting": max_mean(inside.iter().map(|p| p.values.waiting)),
        "kv_cache_usage": max_mean(inside.iter().map(|p| p.values.kv_cache_usage)),
    });
    let (Some(start), Some(end)) = (start, end) else {
        return summary;
    };
    summary["delta_from_t_ns"] = json!(start.t_ns);
    summary["delta_to_t_ns"] = json!(end.t_ns);
    summary["window_start_covered"] = json!(start.t_ns <= from);
    summary["window_end_covered"] = json!(end.t_ns >= to);
    let delta = |get: fn(&FirstClass) -> Option<f64>| {
        if start.t_ns == end.t_ns {
            return None;
        }
        counter_delta(get(&start.values), get(&end.values))
    };
    summary["prompt_tokens"] = json!(delta(|v| v.prompt_tokens_total));
    summary["generation_tokens"] = json!(delta(|v| v.generation_tokens_total));
    summary["preemptions"] = json!(delta(|v| v.preemptions_total));
    let mut latency = Map::new();
    if start.t_ns != end.t_ns {
        for (key, end_buckets) in &end.histograms {
            let buckets = bucket_delta(start.histograms.get(key), end_buckets);
            let count = buckets.last().map_or(0.0, |(_, count)| *count);
            let family = output
                .engine
                .and_then(|engine| {
                    engine_metrics(engine)
                        .latency_histograms
                        .iter()
                        .find(|(k, _)| k == key)
                })
                .map(|(_, family)| *family);
            let quantile_ms = |q: f64| {
                histogram_quantile(q, &buckets)
                    .filter(|v| v.is_finite())
                    .map(|v| v * 1e3)
            };
            latency.insert(
                (*key).to_string(),
                json!({
                    "metric": family,
                    "count": count,
                    "p50_ms": quantile_ms(0.5),
                    "p90_ms": quantile_ms(0.9),
                    "p99_ms": quantile_ms(0.99),
                }),
            );
        }
    }
    summary["latency"] = Value::Object(latency);
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        // 10 observations: 2 in (0, 0.1], 6 in (0.1, 0.5], 2 in (0.5, 1].
        let buckets = vec![(0.1, 2.0), (0.5, 8.0), (1.0, 10.0), (f64::INFINITY, 10.0)];
        // rank 5 → bucket (0.1, 0.5]: 0.1 + 0.4 × (5 − 2) / 6 = 0.3
        assert!((histogram_quantile(0.5, &buckets).unwrap() - 0.3).abs() < 1e-12);
        // rank 1 → first bucket from 0: 0.1 × 1 / 2 = 0.05
        assert!((histogram_quantile(0.1, &buckets).unwrap() - 0.05).abs() < 1e-12);
        // rank 9.9 → (0.5, 1]: 0.5 + 0.5 × 1.9 / 2 = 0.975
        assert!((histogram_quantile(0.99, &buckets).unwrap() - 0.975).abs() < 1e-12);
        let overflow = vec![(0.1, 1.0), (1.0, 2.0), (f64::INFINITY, 10.0)];
        assert_eq!(histogram_quantile(0.9, &overflow), Some(1.0));
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
    }

    #[test]
    fn bucket_deltas_subtract_and_survive_a_restart() {
        let start = vec![(0.1, 1.0), (f64::INFINITY, 3.0)];
        let end = vec![(0.1, 4.0), (f64::INFINITY, 9.0)];
        assert_eq!(
            bucket_delta(Some(&start), &end),
            vec![(0.1, 3.0), (f64::INFINITY, 6.0)]
        );
        let restarted = vec![(0.1, 1.0), (f64::INFINITY, 1.0)];
        assert_eq!(bucket_delta(Some(&start), &restarted), restarted);
        assert_eq!(bucket_delta(None, &end), end);
        assert_eq!(counter_delta(Some(10.0), Some(4.0)), Some(4.0));
        assert_eq!(counter_delta(Some(10.0), Some(14.0)), Some(4.0));
    }

    fn fixture(path: &str) -> Exposition {
        prom::parse(&crate::testing::fixture_text(path))
    }

    #[test]
    fn first_class_fields_of_each_engine() {
        let vllm = fixture("vllm/metrics.prom");
        assert_eq!(detect_engine(&vllm), Some(Engine::Vllm));
        let values = FirstClass::read(Some(Engine::Vllm), &vllm);
        assert_eq!(values.running, Some(0.0));
        assert_eq!(values.kv_cache_usage, Some(0.0));
        assert!(values.generation_tokens_total.unwrap_or(0.0) > 0.0);
        let ttft =
            aggregate_buckets(&vllm, "vllm:time_to_first_token_seconds").expect("ttft histogram");
        assert_eq!(
            ttft.last(),
            Some(&(f64::INFINITY, 34.0)),
            "34 TTFT observations per the README"
        );

        let sglang = fixture("sglang-metrics/sglang-docs-llama31-8b-under-load.prom");
        assert_eq!(detect_engine(&sglang), Some(Engine::Sglang));
        let values = FirstClass::read(Some(Engine::Sglang), &sglang);
        assert_eq!(values.running, Some(162.0));
        assert_eq!(values.waiting, Some(2826.0));

        let tgi = fixture("tgi-metrics/datadog-fixture-tgi3-payload.prom");
        assert_eq!(detect_engine(&tgi), Some(Engine::Tgi));
        let values = FirstClass::read(Some(Engine::Tgi), &tgi);
        assert_eq!(
            values.generation_tokens_total,
            Some(3423.0),
            "README: 3,423 generated tokens"
        );
        assert!(values.waiting.is_some() && values.running.is_some());
    }
}
