//! `tracebench proxy` as a user runs it: the real binary in front of the
//! simulator; Ctrl-C (SIGINT) mid-stream lets the stream finish and flushes
//! the records, the summary and the report; `report` and `compare` then read
//! the proxy's folder and a time window of it. Bad flags fail before
//! anything listens.

mod cli_support;

use cli_support::{free_port, tracebench, Sim, BIN};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

fn body(max_tokens: u64) -> serde_json::Value {
    serde_json::json!({"model": "tracebench-sim", "prompt": "Once", "max_tokens": max_tokens, "stream": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_drains_the_stream_in_flight_and_the_folder_reports() {
    let sim = Sim::start(&["--ttft-ms", "20", "--itl-ms", "10"]);
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let (grpc, otlp_http) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut proxy = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "proxy",
            "--listen",
            &listen,
            "--upstream",
            &sim.url,
            "--run-id",
            "p1",
        ])
        .args([
            "--gpu",
            "off",
            "--server-metrics",
            "off",
            "--span-wait",
            "1s",
        ])
        .args(["--otlp-grpc", &grpc, "--otlp-http", &otlp_http])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tracebench::client::install_tls_provider();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{listen}");
    let mut ready = false;
    for _ in 0..100 {
        if http
            .get(format!("{url}/tracebench/health"))
            .send()
            .await
            .is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the proxy answers its health check");
    for _ in 0..3 {
        let done = http
            .post(format!("{url}/v1/completions"))
            .json(&body(4))
            .send()
            .await
            .unwrap();
        assert!(done.text().await.unwrap().contains("[DONE]"));
    }
    let mut long = http
        .post(format!("{url}/v1/completions"))
        .json(&body(60))
        .send()
        .await
        .unwrap();
    assert!(long.chunk().await.unwrap().is_some());
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(proxy.id() as i32, libc::SIGINT) };
    let mut rest = Vec::new();
    while let Some(bytes) = long.chunk().await.expect("the stream in flight is not cut") {
        rest.extend_from_slice(&bytes);
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.ends_with("data: [DONE]\n\n") && rest.contains(": tracebench-metrics"),
        "{rest}"
    );
    let status = proxy.wait().unwrap();
    let mut stderr = String::new();
    proxy
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    let folder = dir.path().join("results/p1");
    let records = tracebench::record::read_records(&folder.join("requests.jsonl")).unwrap();
    assert_eq!(records.len(), 4);
    assert!(records.iter().all(|r| r.ok()), "{records:?}");
    assert_eq!(
        records.iter().map(|r| r.output_tokens.unwrap()).max(),
        Some(60)
    );
    assert!(folder.join("report.html").is_file() && folder.join("summary.json").is_file());
    let db = rusqlite::Connection::open(dir.path().join("results/tracebench.db")).unwrap();
    let rows: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM requests WHERE run_id = 'p1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 4, "the history has every request");

    // A window of the folder is a run folder of its own.
    let folder_arg = folder.to_str().unwrap();
    let out = tracebench(dir.path(), &["report", folder_arg, "--since", "1h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        report.contains("window-") && report.ends_with("report.html"),
        "{report}"
    );
    assert!(std::path::Path::new(&report).is_file());
    let window = std::path::Path::new(&report).parent().unwrap();
    assert_eq!(
        tracebench::record::read_records(&window.join("requests.jsonl"))
            .unwrap()
            .len(),
        4
    );
    let empty = tracebench(
        dir.path(),
        &["report", folder_arg, "--until", "2000-01-01T00:00:00Z"],
    );
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no request of"));
    let compared = tracebench(
        dir.path(),
        &["compare", folder_arg, window.to_str().unwrap()],
    );
    assert!(
        compared.status.success(),
        "{}",
        String::from_utf8_lossy(&compared.stderr)
    );
    assert!(String::from_utf8_lossy(&compared.stdout).contains("TTFT p50"));
}

#[test]
fn bad_flags_fail_before_anything_listens() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (vec!["--upstream", "localhost:8000"], "--upstream"),
        (
            vec!["--upstream", "http://127.0.0.1:1", "--max-body", "lots"],
            "--max-body",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:1",
                "--trace-source",
                "jaeger",
                "--jaeger-url",
                "http://127.0.0.1:1",
            ],
            "--trace-source otlp",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:1",
                "--max-header-bytes",
                "100",
            ],
            "--max-header-bytes",
        ),
    ] {
        let out = tracebench(dir.path(), &[&["proxy"][..], &args].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join("results").exists(), "nothing was written");
}
