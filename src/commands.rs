//! What each subcommand does, over the library's stages; `main.rs` only parses
//! and maps the returned exit code. Every handler returns the process exit
//! code (see [`crate::cli::EXIT_CODES`]); errors bubble up as exit code 2.

use crate::analysis::{Slo, Summary};
use crate::cli::{
    Cli, Command, CompareArgs, DemoArgs, JoinArgs, MergeArgs, ReportArgs, RunArgs, ShowArgs,
};
use crate::config::{RunConfig, StopAfter};
use crate::report::console::print;
use crate::report::run_folder::RunFolder;
use crate::run::{execute, write_summary, RunOutcome};
use crate::schedule::Schedule;
use crate::workload::{Lengths, Source};
use anyhow::Context;
use std::path::Path;

/// Runs a parsed command line; returns the exit code.
pub async fn run_command(cli: Cli) -> anyhow::Result<i32> {
    raise_open_file_limit();
    let threads = cli.worker_threads();
    let idle_spin = cli.idle_spin();
    match cli.command {
        Command::Run(args) => match args.shards {
            Some(count) => launch(*args, count).await,
            None => run(*args).await,
        },
        Command::Demo(args) => demo(args).await,
        Command::Sim(args) => crate::sim::run_until_ctrl_c(*args).await.map(|()| 0),
        Command::Selfcheck(args) => crate::selfcheck::selfcheck(args, threads, idle_spin).await,
        Command::Collect(args) => {
            let config = crate::trace::TraceConfig::from_args(&args.trace)?;
            crate::trace::collect_until_ctrl_c(&config, &args.out)
                .await
                .map(|()| 0)
        }
        Command::Join(args) => join(args).await,
        Command::Show(args) => show(args),
        Command::Report(args) => report(args),
        Command::Compare(args) => compare(args),
        Command::Experiment(args) => crate::experiment::run_experiment(args, command_line()).await,
        Command::Merge(args) => merge(args).await,
        Command::K8s(args) => {
            print(&crate::shard::k8s::manifests(&args)?);
            Ok(0)
        }
        Command::Proxy(args) => {
            let config = crate::proxy::ProxyConfig::from_args(&args)?;
            crate::proxy::run_until_ctrl_c(config, command_line()).await
        }
        Command::Study(args) => crate::study::run_study(args, command_line()).await,
    }
}

/// `run --shards N`: the shards as child processes, then their merge.
async fn launch(args: RunArgs, count: u32) -> anyhow::Result<i32> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let launched = crate::shard::launch::launch(args, count, argv).await?;
    print_merged(&launched.merged);
    Ok(launched.exit_code())
}

/// `tracebench merge SHARD_DIR... --out DIR`.
async fn merge(args: MergeArgs) -> anyhow::Result<i32> {
    if let Some(wait) = args.wait {
        crate::shard::merge::wait_for_shards(&args.shards, wait).await;
    }
    let shards: Vec<_> = match args.wait {
        // After a wait, a folder that never appeared is a missing shard.
        Some(_) => args
            .shards
            .into_iter()
            .filter(|d| d.join("run.json").is_file())
            .collect(),
        None => args.shards,
    };
    if shards.is_empty() {
        anyhow::bail!("none of the shard folders appeared");
    }
    let db = args.history.path();
    let merged = crate::shard::merge::merge(&shards, &args.out, db).await?;
    print_merged(&merged);
    Ok(0)
}

/// Prints a merged run's summary, its notes and where it is.
fn print_merged(merged: &crate::shard::merge::Merged) {
    print(&crate::report::console::render(&merged.summary));
    for note in &merged.notes {
        eprintln!("note: {note}");
    }
    print(&format!(
        "merged{}: {}  (report: {})\n",
        if merged.partial { " (partial)" } else { "" },
        merged.run_dir.display(),
        merged.run_dir.join("report.html").display()
    ));
}

