//! `tracebench run --shards N ...` on one machine: N child processes of this
//! same binary, each `run --shard I/N` with a common `--run-id` and
//! `--start-at`, then [`merge`](super::merge::merge) — the path a Kubernetes
//! Indexed Job takes, on one host. The server's spans come to this process's
//! receiver (the children send `traceparent` but listen for nothing), which
//! waits for them after the children end, so the merge joins them all.
//! Ctrl-C is passed on to every child (each stops as a run does); a child
//! that dies leaves a partial shard, and the merge says so.

use super::Shard;
use crate::cli::RunArgs;
use crate::config::RunConfig;
use crate::trace::TraceSource;
use anyhow::{bail, Context};
use chrono::Utc;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use tokio::process::{Child, Command};

/// How long after launch the children start sending, when no `--start-at` is
/// given: enough for each to discover the server and open its connections.
const START_DELAY: chrono::TimeDelta = chrono::TimeDelta::seconds(3);

/// Flags the launcher sets on every child, so the user's own are left out:
/// (flag, takes a value). `--trace-source` too when the launcher receives the spans.
const SET_FOR_CHILDREN: [(&str, bool); 6] = [
    ("--shards", true),
    ("--shard", true),
    ("--run-id", true),
    ("--start-at", true),
    ("--no-tui", false),
    ("--no-db", false),
];
const TRACE_SOURCE: (&str, bool) = ("--trace-source", true);

/// What the launch made: the merged run, and how its children ended.
pub struct Launched {
    pub merged: super::merge::Merged,
    /// Ctrl-C was pressed.
    pub interrupted: bool,
    pub max_error_rate: f64,
}

impl Launched {
    /// The documented exit code: 130 interrupted, 1 too many failures, else 0.
    pub fn exit_code(&self) -> i32 {
        let s = &self.merged.summary;
        if self.interrupted {
            130
        } else if s.requests.failed as f64 > s.requests.total as f64 * self.max_error_rate {
            1
        } else {
            0
        }
    }
}

/// Runs `args` as `count` shards in child processes and merges them.
/// `run_argv` is this process's arguments after the program name.
pub async fn launch(args: RunArgs, count: u32, run_argv: Vec<String>) -> anyhow::Result<Launched> {
    let run_id = args.run_id.clone().unwrap_or_else(crate::run::new_run_id);
    // Every child's flags, checked here once, before anything starts.
    let config = RunConfig::from_args(&RunArgs {
        shard: Some(Shard { index: 0, count }),
        shards: None,
        run_id: Some(run_id.clone()),
        ..args.clone()
    })?;
    let out_dir = config.out.join(&run_id);
    if out_dir.join(crate::report::run_folder::REQUESTS).exists() {
        bail!(
            "{} already holds a run: choose another --run-id or --out",
            out_dir.display()
        );
    }
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let receive = config.trace.source == TraceSource::Otlp && !config.trace.is_off();
    let mut collector = if receive {
        Some(crate::trace::start_collector(&config.trace, &out_dir).await?)
    } else {
        None
    };
    let start_at = args.start_at.unwrap_or_else(|| Utc::now() + START_DELAY);
    let exe = std::env::current_exe().context("cannot find this program to start the shards")?;
    let mut children = Vec::new();
    for index in 0..count {
        let argv = child_argv(
            &run_argv,
            Shard { index, count },
            &run_id,
            start_at,
            receive,
        );
        let child = Command::new(&exe)
            .args(argv)
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start shard {index}/{count}"))?;
        children.push(child);
    }
    eprintln!("started {count} shards of run {run_id}; they start sending at {start_at}");
    let (statuses, interrupted) = wait_forwarding_ctrl_c(children).await;
    let dirs: Vec<PathBuf> = (0..count)
        .map(|index| config.out.join(Shard { index, count }.folder_name(&run_id)))
        .filter(|dir| dir.join(crate::report::run_folder::REQUESTS).is_file())
        .collect();
    report_children(&statuses);
    if dirs.is_empty() {
        bail!("no shard wrote a run folder (see the errors above)");
    }
    if let Some(collector) = &mut collector {
        wait_for_spans(collector, &dirs).await?;
    }
    let db = args.history.path();
    let merged = super::merge::merge(&dirs, &out_dir, db).await?;
    Ok(Launched {
        merged,
        interrupted,
        max_error_rate: config.max_error_rate,
    })
}

