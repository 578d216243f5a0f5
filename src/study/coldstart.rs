//! `tracebench study coldstart`: the server command started fresh for every
//! repeat (the lifecycle's `restart_between_points`), each start timed
//! spawn → port open → ready → first `/v1/models` → first token, then a
//! short load. With `--cache-dir` the named caches are removed before each
//! cold start and warm starts (caches kept) run too. Start-up spans the
//! server exported while the receiver listened are shown as phases. With an
//! idle trace, the idle-shutdown policies are priced ([`super::policy`]).
//! With a GPU sampled, the GPU's idle threshold is measured from an idle
//! window after each start's first request and the load ([`super::gpu_idle`]).

use super::args::ColdstartArgs;
use super::figures::{self, one, pct};
use super::gpu_idle;
use super::policy::{self, Gaps};
use crate::experiment::results::{spread, PointResult};
use crate::experiment::server::ColdStart;
use crate::experiment::state::{Analysis, ExperimentState, StudyChart, StudySection, StudyTable};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The analysis, with the idle trace read before anything starts.
pub struct Coldstart {
    args: ColdstartArgs,
    gaps: Option<Gaps>,
}

impl Coldstart {
    pub fn new(args: &ColdstartArgs) -> anyhow::Result<Self> {
        let gaps = args
            .idle_trace
            .as_deref()
            .map(policy::read_gaps)
            .transpose()?;
        Ok(Self {
            args: args.clone(),
            gaps,
        })
    }
}

/// The experiment plan: `repeats` fresh starts (cold, then warm with caches named).
pub fn plan(args: &ColdstartArgs) -> anyhow::Result<Value> {
    let Some(cmd) = &args.common.cmd else {
        anyhow::bail!("study coldstart: --cmd is required (the study starts the server itself)");
    };
    if !args.idle_window.is_zero() && args.common.warmup == 0 {
        anyhow::bail!("study coldstart: --idle-window needs --warmup 1 or more (the first request times the first token; the window comes after it)");
    }
    let mut load = super::exact_output(args.output_tokens);
    load["requests"] = json!(args.requests);
    load["concurrency"] = json!(1);
    load["idle_window"] = json!(humantime::format_duration(args.idle_window).to_string());
    let mut plan = super::experiment("coldstart", &args.common, true, load, json!([]));
    let case = |name: &str, model: &str| json!({ "name": name, "model": model, "repeats": args.repeats, "seed_policy": "same" });
    plan["cases"] = if args.cache_dirs.is_empty() {
        json!([case("start", "target")])
    } else {
        let dirs: Vec<String> = args
            .cache_dirs
            .iter()
            .map(|d| format!("'{}'", d.display().to_string().replace('\'', r"'\''")))
            .collect();
        let mut cold = plan["models"]["target"].clone();
        cold["server"]["launch"] = json!(format!("rm -rf {} && {cmd}", dirs.join(" ")));
        plan["models"]["cold"] = cold;
        json!([case("cold", "cold"), case("warm", "target")])
    };
    Ok(plan)
}

/// The stages of a start, as (figure name, label).
const STAGES: [(&str, &str); 4] = [
    ("port_open_s", "port open s"),
    ("ready_s", "ready s"),
    ("models_s", "/v1/models s"),
    ("first_token_s", "first token s"),
];

fn stage(cold: &ColdStart, name: &str) -> Option<f64> {
    match name {
        "port_open_s" => cold.port_open_s,
        "ready_s" => Some(cold.ready_s),
        "models_s" => cold.models_s,
        _ => cold.first_token_s,
    }
}