async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let config = RunConfig::from_args(&args)?;
    let command_line = command_line();
    let outcome = execute(config, command_line).await?;
    Ok(finish(&outcome))
}

/// Prints the summary table and where the files are; returns the exit code.
fn finish(outcome: &RunOutcome) -> i32 {
    print(&crate::report::console::render(&outcome.summary));
    print(&format!(
        "results: {}  (report: {})\n",
        outcome.run_dir.display(),
        outcome.run_dir.join("report.html").display()
    ));
    if outcome.too_many_errors && !outcome.interrupted {
        eprintln!("failed requests are above --max-error-rate: exit code 1");
    }
    outcome.exit_code()
}

/// The command line as typed, with secrets masked, for `run.json`.
fn command_line() -> String {
    masked_command_line(std::env::args())
}

/// Arguments as one shell-quoted line, with API keys and header values masked.
pub fn masked_command_line(args: impl IntoIterator<Item = String>) -> String {
    let mut masked = Vec::new();
    let mut hide_next = false;
    for arg in args {
        if hide_next {
            masked.push("***".to_string());
            hide_next = false;
        } else if arg == "--api-key" || arg == "-H" || arg == "--header" {
            masked.push(arg);
            hide_next = true;
        } else if arg.starts_with("--api-key=") {
            masked.push("--api-key=***".to_string());
        } else {
            masked.push(arg);
        }
    }
    masked
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$`\\{}".contains(c)) {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `tracebench demo`: the simulator in-process, tracing into our own receiver.
async fn demo(args: DemoArgs) -> anyhow::Result<i32> {
    let (grpc, http) = (crate::testing::free_port()?, crate::testing::free_port()?);
    let sim = crate::sim::spawn(crate::sim::SimArgs {
        port: 0,
        max_num_seqs: 16,
        otlp_endpoint: Some(format!("grpc://127.0.0.1:{grpc}")),
        span_delay_ms: 500,
        ..Default::default()
    })
    .await
    .context("starting the built-in simulator")?;
    eprintln!(
        "demo: simulator at {} (16 batch slots), OTLP receiver on 127.0.0.1:{grpc}",
        sim.url()
    );
    let defaults = RunConfig::default();
    let trace = crate::trace::TraceConfig {
        otlp_grpc: ([127, 0, 0, 1], grpc).into(),
        otlp_http: ([127, 0, 0, 1], http).into(),
        span_wait: std::time::Duration::from_secs(10),
        ..defaults.trace
    };
    let config = RunConfig {
        url: sim.url(),
        stop: StopAfter::Requests(args.requests),
        schedule: Schedule::Closed {
            concurrency: args.concurrency,
        },
        source: Source::Synthetic {
            input_tokens: Lengths {
                mean: 256,
                stddev: 64.0,
            }
            .into(),
            output_tokens: Lengths {
                mean: 64,
                stddev: 16.0,
            }
            .into(),
            shared_prefix_tokens: 0,
            prefix_groups: 1,
            tokenizer: None,
            sessions: None,
        },
        ignore_eos: true,
        slo: Slo {
            ttft_ms: Some(500.0),
            tpot_ms: Some(50.0),
            ..Slo::default()
        },
        trace,
        out: args.out,
        db: Some(args.db),
        tui: !args.no_tui,
        ..defaults
    };
    let outcome = execute(config, command_line()).await;
    sim.shutdown().await?;
    Ok(finish(&outcome?))
}

/// `tracebench join`: join again (that rewrites requests.jsonl one record at
/// a time), then summarise again, keeping the telemetry summaries.
async fn join(args: JoinArgs) -> anyhow::Result<i32> {
    let config = crate::trace::TraceConfig::from_args(&args.trace)?;
    let report = crate::trace::join_run_dir(&args.run_dir, &config).await?;
    let summary = resummarize(&args.run_dir)?;
    write_summary(&args.run_dir, &summary)?;
    crate::report::html::write_report(&args.run_dir)?;
    print(&format!(
        "joined {} requests, {} without a span, {} duplicate spans, {} unrelated spans\n",
        report.joined, report.missing, report.duplicates, report.unrelated_spans
    ));
    print(&crate::report::console::render(&summary));
    Ok(0)
}

/// A summary recomputed from a run's `requests.jsonl` (two streaming passes),
/// keeping what only the run knew (telemetry summaries, SLOs, partial flag)
/// from the old `summary.json`.
fn resummarize(run_dir: &Path) -> anyhow::Result<Summary> {
    let old: Option<Summary> = std::fs::read(run_dir.join("summary.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let slo = old
        .as_ref()
        .and_then(|o| o.goodput.as_ref())
        .map(|g| g.slo.clone())
        .unwrap_or_default();
    let partial = old.as_ref().is_some_and(|o| o.partial);
    let mut summary = RunFolder::open(run_dir)?.summarize(None, &slo, partial)?;
    if let Some(old) = old {
        summary.gpu = old.gpu;
        summary.server_metrics = old.server_metrics;
    }
    Ok(summary)
}

fn show(args: ShowArgs) -> anyhow::Result<i32> {
    print(&crate::trace::show_request(
        &args.run_dir,
        &args.request_id,
    )?);
    Ok(0)
}

fn report(args: ReportArgs) -> anyhow::Result<i32> {
    let run_dir = crate::proxy::window::folder_or_window(&args.run_dir, &args.window)?;
    let path = crate::report::html::write_report(&run_dir)?;
    if let Some(db) = &args.db {
        crate::report::sqlite::import_run_dir(db, &run_dir)?;
        print(&format!("recorded in {}\n", db.display()));
    }
    print(&format!("{}\n", path.display()));
    Ok(0)
}

/// `tracebench compare`: runs or experiments, gated by `--fail-on`.
fn compare(args: CompareArgs) -> anyhow::Result<i32> {
    use crate::report::gate::{self, Measured};
    let limits = args
        .fail_on
        .as_deref()
        .map(gate::parse)
        .transpose()?
        .unwrap_or_default();
    let experiments = args
        .runs
        .iter()
        .filter(|p| p.join("experiment.json").is_file())
        .count();
    let breaches = if experiments == args.runs.len() {
        let compared = crate::report::compare_experiments::compare(&args.runs, &limits)?;
        print(&compared.text);
        compared.breaches
    } else if experiments > 0 {
        anyhow::bail!("compare runs with runs and experiments with experiments, not both");
    } else {
        let folders = args
            .runs
            .iter()
            .map(|run| crate::proxy::window::folder_or_window(run, &args.window))
            .collect::<anyhow::Result<Vec<_>>>()?;
        print(&crate::report::compare::compare(&folders)?);
        let runs = folders
            .iter()
            .map(|p| crate::report::compare::run_values(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (_, base) = &runs[0];
        let mut breaches = Vec::new();
        for (name, values) in &runs[1..] {
            for limit in &limits {
                let value = |v: &serde_json::Value| {
                    gate::run_value(v, &limit.metric).map(|value| Measured { value, noise: None })
                };
                match (value(base), value(values)) {
                    (Some(a), Some(b)) => breaches.extend(limit.check(name, a, b)),
                    _ => eprintln!(
                        "note: {} is not in both the baseline and {name}: not checked",
                        limit.metric
                    ),
                }
            }
        }
        breaches
    };
    for breach in &breaches {
        eprintln!("{breach}");
    }
    let failed = breaches.iter().filter(|b| !b.within_noise).count();
    if failed > 0 {
        eprintln!("compare: {failed} metric(s) moved past --fail-on: exit code 1");
        return Ok(1);
    }
    if !limits.is_empty() {
        eprintln!("compare: every metric within --fail-on");
    }
    Ok(0)
}

/// Many concurrent streams need many sockets: lift the soft open-file limit to the hard one.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
