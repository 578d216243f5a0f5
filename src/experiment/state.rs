//! `experiment.json` (`tracebench.experiment/1`, schema in
//! `schemas/experiment_result.schema.json`) and `points.csv`: rewritten
//! (atomically) after every point, so whatever stops an experiment, every
//! finished point is on disk and `--resume` knows what is left.

use super::metrics::HEADLINE;
use super::results::{param_text, Group, PointResult, Status};
use super::saturation::Saturated;
use super::search::SearchTrace;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// Schema name of `experiment.json`.
pub const EXPERIMENT_SCHEMA: &str = "tracebench.experiment/1";

/// How far an experiment got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    Running,
    Finished,
    /// Stopped by Ctrl-C or by a failed point with `on_failure: stop`.
    Stopped,
}

/// One case's plan and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseState {
    pub index: usize,
    pub name: String,
    pub model: String,
    pub axes: Vec<String>,
    pub combinations: usize,
    pub repeats: u32,
    /// `grid` or `search`.
    pub kind: String,
    #[serde(default)]
    pub saturation: Vec<Saturated>,
    #[serde(default)]
    pub searches: Vec<CaseSearch>,
}

/// A search of one grid combination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseSearch {
    pub axes: serde_json::Map<String, Value>,
    pub slo: Vec<String>,
    pub trace: SearchTrace,
}

/// Everything `experiment.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentState {
    pub schema: String,
    pub experiment_id: String,
    pub name: String,
    /// The experiment file as given.
    pub file: String,
    /// Hash of the file after variable substitution.
    pub file_hash: String,
    /// The file after variable substitution.
    pub resolved_file: String,
    pub command_line: String,
    pub started_unix_ns: u64,
    #[serde(default)]
    pub ended_unix_ns: Option<u64>,
    pub progress: Progress,
    pub cases: Vec<CaseState>,
    pub points: Vec<PointResult>,
    /// A point's repeats together.
    pub groups: Vec<Group>,
    #[serde(default)]
    pub reading: Vec<String>,
    /// What a `tracebench study` concluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study: Option<StudySection>,
}

/// What a study adds to its finished experiment: its section of
/// `experiment.json` and of the report (verdict, figures, tables, charts).
pub trait Analysis {
    fn analyse(&self, dir: &Path, state: &ExperimentState) -> anyhow::Result<StudySection>;
}

/// A study's answer: the question, the verdict in one sentence, its figures
/// by name, and the tables and charts its report section shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudySection {
    /// `batching`, `output-length`, `goodput` or `coldstart`.
    pub kind: String,
    pub question: String,
    pub verdict: String,
    pub figures: std::collections::BTreeMap<String, f64>,
    #[serde(default)]
    pub tables: Vec<StudyTable>,
    #[serde(default)]
    pub charts: Vec<StudyChart>,
    /// Where figures come from, what was not measured, and why.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// A table of a study's section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyTable {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// A line chart of a study's section: named lines of (x, y) points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyChart {
    /// Stable id (the report's self-check names charts by it).
    pub id: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

impl ExperimentState {
    /// Reads `experiment.json` of a folder.
    pub fn read(dir: &Path) -> anyhow::Result<ExperimentState> {
        let path = dir.join("experiment.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is not an experiment folder (no readable experiment.json)",
                dir.display()
            )
        })?;
        let state: ExperimentState = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a tracebench experiment.json", path.display()))?;
        if state.schema != EXPERIMENT_SCHEMA {
            anyhow::bail!(
                "{} has schema `{}`, this tracebench reads `{EXPERIMENT_SCHEMA}`",
                path.display(),
                state.schema
            );
        }
        Ok(state)
    }

    /// Writes `experiment.json` and `points.csv`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        crate::run::write_json(&dir.join("experiment.json"), self)?;
        write_points_csv(&dir.join("points.csv"), self)
    }

    /// Finished points by id (interrupted ones are run again).
    pub fn finished(&self) -> impl Iterator<Item = &PointResult> {
        self.points
            .iter()
            .filter(|p| p.status != Status::Interrupted)
    }
}

/// One row per point and one per group of repeats (`repeat` = `all`).
fn write_points_csv(path: &Path, state: &ExperimentState) -> anyhow::Result<()> {
    let tmp = path.with_extension("csv.tmp");
    let mut out =
        csv::Writer::from_path(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let axes: BTreeSet<&String> = state
        .points
        .iter()
        .flat_map(|p| p.spec.axes.keys())
        .collect();
    let mut header = vec!["point", "case", "label", "repeat", "trial", "status"];
    header.extend(axes.iter().map(|a| a.as_str()));
    header.extend(HEADLINE);
    header.extend(["run_dir", "reason"]);
    out.write_record(&header)?;
    let number = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
    for p in &state.points {
        let mut row = vec![
            p.spec.id.clone(),
            state
                .cases
                .get(p.spec.case)
                .map(|c| c.name.clone())
                .unwrap_or_default(),
            p.spec.label.clone(),
            (p.spec.repeat + 1).to_string(),
            (p.spec.trial + 1).to_string(),
            serde_json::to_value(p.status)?
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ];
        row.extend(
            axes.iter()
                .map(|a| p.spec.axes.get(*a).map(param_text).unwrap_or_default()),
        );
        row.extend(HEADLINE.iter().map(|m| number(p.metrics.get(*m).copied())));
        row.extend([
            p.run_dir.clone().unwrap_or_default(),
            p.reason.clone().unwrap_or_default(),
        ]);
        out.write_record(&row)?;
    }
    for g in state.groups.iter().filter(|g| g.points.len() > 1) {
        let mut row = vec![
            g.points.join("+"),
            state
                .cases
                .get(g.case)
                .map(|c| c.name.clone())
                .unwrap_or_default(),
            g.label.clone(),
            "all".to_string(),
            String::new(),
            String::new(),
        ];
        row.extend(
            axes.iter()
                .map(|a| g.axes.get(*a).map(param_text).unwrap_or_default()),
        );
        row.extend(HEADLINE.iter().map(|m| number(g.value(m))));
        row.extend([String::new(), String::new()]);
        out.write_record(&row)?;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