impl Analysis for Coldstart {
    fn analyse(&self, dir: &Path, state: &ExperimentState) -> anyhow::Result<StudySection> {
        let mut figures = BTreeMap::new();
        let mut rows = Vec::new();
        let mut lines = Vec::new();
        let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut timed = Vec::new();
        for case in &state.cases {
            let starts: Vec<(&PointResult, &ColdStart)> = figures::ok_points(state, case.index)
                .into_iter()
                .filter_map(|p| Some((p, p.cold_start.as_ref()?)))
                .collect();
            for (name, label) in STAGES {
                let values: Vec<f64> = starts.iter().filter_map(|(_, c)| stage(c, name)).collect();
                if values.is_empty() {
                    continue;
                }
                let s = spread(&values);
                figures.insert(format!("{}.{name}", case.name), s.mean.unwrap_or(0.0));
                figures.insert(format!("{}.{name}_ci95", case.name), s.ci95.unwrap_or(0.0));
                let points = starts
                    .iter()
                    .filter_map(|(p, c)| Some((p.spec.repeat as f64 + 1.0, stage(c, name)?)));
                lines.push((format!("{} {label}", case.name), points.collect()));
            }
            for (point, cold) in &starts {
                let mut row = vec![case.name.clone(), (point.spec.repeat + 1).to_string()];
                row.extend(STAGES.iter().map(|(n, _)| one(stage(cold, n))));
                rows.push(row);
                startup_spans(dir, point, &mut phases);
                timed.push((case.name.clone(), *point));
            }
        }
        let case = state
            .cases
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let cold_s = figures
            .get(&format!("{case}.first_token_s"))
            .or_else(|| figures.get(&format!("{case}.ready_s")))
            .copied();
        let mut section = StudySection {
            kind: "coldstart".into(),
            question: "What does a cold start cost, after how long idle should the server be shut down, and below what GPU utilisation is it idle?".into(),
            verdict: String::new(),
            figures,
            tables: vec![starts_table(rows)],
            charts: vec![StudyChart {
                id: "study-starts".into(),
                title: "Each start's stages".into(),
                x_label: "repeat".into(),
                y_label: "s since spawn".into(),
                lines,
            }],
            notes: Vec::new(),
        };
        phases_table(&mut section, &phases);
        let gpu = gpu_idle::add(&mut section, dir, &timed);
        let policy = cold_s.map(|c| self.policy(&mut section, c));
        section.verdict = self.verdict(&section, &case, cold_s, policy.flatten(), &phases, &gpu);
        Ok(section)
    }
}

fn starts_table(rows: Vec<Vec<String>>) -> StudyTable {
    let mut columns = vec!["case".to_string(), "repeat".into()];
    columns.extend(STAGES.iter().map(|(_, l)| l.to_string()));
    StudyTable {
        title: "Starts (seconds from spawn)".into(),
        columns,
        rows,
    }
}

/// Spans the server sent that ended before the point's first request (warm-up
/// included): its start-up.
fn startup_spans(dir: &Path, point: &PointResult, phases: &mut BTreeMap<String, Vec<f64>>) {
    let (Some(run_dir), Some(first_sent)) = (&point.run_dir, figures::first_sent(dir, point))
    else {
        return;
    };
    let path = dir.join(run_dir).join("spans.jsonl");
    if !path.exists() {
        return;
    }
    let _ = crate::trace::span::for_each_span_in_jsonl(&path, |span| {
        if span.end_unix_ns < first_sent {
            let seconds = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e9;
            phases.entry(span.name).or_default().push(seconds);
        }
    });
}

fn phases_table(section: &mut StudySection, phases: &BTreeMap<String, Vec<f64>>) {
    if phases.is_empty() {
        section.notes.push("The server exported no start-up span while the receiver listened (the receiver runs during each point's load; spans sent earlier are not kept), so the phases inside the start are not shown.".into());
        return;
    }
    let rows = phases
        .iter()
        .map(|(name, values)| {
            let mean = spread(values).mean;
            section
                .figures
                .insert(format!("phase.{name}_s"), mean.unwrap_or(0.0));
            vec![name.clone(), values.len().to_string(), one(mean)]
        })
        .collect();
    section.tables.push(StudyTable {
        title: "Start-up phases (the server's spans)".into(),
        columns: vec!["span".into(), "starts".into(), "mean s".into()],
        rows,
    });
}

