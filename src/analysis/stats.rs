//! Distribution statistics: count, mean, std, min, percentiles, max, kept
//! by a streaming [`Distribution`] whose memory does not grow with the run.
//!
//! Percentiles are linearly interpolated between order statistics (numpy's
//! default, what `vllm bench serve` reports), so the two tools' numbers are
//! comparable. They are exact while a metric has at most [`EXACT_VALUES`]
//! values (every value is kept); past that the values move into an HDR
//! histogram of 1/1000-unit resolution (1 µs for milliseconds) and 3
//! significant digits, so a percentile is within 0.1% of the exact one.
//! Count, mean, std, min and max are always exact.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Values of one metric kept exactly before the distribution turns to a histogram
/// (2 MiB; e.g. the ITL of 2,000 requests of 128 tokens).
pub const EXACT_VALUES: usize = 1 << 18;
/// Histogram resolution: units of the metric per recorded step.
const HISTOGRAM_SCALE: f64 = 1000.0;

/// Statistics of one metric over a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: u64,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    /// Statistics of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Stats> {
        let mut distribution = Distribution::default();
        values.iter().for_each(|v| distribution.observe(*v));
        distribution.stats()
    }

    /// The value of a named statistic (`mean`, `p50`, `median`, `p99`, ...).
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "count" => self.count as f64,
            "mean" => self.mean,
            "std" => self.std,
            "min" => self.min,
            "p50" | "median" => self.p50,
            "p90" => self.p90,
            "p95" => self.p95,
            "p99" => self.p99,
            "max" => self.max,
            _ => return None,
        })
    }
}

/// A metric's values seen one at a time (non-finite ones are skipped).
#[derive(Debug, Clone, Default)]
pub struct Distribution {
    count: u64,
    mean: f64,
    /// Sum of squared deviations from the mean (Welford).
    m2: f64,
    min: f64,
    max: f64,
    /// Every value, until there are too many.
    exact: Vec<f64>,
    /// Then: magnitudes of the non-negative values, and of the negative ones.
    histograms: Option<Box<[Histogram<u64>; 2]>>,
}

impl Distribution {
    pub fn observe(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        if self.count == 0 {
            (self.min, self.max) = (value, value);
        }
        self.count += 1;
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        match &mut self.histograms {
            Some(histograms) => record(histograms, value),
            None if self.exact.len() < EXACT_VALUES => self.exact.push(value),
            None => {
                let mut histograms = Box::new([new_histogram(), new_histogram()]);
                for v in self.exact.drain(..).chain([value]) {
                    record(&mut histograms, v);
                }
                self.exact = Vec::new();
                self.histograms = Some(histograms);
            }
        }
    }

    /// Values seen so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The values of these 0-based ranks (ascending by value): exact while
    /// every value is kept, from the histogram past that.
    pub fn at_ranks(&self, ranks: &[u64]) -> Vec<f64> {
        match &self.histograms {
            Some(histograms) => ranks
                .iter()
                .map(|r| value_at_rank(histograms, *r))
                .collect(),
            None => {
                let mut sorted = self.exact.clone();
                sorted.sort_by(|a, b| a.total_cmp(b));
                ranks.iter().map(|r| sorted[*r as usize]).collect()
            }
        }
    }

    /// True while every value is kept (percentiles are exact).
    pub fn is_exact(&self) -> bool {
        self.histograms.is_none()
    }

