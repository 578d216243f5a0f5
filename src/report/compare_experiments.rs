//! `tracebench compare` of experiment folders: point by point (a point is
//! its case and axis values, its repeats together), each headline metric
//! against the first experiment's, and the `--fail-on` gate with the noise
//! between repeats taken into account.

use super::gate::{Breach, Limit, Measured};
use crate::experiment::results::{param_text, Group, Spread};
use crate::experiment::state::ExperimentState;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The metrics shown for each point.
const SHOWN: [&str; 8] = [
    "output_throughput",
    "median_ttft_ms",
    "p99_ttft_ms",
    "p99_tpot_ms",
    "p99_e2el_ms",
    "request_goodput",
    "error_rate",
    "ttft_share.queue",
];

/// The comparison's text and what moved past the `--fail-on` limits.
pub struct Compared {
    pub text: String,
    pub breaches: Vec<Breach>,
}

/// A point's key across experiments: its case's name and its axis values.
fn key(state: &ExperimentState, group: &Group) -> String {
    let case = state
        .cases
        .get(group.case)
        .map(|c| c.name.as_str())
        .unwrap_or("?");
    let axes: Vec<String> = group
        .axes
        .iter()
        .map(|(k, v)| format!("{k}={}", param_text(v)))
        .collect();
    format!("{case} {}", axes.join(" ")).trim_end().to_string()
}

/// Each point's last group (a search's later trials replace earlier ones), by key.
fn groups(state: &ExperimentState) -> Vec<(String, &Group)> {
    let mut out: Vec<(String, &Group)> = Vec::new();
    for group in &state.groups {
        let k = key(state, group);
        match out.iter_mut().find(|(existing, _)| *existing == k) {
            Some(slot) => slot.1 = group,
            None => out.push((k, group)),
        }
    }
    out
}

fn measured(spread: &Spread) -> Option<Measured> {
    let noise = (spread.n > 1).then(|| spread.ci95.unwrap_or((spread.max - spread.min) / 2.0));
    Some(Measured {
        value: spread.value()?,
        noise,
    })
}

/// Compares experiment folders against the first.
pub fn compare(dirs: &[PathBuf], limits: &[Limit]) -> anyhow::Result<Compared> {
    let states = dirs
        .iter()
        .map(|d| ExperimentState::read(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut text = String::new();
    for (i, (state, dir)) in states.iter().zip(dirs).enumerate() {
        let _ = writeln!(
            text,
            "[{}] {} ({}), {} points: {}",
            i + 1,
            state.experiment_id,
            state.name,
            state.points.len(),
            dir.display()
        );
    }
    let base = groups(&states[0]);
    let mut breaches = Vec::new();
    for (n, state) in states.iter().enumerate().skip(1) {
        let other = groups(state);
        for (k, base_group) in &base {
            let Some((_, group)) = other.iter().find(|(o, _)| o == k) else {
                let _ = writeln!(text, "\n{k}: only in [1]");
                continue;
            };
            let _ = writeln!(text, "\n{k}  ([1] -> [{}])", n + 1);
            for metric in SHOWN {
                let (Some(a), Some(b)) =
                    (base_group.metrics.get(metric), group.metrics.get(metric))
                else {
                    continue;
                };
                let (Some(va), Some(vb)) = (a.value(), b.value()) else {
                    continue;
                };
                let pct = if va != 0.0 {
                    format!(" ({:+.1}%)", (vb - va) / va * 100.0)
                } else {
                    String::new()
                };
                let noise = match (a.n > 1, b.n > 1) {
                    (true, true) => format!(
                        "  ±{:.2} / ±{:.2}",
                        measured(a).and_then(|m| m.noise).unwrap_or(0.0),
                        measured(b).and_then(|m| m.noise).unwrap_or(0.0)
                    ),
                    _ => String::new(),
                };
                let _ = writeln!(text, "  {metric:<22} {va:>12.2} -> {vb:>12.2}{pct}{noise}");
            }
            for limit in limits {
                let (Some(a), Some(b)) = (
                    base_group.metrics.get(&limit.metric).and_then(measured),
                    group.metrics.get(&limit.metric).and_then(measured),
                ) else {
                    continue;
                };
                breaches.extend(limit.check(&format!("[{}] {k}", n + 1), a, b));
            }
        }
        for (k, _) in other
            .iter()
            .filter(|(k, _)| !base.iter().any(|(b, _)| b == k))
        {
            let _ = writeln!(text, "\n{k}: only in [{}]", n + 1);
        }
    }
    Ok(Compared { text, breaches })
}
