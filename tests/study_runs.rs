//! `tracebench study` end to end against the simulator, which each study
//! launches itself (`--cmd '{tracebench} sim ...'`): continuous batching beats
//! static batches (varied output lengths make a static batch wait for its
//! slowest member), TPOT comes out flat as outputs grow while the KV-cache
//! gauge grows, goodput peaks at a load that was run, and a start the
//! simulator delays with `--ready-after` is timed at that delay, and the
//! GPU's idle threshold is measured from a DCGM exporter whose utilisation
//! follows whether the simulator is busy. Every study's report is checked in
//! headless Chromium and lands in the history.

mod cli_support;

use cli_support::{chromium_check, documented_query, free_port, query, text, BIN};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `tracebench study KIND` in `dir` against a simulator it launches, on free ports.
fn study(dir: &Path, kind: &str, sim_flags: &str, args: &[&str]) -> Output {
    let ports = [free_port(), free_port(), free_port()];
    study_on(dir, kind, sim_flags, ports, args)
}

/// A command that was refused (exit 2) saying `why`.
fn refused(output: &Output, why: &str) {
    assert_eq!(output.status.code(), Some(2), "{}", text(output));
    assert!(text(output).contains(why), "{}", text(output));
}

/// `tracebench study KIND` on the given ports (server, OTLP gRPC, OTLP HTTP).
fn study_on(dir: &Path, kind: &str, sim_flags: &str, ports: [u16; 3], args: &[&str]) -> Output {
    let launch = format!(
        "{{tracebench}} sim --port {{port}} --max-num-seqs 8 --otlp-endpoint grpc://{{otlp_grpc}} --span-delay-ms 50 {sim_flags}"
    );
    Command::new(BIN)
        .current_dir(dir)
        .args(["study", kind, "--no-tui", "--db", "history.db"])
        .args(["--url", &format!("http://127.0.0.1:{}", ports[0])])
        .args([
            "--cmd",
            &launch,
            "--input-tokens",
            "64",
            "--span-wait",
            "2s",
        ])
        .args(["--otlp-grpc", &format!("127.0.0.1:{}", ports[1])])
        .args(["--otlp-http", &format!("127.0.0.1:{}", ports[2])])
        .args(args)
        .output()
        .expect("run tracebench study")
}

/// The study's folder, its `experiment.json` and its `study` section.
fn finished(dir: &Path, output: &Output) -> (PathBuf, Value) {
    assert!(output.status.success(), "{}", text(output));
    let folder = std::fs::read_dir(dir.join("experiments"))
        .expect("experiments folder")
        .map(|e| e.unwrap().path())
        .next()
        .expect("an experiment folder");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("experiment.json")).unwrap())
            .unwrap();
    let verdict = state["study"]["verdict"].as_str().expect("a verdict");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(verdict),
        "the verdict is printed"
    );
    assert!(folder.join("points.csv").exists());
    chromium_check(&folder.join("report.html"));
    let rows = query(&dir.join("history.db"), "SELECT reading FROM experiments");
    assert!(rows[0][0].as_str().unwrap().contains(verdict), "{rows:?}");
    (folder, state)
}

fn figure(state: &Value, name: &str) -> f64 {
    state["study"]["figures"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("figure {name}: {}", state["study"]["figures"]))
}

#[test]
fn continuous_batching_beats_static_batches() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--requests",
        "32",
        "--batch-size",
        "8",
        "--output-tokens",
        "48:40",
    ];
    let output = study(dir.path(), "batching", "--decode-step-ms 4", &args);
    let (folder, state) = finished(dir.path(), &output);
    let arms: Vec<&str> = state["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(arms, ["sequential", "static", "continuous"]);
    let tput = |arm: &str| figure(&state, &format!("{arm}.output_throughput"));
    assert!(tput("continuous") > tput("static"), "{}", state["study"]);
    assert!(tput("static") > tput("sequential"), "{}", state["study"]);
    let idle = |arm: &str| figure(&state, &format!("{arm}.under_half_busy_fraction"));
    assert!(idle("static") > idle("continuous"), "{}", state["study"]);
    assert_eq!(
        idle("sequential"),
        1.0,
        "one request of 8 slots is always under half"
    );
    assert!(state["study"]["verdict"]
        .as_str()
        .unwrap()
        .contains("continuous batching beat static batches"));
    let page = std::fs::read_to_string(folder.join("report.html")).unwrap();
    assert!(page.contains("Study: batching") && page.contains("study-running"));
}

