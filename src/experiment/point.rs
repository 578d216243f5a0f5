//! One point of a plan: a case's run parameters, with a grid combination
//! (and a search value, a repeat's seed) over them, become a checked
//! `RunConfig`, the `tracebench run` flags it stands for, and the server's
//! launch command with every placeholder filled.

use super::file::{self, At, ModelAlias, SeedPolicy};
use super::params::{self, Layered};
use super::plan::{CasePlan, Settings};
use super::results::{param_text, PointSpec};
use super::Located;
use crate::config::RunConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// One run of the plan.
#[derive(Debug, Clone)]
pub struct Point {
    pub spec: PointSpec,
    /// The launch command, when tracebench runs the server.
    pub launch: Option<String>,
    /// The `tracebench run` flags of the point (secrets included: mask before showing).
    pub argv: Vec<String>,
    pub config: RunConfig,
}

impl CasePlan {
    /// The point of `combo` (and the search axis at `value`), repeat and trial.
    #[allow(clippy::too_many_arguments)]
    pub fn point(
        &self,
        path: &Path,
        alias: &ModelAlias,
        settings: &Settings,
        combo: &[(At<String>, At<Value>)],
        value: Option<f64>,
        repeat: u32,
        trial: u32,
    ) -> anyhow::Result<Point> {
        let mut run = self.run.clone();
        let mut server = self.server.clone();
        let mut axes = BTreeMap::new();
        for (key, v) in combo {
            if params::is_run_key(&key.value) {
                run.set(key, v);
            } else {
                server.set(key, v);
            }
            axes.insert(key.value.clone(), v.value.clone());
        }
        if let (Some(search), Some(value)) = (&self.search, value) {
            let v = if search.integer() {
                Value::from(value.round() as u64)
            } else {
                Value::from(value)
            };
            run.set(
                &search.axis,
                &At {
                    value: v.clone(),
                    referenced: search.axis.referenced,
                    defined: search.axis.defined,
                },
            );
            axes.insert(search.axis.value.clone(), v);
        }
        let base_seed = match run.get("seed") {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
            Some(Value::String(s)) => s.parse().unwrap_or(0),
            _ => 0,
        };
        let seed = base_seed
            + match self.seed_policy {
                SeedPolicy::Increment => u64::from(repeat),
                SeedPolicy::Same => 0,
            }
            + u64::from(trial);
        let seed_key = At {
            value: "seed".to_string(),
            referenced: serde_saphyr::Location::UNKNOWN,
            defined: serde_saphyr::Location::UNKNOWN,
        };
        run.set(
            &seed_key,
            &At {
                value: seed.into(),
                referenced: seed_key.referenced,
                defined: seed_key.defined,
            },
        );
        if let Some(body) = &alias.body {
            merge_body(path, &mut run, body)?;
        }
        let id = self.point_id(combo, value, repeat, trial);
        let base = base_flags(path, alias, settings, &id)?;
        let (config, argv) = run.run_config(path, &base)?;
        let launch = alias
            .server
            .as_ref()
            .map(|s| launch_command(path, &s.launch, alias, &server, &config))
            .transpose()?;
        Ok(Point {
            spec: PointSpec {
                label: label(&self.name, &axes, repeat, self.repeats, trial),
                id,
                case: self.index,
                axes,
                repeat,
                trial,
                seed,
                params: run.to_json(),
            },
            launch,
            argv,
            config,
        })
    }

    /// Seconds each run lasts when its stop is a `duration`.
    pub fn run_duration(&self) -> Option<f64> {
        match self.run.get("duration")? {
            Value::String(text) => crate::units::parse_duration(text)
                .ok()
                .map(|d| d.as_secs_f64()),
            _ => None,
        }
    }

    /// A stable, unique folder name for a point.
    fn point_id(
        &self,
        combo: &[(At<String>, At<Value>)],
        value: Option<f64>,
        repeat: u32,
        trial: u32,
    ) -> String {
        let combo_index = self
            .combos
            .iter()
            .position(|c| {
                c.iter()
                    .map(|(_, v)| &v.value)
                    .eq(combo.iter().map(|(_, v)| &v.value))
            })
            .unwrap_or(0);
        let mut id = format!("c{}-{:03}", self.index + 1, combo_index + 1);
        if let Some(value) = value {
            id.push_str(&format!("-at{}", value_text(value)));
            id.push_str(&format!("-t{}", trial + 1));
        }
        id.push_str(&format!("-r{}", repeat + 1));
        id
    }
}

