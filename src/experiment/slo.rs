//! SLO constraints of a capacity search: `METRIC OP LIMIT`, e.g.
//! `p99_ttft_ms <= 500ms`, `p99_tpot_ms < 50`, `goodput_fraction >= 95%`,
//! `error_rate < 1%`. A constraint's margin is how far inside its limit a
//! run is, as a fraction of the limit: positive passes, negative fails.

use super::metrics;
use crate::analysis::Summary;
use serde::Serialize;

/// Which side of the limit passes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Op {
    #[serde(rename = "<=")]
    AtMost,
    #[serde(rename = "<")]
    Below,
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = ">")]
    Above,
}

/// One SLO.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Constraint {
    pub metric: String,
    pub op: Op,
    pub limit: f64,
    pub text: String,
}

/// A constraint judged on one run.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Judged {
    pub constraint: String,
    pub value: Option<f64>,
    pub pass: bool,
    /// (limit - value) / limit for upper limits, the reverse for lower ones.
    pub margin: f64,
}

impl Constraint {
    /// Parses `METRIC OP LIMIT`; the error says what was wrong.
    pub fn parse(text: &str) -> Result<Constraint, String> {
        let ops = [
            ("<=", Op::AtMost),
            (">=", Op::AtLeast),
            ("<", Op::Below),
            (">", Op::Above),
        ];
        let (at, symbol, op) = ops
            .iter()
            .filter_map(|(symbol, op)| text.find(symbol).map(|at| (at, *symbol, *op)))
            .min_by_key(|(at, symbol, _)| (*at, std::cmp::Reverse(symbol.len())))
            .ok_or_else(|| format!("`{text}` needs a comparison: METRIC <= LIMIT (or <, >=, >)"))?;
        let metric = text[..at].trim().to_string();
        let limit_text = text[at + symbol.len()..].trim();
        if !metrics::is_known(&metric) {
            let known = metrics::known();
            let hint = super::suggest::hint(&metric, known.iter().map(String::as_str));
            return Err(format!("unknown metric `{metric}`{hint}"));
        }
        let limit = parse_limit(&metric, limit_text)?;
        Ok(Constraint {
            metric,
            op,
            limit,
            text: text.trim().to_string(),
        })
    }

    /// Judges a run: a metric the run lacks fails (with margin -1).
    pub fn judge(&self, summary: &Summary) -> Judged {
        let value = metrics::value(summary, &self.metric);
        let (pass, margin) = match value {
            None => (false, -1.0),
            Some(v) => {
                let pass = match self.op {
                    Op::AtMost => v <= self.limit,
                    Op::Below => v < self.limit,
                    Op::AtLeast => v >= self.limit,
                    Op::Above => v > self.limit,
                };
                let scale = self.limit.abs().max(f64::EPSILON);
                let margin = match self.op {
                    Op::AtMost | Op::Below => (self.limit - v) / scale,
                    Op::AtLeast | Op::Above => (v - self.limit) / scale,
                };
                (pass, margin)
            }
        };
        Judged {
            constraint: self.text.clone(),
            value,
            pass,
            margin,
        }
    }
}

/// A limit: a number, `95%`, or a duration (`500ms`, `2s`) for a `_ms` metric.
fn parse_limit(metric: &str, text: &str) -> Result<f64, String> {
    if let Some(percent) = text.strip_suffix('%') {
        return percent
            .trim()
            .parse::<f64>()
            .map(|p| p / 100.0)
            .map_err(|_| format!("`{text}` is not a percentage"));
    }
    if let Ok(number) = text.parse::<f64>() {
        return Ok(number);
    }
    if metric.ends_with("_ms") {
        return crate::units::parse_duration(text)
            .map(crate::units::as_ms)
            .map_err(|e| e.0);
    }
    Err(format!("`{text}` is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Stats;

    #[test]
    fn constraints_parse_and_judge() {
        let c = Constraint::parse("p99_ttft_ms <= 500ms").unwrap();
        assert_eq!((c.op, c.limit), (Op::AtMost, 500.0));
        assert_eq!(Constraint::parse("p99_ttft_ms<=0.5s").unwrap().limit, 500.0);
        assert_eq!(
            Constraint::parse("goodput_fraction >= 95%").unwrap().limit,
            0.95
        );
        assert_eq!(
            Constraint::parse("error_rate < 0.01").unwrap().op,
            Op::Below
        );
        let mut summary = Summary::default();
        let ttft = Stats {
            p99: 400.0,
            ..Stats::default()
        };
        summary.metrics.insert("ttft_ms".into(), ttft);
        let judged = c.judge(&summary);
        assert!(judged.pass);
        assert!((judged.margin - 0.2).abs() < 1e-9);
        let tight = Constraint::parse("p99_ttft_ms < 300")
            .unwrap()
            .judge(&summary);
        assert!(!tight.pass && tight.margin < 0.0);
    }

    #[test]
    fn bad_constraints_say_why() {
        assert!(Constraint::parse("p99_ttft_ms 500")
            .unwrap_err()
            .contains("comparison"));
        let err = Constraint::parse("p99_ttf_ms <= 500").unwrap_err();
        assert!(err.contains("did you mean `p99_ttft_ms`"), "{err}");
        assert!(Constraint::parse("p99_ttft_ms <= fast").is_err());
    }
}