    /// The statistics so far; `None` before the first value.
    pub fn stats(&self) -> Option<Stats> {
        if self.count == 0 {
            return None;
        }
        let mut sorted = Vec::new();
        if self.histograms.is_none() {
            sorted = self.exact.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
        }
        let percentile = |p: f64| match &self.histograms {
            None => percentile_of_sorted(&sorted, p),
            Some(histograms) => interpolate(self.count, p, |rank| value_at_rank(histograms, rank)),
        };
        Some(Stats {
            count: self.count,
            mean: self.mean,
            std: (self.m2 / self.count as f64).max(0.0).sqrt(),
            min: self.min,
            p50: percentile(50.0),
            p90: percentile(90.0),
            p95: percentile(95.0),
            p99: percentile(99.0),
            max: self.max,
        })
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits is a valid histogram")
}

fn record(histograms: &mut [Histogram<u64>; 2], value: f64) {
    let side = usize::from(value < 0.0);
    let steps = (value.abs() * HISTOGRAM_SCALE)
        .round()
        .min(u64::MAX as f64 / 4.0) as u64;
    histograms[side]
        .record(steps)
        .expect("auto-resizing histograms take any value");
}

/// The value of rank `rank` (0-based, ascending) across both histograms.
fn value_at_rank(histograms: &[Histogram<u64>; 2], rank: u64) -> f64 {
    let [positive, negative] = histograms;
    let negatives = negative.len();
    let (histogram, sign, mut left) = if rank < negatives {
        // Ascending values are descending negative magnitudes.
        (negative, -1.0, negatives - 1 - rank)
    } else {
        (positive, 1.0, rank - negatives)
    };
    for bucket in histogram.iter_recorded() {
        if left < bucket.count_at_value() {
            let steps = histogram.median_equivalent(bucket.value_iterated_to());
            return sign * steps as f64 / HISTOGRAM_SCALE;
        }
        left -= bucket.count_at_value();
    }
    f64::NAN
}

/// Percentile `p` of `count` values by linear interpolation between the two
/// order statistics around its rank, as numpy does.
fn interpolate(count: u64, p: f64, at_rank: impl Fn(u64) -> f64) -> f64 {
    let rank = (p / 100.0).clamp(0.0, 1.0) * (count - 1) as f64;
    let (low, high) = (rank.floor() as u64, rank.ceil() as u64);
    let (a, b) = (at_rank(low), at_rank(high));
    a + (b - a) * (rank - low as f64)
}

/// Percentile `p` (0..=100) of already sorted values, linearly interpolated.
pub fn percentile_of_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    interpolate(sorted.len() as u64, p, |rank| sorted[rank as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], [50, 90, 99]) = [2.5, 3.7, 3.97]
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.count, 4);
        assert!((s.p50 - 2.5).abs() < 1e-12);
        assert!((s.p90 - 3.7).abs() < 1e-12);
        assert!((s.p99 - 3.97).abs() < 1e-12);
        assert_eq!((s.min, s.max), (1.0, 4.0));
        assert!((s.mean - 2.5).abs() < 1e-12);
        assert!((s.std - 1.25f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn empty_and_non_finite_values() {
        assert!(Stats::of(&[]).is_none());
        assert!(Stats::of(&[f64::NAN]).is_none());
        assert_eq!(Stats::of(&[7.0, f64::INFINITY]).unwrap().count, 1);
    }

    #[test]
    fn past_the_exact_bound_percentiles_stay_within_a_tenth_of_a_percent() {
        let values: Vec<f64> = (0..EXACT_VALUES as u64 * 2)
            .map(|i| ((i * 7919) % 100_003) as f64 / 10.0 - 500.0)
            .collect();
        let mut distribution = Distribution::default();
        values.iter().for_each(|v| distribution.observe(*v));
        assert!(!distribution.is_exact());
        let streamed = distribution.stats().unwrap();
        let mut sorted = values.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        for (p, got) in [
            (50.0, streamed.p50),
            (90.0, streamed.p90),
            (99.0, streamed.p99),
        ] {
            let exact = percentile_of_sorted(&sorted, p);
            assert!(
                (got - exact).abs() <= exact.abs() * 1e-3 + 1e-3,
                "p{p}: {got} vs {exact}"
            );
        }
        assert_eq!(streamed.count, values.len() as u64);
        assert_eq!(
            (streamed.min, streamed.max),
            (sorted[0], sorted[sorted.len() - 1])
        );
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((streamed.mean - mean).abs() < 1e-9);
    }
}
