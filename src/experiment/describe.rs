//! The plan in words: what `tracebench experiment` prints before it runs
//! (cases, points, the bound on a search's probes, what can be said of the
//! duration), and every point's resolved `tracebench run` command for
//! `--dry-run`, and the dashboard's lines while it runs.

use super::plan::{self, CasePlan, Experiment, Settings};
use super::point::Point;
use super::results::{param_text, Group};
use super::search;
use super::state::ExperimentState;

/// The plan in a few lines, with what can be said of its duration.
pub fn describe(experiment: &Experiment) -> String {
    let mut out = format!(
        "experiment {} ({})\n",
        experiment.name,
        experiment.path.display()
    );
    let mut known_s = 0.0;
    let mut unknown = 0usize;
    for case in &experiment.cases {
        let runs = case.combos.len() * case.repeats as usize;
        let axes = if case.axes.is_empty() {
            "one point".to_string()
        } else {
            format!("{} over {}", case.combos.len(), case.axes.join(" × "))
        };
        let shape = match (&case.search, &case.saturation) {
            (Some(s), _) => format!(
                "search of {} from {} (×{}) up to {} to within {}, for {}; {} probe runs at most per combination",
                s.axis.value,
                s.start,
                s.factor,
                s.max,
                s.precision,
                s.slo.iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join(", "),
                probe_bound(s) * search::MAX_TRIALS * case.repeats as usize,
            ),
            (None, Some((axis, _))) => format!("{runs} runs at most (climbing {axis} until saturation)"),
            (None, None) => format!("{runs} runs"),
        };
        out.push_str(&format!(
            "  case {} `{}` on model `{}`: {axes}, {} repeat(s); {shape}\n",
            case.index + 1,
            case.name,
            case.alias,
            case.repeats
        ));
        match case.run_duration() {
            Some(d) => known_s += d * runs as f64,
            None => unknown += runs,
        }
    }
    out.push_str(&format!(
        "  estimated duration: at least {}{}\n",
        humantime::format_duration(std::time::Duration::from_secs(known_s as u64)),
        if unknown > 0 {
            format!(" plus {unknown} runs stopped by request count (timed as they run)")
        } else {
            String::new()
        }
    ));
    out
}

/// Most probes a search can make: bracketing steps plus bisection steps.
fn probe_bound(s: &plan::SearchPlan) -> usize {
    let up = ((s.max / s.start).ln() / s.factor.ln()).ceil().max(0.0) as usize + 1;
    let width = (s.max - s.start).max(s.precision);
    up + (width / s.precision).log2().ceil().max(0.0) as usize + 1
}

/// Every grid point's resolved parameters and launch command.
pub fn dry_run(experiment: &Experiment, settings: &Settings) -> anyhow::Result<String> {
    let mut out = String::new();
    for case in &experiment.cases {
        let alias = &experiment.models[&case.alias];
        for combo in &case.combos {
            let value = case.search.as_ref().map(|s| s.start);
            let point = case.point(&experiment.path, alias, settings, combo, value, 0, 0)?;
            out.push_str(&format!(
                "\n{} ({})\n  tracebench run {}\n",
                point.spec.id,
                point.spec.label,
                crate::commands::masked_command_line(point.argv.iter().cloned())
            ));
            if let Some(launch) = &point.launch {
                out.push_str(&format!("  server: {launch}\n"));
            }
        }
    }
    Ok(out)
}

/// The dashboard's lines: where the experiment is, and this case's curve so far.
pub fn live_context(
    experiment: &Experiment,
    state: &ExperimentState,
    case: &CasePlan,
    point: &Point,
) -> Vec<String> {
    let planned: usize = experiment
        .cases
        .iter()
        .filter(|c| c.search.is_none())
        .map(|c| c.combos.len() * c.repeats as usize)
        .sum();
    let searching = experiment.cases.iter().any(|c| c.search.is_some());
    let of = if searching {
        format!("{planned}+ (searches add probes)")
    } else {
        format!("at most {planned}")
    };
    let mut lines = vec![
        format!(
            "{} · point {} of {of} · case `{}` on `{}`",
            experiment.name,
            state.points.len() + 1,
            case.name,
            case.alias
        ),
        format!("now: {}", point.spec.label),
    ];
    let groups: Vec<&Group> = state
        .groups
        .iter()
        .filter(|g| g.case == case.index)
        .collect();
    let curve: Vec<String> = groups[groups.len().saturating_sub(6)..]
        .iter()
        .map(|g| {
            let axes: Vec<String> = g.axes.values().map(param_text).collect();
            let get = |name: &str| {
                g.metrics
                    .get(name)
                    .and_then(|s| s.value())
                    .unwrap_or(f64::NAN)
            };
            format!(
                "{}: {:.0} tok/s, p99 TTFT {:.0} ms",
                axes.join("/"),
                get("output_throughput"),
                get("p99_ttft_ms")
            )
        })
        .collect();
    if !curve.is_empty() {
        lines.push(format!("so far: {}", curve.join(" │ ")));
    }
    lines
}
