//! From the file to a checked plan: model aliases resolved, every case's
//! grid expanded, every point's run configuration built and checked, server
//! launch commands' placeholders filled, search and saturation settings
//! validated. Nothing runs until all of it holds; a mistake is reported at
//! its line and column.

use super::file::{self, At, Case, ExperimentFile, ModelAlias, OnFailure, Saturation, SeedPolicy};
use super::params::{self, Layered};
use super::slo::Constraint;
use super::Located;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The values of a grid combination's axes.
pub type Combo = Vec<(At<String>, At<Value>)>;

/// A checked experiment, ready to run.
#[derive(Debug)]
pub struct Experiment {
    pub path: PathBuf,
    pub name: String,
    /// The file after variable substitution.
    pub text: String,
    /// Hash of the file (and its models file) as written: a resumed
    /// experiment must have the same.
    pub hash: String,
    pub models: BTreeMap<String, ModelAlias>,
    pub cases: Vec<CasePlan>,
    pub on_failure: OnFailure,
}

/// What the experiment itself adds to every point's `run` flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Points' run folders go under it.
    pub points_dir: PathBuf,
    pub db: Option<PathBuf>,
    pub tui: bool,
    /// Put before each point id to make its run id unique in the history.
    pub run_prefix: String,
}

impl Settings {
    /// Points under `points_dir`, with no history database, no dashboard
    /// and no run-id prefix (the plan as a library call checks it).
    pub fn quiet(points_dir: impl Into<PathBuf>) -> Self {
        Self {
            points_dir: points_dir.into(),
            db: None,
            tui: false,
            run_prefix: String::new(),
        }
    }
}

/// One case, expanded.
#[derive(Debug, Clone)]
pub struct CasePlan {
    pub index: usize,
    pub name: String,
    pub alias: String,
    /// Grid and zip axis names, the saturation axis last.
    pub axes: Vec<String>,
    /// Axis values of each combination, in run order.
    pub combos: Vec<Combo>,
    pub repeats: u32,
    pub seed_policy: SeedPolicy,
    pub profile: bool,
    pub saturation: Option<(String, Saturation)>,
    pub search: Option<SearchPlan>,
    pub(super) run: Layered,
    pub(super) server: Layered,
}

/// A checked capacity search.
#[derive(Debug, Clone)]
pub struct SearchPlan {
    pub axis: At<String>,
    pub start: f64,
    pub max: f64,
    pub factor: f64,
    pub precision: f64,
    pub slo: Vec<Constraint>,
    pub confirm_margin: f64,
}

impl SearchPlan {
    /// True when the axis takes whole numbers.
    pub fn integer(&self) -> bool {
        self.axis.value == "concurrency"
    }
}

/// Reads and checks an experiment file.
pub fn load(path: &Path, settings: &Settings) -> anyhow::Result<Experiment> {
    let (file, texts) = file::read(path)?;
    check(path, file, texts, settings)
}

/// Checks an experiment given as text (see [`file::read_text`]).
pub fn load_text(path: &Path, raw: String, settings: &Settings) -> anyhow::Result<Experiment> {
    let (file, texts) = file::read_text(path, raw)?;
    check(path, file, texts, settings)
}

fn check(
    path: &Path,
    file: ExperimentFile,
    texts: file::Texts,
    settings: &Settings,
) -> anyhow::Result<Experiment> {
    let (models, models_raw) = models(path, &file)?;
    if file.cases.is_empty() {
        anyhow::bail!("{}: `cases:` is empty: nothing to run", path.display());
    }
    let cases = file
        .cases
        .iter()
        .enumerate()
        .map(|(index, case)| plan_case(path, &file, &models, index, case, settings))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let name = file.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "experiment".into())
    });
    Ok(Experiment {
        path: path.to_path_buf(),
        name,
        hash: format!(
            "{:016x}",
            crate::hash::fnv1a(format!("{}{models_raw}", texts.raw).as_bytes())
        ),
        text: redact(&texts.resolved, &models),
        models,
        cases,
        on_failure: file.on_failure,
    })
}