/// `2.5`, `16`: a probe value as a folder-name part.
pub fn value_text(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

fn label(
    case: &str,
    axes: &BTreeMap<String, Value>,
    repeat: u32,
    repeats: u32,
    trial: u32,
) -> String {
    let mut label = case.to_string();
    for (k, v) in axes {
        label.push_str(&format!(" {k}={}", param_text(v)));
    }
    if repeats > 1 {
        label.push_str(&format!(" repeat {}/{repeats}", repeat + 1));
    }
    if trial > 0 {
        label.push_str(&format!(" trial {}", trial + 1));
    }
    label
}

/// The alias's body fields under the point's own `extra_body`.
fn merge_body(path: &Path, run: &mut Layered, body: &At<Value>) -> anyhow::Result<()> {
    let Value::Object(mut merged) = body.value.clone() else {
        return Err(Located::at(path, body, "`body` is a map of JSON fields").into());
    };
    match run.get("extra_body") {
        Some(Value::Object(own)) => merged.extend(own.clone()),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(own)) => merged.extend(own),
            _ => {
                return Err(Located::at(
                    path,
                    body,
                    "`extra_body` must be a JSON object to merge with the alias's `body`",
                )
                .into())
            }
        },
        _ => {}
    }
    let key = At {
        value: "extra_body".to_string(),
        referenced: body.referenced,
        defined: body.defined,
    };
    run.set(
        &key,
        &At {
            value: Value::Object(merged),
            referenced: body.referenced,
            defined: body.defined,
        },
    );
    Ok(())
}

/// The flags the alias and the experiment give every point.
fn base_flags(
    path: &Path,
    alias: &ModelAlias,
    settings: &Settings,
    id: &str,
) -> anyhow::Result<Vec<String>> {
    let mut flags = vec!["--url".to_string(), alias.url.value.clone()];
    if let Some(endpoint) = &alias.endpoint {
        if endpoint.value != "chat" && endpoint.value != "completions" {
            return Err(Located::at(
                path,
                endpoint,
                format!(
                    "`endpoint` is `chat` or `completions`, not `{}`",
                    endpoint.value
                ),
            )
            .into());
        }
        flags.extend(["--endpoint".to_string(), endpoint.value.clone()]);
    }
    if let Some(model) = &alias.model {
        flags.extend(["--model".to_string(), model.clone()]);
    }
    if let Some(tokenizer) = &alias.tokenizer {
        let file = file::relative_to(path, &tokenizer.value);
        if !file.exists() {
            return Err(Located::at(
                path,
                tokenizer,
                format!("tokenizer {} does not exist", file.display()),
            )
            .into());
        }
        flags.extend(["--tokenizer".to_string(), file.display().to_string()]);
    }
    if let Some(var) = &alias.api_key_env {
        let key = std::env::var(&var.value).map_err(|_| {
            Located::at(
                path,
                var,
                format!(
                    "environment variable `{}` (the API key) is not set",
                    var.value
                ),
            )
        })?;
        flags.extend(["--api-key".to_string(), key]);
    }
    for (name, value) in &alias.headers {
        flags.extend(["--header".to_string(), format!("{name}: {value}")]);
    }
    flags.extend([
        "--out".to_string(),
        settings.points_dir.display().to_string(),
        "--run-id".to_string(),
        format!("{}{id}", settings.run_prefix),
    ]);
    if !settings.tui {
        flags.push("--no-tui".to_string());
    }
    match &settings.db {
        Some(db) => flags.extend(["--db".to_string(), db.display().to_string()]),
        None => flags.push("--no-db".to_string()),
    }
    Ok(flags)
}

/// The launch command with every placeholder filled.
fn launch_command(
    path: &Path,
    launch: &At<String>,
    alias: &ModelAlias,
    server: &Layered,
    config: &RunConfig,
) -> anyhow::Result<String> {
    let port = url_port(&config.url);
    let tracebench = std::env::current_exe()
        .map(|p| shell_quote(&p.display().to_string()))
        .unwrap_or_else(|_| "tracebench".into());
    let mut out = String::new();
    let mut rest = launch.value.as_str();
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}').filter(|c| {
            *c > 0
                && after[..*c]
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        }) else {
            out.push('{');
            rest = after;
            continue;
        };
        let name = &after[..close];
        let value = match name {
            "port" => port.map(|p| p.to_string()),
            "model" => alias.model.clone(),
            "otlp_grpc" => Some(config.trace.otlp_grpc.to_string()),
            "otlp_http" => Some(config.trace.otlp_http.to_string()),
            "tracebench" => Some(tracebench.clone()),
            other => server.get(other).map(param_text),
        };
        let value = value.ok_or_else(|| {
            Located::at(path, launch, format!("placeholder `{{{name}}}` has no value: set it under the alias's `server.params`, the case's `server:` or a grid axis{}", if name == "model" { " (or give the alias a `model`)" } else { "" }))
        })?;
        out.push_str(&value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The port of an `http://host:port` URL (the scheme's default when absent).
pub fn url_port(url: &str) -> Option<u16> {
    let parsed = reqwest::Url::parse(url).ok()?;
    parsed.port_or_known_default()
}

fn shell_quote(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
