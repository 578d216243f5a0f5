//! `tracebench study goodput`: the same workload at each load (rates or
//! concurrencies), every request judged against the SLOs. Per load:
//! throughput, goodput (requests/s and tokens/s that met every SLO),
//! compliance, and which SLO failed most. The verdict: the load at which
//! goodput peaks, and the compliance there.

use super::args::GoodputArgs;
use super::figures::{self, one, pct};
use crate::analysis::Slo;
use crate::experiment::state::{Analysis, ExperimentState, StudyChart, StudySection, StudyTable};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// `--slo`: checked here, kept as written (it becomes every point's `slo`).
pub fn slo_spec(text: &str) -> Result<String, String> {
    Slo::parse(text).map_err(|e| e.to_string())?;
    Ok(text.to_string())
}

/// The experiment plan: one case, a grid over the loads.
pub fn plan(args: &GoodputArgs) -> anyhow::Result<Value> {
    let grid = match (args.rate.is_empty(), args.concurrency.is_empty()) {
        (false, _) => json!({ "rate": args.rate }),
        (true, false) => json!({ "concurrency": args.concurrency }),
        (true, true) => {
            anyhow::bail!("study goodput: give the loads with --rate 1,2,4 or --concurrency 1,4,16")
        }
    };
    let case = json!({ "name": "loads", "model": "target", "grid": grid });
    let mut defaults = super::exact_output(args.output_tokens);
    defaults["requests"] = json!(args.requests);
    defaults["slo"] = json!(args.slo);
    Ok(super::experiment(
        "goodput",
        &args.common,
        false,
        defaults,
        json!([case]),
    ))
}

/// Each SLO alone, by name.
fn limits(slo: &Slo) -> Vec<(&'static str, Slo)> {
    let one = |name, set: fn(&mut Slo, f64), value: Option<f64>| {
        value.map(|v| {
            let mut alone = Slo::default();
            set(&mut alone, v);
            (name, alone)
        })
    };
    [
        one("ttft", |s, v| s.ttft_ms = Some(v), slo.ttft_ms),
        one("tpot", |s, v| s.tpot_ms = Some(v), slo.tpot_ms),
        one("itl", |s, v| s.itl_ms = Some(v), slo.itl_ms),
        one("e2e", |s, v| s.e2e_ms = Some(v), slo.e2e_ms),
        one("queue", |s, v| s.queue_ms = Some(v), slo.queue_ms),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// One load's figures.
struct Load {
    label: String,
    x: f64,
    figures: BTreeMap<&'static str, f64>,
    /// Requests that missed each SLO (a request may miss several).
    missed: Vec<(&'static str, u64)>,
}

const FIGURES: [(&str, &str); 6] = [
    ("request_throughput", "req/s"),
    ("output_throughput", "tok/s"),
    ("request_goodput", "goodput req/s"),
    ("output_goodput", "goodput tok/s"),
    ("goodput_fraction", "compliance"),
    ("p99_server.queue_ms", "queue p99 ms"),
];

impl Analysis for GoodputArgs {
    fn analyse(&self, dir: &Path, state: &ExperimentState) -> anyhow::Result<StudySection> {
        let slo = Slo::parse(&self.slo)?;
        let limits = limits(&slo);
        let axis = if self.rate.is_empty() {
            "concurrency"
        } else {
            "rate"
        };
        let loads: Vec<Load> = figures::ok_points(state, 0)
            .into_iter()
            .map(|point| {
                let summary = figures::summary(dir, point).unwrap_or_default();
                let figures = FIGURES
                    .iter()
                    .filter_map(|(n, _)| Some((*n, figures::metric(&summary, n)?)))
                    .collect();
                let mut missed: Vec<(&str, u64)> = limits.iter().map(|(n, _)| (*n, 0)).collect();
                figures::each_record(dir, point, |r| {
                    for ((_, alone), count) in limits.iter().zip(missed.iter_mut()) {
                        count.1 += u64::from(r.ok() && !alone.met_by(r));
                    }
                });
                let x = point
                    .spec
                    .axes
                    .get(axis)
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                Load {
                    label: format!("{axis}={x}"),
                    x,
                    figures,
                    missed,
                }
            })
            .collect();
        Ok(section(self, &loads))
    }
}

fn section(args: &GoodputArgs, loads: &[Load]) -> StudySection {
    let get = |l: &Load, n: &str| l.figures.get(n).copied();
    let mut figures = BTreeMap::new();
    let mut rows = Vec::new();
    for load in loads {
        for (k, v) in &load.figures {
            figures.insert(format!("{}.{k}", load.label), *v);
        }
        let mut row = vec![load.label.clone()];
        row.extend(FIGURES.iter().map(|(n, _)| {
            if *n == "goodput_fraction" {
                pct(get(load, n))
            } else {
                one(get(load, n))
            }
        }));
        row.push(worst(load).map_or("none".into(), |(n, c)| format!("{n} ({c} requests)")));
        rows.push(row);
    }
    let peak = loads
        .iter()
        .filter(|l| get(l, "request_goodput").is_some())
        .max_by(|a, b| {
            get(a, "request_goodput")
                .partial_cmp(&get(b, "request_goodput"))
                .unwrap()
        });
    let verdict = match peak {
        Some(p) => {
            figures.insert("peak.x".into(), p.x);
            format!(
                "goodput ({}): goodput peaks at {} with {} req/s ({} tok/s) meeting every SLO out of {} req/s, {} compliance there; the SLO missed most there: {}.",
                args.slo,
                p.label,
                one(get(p, "request_goodput")),
                one(get(p, "output_goodput")),
                one(get(p, "request_throughput")),
                pct(get(p, "goodput_fraction")),
                worst(p).map_or("none".into(), |(n, c)| format!("{n} ({c} requests)"))
            )
        }
        None => "goodput: no verdict (no load finished)".into(),
    };
    let line = |n: &str| {
        loads
            .iter()
            .filter_map(|l| Some((l.x, get(l, n)?)))
            .collect::<Vec<_>>()
    };
    let mut columns: Vec<String> = vec!["load".into()];
    columns.extend(FIGURES.iter().map(|(_, l)| l.to_string()));
    columns.push("missed most".into());
    StudySection {
        kind: "goodput".into(),
        question: format!("How much of the throughput is goodput under {}?", args.slo),
        verdict,
        figures,
        tables: vec![StudyTable { title: "Per load".into(), columns, rows }],
        charts: vec![StudyChart {
            id: "study-goodput".into(),
            title: "Throughput and goodput against load".into(),
            x_label: if args.rate.is_empty() { "concurrency" } else { "rate (req/s)" }.into(),
            y_label: "requests/s".into(),
            lines: vec![
                ("throughput".into(), line("request_throughput")),
                ("goodput".into(), line("request_goodput")),
            ],
        }],
        notes: vec!["Compliance is the share of measured requests that succeeded and met every SLO; a server-side SLO (queue) needs the server's spans. Every point is a run in the history: docs/sqlite.md's daily goodput query covers them.".into()],
    }
}

/// The SLO most requests missed, when any did.
fn worst(load: &Load) -> Option<(&'static str, u64)> {
    load.missed
        .iter()
        .copied()
        .filter(|m| m.1 > 0)
        .max_by_key(|m| m.1)
}
