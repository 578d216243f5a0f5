//! The experiment's `report.html`: the reading, then per case a table of
//! every point (linking each point's own report) and curves over the climbed
//! axis: throughput, latency, goodput and SLO attainment with the SLO limits
//! drawn, the share of TTFT in network, frontend, queue and prefill (what
//! explains a knee), the Pareto front of per-user against total tokens/s,
//! errors, the server's gauges and GPU figures, and a search's probes.
//! Built from `experiment.json` alone; self-checked like the run report.

use super::chart::{line_chart, LineChart, Series, SERIES_COLORS};
use super::{close_page, esc, num, open_page};
use crate::experiment::results::{param_text as text, Group};
use crate::experiment::state::{CaseState, ExperimentState, Progress};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One chart of a case: id, title, y label, lines, fixed y range.
type Chart<'a> = (String, &'a str, &'a str, Vec<Series>, Option<(f64, f64)>);

/// Writes `dir/report.html` for the experiment and returns its path.
pub fn write_report(dir: &Path, state: &ExperimentState) -> anyhow::Result<PathBuf> {
    let path = dir.join("report.html");
    std::fs::write(&path, render(state))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// The whole page.
pub fn render(state: &ExperimentState) -> String {
    let mut page = String::with_capacity(64 * 1024);
    open_page(
        &mut page,
        &format!("tracebench experiment: {}", state.experiment_id),
    );
    if state.progress != Progress::Finished {
        page.push_str("<div class=\"banner\">This experiment did not finish: the figures cover the points that did. Resume it with <code>tracebench experiment FILE --resume DIR</code>.</div>");
    }
    page.push_str("<section><h2>Reading</h2>");
    for line in &state.reading {
        let _ = write!(page, "<p>{}</p>", esc(line));
    }
    page.push_str("</section>");
    if let Some(study) = &state.study {
        super::study::section(&mut page, study);
    }
    for case in &state.cases {
        case_section(&mut page, state, case);
    }
    close_page(&mut page);
    page
}

/// The x of a group on the case's chart axis (its value, or its position when not a number).
fn x_of(case: &CaseState, group: &Group, position: usize) -> f64 {
    let axis = chart_axis(case);
    axis.and_then(|a| group.axes.get(a))
        .and_then(Value::as_f64)
        .unwrap_or(position as f64)
}

/// The axis the curves run over: the search axis, else the last (climbed) grid axis.
fn chart_axis(case: &CaseState) -> Option<&str> {
    case.searches
        .first()
        .map(|s| s.trace.axis.as_str())
        .or_else(|| case.axes.last().map(String::as_str))
}

/// Groups by line: each line is one value of the other axes.
fn lines<'a>(case: &CaseState, groups: &[&'a Group]) -> Vec<(String, Vec<&'a Group>)> {
    let axis = chart_axis(case);
    let mut lines: Vec<(String, Vec<&Group>)> = Vec::new();
    for group in groups {
        let name: Vec<String> = group
            .axes
            .iter()
            .filter(|(k, _)| Some(k.as_str()) != axis)
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect();
        let name = if name.is_empty() {
            case.name.clone()
        } else {
            name.join(" ")
        };
        match lines.iter_mut().find(|(n, _)| *n == name) {
            Some((_, members)) => members.push(group),
            None => lines.push((name, vec![group])),
        }
    }
    lines
}

fn case_section(page: &mut String, state: &ExperimentState, case: &CaseState) {
    let groups: Vec<&Group> = last_per_axes(state, case);
    let _ = write!(
        page,
        "<section><h2>{} <small>model {}</small></h2>",
        esc(&case.name),
        esc(&case.model)
    );
    points_table(page, state, case);
    if groups.len() > 1 || !case.searches.is_empty() {
        curves(page, case, &groups);
    }
    for verdict in &case.saturation {
        let _ = write!(
            page,
            "<p class=\"note\">Stopped climbing {} at {}: {} ({}).</p>",
            esc(&verdict.axis),
            esc(&text(&verdict.at)),
            esc(&verdict.rule.replace('_', " ")),
            esc(&verdict.detail)
        );
    }
    page.push_str("</section>");
}

/// One group per set of axis values (a search's later trials replace earlier ones).
fn last_per_axes<'a>(state: &'a ExperimentState, case: &CaseState) -> Vec<&'a Group> {
    let mut kept: Vec<&Group> = Vec::new();
    for group in state.groups.iter().filter(|g| g.case == case.index) {
        match kept.iter_mut().find(|g| g.axes == group.axes) {
            Some(slot) => *slot = group,
            None => kept.push(group),
        }
    }
    let axis = chart_axis(case);
    kept.sort_by(|a, b| {
        let x = |g: &Group| {
            axis.and_then(|a| g.axes.get(a))
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
        };
        x(a).total_cmp(&x(b))
    });
    kept
}

