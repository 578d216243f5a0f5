//! The line-chart sections of the report: latency CDFs, throughput and
//! requests in flight over time, server metrics and GPU telemetry. Each is
//! gathered as its file streams by, into aggregates whose size does not grow
//! with the run: CDFs come from the summary's [`Distribution`] (exact up to
//! its bound, an HDR histogram beyond), time charts are buckets, telemetry
//! lines are thinned by [`LinePoints`].

use super::chart::{line_chart, LineChart, LinePoints, Points, Series, SERIES_COLORS};
use super::{esc, num};
use crate::analysis::stats::Distribution;
use crate::record::RequestRecord;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Quantile points of a CDF curve.
const CDF_POINTS: usize = 400;
/// At most this many buckets in the throughput / in-flight charts.
const MAX_TIME_BUCKETS: usize = 600;

// ---------------------------------------------------------------- CDFs

/// The points of a CDF curve (see [`cdf_points`]): exact while the
/// distribution keeps every value, from its histogram past that.
fn curve_points(curve: &Distribution) -> Points {
    let n = curve.count() as usize;
    let ranks = cdf_ranks(n);
    let values = curve.at_ranks(&ranks);
    cdf_points(n, |i| {
        values[ranks.binary_search(&(i as u64)).expect("a rank asked for")]
    })
}

/// The 0-based ranks [`cdf_points`] reads.
fn cdf_ranks(n: usize) -> Vec<u64> {
    if n <= CDF_POINTS {
        return (0..n as u64).collect();
    }
    let mut ranks: Vec<u64> = (0..=CDF_POINTS)
        .map(|k| ((k as f64 / CDF_POINTS as f64) * (n - 1) as f64).round() as u64)
        .collect();
    ranks.dedup();
    ranks
}

/// Up to [`CDF_POINTS`] + 1 (value, fraction ≤ value) points of `n` values,
/// where `value_at(i)` is the `i`-th smallest (0-based).
fn cdf_points(n: usize, value_at: impl Fn(usize) -> f64) -> Points {
    let point = |i: usize| (value_at(i), (i + 1) as f64 / n as f64);
    if n <= CDF_POINTS {
        return (0..n).map(point).collect();
    }
    (0..=CDF_POINTS)
        .map(|k| point(((k as f64 / CDF_POINTS as f64) * (n - 1) as f64).round() as usize))
        .collect()
}

/// The values of one CDF curve in a record.
type CurveValues = fn(&RequestRecord) -> &[f64];

/// Chart id, title, and its labelled curves.
type CdfChart = (
    &'static str,
    &'static str,
    &'static [(&'static str, CurveValues)],
);

/// The CDF charts, in page order.
const CDF_CHARTS: [CdfChart; 4] = [
    (
        "cdf-ttft",
        "TTFT",
        &[
            ("client", |r| r.ttft_ms.as_slice()),
            ("server", |r| {
                r.server.as_ref().map_or(&[], |s| s.ttft_ms.as_slice())
            }),
        ],
    ),
    (
        "cdf-itl",
        "ITL",
        &[
            ("per chunk", |r| &r.itl_chunk_ms),
            ("per token", |r| {
                r.itl_token_ms.as_deref().unwrap_or_default()
            }),
        ],
    ),
    ("cdf-tpot", "TPOT", &[("client", |r| r.tpot_ms.as_slice())]),
    (
        "cdf-e2e",
        "E2E",
        &[
            ("client", |r| r.e2e_ms.as_slice()),
            ("server", |r| {
                r.server.as_ref().map_or(&[], |s| s.e2e_ms.as_slice())
            }),
        ],
    ),
];

/// The latency CDFs of the successful measured requests.
pub(super) struct Distributions {
    /// Per chart of [`CDF_CHARTS`], per curve.
    curves: Vec<Vec<Distribution>>,
}

impl Default for Distributions {
    fn default() -> Self {
        let curves = CDF_CHARTS
            .iter()
            .map(|(_, _, picks)| picks.iter().map(|_| Distribution::default()).collect())
            .collect();
        Distributions { curves }
    }
}

