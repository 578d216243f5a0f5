//! The SLO capacity search: the highest rate or concurrency at which every
//! constraint holds. Bracket upwards from `start` (times `factor`, up to
//! `max`; downwards when `start` already fails), then bisect between the
//! highest passing and the lowest failing value until they are `precision`
//! apart. A probe whose tightest margin is within `confirm_margin` of its
//! limit is tried again, and its verdict is the one two trials agree on.

use super::plan::SearchPlan;
use serde::{Deserialize, Serialize};

/// Most trials of one probe (two agreeing of three).
pub const MAX_TRIALS: usize = 3;

/// One value tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub value: f64,
    pub pass: bool,
    /// The tightest constraint's margin, averaged over the deciding trials.
    pub margin: f64,
    /// The trials' point ids.
    pub points: Vec<String>,
}

/// A search's course and result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchTrace {
    pub axis: String,
    pub probes: Vec<Probe>,
    pub highest_pass: Option<f64>,
    pub lowest_fail: Option<f64>,
    pub precision: f64,
    /// Every value passed, up to `max`: the capacity is at least `max`.
    pub capped_at_max: bool,
    /// No probe passed, down to the smallest value tried.
    pub none_passed: bool,
    /// Margins never rose as the load rose (probes sorted by value).
    pub monotone_margin: bool,
    /// No passing value above a failing one.
    pub monotone_verdict: bool,
}

/// The verdict of a probe's trials (pass, margin), once they decide it.
pub fn decided(trials: &[(bool, f64)], confirm_margin: f64) -> Option<(bool, f64)> {
    let (first_pass, first_margin) = *trials.first()?;
    if trials.len() == 1 {
        return (first_margin.abs() >= confirm_margin).then_some((first_pass, first_margin));
    }
    for verdict in [true, false] {
        let agreeing: Vec<f64> = trials
            .iter()
            .filter(|t| t.0 == verdict)
            .map(|t| t.1)
            .collect();
        if agreeing.len() >= 2 {
            return Some((
                verdict,
                agreeing.iter().sum::<f64>() / agreeing.len() as f64,
            ));
        }
    }
    (trials.len() >= MAX_TRIALS).then_some((first_pass, first_margin))
}

/// The search as a sequence of probes: ask [`Search::next`], run it, tell [`Search::record`].
pub struct Search {
    plan: SearchPlan,
    trace: SearchTrace,
    going_down: bool,
    done: bool,
}

impl Search {
    pub fn new(plan: &SearchPlan) -> Self {
        Self {
            trace: SearchTrace {
                axis: plan.axis.value.clone(),
                precision: plan.precision,
                ..SearchTrace::default()
            },
            plan: plan.clone(),
            going_down: false,
            done: false,
        }
    }

    fn round(&self, v: f64) -> f64 {
        if self.plan.integer() {
            v.round().max(1.0)
        } else {
            v
        }
    }

    fn tried(&self, v: f64) -> bool {
        self.trace.probes.iter().any(|p| p.value == v)
    }

    /// The next value to probe, or `None` when the search is over.
    pub fn next(&self) -> Option<f64> {
        if self.done {
            return None;
        }
        let Some(last) = self.trace.probes.last() else {
            return Some(self.round(self.plan.start));
        };
        let (lo, hi) = (self.trace.highest_pass, self.trace.lowest_fail);
        let next = match (lo, hi) {
            (Some(_), None) => {
                let up = self.round((last.value * self.plan.factor).min(self.plan.max));
                let up = if up <= last.value {
                    last.value + 1.0
                } else {
                    up
                };
                (last.value < self.plan.max).then_some(up.min(self.plan.max))
            }
            (None, Some(_)) => {
                let down = self.round(last.value / self.plan.factor);
                let floor = if self.plan.integer() {
                    1.0
                } else {
                    self.plan.precision
                };
                (down >= floor && down < last.value).then_some(down)
            }
            (Some(lo), Some(hi)) if hi - lo > self.plan.precision => {
                let mid = if self.plan.integer() {
                    ((lo + hi) / 2.0).floor()
                } else {
                    (lo + hi) / 2.0
                };
                (mid > lo && mid < hi).then_some(mid)
            }
            _ => None,
        };
        next.filter(|v| !self.tried(*v))
    }

