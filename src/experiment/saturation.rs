//! When a climbing grid axis has saturated the server, checked after each
//! of its values, in this order:
//! - **errors**: more than `error_rate` of the requests failed;
//! - **queue growth**: the server's queue time kept growing through the
//!   point (median of the last quarter of requests over 100 ms above, and
//!   more than twice, the first quarter's): arrivals outpace service;
//! - **throughput plateau**: output throughput rose by less than
//!   `throughput_gain` over the previous value while the median TTFT rose
//!   by more than `ttft_rise`: more load only waits longer.

use super::file::Saturation;
use super::results::Group;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Queue growth below this is noise, whatever the ratio.
const QUEUE_GROWTH_MS: f64 = 100.0;

/// Where and why climbing stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saturated {
    /// The other axes' values of the line that was climbed.
    pub outer: BTreeMap<String, Value>,
    pub axis: String,
    /// The axis value at which the rule fired.
    pub at: Value,
    /// `errors`, `queue_growth` or `throughput_plateau`.
    pub rule: String,
    pub detail: String,
    /// The higher values not run.
    pub skipped: Vec<Value>,
}

/// The rule that fires at `current` (after `previous` on the same line), if any.
/// `queue` is (first quarter, last quarter) median queue ms, when spans joined.
pub fn check(
    rule: &Saturation,
    previous: Option<&Group>,
    current: &Group,
    queue: Option<(f64, f64)>,
) -> Option<(&'static str, String)> {
    if let Some(errors) = current.value("error_rate").filter(|e| *e > rule.error_rate) {
        return Some((
            "errors",
            format!(
                "{:.1}% of requests failed (limit {:.1}%)",
                errors * 100.0,
                rule.error_rate * 100.0
            ),
        ));
    }
    if let Some((early, late)) = queue.filter(|_| rule.queue_growth) {
        if late - early > QUEUE_GROWTH_MS && late > 2.0 * early {
            return Some((
                "queue_growth",
                format!(
                    "the server's queue time grew through the point: median {early:.0} ms in the first quarter of requests, {late:.0} ms in the last"
                ),
            ));
        }
    }
    let previous = previous?;
    let (tp0, tp1) = (
        previous.value("output_throughput")?,
        current.value("output_throughput")?,
    );
    let (ttft0, ttft1) = (
        previous.value("median_ttft_ms")?,
        current.value("median_ttft_ms")?,
    );
    if tp0 <= 0.0 || ttft0 <= 0.0 {
        return None;
    }
    let (gain, rise) = ((tp1 - tp0) / tp0, (ttft1 - ttft0) / ttft0);
    (gain < rule.throughput_gain && rise > rule.ttft_rise).then(|| {
        (
            "throughput_plateau",
            format!(
                "output throughput {tp0:.1} -> {tp1:.1} tok/s ({:+.1}%, limit +{:.0}%) while median TTFT {ttft0:.1} -> {ttft1:.1} ms ({:+.0}%)",
                gain * 100.0,
                rule.throughput_gain * 100.0,
                rise * 100.0
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::results::Spread;

    fn group(throughput: f64, ttft: f64, errors: f64) -> Group {
        let spread = |v: f64| Spread {
            n: 1,
            mean: Some(v),
            std: 0.0,
            min: v,
            max: v,
            ci95: None,
            pooled: None,
        };
        Group {
            case: 0,
            label: String::new(),
            axes: BTreeMap::new(),
            points: Vec::new(),
            metrics: [
                ("output_throughput".to_string(), spread(throughput)),
                ("median_ttft_ms".to_string(), spread(ttft)),
                ("error_rate".to_string(), spread(errors)),
            ]
            .into(),
        }
    }

    fn rule() -> Saturation {
        serde_saphyr::from_str("{}").unwrap()
    }

    #[test]
    fn each_rule_fires_on_its_own_evidence() {
        let rule = rule();
        let (a, b) = (group(100.0, 50.0, 0.0), group(180.0, 55.0, 0.0));
        assert_eq!(check(&rule, Some(&a), &b, None), None, "still scaling");
        let flat = group(102.0, 90.0, 0.0);
        assert_eq!(
            check(&rule, Some(&a), &flat, None).unwrap().0,
            "throughput_plateau"
        );
        assert_eq!(
            check(&rule, None, &group(1.0, 1.0, 0.2), None).unwrap().0,
            "errors"
        );
        assert_eq!(
            check(&rule, None, &b, Some((20.0, 900.0))).unwrap().0,
            "queue_growth"
        );
        assert_eq!(
            check(&rule, None, &b, Some((20.0, 60.0))),
            None,
            "small growth is noise"
        );
    }
}