impl Distributions {
    pub fn add(&mut self, record: &RequestRecord) {
        if record.warmup || !record.ok() {
            return;
        }
        for ((_, _, picks), curves) in CDF_CHARTS.iter().zip(&mut self.curves) {
            for ((_, pick), curve) in picks.iter().zip(curves.iter_mut()) {
                for value in pick(record) {
                    curve.observe(*value);
                }
            }
        }
    }

    pub fn render(self, page: &mut String) {
        page.push_str("<h2>Latency distributions (CDF)</h2><div class=\"grid\">");
        for ((id, name, picks), curves) in CDF_CHARTS.iter().zip(self.curves) {
            let mut series = Vec::new();
            for (i, ((label, _), curve)) in picks.iter().zip(curves).enumerate() {
                let n = curve.count();
                if n == 0 {
                    continue;
                }
                series.push(Series {
                    name: format!("{label} (n={n})"),
                    color: SERIES_COLORS[i],
                    points: curve_points(&curve),
                });
            }
            let _ = write!(page, "<div class=\"chart\"><h3>{name}</h3>");
            if series.is_empty() {
                let _ = write!(page, "<p class=\"note\">No {name} values in this run.</p>");
            } else {
                line_chart(
                    page,
                    &LineChart {
                        id,
                        x_label: "ms",
                        y_label: "fraction of requests",
                        y_fixed: Some((0.0, 1.0)),
                        series: &series,
                    },
                );
            }
            page.push_str("</div>");
        }
        page.push_str("</div>");
    }
}

// ---------------------------------------------------------------- over time

/// When a request ended (run clock, ns): its end, else its last token, else its send.
pub(super) fn end_ns(r: &RequestRecord) -> u64 {
    r.instants_ns
        .end
        .or(r.instants_ns.last_token)
        .unwrap_or(r.instants_ns.sent)
}

/// Completions, output tokens and busy time of the measured requests per time
/// bucket; the bucket width comes from the last completion, found in an earlier pass.
pub(super) struct TimeBuckets {
    bucket_s: f64,
    done: Vec<f64>,
    tokens: Vec<f64>,
    busy_s: Vec<f64>,
}

impl TimeBuckets {
    /// Buckets from the run's start to `last_end_ns` (see [`end_ns`]).
    pub fn new(last_end_ns: u64) -> TimeBuckets {
        let span_s = last_end_ns as f64 / 1e9;
        let bucket_s = (span_s / MAX_TIME_BUCKETS as f64).ceil().max(1.0);
        let buckets = (span_s / bucket_s).floor() as usize + 1;
        TimeBuckets {
            bucket_s,
            done: vec![0.0; buckets],
            tokens: vec![0.0; buckets],
            busy_s: vec![0.0; buckets],
        }
    }

    pub fn add(&mut self, r: &RequestRecord) {
        if r.warmup {
            return;
        }
        let bucket_s = self.bucket_s;
        let last = self.done.len() - 1;
        let (start, end) = (r.instants_ns.sent as f64 / 1e9, end_ns(r) as f64 / 1e9);
        let b = ((end / bucket_s) as usize).min(last);
        self.done[b] += 1.0;
        if r.ok() {
            self.tokens[b] += r.output_tokens.unwrap_or(0) as f64;
        }
        let first = (start / bucket_s) as usize;
        for (k, slot) in self.busy_s.iter_mut().enumerate().take(b + 1).skip(first) {
            let lo = start.max(k as f64 * bucket_s);
            let hi = end.min((k + 1) as f64 * bucket_s);
            *slot += (hi - lo).max(0.0);
        }
    }

