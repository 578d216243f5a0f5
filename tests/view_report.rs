//! The HTML report without a browser: every section from a full run folder,
//! escaping of hostile text, client-only bars without spans, missing optional
//! files, torn lines, and a 50,000-request run that must stay a sane size.

mod view_support;

use tracebench::report::html::{write_report, MAX_TIMELINE_ROWS};
use view_support::{write_run_folder, SyntheticRun};

fn report_of(run: &SyntheticRun) -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(&run.run_id);
    write_run_folder(&dir, run);
    let path = write_report(&dir).expect("report");
    assert_eq!(path, dir.join("report.html"));
    let html = std::fs::read_to_string(path).unwrap();
    (tmp, html)
}

/// The value of `data-expect` of one chart, if the chart is there.
fn chart_marks(html: &str, chart: &str) -> Option<usize> {
    let at = html.find(&format!("data-chart=\"{chart}\" data-expect=\""))?;
    let rest = &html[at..].split("data-expect=\"").nth(1)?;
    rest.split('"').next()?.parse().ok()
}

#[test]
fn a_full_run_has_every_section_and_no_external_resources() {
    let mut run = SyntheticRun::new("run-full", 120);
    run.partial = true;
    let (_tmp, html) = report_of(&run);
    for text in [
        "Partial run",
        "Diagnosis.",
        "Where TTFT went, request by request",
        "Every request over time",
        "Running and waiting requests",
        "KV cache usage",
        "GPU memory used",
        "Sampling gaps: 1× nvml timeout.",
        "Top 10 by TTFT",
        "Top 10 by E2E",
        "http_status",
        "503 ×",
        "tracebench run --url http://127.0.0.1:8000",
        "0.32.0",
        "bench-&lt;host&gt;",
        "queue",
        "prefill",
    ] {
        assert!(html.contains(text), "missing {text:?}");
    }
    for chart in [
        "cdf-ttft",
        "cdf-itl",
        "cdf-tpot",
        "cdf-e2e",
        "ttft-breakdown",
        "timeline",
        "in-flight",
        "gpu-util",
    ] {
        assert!(
            chart_marks(&html, chart).is_some_and(|n| n > 0),
            "chart {chart} empty or missing"
        );
    }
    // One self-contained file: nothing fetched from anywhere.
    for external in ["<script src", "<link", "@import", "url(", "src=\"http"] {
        assert!(!html.contains(external), "external resource {external:?}");
    }
    assert!(
        html.contains("default-src 'none'"),
        "a CSP forbids network loads"
    );
}

#[test]
fn text_from_files_is_escaped() {
    let (_tmp, html) = report_of(&SyntheticRun::new("run-xss", 60));
    assert!(
        !html.contains("<script>window.__xss"),
        "error message not escaped"
    );
    assert!(
        !html.contains("<img src=x"),
        "request id or body not escaped"
    );
    assert!(
        !html.contains("<b>for tests</b>"),
        "run.json note not escaped"
    );
    assert!(html.contains("&lt;script&gt;window.__xss=1&lt;/script&gt;"));
    assert!(
        !html.contains("href=\"javascript:"),
        "only http(s) trace links are linked"
    );
    assert!(html.contains("href=\"http://127.0.0.1:16686/trace/"));
    // The page's own scripts are the only ones.
    assert_eq!(html.matches("<script>").count(), 2);
}

#[test]
fn without_spans_bars_show_client_phases() {
    let mut run = SyntheticRun::new("run-client-only", 40);
    run.with_server = false;
    run.with_telemetry = false;
    let (_tmp, html) = report_of(&run);
    assert!(
        html.contains("no server spans were joined")
            || html.contains("No server spans were joined")
    );
    assert!(html.contains("wait for first token"));
    assert!(html.contains("streaming"));
    assert!(!html.contains("data-chart=\"server-queue\""));
    assert!(!html.contains("data-chart=\"gpu-memory\""));
    assert!(!html.contains("Diagnosis."), "no diagnosis without spans");
}

#[test]
fn missing_summary_and_torn_lines_are_noted_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run-torn");
    write_run_folder(&dir, &SyntheticRun::new("run-torn", 30));
    std::fs::remove_file(dir.join("summary.json")).unwrap();
    std::fs::remove_file(dir.join("run.json")).unwrap();
    let mut requests = std::fs::read_to_string(dir.join("requests.jsonl")).unwrap();
    requests.push_str("{\"schema\":\"tracebench.request/1\",\"run_id\":\"run-to");
    std::fs::write(dir.join("requests.jsonl"), requests).unwrap();
    let html = std::fs::read_to_string(write_report(&dir).unwrap()).unwrap();
    assert!(
        html.contains("requests.jsonl:31: skipped unreadable line"),
        "torn line noted"
    );
    assert!(html.contains("summary was computed from requests.jsonl"));
    assert!(html.contains("run.json is missing"));
    assert!(html.contains("Top 10 by TTFT"));
    // Not a run folder at all.
    let err = write_report(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("not a run folder"), "{err}");
}

#[test]
fn fifty_thousand_requests_are_downsampled() {
    let mut run = SyntheticRun::new("run-50k", 50_000);
    run.with_telemetry = false;
    let (_tmp, html) = report_of(&run);
    let stride = 50_000usize.div_ceil(MAX_TIMELINE_ROWS);
    assert!(
        html.contains(&format!(
            "This run has 50000 requests: every {stride}th request"
        )),
        "sampling stated"
    );
    let bars = html.matches("<g><title>").count();
    assert!(bars <= 2 * MAX_TIMELINE_ROWS, "{bars} bars");
    assert!(html.len() < 4_000_000, "report is {} bytes", html.len());
}