    /// Takes a probe's verdict.
    pub fn record(&mut self, probe: Probe) {
        let v = probe.value;
        if probe.pass {
            self.trace.highest_pass = Some(self.trace.highest_pass.map_or(v, |lo| lo.max(v)));
            if self.going_down {
                self.going_down = false;
            }
        } else {
            self.trace.lowest_fail = Some(self.trace.lowest_fail.map_or(v, |hi| hi.min(v)));
            if self.trace.highest_pass.is_none() {
                self.going_down = true;
            }
        }
        self.trace.probes.push(probe);
        if self.next().is_none() {
            self.done = true;
        }
    }

    /// The course of the search, with its verdicts on monotonicity.
    pub fn finish(mut self) -> SearchTrace {
        let mut sorted = self.trace.probes.clone();
        sorted.sort_by(|a, b| a.value.total_cmp(&b.value));
        self.trace.monotone_margin = sorted.windows(2).all(|w| w[1].margin <= w[0].margin);
        self.trace.monotone_verdict = sorted.windows(2).all(|w| w[0].pass || !w[1].pass);
        self.trace.capped_at_max = self.trace.lowest_fail.is_none()
            && self.trace.highest_pass == Some(self.round(self.plan.max));
        self.trace.none_passed = self.trace.highest_pass.is_none();
        self.trace
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::file::At;

    fn plan(axis: &str, start: f64, max: f64, precision: f64) -> SearchPlan {
        let at: At<String> = serde_saphyr::from_str(&format!("\"{axis}\"")).unwrap();
        SearchPlan {
            axis: at,
            start,
            max,
            factor: 2.0,
            precision,
            slo: Vec::new(),
            confirm_margin: 0.1,
        }
    }

    /// Runs a search against a known capacity; returns the trace.
    fn search(plan: &SearchPlan, capacity: f64) -> SearchTrace {
        let mut search = Search::new(plan);
        while let Some(v) = search.next() {
            let margin = (capacity - v) / capacity;
            search.record(Probe {
                value: v,
                pass: v <= capacity,
                margin,
                points: Vec::new(),
            });
        }
        search.finish()
    }

    #[test]
    fn finds_an_integer_capacity_exactly() {
        for capacity in [1.0, 4.0, 5.0, 13.0, 64.0] {
            let trace = search(&plan("concurrency", 2.0, 64.0, 1.0), capacity);
            if capacity < 2.0 {
                assert_eq!(trace.highest_pass, Some(1.0));
            } else {
                assert_eq!(trace.highest_pass, Some(capacity), "{trace:?}");
            }
            if capacity < 64.0 {
                assert_eq!(trace.lowest_fail, Some(trace.highest_pass.unwrap() + 1.0));
            } else {
                assert!(trace.capped_at_max);
            }
            assert!(trace.monotone_margin && trace.monotone_verdict);
        }
    }

    #[test]
    fn finds_a_rate_within_precision() {
        let trace = search(&plan("rate", 1.0, 100.0, 0.25), 7.3);
        let (lo, hi) = (trace.highest_pass.unwrap(), trace.lowest_fail.unwrap());
        assert!(lo <= 7.3 && hi > 7.3 && hi - lo <= 0.25, "{lo} {hi}");
        let none = search(&plan("rate", 1.0, 100.0, 0.25), 0.1);
        assert!(none.none_passed);
    }

    #[test]
    fn close_calls_need_two_agreeing_trials() {
        assert_eq!(decided(&[(true, 0.5)], 0.1), Some((true, 0.5)));
        assert_eq!(decided(&[(true, 0.05)], 0.1), None);
        assert_eq!(decided(&[(true, 0.05), (false, -0.02)], 0.1), None);
        assert_eq!(
            decided(&[(true, 0.05), (false, -0.02), (false, -0.04)], 0.1),
            Some((false, -0.03))
        );
        assert_eq!(
            decided(&[(true, 0.05), (true, 0.07)], 0.1).map(|d| d.0),
            Some(true)
        );
    }
}
