//! GPU and server telemetry, sampled beside the run on the run's clock: GPU samples
//! (`telemetry.jsonl`, from NVML or a DCGM exporter) and engine `/metrics` scrapes
//! (`server_metrics.jsonl`), summarised over the measured window and attributed to requests.

pub mod dcgm;
pub mod gpu;
pub mod nvml;
pub mod prom;
pub mod server;
mod sink;

use crate::analysis::live::Gauge;
use crate::cli::TelemetryArgs;
use crate::clock::RunClock;
use crate::record::RequestRecord;
use anyhow::{bail, Context};
use std::path::Path;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Why a GPU source or a `/metrics` endpoint gave no reading this time (the
/// driver failed, the endpoint is down or answered something else): a
/// sentence a user can act on, written as the gap's reason and into the notes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl From<String> for Unavailable {
    fn from(reason: String) -> Self {
        Self(reason)
    }
}

impl From<&str> for Unavailable {
    fn from(reason: &str) -> Self {
        Self(reason.to_string())
    }
}

pub use gpu::{GpuReading, GpuSource};
pub use sink::{LiveGauges, Notes};

/// How long `start` waits for the first GPU sample and the server probe, so that the idle
/// baseline is taken before the first request.
const FIRST_SAMPLE_WAIT: Duration = Duration::from_secs(3);

/// Checked telemetry settings of a run (from `--gpu`, `--server-metrics` and their intervals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub gpu: Vec<GpuSpec>,
    pub gpu_interval: Duration,
    pub server_metrics: ServerMetricsSpec,
    pub server_metrics_interval: Duration,
}

impl TelemetryConfig {
    /// Checks the raw flag values; a bad one fails with the flag's name.
    pub fn from_args(args: &TelemetryArgs) -> anyhow::Result<Self> {
        check_interval("--gpu-interval", args.gpu_interval)?;
        check_interval("--server-metrics-interval", args.server_metrics_interval)?;
        Ok(Self {
            gpu: parse_gpu_specs(&args.gpu)?,
            gpu_interval: args.gpu_interval,
            server_metrics: parse_server_metrics_spec(&args.server_metrics)?,
            server_metrics_interval: args.server_metrics_interval,
        })
    }

    /// No GPU sampling and no scrapes.
    pub fn off() -> Self {
        Self {
            gpu: Vec::new(),
            gpu_interval: Duration::from_millis(100),
            server_metrics: ServerMetricsSpec::Off,
            server_metrics_interval: Duration::from_secs(1),
        }
    }
}

/// One `--gpu` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSpec {
    Auto,
    Nvml,
    Dcgm(String),
}

/// Reads the `--gpu` values: `off` alone turns GPU telemetry off.
fn parse_gpu_specs(values: &[String]) -> anyhow::Result<Vec<GpuSpec>> {
    let mut specs = Vec::new();
    for value in values {
        let spec = match value.trim() {
            "off" => {
                if values.len() > 1 {
                    bail!("--gpu off cannot be combined with other --gpu values");
                }
                return Ok(Vec::new());
            }
            "auto" => GpuSpec::Auto,
            "nvml" => GpuSpec::Nvml,
            url => GpuSpec::Dcgm(check_http_url(url).with_context(|| format!("--gpu {value}"))?),
        };
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    }
    // `nvml` already is what `auto` would pick; sampling NVML twice would duplicate every GPU.
    if specs.contains(&GpuSpec::Nvml) {
        specs.retain(|spec| *spec != GpuSpec::Auto);
    }
    Ok(specs)
}

/// The `--server-metrics` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMetricsSpec {
    Off,
    Auto,
    Url(String),
}

fn parse_server_metrics_spec(value: &str) -> anyhow::Result<ServerMetricsSpec> {
    Ok(match value.trim() {
        "off" => ServerMetricsSpec::Off,
        "auto" => ServerMetricsSpec::Auto,
        url => ServerMetricsSpec::Url(
            check_http_url(url).with_context(|| format!("--server-metrics {value}"))?,
        ),
    })
}

/// Accepts `http://` and `https://` URLs with a host.
fn check_http_url(text: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(text).map_err(|error| {
        anyhow::anyhow!("`{text}` is neither auto, nvml, off nor a URL ({error})")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("`{text}` is not an http(s) URL");
    }
    Ok(url.to_string())
}

fn check_interval(flag: &str, interval: Duration) -> anyhow::Result<()> {
    if interval < Duration::from_millis(1) {
        bail!("{flag} must be at least 1ms (got {interval:?})");
    }
    Ok(())
}

/// The run's clock read through tokio's timer, so tests that pause time see consistent
/// instants (outside a paused test it is the same as `RunClock::now_ns`).
pub(crate) fn now_ns(clock: &RunClock) -> u64 {
    clock.ns_at(tokio::time::Instant::now().into_std())
}

/// The HTTP client for scrapes: short timeouts, no proxy (loopback and cluster addresses).
pub(crate) fn scrape_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    crate::client::http_client_builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build()
        .context("cannot build the HTTP client for metrics scrapes")
}