    /// The throughput and in-flight section; `None` when the run had no measured requests.
    pub fn render(buckets: Option<TimeBuckets>, page: &mut String) {
        page.push_str("<h2>Throughput and concurrency over time</h2>");
        let Some(buckets) = buckets else {
            page.push_str("<p class=\"note\">No measured requests.</p>");
            return;
        };
        let bucket_s = buckets.bucket_s;
        if bucket_s > 1.0 {
            let _ = write!(
                page,
                "<p class=\"note\">Averaged over {} s buckets.</p>",
                num(bucket_s)
            );
        }
        let per_s = |v: Vec<f64>| -> Points {
            v.into_iter()
                .enumerate()
                .map(|(k, v)| ((k as f64 + 0.5) * bucket_s, v / bucket_s))
                .collect()
        };
        page.push_str("<div class=\"grid\">");
        let charts = [
            (
                "throughput-tokens",
                "Output tokens/s",
                "tokens/s",
                per_s(buckets.tokens),
            ),
            (
                "throughput-requests",
                "Completed requests/s",
                "requests/s",
                per_s(buckets.done),
            ),
            (
                "in-flight",
                "Requests in flight",
                "requests (mean)",
                per_s(buckets.busy_s),
            ),
        ];
        for (i, (id, title, y_label, points)) in charts.into_iter().enumerate() {
            let _ = write!(page, "<div class=\"chart\"><h3>{title}</h3>");
            line_chart(
                page,
                &LineChart {
                    id,
                    x_label: "seconds since run start",
                    y_label,
                    y_fixed: None,
                    series: &[Series {
                        name: title.to_string(),
                        color: SERIES_COLORS[i],
                        points,
                    }],
                },
            );
            page.push_str("</div>");
        }
        page.push_str("</div>");
    }
}

// ---------------------------------------------------------------- telemetry

/// The named lines of one chart (seconds since run start).
type Lines = BTreeMap<String, LinePoints>;

/// Appends `sample[field] * scale` at `sample.t_ns` to the line `name`, when both are numbers.
fn push_sample(lines: &mut Lines, name: String, sample: &Value, field: &str, scale: f64) {
    if let (Some(t), Some(v)) = (sample["t_ns"].as_f64(), sample[field].as_f64()) {
        lines.entry(name).or_default().push((t / 1e9, v * scale));
    }
}

/// The samples of one file, and its gap records counted by reason.
#[derive(Default)]
struct SampleFile {
    lines: usize,
    gaps: BTreeMap<String, u64>,
}

impl SampleFile {
    /// Counts the sample; true when it is a gap record (which holds no values).
    fn is_gap(&mut self, sample: &Value) -> bool {
        self.lines += 1;
        let Some(reason) = sample.get("gap") else {
            return false;
        };
        let reason = reason
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| reason.to_string());
        *self.gaps.entry(reason).or_default() += 1;
        true
    }

    /// The section heading and a one-line note of the gaps; false when the file had no lines.
    fn heading(&self, page: &mut String, title: &str) -> bool {
        if self.lines == 0 {
            return false;
        }
        let _ = write!(page, "<h2>{title}</h2>");
        if !self.gaps.is_empty() {
            let parts: Vec<String> = self.gaps.iter().map(|(k, v)| format!("{v}× {k}")).collect();
            let note = format!("Sampling gaps: {}.", parts.join("; "));
            let _ = write!(page, "<p class=\"note\">{}</p>", esc(&note));
        }
        true
    }
}

