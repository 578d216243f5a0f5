//! Reading a study's points: their summaries, records, server and GPU
//! samples, one point at a time from the point's run folder; a least-squares
//! line with its confidence interval; number formatting for verdicts.

use crate::analysis::Summary;
use crate::experiment::results::{t95, PointResult, Status};
use crate::experiment::state::ExperimentState;
use crate::record::RequestRecord;
use crate::report::run_folder::RunFolder;
use serde_json::Value;
use std::path::Path;

/// The finished points of case `case`, in run order.
pub fn ok_points(state: &ExperimentState, case: usize) -> Vec<&PointResult> {
    state
        .points
        .iter()
        .filter(|p| p.spec.case == case && p.status == Status::Ok)
        .collect()
}

fn folder(dir: &Path, point: &PointResult) -> Option<RunFolder> {
    RunFolder::open(&dir.join(point.run_dir.as_ref()?)).ok()
}

/// The point's `summary.json`.
pub fn summary(dir: &Path, point: &PointResult) -> Option<Summary> {
    folder(dir, point)?.summary().ok()
}

/// Calls `f` on each measured record of the point (warm-up left out).
pub fn each_record(dir: &Path, point: &PointResult, mut f: impl FnMut(&RequestRecord)) {
    each_record_and_warmup(dir, point, |record| {
        if !record.warmup {
            f(record);
        }
    });
}

/// Calls `f` on each record of the point, warm-up included.
pub fn each_record_and_warmup(dir: &Path, point: &PointResult, mut f: impl FnMut(&RequestRecord)) {
    let Some(records) = folder(dir, point).and_then(|f| f.records().ok()) else {
        return;
    };
    for record in records.flatten() {
        f(&record);
    }
}

/// Calls `f` on each GPU sample line of the point's `telemetry.jsonl` (gap
/// lines left out).
pub fn each_gpu_sample(dir: &Path, point: &PointResult, mut f: impl FnMut(&Value)) {
    let Some(lines) = folder(dir, point).and_then(|f| f.telemetry().ok()) else {
        return;
    };
    for line in lines.flatten().filter(|l: &Value| l.get("gap").is_none()) {
        f(&line);
    }
}

/// When the point's first request (warm-up included) was sent, ns since the epoch.
pub fn first_sent(dir: &Path, point: &PointResult) -> Option<u64> {
    let records = folder(dir, point)?.records().ok()?;
    records.flatten().map(|r| r.sent_unix_ns).min()
}

/// (seconds since the run's start, value) of a field of the point's server
/// `/metrics` samples (`running`, `waiting`, `kv_cache_usage`).
pub fn server_series(dir: &Path, point: &PointResult, field: &str) -> Vec<(f64, f64)> {
    let Some(samples) = folder(dir, point).and_then(|f| f.server_metrics().ok()) else {
        return Vec::new();
    };
    samples
        .flatten()
        .filter_map(|s: Value| Some((s["t_ns"].as_f64()? / 1e9, s[field].as_f64()?)))
        .collect()
}

/// A metric of a point's summary (names as in `experiment::metrics`).
pub fn metric(summary: &Summary, name: &str) -> Option<f64> {
    crate::experiment::metrics::value(summary, name).filter(|v| v.is_finite())
}

/// A fitted line y = intercept + slope·x.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub slope: f64,
    pub intercept: f64,
    /// Half-width of the slope's 95% confidence interval.
    pub slope_ci95: f64,
    pub n: usize,
}

/// Least squares over `points`; `None` with fewer than three or one x only.
pub fn fit(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len();
    if n < 3 {
        return None;
    }
    let mean = |f: fn(&(f64, f64)) -> f64| points.iter().map(f).sum::<f64>() / n as f64;
    let (mx, my) = (mean(|p| p.0), mean(|p| p.1));
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let residual: f64 = points
        .iter()
        .map(|p| (p.1 - intercept - slope * p.0).powi(2))
        .sum();
    let se = (residual / (n - 2) as f64 / sxx).sqrt();
    Some(Fit {
        slope,
        intercept,
        slope_ci95: t95(n - 2) * se,
        n,
    })
}

/// `12.3 ms`, or `–` when unknown.
pub fn ms(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.1} ms"))
}

/// A number with one decimal, or `–`.
pub fn one(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.1}"))
}

/// `42%` of a fraction, or `–`.
pub fn pct(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{:.0}%", v * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_fitted_with_its_interval() {
        let exact: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 2.0 + 0.5 * i as f64)).collect();
        let f = fit(&exact).unwrap();
        assert!((f.slope - 0.5).abs() < 1e-12 && (f.intercept - 2.0).abs() < 1e-12);
        assert!(f.slope_ci95 < 1e-9, "no scatter, no interval");
        let noisy = [(0.0, 1.0), (1.0, 3.0), (2.0, 2.0), (3.0, 4.0)];
        let f = fit(&noisy).unwrap();
        assert!((f.slope - 0.8).abs() < 1e-12);
        // residuals 0.2,-0.6... s.e. = sqrt(SSR/(n-2)/Sxx) with t(2) = 4.303
        let ssr: f64 = noisy
            .iter()
            .map(|p| (p.1 - f.intercept - f.slope * p.0).powi(2))
            .sum();
        assert!((f.slope_ci95 - 4.303 * (ssr / 2.0 / 5.0).sqrt()).abs() < 1e-9);
        assert_eq!(fit(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]), None);
    }
}
