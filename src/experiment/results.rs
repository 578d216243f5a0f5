//! What each point produced, and the figures across a point's repeats: for
//! every metric the mean, standard deviation, min, max and a 95% confidence
//! interval (Student's t) — except percentiles, which are never averaged:
//! for them the pooled percentile over all repeats' requests is given, with
//! the repeats' min, max and spread beside it.

use super::metrics;
use super::server::{Call, ColdStart};
use super::slo::Judged;
use crate::analysis::stats::Distribution;
use crate::analysis::summary::SummaryBuilder;
use crate::analysis::{Slo, Summary};
use crate::report::run_folder::RunFolder;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// How a point ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// The server would not start, the run could not begin, or every request failed.
    Failed,
    /// Ctrl-C or a kill stopped it; a resume runs it again.
    Interrupted,
}

/// What names a point and what it runs with: the plan's [`Point`] and the
/// [`PointResult`] that records it share it.
///
/// [`Point`]: super::point::Point
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointSpec {
    pub id: String,
    pub label: String,
    pub case: usize,
    /// The values this point varies (grid axes, the search axis).
    pub axes: BTreeMap<String, Value>,
    pub repeat: u32,
    pub trial: u32,
    pub seed: u64,
    /// Every run parameter set, as written.
    pub params: BTreeMap<String, Value>,
}

/// One point's outcome, as `experiment.json` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    #[serde(flatten)]
    pub spec: PointSpec,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The point's run folder, relative to the experiment folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
    /// The point's run in the history's `runs` table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// [`metrics::HEADLINE`] figures of the run.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// The run's diagnosis of where TTFT went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<String>,
    /// Median server queue time of the last quarter of requests minus the first quarter's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_growth_ms: Option<f64>,
    /// (first quarter, last quarter) median server queue time, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_quarters_ms: Option<(f64, f64)>,
    /// The search's SLO verdicts at this point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Vec<Judged>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<String>,
    /// Set on the first point after the server was (re)started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<ColdStart>,
    /// Reset and profiler calls made around the point.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<Call>,
    /// Where the server said its profiler trace went, when profiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_trace: Option<String>,
    pub started_unix_ns: u64,
    pub ended_unix_ns: u64,
}

/// What a second pass over a point's records adds to its summary.
#[derive(Debug, Default)]
pub struct RecordFacts {
    /// (first quarter, last quarter) median server queue time, ms.
    pub queue: Option<(f64, f64)>,
    /// Wall clock of the first token of the run (warm-up included), ns.
    pub first_token_unix_ns: Option<u64>,
}

/// Reads a finished run's records once for the queue trend and the first token.
pub fn record_facts(run_dir: &Path, summary: &Summary) -> RecordFacts {
    let Ok(records) = RunFolder::open(run_dir).and_then(|f| f.records().map_err(Into::into)) else {
        return RecordFacts::default();
    };
    let n = summary.requests.total + summary.requests.warmup;
    let (mut early, mut late) = (Distribution::default(), Distribution::default());
    let mut first_token = None::<u64>;
    for record in records.flatten() {
        if let Some(ttft) = record.ttft_ms {
            let at = record.sent_unix_ns + (ttft * 1e6) as u64;
            first_token = Some(first_token.map_or(at, |f| f.min(at)));
        }
        let Some(queue) = record.server.as_ref().and_then(|s| s.queue_ms) else {
            continue;
        };
        if record.index < n / 4 {
            early.observe(queue);
        } else if record.index >= n - n / 4 {
            late.observe(queue);
        }
    }
    let median = |d: &Distribution| d.stats().map(|s| s.p50);
    RecordFacts {
        queue: median(&early).zip(median(&late)),
        first_token_unix_ns: first_token,
    }
}

/// A metric across a point's repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub n: usize,
    /// Mean across repeats (absent for percentiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Half-width of the 95% confidence interval of the mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95: Option<f64>,
    /// Percentiles: over all repeats' requests together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooled: Option<f64>,
}

impl Spread {
    /// The value to plot and compare: the mean, or the pooled percentile.
    pub fn value(&self) -> Option<f64> {
        self.mean.or(self.pooled)
    }
}

/// A point's repeats together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub case: usize,
    pub label: String,
    pub axes: BTreeMap<String, Value>,
    /// The repeats' point ids.
    pub points: Vec<String>,
    pub metrics: BTreeMap<String, Spread>,
}

impl Group {
    /// A metric's value across the repeats: the mean, or the pooled percentile.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).and_then(Spread::value)
    }
}

/// A parameter's value as written: strings bare, numbers and the rest as JSON.
pub fn param_text(value: &Value) -> String {
    value
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string())
}

