//! `compare --fail-on 'p99_ttft_ms:+10%,output_throughput:-5%'`: a
//! regression gate for CI. Each limit names a metric (the experiment metric
//! names, `docs/experiments.md`) and how far it may move against the
//! baseline: `+10%` (may rise at most 10%), `-5%` (may fall at most 5%), or
//! an amount in the metric's unit (`+20`). When both sides have repeats, a
//! move past its limit that stays inside the two sides' 95% intervals is
//! reported as noise, not a regression.

use crate::experiment::metrics;
use serde_json::Value;

/// One limit of `--fail-on`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub metric: String,
    /// The metric may rise (true) or fall (false) by at most `amount`.
    pub rise: bool,
    pub amount: f64,
    pub percent: bool,
    pub text: String,
}

/// A figure and, when repeats exist, the half-width of its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    pub value: f64,
    pub noise: Option<f64>,
}

/// A metric that moved past its limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    pub place: String,
    pub limit: String,
    pub base: f64,
    pub new: f64,
    /// Past the limit but within the repeats' noise: not a failure.
    pub within_noise: bool,
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let change = if self.base != 0.0 {
            format!(" ({:+.1}%)", (self.new - self.base) / self.base * 100.0)
        } else {
            String::new()
        };
        write!(
            f,
            "{}: {} moved {:.3} -> {:.3}{change}, past `{}`",
            self.place,
            self.limit.split(':').next().unwrap_or(""),
            self.base,
            self.new,
            self.limit
        )?;
        if self.within_noise {
            f.write_str(" but within the noise between repeats")?;
        }
        Ok(())
    }
}

/// Parses `metric:+10%,metric:-5%`.
pub fn parse(spec: &str) -> anyhow::Result<Vec<Limit>> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (metric, change) = item.split_once(':').ok_or_else(|| {
                anyhow::anyhow!("--fail-on `{item}` must look like `p99_ttft_ms:+10%`")
            })?;
            let metric = metric.trim();
            if !metrics::is_known(metric) {
                let known = metrics::known();
                let hint =
                    crate::experiment::suggest::hint(metric, known.iter().map(String::as_str));
                anyhow::bail!("--fail-on: unknown metric `{metric}`{hint}");
            }
            let change = change.trim();
            let rise = match change.chars().next() {
                Some('+') => true,
                Some('-') => false,
                _ => anyhow::bail!(
                    "--fail-on `{item}`: say which way, `+10%` (may rise) or `-5%` (may fall)"
                ),
            };
            let number = change[1..].trim_end_matches('%');
            let amount: f64 = number
                .parse()
                .ok()
                .filter(|a: &f64| a.is_finite() && *a >= 0.0)
                .ok_or_else(|| {
                    anyhow::anyhow!("--fail-on `{item}`: `{}` is not an amount", &change[1..])
                })?;
            Ok(Limit {
                metric: metric.to_string(),
                rise,
                amount,
                percent: change.ends_with('%'),
                text: item.to_string(),
            })
        })
        .collect()
}

impl Limit {
    /// The breach at `place`, if the metric moved past this limit.
    pub fn check(&self, place: &str, base: Measured, new: Measured) -> Option<Breach> {
        let moved = if self.rise {
            new.value - base.value
        } else {
            base.value - new.value
        };
        let allowed = if self.percent {
            base.value.abs() * self.amount / 100.0
        } else {
            self.amount
        };
        if moved <= allowed {
            return None;
        }
        let within_noise = match (base.noise, new.noise) {
            (Some(a), Some(b)) => (new.value - base.value).abs() <= a + b,
            _ => false,
        };
        Some(Breach {
            place: place.to_string(),
            limit: self.text.clone(),
            base: base.value,
            new: new.value,
            within_noise,
        })
    }
}

/// A metric of a run's `summary.json` (or a `vllm bench serve` result) by name.
pub fn run_value(values: &Value, name: &str) -> Option<f64> {
    let is_tracebench = values["schema"]
        .as_str()
        .is_some_and(|s| s.starts_with("tracebench.summary"));
    if is_tracebench {
        if let Ok(summary) = serde_json::from_value::<crate::analysis::Summary>(values.clone()) {
            return metrics::value(&summary, name);
        }
    }
    values[name].as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_catch_moves_past_them() {
        let limits = parse("p99_ttft_ms:+10%, output_throughput:-5%").unwrap();
        let (ttft, throughput) = (&limits[0], &limits[1]);
        let m = |value| Measured { value, noise: None };
        assert!(ttft.check("x", m(100.0), m(109.0)).is_none());
        assert!(ttft.check("x", m(100.0), m(111.0)).is_some());
        assert!(
            ttft.check("x", m(100.0), m(50.0)).is_none(),
            "faster is fine"
        );
        assert!(throughput.check("x", m(100.0), m(94.0)).is_some());
        assert!(throughput.check("x", m(100.0), m(120.0)).is_none());
        let noisy = |value| Measured {
            value,
            noise: Some(8.0),
        };
        assert!(
            ttft.check("x", noisy(100.0), noisy(112.0))
                .unwrap()
                .within_noise
        );
        assert!(
            !ttft
                .check("x", noisy(100.0), noisy(130.0))
                .unwrap()
                .within_noise
        );
        assert!(parse("p99_ttft_ms:10%").is_err());
        assert!(parse("p99_ttf_ms:+10%")
            .unwrap_err()
            .to_string()
            .contains("did you mean"));
    }
}