#[test]
fn tpot_stays_flat_as_outputs_grow_and_the_kv_gauge_grows() {
    let dir = tempfile::tempdir().unwrap();
    // A decode step long against the machine's scheduling jitter: TPOT is
    // the step, whatever the context.
    let args = ["--requests", "3", "--output-tokens", "8,32,128"];
    let output = study(dir.path(), "output-length", "--decode-step-ms 20", &args);
    let (folder, state) = finished(dir.path(), &output);
    assert_eq!(
        figure(&state, "tpot_flat"),
        1.0,
        "{}",
        state["study"]["verdict"]
    );
    assert!(figure(&state, "tpot_slope_ci95_ms_per_1k_tokens") >= 0.0);
    let kv = |n: u64| figure(&state, &format!("{n}.server_kv_cache_max"));
    assert!(kv(128) > kv(32), "the KV gauge grows with the context");
    for point in state["points"].as_array().unwrap() {
        let length = point["axes"]["output_tokens"].as_u64().unwrap();
        let records = cli_support::lines(
            &folder
                .join(point["run_dir"].as_str().unwrap())
                .join("requests.jsonl"),
        );
        assert!(
            records
                .iter()
                .all(|r| r["output_tokens"].as_u64() == Some(length)),
            "exact lengths"
        );
    }
}

#[test]
fn goodput_peaks_at_a_load_that_was_run() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--requests",
        "24",
        "--rate",
        "10,40,400",
        "--slo",
        "ttft:150ms,tpot:30ms",
        "--output-tokens",
        "32",
    ];
    let ports = [free_port(), free_port(), free_port()];
    let output = study_on(dir.path(), "goodput", "--decode-step-ms 4", ports, &args);
    let (folder, state) = finished(dir.path(), &output);
    // Resumed with the same flags: every point is kept, the verdict is the same.
    let mut again: Vec<&str> = args.to_vec();
    let folder_text = folder.display().to_string();
    again.extend(["--resume", &folder_text]);
    let resumed = study_on(dir.path(), "goodput", "--decode-step-ms 4", ports, &again);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(
        text(&resumed).contains("resuming") && text(&resumed).contains("3 points already done"),
        "{}",
        text(&resumed)
    );
    let after: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("experiment.json")).unwrap())
            .unwrap();
    assert_eq!(after["study"]["verdict"], state["study"]["verdict"]);
    assert_eq!(after["points"], state["points"], "no point ran again");
    assert!([10.0, 40.0, 400.0].contains(&figure(&state, "peak.x")));
    for rate in [10, 40, 400] {
        let f = |name: &str| figure(&state, &format!("rate={rate}.{name}"));
        assert!(f("request_goodput") <= f("request_throughput") + 1e-9);
        assert!((0.0..=1.0).contains(&f("goodput_fraction")));
    }
    let rows = state["study"]["tables"][0]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    // The history's daily goodput and compliance query covers the study's runs.
    let daily = query(
        &dir.path().join("history.db"),
        &documented_query("sla_per_day"),
    );
    assert_eq!(daily.len(), 1, "{daily:?}");
    assert_eq!(
        daily[0][1],
        3 * 24,
        "every measured request of the three loads"
    );
}