/// The arguments of shard `shard`: the user's, less the flags set here, plus
/// the shard, run id, start instant, no dashboard, no history (the merge
/// records the run), and no span source when this process receives the spans.
fn child_argv(
    run_argv: &[String],
    shard: Shard,
    run_id: &str,
    start_at: chrono::DateTime<Utc>,
    receive: bool,
) -> Vec<String> {
    let mut argv = Vec::new();
    let mut skip_value = false;
    for arg in run_argv {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
        let mut set_here = SET_FOR_CHILDREN
            .iter()
            .chain(receive.then_some(&TRACE_SOURCE));
        match set_here.find(|(flag, _)| *flag == name) {
            Some((_, takes_value)) => skip_value = *takes_value && !arg.contains('='),
            None => argv.push(arg.clone()),
        }
    }
    let start_at = start_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    argv.extend(
        [
            "--shard",
            &shard.to_string(),
            "--run-id",
            run_id,
            "--start-at",
            &start_at,
            "--no-tui",
            "--no-db",
        ]
        .map(str::to_string),
    );
    if receive {
        argv.extend(["--trace-source", "none"].map(str::to_string));
    }
    argv
}

/// Waits for every child; each Ctrl-C meanwhile is sent on to all of them
/// (the first stops their scheduling, a second cancels their requests).
async fn wait_forwarding_ctrl_c(mut children: Vec<Child>) -> (Vec<Option<ExitStatus>>, bool) {
    let pids: Vec<Option<u32>> = children.iter().map(Child::id).collect();
    let all = futures::future::join_all(children.iter_mut().map(Child::wait));
    tokio::pin!(all);
    let mut interrupted = false;
    loop {
        tokio::select! {
            statuses = &mut all => {
                return (statuses.into_iter().map(Result::ok).collect(), interrupted);
            }
            _ = tokio::signal::ctrl_c() => {
                interrupted = true;
                for pid in pids.iter().flatten() {
                    // SAFETY: signalling a child this process started and has not reaped.
                    unsafe { libc::kill(*pid as libc::pid_t, libc::SIGINT) };
                }
            }
        }
    }
}

/// Says on stderr which children did not end well.
fn report_children(statuses: &[Option<ExitStatus>]) {
    for (index, status) in statuses.iter().enumerate() {
        match status.and_then(|s| s.code()) {
            Some(0 | 1 | 130) => {}
            Some(code) => eprintln!("note: shard {index} exited with code {code}"),
            None => eprintln!("note: shard {index} was killed; its shard is partial"),
        }
    }
}

/// Waits for the spans of every shard's records at this process's receiver.
async fn wait_for_spans(
    collector: &mut crate::trace::SpanCollector,
    dirs: &[PathBuf],
) -> anyhow::Result<()> {
    for dir in dirs {
        let folder = crate::report::run_folder::RunFolder::open(dir)?;
        for record in folder.records()?.skip_unreadable(&mut Vec::new()) {
            collector.observe(&record?);
        }
    }
    let outcome = crate::run::live::wait_with_countdown(collector).await?;
    for note in outcome.notes {
        eprintln!("note: {note}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_get_the_users_flags_less_the_launchers_own() {
        let user: Vec<String> = [
            "--url",
            "http://h:1",
            "--shards=4",
            "--run-id",
            "mine",
            "--concurrency",
            "8",
            "--no-tui",
            "--trace-source",
            "otlp",
            "-H",
            "X-A: b",
        ]
        .map(str::to_string)
        .to_vec();
        let at = chrono::DateTime::parse_from_rfc3339("2026-01-31T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let argv = child_argv(&user, Shard { index: 2, count: 4 }, "mine", at, true);
        assert_eq!(
            argv,
            [
                "--url",
                "http://h:1",
                "--concurrency",
                "8",
                "-H",
                "X-A: b",
                "--shard",
                "2/4",
                "--run-id",
                "mine",
                "--start-at",
                "2026-01-31T12:00:00.000000000Z",
                "--no-tui",
                "--no-db",
                "--trace-source",
                "none"
            ]
        );
        // Spans from Jaeger: each child asks it itself, so its source stays.
        let jaeger: Vec<String> = ["--trace-source", "jaeger", "--jaeger-url", "http://j:16686"]
            .map(str::to_string)
            .to_vec();
        let argv = child_argv(&jaeger, Shard { index: 0, count: 2 }, "mine", at, false);
        assert_eq!(argv[..4], jaeger[..]);
        assert!(!argv.contains(&"none".to_string()));
    }
}