/// Two-sided 95% Student's t for 1..=30 degrees of freedom.
const T95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// Two-sided 95% Student's t for `degrees` degrees of freedom (1.96 past 30).
pub fn t95(degrees: usize) -> f64 {
    T95.get(degrees.saturating_sub(1)).copied().unwrap_or(1.96)
}

/// Mean, std, min, max and the 95% CI of `values` (sample std, n-1).
pub fn spread(values: &[f64]) -> Spread {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let var = if n > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    let std = var.sqrt();
    let t = t95(n.saturating_sub(1));
    Spread {
        n,
        mean: Some(mean),
        std,
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ci95: (n > 1).then(|| t * std / (n as f64).sqrt()),
        pooled: None,
    }
}

/// The repeats of one point together; `pooled` is the summary of all their
/// requests (for the percentiles), `None` with a single repeat.
pub fn group(points: &[&PointResult], pooled: Option<&Summary>) -> Group {
    let first = points[0];
    let ok: Vec<&&PointResult> = points.iter().filter(|p| p.status == Status::Ok).collect();
    let mut names: Vec<&String> = ok.iter().flat_map(|p| p.metrics.keys()).collect();
    names.sort();
    names.dedup();
    let metrics = names
        .into_iter()
        .map(|name| {
            let values: Vec<f64> = ok
                .iter()
                .filter_map(|p| p.metrics.get(name).copied())
                .collect();
            let mut s = spread(&values);
            if metrics::is_percentile(name) {
                s.mean = None;
                s.ci95 = None;
                s.pooled = match pooled {
                    Some(summary) => metrics::value(summary, name),
                    None => values.first().copied(),
                };
            }
            (name.clone(), s)
        })
        .collect();
    let mut label = first.spec.label.clone();
    if let Some(at) = label.find(" repeat ") {
        label.truncate(at);
    }
    Group {
        case: first.spec.case,
        label,
        axes: first.spec.axes.clone(),
        points: points.iter().map(|p| p.spec.id.clone()).collect(),
        metrics,
    }
}

/// The summary of every request of several runs together (streamed).
pub fn pooled_summary(
    experiment_dir: &Path,
    points: &[&PointResult],
    slo: &Slo,
) -> Option<Summary> {
    let mut builder = SummaryBuilder::new(slo);
    let mut any = false;
    for point in points.iter().filter(|p| p.status == Status::Ok) {
        let dir = experiment_dir.join(point.run_dir.as_ref()?);
        let records = RunFolder::open(&dir).ok()?.records().ok()?;
        for record in records.flatten() {
            builder.observe(&record);
            any = true;
        }
    }
    any.then(|| builder.finish("pooled", false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: &str, p99: f64, throughput: f64) -> PointResult {
        PointResult {
            spec: PointSpec {
                id: id.into(),
                label: "knee concurrency=4 repeat 1/3".into(),
                case: 0,
                axes: BTreeMap::new(),
                repeat: 0,
                trial: 0,
                seed: 0,
                params: BTreeMap::new(),
            },
            status: Status::Ok,
            reason: None,
            run_dir: None,
            run_id: None,
            metrics: [
                ("p99_ttft_ms".to_string(), p99),
                ("output_throughput".to_string(), throughput),
            ]
            .into(),
            diagnosis: None,
            queue_growth_ms: None,
            queue_quarters_ms: None,
            slo: None,
            launch: None,
            cold_start: None,
            calls: Vec::new(),
            profile_trace: None,
            started_unix_ns: 0,
            ended_unix_ns: 0,
        }
    }

    #[test]
    fn repeats_give_mean_ci_and_pooled_percentiles() {
        let (a, b, c) = (
            point("a", 100.0, 10.0),
            point("b", 120.0, 12.0),
            point("c", 140.0, 14.0),
        );
        let mut pooled = Summary::default();
        let ttft = crate::analysis::Stats {
            p99: 139.0,
            ..Default::default()
        };
        pooled.metrics.insert("ttft_ms".into(), ttft);
        let g = group(&[&a, &b, &c], Some(&pooled));
        let tp = &g.metrics["output_throughput"];
        assert_eq!(tp.mean, Some(12.0));
        assert!((tp.std - 2.0).abs() < 1e-9);
        assert!((tp.ci95.unwrap() - 4.303 * 2.0 / 3f64.sqrt()).abs() < 1e-9);
        let p99 = &g.metrics["p99_ttft_ms"];
        assert_eq!(
            (p99.mean, p99.pooled, p99.min, p99.max),
            (None, Some(139.0), 100.0, 140.0)
        );
        assert_eq!(g.label, "knee concurrency=4");
    }
}
