//! Run parameters in an experiment are `tracebench run`'s own flags, spelled
//! with `_` (`concurrency`, `input_tokens`, `max_concurrency`, `slo`, ...).
//! A point's layers (defaults, the case, its grid values) become a `run`
//! command line, parsed by the same clap definition and checked by the same
//! [`RunConfig::from_args`], so a point accepts exactly what `run` accepts,
//! and a mistake is reported at the key or value in the file that caused it.

use super::file::At;
use super::suggest;
use super::Located;
use crate::cli::RunArgs;
use crate::config::RunConfig;
use clap::{ArgAction, CommandFactory, Parser};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

/// `tracebench run`'s flags, for parsing a point's command line.
#[derive(Parser)]
#[command(name = "tracebench run")]
struct RunFlags {
    #[command(flatten)]
    args: RunArgs,
}

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Takes {
    /// On when present (`no_stream: true`).
    Switch,
    /// One value.
    One,
    /// Repeatable (`gpu: [nvml, http://...]`).
    Many,
}

/// One `run` flag as an experiment key.
#[derive(Debug)]
struct Flag {
    key: String,
    long: String,
    takes: Takes,
    on_off: bool,
}

/// Keys a point may not set, and what sets them instead.
const RESERVED: [(&str, &str); 14] = [
    ("url", "the model alias's `url`"),
    ("endpoint", "the model alias's `endpoint`"),
    ("model", "the model alias's `model`"),
    ("api_key", "the model alias's `api_key_env`"),
    ("header", "the model alias's `headers`"),
    ("tokenizer", "the model alias's `tokenizer`"),
    ("out", "the experiment (`tracebench experiment --out`)"),
    ("run_id", "the experiment (each point is named)"),
    ("db", "the experiment (`tracebench experiment --db`)"),
    ("no_db", "the experiment (`tracebench experiment --no-db`)"),
    (
        "no_tui",
        "the experiment (`tracebench experiment --no-tui`)",
    ),
    (
        "shard",
        "`tracebench run` alone: a point runs in one process",
    ),
    (
        "shards",
        "`tracebench run` alone: a point runs in one process",
    ),
    (
        "start_at",
        "`tracebench run` alone: a point starts when the one before ends",
    ),
];

/// Parameters naming files or folders: read relative to the experiment file.
const FILE_KEYS: [&str; 3] = ["dataset", "trace_replay", "image_dir"];

/// Keys of which a point holds at most one: a later layer's replaces the others.
const EXCLUSIVE: [&[&str]; 3] = [
    &["concurrency", "rate", "batch_size"],
    &["requests", "duration"],
    &["preconnect", "no_preconnect"],
];

fn flags() -> &'static [Flag] {
    static FLAGS: OnceLock<Vec<Flag>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        RunFlags::command()
            .get_arguments()
            .filter_map(|arg| {
                let long = arg.get_long()?.to_string();
                let takes = match arg.get_action() {
                    ArgAction::SetTrue => Takes::Switch,
                    ArgAction::Append => Takes::Many,
                    ArgAction::Set => Takes::One,
                    _ => return None,
                };
                let on_off = arg
                    .get_possible_values()
                    .iter()
                    .any(|v| v.get_name() == "on");
                Some(Flag {
                    key: long.replace('-', "_"),
                    long,
                    takes,
                    on_off,
                })
            })
            .collect()
    })
}

/// Every key a point may set.
pub fn known_keys() -> impl Iterator<Item = &'static str> {
    flags()
        .iter()
        .map(|f| f.key.as_str())
        .filter(|k| !RESERVED.iter().any(|(r, _)| r == k))
}

/// True when `key` is a run parameter a point may set.
pub fn is_run_key(key: &str) -> bool {
    known_keys().any(|k| k == key)
}