/// Chart id, title, y label, and named lines.
type SeriesChart = (&'static str, &'static str, &'static str, Lines);

/// One chart per metric, each entry of its map a line; `empty_note` instead
/// when no chart has a line.
fn series_charts(page: &mut String, charts: Vec<SeriesChart>, empty_note: &str) {
    if charts.iter().all(|c| c.3.is_empty()) {
        let _ = write!(page, "<p class=\"note\">{}</p>", esc(empty_note));
        return;
    }
    page.push_str("<div class=\"grid\">");
    for (id, title, y_label, lines) in charts {
        if lines.is_empty() {
            continue;
        }
        let series: Vec<Series> = lines
            .into_iter()
            .enumerate()
            .map(|(i, (name, points))| Series {
                name,
                color: SERIES_COLORS[i % SERIES_COLORS.len()],
                points: points.into_points(),
            })
            .collect();
        let _ = write!(page, "<div class=\"chart\"><h3>{}</h3>", esc(title));
        line_chart(
            page,
            &LineChart {
                id,
                x_label: "seconds since run start",
                y_label,
                y_fixed: None,
                series: &series,
            },
        );
        page.push_str("</div>");
    }
    page.push_str("</div>");
}

/// The server-metrics section, from `server_metrics.jsonl`.
#[derive(Default)]
pub(super) struct ServerMetricCharts {
    file: SampleFile,
    queue: Lines,
    kv_cache: Lines,
}

impl ServerMetricCharts {
    pub fn add(&mut self, sample: &Value) {
        if self.file.is_gap(sample) {
            return;
        }
        for field in ["running", "waiting"] {
            push_sample(&mut self.queue, field.into(), sample, field, 1.0);
        }
        push_sample(
            &mut self.kv_cache,
            "KV cache".into(),
            sample,
            "kv_cache_usage",
            100.0,
        );
    }

    pub fn render(self, page: &mut String) {
        if !self.file.heading(page, "Server metrics") {
            return;
        }
        let charts = vec![
            (
                "server-queue",
                "Running and waiting requests",
                "requests",
                self.queue,
            ),
            ("server-kv", "KV cache usage", "%", self.kv_cache),
        ];
        series_charts(page, charts, "No usable server metric samples.");
    }
}

/// The GPU section, from `telemetry.jsonl`: a line per GPU in each chart.
#[derive(Default)]
pub(super) struct GpuCharts {
    file: SampleFile,
    memory: Lines,
    utilisation: Lines,
    power: Lines,
}

impl GpuCharts {
    pub fn add(&mut self, sample: &Value) {
        if self.file.is_gap(sample) {
            return;
        }
        let host = sample["host"].as_str().unwrap_or("");
        let gpu = sample["gpu"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| sample["gpu"].to_string());
        let name = if host.is_empty() {
            format!("GPU {gpu}")
        } else {
            format!("{host} GPU {gpu}")
        };
        push_sample(
            &mut self.memory,
            name.clone(),
            sample,
            "memory_used_mib",
            1.0,
        );
        push_sample(
            &mut self.utilisation,
            name.clone(),
            sample,
            "gpu_util_pct",
            1.0,
        );
        push_sample(&mut self.power, name, sample, "power_w", 1.0);
    }

    pub fn render(self, page: &mut String) {
        if !self.file.heading(page, "GPU") {
            return;
        }
        let charts = vec![
            ("gpu-memory", "GPU memory used", "MiB", self.memory),
            ("gpu-util", "GPU utilisation", "%", self.utilisation),
            ("gpu-power", "GPU power", "W", self.power),
        ];
        series_charts(page, charts, "No usable GPU samples.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::stats::EXACT_VALUES;

    #[test]
    fn cdf_ends_at_one_and_is_monotone() {
        let sorted: Vec<f64> = (0..10_000).map(f64::from).collect();
        let points = cdf_points(sorted.len(), |i| sorted[i]);
        assert_eq!(points.len(), CDF_POINTS + 1);
        assert_eq!(points.last().map(|p| p.1), Some(1.0));
        assert!(points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let few = [1.0, 2.0];
        assert_eq!(cdf_points(2, |i| few[i]), vec![(1.0, 0.5), (2.0, 1.0)]);
    }

    #[test]
    fn a_large_curve_comes_from_a_histogram_close_to_the_exact_one() {
        let n = EXACT_VALUES * 3;
        let value = |i: usize| 1.0 + (i * 7919 % n) as f64 / 1000.0;
        let mut curve = Distribution::default();
        for i in 0..n {
            curve.observe(value(i));
        }
        assert!(!curve.is_exact());
        assert_eq!(curve.count(), n as u64);
        let points = curve_points(&curve);
        assert_eq!(points.len(), CDF_POINTS + 1);
        assert_eq!(points.last().map(|p| p.1), Some(1.0));
        for (v, fraction) in points {
            // The exact i-th smallest value is 1 + i / 1000.
            let exact = 1.0 + (fraction * n as f64 - 1.0) / 1000.0;
            assert!((v - exact).abs() <= exact * 1e-3, "{v} vs {exact}");
        }
    }
}
