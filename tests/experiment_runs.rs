//! `tracebench experiment` end to end: the example experiments run against
//! the simulator, which each experiment launches itself through its
//! lifecycle block; the capacity search finds a capacity known in advance;
//! a killed experiment resumes to the same points; the combined report
//! renders in a real headless Chromium; the points land in SQLite.

mod cli_support;

use cli_support::{chromium_check, documented_query, free_port, query, repo, text, BIN};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The API key the resume grid's alias reads from the environment.
const API_KEY: &str = "sk-never-written-7f3a";

/// `tracebench experiment FILE ARGS` in `dir`, on ports of its own.
fn experiment_command(dir: &Path, file: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .current_dir(dir)
        .arg("experiment")
        .arg(file)
        .args(["--no-tui", "--db", "history.db"])
        .args(args)
        .env("SIM_PORT", free_port().to_string())
        .env("OTLP_GRPC", format!("127.0.0.1:{}", free_port()))
        .env("OTLP_HTTP", format!("127.0.0.1:{}", free_port()))
        .env("POINT_DURATION", "1s")
        .env("TRACEBENCH_TEST_API_KEY", API_KEY);
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

fn run_experiment(dir: &Path, file: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    experiment_command(dir, file, env, args)
        .output()
        .expect("run tracebench experiment")
}

/// The one experiment folder under `dir/experiments`.
fn experiment_dir(dir: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir.join("experiments"))
        .expect("experiments folder")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

fn state(dir: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(dir.join("experiment.json")).expect("experiment.json"),
    )
    .expect("json")
}