/// Checks a key: known, not reserved; the error says what to write instead.
pub fn check_key(file: &Path, key: &At<String>, also: &[&str]) -> anyhow::Result<()> {
    if let Some((_, by)) = RESERVED.iter().find(|(r, _)| *r == key.value) {
        return Err(Located::at(
            file,
            key,
            format!("`{}` is set by {by}, not per point", key.value),
        )
        .into());
    }
    if is_run_key(&key.value) || also.contains(&key.value.as_str()) {
        return Ok(());
    }
    let mut known: Vec<&str> = also.to_vec();
    for key in known_keys() {
        known.push(key);
    }
    let hint = suggest::hint(&key.value, known);
    Err(Located::at(
        file,
        key,
        format!("unknown run parameter `{}`{hint}", key.value),
    )
    .into())
}

/// A point's run parameters: layers merged in order, each value with its place.
#[derive(Debug, Clone, Default)]
pub struct Layered {
    values: BTreeMap<String, (At<String>, At<Value>)>,
}

impl Layered {
    /// Sets `key` over whatever an earlier layer set (and its exclusive siblings).
    pub fn set(&mut self, key: &At<String>, value: &At<Value>) {
        if let Some(group) = EXCLUSIVE.iter().find(|g| g.contains(&key.value.as_str())) {
            group.iter().for_each(|k| {
                self.values.remove(*k);
            });
        }
        self.values
            .insert(key.value.clone(), (key.clone(), value.clone()));
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key).map(|(_, v)| &v.value)
    }

    /// The parameters as plain JSON (for `experiment.json` and `points.csv`).
    pub fn to_json(&self) -> BTreeMap<String, Value> {
        self.values
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.value.clone()))
            .collect()
    }

    /// The `run` flags these parameters stand for.
    pub fn flags(&self, file: &Path) -> anyhow::Result<Vec<String>> {
        let mut argv = Vec::new();
        for (key, value) in self.values.values() {
            let flag = flags()
                .iter()
                .find(|f| f.key == key.value)
                .expect("keys are checked when read");
            push_flag(file, flag, value, &mut argv)?;
        }
        Ok(argv)
    }

    /// Parses `base` (the alias's and the experiment's flags) plus these
    /// parameters as `tracebench run` would; also returns the flags.
    pub fn run_config(
        &self,
        file: &Path,
        base: &[String],
    ) -> anyhow::Result<(RunConfig, Vec<String>)> {
        let mut argv = base.to_vec();
        argv.extend(self.flags(file)?);
        let program = std::iter::once("tracebench run".to_string());
        let flags = RunFlags::try_parse_from(program.chain(argv.iter().cloned()))
            .map_err(|e| self.locate_clap(file, &e))?;
        let config = RunConfig::from_args(&flags.args)
            .map_err(|e| self.locate_message(file, &e.to_string()))?;
        Ok((config, argv))
    }

    /// A clap error at the key whose flag it names.
    fn locate_clap(&self, file: &Path, error: &clap::Error) -> anyhow::Error {
        let message = error
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string();
        self.locate_message(file, &message)
    }

    /// An error naming `--some-flag`, placed at that key's value when a layer set it.
    fn locate_message(&self, file: &Path, message: &str) -> anyhow::Error {
        let named = message
            .split("--")
            .skip(1)
            .filter_map(|rest| {
                let long: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                self.values.get(&long.replace('-', "_"))
            })
            .next();
        match named {
            Some((key, value)) => {
                let message = message.replace(
                    &format!("--{}", key.value.replace('_', "-")),
                    &format!("`{}`", key.value),
                );
                Located::at(file, value, message).into()
            }
            None => anyhow::anyhow!("{}: {message}", file.display()),
        }
    }
}

/// Appends the flag for one value, or says why the value cannot be one.
fn push_flag(
    file: &Path,
    flag: &Flag,
    value: &At<Value>,
    argv: &mut Vec<String>,
) -> anyhow::Result<()> {
    let long = format!("--{}", flag.long);
    if let (true, Value::String(path)) = (FILE_KEYS.contains(&flag.key.as_str()), &value.value) {
        let path = super::file::relative_to(file, path);
        argv.extend([long, path.display().to_string()]);
        return Ok(());
    }
    let bad = |what: &str| -> anyhow::Error {
        Located::at(file, value, format!("`{}` {what}", flag.key)).into()
    };
    match (&value.value, flag.takes) {
        (Value::Null, _) => {}
        (Value::Bool(on), Takes::Switch) => {
            if *on {
                argv.push(long);
            }
        }
        (_, Takes::Switch) => return Err(bad("is a switch: write true or false")),
        (Value::Array(items), Takes::Many) => {
            for item in items {
                argv.push(long.clone());
                argv.push(scalar(item, flag.on_off).ok_or_else(|| bad("takes plain values"))?);
            }
        }
        (Value::Array(_), Takes::One) => {
            return Err(bad(
                "takes one value (to try several, list them under `grid:` or `zip:`)",
            ))
        }
        (other, _) => {
            argv.push(long);
            argv.push(scalar(other, flag.on_off).ok_or_else(|| bad("takes a plain value"))?);
        }
    }
    Ok(())
}

