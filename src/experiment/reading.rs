//! The plain-language reading of an experiment, case by case: where a
//! climbing axis saturated and what the server-side split says about why
//! (the queue's share of TTFT, the running batch the server reported), what
//! a search found and how sure it is, which setting did best; and the
//! console table of every point.

use super::results::{param_text as text, Group, Status};
use super::state::{CaseState, ExperimentState};
use std::fmt::Write as _;

/// One or more sentences per case.
pub fn read(state: &ExperimentState) -> Vec<String> {
    let mut lines = Vec::new();
    for case in &state.cases {
        let groups: Vec<&Group> = state
            .groups
            .iter()
            .filter(|g| g.case == case.index)
            .collect();
        let failed = state
            .points
            .iter()
            .filter(|p| p.spec.case == case.index && p.status == Status::Failed)
            .count();
        let mut line = format!("{}: ", case.name);
        if !case.searches.is_empty() {
            search_reading(case, &mut line);
        } else if !case.saturation.is_empty() {
            saturation_reading(case, &groups, &mut line);
        } else if let Some(best) = best_of(&groups) {
            line.push_str(&best);
        } else {
            line.push_str("no point finished.");
        }
        if failed > 0 {
            let _ = write!(
                line,
                " {failed} point(s) failed (see experiment.json for why)."
            );
        }
        lines.push(line);
    }
    lines
}

fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

fn saturation_reading(case: &CaseState, groups: &[&Group], line: &mut String) {
    for verdict in &case.saturation {
        let on_line: Vec<&&Group> = groups
            .iter()
            .filter(|g| verdict.outer.iter().all(|(k, v)| g.axes.get(k) == Some(v)))
            .collect();
        let at = text(&verdict.at);
        let axis = &verdict.axis;
        let _ = write!(
            line,
            "saturated at {axis}={at} ({}: {}).",
            verdict.rule.replace('_', " "),
            verdict.detail
        );
        let (Some(first), Some(last)) = (on_line.first(), on_line.last()) else {
            continue;
        };
        if let (Some(q0), Some(q1)) = (
            first.value("ttft_share.queue"),
            last.value("ttft_share.queue"),
        ) {
            let _ = write!(
                line,
                " From {axis}={} to {axis}={at} the queue's share of TTFT went from {} to {}",
                first.axes.get(axis).map(text).unwrap_or_default(),
                pct(q0),
                pct(q1)
            );
            if let Some(running) = last.value("server_running_max") {
                let _ = write!(line, " (the server reported at most {running:.0} running)");
            }
            line.push_str(if q1 > 0.5 {
                ": requests wait for a batch slot, the batch is full."
            } else {
                "."
            });
        }
        if !verdict.skipped.is_empty() {
            let skipped: Vec<String> = verdict.skipped.iter().map(text).collect();
            let _ = write!(line, " Not run: {axis}={}.", skipped.join(", "));
        }
    }
}

fn search_reading(case: &CaseState, line: &mut String) {
    for search in &case.searches {
        let t = &search.trace;
        let axis = &t.axis;
        let slo = search.slo.join(", ");
        match (t.highest_pass, t.lowest_fail) {
            (Some(pass), Some(fail)) => {
                let _ = write!(line, "the highest {axis} meeting {slo} is {pass} (lowest failing {fail}; precision {}).", t.precision);
            }
            (Some(pass), None) => {
                let _ = write!(line, "every {axis} up to the search's max ({pass}) met {slo}: the capacity is at least that.");
            }
            (None, _) => {
                let _ = write!(line, "no {axis} tried met {slo}.");
            }
        }
        let _ = write!(line, " {} probes", t.probes.len());
        line.push_str(if t.monotone_verdict && t.monotone_margin {
            "; the SLO margin fell steadily as load rose."
        } else if t.monotone_verdict {
            "; verdicts were monotone, margins were not (noise near the limit)."
        } else {
            "; a higher value passed where a lower one failed: noisy, re-run with repeats."
        });
        if !search.axes.is_empty() {
            let axes: Vec<String> = search
                .axes
                .iter()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect();
            let _ = write!(line, " ({})", axes.join(", "));
        }
    }
}

/// Which combination gave the most output throughput, against the least.
fn best_of(groups: &[&Group]) -> Option<String> {
    let scored: Vec<(&&Group, f64)> = groups
        .iter()
        .filter_map(|g| Some((g, g.value("output_throughput")?)))
        .collect();
    let best = scored.iter().max_by(|a, b| a.1.total_cmp(&b.1))?;
    let worst = scored.iter().min_by(|a, b| a.1.total_cmp(&b.1))?;
    let name = |g: &Group| {
        let axes: Vec<String> = g
            .axes
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect();
        if axes.is_empty() {
            "the point".to_string()
        } else {
            axes.join(", ")
        }
    };
    let mut out = format!(
        "most output throughput at {} ({:.1} tok/s",
        name(best.0),
        best.1
    );
    if let Some(ttft) = best.0.value("p99_ttft_ms") {
        let _ = write!(out, ", p99 TTFT {ttft:.1} ms");
    }
    out.push(')');
    if scored.len() > 1 && worst.1 > 0.0 {
        let _ = write!(
            out,
            ", {:.2}x that of {} ({:.1} tok/s",
            best.1 / worst.1,
            name(worst.0),
            worst.1
        );
        if let Some(ttft) = worst.0.value("p99_ttft_ms") {
            let _ = write!(out, ", p99 TTFT {ttft:.1} ms");
        }
        out.push(')');
    }
    out.push('.');
    Some(out)
}

/// Every point group as a console table.
pub fn table(state: &ExperimentState) -> String {
    let mut out = format!(
        "\n{:<44} {:>10} {:>10} {:>10} {:>10} {:>8} {:>7}\n",
        "point", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p99", "queue %", "errors"
    );
    let cell = |g: &Group, name: &str, scale: f64| {
        g.value(name)
            .map(|v| format!("{:.1}", v * scale))
            .unwrap_or_else(|| "-".into())
    };
    for g in &state.groups {
        let _ = writeln!(
            out,
            "{:<44} {:>10} {:>10} {:>10} {:>10} {:>8} {:>7}",
            truncate(&g.label, 44),
            cell(g, "output_throughput", 1.0),
            cell(g, "median_ttft_ms", 1.0),
            cell(g, "p99_ttft_ms", 1.0),
            cell(g, "p99_tpot_ms", 1.0),
            cell(g, "ttft_share.queue", 100.0),
            cell(g, "failed", 1.0),
        );
    }
    out
}

fn truncate(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        text.chars()
            .take(n - 1)
            .chain(std::iter::once('…'))
            .collect()
    }
}