#[test]
fn concurrency_grid_climbs_until_the_server_saturates() {
    let tmp = tempfile::tempdir().unwrap();
    let output = run_experiment(
        tmp.path(),
        &repo("examples/experiments/concurrency-grid.yaml"),
        &[],
        &[],
    );
    assert!(output.status.success(), "{}", text(&output));
    let dir = experiment_dir(tmp.path());
    let state = state(&dir);
    assert_eq!(state["progress"], "finished");
    let verdict = &state["cases"][0]["saturation"][0];
    assert_eq!(verdict["axis"], "concurrency", "{verdict}");
    // 16 batch slots: the throughput cannot plateau before the batch is full.
    let at = verdict["at"].as_u64().expect("saturated at a concurrency");
    assert!((16..=64).contains(&at), "{verdict}");
    let run: Vec<u64> = state["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["axes"]["concurrency"].as_u64().unwrap())
        .collect();
    assert!(
        run.iter().all(|c| *c <= at),
        "nothing above the saturated value ran: {run:?}"
    );
    assert!(!run.contains(&64) || at == 64);
    let share = |c: u64| {
        let point = state["points"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["axes"]["concurrency"] == c)
            .unwrap();
        point["metrics"]["ttft_share.queue"]
            .as_f64()
            .expect("spans joined: the queue's share is known")
    };
    assert!(
        share(at) > share(1),
        "the queue explains the knee: {} vs {}",
        share(at),
        share(1)
    );
    let reading = state["reading"][0].as_str().unwrap();
    assert!(
        reading.contains(&format!("saturated at concurrency={at}")),
        "{reading}"
    );
    let cold = &state["points"][0]["cold_start"];
    assert!(
        cold["ready_s"].as_f64().unwrap() > 0.0
            && cold["first_token_s"].as_f64().unwrap() >= cold["ready_s"].as_f64().unwrap(),
        "{cold}"
    );
    let csv = std::fs::read_to_string(dir.join("points.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + run.len(), "{csv}");
    chromium_check(&dir.join("report.html"));
    let linked = query(
        &tmp.path().join("history.db"),
        "SELECT p.point_id, r.ok FROM experiment_points p JOIN runs r ON r.run_id = p.run_id",
    );
    assert_eq!(
        linked.len(),
        run.len(),
        "every point links to its run: {linked:?}"
    );
    let curve = query(
        &tmp.path().join("history.db"),
        &documented_query("experiment_curve"),
    );
    assert_eq!(curve.len(), run.len(), "{curve:?}");
    let concurrencies: Vec<u64> = curve.iter().map(|row| row[1].as_u64().unwrap()).collect();
    assert_eq!(concurrencies, run, "in order of load");
    assert!(
        curve.iter().all(|row| row[6].as_i64().unwrap() > 0),
        "joined to the runs: {curve:?}"
    );
}

#[test]
fn slo_search_brackets_then_bisects_and_records_every_probe() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [
        ("START_RATE", "8"),
        ("MAX_RATE", "256"),
        ("PRECISION", "16"),
    ];
    let output = run_experiment(
        tmp.path(),
        &repo("examples/experiments/slo-capacity.yaml"),
        &env,
        &[],
    );
    assert!(output.status.success(), "{}", text(&output));
    let dir = experiment_dir(tmp.path());
    let state = state(&dir);
    let trace = &state["cases"][0]["searches"][0]["trace"];
    let probes = trace["probes"].as_array().unwrap();
    assert!(probes.len() >= 3, "{trace}");
    assert_eq!(probes[0]["value"], 8.0);
    let pass = trace["highest_pass"].as_f64().expect("some rate passed");
    let fail = trace["lowest_fail"]
        .as_f64()
        .expect("some rate failed below 256");
    assert!(fail > pass && fail - pass <= 16.0, "{trace}");
    for probe in probes {
        for id in probe["points"].as_array().unwrap() {
            let point = state["points"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| &p["id"] == id)
                .expect("probe point recorded");
            assert!(
                point["slo"].as_array().is_some_and(|s| s.len() == 2),
                "{point}"
            );
        }
    }
    chromium_check(&dir.join("report.html"));
}

#[test]
fn server_settings_restart_the_server_and_repeat_each_point() {
    let tmp = tempfile::tempdir().unwrap();
    let output = run_experiment(
        tmp.path(),
        &repo("examples/experiments/server-settings.yaml"),
        &[],
        &[],
    );
    assert!(output.status.success(), "{}", text(&output));
    let dir = experiment_dir(tmp.path());
    let state = state(&dir);
    let points = state["points"].as_array().unwrap();
    assert_eq!(points.len(), 4);
    let logs = std::fs::read_dir(dir.join("servers"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert_eq!(logs, 2, "one server start per setting");
    assert!(
        points[0]["cold_start"].is_object()
            && points[1]["cold_start"].is_null()
            && points[2]["cold_start"].is_object()
    );
    assert!(points[2]["launch"]
        .as_str()
        .unwrap()
        .contains("--max-num-seqs 16"));
    assert_eq!(
        points[0]["calls"][0]["status"], 200,
        "the reset call reached the server"
    );
    let groups = state["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    for group in groups {
        let throughput = &group["metrics"]["output_throughput"];
        assert_eq!(throughput["n"], 2);
        assert!(
            throughput["ci95"].as_f64().is_some() && throughput["mean"].as_f64().is_some(),
            "{throughput}"
        );
        let p99 = &group["metrics"]["p99_ttft_ms"];
        assert!(
            p99["mean"].is_null() && p99["pooled"].as_f64().is_some(),
            "percentiles are pooled, not averaged: {p99}"
        );
    }
    let tp = |g: &Value| g["metrics"]["output_throughput"]["mean"].as_f64().unwrap();
    assert!(
        tp(&groups[1]) > tp(&groups[0]) * 1.5,
        "16 slots beat 4 at 16 concurrent requests"
    );
    assert!(state["reading"][0]
        .as_str()
        .unwrap()
        .contains("max_num_seqs=16"));
    let csv = std::fs::read_to_string(dir.join("points.csv")).unwrap();
    assert_eq!(
        csv.lines().filter(|l| l.contains(",all,")).count(),
        2,
        "one row per group of repeats: {csv}"
    );
}

#[test]
fn the_search_finds_the_simulators_known_capacity() {
    let tmp = tempfile::tempdir().unwrap();
    let output = run_experiment(
        tmp.path(),
        &repo("tests/data/experiments/known-capacity.yaml"),
        &[],
        &["--no-db"],
    );
    assert!(output.status.success(), "{}", text(&output));
    let trace = &state(&experiment_dir(tmp.path()))["cases"][0]["searches"][0]["trace"];
    assert_eq!(trace["highest_pass"], 4.0, "{trace}");
    assert_eq!(trace["lowest_fail"], 5.0, "{trace}");
    assert_eq!(trace["monotone_verdict"], true);
}

/// Points without their timings: what must be equal between two runs of one plan.
fn shape(state: &Value) -> Vec<(Value, Value, Value, Value)> {
    state["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].clone(),
                p["axes"].clone(),
                p["params"].clone(),
                p["status"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_killed_experiment_resumes_to_the_same_points() {
    let file = repo("tests/data/experiments/resume-grid.yaml");
    // The same ports for every invocation: the points' parameters hold them.
    let (sim, grpc, http) = (
        free_port().to_string(),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let env = [
        ("SIM_PORT", sim.as_str()),
        ("OTLP_GRPC", grpc.as_str()),
        ("OTLP_HTTP", http.as_str()),
    ];
    let whole = tempfile::tempdir().unwrap();
    let output = run_experiment(whole.path(), &file, &env, &["--no-db"]);
    assert!(output.status.success(), "{}", text(&output));
    let uninterrupted = state(&experiment_dir(whole.path()));

    let tmp = tempfile::tempdir().unwrap();
    let mut child = experiment_command(tmp.path(), &file, &env, &["--no-db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut dir = None;
    for _ in 0..600 {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(mut entries) = std::fs::read_dir(tmp.path().join("experiments")) {
            if let Some(Ok(entry)) = entries.next() {
                let done = std::fs::read_to_string(entry.path().join("experiment.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .map_or(0, |s| s["points"].as_array().map_or(0, Vec::len));
                if done >= 2 {
                    dir = Some(entry.path());
                    break;
                }
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let dir = dir.expect("two points finished before the kill");
    let before = state(&dir);
    assert_eq!(before["progress"], "running", "killed mid-way");
    let output = run_experiment(
        tmp.path(),
        &file,
        &env,
        &["--no-db", "--resume", dir.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("points already done"),
        "{}",
        text(&output)
    );
    let resumed = state(&dir);
    assert_eq!(resumed["progress"], "finished");
    assert_eq!(shape(&resumed), shape(&uninterrupted));
    let first = |s: &Value| s["points"][0]["started_unix_ns"].clone();
    assert_eq!(
        first(&resumed),
        first(&before),
        "finished points are kept, not run again"
    );
    let calls: Vec<(String, Value)> = resumed["points"][0]["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["call"].as_str().unwrap().to_string(), c["status"].clone()))
        .collect();
    let expected = [("POST /start_profile", 200), ("POST /stop_profile", 200)];
    let expected: Vec<(String, Value)> = expected
        .iter()
        .map(|(c, s)| (c.to_string(), Value::from(*s)))
        .collect();
    assert_eq!(calls, expected, "profiled around the point");
    assert_no_secret(&dir);
}

/// No file of the experiment holds the API key or the header's value.
fn assert_no_secret(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            files += 1;
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            assert!(
                !text.contains(API_KEY) && !text.contains("tenant-secret-value"),
                "{} holds a secret",
                path.display()
            );
        }
    }
    assert!(files > 10, "looked at the run folders too ({files} files)");
}

#[test]
fn dry_run_prints_every_point_and_runs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let file = repo("examples/experiments/server-settings.yaml");
    let output = run_experiment(tmp.path(), &file, &[], &["--dry-run"]);
    assert!(output.status.success(), "{}", text(&output));
    let out = text(&output);
    assert!(
        out.contains("2 over max_num_seqs, 2 repeat(s); 4 runs"),
        "{out}"
    );
    assert!(
        out.contains("--concurrency 16") && out.contains("--max-num-seqs 4"),
        "{out}"
    );
    assert!(!tmp.path().join("experiments").exists());
}

#[test]
fn a_bad_file_fails_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bad.yaml");
    std::fs::write(&file, "models:\n  sim:\n    url: http://127.0.0.1:1\ncases:\n  - model: sim\n    grid:\n      concurency: [1, 2]\n").unwrap();
    let output = run_experiment(tmp.path(), &file, &[], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let message = text(&output);
    assert!(
        message.contains(
            "bad.yaml:7:7: unknown run parameter `concurency` (did you mean `concurrency`?)"
        ),
        "{message}"
    );
    assert!(
        !tmp.path().join("experiments").exists(),
        "no folder for a plan that does not hold"
    );
}

#[test]
fn the_dashboard_shows_the_experiment_in_a_real_terminal() {
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output();
    if !tmux(&["-V"]).is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("TRACEBENCH_REQUIRE_TMUX").is_none(),
            "TRACEBENCH_REQUIRE_TMUX is set but tmux is missing"
        );
        eprintln!("*** SKIPPED the dashboard check: tmux is not installed ***");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let socket = format!("tracebench-exp-{}", std::process::id());
    let command = experiment_command(
        tmp.path(),
        &repo("tests/data/experiments/resume-grid.yaml"),
        &[("POINT_DURATION", "3s")],
        &["--no-db"],
    );
    let envs: Vec<String> = command
        .get_envs()
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.unwrap().to_string_lossy()))
        .collect();
    let line = format!(
        "cd {} && env {} {BIN} experiment {} --db history.db",
        tmp.path().display(),
        envs.join(" "),
        repo("tests/data/experiments/resume-grid.yaml").display()
    );
    tmux(&[
        "-L",
        &socket,
        "new-session",
        "-d",
        "-s",
        "exp",
        "-x",
        "120",
        "-y",
        "40",
        &line,
    ])
    .unwrap();
    let mut seen = String::new();
    for _ in 0..300 {
        std::thread::sleep(Duration::from_millis(100));
        seen = String::from_utf8_lossy(
            &tmux(&["-L", &socket, "capture-pane", "-p", "-t", "exp"])
                .unwrap()
                .stdout,
        )
        .into_owned();
        if seen.contains("point 2 of at most 4") && seen.contains("so far:") {
            break;
        }
    }
    let _ = tmux(&["-L", &socket, "kill-server"]);
    assert!(seen.contains("Experiment"), "{seen}");
    assert!(seen.contains("point 2 of at most 4"), "{seen}");
    assert!(seen.contains("so far: 1:"), "the curve so far: {seen}");
}
