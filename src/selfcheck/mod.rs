//! `tracebench selfcheck`: how far this machine's client is from the truth.
//! It starts the simulator as a separate process in deterministic mode (it logs
//! the instant it wrote every chunk), drives it at rising concurrency through
//! the real client and dispatch loop, and reports per level the client's TTFT
//! and per-chunk ITL error against those write instants, the streams really in
//! flight, client CPU seconds and peak RSS, against the targets. Each level
//! is measured from its first request, after `run`'s preconnect, and its first
//! wave is shown on its own, beside a first wave sent with no connection open
//! (the connection storm of a cold pool). The client has the workers `run`
//! would give it and the simulator half the cores; each level reports how busy
//! the machine was, since errors on a saturated machine measure the machine.

mod machine;
mod truth;

use crate::analysis::stats::percentile_of_sorted;
use crate::cli::SelfcheckArgs;
use crate::client::{Client, ClientOptions, PreparedRequest};
use crate::clock::RunClock;
use crate::dispatch::{Dispatcher, Finished, Stops};
use crate::record::{Endpoint, RequestRecord};
use crate::report::console::print;
use crate::schedule::Schedule;
use crate::workload::feed::Feed;
use crate::workload::{BodyOptions, Item, Prompt};
use anyhow::{bail, Context};
use machine::{
    clock_ticks_per_second, cpu_seconds, peak_rss_mb, reset_peak_rss, stolen_cpu_seconds,
};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use truth::{compare_gaps, max_overlap, read_truth, sorted, ttft_error_ms, wave_figures, Truth};

/// The TTFT figures of one level's first wave: its first `concurrency`
/// requests, all sent at once.
#[derive(Debug, Clone, Serialize)]
pub struct WaveFigures {
    pub requests: u64,
    pub failed: u64,
    /// Requests that found an idle connection.
    pub reused: u64,
    pub ttft_error_p50_ms: f64,
    pub ttft_error_p99_ms: f64,
    /// TCP connect of the requests that opened a connection (p99); `None` when none did.
    pub connect_p99_ms: Option<f64>,
}

/// The figures of one concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct LevelFigures {
    pub concurrency: usize,
    pub requests: u64,
    pub failed: u64,
    /// TTFT error: the client's TTFT minus the simulator's, counted from the
    /// instant the request was written, so it holds the client's late reads and
    /// anything between `sent` and the write (a new connection's setup).
    pub ttft_error_p50_ms: f64,
    pub ttft_error_p99_ms: f64,
    pub itl_error_p99_ms: f64,
    /// Share of token-chunk gaps (0 to 1) the client read as none at all, one
    /// chunk in the same read as the one before, although the simulator wrote
    /// them at least half a token interval apart: the client was a whole
    /// token interval behind on that stream.
    pub merged_chunk_share: f64,
    /// Most streams the simulator had open at once.
    pub streams_in_flight: usize,
    pub client_cpu_s: f64,
    /// The simulator's CPU seconds over the same measured rounds.
    pub sim_cpu_s: f64,
    pub wall_s: f64,
    pub client_peak_rss_mb: f64,
    /// Client and simulator CPU over the wall time of all cores (0 to 1).
    pub machine_busy: f64,
    /// CPU time the hypervisor took from this machine's cores while this level
    /// ran (`steal` in `/proc/stat`, all cores); `None` where the kernel does not say.
    pub stolen_cpu_s: Option<f64>,
    /// The first wave of the measured rounds, sent after the client preconnected.
    pub first_wave: WaveFigures,
    /// A first wave sent by a client with no connection open (`--no-preconnect`).
    pub first_wave_no_preconnect: WaveFigures,
}