impl Coldstart {
    /// Adds the break-even time and the policy table; the best fixed policy.
    fn policy(&self, section: &mut StudySection, cold_s: f64) -> Option<policy::Outcome> {
        section
            .figures
            .insert("break_even_idle_min".into(), cold_s / 60.0);
        let price = self.args.price_per_hour;
        if let Some(p) = price {
            section
                .figures
                .insert("cold_start_cost".into(), p * cold_s / 3600.0);
        }
        let Some(gaps) = &self.gaps else {
            section.notes.push("No --idle-trace: the policies are not priced (give a run folder or an arrival trace).".into());
            return None;
        };
        let table = policy::table(&gaps.gaps_s, cold_s);
        let never = table
            .iter()
            .find(|o| o.label == "never")
            .map_or(0.0, |o| o.paid_s);
        let hours = (gaps.span_s / 3600.0).max(f64::EPSILON);
        let rows = table
            .iter()
            .map(|o| {
                vec![
                    o.label.clone(),
                    one(Some(o.paid_s / 60.0)),
                    price.map_or("–".into(), |p| format!("{:.2}", p * o.paid_s / 3600.0)),
                    o.cold_starts.to_string(),
                    one(Some(o.cold_starts as f64 / hours)),
                    pct((never > 0.0).then(|| 1.0 - o.paid_s / never)),
                ]
            })
            .collect();
        section.tables.push(StudyTable {
            title: format!(
                "Idle-shutdown policies over {} idle gaps ({:.1} h)",
                gaps.gaps_s.len(),
                gaps.span_s / 3600.0
            ),
            columns: [
                "policy",
                "idle + start paid (min)",
                "cost",
                "cold starts",
                "cold starts per hour",
                "saved vs never",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        });
        section
            .figures
            .insert("idle_gaps".into(), gaps.gaps_s.len() as f64);
        let best = table
            .into_iter()
            .take(policy::LIMITS_MIN.len())
            .min_by(|a, b| a.paid_s.total_cmp(&b.paid_s))?;
        if never > 0.0 {
            section
                .figures
                .insert("best_fixed_saving".into(), 1.0 - best.paid_s / never);
        }
        Some(best)
    }

    fn verdict(
        &self,
        section: &StudySection,
        case: &str,
        cold_s: Option<f64>,
        best: Option<policy::Outcome>,
        phases: &BTreeMap<String, Vec<f64>>,
        gpu: &str,
    ) -> String {
        let Some(cold_s) = cold_s else {
            return "coldstart: no verdict (no start was timed)".into();
        };
        let ready = section.figures.get(&format!("{case}.ready_s")).copied();
        let longest = phases
            .iter()
            .map(|(n, v)| (n, spread(v).mean.unwrap_or(0.0)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(String::new(), |(n, s)| format!(", {n} {s:.1} s"));
        let price = self.args.price_per_hour.map_or(String::new(), |p| {
            format!(" at ${p:.2}/h (${:.4} per cold start)", p * cold_s / 3600.0)
        });
        let policy = match (best, &self.gaps) {
            (Some(best), Some(gaps)) => {
                let saved = section.figures.get("best_fixed_saving").copied();
                format!(
                    "; with this trace's {} idle gaps shutting down {} would have saved {} at {:.1} cold starts per hour",
                    gaps.gaps_s.len(),
                    best.label,
                    pct(saved),
                    best.cold_starts as f64 / (gaps.span_s / 3600.0).max(f64::EPSILON)
                )
            }
            _ => String::new(),
        };
        let which = if case == "start" {
            "a fresh".to_string()
        } else {
            format!("a {case}")
        };
        format!(
            "coldstart: {which} start takes {cold_s:.1} s to the first token (ready {} s{longest}); the break-even idle limit{price} is {:.2} min{policy}{gpu}.",
            one(ready),
            cold_s / 60.0
        )
    }
}
