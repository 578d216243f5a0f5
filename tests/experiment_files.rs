//! Experiment files: every kind of mistake gives one clear error, at its
//! line and column, before anything runs; the checked-in files follow the
//! JSON Schema (`schemas/experiment.schema.json`), which knows exactly the
//! run parameters `tracebench run` has.

use serde_json::Value;
use std::path::{Path, PathBuf};
use tracebench::experiment::plan::{load, Settings};
use tracebench::experiment::Located;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const ALIASES: &str = "models:
  vllm:
    url: http://127.0.0.1:18999
    model: tiny
    server:
      launch: \"vllm serve m --port {port} --max-num-seqs {max_num_seqs}\"
      params: {max_num_seqs: 8}
";

/// Writes `text` as an experiment (and a models file beside it) and loads it.
fn try_load(text: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("models.yaml"), ALIASES).unwrap();
    let path = dir.path().join("e.yaml");
    std::fs::write(&path, text).unwrap();
    let settings = Settings::quiet(dir.path().join("points"));
    load(&path, &settings).map(|_| ())
}

#[test]
fn every_kind_of_mistake_is_reported_at_its_place() {
    // (what, file body after `models_file: models.yaml\n`, message part, line, column)
    let cases: &[(&str, &str, &str, u64, u64)] = &[
        ("misspelt top-level key", "casess: []\n", "unknown field `casess`", 2, 1),
        ("top-level did-you-mean", "casess: []\n", "did you mean `cases`", 2, 1),
        ("misspelt case key", "cases:\n  - model: vllm\n    repeets: 3\n", "did you mean `repeats`", 4, 5),
        ("wrong type", "cases:\n  - model: vllm\n    repeats: many\n", "invalid", 4, 14),
        ("impossible repeats", "cases:\n  - model: vllm\n    repeats: 0\n", "`repeats` must be at least 1", 4, 14),
        ("unknown run parameter", "defaults:\n  concurency: 4\ncases:\n  - model: vllm\n", "did you mean `concurrency`", 3, 3),
        ("impossible run value", "defaults:\n  requests: 0\ncases:\n  - model: vllm\n", "`requests` must be at least 1", 3, 13),
        ("run value of the wrong kind", "cases:\n  - model: vllm\n    params:\n      concurrency: fast\n", "invalid value 'fast'", 5, 20),
        ("a list where one value goes", "cases:\n  - model: vllm\n    params:\n      concurrency: [1, 2]\n", "list them under `grid:`", 5, 20),
        ("a switch given a value", "defaults:\n  ignore_eos: sometimes\ncases:\n  - model: vllm\n", "is a switch", 3, 15),
        ("a key the alias sets", "defaults:\n  url: http://x\ncases:\n  - model: vllm\n", "set by the model alias", 3, 3),
        ("unknown model alias", "cases:\n  - model: vlm\n", "no model alias `vlm` (did you mean `vllm`?)", 3, 12),
        ("grid value not a list", "cases:\n  - model: vllm\n    grid:\n      concurrency: 4\n", "takes a list", 5, 20),
        ("zip of unequal lists", "cases:\n  - model: vllm\n    zip:\n      concurrency: [1, 2]\n      requests: [10]\n", "zip lists move together", 6, 7),
        ("unknown server parameter", "cases:\n  - model: vllm\n    server:\n      max_num_seq: 4\n", "did you mean `max_num_seqs`", 5, 7),
        ("bad grid value", "cases:\n  - model: vllm\n    grid:\n      concurrency: [1, lots]\n", "invalid value 'lots'", 5, 20),
        ("search on an unknown axis", "cases:\n  - model: vllm\n    search: {axis: rpm, start: 1, max: 8, slo: [\"p99_ttft_ms <= 1s\"]}\n", "search.axis is `rate` or `concurrency`", 4, 20),
        ("search start above max", "cases:\n  - model: vllm\n    search: {axis: rate, start: 9, max: 8, slo: [\"p99_ttft_ms <= 1s\"]}\n", "search.max is below search.start", 4, 41),
        ("SLO on an unknown metric", "cases:\n  - model: vllm\n    search:\n      axis: rate\n      start: 1\n      max: 8\n      slo: [\"p99_ttf_ms <= 1s\"]\n", "did you mean `p99_ttft_ms`", 8, 13),
        ("SLO without a comparison", "cases:\n  - model: vllm\n    search:\n      axis: rate\n      start: 1\n      max: 8\n      slo: [\"p99_ttft_ms 1s\"]\n", "needs a comparison", 8, 13),
        ("saturation on a missing axis", "cases:\n  - model: vllm\n    grid: {concurrency: [1, 2]}\n    stop_at_saturation: {axis: rate}\n", "is not one of the grid's axes", 3, 12),
        ("search and saturation together", "cases:\n  - model: vllm\n    grid: {concurrency: [1, 2]}\n    stop_at_saturation: {}\n    search: {axis: rate, start: 1, max: 8, slo: [\"error_rate < 1%\"]}\n", "not both", 3, 12),
        ("undefined variable", "cases:\n  - model: ${NOT_DEFINED_ANYWHERE_XYZ}\n", "`${NOT_DEFINED_ANYWHERE_XYZ}` is not defined", 3, 12),
        ("YAML syntax", "cases: [\n", "unclosed bracket", 2, 8),
        ("API key variable unset", "models:\n  k:\n    url: http://127.0.0.1:1\n    api_key_env: NOT_SET_TRACEBENCH_KEY_XYZ\ncases:\n  - model: k\n", "`NOT_SET_TRACEBENCH_KEY_XYZ` (the API key) is not set", 5, 18),
        ("misspelt alias key", "models:\n  k:\n    urll: http://127.0.0.1:1\ncases:\n  - model: k\n", "did you mean `url`", 4, 5),
    ];
    let mut wrong = Vec::new();
    for (what, body, part, line, column) in cases {
        let text = format!("models_file: models.yaml\n{body}");
        let err = try_load(&text).expect_err(what);
        let located = err
            .downcast_ref::<Located>()
            .unwrap_or_else(|| panic!("{what}: not placed: {err:#}"));
        if !located.message.contains(part) || (located.line, located.column) != (*line, *column) {
            wrong.push(format!(
                "{what}: expected {line}:{column} `{part}`, got {located}"
            ));
        }
        assert!(
            err.to_string()
                .contains(&format!("e.yaml:{}:{}: ", located.line, located.column)),
            "{what}: {err}"
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_missing_models_file_names_it() {
    let err = try_load("models_file: nowhere.yaml\ncases:\n  - model: vllm\n").unwrap_err();
    assert!(
        err.to_string().contains("e.yaml:1:14: cannot read")
            && err.to_string().contains("nowhere.yaml"),
        "{err}"
    );
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo("schemas/experiment.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).expect("a valid schema")
}

#[test]
fn checked_in_files_follow_the_schema() {
    let validator = validator();
    let mut files = Vec::new();
    for dir in ["examples/experiments", "tests/data/experiments"] {
        for entry in std::fs::read_dir(repo(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    std::env::set_var("SIM_PORT", "18000");
    std::env::set_var("OTLP_GRPC", "127.0.0.1:4317");
    std::env::set_var("OTLP_HTTP", "127.0.0.1:4318");
    std::env::set_var("TRACEBENCH_TEST_API_KEY", "sk-test");
    let models = validator_for_models();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
    {
        let value = tracebench::experiment::file::read_value(file).unwrap();
        let is_models = file.file_name().is_some_and(|n| n == "models.yaml");
        let errors: Vec<String> = if is_models {
            models.iter_errors(&value)
        } else {
            validator.iter_errors(&value)
        }
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
        if !is_models {
            let settings = Settings::quiet("points");
            load(file, &settings).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
        }
    }
    let bad: Value = serde_json::json!({"cases": [{"model": "m", "params": {"concurency": 4}}]});
    assert!(
        !validator.is_valid(&bad),
        "the schema rejects unknown run parameters too"
    );
}

/// The schema's definition of a models file.
fn validator_for_models() -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo("schemas/experiment.schema.json")).unwrap();
    let mut schema: Value = serde_json::from_str(&text).unwrap();
    schema["$ref"] = "#/$defs/modelsFile".into();
    schema.as_object_mut().unwrap().remove("properties");
    schema.as_object_mut().unwrap().remove("required");
    schema
        .as_object_mut()
        .unwrap()
        .remove("additionalProperties");
    jsonschema::validator_for(&schema).expect("a valid schema")
}

#[test]
fn the_schema_knows_exactly_the_run_parameters() {
    let text = std::fs::read_to_string(repo("schemas/experiment.schema.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    let mut in_schema: Vec<String> = schema["$defs"]["runParams"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut in_run: Vec<String> = tracebench::experiment::params::known_keys()
        .map(str::to_string)
        .collect();
    in_schema.sort();
    in_run.sort();
    assert_eq!(
        in_schema, in_run,
        "schemas/experiment.schema.json's runParams must list `tracebench run`'s flags"
    );
}