impl LevelFigures {
    /// The targets this level misses (empty when it meets them all).
    pub fn missed_targets(&self) -> Vec<String> {
        let mut missed = Vec::new();
        if self.failed > 0 {
            missed.push(format!("{} requests failed", self.failed));
        }
        let ttft = [
            ("", self.ttft_error_p50_ms, self.ttft_error_p99_ms),
            (
                "first-wave ",
                self.first_wave.ttft_error_p50_ms,
                self.first_wave.ttft_error_p99_ms,
            ),
        ];
        for (which, p50, p99) in ttft {
            missed.extend(self.missed_ttft_targets(which, p50, p99));
        }
        if self.itl_error_p99_ms >= 3.0 {
            missed.push(format!(
                "per-chunk ITL p99 error {:.2} ms >= 3 ms",
                self.itl_error_p99_ms
            ));
        }
        if self.streams_in_flight < self.concurrency {
            missed.push(format!(
                "only {} of {} streams in flight",
                self.streams_in_flight, self.concurrency
            ));
        }
        if self.client_peak_rss_mb >= 100.0 {
            missed.push(format!(
                "client RSS {:.0} MB >= 100 MB",
                self.client_peak_rss_mb
            ));
        }
        missed
    }

    /// The TTFT targets that `which` errors (p50, p99) miss.
    fn missed_ttft_targets(&self, which: &str, p50: f64, p99: f64) -> Vec<String> {
        let p50_target = match self.concurrency {
            c if c <= 200 => 2.0,
            c if c <= 500 => 3.0,
            _ => 5.0,
        };
        let mut missed = Vec::new();
        if p50.abs() >= p50_target {
            missed.push(format!(
                "{which}TTFT p50 error {p50:.2} ms >= {p50_target} ms"
            ));
        }
        if p99.abs() >= 15.0 {
            missed.push(format!("{which}TTFT p99 error {p99:.2} ms >= 15 ms"));
        }
        missed
    }
}

/// Above this share of all cores busy, client and simulator crowd each other.
const SATURATED: f64 = 0.8;
/// From this share of merged chunks on, the two gaps each one throws off make
/// up 1% of all gaps: enough to set the ITL p99 error.
const MERGED_SETS_THE_TAIL: f64 = 0.005;

/// Runs the self-check with the client on `client_threads` workers that yield
/// for `idle_spin` before they sleep (the simulator's workers too); exit code
/// 0 when every level meets its targets, else 1.
pub async fn selfcheck(
    args: SelfcheckArgs,
    client_threads: usize,
    idle_spin: Duration,
) -> anyhow::Result<i32> {
    let scratch = tempfile::Builder::new()
        .prefix("tracebench-selfcheck")
        .tempdir()?;
    let truth_path = scratch.path().join("truth.jsonl");
    let cores = crate::cli::cores();
    // The client has the workers `run` would give it; the simulator half the cores.
    let sim_threads = (cores / 2).max(1);
    let mut sim = SimProcess::start(&args, &truth_path, sim_threads, idle_spin)?;
    print(&format!(
        "selfcheck: simulator pid {} at {} (TTFT {}, ITL {}, {} tokens; worker threads: \
         {sim_threads}), client in this process (worker threads: {client_threads}), {cores} cores, \
         idle spin {}\n",
        sim.child.id(),
        sim.url,
        humantime::format_duration(args.ttft),
        humantime::format_duration(args.itl),
        args.tokens,
        humantime::format_duration(idle_spin)
    ));
    print(&format!(
        "{:>6} {:>7} {:>14} {:>14} {:>14} {:>7} {:>10} {:>9} {:>9} {:>8} {:>9} {:>6} {:>9}  verdict\n",
        "conc",
        "reqs",
        "TTFT p50 err",
        "TTFT p99 err",
        "ITL p99 err",
        "merged",
        "in flight",
        "CPU s",
        "CPU/core",
        "RSS MB",
        "sim CPU s",
        "busy",
        "stolen ms"
    ));
    let mut figures = Vec::new();
    let mut all_met = true;
    for &level in &args.levels {
        let level_figures = measure_level(&args, &sim, level, &truth_path, cores).await?;
        let missed = level_figures.missed_targets();
        all_met &= missed.is_empty();
        print_level(&level_figures, &missed);
        figures.push(level_figures);
    }
    sim.stop();
    if let Some(path) = &args.json {
        crate::run::write_json(path, &figures)?;
    }
    print(
        "errors are client arrival minus simulator write instant (same host, wall clock); the \
         TTFT error also holds the time from sent to the request's write (a new connection's \
         setup). Each level is measured from its first request, after preconnect; the first-wave \
         rows are its first requests, and those of a client that sent them with no connection \
         open (no preconnect). CPU/core is client CPU seconds per wall second; busy is client \
         plus simulator CPU over all cores\n",
    );
    if let Some(level) = figures.iter().find(|f| f.machine_busy >= SATURATED) {
        print(&format!(
            "from {} streams on, client and simulator kept the machine {:.0}% busy or more: a \
             client with a machine to itself has more room\n",
            level.concurrency,
            100.0 * SATURATED
        ));
    }
    let merged: Vec<String> = figures
        .iter()
        .filter(|f| f.merged_chunk_share >= MERGED_SETS_THE_TAIL)
        .map(|f| format!("{:.1}% at {}", 100.0 * f.merged_chunk_share, f.concurrency))
        .collect();
    if !merged.is_empty() {
        print(&format!(
            "merged: token chunks read in one read with the chunk before ({}): the client was a \
             whole token interval behind on those streams. The kernel gives a read the arrival \
             instant of its last bytes only (it merges segments waiting in a socket), so such a \
             chunk takes the next one's instant and two gaps read one interval off: that sets \
             the ITL p99 error there\n",
            merged.join(", ")
        ));
    }
    let stolen: Vec<String> = figures
        .iter()
        .filter(|f| f.stolen_cpu_s.is_some_and(|s| s > 0.0))
        .map(|f| f.concurrency.to_string())
        .collect();
    if !stolen.is_empty() {
        print(&format!(
            "the hypervisor took CPU time from this machine during level(s) {} (stolen ms): \
             whatever ran on a core then stopped, and the errors there may include it\n",
            stolen.join(", ")
        ));
    }
    Ok(if all_met { 0 } else { 1 })
}