fn points_table(page: &mut String, state: &ExperimentState, case: &CaseState) {
    page.push_str("<table><thead><tr><th>point</th><th>status</th>");
    for axis in &case.axes {
        let _ = write!(page, "<th>{}</th>", esc(axis));
    }
    for head in [
        "out tok/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "TPOT p99 ms",
        "E2E p99 ms",
        "goodput req/s",
        "errors %",
        "queue % of TTFT",
        "report",
    ] {
        let _ = write!(page, "<th>{head}</th>");
    }
    page.push_str("</tr></thead><tbody>");
    for point in state.points.iter().filter(|p| p.spec.case == case.index) {
        let status = serde_json::to_value(point.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = write!(
            page,
            "<tr><td>{}</td><td title=\"{}\">{status}</td>",
            esc(&point.spec.label),
            esc(point.reason.as_deref().unwrap_or(""))
        );
        for axis in &case.axes {
            let _ = write!(
                page,
                "<td>{}</td>",
                esc(&point.spec.axes.get(axis).map(text).unwrap_or_default())
            );
        }
        let m = |name: &str, scale: f64| {
            point
                .metrics
                .get(name)
                .map(|v| num(v * scale))
                .unwrap_or_else(|| "–".into())
        };
        for (name, scale) in [
            ("output_throughput", 1.0),
            ("median_ttft_ms", 1.0),
            ("p99_ttft_ms", 1.0),
            ("p99_tpot_ms", 1.0),
            ("p99_e2el_ms", 1.0),
            ("request_goodput", 1.0),
            ("error_rate", 100.0),
            ("ttft_share.queue", 100.0),
        ] {
            let _ = write!(page, "<td>{}</td>", m(name, scale));
        }
        match &point.run_dir {
            Some(dir) => {
                let _ = write!(
                    page,
                    "<td><a href=\"{}/report.html\">report</a></td></tr>",
                    esc(dir)
                );
            }
            None => page.push_str("<td>–</td></tr>"),
        }
    }
    page.push_str("</tbody></table>");
}

/// A series of `metric` over the chart axis for one line of groups.
fn series(
    case: &CaseState,
    name: String,
    color: &'static str,
    groups: &[&Group],
    metric: &str,
    scale: f64,
) -> Series {
    let points = groups
        .iter()
        .enumerate()
        .filter_map(|(i, g)| Some((x_of(case, g, i), g.value(metric)? * scale)))
        .collect();
    Series {
        name,
        color,
        points,
    }
}

/// One chart per figure; each line of the case a series (or each metric, for a single line).
fn curves(page: &mut String, case: &CaseState, groups: &[&Group]) {
    let lines = lines(case, groups);
    let x_label = chart_axis(case).unwrap_or("point");
    let per_line = |metric: &str, scale: f64| -> Vec<Series> {
        lines
            .iter()
            .enumerate()
            .map(|(i, (name, members))| {
                series(
                    case,
                    name.clone(),
                    SERIES_COLORS[i % SERIES_COLORS.len()],
                    members,
                    metric,
                    scale,
                )
            })
            .collect()
    };
    let per_metric = |metrics: &[(&str, &str, f64)]| -> Vec<Series> {
        let mut out = Vec::new();
        for (li, (line, members)) in lines.iter().enumerate() {
            for (mi, (metric, label, scale)) in metrics.iter().enumerate() {
                let name = if lines.len() > 1 {
                    format!("{label} {line}")
                } else {
                    label.to_string()
                };
                let color = SERIES_COLORS[(li * metrics.len() + mi) % SERIES_COLORS.len()];
                out.push(series(case, name, color, members, metric, *scale));
            }
        }
        out
    };
    let id = |name: &str| format!("case{}-{name}", case.index + 1);
    let mut charts: Vec<Chart> = vec![
        (
            id("throughput"),
            "Output throughput against load",
            "output tokens/s",
            per_line("output_throughput", 1.0),
            None,
        ),
        (
            id("latency"),
            "Latency against load",
            "ms",
            per_metric(&[
                ("median_ttft_ms", "TTFT p50", 1.0),
                ("p99_ttft_ms", "TTFT p99", 1.0),
                ("p99_tpot_ms", "TPOT p99", 1.0),
                ("p99_e2el_ms", "E2E p99", 1.0),
            ]),
            None,
        ),
        (
            id("ttft-share"),
            "Where TTFT goes (share of the mean)",
            "share of TTFT",
            per_metric(&[
                ("ttft_share.network", "network", 1.0),
                ("ttft_share.frontend", "frontend", 1.0),
                ("ttft_share.queue", "queue", 1.0),
                ("ttft_share.prefill", "prefill", 1.0),
            ]),
            Some((0.0, 1.0)),
        ),
        (
            id("goodput"),
            "Goodput and SLO attainment against load",
            "share meeting every SLO",
            per_line("goodput_fraction", 1.0),
            Some((0.0, 1.0)),
        ),
        (
            id("errors"),
            "Errors against load",
            "% of requests failed",
            per_line("error_rate", 100.0),
            None,
        ),
        (
            id("server"),
            "Server gauges (max in the point)",
            "requests / KV share",
            per_metric(&[
                ("server_running_max", "running", 1.0),
                ("server_waiting_max", "waiting", 1.0),
                ("server_kv_cache_max", "KV cache", 1.0),
            ]),
            None,
        ),
        (
            id("gpu"),
            "GPU utilisation (mean)",
            "%",
            per_line("gpu_util_mean", 1.0),
            None,
        ),
    ];
    add_slo_lines(case, &mut charts);
    for (chart_id, title, y_label, series, y_fixed) in &charts {
        if series.iter().all(|s| s.points.is_empty()) {
            continue;
        }
        let _ = write!(page, "<h3>{}</h3>", esc(title));
        line_chart(
            page,
            &LineChart {
                id: chart_id,
                x_label,
                y_label,
                y_fixed: *y_fixed,
                series,
            },
        );
    }
    pareto(page, case, groups);
    probes(page, case);
}

/// The search's limits as horizontal lines on the latency and goodput charts.
fn add_slo_lines(case: &CaseState, charts: &mut [Chart]) {
    let Some(search) = case.searches.first() else {
        return;
    };
    let xs: Vec<f64> = search.trace.probes.iter().map(|p| p.value).collect();
    let (lo, hi) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    if !lo.is_finite() {
        return;
    }
    for slo in &search.slo {
        let Ok(constraint) = crate::experiment::slo::Constraint::parse(slo) else {
            continue;
        };
        let target = if constraint.metric.ends_with("_ms") {
            "latency"
        } else if constraint.metric == "goodput_fraction" {
            "goodput"
        } else {
            continue;
        };
        if let Some((_, _, _, series, _)) = charts.iter_mut().find(|c| c.0.ends_with(target)) {
            series.push(Series {
                name: format!("SLO {slo}"),
                color: "#555555",
                points: vec![(lo, constraint.limit), (hi, constraint.limit)],
            });
        }
    }
}

/// Tokens/s per user (1000 / median TPOT) against total output tokens/s, and its Pareto front.
fn pareto(page: &mut String, case: &CaseState, groups: &[&Group]) {
    let mut points: Vec<(f64, f64)> = groups
        .iter()
        .filter_map(|g| {
            Some((
                g.value("output_throughput")?,
                1000.0 / g.value("median_tpot_ms").filter(|t| *t > 0.0)?,
            ))
        })
        .collect();
    if points.len() < 2 {
        return;
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let front: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| {
            !points
                .iter()
                .any(|q| q.0 >= p.0 && q.1 >= p.1 && (q.0 > p.0 || q.1 > p.1))
        })
        .copied()
        .collect();
    let series = [
        Series {
            name: "points".into(),
            color: SERIES_COLORS[0],
            points,
        },
        Series {
            name: "Pareto front".into(),
            color: SERIES_COLORS[1],
            points: front,
        },
    ];
    page.push_str("<h3>Tokens/s per user against total tokens/s</h3>");
    let id = format!("case{}-pareto", case.index + 1);
    line_chart(
        page,
        &LineChart {
            id: &id,
            x_label: "output tokens/s (total)",
            y_label: "tokens/s per user",
            y_fixed: None,
            series: &series,
        },
    );
}

/// Every probe of a search: its tightest SLO margin against the value tried.
fn probes(page: &mut String, case: &CaseState) {
    for (i, search) in case.searches.iter().enumerate() {
        let mut probes: Vec<(f64, f64)> = search
            .trace
            .probes
            .iter()
            .map(|p| (p.value, p.margin))
            .collect();
        probes.sort_by(|a, b| a.0.total_cmp(&b.0));
        if probes.is_empty() {
            continue;
        }
        let (lo, hi) = (probes[0].0, probes[probes.len() - 1].0);
        let series = [
            Series {
                name: "tightest SLO margin".into(),
                color: SERIES_COLORS[0],
                points: probes.iter().map(|(v, m)| (*v, m.max(-1.0))).collect(),
            },
            Series {
                name: "limit".into(),
                color: "#555555",
                points: vec![(lo, 0.0), (hi, 0.0)],
            },
        ];
        let _ = write!(
            page,
            "<h3>Search probes{}</h3>",
            if case.searches.len() > 1 {
                format!(" ({})", i + 1)
            } else {
                String::new()
            }
        );
        let id = format!("case{}-search{}", case.index + 1, i + 1);
        line_chart(
            page,
            &LineChart {
                id: &id,
                x_label: &search.trace.axis,
                y_label: "margin (fraction of the limit)",
                y_fixed: Some((-1.0, 1.0)),
                series: &series,
            },
        );
        page.push_str("<table><thead><tr><th>value</th><th>verdict</th><th>margin</th><th>trials</th></tr></thead><tbody>");
        for probe in &search.trace.probes {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                num(probe.value),
                if probe.pass { "pass" } else { "fail" },
                num(probe.margin),
                esc(&probe.points.join(", "))
            );
        }
        page.push_str("</tbody></table>");
    }
}
