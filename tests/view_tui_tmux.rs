//! The live dashboard in a real terminal: tmux runs this test binary's
//! `dashboard_harness` (the dashboard fed by a thread of snapshots), the test
//! reads the screen with `capture-pane`, presses keys, and checks how the
//! dashboard ended and that the terminal left the alternate screen.

mod tmux_support;

use std::path::Path;
use std::time::Duration;
use tmux_support::{tmux, tmux_installed, wait_for};
use tracebench::analysis::live::{LivePercentiles, LiveSnapshot, PhaseMeans, Tick};
use tracebench::tui::{run_dashboard, DashboardExit};

const HARNESS_ENV: &str = "TRACEBENCH_TUI_HARNESS";

/// Runs the dashboard with snapshots from a feeder thread; writes how it ended to
/// the file named by the environment. Mode `finish` drops the sender after 12
/// updates; mode `quit` keeps sending (at most 60 s) until a key stops it.
#[test]
#[ignore = "started inside tmux by dashboard_in_tmux"]
fn dashboard_harness() {
    let Ok(spec) = std::env::var(HARNESS_ENV) else {
        panic!("run by dashboard_in_tmux with {HARNESS_ENV}=MODE:OUT_FILE");
    };
    let (mode, out) = spec.split_once(':').expect("MODE:OUT_FILE");
    let (sender, receiver) = tokio::sync::watch::channel(LiveSnapshot::default());
    let updates = if mode == "finish" { 12 } else { 600 };
    let feeder = std::thread::spawn(move || {
        for step in 1..=updates {
            std::thread::sleep(Duration::from_millis(100));
            let snapshot = LiveSnapshot {
                done: step,
                failed: step / 10,
                in_flight: 4,
                total: Some(1000),
                elapsed_s: step as f64 / 10.0,
                ttft: LivePercentiles {
                    count: step,
                    p50: 42.0,
                    p90: 80.0,
                    p99: 120.0,
                    max: 150.0,
                },
                timeline: (0..=step / 10)
                    .map(|second| Tick {
                        second,
                        completed: 10,
                        output_tokens: 640,
                        in_flight: 4,
                    })
                    .collect(),
                phases: Some(PhaseMeans {
                    spans: step,
                    queue_ms: 25.0,
                    prefill_ms: 15.0,
                    decode_ms: 60.0,
                }),
                recent_errors: vec![format!("req-{step} stream: reset")],
                ..LiveSnapshot::default()
            };
            if sender.send(snapshot).is_err() {
                return;
            }
        }
    });
    let exit =
        run_dashboard(receiver, "tmux dashboard check".into(), Vec::new()).expect("dashboard ran");
    std::fs::write(out, format!("{exit:?}")).expect("write outcome");
    if exit == DashboardExit::Finished {
        feeder.join().expect("feeder");
    }
}

/// Starts the harness in a detached 110x34 tmux session; returns the outcome file.
fn start(socket: &str, mode: &str, dir: &Path) -> std::path::PathBuf {
    let out = dir.join(format!("{mode}.outcome"));
    let exe = std::env::current_exe().expect("test binary");
    let command = format!(
        "env {HARNESS_ENV}={mode}:{} {} --exact dashboard_harness --ignored --nocapture --test-threads=1",
        out.display(),
        exe.display()
    );
    tmux(
        socket,
        &[
            "new-session",
            "-d",
            "-s",
            "dash",
            "-x",
            "110",
            "-y",
            "34",
            &command,
        ],
    );
    tmux(
        socket,
        &["set-option", "-t", "dash", "remain-on-exit", "on"],
    );
    out
}

fn outcome(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn dashboard_in_tmux() {
    if !tmux_installed() {
        assert!(
            std::env::var_os("TRACEBENCH_REQUIRE_TMUX").is_none(),
            "TRACEBENCH_REQUIRE_TMUX is set but tmux is not installed"
        );
        eprintln!(
            "\n\n*** SKIPPED dashboard_in_tmux: tmux is not installed (apt-get install tmux) ***\n"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (mode, key, expected) in [
        ("quit", Some("q"), "UserQuit"),
        ("quit", Some("C-c"), "UserQuit"),
        ("quit", Some("Escape"), "UserQuit"),
        ("finish", None, "Finished"),
    ] {
        let socket = format!(
            "tracebench-test-{}-{mode}-{}",
            std::process::id(),
            key.unwrap_or("none")
        );
        let case_dir = tmp.path().join(&socket);
        std::fs::create_dir_all(&case_dir).unwrap();
        let out = start(&socket, mode, &case_dir);
        let mut screen = String::new();
        let drawn = wait_for(|| {
            screen = tmux(&socket, &["capture-pane", "-p", "-t", "dash"]);
            screen.contains("tmux dashboard check") && screen.contains("mean of")
        });
        if drawn {
            for expected_text in [
                "/1000",
                "in flight 4",
                "TTFT",
                "42.0",
                "120",
                "queue",
                "prefill",
                "Recent errors",
                "Ctrl-C",
            ] {
                assert!(
                    screen.contains(expected_text),
                    "{mode}/{key:?}: missing {expected_text:?} on screen:\n{screen}"
                );
            }
            assert_eq!(
                tmux(
                    &socket,
                    &["display-message", "-p", "-t", "dash", "#{alternate_on}"]
                )
                .trim(),
                "1",
                "the dashboard draws on the alternate screen"
            );
        }
        if let Some(key) = key {
            tmux(&socket, &["send-keys", "-t", "dash", key]);
        }
        let ended = wait_for(|| !outcome(&out).is_empty());
        let final_screen = tmux(&socket, &["capture-pane", "-p", "-t", "dash"]);
        let alternate = tmux(
            &socket,
            &["display-message", "-p", "-t", "dash", "#{alternate_on}"],
        );
        tmux(&socket, &["kill-server"]);
        assert!(drawn, "{mode}/{key:?}: dashboard never drew:\n{screen}");
        assert!(
            ended,
            "{mode}/{key:?}: dashboard did not end:\n{final_screen}"
        );
        assert_eq!(outcome(&out), expected, "{mode}/{key:?}");
        // Back on the normal screen, where the harness's own output is visible again.
        assert!(
            final_screen.contains("running 1 test"),
            "{mode}/{key:?}:\n{final_screen}"
        );
        assert_eq!(
            alternate.trim(),
            "0",
            "{mode}/{key:?}: still on the alternate screen:\n{final_screen}"
        );
    }
}
