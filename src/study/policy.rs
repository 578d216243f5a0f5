//! The idle-shutdown policy: from a cold start's time and the idle gaps of
//! a recorded run or an arrival trace, what shutting the server down after
//! 1, 3, 5 or 10 minutes idle (or never) would have cost, against the best
//! policy in hindsight, and the break-even idle time (the cold start's cost
//! over the idle cost per minute: shutting down after that long idle never
//! costs more than twice the best in hindsight).

use crate::report::run_folder::RunFolder;
use anyhow::Context;
use std::path::Path;

/// The fixed limits priced, minutes.
pub const LIMITS_MIN: [f64; 4] = [1.0, 3.0, 5.0, 10.0];

/// The idle gaps of a trace, and how long it spans.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaps {
    pub gaps_s: Vec<f64>,
    pub span_s: f64,
}

/// What one policy would have cost over the gaps.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub label: String,
    /// Server seconds paid while idle or starting.
    pub paid_s: f64,
    pub cold_starts: u64,
}

/// Reads a run folder's requests (busy from send to end) or an arrival trace
/// (one arrival per line: seconds, or JSON with `timestamp` in ms).
pub fn read_gaps(path: &Path) -> anyhow::Result<Gaps> {
    let mut busy = if path.is_dir() {
        run_intervals(path)?
    } else {
        arrival_intervals(path)?
    };
    anyhow::ensure!(
        !busy.is_empty(),
        "{}: no request or arrival in it",
        path.display()
    );
    Ok(gaps(&mut busy))
}

fn run_intervals(dir: &Path) -> anyhow::Result<Vec<(f64, f64)>> {
    let folder =
        RunFolder::open(dir).with_context(|| format!("{} as a run folder", dir.display()))?;
    let mut busy = Vec::new();
    for record in folder.records()?.flatten() {
        let sent = record.sent_unix_ns as f64 / 1e9;
        busy.push((sent, sent + record.e2e_ms.unwrap_or(0.0) / 1e3));
    }
    Ok(busy)
}

fn arrival_intervals(path: &Path) -> anyhow::Result<Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read arrival trace {}", path.display()))?;
    let mut busy = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = match line.trim().parse::<f64>() {
            Ok(seconds) => seconds,
            Err(_) => serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["timestamp"].as_f64())
                .map(|ms| ms / 1e3)
                .with_context(|| {
                    format!(
                        "{}:{}: neither seconds nor JSON with a `timestamp` (ms)",
                        path.display(),
                        n + 1
                    )
                })?,
        };
        busy.push((at, at));
    }
    Ok(busy)
}

/// Merges busy intervals; the gaps between them.
fn gaps(busy: &mut [(f64, f64)]) -> Gaps {
    busy.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut gaps_s = Vec::new();
    let mut end = busy[0].1;
    for &(start, stop) in busy.iter().skip(1) {
        if start > end {
            gaps_s.push(start - end);
        }
        end = end.max(stop);
    }
    Gaps {
        gaps_s,
        span_s: end - busy[0].0,
    }
}

/// Shut down after `limit_s` idle (`None`: never), over `gaps`.
pub fn price(label: &str, gaps: &[f64], limit_s: Option<f64>, cold_s: f64) -> Outcome {
    let (mut paid_s, mut cold_starts) = (0.0, 0);
    for &gap in gaps {
        match limit_s {
            Some(limit) if gap > limit => {
                paid_s += limit + cold_s;
                cold_starts += 1;
            }
            _ => paid_s += gap,
        }
    }
    Outcome {
        label: label.into(),
        paid_s,
        cold_starts,
    }
}

/// The best in hindsight: each gap idled through or shut down at once, whichever is cheaper.
pub fn hindsight(gaps: &[f64], cold_s: f64) -> Outcome {
    Outcome {
        label: "best in hindsight".into(),
        paid_s: gaps.iter().map(|g| g.min(cold_s)).sum(),
        cold_starts: gaps.iter().filter(|g| **g > cold_s).count() as u64,
    }
}

/// Every policy of the table: the fixed limits, the break-even limit, never, and hindsight.
pub fn table(gaps: &[f64], cold_s: f64) -> Vec<Outcome> {
    let mut all: Vec<Outcome> = LIMITS_MIN
        .iter()
        .map(|m| price(&format!("after {m} min"), gaps, Some(m * 60.0), cold_s))
        .collect();
    all.push(price(
        &format!("after {:.1} min (break-even)", cold_s / 60.0),
        gaps,
        Some(cold_s),
        cold_s,
    ));
    all.push(price("never", gaps, None, cold_s));
    all.push(hindsight(gaps, cold_s));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_priced_on_the_gaps() {
        // gaps of 30 s, 4 min and 20 min; a cold start of 60 s.
        let mut busy = vec![(0.0, 10.0), (40.0, 50.0), (290.0, 300.0), (1500.0, 1510.0)];
        let g = gaps(&mut busy);
        assert_eq!(g.gaps_s, vec![30.0, 240.0, 1200.0]);
        assert_eq!(g.span_s, 1510.0);
        let after3 = price("3", &g.gaps_s, Some(180.0), 60.0);
        assert_eq!(
            (after3.paid_s, after3.cold_starts),
            (30.0 + 240.0 + 240.0, 2)
        );
        let never = price("never", &g.gaps_s, None, 60.0);
        assert_eq!((never.paid_s, never.cold_starts), (1470.0, 0));
        let best = hindsight(&g.gaps_s, 60.0);
        assert_eq!((best.paid_s, best.cold_starts), (150.0, 2));
        // The break-even limit costs at most twice the best in hindsight.
        let even = price("even", &g.gaps_s, Some(60.0), 60.0);
        assert!(even.paid_s <= 2.0 * best.paid_s);
    }
}
