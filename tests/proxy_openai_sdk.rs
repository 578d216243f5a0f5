//! A real application through the proxy: the official `openai` Python
//! package (in the venv `scripts/python-venv.sh` makes) streams chat and
//! completions from the simulator through the proxy and parses every chunk,
//! the metrics comment line included; its JSON answer carries the metrics.

mod proxy_support;

use proxy_support::*;
use std::path::PathBuf;
use std::time::Duration;

/// The venv's python: `TRACEBENCH_PYTHON`, else the repository's `.venv-tests`.
fn python() -> Option<PathBuf> {
    let path = std::env::var_os("TRACEBENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-tests/bin/python")
        });
    path.is_file().then_some(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_reads_streams_with_the_metrics_comment() {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("TRACEBENCH_PYTHON").is_none(),
            "TRACEBENCH_PYTHON is set but is not a file"
        );
        eprintln!(
            "\n\n*** SKIPPED the_openai_sdk_reads_streams_with_the_metrics_comment: no Python venv \
             with openai (run scripts/python-venv.sh, or scripts/test.sh) ***\n"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (sim, proxy) = sim_and_proxy(dir.path(), Duration::from_secs(10)).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/proxy_openai_client.py"
    );
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .arg(proxy.url())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the SDK failed:\n{stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    let stream = &seen["chat_stream"];
    assert_eq!(stream["text"], " tok".repeat(6), "{seen}");
    assert_eq!(
        stream["usage_chunks"], 0,
        "the injected usage chunk is removed: {seen}"
    );
    assert_eq!(stream["finish"], serde_json::json!(["length"]));
    assert_eq!(
        seen["chat_stream_usage"]["completion_tokens"],
        serde_json::json!([4])
    );
    assert_eq!(seen["completions_stream"]["text"], " tok".repeat(5));
    assert_eq!(seen["chat_json"]["completion_tokens"], 3);
    let metrics = &seen["chat_json"]["metrics"];
    assert_eq!(metrics["output_tokens"], 3, "{seen}");
    assert!(metrics["ttft_ms"].as_f64().unwrap() >= TTFT_MS);
    let as_data = &seen["chat_stream_metrics_data"]["metrics"];
    assert_eq!(as_data[0]["output_tokens"], 2, "{seen}");

    let joined = record_when(&proxy, "sdk-stream", |r| !r["server"].is_null()).await;
    assert_eq!(joined["output_tokens"], 6);
    let outcome = proxy.shutdown().await.unwrap();
    sim.shutdown().await.unwrap();
    let records = records(&outcome.dir);
    assert_eq!(records.len(), 5);
    assert!(records.iter().all(|r| r.ok()), "{records:?}");
    let text = std::fs::read_to_string(outcome.dir.join("requests.jsonl")).unwrap();
    assert!(
        !text.contains("sk-test-not-a-secret"),
        "credentials are never written"
    );
}
