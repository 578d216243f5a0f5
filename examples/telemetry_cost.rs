//! What telemetry costs the machine it measures from: runs the GPU sampler (NVML, when a
//! driver is present) at 100 ms and the `/metrics` scraper at 1 s against a local server serving
//! the real vLLM capture, and prints the CPU time used per wall second as a percent of one core.
//!
//! `cargo run --example telemetry_cost -- [SECONDS]` (default 10). The metrics server runs in a
//! child process (this program started with `--serve FILE`) so its CPU is not counted.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tracebench::cli::TelemetryArgs;
use tracebench::clock::RunClock;
use tracebench::telemetry::{start, TelemetryConfig};

/// CPU seconds (user + system) this process has used so far.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return f64::NAN;
        }
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Child mode: serves `file` on `/metrics` and prints `PORT <n>`; ends when stdin closes.
async fn serve(file: String) -> anyhow::Result<()> {
    let body = std::fs::read_to_string(&file)?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(body.clone())),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("PORT {}", listener.local_addr()?.port());
    tokio::spawn(async move { axum::serve(listener, app).await });
    tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        let file = args
            .get(1)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("--serve needs a file"))?;
        return serve(file).await;
    }
    let seconds: u64 = match args.first() {
        Some(text) => text
            .parse()
            .map_err(|_| anyhow::anyhow!("SECONDS must be a whole number, got `{text}`"))?,
        None => 10,
    };
    let fixture = tracebench::testing::fixture("vllm/metrics.prom");
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .arg(&fixture)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no child stdout"))?;
    let mut first_line = String::new();
    BufReader::new(stdout).read_line(&mut first_line)?;
    let port = first_line
        .trim()
        .strip_prefix("PORT ")
        .ok_or_else(|| anyhow::anyhow!("metrics server said `{first_line}`"))?
        .to_string();

    let dir =
        std::env::temp_dir().join(format!("tracebench-telemetry-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let telemetry_config = TelemetryConfig::from_args(&TelemetryArgs {
        gpu: vec!["auto".into()],
        gpu_interval: Duration::from_millis(100),
        server_metrics: format!("http://127.0.0.1:{port}/metrics"),
        server_metrics_interval: Duration::from_secs(1),
    })?;
    let clock = RunClock::start();
    let cpu_before = cpu_seconds();
    let wall_before = Instant::now();
    let telemetry = start(&telemetry_config, "http://127.0.0.1:9", &dir, clock).await?;
    for note in telemetry.notes() {
        println!("note: {note}");
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let report = telemetry.finish((0, clock.now_ns()), 0).await?;
    let wall = wall_before.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;

    drop(child.stdin.take());
    let _ = child.wait();
    let lines = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    println!(
        "{} GPU lines, {} server metrics lines ({} scrapes summarised)",
        lines("telemetry.jsonl"),
        lines("server_metrics.jsonl"),
        report
            .server_metrics
            .as_ref()
            .and_then(|s| s["scrapes"].as_u64())
            .unwrap_or(0)
    );
    println!(
        "CPU {cpu:.3} s over {wall:.1} s wall: {:.3}% of one core",
        100.0 * cpu / wall
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