/// One level's row, and below it the rows of its two first waves.
fn print_level(f: &LevelFigures, missed: &[String]) {
    print(&format!(
        "{:>6} {:>7} {:>11.2} ms {:>11.2} ms {:>11.2} ms {:>6.2}% {:>10} {:>9.2} {:>8.0}% {:>8.1} {:>9.2} {:>5.0}% {:>9}  {}\n",
        f.concurrency,
        f.requests,
        f.ttft_error_p50_ms,
        f.ttft_error_p99_ms,
        f.itl_error_p99_ms,
        100.0 * f.merged_chunk_share,
        f.streams_in_flight,
        f.client_cpu_s,
        100.0 * f.client_cpu_s / f.wall_s.max(1e-9),
        f.client_peak_rss_mb,
        f.sim_cpu_s,
        100.0 * f.machine_busy,
        f.stolen_cpu_s
            .map_or("-".to_string(), |s| format!("{:.0}", s * 1e3)),
        if missed.is_empty() {
            "ok".to_string()
        } else {
            format!("MISSED: {}", missed.join("; "))
        }
    ));
    print_wave(f.concurrency, "first wave, preconnect", &f.first_wave);
    print_wave(
        f.concurrency,
        "first wave, no preconnect",
        &f.first_wave_no_preconnect,
    );
}

fn print_wave(concurrency: usize, label: &str, wave: &WaveFigures) {
    let new = wave.requests - wave.reused;
    let connect = wave
        .connect_p99_ms
        .map_or(String::new(), |ms| format!(", connect p99 {ms:.2} ms"));
    let failed = match wave.failed {
        0 => String::new(),
        n => format!(", {n} failed"),
    };
    print(&format!(
        "{:>6} {:>7} {:>11.2} ms {:>11.2} ms  {label}: {} reused, {new} new{connect}{failed}\n",
        concurrency, wave.requests, wave.ttft_error_p50_ms, wave.ttft_error_p99_ms, wave.reused,
    ));
}

/// The simulator as a child process.
struct SimProcess {
    child: Child,
    url: String,
}

impl SimProcess {
    fn start(
        args: &SelfcheckArgs,
        truth: &Path,
        threads: usize,
        idle_spin: Duration,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the tracebench executable")?;
        let mut child = Command::new(exe)
            .args(["sim", "--port", "0", "--max-num-seqs", "100000"])
            .arg("--threads")
            .arg(threads.to_string())
            .arg("--idle-spin")
            .arg(humantime::format_duration(idle_spin).to_string())
            .arg("--ttft-ms")
            .arg(format!("{}", args.ttft.as_secs_f64() * 1e3))
            .arg("--itl-ms")
            .arg(format!("{}", args.itl.as_secs_f64() * 1e3))
            .arg("--truth-log")
            .arg(truth)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the simulator")?;
        let stdout = child.stdout.take().context("simulator stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) else {
            let _ = child.kill();
            bail!("the simulator did not say where it listens (got {line:?})");
        };
        Ok(Self {
            url: url.to_string(),
            child,
        })
    }

