//! Telemetry against real local HTTP servers: an engine `/metrics` whose values change during
//! the run (counter deltas and histogram percentiles over the window checked against numbers
//! worked out by hand), DCGM exporters that serve fixtures, fail, or are not there at all, and
//! every line written validated against the JSON Schemas in `schemas/`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracebench::cli::TelemetryArgs;
use tracebench::clock::RunClock;
use tracebench::telemetry::{start, TelemetryConfig};

/// What the test server answers on `/metrics`: a status and a body, changeable mid-run.
type Answer = Arc<Mutex<(StatusCode, String)>>;

async fn serve(answer: Answer) -> String {
    async fn metrics(
        State(answer): State<Answer>,
    ) -> (StatusCode, [(&'static str, &'static str); 1], String) {
        let (status, body) = answer.lock().unwrap().clone();
        (
            status,
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            body,
        )
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(answer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

fn answer(body: &str) -> Answer {
    Arc::new(Mutex::new((StatusCode::OK, body.to_string())))
}

use tracebench::testing::fixture_text as fixture;

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect()
}

/// Polls `path` (at most ~10 s) until `done` holds for its lines.
async fn wait_for_lines(path: &Path, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..500 {
        let lines = read_lines(path);
        if done(&lines) {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{} never reached the expected state: {:?}",
        path.display(),
        read_lines(path)
    );
}

fn validate(schema_file: &str, lines: &[Value]) {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/schemas/{schema_file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    for line in lines {
        let errors: Vec<String> = validator.iter_errors(line).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{schema_file}: {line} → {errors:?}");
    }
}

fn args(gpu: &[&str], server_metrics: &str) -> TelemetryArgs {
    TelemetryArgs {
        gpu: gpu.iter().map(|s| s.to_string()).collect(),
        gpu_interval: Duration::from_millis(20),
        server_metrics: server_metrics.to_string(),
        server_metrics_interval: Duration::from_millis(30),
    }
}

fn config(gpu: &[&str], server_metrics: &str) -> TelemetryConfig {
    TelemetryConfig::from_args(&args(gpu, server_metrics)).unwrap()
}

/// A vLLM-like exposition. `engine1` adds a second engine's series (created lazily by vLLM,
/// so absent from the first scrape).
fn vllm_exposition(
    running: f64,
    kv: f64,
    preemptions: f64,
    prompt: f64,
    generation: f64,
    ttft_buckets: [u64; 5],
    engine1: bool,
) -> String {
    let labels = "engine=\"0\",model_name=\"m\"";
    let mut text = format!(
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{{labels}}} {running}\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{{labels}}} 0.0\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{{labels}}} {kv}\n\
         # TYPE vllm:num_preemptions_total counter\n\
         vllm:num_preemptions_total{{{labels}}} {preemptions}\n\
         # TYPE vllm:prompt_tokens_total counter\n\
         vllm:prompt_tokens_total{{{labels}}} {prompt}\n"
    );
    if engine1 {
        text.push_str("vllm:prompt_tokens_total{engine=\"1\",model_name=\"m\"} 40.0\n");
    }
    text.push_str(&format!(
        "# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{{{labels}}} {generation}\n\
         # TYPE vllm:time_to_first_token_seconds histogram\n"
    ));
    let mut histogram = |labels: &str, counts: [u64; 5]| {
        text.push_str(&format!(
            "vllm:time_to_first_token_seconds_sum{{{labels}}} 1.5\n"
        ));
        for (bound, count) in ["0.01", "0.05", "0.1", "0.5", "+Inf"].iter().zip(counts) {
            text.push_str(&format!(
                "vllm:time_to_first_token_seconds_bucket{{{labels},le=\"{bound}\"}} {count}.0\n"
            ));
        }
        text.push_str(&format!(
            "vllm:time_to_first_token_seconds_count{{{labels}}} {}.0\n",
            counts[4]
        ));
    };
    histogram(labels, ttft_buckets);
    if engine1 {
        histogram("engine=\"1\",model_name=\"m\"", [1, 1, 1, 1, 1]);
    }
    text
}

#[tokio::test]
async fn server_metrics_deltas_and_percentiles_over_the_window() {
    let before = vllm_exposition(0.0, 0.0, 1.0, 100.0, 200.0, [2, 4, 4, 4, 5], false);
    let after = vllm_exposition(3.0, 0.25, 3.0, 160.0, 500.0, [2, 6, 11, 14, 15], true);
    let metrics = answer(&before);
    let base = serve(metrics.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = RunClock::start();
    let telemetry = start(&config(&["off"], "auto"), &base, dir.path(), clock)
        .await
        .unwrap();
    let path = dir.path().join("server_metrics.jsonl");
    // The probe in `start` is the first line, taken before the window opens.
    assert_eq!(read_lines(&path).len(), 1);
    let window_start = clock.now_ns();
    wait_for_lines(&path, |lines| lines.len() >= 3).await;
    *metrics.lock().unwrap() = (StatusCode::OK, after);
    let lines = wait_for_lines(&path, |lines| lines.iter().any(|l| l["running"] == 3.0)).await;
    let window_end = clock.now_ns();
    let gauges = telemetry.gauges();
    assert!(
        gauges
            .iter()
            .any(|g| g.name == "server running" && g.value == 3.0),
        "{gauges:?}"
    );
    let report = telemetry
        .finish((window_start, window_end), 0)
        .await
        .unwrap();
    let summary = report.server_metrics.expect("server metrics summary");

    // Counter deltas: prompt 100 → 160 + 40 (a new series), generation 200 → 500, preemptions 1 → 3.
    assert_eq!(summary["engine"], "vllm");
    assert_eq!(summary["prompt_tokens"], 100.0);
    assert_eq!(summary["generation_tokens"], 300.0);
    assert_eq!(summary["preemptions"], 2.0);
    assert_eq!(summary["window_start_covered"], true);
    assert_eq!(summary["window_end_covered"], true);

    // TTFT bucket deltas summed over both engines: cumulative 1, 3, 8, 11, 11.
    //   p50: rank 5.5 in (0.05, 0.1]: 0.05 + 0.05 × (5.5 − 3) / (8 − 3) = 0.075 s
    //   p90: rank 9.9 in (0.1, 0.5]:  0.1 + 0.4 × (9.9 − 8) / (11 − 8)  = 0.35333 s
    //   p99: rank 10.89 in (0.1, 0.5]: 0.1 + 0.4 × 2.89 / 3              = 0.48533 s
    let ttft = &summary["latency"]["ttft"];
    assert_eq!(ttft["metric"], "vllm:time_to_first_token_seconds");
    assert_eq!(ttft["count"], 11.0);
    let close = |value: &Value, expected: f64| (value.as_f64().unwrap() - expected).abs() < 1e-9;
    assert!(close(&ttft["p50_ms"], 75.0), "{ttft}");
    assert!(close(&ttft["p90_ms"], 100.0 + 400.0 * 1.9 / 3.0), "{ttft}");
    assert!(close(&ttft["p99_ms"], 100.0 + 400.0 * 2.89 / 3.0), "{ttft}");

    // Gauges: mean and max over the scrapes written inside the window.
    let all_lines = read_lines(&path);
    let inside: Vec<f64> = all_lines
        .iter()
        .filter(|l| {
            let t = l["t_ns"].as_u64().unwrap();
            t >= window_start && t <= window_end
        })
        .filter_map(|l| l["running"].as_f64())
        .collect();
    assert_eq!(summary["running"]["max"], 3.0);
    assert!(close(
        &summary["running"]["mean"],
        inside.iter().sum::<f64>() / inside.len() as f64
    ));
    assert_eq!(summary["kv_cache_usage"]["max"], 0.25);

    // raw: everything on the first line, then only what changed.
    let first_raw = all_lines[0]["raw"].as_object().unwrap();
    let unchanged =
        "vllm:time_to_first_token_seconds_bucket{engine=\"0\",model_name=\"m\",le=\"0.01\"}";
    assert_eq!(first_raw[unchanged], 2.0);
    assert!(
        all_lines[1]["raw"].as_object().unwrap().is_empty(),
        "nothing changed yet"
    );
    let first_after = lines.iter().find(|l| l["running"] == 3.0).unwrap()["raw"]
        .as_object()
        .unwrap();
    assert!(!first_after.contains_key(unchanged));
    assert_eq!(
        first_after["vllm:prompt_tokens_total{engine=\"1\",model_name=\"m\"}"],
        40.0
    );
    validate("server_metrics.schema.json", &all_lines);
}

#[tokio::test]
async fn server_metrics_on_the_real_vllm_capture_and_a_failing_scrape() {
    let metrics = answer(&fixture("vllm/metrics.prom"));
    let base = serve(metrics.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{base}/metrics");
    let telemetry = start(
        &config(&["off"], &url),
        "http://127.0.0.1:9",
        dir.path(),
        RunClock::start(),
    )
    .await
    .unwrap();
    let path = dir.path().join("server_metrics.jsonl");
    wait_for_lines(&path, |lines| !lines.is_empty()).await;
    *metrics.lock().unwrap() = (StatusCode::SERVICE_UNAVAILABLE, "loading".to_string());
    wait_for_lines(&path, |lines| lines.iter().any(|l| l.get("gap").is_some())).await;
    *metrics.lock().unwrap() = (StatusCode::OK, fixture("vllm/metrics.prom"));
    let lines = wait_for_lines(&path, |lines| {
        lines.last().is_some_and(|l| l.get("raw").is_some()) && lines.len() > 2
    })
    .await;
    let report = telemetry.finish((0, u64::MAX), 0).await.unwrap();

    let first = &lines[0];
    assert_eq!(first["engine"], "vllm");
    assert_eq!(first["url"], url);
    assert_eq!(
        first["generation_tokens_total"].as_f64().map(|v| v > 0.0),
        Some(true)
    );
    assert_eq!(
        first["raw"].as_object().unwrap().len(),
        477,
        "every sample of the capture"
    );
    let gap = lines.iter().find(|l| l.get("gap").is_some()).unwrap();
    assert!(gap["gap"].as_str().unwrap().contains("503"), "{gap}");
    // After a gap the raw map starts over in full.
    let resumed = lines
        .iter()
        .skip_while(|l| l.get("gap").is_none())
        .find(|l| l.get("raw").is_some())
        .unwrap();
    assert_eq!(resumed["raw"].as_object().unwrap().len(), 477);
    let summary = report.server_metrics.unwrap();
    assert!(summary["gaps"].as_u64().unwrap() >= 1);
    validate("server_metrics.schema.json", &read_lines(&path));
}

#[tokio::test]
async fn auto_server_metrics_without_an_endpoint_is_a_note() {
    let base = serve(Arc::new(Mutex::new((
        StatusCode::NOT_FOUND,
        "no".to_string(),
    ))))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let telemetry = start(
        &config(&["off"], "auto"),
        &base,
        dir.path(),
        RunClock::start(),
    )
    .await
    .unwrap();
    let notes = telemetry.notes();
    let report = telemetry.finish((0, 1), 0).await.unwrap();
    assert!(report.server_metrics.is_none());
    assert!(report.gpu.is_none(), "--gpu off");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("/metrics") && n.contains("404")),
        "{notes:?}"
    );
    assert!(read_lines(&dir.path().join("server_metrics.jsonl")).is_empty());
}

#[tokio::test]
async fn dcgm_exporter_samples_then_fails_then_recovers() {
    let exporter = answer(&fixture("dcgm/a800-8gpu-mig-blog.prom"));
    let base = serve(exporter.clone()).await;
    let url = format!("{base}/metrics");
    let dir = tempfile::tempdir().unwrap();
    let clock = RunClock::start();
    let telemetry = start(
        &config(&[url.as_str()], "off"),
        "http://127.0.0.1:9",
        dir.path(),
        clock,
    )
    .await
    .unwrap();
    let path = dir.path().join("telemetry.jsonl");
    // `start` waited for the first scrape: the idle baseline is already on disk.
    let baseline = read_lines(&path);
    assert_eq!(
        baseline.len(),
        10,
        "8 GPUs, GPU 0 split into 3 MIG instances"
    );
    *exporter.lock().unwrap() = (StatusCode::INTERNAL_SERVER_ERROR, String::new());
    wait_for_lines(&path, |lines| {
        lines.iter().filter(|l| l.get("gap").is_some()).count() >= 2
    })
    .await;
    *exporter.lock().unwrap() = (
        StatusCode::OK,
        fixture("dcgm/ericsson-ccd-t4-loaded-excerpt.prom"),
    );
    wait_for_lines(&path, |lines| lines.iter().any(|l| l["name"] == "Tesla T4")).await;
    let notes = telemetry.notes();
    let report = telemetry.finish((0, clock.now_ns()), 1000).await.unwrap();

    let lines = read_lines(&path);
    validate("gpu_sample.schema.json", &lines);
    let source = format!("dcgm:{url}");
    assert!(lines.iter().all(|l| l["source"] == source.as_str()));
    let gaps: Vec<&Value> = lines.iter().filter(|l| l.get("gap").is_some()).collect();
    assert!(
        gaps.iter()
            .all(|g| g["gap"].as_str().unwrap().contains("HTTP 500")),
        "{gaps:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("skipped 10 unreadable line(s)")),
        "{notes:?}"
    );
    let summary = report.gpu.expect("GPU summary");
    assert!(summary["gaps"].as_u64().unwrap() >= 2);
    let gpus = summary["gpus"].as_array().unwrap();
    let mig = gpus
        .iter()
        .find(|g| g["gpu"] == "0/mig3")
        .expect("MIG instance summarised");
    assert_eq!(mig["idle_memory_mib"], 10.0);
    assert_eq!(mig["host"], "msxf-hpc-64-35-ai");
    let t4 = gpus
        .iter()
        .find(|g| g["host"] == "cp-bm14r7")
        .expect("the T4 after recovery");
    assert_eq!(t4["max_gpu_util_pct"], 91.0);
}

#[tokio::test]
async fn dcgm_endpoint_down_writes_gaps_and_the_run_goes_on() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = format!("http://{closed}/metrics");
    let dir = tempfile::tempdir().unwrap();
    let clock = RunClock::start();
    let telemetry = start(
        &config(&[url.as_str()], "off"),
        "http://127.0.0.1:9",
        dir.path(),
        clock,
    )
    .await
    .expect("an unreachable exporter never fails the run");
    let path = dir.path().join("telemetry.jsonl");
    wait_for_lines(&path, |lines| lines.len() >= 3).await;
    let report = telemetry.finish((0, clock.now_ns()), 10).await.unwrap();
    let lines = read_lines(&path);
    validate("gpu_sample.schema.json", &lines);
    assert!(
        lines.len() >= 4,
        "attempts go on after failures, plus one at the stop"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["gap"].as_str().is_some_and(|g| g.contains("unreachable"))),
        "{lines:?}"
    );
    let summary = report.gpu.expect("GPU summary even without samples");
    assert_eq!(summary["gaps"].as_u64(), Some(lines.len() as u64));
    assert!(summary["gpus"].as_array().unwrap().is_empty());
    assert_eq!(summary["energy_j"], Value::Null);
}

#[test]
fn bad_flag_values_are_errors_before_start() {
    for (gpu, server) in [
        (vec!["gpus"], "off"),
        (vec!["off", "nvml"], "off"),
        (vec!["off"], "ftp://x/metrics"),
    ] {
        let result = TelemetryConfig::from_args(&args(&gpu, server));
        assert!(result.is_err(), "{gpu:?} {server}");
    }
    let mut zero = args(&["off"], "off");
    zero.gpu_interval = Duration::ZERO;
    assert!(TelemetryConfig::from_args(&zero).is_err());
}