/// `text` with the aliases' header values and API keys replaced by `***`, so
/// the copy of the file kept in `experiment.json` holds no credential.
fn redact(text: &str, models: &BTreeMap<String, ModelAlias>) -> String {
    let keys = models
        .values()
        .filter_map(|alias| alias.api_key_env.as_ref())
        .filter_map(|var| std::env::var(&var.value).ok());
    let headers = models
        .values()
        .flat_map(|alias| alias.headers.values().cloned());
    let mut secrets: Vec<String> = keys.chain(headers).filter(|s| s.len() >= 3).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.iter().fold(text.to_string(), |text, secret| {
        text.replace(secret.as_str(), "***")
    })
}

/// The aliases of `models_file`, overridden by inline ones, and the models
/// file as written (empty without one).
fn models(
    path: &Path,
    file: &ExperimentFile,
) -> anyhow::Result<(BTreeMap<String, ModelAlias>, String)> {
    let (mut models, raw) = match &file.models_file {
        Some(name) => {
            let (models, raw) = file::read_models(path, name)?;
            (models.models, raw)
        }
        None => (BTreeMap::new(), String::new()),
    };
    models.extend(file.models.clone());
    Ok((models, raw))
}

fn plan_case(
    path: &Path,
    file: &ExperimentFile,
    models: &BTreeMap<String, ModelAlias>,
    index: usize,
    case: &Case,
    settings: &Settings,
) -> anyhow::Result<CasePlan> {
    let alias = models.get(&case.model.value).ok_or_else(|| {
        let hint = super::suggest::hint(&case.model.value, models.keys().map(String::as_str));
        Located::at(
            path,
            &case.model,
            format!("no model alias `{}`{hint}", case.model.value),
        )
    })?;
    let placeholders = placeholders(alias);
    let server_keys: Vec<&str> = placeholders.iter().map(String::as_str).collect();
    let mut run = Layered::default();
    for (key, value) in file.defaults.0.iter().chain(&case.params.0) {
        params::check_key(path, key, &[])?;
        run.set(key, value);
    }
    let mut server = Layered::default();
    let alias_params = alias.server.as_ref().map(|s| &s.params);
    for (key, value) in alias_params
        .into_iter()
        .flat_map(|p| &p.0)
        .chain(&case.server.0)
    {
        check_server_key(path, key, &server_keys, &case.model.value)?;
        server.set(key, value);
    }
    let (axes, combos) = combos(path, case, &server_keys)?;
    let saturation = saturation(path, case, &axes)?;
    let axes = match &saturation {
        Some((axis, _)) => {
            let mut ordered: Vec<String> = axes.into_iter().filter(|a| a != axis).collect();
            ordered.push(axis.clone());
            ordered
        }
        None => axes,
    };
    let combos = order_combos(combos, &axes);
    let repeats = match &case.repeats {
        Some(r) if r.value == 0 => {
            return Err(Located::at(path, r, "`repeats` must be at least 1").into())
        }
        Some(r) => r.value,
        None => 1,
    };
    let plan = CasePlan {
        index,
        name: case
            .name
            .clone()
            .unwrap_or_else(|| format!("case {}", index + 1)),
        alias: case.model.value.clone(),
        axes,
        combos,
        repeats,
        seed_policy: case.seed_policy,
        profile: case.profile,
        saturation,
        search: case.search.as_ref().map(|s| search(path, s)).transpose()?,
        run,
        server,
    };
    if plan.search.is_some() && plan.saturation.is_some() {
        return Err(Located::at(
            path,
            &case.model,
            "a case has `search` or `stop_at_saturation`, not both",
        )
        .into());
    }
    check_points(path, &plan, alias, settings)?;
    Ok(plan)
}