/// Running samplers. Created by [`start`], ended by [`Telemetry::finish`].
pub struct Telemetry {
    stop: watch::Sender<bool>,
    gpu_samplers: Vec<JoinHandle<gpu::GpuSamplerOutput>>,
    /// A GPU source was sampled or failed with a gap line: the summary says what came of it.
    gpu_enabled: bool,
    /// Gap lines written by `start` for sources that could not be opened.
    start_gaps: Vec<gpu::GpuGap>,
    server_sampler: Option<JoinHandle<server::ServerSamplerOutput>>,
    live: LiveGauges,
    notes: Notes,
    gpu_interval: Duration,
}

/// Starts the samplers: opens `telemetry.jsonl`
/// and `server_metrics.jsonl` in `run_dir`, and waits (briefly) for the first GPU sample so
/// the idle baseline precedes the load.
pub async fn start(
    config: &TelemetryConfig,
    base_url: &str,
    run_dir: &Path,
    clock: RunClock,
) -> anyhow::Result<Telemetry> {
    let (gpu_specs, server_spec) = (&config.gpu, config.server_metrics.clone());

    let notes = Notes::default();
    let live = LiveGauges::default();
    let (stop, stop_rx) = watch::channel(false);
    let gpu_sink = sink::JsonlSink::create(&run_dir.join("telemetry.jsonl"), notes.clone())?;
    let server_sink =
        sink::JsonlSink::create(&run_dir.join("server_metrics.jsonl"), notes.clone())?;

    let mut gpu_samplers = Vec::new();
    let mut first_samples = Vec::new();
    let mut start_gaps = Vec::new();
    let context = sink::SamplerContext {
        interval: config.gpu_interval,
        clock,
        sink: gpu_sink,
        live: live.clone(),
        stop: stop_rx.clone(),
        notes: notes.clone(),
    };
    for spec in gpu_specs {
        let (first_tx, first_rx) = oneshot::channel();
        let handle = match spec {
            GpuSpec::Auto | GpuSpec::Nvml => match nvml::NvmlSource::open() {
                Ok(source) => {
                    tokio::spawn(gpu::run_sampler(source, context.clone(), Some(first_tx)))
                }
                Err(reason) => {
                    notes.push(format!(
                        "GPU: NVML not available ({reason}); no GPU samples"
                    ));
                    if *spec == GpuSpec::Nvml {
                        start_gaps.push(gpu::write_gap(&context, "nvml", &reason.0));
                    }
                    continue;
                }
            },
            GpuSpec::Dcgm(url) => {
                let source =
                    dcgm::DcgmSource::new(url, scrape_client(dcgm::SCRAPE_TIMEOUT)?, notes.clone());
                tokio::spawn(gpu::run_sampler(source, context.clone(), Some(first_tx)))
            }
        };
        gpu_samplers.push(handle);
        first_samples.push(first_rx);
    }

    let server_sampler = match server_spec {
        ServerMetricsSpec::Off => None,
        ServerMetricsSpec::Auto | ServerMetricsSpec::Url(_) => {
            let url = match &server_spec {
                ServerMetricsSpec::Url(url) => url.clone(),
                _ => format!("{}/metrics", base_url.trim_end_matches('/')),
            };
            let client = scrape_client(server::SCRAPE_TIMEOUT)?;
            let scraper = server::Scraper::new(url.clone(), client);
            let first_t_ns = now_ns(&clock);
            let first = scraper.scrape().await;
            match (&server_spec, first) {
                (ServerMetricsSpec::Auto, Err(reason)) => {
                    notes.push(format!("server metrics: {url} not used ({reason})"));
                    None
                }
                (_, first) => {
                    let mut recorder = server::ScrapeRecorder::new(
                        &url,
                        sink::SamplerContext {
                            interval: config.server_metrics_interval,
                            clock,
                            sink: server_sink,
                            live: live.clone(),
                            stop: stop_rx.clone(),
                            notes: notes.clone(),
                        },
                    );
                    recorder.record(first_t_ns, first);
                    Some(tokio::spawn(server::run_sampler(scraper, recorder)))
                }
            }
        }
    };

    for first in first_samples {
        let _ = tokio::time::timeout(FIRST_SAMPLE_WAIT, first).await;
    }
    Ok(Telemetry {
        stop,
        gpu_enabled: !gpu_samplers.is_empty() || !start_gaps.is_empty(),
        start_gaps,
        gpu_samplers,
        server_sampler,
        live,
        notes,
        gpu_interval: config.gpu_interval,
    })
}

