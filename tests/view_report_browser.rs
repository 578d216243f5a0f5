//! Opens a report generated from a synthetic run folder in a real headless
//! Chromium through `scripts/check-report.sh`: the page must parse, run its
//! self-check without script errors, draw every chart, and not execute injected markup.

mod view_support;

use std::path::Path;
use std::process::Command;
use view_support::{write_run_folder, SyntheticRun};

fn chromium_installed() -> bool {
    [
        "chromium",
        "chromium-browser",
        "google-chrome-stable",
        "google-chrome",
    ]
    .iter()
    .any(|name| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

fn check_report(run_dir: &Path) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check-report.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg(run_dir)
        .output()
        .expect("run check-report.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn report_renders_in_a_real_browser() {
    if !chromium_installed() && std::env::var_os("TRACEBENCH_REQUIRE_BROWSER").is_none() {
        eprintln!(
            "\n\n*** SKIPPED report_renders_in_a_real_browser: chromium is not installed \
             (apt-get install -y chromium, or set TRACEBENCH_REQUIRE_BROWSER=1 to make this fail) ***\n"
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run-browser");
    let mut run = SyntheticRun::new("run-browser", 240);
    run.partial = true;
    write_run_folder(&run_dir, &run);
    tracebench::report::html::write_report(&run_dir).expect("write report");

    let (ok, text) = check_report(&run_dir);
    assert!(ok, "check-report.sh failed:\n{text}");
    for chart in [
        "cdf-ttft",
        "cdf-itl",
        "cdf-tpot",
        "cdf-e2e",
        "timeline",
        "throughput-tokens",
        "in-flight",
        "server-queue",
        "server-kv",
        "gpu-memory",
        "gpu-util",
    ] {
        assert!(
            text.contains(&format!("{chart}=")),
            "chart {chart} missing from the browser's self-check:\n{text}"
        );
    }
    let png = run_dir.join("report.png");
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "screenshot is a PNG");
    assert!(
        bytes.len() > 50_000,
        "screenshot suspiciously small: {} bytes",
        bytes.len()
    );
}

#[test]
fn a_broken_page_fails_the_check() {
    if !chromium_installed() && std::env::var_os("TRACEBENCH_REQUIRE_BROWSER").is_none() {
        eprintln!("\n\n*** SKIPPED a_broken_page_fails_the_check: chromium is not installed ***\n");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run-broken");
    write_run_folder(&run_dir, &SyntheticRun::new("run-broken", 40));
    let path = tracebench::report::html::write_report(&run_dir).expect("write report");
    let html = std::fs::read_to_string(&path).expect("read report");
    // A script error before the self-check, and one chart whose marks vanished.
    let broken = html
        .replacen("<main>", "<main><script>undefinedFunction();</script>", 1)
        .replacen("data-mark=\"1\"", "data-gone=\"1\"", 1);
    std::fs::write(&path, broken).expect("write broken report");
    let (ok, text) = check_report(&run_dir);
    assert!(!ok, "a page with a script error passed:\n{text}");
    assert!(text.contains("script errors"), "{text}");
    assert!(text.contains("empty or broken"), "{text}");
}