/// Builds every point the plan may run once, so that no mistake waits for its turn.
fn check_points(
    path: &Path,
    plan: &CasePlan,
    alias: &ModelAlias,
    settings: &Settings,
) -> anyhow::Result<()> {
    for combo in &plan.combos {
        match &plan.search {
            None => {
                plan.point(path, alias, settings, combo, None, 0, 0)?;
            }
            Some(search) => {
                for value in [search.start, search.max] {
                    plan.point(path, alias, settings, combo, Some(value), 0, 0)?;
                }
            }
        }
    }
    Ok(())
}

/// `{name}`s in the alias's launch command.
fn placeholders(alias: &ModelAlias) -> Vec<String> {
    let Some(server) = &alias.server else {
        return Vec::new();
    };
    let text = &server.launch.value;
    let mut names = Vec::new();
    let mut rest = text.as_str();
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close)
                if after[..close]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && close > 0 =>
            {
                names.push(after[..close].to_string());
                rest = &after[close + 1..];
            }
            _ => rest = after,
        }
    }
    names.sort();
    names.dedup();
    names.retain(|n| !BUILT_IN.contains(&n.as_str()));
    names
}

/// Placeholders tracebench fills itself.
const BUILT_IN: [&str; 5] = ["port", "model", "otlp_grpc", "otlp_http", "tracebench"];

