//! A run as a library call: `run::execute` with a `RunConfig` built in code,
//! twice in one process (as the experiment runner and the proxy will), against
//! the simulator served in-process; the idle window between the warm-up and
//! the load.

use tracebench::config::StopAfter;
use tracebench::record::read_records;
use tracebench::schedule::Schedule;
use tracebench::testing::quiet_run;

/// The simulator in this process: 5 ms to the first token, 1 ms between tokens.
async fn fast_sim() -> tracebench::sim::SimServer {
    tracebench::sim::spawn(tracebench::sim::SimArgs {
        port: 0,
        ttft_ms: Some(5.0),
        itl_ms: Some(1.0),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_built_in_code_run_one_after_another_in_one_process() {
    let sim = fast_sim().await;
    let out = tempfile::tempdir().unwrap();
    for (name, concurrency, requests) in [("first", 4, 30), ("second", 2, 12)] {
        let mut config = quiet_run(&sim.url(), out.path());
        config.run_id = Some(name.to_string());
        config.stop = StopAfter::Requests(requests);
        config.warmup = 2;
        config.schedule = Schedule::Closed { concurrency };
        let outcome = tracebench::run::execute(config, format!("library {name}"))
            .await
            .unwrap();
        assert_eq!(outcome.exit_code(), 0);
        assert_eq!(outcome.summary.requests.ok, requests);
        assert_eq!(outcome.summary.requests.warmup, 2);
        assert!(outcome.summary.join.is_none(), "tracing is off");
        let records = read_records(&outcome.run_dir.join("requests.jsonl")).unwrap();
        assert_eq!(records.len() as u64, requests + 2);
        assert!(records.iter().all(|r| r.trace_id.is_none() && r.ok()));
        let manifest: tracebench::run::RunManifest =
            serde_json::from_slice(&std::fs::read(outcome.run_dir.join("run.json")).unwrap())
                .unwrap();
        assert_eq!(manifest.command_line, format!("library {name}"));
        assert!(!manifest.partial && manifest.ended_unix_ns.is_some());
        assert!(outcome.run_dir.join("report.html").is_file());
    }
    // Quiet: no history database anywhere under the output folder.
    let db_files = walk(out.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "db"))
        .count();
    assert_eq!(db_files, 0);
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_window_sends_nothing_between_the_warm_up_and_the_load() {
    let sim = fast_sim().await;
    let out = tempfile::tempdir().unwrap();
    let window = std::time::Duration::from_millis(600);
    let mut config = quiet_run(&sim.url(), out.path());
    config.stop = StopAfter::Requests(3);
    config.warmup = 2;
    config.idle_window = window;
    config.schedule = Schedule::Closed { concurrency: 2 };
    let outcome = tracebench::run::execute(config, "idle window".into())
        .await
        .unwrap();
    assert_eq!(outcome.summary.requests.ok, 3);
    let records = read_records(&outcome.run_dir.join("requests.jsonl")).unwrap();
    let (warmup, measured): (Vec<_>, Vec<_>) = records.iter().partition(|r| r.warmup);
    let warmup_end = warmup
        .iter()
        .map(|r| r.instants_ns.end.unwrap())
        .max()
        .unwrap();
    let first_sent = measured.iter().map(|r| r.instants_ns.sent).min().unwrap();
    let gap = first_sent.saturating_sub(warmup_end);
    assert!(
        gap >= window.as_nanos() as u64,
        "{gap} ns between the warm-up's end and the load"
    );
    assert!(gap < 2 * window.as_nanos() as u64, "{gap} ns");
    sim.shutdown().await.unwrap();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            paths.extend(walk(&path));
        } else {
            paths.push(path);
        }
    }
    paths
}