#[test]
fn a_delayed_start_is_timed_and_the_policies_priced() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::write(cache.join("compiled.bin"), b"x").unwrap();
    // arrivals with idle gaps of 30 s, 270 s and 1200 s
    let trace = dir.path().join("arrivals.txt");
    std::fs::write(&trace, "0\n30\n300\n1500\n").unwrap();
    let args = [
        "--repeats",
        "2",
        "--requests",
        "2",
        "--price-per-hour",
        "1.50",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--idle-trace",
        trace.to_str().unwrap(),
        "--gpu",
        "off",
        "--idle-window",
        "0s",
    ];
    let output = study(
        dir.path(),
        "coldstart",
        "--ready-after 1s --decode-step-ms 4",
        &args,
    );
    let (_, state) = finished(dir.path(), &output);
    assert!(
        !cache.exists(),
        "the cache folder is removed before a cold start"
    );
    for case in ["cold", "warm"] {
        let ready = figure(&state, &format!("{case}.ready_s"));
        assert!((1.0..3.0).contains(&ready), "{case} ready after {ready} s");
        assert!(figure(&state, &format!("{case}.first_token_s")) >= ready);
        assert!(figure(&state, &format!("{case}.models_s")) >= ready);
    }
    let starts = state["points"].as_array().unwrap();
    assert!(
        starts
            .iter()
            .all(|p| p["cold_start"]["ready_s"].as_f64().is_some()),
        "every repeat restarted the server"
    );
    assert_eq!(figure(&state, "idle_gaps"), 3.0);
    let cold_s = figure(&state, "cold.first_token_s");
    assert!((figure(&state, "break_even_idle_min") - cold_s / 60.0).abs() < 1e-9);
    assert!((figure(&state, "cold_start_cost") - 1.5 * cold_s / 3600.0).abs() < 1e-9);
    let policies = &state["study"]["tables"].as_array().unwrap().last().unwrap()["rows"];
    let never = policies
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0] == "never")
        .unwrap();
    assert_eq!(never[3], "0", "never shutting down meets no cold start");
    let verdict = state["study"]["verdict"].as_str().unwrap();
    assert!(verdict.contains("break-even idle limit at $1.50/h"));
    assert!(!verdict.contains("GPU"), "no GPU, no GPU clause: {verdict}");
    assert!(
        state["study"]["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("No GPU was sampled")),
        "{}",
        state["study"]["notes"]
    );
    let figures = state["study"]["figures"].as_object().unwrap();
    assert!(
        !figures.keys().any(|k| k.starts_with("gpu_")),
        "{figures:?}"
    );
}

/// The DCGM utilisation the fake exporter reports while the simulator has
/// no request running or waiting.
const IDLE_PCT: f64 = 4.0;

/// A DCGM exporter over real HTTP: the recorded scrape of a loaded Tesla T4,
/// as it is while the simulator (scraped on each scrape, through its own
/// `/metrics`) has a request running or waiting, else with its
/// `DCGM_FI_DEV_GPU_UTIL` rewritten to [`IDLE_PCT`]. Serves until dropped.
fn dcgm_following(sim_port: u16, recorded: String) -> (tokio::runtime::Runtime, String) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let sim = format!("http://127.0.0.1:{sim_port}/metrics");
    let http = tracebench::client::http_client().unwrap();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (http, sim, recorded) = (http.clone(), sim.clone(), recorded.clone());
            async move {
                // A simulator not (yet) listening runs nothing.
                let text = match http.get(&sim).send().await {
                    Ok(answer) => answer.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                let engine = tracebench::telemetry::prom::parse(&text);
                let in_server = ["vllm:num_requests_running", "vllm:num_requests_waiting"]
                    .iter()
                    .filter_map(|name| engine.scalar_sum(name))
                    .sum::<f64>();
                if in_server > 0.0 {
                    return recorded;
                }
                let idle = |line: &str| match line.rsplit_once(' ') {
                    Some((series, _)) if line.starts_with("DCGM_FI_DEV_GPU_UTIL{") => {
                        format!("{series} {IDLE_PCT}")
                    }
                    _ => line.to_string(),
                };
                recorded.lines().map(idle).collect::<Vec<_>>().join("\n") + "\n"
            }
        }),
    );
    runtime.spawn(async move { axum::serve(listener, app).await });
    (runtime, url)
}