    /// User + system CPU seconds the simulator has used so far.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .context("cannot read the simulator's CPU time")?;
        // Fields after the parenthesized command name: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
            bail!("unexpected /proc stat line for the simulator: {stat:?}");
        };
        Ok((user + system) / clock_ticks_per_second())
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn measure_level(
    args: &SelfcheckArgs,
    sim: &SimProcess,
    level: usize,
    truth_path: &Path,
    cores: usize,
) -> anyhow::Result<LevelFigures> {
    // A first wave from a client with no connection open: each request opens its own.
    let cold_id = format!("selfcheck-cold-c{level}");
    let cold_client = level_client(&sim.url, &cold_id)?;
    let cold = send_all(
        &cold_client,
        level,
        level_requests(args, level, 1, &cold_id),
    )
    .await;
    drop(cold_client);
    // Let the simulator close those connections before the measured rounds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The measured rounds, from the first request, after preconnecting as `run` does.
    let run_id = format!("selfcheck-c{level}");
    let client = level_client(&sim.url, &run_id)?;
    let requests = level_requests(args, level, args.rounds, &run_id);
    client.preconnect(level).await?;
    reset_peak_rss();
    let stolen_before = stolen_cpu_seconds();
    let cpu_before = cpu_seconds();
    let sim_cpu_before = sim.cpu_seconds()?;
    let wall = Instant::now();
    let records = send_all(&client, level, requests).await;
    let wall_s = wall.elapsed().as_secs_f64();
    let client_cpu_s = cpu_seconds() - cpu_before;
    let sim_cpu_s = sim.cpu_seconds()? - sim_cpu_before;
    let stolen_cpu_s = stolen_before
        .zip(stolen_cpu_seconds())
        .map(|(before, after)| after - before);
    let client_peak_rss_mb = peak_rss_mb();
    // The simulator flushes its truth log at least every 100 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let truth = read_truth(truth_path, &run_id)?;
    let cold_truth = read_truth(truth_path, &cold_id)?;
    Ok(compare_with_truth(
        level,
        &records,
        &truth,
        args.itl,
        CpuFigures {
            client_cpu_s,
            sim_cpu_s,
            wall_s,
            cores,
            stolen_cpu_s,
        },
        client_peak_rss_mb,
        wave_figures(&cold, &cold_truth),
    ))
}

/// A client of the simulator at `url` for one run of the self-check.
fn level_client(url: &str, run_id: &str) -> anyhow::Result<Client> {
    let options = ClientOptions {
        trace_header: false,
        first_byte_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(300),
        ..ClientOptions::new(url, Endpoint::Chat, "tracebench-sim", run_id)
    };
    Client::new(options, RunClock::start())
}

/// `rounds` requests per stream of a level, in send order.
fn level_requests(
    args: &SelfcheckArgs,
    level: usize,
    rounds: u64,
    run_id: &str,
) -> Vec<PreparedRequest> {
    let body = BodyOptions {
        ignore_eos: true,
        ..BodyOptions::new(Endpoint::Chat, "tracebench-sim")
    };
    (0..level as u64 * rounds)
        .map(|index| {
            let item = Item {
                prompt: Prompt::Text(format!("selfcheck request {index} of {run_id}")),
                input_tokens: None,
                input_tokens_source: crate::record::CountSource::Estimate,
                max_tokens: Some(args.tokens),
                images: Vec::new(),
                at: None,
            };
            body.prepare(index, run_id, false, &item)
        })
        .collect()
}

/// Sends `requests` through the dispatch loop, `level` at a time; their records.
async fn send_all(
    client: &Client,
    level: usize,
    requests: Vec<PreparedRequest>,
) -> Vec<RequestRecord> {
    let schedule = Schedule::Closed { concurrency: level };
    let (dispatcher, mut finished) = Dispatcher::new(client.clone(), schedule, 0, Stops::default());
    dispatcher
        .run_phase(&mut Feed::from_requests(requests), None, None)
        .await;
    drop(dispatcher);
    let mut records = Vec::new();
    while let Some(Finished { record, .. }) = finished.recv().await {
        records.push(record);
    }
    records
}

