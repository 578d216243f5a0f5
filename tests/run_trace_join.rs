//! Trace correlation end to end with real processes: the simulator exports one
//! span per request over OTLP (gRPC, then HTTP) into the receiver embedded in
//! `tracebench run`, at a concurrency above its batch slots so queueing shows.
//! Every request must join its span, and network + frontend + queue + prefill
//! must equal the client's TTFT. Also: `join` re-runs it, `show` prints it, the
//! server's /metrics shows requests waiting, and other engines' span shapes join.

mod cli_support;

use cli_support::{free_port, json, lines, run_expecting, tracebench, Sim};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Runs 48 requests at concurrency 12 against a simulator with 4 batch slots
/// exporting to `export` (a template with `{grpc}`/`{http}` ports); returns the run folder.
fn traced_run(tmp: &Path, flavor: &str, export: &str) -> PathBuf {
    let (grpc, http) = (free_port(), free_port());
    let endpoint = export
        .replace("{grpc}", &grpc.to_string())
        .replace("{http}", &http.to_string());
    let sim = Sim::start(&[
        "--max-num-seqs",
        "4",
        "--flavor",
        flavor,
        "--otlp-endpoint",
        &endpoint,
        "--span-delay-ms",
        "200",
    ]);
    run_expecting(
        tmp,
        0,
        &[
            "--url",
            &sim.url,
            "--concurrency",
            "12",
            "--requests",
            "48",
            "--input-tokens",
            "300",
            "--output-tokens",
            "12",
            "--ignore-eos",
            "--no-tui",
            "--no-db",
            "--gpu",
            "off",
            "--otlp-grpc",
            &format!("127.0.0.1:{grpc}"),
            "--otlp-http",
            &format!("127.0.0.1:{http}"),
            "--span-wait",
            "20s",
            "--jaeger-ui",
            "http://127.0.0.1:16686",
        ],
    )
    .dir
}

/// Every record joined, its decomposition adds up to its TTFT within 1 ms, and queueing showed.
fn assert_joined_and_decomposed(dir: &Path, engine: &str) -> Vec<Value> {
    let records = lines(&dir.join("requests.jsonl"));
    assert_eq!(records.len(), 48);
    let mut queued = 0;
    for record in &records {
        assert!(record["error"].is_null(), "{record}");
        let server = &record["server"];
        assert_eq!(server["engine"], engine, "{record}");
        let d = &record["decomposition"];
        let sum: f64 = ["network_ms", "frontend_ms", "queue_ms", "prefill_ms"]
            .iter()
            .map(|k| {
                d[k].as_f64()
                    .unwrap_or_else(|| panic!("{k} missing: {record}"))
            })
            .sum();
        let ttft = record["ttft_ms"].as_f64().unwrap();
        assert!(
            (sum - ttft).abs() < 1.0,
            "parts {sum} vs ttft {ttft}: {record}"
        );
        if server["queue_ms"].as_f64().unwrap() > 1.0 {
            queued += 1;
        }
        assert_eq!(
            record["trace_url"],
            format!(
                "http://127.0.0.1:16686/trace/{}",
                record["trace_id"].as_str().unwrap()
            )
        );
    }
    // 12 requests for 4 slots: most wait for a slot.
    assert!(queued >= 24, "only {queued} of 48 requests queued");
    let summary = json(&dir.join("summary.json"));
    assert_eq!(summary["join"]["rate"], 1.0);
    assert_eq!(summary["join"]["joined"], 48);
    assert!(
        summary["metrics"]["server.queue_ms"]["p50"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        summary["diagnosis"].as_str().unwrap().contains("queue"),
        "{summary}"
    );
    records
}

#[test]
fn vllm_spans_over_otlp_grpc_join_every_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = traced_run(tmp.path(), "vllm", "grpc://127.0.0.1:{grpc}");
    let records = assert_joined_and_decomposed(&dir, "vllm");
    // The span's own ids: same trace as the traceparent sent, parented on the client span id.
    let spans = lines(&dir.join("spans.jsonl"));
    assert!(spans.len() >= 48);
    let first = &records[0];
    let span = spans
        .iter()
        .map(|l| &l["span"])
        .find(|s| s["traceId"] == first["trace_id"])
        .expect("the span of the first record");
    assert_eq!(span["parentSpanId"], first["span_id"]);
    assert_eq!(span["name"], "llm_request");

    // The server's /metrics was scraped: requests waited for a slot.
    let metrics = lines(&dir.join("server_metrics.jsonl"));
    assert!(metrics.len() >= 2, "{metrics:?}");
    let most_waiting = metrics
        .iter()
        .filter_map(|m| m["waiting"].as_f64())
        .fold(0.0, f64::max);
    assert!(
        most_waiting > 0.0,
        "no waiting requests seen in {metrics:?}"
    );
    let summary = json(&dir.join("summary.json"));
    assert!(summary["server_metrics"].is_object(), "{summary}");

    // `join` again from the files gives the same joins; `show` prints one request.
    let again = tracebench(tmp.path(), &["join", dir.to_str().unwrap()]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("joined 48"));
    let rejoined = lines(&dir.join("requests.jsonl"));
    assert_eq!(
        rejoined.iter().filter(|r| !r["server"].is_null()).count(),
        48
    );
    let id = first["request_id"].as_str().unwrap();
    let show = tracebench(tmp.path(), &["show", dir.to_str().unwrap(), id]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert_eq!(show.status.code(), Some(0));
    assert!(
        text.contains(id) && text.contains("queue") && text.contains("tracebench run"),
        "{text}"
    );
}

#[test]
fn vllm_spans_over_otlp_http_join_every_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = traced_run(tmp.path(), "vllm", "http://127.0.0.1:{http}/v1/traces");
    assert_joined_and_decomposed(&dir, "vllm");
}

