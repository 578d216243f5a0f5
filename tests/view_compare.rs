//! `report::compare` on two synthetic tracebench run folders and a
//! `vllm bench serve --save-result` file (tests/data, vLLM's key names).

mod view_support;

use std::path::PathBuf;
use tracebench::report::compare::compare;
use view_support::{write_run_folder, SyntheticRun};

const VLLM_RESULT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/vllm-bench-serve-result.json"
);

/// The cells of the table row whose label is `label`, split on two or more spaces.
fn row<'a>(table: &'a str, label: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no row {label} in\n{table}"));
    line[label.len()..]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn runs_and_a_vllm_result_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let mut low = SyntheticRun::new("c4", 80);
    low.concurrency = 4;
    let mut high = SyntheticRun::new("c32", 80);
    high.concurrency = 32;
    let (_, low_summary) = write_run_folder(&tmp.path().join("c4"), &low);
    let (_, high_summary) = write_run_folder(&tmp.path().join("c32"), &high);
    let paths = vec![
        tmp.path().join("c4"),
        tmp.path().join("c32"),
        PathBuf::from(VLLM_RESULT),
    ];
    let table = compare(&paths).expect("compare");

    assert!(table.contains("[1] c4: tracebench run"), "{table}");
    assert!(
        table.contains("[3] vllm-bench-serve-result: vllm bench serve (tiny)"),
        "{table}"
    );

    let ttft_low = low_summary.metrics["ttft_ms"].mean;
    let ttft_high = high_summary.metrics["ttft_ms"].mean;
    assert!(
        ttft_high > ttft_low,
        "the data must differ for the test to mean anything"
    );
    let cells = row(&table, "TTFT mean (ms)");
    assert_eq!(cells.len(), 4, "{cells:?}");
    let pct = (ttft_high - ttft_low) / ttft_low * 100.0;
    assert!(
        cells[1].contains(&format!("{pct:+.1}%")),
        "{cells:?} vs {pct:+.1}%"
    );
    assert!(cells[2].starts_with("141.6 ("), "vllm value: {cells:?}");
    // Lower is better for latency: the vLLM run (141.6 ms) or c4, whichever is lower.
    let expected_best = if ttft_low < 141.62 { "[1]" } else { "[3]" };
    assert_eq!(cells[3], expected_best);

    // Higher is better for throughput.
    let cells = row(&table, "output tokens/s");
    let tputs = [
        low_summary.output_throughput,
        high_summary.output_throughput,
        197.73,
    ];
    let best = tputs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| format!("[{}]", i + 1))
        .unwrap();
    assert_eq!(cells[3], best, "{table}");

    // Errors: ours from summary.json, vLLM's from its `failed` key.
    let cells = row(&table, "errors");
    assert_eq!(cells[0], low_summary.requests.failed.to_string());
    assert!(cells[2].starts_with('1'), "{cells:?}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = compare(&[PathBuf::from(VLLM_RESULT)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least two"), "{err}");
    let err = compare(&[tmp.path().to_path_buf(), PathBuf::from(VLLM_RESULT)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no readable summary.json"), "{err}");
    let other = tmp.path().join("other.json");
    std::fs::write(&other, r#"{"hello": "world"}"#).unwrap();
    let err = compare(&[other, PathBuf::from(VLLM_RESULT)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("neither a tracebench summary"), "{err}");
}