impl Telemetry {
    /// The latest GPU memory/utilisation and server running/waiting/KV values, with recent history.
    pub fn gauges(&self) -> Vec<Gauge> {
        self.live.snapshot()
    }

    /// True when GPUs are sampled (requests get a GPU attribution).
    pub fn samples_gpu(&self) -> bool {
        !self.gpu_samplers.is_empty()
    }

    /// What the user should know about telemetry (sources missing, lines skipped, write errors).
    pub fn notes(&self) -> Vec<String> {
        self.notes.all()
    }

    /// Stops sampling (each sampler takes one last sample), flushes the files and summarises
    /// the measured window `window_ns` (run-relative ns).
    pub async fn finish(
        self,
        window_ns: (u64, u64),
        output_tokens: u64,
    ) -> anyhow::Result<TelemetryReport> {
        let _ = self.stop.send(true);
        let mut gpu_output = gpu::GpuSamplerOutput {
            tracks: Vec::new(),
            gaps: self.start_gaps,
        };
        for handle in self.gpu_samplers {
            match handle.await {
                Ok(output) => gpu_output.merge(output),
                Err(error) => self
                    .notes
                    .push(format!("GPU: a sampler stopped abnormally ({error})")),
            }
        }
        let server_output = match self.server_sampler {
            Some(handle) => match handle.await {
                Ok(output) => Some(output),
                Err(error) => {
                    self.notes.push(format!(
                        "server metrics: the sampler stopped abnormally ({error})"
                    ));
                    None
                }
            },
            None => None,
        };
        let gpu_summary = self
            .gpu_enabled
            .then(|| gpu::summarize(&gpu_output, window_ns, output_tokens, self.gpu_interval));
        let server_summary = server_output
            .as_ref()
            .map(|output| server::summarize(output, window_ns));
        Ok(TelemetryReport {
            gpu: gpu_summary,
            server_metrics: server_summary,
            notes: self.notes.all(),
            gpu_samples: gpu_output,
        })
    }
}

/// What telemetry adds to the run's results.
#[derive(Debug, Clone)]
pub struct TelemetryReport {
    /// `summary.json` `gpu`: per GPU idle/peak memory, utilisation, energy; `None` when off.
    pub gpu: Option<serde_json::Value>,
    /// `summary.json` `server_metrics`: gauges, counter deltas and the server's own latency
    /// percentiles over the window; `None` when not scraped.
    pub server_metrics: Option<serde_json::Value>,
    /// Notes for `run.json`.
    pub notes: Vec<String>,
    gpu_samples: gpu::GpuSamplerOutput,
}

impl TelemetryReport {
    /// Sets `record.gpu`: memory while the request ran alone, or why not (see [`gpu::attribute`]).
    pub fn attribute(&self, record: &mut RequestRecord) {
        gpu::attribute(&self.gpu_samples, record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_values_resolve_and_bad_ones_are_errors() {
        let specs = parse_gpu_specs(&[
            "auto".into(),
            "http://127.0.0.1:9400/metrics".into(),
            "auto".into(),
        ])
        .unwrap();
        assert_eq!(
            specs,
            vec![
                GpuSpec::Auto,
                GpuSpec::Dcgm("http://127.0.0.1:9400/metrics".into())
            ]
        );
        assert!(parse_gpu_specs(&["off".into()]).unwrap().is_empty());
        assert_eq!(
            parse_gpu_specs(&["auto".into(), "nvml".into()]).unwrap(),
            vec![GpuSpec::Nvml]
        );
        assert!(parse_gpu_specs(&["off".into(), "nvml".into()]).is_err());
        let error = parse_gpu_specs(&["nvidia".into()]).unwrap_err();
        assert!(
            format!("{error:#}").contains("neither auto, nvml, off nor a URL"),
            "{error:#}"
        );
        assert!(parse_gpu_specs(&["ftp://host/metrics".into()]).is_err());
    }

    #[test]
    fn server_metrics_values_resolve() {
        assert_eq!(
            parse_server_metrics_spec("off").unwrap(),
            ServerMetricsSpec::Off
        );
        assert_eq!(
            parse_server_metrics_spec("auto").unwrap(),
            ServerMetricsSpec::Auto
        );
        assert_eq!(
            parse_server_metrics_spec("http://127.0.0.1:8000/metrics").unwrap(),
            ServerMetricsSpec::Url("http://127.0.0.1:8000/metrics".into())
        );
        assert!(parse_server_metrics_spec("metrics").is_err());
    }
}
