//! The experiment file (`tracebench experiment FILE.yaml`, documented in
//! `docs/experiments.md`, schema `schemas/experiment.schema.json`): read,
//! with `${NAME:-default}` variables substituted, into typed sections whose
//! values keep their line and column, so every later check can point at the
//! place in the file that is wrong.

use super::Located;
use anyhow::Context;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A value and where it stands in the file.
pub type At<T> = Spanned<T>;

/// A YAML map kept in file order, every key and value with its place: run
/// parameters, server parameters, grid axes.
#[derive(Debug, Default, Clone)]
pub struct Params(pub Vec<(At<String>, At<Value>)>);

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ParamsVisitor;
        impl<'de> Visitor<'de> for ParamsVisitor {
            type Value = Params;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of `name: value`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<At<String>>()? {
                    entries.push((key, map.next_value::<At<Value>>()?));
                }
                Ok(Params(entries))
            }
        }
        deserializer.deserialize_map(ParamsVisitor)
    }
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&At<Value>> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key.value == name)
            .map(|(_, v)| v)
    }
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    /// Names the experiment folder (`experiments/<name>-<timestamp>`).
    pub name: Option<String>,
    /// `name: value` pairs for `${name}` in the rest of the file (read first).
    #[serde(default)]
    pub variables: BTreeMap<String, Value>,
    /// A YAML file of model aliases shared by several experiments, relative to this file.
    pub models_file: Option<At<String>>,
    /// Model aliases; they override the `models_file` ones of the same name.
    #[serde(default)]
    pub models: BTreeMap<String, ModelAlias>,
    /// Run parameters every case starts from.
    #[serde(default)]
    pub defaults: Params,
    pub cases: Vec<Case>,
    /// `continue` (the default) or `stop` when a point fails.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// What to do when a point fails.
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Continue,
    Stop,
}

/// A `models_file`: aliases only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsFile {
    pub models: BTreeMap<String, ModelAlias>,
}

/// One server and model the cases can name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelAlias {
    /// Base URL of the OpenAI-compatible server.
    pub url: At<String>,
    /// Served model name (default: the first of `GET /v1/models`).
    pub model: Option<String>,
    /// `chat` (default) or `completions`.
    pub endpoint: Option<At<String>>,
    /// A tokenizer.json for exact prompt lengths.
    pub tokenizer: Option<At<String>>,
    /// Name of the environment variable holding the API key (the key itself is never written).
    pub api_key_env: Option<At<String>>,
    /// Extra request headers (values are not written to any output).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON fields merged into every request body.
    pub body: Option<At<Value>>,
    /// How tracebench starts and stops this server, when it should.
    pub server: Option<Lifecycle>,
}

/// A server tracebench launches itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    /// Shell command with `{placeholders}`: `{port}`, `{model}`, `{otlp_grpc}`,
    /// `{otlp_http}`, `{tracebench}` and every server parameter.
    pub launch: At<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// URL or path answering 200 once the server is ready (default `/health`).
    pub ready_url: Option<String>,
    /// Longest wait for readiness (default 10m).
    pub ready_timeout: Option<At<String>>,
    /// Calls made before every point, e.g. `POST /reset_prefix_cache`.
    #[serde(default)]
    pub reset: Vec<At<String>>,
    /// Restart before every point, not only when the launch command changes.
    #[serde(default)]
    pub restart_between_points: bool,
    /// SIGTERM, then SIGKILL after this long (default 10s).
    pub stop_grace: Option<At<String>>,
    /// Values of the launch placeholders, overridable by cases and grids.
    #[serde(default)]
    pub params: Params,
}

/// One study: a model, a workload and a load, varied by a grid or a search.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: Option<String>,
    /// A model alias.
    pub model: At<String>,
    /// Run parameters over the defaults.
    #[serde(default)]
    pub params: Params,
    /// Server parameters over the alias's.
    #[serde(default)]
    pub server: Params,
    /// Every combination of these values.
    #[serde(default)]
    pub grid: Params,
    /// These lists moved in lockstep (all of the same length).
    #[serde(default)]
    pub zip: Params,
    /// Runs of each point (default 1).
    pub repeats: Option<At<u32>>,
    /// `increment` (seed + repeat, the default) or `same`.
    #[serde(default)]
    pub seed_policy: SeedPolicy,
    pub stop_at_saturation: Option<Saturation>,
    pub search: Option<Search>,
    /// Call the server's profiler around each point.
    #[serde(default)]
    pub profile: bool,
}

