//! The flags of `tracebench study batching|output-length|goodput|coldstart`.

use clap::{Args, Subcommand};
use std::path::PathBuf;

/// `tracebench study`.
#[derive(Args, Debug, Clone)]
pub struct StudyArgs {
    #[command(subcommand)]
    pub study: Study,
}

/// The studies.
#[derive(Subcommand, Debug, Clone)]
pub enum Study {
    /// Sequential vs static batches vs continuous batching on the same prompts.
    Batching(BatchingArgs),
    /// TPOT, decode time and the KV cache as exact output lengths grow.
    OutputLength(OutputLengthArgs),
    /// Throughput and goodput under SLOs at each load: where goodput peaks.
    Goodput(GoodputArgs),
    /// Time fresh server starts; the break-even idle time and the idle-shutdown policies.
    Coldstart(ColdstartArgs),
}

/// Flags every study takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Base URL of the server (OpenAI-compatible API under /v1).
    #[arg(long, env = "TRACEBENCH_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Model name; defaults to the first model of GET /v1/models.
    #[arg(long, env = "TRACEBENCH_MODEL")]
    pub model: Option<String>,
    /// Start the server with this command (placeholders `{port}`, `{otlp_grpc}`,
    /// `{otlp_http}`, `{tracebench}`); without it the server at --url is used as it is.
    #[arg(long, value_name = "COMMAND")]
    pub cmd: Option<String>,
    /// How long a started server may take to answer /health.
    #[arg(long, default_value = "10m")]
    pub ready_timeout: String,
    /// Prompt tokens per request.
    #[arg(long, default_value_t = 256)]
    pub input_tokens: u64,
    /// Requests sent first at every point and not counted (a fresh server's
    /// first requests are slow).
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Seed for prompts and arrivals (every arm and load uses the same).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the embedded OTLP receiver listens for the server's spans (gRPC).
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub otlp_grpc: String,
    /// Where the embedded OTLP receiver listens for the server's spans (HTTP).
    #[arg(long, default_value = "127.0.0.1:4318")]
    pub otlp_http: String,
    /// How long each point waits for the server's spans after its last request.
    #[arg(long, default_value = "5s")]
    pub span_wait: String,
    /// GPU telemetry of every point, repeatable, as `tracebench run --gpu`:
    /// `auto` (the default: NVML when a driver is present), `nvml`, `off`, or
    /// a DCGM exporter's URL.
    #[arg(long = "gpu", value_name = "SOURCE")]
    pub gpu: Vec<String>,
    /// Folder for experiments; the study gets a subfolder.
    #[arg(long, env = "TRACEBENCH_EXPERIMENTS", default_value = "experiments")]
    pub out: PathBuf,
    #[command(flatten)]
    pub history: crate::cli::HistoryArgs,
    /// No live dashboard: a progress line on stderr instead.
    #[arg(long)]
    pub no_tui: bool,
    /// Print the study's experiment plan and every point's `run` flags, and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Continue the study in this folder (after Ctrl-C, a crash, a kill), with
    /// the same flags it started with: finished points are kept, the rest run.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
}

/// `tracebench study batching`.
#[derive(Args, Debug, Clone)]
pub struct BatchingArgs {
    #[command(flatten)]
    pub common: Common,
    /// Requests per arm (the same prompts in every arm).
    #[arg(long, default_value_t = 100)]
    pub requests: u64,
    /// B: the static batch size and the continuous arm's requests in flight.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Output tokens per request, MEAN or MEAN:STDDEV (each request gets
    /// exactly its budget: `ignore_eos`). Varied lengths are what make a
    /// static batch wait for its slowest member.
    #[arg(long, default_value = "128:64")]
    pub output_tokens: String,
}

/// `tracebench study output-length`.
#[derive(Args, Debug, Clone)]
pub struct OutputLengthArgs {
    #[command(flatten)]
    pub common: Common,
    /// The exact output lengths, comma-separated.
    #[arg(long, default_value = "128,256,512,1024", value_delimiter = ',')]
    pub output_tokens: Vec<u64>,
    /// Requests in flight at each length.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Requests per length.
    #[arg(long, default_value_t = 10)]
    pub requests: u64,
    /// TPOT counts as flat when it moves by less than this fraction over the lengths.
    #[arg(long, default_value_t = 0.10)]
    pub tolerance: f64,
}

/// `tracebench study goodput`.
#[derive(Args, Debug, Clone)]
pub struct GoodputArgs {
    #[command(flatten)]
    pub common: Common,
    /// The SLOs a request must meet to count, e.g. ttft:2s,tpot:50ms,queue:500ms.
    #[arg(long, value_parser = super::goodput::slo_spec)]
    pub slo: String,
    /// Open-loop loads (requests per second), comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "concurrency")]
    pub rate: Vec<f64>,
    /// Closed-loop loads (requests in flight), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Requests per load.
    #[arg(long, default_value_t = 100)]
    pub requests: u64,
    /// Output tokens per request (exact: `ignore_eos`).
    #[arg(long, default_value_t = 128)]
    pub output_tokens: u64,
}

/// `tracebench study coldstart`.
#[derive(Args, Debug, Clone)]
pub struct ColdstartArgs {
    #[command(flatten)]
    pub common: Common,
    /// Fresh starts of the server (each followed by a short load).
    #[arg(long, default_value_t = 5)]
    pub repeats: u32,
    /// Price of the server per hour, for the policy's costs.
    #[arg(long)]
    pub price_per_hour: Option<f64>,
    /// A cache folder removed before each cold start (repeatable); with
    /// it, warm starts (caches kept) run too and are told apart.
    #[arg(long = "cache-dir", value_name = "DIR")]
    pub cache_dirs: Vec<PathBuf>,
    /// Idle gaps to price the policies on: a run folder (its requests) or an
    /// arrival trace (JSONL with `timestamp` in ms, or one number of seconds a line).
    #[arg(long, value_name = "PATH")]
    pub idle_trace: Option<PathBuf>,
    /// Requests of the short load after each start.
    #[arg(long, default_value_t = 5)]
    pub requests: u64,
    /// Output tokens per request of that load.
    #[arg(long, default_value_t = 32)]
    pub output_tokens: u64,
    /// After each start's first request, nothing in flight this long before
    /// the load: the GPU samples of that window are the idle baseline.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::units::parse_duration)]
    pub idle_window: std::time::Duration,
}
