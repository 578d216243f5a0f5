//! `--gpu auto` and `--gpu nvml` through `start`/`finish` on whatever machine runs the tests:
//! without an NVIDIA driver `auto` is only a note and `nvml` writes a gap line; with one, both
//! write samples whose idle baseline comes before `start` returns.

use serde_json::Value;
use std::time::Duration;
use tracebench::cli::TelemetryArgs;
use tracebench::clock::RunClock;
use tracebench::telemetry::nvml::NvmlSource;
use tracebench::telemetry::{start, TelemetryConfig};

fn args(gpu: &str) -> TelemetryConfig {
    TelemetryConfig::from_args(&TelemetryArgs {
        gpu: vec![gpu.to_string()],
        gpu_interval: Duration::from_millis(50),
        server_metrics: "off".to_string(),
        server_metrics_interval: Duration::from_secs(1),
    })
    .unwrap()
}

fn lines(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("telemetry.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn gpu_auto_and_nvml_follow_the_driver() {
    let driver = NvmlSource::open();
    for gpu in ["auto", "nvml"] {
        let dir = tempfile::tempdir().unwrap();
        let clock = RunClock::start();
        let telemetry = start(&args(gpu), "http://127.0.0.1:9", dir.path(), clock)
            .await
            .unwrap();
        let at_start = lines(dir.path());
        let notes = telemetry.notes();
        let report = telemetry.finish((0, clock.now_ns()), 100).await.unwrap();
        match &driver {
            Err(reason) => {
                assert!(
                    notes
                        .iter()
                        .any(|n| n.starts_with("GPU: NVML not available")
                            && n.contains(reason.0.as_str())),
                    "{notes:?}"
                );
                if gpu == "auto" {
                    assert!(at_start.is_empty());
                    assert!(
                        report.gpu.is_none(),
                        "auto without a driver samples nothing"
                    );
                } else {
                    assert_eq!(at_start.len(), 1);
                    assert_eq!(at_start[0]["source"], "nvml");
                    assert_eq!(at_start[0]["gap"], reason.0.as_str());
                    assert_eq!(report.gpu.as_ref().unwrap()["gaps"], 1);
                }
            }
            Ok(_) => {
                assert!(
                    !at_start.is_empty(),
                    "the idle baseline is on disk when start returns"
                );
                assert!(at_start.iter().all(|l| l["memory_used_mib"].is_number()));
                let summary = report.gpu.expect("GPU summary");
                assert!(summary["gpus"][0]["idle_memory_mib"].is_number());
            }
        }
    }
}