/// The seed of repeat `r` of a point.
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedPolicy {
    /// seed + r: the repeats see different prompts and arrivals.
    #[default]
    Increment,
    /// The same seed every repeat: only the server's own variation shows.
    Same,
}

/// When to stop climbing a grid axis.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Saturation {
    /// The axis climbed (default: the grid's first).
    pub axis: Option<String>,
    /// Output throughput rising by less than this fraction...
    #[serde(default = "default_throughput_gain")]
    pub throughput_gain: f64,
    /// ...while TTFT p50 rises by more than this fraction.
    #[serde(default = "default_ttft_rise")]
    pub ttft_rise: f64,
    /// Stop when the server's queue time grows through the point.
    #[serde(default = "yes")]
    pub queue_growth: bool,
    /// Stop when more than this fraction of requests failed.
    #[serde(default = "default_error_limit")]
    pub error_rate: f64,
}

fn default_throughput_gain() -> f64 {
    0.05
}
fn default_ttft_rise() -> f64 {
    0.10
}
fn default_error_limit() -> f64 {
    0.05
}
fn yes() -> bool {
    true
}

/// Find the highest load that meets every SLO.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Search {
    /// `rate` or `concurrency`.
    pub axis: At<String>,
    /// Where bracketing starts.
    pub start: At<f64>,
    /// The highest value tried.
    pub max: At<f64>,
    /// Bracketing multiplies by this (default 2).
    pub factor: Option<At<f64>>,
    /// Bisect until the passing and failing values are this close (default 1
    /// for concurrency, 10% of `start` for rate).
    pub precision: Option<At<f64>>,
    /// Constraints such as `p99_ttft_ms <= 500`, `goodput_fraction >= 95%`.
    pub slo: Vec<At<String>>,
    /// A verdict whose tightest margin is within this fraction of its limit
    /// needs two agreeing trials (default 0.1).
    pub confirm_margin: Option<At<f64>>,
}

/// A file as written and after variable substitution.
pub struct Texts {
    pub raw: String,
    pub resolved: String,
}

/// Reads an experiment file: variables first, then the sections.
pub fn read(path: &Path) -> anyhow::Result<(ExperimentFile, Texts)> {
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read experiment file {}", path.display()))?;
    read_text(path, raw)
}

/// Reads an experiment from its text (`path` names it in errors and
/// anchors its relative paths): what a study builds in code.
pub fn read_text(path: &Path, raw: String) -> anyhow::Result<(ExperimentFile, Texts)> {
    let resolved = super::vars::substitute(path, &raw)?;
    let file: ExperimentFile = parse(path, &resolved)?;
    Ok((file, Texts { raw, resolved }))
}

/// The file after variable substitution as plain JSON (for schema checks).
pub fn read_value(path: &Path) -> anyhow::Result<Value> {
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read experiment file {}", path.display()))?;
    parse(path, &super::vars::substitute(path, &raw)?)
}

/// Reads the aliases of a `models_file`, relative to the experiment file.
pub fn read_models(experiment: &Path, name: &At<String>) -> anyhow::Result<(ModelsFile, String)> {
    let path = relative_to(experiment, &name.value);
    let raw = std::fs::read_to_string(&path).map_err(|e| {
        Located::at(
            experiment,
            name,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let text = super::vars::substitute(&path, &raw)?;
    Ok((parse(&path, &text)?, raw))
}

/// `name` read next to `file` unless absolute.
pub fn relative_to(file: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    match file.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name.to_path_buf(),
    }
}

/// YAML text into `T`, with the error's place and a "did you mean".
pub fn parse<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> anyhow::Result<T> {
    serde_saphyr::from_str::<T>(text).map_err(|e| {
        let message = e.to_string();
        let first = message.lines().next().unwrap_or_default();
        let first = first.strip_prefix("error: ").unwrap_or(first);
        let reason = match first.split_once(": ") {
            Some((place, rest)) if place.starts_with("line ") => rest,
            _ => first,
        };
        let hint = super::suggest::for_unknown_field(reason);
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        anyhow::Error::new(Located {
            file: path.to_path_buf(),
            line,
            column,
            message: format!("{reason}{hint}"),
        })
    })
}