#[test]
fn sglang_and_tgi_span_shapes_join_too() {
    for flavor in ["sglang", "tgi"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = traced_run(tmp.path(), flavor, "grpc://127.0.0.1:{grpc}");
        assert_joined_and_decomposed(&dir, flavor);
    }
}

#[test]
fn spans_that_never_come_are_explained() {
    // A simulator that exports nowhere: every record says why its span is missing.
    let sim = Sim::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let run = run_expecting(
        tmp.path(),
        0,
        &[
            "--url",
            &sim.url,
            "--requests",
            "4",
            "--output-tokens",
            "4",
            "--no-tui",
            "--no-db",
            "--gpu",
            "off",
            "--otlp-grpc",
            &format!("127.0.0.1:{}", free_port()),
            "--otlp-http",
            &format!("127.0.0.1:{}", free_port()),
            "--span-wait",
            "1s",
        ],
    );
    let dir = run.dir;
    for record in run.records {
        assert!(record["server"].is_null());
        assert!(
            record["server_missing_reason"]
                .as_str()
                .unwrap()
                .contains("no span arrived"),
            "{record}"
        );
    }
    let summary = json(&dir.join("summary.json"));
    assert_eq!(summary["join"]["joined"], 0);
}

#[test]
fn collect_writes_every_span_until_ctrl_c() {
    let (grpc, http) = (free_port(), free_port());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("captured.jsonl");
    let collector = std::process::Command::new(cli_support::BIN)
        .args(["collect", "--out", out.to_str().unwrap()])
        .args(["--otlp-grpc", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http", &format!("127.0.0.1:{http}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sim = Sim::start(&[
        "--otlp-endpoint",
        &format!("grpc://127.0.0.1:{grpc}"),
        "--span-delay-ms",
        "100",
    ]);
    run_expecting(
        tmp.path(),
        0,
        &[
            "--url",
            &sim.url,
            "--requests",
            "5",
            "--output-tokens",
            "4",
            "--no-tui",
            "--no-db",
            "--trace-source",
            "none",
            "--gpu",
            "off",
            "--server-metrics",
            "off",
        ],
    );
    // The simulator batches spans every 100 ms; wait until all five are written.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&out).map_or(0, |t| t.lines().count()) < 5
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(collector.id() as i32, libc::SIGINT) };
    let status = collector.wait_with_output().unwrap().status;
    assert!(status.success(), "{status:?}");
    let spans = lines(&out);
    assert_eq!(spans.len(), 5);
    assert!(spans.iter().all(|l| l["span"]["name"] == "llm_request"));
    assert!(spans
        .iter()
        .all(|l| l["scope"]["name"] == "vllm.tracing.otel"));
}