/// CPU time of both processes over one level's measured rounds.
struct CpuFigures {
    client_cpu_s: f64,
    sim_cpu_s: f64,
    wall_s: f64,
    cores: usize,
    stolen_cpu_s: Option<f64>,
}

fn compare_with_truth(
    level: usize,
    records: &[RequestRecord],
    truth: &HashMap<String, Truth>,
    itl: Duration,
    cpu: CpuFigures,
    client_peak_rss_mb: f64,
    first_wave_no_preconnect: WaveFigures,
) -> LevelFigures {
    let mut ttft_errors = Vec::new();
    let mut itl_errors = Vec::new();
    let mut merged = 0;
    for record in records.iter().filter(|r| r.ok()) {
        let Some(truth) = truth.get(&record.request_id) else {
            continue;
        };
        let Some(error) = ttft_error_ms(record, truth) else {
            continue;
        };
        ttft_errors.push(error);
        merged += compare_gaps(
            &record.itl_chunk_ms,
            &truth.chunk_write_unix_ns,
            itl.as_secs_f64() * 1e3,
            &mut itl_errors,
        );
    }
    let first_wave: Vec<RequestRecord> = records
        .iter()
        .filter(|r| r.index < level as u64)
        .cloned()
        .collect();
    let merged_chunk_share = merged as f64 / itl_errors.len().max(1) as f64;
    let ttft_errors = sorted(ttft_errors);
    let itl_errors = sorted(itl_errors);
    LevelFigures {
        concurrency: level,
        requests: records.len() as u64,
        failed: records.iter().filter(|r| !r.ok()).count() as u64,
        ttft_error_p50_ms: percentile_of_sorted(&ttft_errors, 50.0),
        ttft_error_p99_ms: percentile_of_sorted(&ttft_errors, 99.0),
        itl_error_p99_ms: percentile_of_sorted(&itl_errors, 99.0),
        merged_chunk_share,
        streams_in_flight: max_overlap(truth.values()),
        client_cpu_s: cpu.client_cpu_s,
        sim_cpu_s: cpu.sim_cpu_s,
        wall_s: cpu.wall_s,
        client_peak_rss_mb,
        machine_busy: (cpu.client_cpu_s + cpu.sim_cpu_s)
            / (cpu.wall_s * cpu.cores as f64).max(1e-9),
        stolen_cpu_s: cpu.stolen_cpu_s,
        first_wave: wave_figures(&first_wave, truth),
        first_wave_no_preconnect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(p50: f64, p99: f64) -> WaveFigures {
        WaveFigures {
            requests: 10,
            failed: 0,
            reused: 10,
            ttft_error_p50_ms: p50,
            ttft_error_p99_ms: p99,
            connect_p99_ms: None,
        }
    }

    #[test]
    fn targets_depend_on_the_level() {
        let figures = |concurrency, p50| LevelFigures {
            concurrency,
            requests: 10,
            failed: 0,
            ttft_error_p50_ms: p50,
            ttft_error_p99_ms: 4.0,
            itl_error_p99_ms: 1.0,
            merged_chunk_share: 0.0,
            streams_in_flight: concurrency,
            client_cpu_s: 1.0,
            sim_cpu_s: 1.0,
            wall_s: 2.0,
            client_peak_rss_mb: 40.0,
            machine_busy: 0.25,
            stolen_cpu_s: Some(0.0),
            first_wave: wave(0.1, 1.0),
            first_wave_no_preconnect: wave(20.0, 1000.0),
        };
        assert!(figures(200, 1.5).missed_targets().is_empty());
        assert_eq!(figures(200, 2.5).missed_targets().len(), 1);
        assert!(figures(1000, 4.0).missed_targets().is_empty());
        let mut short = figures(500, 1.0);
        short.streams_in_flight = 300;
        assert!(short.missed_targets()[0].contains("300 of 500"));
        // The first wave after preconnect has the level's targets; without it, none.
        let mut slow_start = figures(500, 1.0);
        slow_start.first_wave = wave(0.1, 39.0);
        assert_eq!(
            slow_start.missed_targets(),
            ["first-wave TTFT p99 error 39.00 ms >= 15 ms"]
        );
    }
}