#[test]
fn the_gpu_idle_threshold_lies_between_idle_and_busy() {
    let dir = tempfile::tempdir().unwrap();
    let recorded = tracebench::testing::fixture_text("dcgm/ericsson-ccd-t4-loaded-excerpt.prom");
    let scrape = tracebench::telemetry::prom::parse(&recorded);
    let busy_pct = scrape.scalar_sum("DCGM_FI_DEV_GPU_UTIL").unwrap();
    let memory_mib = scrape.scalar_sum("DCGM_FI_DEV_FB_USED").unwrap();
    assert!(busy_pct > IDLE_PCT + 50.0, "a loaded GPU: {busy_pct}");
    let ports = [free_port(), free_port(), free_port()];
    let (_exporter, url) = dcgm_following(ports[0], recorded);
    // 32 tokens of 20 ms: each request is busy for about 0.7 s, several
    // samples of 100 ms.
    let args = [
        "--repeats",
        "2",
        "--requests",
        "3",
        "--idle-window",
        "2s",
        "--gpu",
        &url,
    ];
    let output = study_on(dir.path(), "coldstart", "--decode-step-ms 20", ports, &args);
    let (_, state) = finished(dir.path(), &output);
    let idle_max = figure(&state, "gpu_idle_util_max_pct");
    assert_eq!(idle_max, IDLE_PCT, "{}", state["study"]);
    assert_eq!(figure(&state, "gpu_idle_util_mean_pct"), IDLE_PCT);
    assert_eq!(figure(&state, "gpu_idle_memory_mib"), memory_mib);
    let busy = figure(&state, "gpu_busy_util_mean_pct");
    // A sample can land between the client's send and the simulator taking
    // the request in: at most a few of the load's samples read idle.
    assert!(
        busy <= busy_pct && busy > IDLE_PCT + 0.8 * (busy_pct - IDLE_PCT),
        "busy mean {busy} against {busy_pct} recorded"
    );
    let threshold = figure(&state, "gpu_idle_threshold_pct");
    let margin = f64::max(2.0, (busy - idle_max) / 4.0);
    assert!(
        (threshold - (idle_max + margin)).abs() < 1e-9,
        "{threshold}"
    );
    assert!(idle_max < threshold && threshold < busy);
    let verdict = state["study"]["verdict"].as_str().unwrap();
    assert!(
        verdict.contains(&format!(
            "the GPU is idle below {threshold:.0}% utilisation (idle max {idle_max:.0}%, busy mean {busy:.0}%, idle memory {memory_mib:.0} MiB)"
        )),
        "{verdict}"
    );
    let tables = state["study"]["tables"].as_array().unwrap();
    let gpu = tables
        .iter()
        .find(|t| t["title"].as_str().unwrap().starts_with("GPU idle"))
        .expect("the GPU table");
    let rows = gpu["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "each start, then all: {rows:?}");
    for row in &rows[..2] {
        let idle_samples: u64 = row[2].as_str().unwrap().parse().unwrap();
        let busy_samples: u64 = row[6].as_str().unwrap().parse().unwrap();
        // The window is 2 s less the settle second, at 100 ms.
        assert!((3..=12).contains(&idle_samples), "{row:?}");
        assert!(busy_samples >= 10, "{row:?}");
    }
}

#[test]
fn bad_input_fails_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("arrivals.txt");
    std::fs::write(&trace, "0\n12\nsoon\n").unwrap();
    let args = ["--idle-trace", trace.to_str().unwrap()];
    refused(
        &study(dir.path(), "coldstart", "", &args),
        "arrivals.txt:3: neither seconds nor JSON",
    );
    let output = Command::new(BIN)
        .current_dir(dir.path())
        .args(["study", "goodput", "--slo", "ttft:fast", "--rate", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("ttft:fast"), "{}", text(&output));
    let args = ["--warmup", "0", "--idle-window", "5s"];
    refused(
        &study(dir.path(), "coldstart", "", &args),
        "--idle-window needs --warmup 1 or more",
    );
    assert!(!dir.path().join("experiments").exists(), "nothing ran");
}