fn check_server_key(
    path: &Path,
    key: &At<String>,
    known: &[&str],
    alias: &str,
) -> anyhow::Result<()> {
    if known.contains(&key.value.as_str()) {
        return Ok(());
    }
    let message = if known.is_empty() {
        format!(
            "`{}`: model alias `{alias}` has no `server.launch` with placeholders to fill",
            key.value
        )
    } else {
        let hint = super::suggest::hint(&key.value, known.iter().copied());
        format!(
            "`{}` is not a placeholder of `{alias}`'s launch command (it has {}){hint}",
            key.value,
            known
                .iter()
                .map(|k| format!("{{{k}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Err(Located::at(path, key, message).into())
}

/// The grid's cartesian product times the zip's rows, and the axis names.
#[allow(clippy::type_complexity)]
fn combos(
    path: &Path,
    case: &Case,
    server_keys: &[&str],
) -> anyhow::Result<(Vec<String>, Vec<Combo>)> {
    let mut axes = Vec::new();
    let mut lists = Vec::new();
    for (key, value) in case.grid.0.iter().chain(&case.zip.0) {
        if !params::is_run_key(&key.value) {
            if server_keys.is_empty() {
                params::check_key(path, key, &[])?;
            }
            check_server_key(path, key, server_keys, &case.model.value)
                .or_else(|e| params::check_key(path, key, server_keys).map_err(|_| e))?;
        }
        if axes.contains(&key.value) {
            return Err(Located::at(path, key, format!("`{}` is varied twice", key.value)).into());
        }
        let Value::Array(items) = &value.value else {
            return Err(Located::at(
                path,
                value,
                format!("`{}` under grid/zip takes a list of values", key.value),
            )
            .into());
        };
        if items.is_empty() {
            return Err(Located::at(path, value, format!("`{}` has no values", key.value)).into());
        }
        let items: Vec<At<Value>> = items
            .iter()
            .map(|item| At {
                value: item.clone(),
                referenced: value.referenced,
                defined: value.defined,
            })
            .collect();
        axes.push(key.value.clone());
        lists.push((key.clone(), items));
    }
    let grid_len = case.grid.0.len();
    let (grid, zip) = lists.split_at(grid_len);
    if let Some(((_, first), rest)) = zip.split_first() {
        if let Some((key, items)) = rest.iter().find(|(_, items)| items.len() != first.len()) {
            return Err(Located::at(
                path,
                key,
                format!(
                    "zip lists move together: `{}` has {} values, the first has {}",
                    key.value,
                    items.len(),
                    first.len()
                ),
            )
            .into());
        }
    }
    let mut combos: Vec<Combo> = vec![Vec::new()];
    for (key, items) in grid {
        combos = combos
            .into_iter()
            .flat_map(|combo| {
                items.iter().map(move |item| {
                    let mut next = combo.clone();
                    next.push((key.clone(), item.clone()));
                    next
                })
            })
            .collect();
    }
    if let Some((_, first)) = zip.first() {
        combos = combos
            .into_iter()
            .flat_map(|combo| {
                (0..first.len()).map(move |row| {
                    let mut next = combo.clone();
                    next.extend(
                        zip.iter()
                            .map(|(key, items)| (key.clone(), items[row].clone())),
                    );
                    next
                })
            })
            .collect();
    }
    Ok((axes, combos))
}

/// Orders combinations so the last axis (the one climbed) varies fastest,
/// keeping each axis's values in the order written.
fn order_combos(mut combos: Vec<Combo>, axes: &[String]) -> Vec<Combo> {
    let position = |combo: &Combo, axis: &String, all: &[Combo]| {
        let value = &combo
            .iter()
            .find(|(k, _)| &k.value == axis)
            .map(|(_, v)| v.value.clone());
        all.iter()
            .filter_map(|c| {
                c.iter()
                    .find(|(k, _)| &k.value == axis)
                    .map(|(_, v)| v.value.clone())
            })
            .position(|v| Some(v) == *value)
            .unwrap_or(0)
    };
    let snapshot = combos.clone();
    combos.sort_by_key(|combo| {
        axes.iter()
            .map(|axis| position(combo, axis, &snapshot))
            .collect::<Vec<_>>()
    });
    combos
}

fn saturation(
    path: &Path,
    case: &Case,
    axes: &[String],
) -> anyhow::Result<Option<(String, Saturation)>> {
    let Some(rule) = &case.stop_at_saturation else {
        return Ok(None);
    };
    let axis = match &rule.axis {
        Some(axis) if axes.contains(axis) => axis.clone(),
        Some(axis) => {
            return Err(Located::at(
                path,
                &case.model,
                format!(
                    "stop_at_saturation.axis `{axis}` is not one of the grid's axes ({})",
                    axes.join(", ")
                ),
            )
            .into())
        }
        None => case
            .grid
            .0
            .first()
            .map(|(k, _)| k.value.clone())
            .ok_or_else(|| {
                Located::at(
                    path,
                    &case.model,
                    "stop_at_saturation needs a `grid:` axis to climb",
                )
            })?,
    };
    for (name, value) in [
        ("throughput_gain", rule.throughput_gain),
        ("ttft_rise", rule.ttft_rise),
        ("error_rate", rule.error_rate),
    ] {
        if !(0.0..=1.0).contains(&value) {
            return Err(Located::at(
                path,
                &case.model,
                format!("stop_at_saturation.{name} is a fraction between 0 and 1, got {value}"),
            )
            .into());
        }
    }
    Ok(Some((axis, rule.clone())))
}

fn search(path: &Path, search: &file::Search) -> anyhow::Result<SearchPlan> {
    let axis = &search.axis;
    if axis.value != "rate" && axis.value != "concurrency" {
        let hint = super::suggest::hint(&axis.value, ["rate", "concurrency"]);
        return Err(Located::at(
            path,
            axis,
            format!(
                "search.axis is `rate` or `concurrency`, not `{}`{hint}",
                axis.value
            ),
        )
        .into());
    }
    let positive = |v: &At<f64>, name: &str| -> anyhow::Result<f64> {
        if v.value.is_finite() && v.value > 0.0 {
            Ok(v.value)
        } else {
            Err(Located::at(path, v, format!("search.{name} must be above 0")).into())
        }
    };
    let start = positive(&search.start, "start")?;
    let max = positive(&search.max, "max")?;
    if max < start {
        return Err(Located::at(path, &search.max, "search.max is below search.start").into());
    }
    let factor = match &search.factor {
        Some(f) if f.value <= 1.0 => {
            return Err(Located::at(path, f, "search.factor must be above 1").into())
        }
        Some(f) => f.value,
        None => 2.0,
    };
    let integer = axis.value == "concurrency";
    let precision = match &search.precision {
        Some(p) => positive(p, "precision")?,
        None if integer => 1.0,
        None => start * 0.1,
    };
    if search.slo.is_empty() {
        return Err(Located::at(path, axis, "search.slo lists no constraint to meet").into());
    }
    let slo = search
        .slo
        .iter()
        .map(|text| Constraint::parse(&text.value).map_err(|e| Located::at(path, text, e).into()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let confirm_margin = match &search.confirm_margin {
        Some(m) if !(0.0..1.0).contains(&m.value) => {
            return Err(Located::at(
                path,
                m,
                "search.confirm_margin is a fraction between 0 and 1",
            )
            .into())
        }
        Some(m) => m.value,
        None => 0.1,
    };
    Ok(SearchPlan {
        axis: axis.clone(),
        start,
        max,
        factor,
        precision,
        slo,
        confirm_margin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> anyhow::Result<Experiment> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.yaml");
        std::fs::write(&path, text).unwrap();
        let settings = Settings::quiet(dir.path().join("points"));
        load(&path, &settings)
    }

    const SIM: &str = "models:\n  sim:\n    url: http://127.0.0.1:18999\n    model: tracebench-sim\n    server:\n      launch: \"{tracebench} sim --port {port} --max-num-seqs {max_num_seqs}\"\n      params: {max_num_seqs: 8}\n";

    #[test]
    fn grids_expand_with_the_climbed_axis_last() {
        let text = format!("{SIM}defaults: {{requests: 10}}\ncases:\n  - model: sim\n    grid:\n      concurrency: [1, 2, 4]\n      max_num_seqs: [4, 8]\n    stop_at_saturation: {{axis: concurrency}}\n");
        let experiment = load_text(&text).unwrap();
        let case = &experiment.cases[0];
        assert_eq!(case.axes, ["max_num_seqs", "concurrency"]);
        let order: Vec<(Value, Value)> = case
            .combos
            .iter()
            .map(|c| {
                let get = |name: &str| {
                    c.iter()
                        .find(|(k, _)| k.value == name)
                        .unwrap()
                        .1
                        .value
                        .clone()
                };
                (get("max_num_seqs"), get("concurrency"))
            })
            .collect();
        assert_eq!(order[0], (4.into(), 1.into()));
        assert_eq!(order[1], (4.into(), 2.into()));
        assert_eq!(order[3], (8.into(), 1.into()));
        let alias = &experiment.models["sim"];
        let settings = Settings::quiet("p");
        let point = case
            .point(
                &experiment.path,
                alias,
                &settings,
                &case.combos[4],
                None,
                0,
                0,
            )
            .unwrap();
        assert!(
            point
                .launch
                .as_deref()
                .unwrap()
                .ends_with("sim --port 18999 --max-num-seqs 8"),
            "{:?}",
            point.launch
        );
        assert_eq!(
            point.config.schedule,
            crate::schedule::Schedule::Closed { concurrency: 2 }
        );
    }

    #[test]
    fn zip_moves_lists_in_lockstep() {
        let text = format!("{SIM}cases:\n  - model: sim\n    zip:\n      concurrency: [1, 8]\n      requests: [10, 80]\n");
        let experiment = load_text(&text).unwrap();
        assert_eq!(experiment.cases[0].combos.len(), 2);
        let text = format!("{SIM}cases:\n  - model: sim\n    zip:\n      concurrency: [1, 8]\n      requests: [10]\n");
        let err = load_text(&text).unwrap_err().to_string();
        assert!(err.contains("zip lists move together"), "{err}");
    }
}