/// A YAML value as a flag's text; objects as JSON (for `extra_body`).
fn scalar(value: &Value, on_off: bool) -> Option<String> {
    Some(match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) if on_off => if *b { "on" } else { "off" }.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Object(_) => value.to_string(),
        Value::Null | Value::Array(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    fn at<T>(value: T, line: u64) -> At<T> {
        let yaml = format!("{}v: 0\n", "\n".repeat(line as usize - 1));
        #[derive(serde::Deserialize)]
        struct One {
            v: At<Value>,
        }
        let one: One = serde_saphyr::from_str(&yaml).unwrap();
        At {
            value,
            referenced: one.v.referenced,
            defined: one.v.defined,
        }
    }

    fn set(layered: &mut Layered, key: &str, value: Value, line: u64) {
        layered.set(&at(key.to_string(), line), &at(value, line));
    }

    #[test]
    fn layers_become_a_run_config() {
        let mut layered = Layered::default();
        set(&mut layered, "rate", 4.0.into(), 1);
        set(&mut layered, "requests", 20.into(), 2);
        set(&mut layered, "concurrency", 8.into(), 3);
        set(&mut layered, "ignore_eos", true.into(), 4);
        set(&mut layered, "trace_header", false.into(), 5);
        let (config, _) = layered
            .run_config(Path::new("e.yaml"), &["--no-tui".to_string()])
            .unwrap();
        assert_eq!(config.schedule, Schedule::Closed { concurrency: 8 });
        assert!(config.ignore_eos);
        assert_eq!(
            layered.get("rate"),
            None,
            "a later load replaces an earlier one"
        );
    }

    #[test]
    fn a_bad_value_is_reported_at_its_line() {
        let mut layered = Layered::default();
        set(&mut layered, "requests", 0.into(), 7);
        let err = layered.run_config(Path::new("e.yaml"), &[]).unwrap_err();
        let located = err.downcast_ref::<Located>().expect("placed");
        assert_eq!(located.line, 7);
        assert!(
            located.message.contains("`requests` must be at least 1"),
            "{}",
            located.message
        );
        let mut layered = Layered::default();
        set(&mut layered, "concurrency", "many".into(), 3);
        let err = layered.run_config(Path::new("e.yaml"), &[]).unwrap_err();
        assert_eq!(err.downcast_ref::<Located>().expect("placed").line, 3);
    }

    #[test]
    fn dataset_files_are_read_beside_the_experiment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prompts.jsonl"), "{\"prompt\": \"hi\"}\n").unwrap();
        let mut layered = Layered::default();
        set(&mut layered, "dataset", "prompts.jsonl".into(), 1);
        let (config, _) = layered.run_config(&dir.path().join("e.yaml"), &[]).unwrap();
        match config.source {
            crate::workload::Source::Dataset { path, .. } => {
                assert_eq!(path, dir.path().join("prompts.jsonl"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_are_checked_with_a_suggestion() {
        let file = Path::new("e.yaml");
        let err = check_key(file, &at("concurency".to_string(), 2), &[]).unwrap_err();
        assert!(
            err.to_string().contains("did you mean `concurrency`"),
            "{err}"
        );
        let err = check_key(file, &at("url".to_string(), 2), &[]).unwrap_err();
        assert!(err.to_string().contains("model alias"), "{err}");
        check_key(file, &at("max_num_seqs".to_string(), 2), &["max_num_seqs"]).unwrap();
    }
}
