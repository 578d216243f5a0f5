//! `tracebench study batching|output-length|goodput|coldstart`: the
//! questions people who run inference servers keep asking, each a recipe.
//! A study builds an experiment plan (the experiment file's format, as
//! text), runs it through the experiment runner (`experiment::runner::
//! run_plan`), and adds its analysis: the `study` section of
//! `experiment.json` and of `report.html`, whose verdict is also the last
//! line of the reading (console, history). The studies: [`batching`],
//! [`output_length`], [`goodput`], [`coldstart`] (with [`policy`] and
//! [`gpu_idle`]); shared reading of the points' folders in [`figures`].

pub mod args;
pub mod batching;
pub mod coldstart;
pub mod figures;
pub mod goodput;
pub mod gpu_idle;
pub mod output_length;
pub mod policy;

use crate::cli::ExperimentArgs;
use crate::experiment::runner::run_plan;
use crate::experiment::state::Analysis;
use args::{Common, Study, StudyArgs};
use serde_json::{json, Value};
use std::path::PathBuf;

/// `tracebench study ...`: returns the experiment's exit code.
pub async fn run_study(args: StudyArgs, command_line: String) -> anyhow::Result<i32> {
    match &args.study {
        Study::Batching(a) => run(&a.common, batching::plan(a), a, command_line).await,
        Study::OutputLength(a) => run(&a.common, output_length::plan(a), a, command_line).await,
        Study::Goodput(a) => run(&a.common, goodput::plan(a)?, a, command_line).await,
        Study::Coldstart(a) => {
            let analysis = coldstart::Coldstart::new(a)?;
            run(&a.common, coldstart::plan(a)?, &analysis, command_line).await
        }
    }
}

async fn run(
    common: &Common,
    plan: Value,
    analysis: &(dyn Analysis + Sync),
    command_line: String,
) -> anyhow::Result<i32> {
    let name = plan["name"].as_str().unwrap_or("study").to_string();
    let args = ExperimentArgs {
        file: PathBuf::from(format!("{name}.study.yaml")),
        dry_run: common.dry_run,
        resume: common.resume.clone(),
        out: common.out.clone(),
        no_tui: common.no_tui,
        history: common.history.clone(),
    };
    // JSON is YAML: the plan is read and checked exactly as a file would be.
    let text = serde_json::to_string_pretty(&plan)?;
    run_plan(args, command_line, Some(text), Some(analysis)).await
}

/// The experiment plan of a study: one model alias `target` (launched by
/// `--cmd` when given, restarted before every point with `restart`), the
/// study's run parameters over the common ones, and its cases.
pub fn experiment(
    name: &str,
    common: &Common,
    restart: bool,
    defaults: Value,
    cases: Value,
) -> Value {
    let mut alias = json!({ "url": common.url });
    if let Some(model) = &common.model {
        alias["model"] = json!(model);
    }
    if let Some(cmd) = &common.cmd {
        alias["server"] = json!({
            "launch": cmd,
            "ready_timeout": common.ready_timeout,
            "restart_between_points": restart,
            "reset": ["POST /reset_prefix_cache"],
        });
    }
    let mut all = json!({
        "input_tokens": common.input_tokens,
        "seed": common.seed,
        "warmup": common.warmup,
        "ignore_eos": true,
        "otlp_grpc": common.otlp_grpc,
        "otlp_http": common.otlp_http,
        "span_wait": common.span_wait,
    });
    if !common.gpu.is_empty() {
        all["gpu"] = json!(common.gpu);
    }
    if let (Some(all), Some(extra)) = (all.as_object_mut(), defaults.as_object()) {
        all.extend(extra.clone());
    }
    json!({
        "name": name,
        "models": { "target": alias },
        "defaults": all,
        "cases": cases,
    })
}

/// Run parameters for exactly `tokens` output tokens: the budget, `ignore_eos`
/// (in the defaults) and `min_tokens` for servers that take it.
pub fn exact_output(tokens: u64) -> Value {
    json!({ "output_tokens": tokens, "extra_body": { "min_tokens": tokens } })
}
