//! The command line: one clap `Args` struct per subcommand. Raw flags become a
//! validated [`crate::config::RunConfig`] exactly once, in `config`.

use crate::record::Endpoint;
use crate::schedule::Arrival;
use crate::trace::TraceSource;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Benchmark OpenAI-compatible LLM servers and learn, request by request,
/// where the time goes: client latency joined with the server's own spans.
#[derive(Parser, Debug)]
#[command(name = "tracebench", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Async runtime worker threads. Default: one per core (`selfcheck`'s
    /// simulator gets half as many, in its own process).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// How long a worker thread that runs out of work keeps yielding its core
    /// before it sleeps (`0s`: sleep at once). Waking a sleeping core can take
    /// milliseconds on a virtual machine; a worker that stays awake reads each
    /// chunk before the next one comes. `selfcheck` gives its simulator the same.
    /// Default: 50us; 0s for `proxy`, which shares its cores with the client
    /// and the server it sits between (there the spin takes their turns).
    #[arg(long, global = true, value_parser = crate::units::parse_duration)]
    pub idle_spin: Option<std::time::Duration>,
}

/// `--idle-spin` of every command but `proxy`.
const IDLE_SPIN: Duration = Duration::from_micros(50);

impl Cli {
    /// The runtime's worker threads: `--threads`, or one per core.
    pub fn worker_threads(&self) -> usize {
        self.threads.map_or_else(cores, usize::from)
    }

    /// `--idle-spin`, or the command's default.
    pub fn idle_spin(&self) -> Duration {
        let default = match self.command {
            Command::Proxy(_) => Duration::ZERO,
            _ => IDLE_SPIN,
        };
        self.idle_spin.unwrap_or(default)
    }
}

/// The cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Exit codes, shown in `--help`.
pub const EXIT_CODES: &str = "Exit codes: 0 ok; 1 the run finished with more failed requests than \
--max-error-rate allows (or selfcheck missed a target); 2 bad usage, bad config or a fatal error; \
130 stopped with Ctrl-C (partial results written).";

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Benchmark a server: send streaming requests under a load, record every one.
    Run(Box<RunArgs>),
    /// Start the built-in simulator and run a short benchmark against it.
    Demo(DemoArgs),
    /// Serve the built-in vLLM-like simulator.
    Sim(Box<crate::sim::SimArgs>),
    /// Measure this machine's client error against a simulator's own write instants.
    Selfcheck(SelfcheckArgs),
    /// Run the OTLP receiver alone and write every span it gets to a file.
    Collect(CollectArgs),
    /// Re-run the span join of a finished run.
    Join(JoinArgs),
    /// Print one request of a run as markdown for a bug report.
    Show(ShowArgs),
    /// Write the HTML report of a finished run (and record it in the history database).
    Report(ReportArgs),
    /// Compare runs (run folders, `vllm bench serve` result files) or experiments; `--fail-on` gates CI.
    Compare(CompareArgs),
    /// Run an experiment file: grids, repeats, saturation stops, capacity searches, servers.
    Experiment(ExperimentArgs),
    /// Merge the shard folders of a sharded run (`run --shard I/N`) into one run folder.
    Merge(MergeArgs),
    /// Print the Kubernetes manifests of a sharded run (an Indexed Job and what it needs).
    K8s(Box<crate::shard::k8s::K8sArgs>),
    /// Measure every request some other client sends: a reverse proxy in front of one server.
    Proxy(Box<ProxyArgs>),
    /// A ready study with a verdict: batching, output-length, goodput, coldstart.
    Study(crate::study::args::StudyArgs),
}

/// `tracebench experiment`.
#[derive(Args, Debug, Clone)]
pub struct ExperimentArgs {
    /// The experiment file (YAML; see docs/experiments.md).
    pub file: PathBuf,
    /// Print the plan and every point's resolved `run` flags, and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Continue the experiment in this folder: finished points are kept, the rest run.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Folder for experiments; each gets a subfolder.
    #[arg(long, env = "TRACEBENCH_EXPERIMENTS", default_value = "experiments")]
    pub out: PathBuf,
    /// No live dashboard: a progress line on stderr instead.
    #[arg(long)]
    pub no_tui: bool,
    #[command(flatten)]
    pub history: HistoryArgs,
}

/// Where the SQLite history is kept, or that it is not.
#[derive(Args, Debug, Clone)]
pub struct HistoryArgs {
    /// The SQLite history database.
    #[arg(long, env = "TRACEBENCH_DB", default_value = "results/tracebench.db")]
    pub db: PathBuf,
    /// Do not record anything in the history database.
    #[arg(long)]
    pub no_db: bool,
}

impl HistoryArgs {
    /// The database to record in, unless `--no-db`.
    pub fn path(&self) -> Option<&Path> {
        (!self.no_db).then_some(self.db.as_path())
    }
}

/// `tracebench proxy`.
#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Address to listen on (loopback unless told otherwise).
    #[arg(
        long,
        env = "TRACEBENCH_PROXY_LISTEN",
        default_value = "127.0.0.1:9000"
    )]
    pub listen: SocketAddr,
    /// The one server every request goes to, e.g. http://127.0.0.1:8000.
    #[arg(long, env = "TRACEBENCH_UPSTREAM")]
    pub upstream: String,
    /// Folder for results; the proxy's records go to a subfolder.
    #[arg(long, env = "TRACEBENCH_OUT", default_value = "results")]
    pub out: PathBuf,
    /// Name of the records folder (default: `proxy-` and a timestamp).
    #[arg(long)]
    pub run_id: Option<String>,
    #[command(flatten)]
    pub history: HistoryArgs,
    /// Largest request body (413 beyond), e.g. 8MiB.
    #[arg(long, default_value = "8MiB", value_parser = crate::proxy::config::parse_size)]
    pub max_body: usize,
    /// Most header lines in a request (431 beyond).
    #[arg(long, default_value_t = 100)]
    pub max_headers: usize,
    /// Largest request head (request line and headers; 431 beyond), e.g. 64KiB.
    #[arg(long, default_value = "64KiB", value_parser = crate::proxy::config::parse_size)]
    pub max_header_bytes: usize,
    /// Longest silence of a client's request body or of the server's answer
    /// (408 or 504 before the answer starts; the answer is cut after).
    #[arg(long, default_value = "5m", value_parser = crate::units::parse_duration)]
    pub idle_timeout: Duration,
    /// Longest whole request, from its first byte to the answer's last.
    #[arg(long, default_value = "10m", value_parser = crate::units::parse_duration)]
    pub request_timeout: Duration,
    /// Client connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// After Ctrl-C, how long requests in flight may finish before being cut.
    #[arg(long, default_value = "10s", value_parser = crate::units::parse_duration)]
    pub grace_period: Duration,
    /// Show the live dashboard of the requests passing through.
    #[arg(long)]
    pub tui: bool,
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// `tracebench run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Base URL of the server (OpenAI-compatible API under /v1).
    #[arg(long, env = "TRACEBENCH_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Which API to call.
    #[arg(long, value_enum, default_value_t = Endpoint::Chat)]
    pub endpoint: Endpoint,
    /// Model name; defaults to the first model of GET /v1/models.
    #[arg(long, env = "TRACEBENCH_MODEL")]
    pub model: Option<String>,
    /// Bearer token; never written to any output.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Ask for complete (non-streaming) responses.
    #[arg(long)]
    pub no_stream: bool,
    /// Output token budget of every request (overrides --output-tokens).
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// Ask the server to ignore end-of-sequence so every request gets its full budget.
    #[arg(long)]
    pub ignore_eos: bool,
    #[arg(long)]
    pub temperature: Option<f64>,
    /// JSON object merged into every request body, e.g. '{"top_p":0.9}'.
    #[arg(long, value_name = "JSON")]
    pub extra_body: Option<String>,

    /// Closed loop: keep N requests in flight.
    #[arg(long, group = "load")]
    pub concurrency: Option<usize>,
    /// Open loop: R requests per second, whatever the server does.
    #[arg(long, group = "load")]
    pub rate: Option<f64>,
    /// Static batches: send B, wait for all, send the next B.
    #[arg(long, group = "load")]
    pub batch_size: Option<usize>,
    /// Open-loop arrival process.
    #[arg(long, value_enum, default_value_t = Arrival::Poisson)]
    pub arrival: Arrival,
    /// Gamma shape for --arrival gamma (< 1 burstier, > 1 smoother).
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Open loop: most requests in flight; later arrivals wait (their lag is recorded).
    #[arg(long)]
    pub max_concurrency: Option<usize>,

    /// Stop after N measured requests (default 100 unless --duration is given).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Stop scheduling after this long, e.g. 60s or 10m.
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Requests sent first and not counted.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// After the warm-up, send nothing for this long before the measured
    /// requests: the GPU and server samples of that window show the server
    /// idle (the coldstart study's idle baseline).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = crate::units::parse_duration)]
    pub idle_window: std::time::Duration,
    /// Open the connections the load keeps busy before the first request
    /// (the default), so no measured TTFT holds a TCP connect or TLS handshake.
    #[arg(long, overrides_with = "no_preconnect")]
    pub preconnect: bool,
    /// Open each connection when a request first needs one: the first wave's
    /// TTFT then holds its connection setup, as a client with a cold pool sees it.
    #[arg(long, overrides_with = "preconnect")]
    pub no_preconnect: bool,
    /// Seed for prompts, lengths and arrivals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Prompt tokens per request, MEAN or MEAN:STDDEV.
    #[arg(long, default_value = "256")]
    pub input_tokens: crate::workload::Lengths,
    /// Output tokens per request (the max_tokens asked for), MEAN or MEAN:STDDEV.
    #[arg(long, default_value = "128")]
    pub output_tokens: crate::workload::Lengths,
    /// Tokens of a prefix shared by every prompt (0: every prompt unique).
    #[arg(long, default_value_t = 0)]
    pub shared_prefix_tokens: u64,
    /// A tokenizer.json for exact prompt lengths (else the server's /tokenize, else an estimate).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// A dataset file: JSONL prompts ({"prompt": ...} or {"messages": [...]} per line,
    /// optional "max_tokens" and "images"), ShareGPT, or sessions; see --dataset-format.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    #[command(flatten)]
    pub workload: WorkloadArgs,

    /// Folder for results; each run gets a subfolder.
    #[arg(long, env = "TRACEBENCH_OUT", default_value = "results")]
    pub out: PathBuf,
    /// Name of the run's folder (default: a timestamp and a random suffix).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Give up on a request after this long.
    #[arg(long, default_value = "10m", value_parser = crate::units::parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Give up on a request that has sent no response byte after this long.
    #[arg(long, default_value = "5m", value_parser = crate::units::parse_duration)]
    pub first_byte_timeout: std::time::Duration,
    /// After Ctrl-C, how long in-flight requests may finish before being cancelled.
    #[arg(long, default_value = "10s", value_parser = crate::units::parse_duration)]
    pub grace_period: std::time::Duration,
    /// Exit 1 when the failed fraction of measured requests is above this.
    #[arg(long, default_value_t = 0.0)]
    pub max_error_rate: f64,
    /// SLOs for goodput, e.g. ttft:500ms,tpot:50ms,e2e:10s,itl:100ms,queue:200ms.
    #[arg(long, value_parser = crate::analysis::Slo::parse)]
    pub slo: Option<crate::analysis::Slo>,
    /// No live dashboard: a progress line on stderr instead.
    #[arg(long)]
    pub no_tui: bool,
    #[command(flatten)]
    pub history: HistoryArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// This process is shard I of N of one run (0-based): it sends its share
    /// of the load, requests and dataset lines into `RUN_ID.shard-I-of-N`
    /// (needs --run-id; `tracebench merge` puts the shards back together).
    #[arg(long, value_name = "I/N", env = "TRACEBENCH_SHARD")]
    pub shard: Option<crate::shard::Shard>,
    /// Run N shards of this run as child processes of this one, then merge
    /// them into one run folder.
    #[arg(long, value_name = "N", conflicts_with = "shard", value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::shard::MAX_SHARDS)))]
    pub shards: Option<u32>,
    /// Start sending at this wall-clock instant (RFC 3339, e.g.
    /// 2026-01-31T12:00:00Z), so that shards on several hosts start together.
    #[arg(long, value_name = "TIME", value_parser = crate::shard::clock::parse_start_at)]
    pub start_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Workload flags of `tracebench run`: dataset formats, sessions, trace
/// replay, images, prefix groups, and how TTFT is taken.
#[derive(Args, Debug, Clone)]
pub struct WorkloadArgs {
    /// What --dataset holds (default: told from its first entry).
    #[arg(long, value_enum)]
    pub dataset_format: Option<crate::workload::DatasetFormat>,
    /// ShareGPT: `first` sends each conversation's first exchange; `all` sends
    /// the whole conversation as a multi-turn session.
    #[arg(long, value_enum, default_value_t = crate::workload::sharegpt::Turns::First)]
    pub sharegpt_turns: crate::workload::sharegpt::Turns,
    /// ShareGPT: skip prompts (and outputs, unless --max-tokens) shorter than this.
    #[arg(long, default_value_t = 4)]
    pub sharegpt_min_tokens: u64,
    /// ShareGPT: skip prompts longer than this.
    #[arg(long, default_value_t = 1024)]
    pub sharegpt_max_prompt_tokens: u64,
    /// ShareGPT: skip conversations whose prompt plus output is longer than this.
    #[arg(long, default_value_t = 2048)]
    pub sharegpt_max_total_tokens: u64,
    /// Synthetic multi-turn sessions: turns per session, MEAN or MEAN:STDDEV.
    #[arg(long, value_name = "MEAN[:STD]")]
    pub turns: Option<crate::workload::Lengths>,
    /// Synthetic sessions: wait between an answer and the next turn, e.g. 2s or 2s:1s.
    #[arg(long, value_name = "MEAN[:STD]")]
    pub think_time: Option<crate::workload::sessions::ThinkTime>,
    /// Replay a timed trace: Mooncake JSONL (timestamp ms, input_length,
    /// output_length, hash_ids) or a timestamp,input_length,output_length CSV.
    #[arg(long, value_name = "FILE")]
    pub trace_replay: Option<PathBuf>,
    /// Trace replay: multiply the trace's time gaps by this (0.5: twice as fast).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Images per request (chat only), generated from the seed or from --image-dir.
    #[arg(long, default_value_t = 0)]
    pub images: u32,
    /// Generated images' size, WxH, or a list with weights: 512x512:3,1024x768:1.
    #[arg(long)]
    pub image_size: Option<crate::workload::images::ImageSizes>,
    /// Generated images' encoding.
    #[arg(long, value_enum)]
    pub image_format: Option<crate::workload::images::ImageFormat>,
    /// Send real image files from this folder instead of generated ones.
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Distinct shared prefixes (of --shared-prefix-tokens each); every prompt draws one.
    #[arg(long, default_value_t = 1)]
    pub prefix_groups: u64,
    /// How TTFT is taken: `stream` (first token event), or `two-pass` for
    /// endpoints that cannot stream (each prompt sent with max_tokens 1, then in full).
    #[arg(long, value_enum, default_value_t = crate::record::TtftMethod::Stream)]
    pub ttft_method: crate::record::TtftMethod,
}

/// Telemetry flags of `tracebench run`.
#[derive(Args, Debug, Clone)]
pub struct TelemetryArgs {
    /// GPU telemetry source, repeatable: `auto` (NVML when a driver is present), `nvml`, `off`,
    /// or the URL of an NVIDIA DCGM exporter (`http://host:9400/metrics`).
    #[arg(long = "gpu", value_name = "SOURCE", default_value = "auto")]
    pub gpu: Vec<String>,
    /// How often to sample each GPU.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = crate::units::parse_duration)]
    pub gpu_interval: Duration,
    /// Engine metrics: `auto` (`<base url>/metrics` when it serves Prometheus text), a URL, or `off`.
    #[arg(long, value_name = "URL", default_value = "auto")]
    pub server_metrics: String,
    /// How often to scrape the engine's metrics.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::units::parse_duration)]
    pub server_metrics_interval: Duration,
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        Self {
            gpu: vec!["auto".to_string()],
            gpu_interval: Duration::from_millis(100),
            server_metrics: "auto".to_string(),
            server_metrics_interval: Duration::from_secs(1),
        }
    }
}

/// `tracebench demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Requests to send.
    #[arg(long, default_value_t = 200)]
    pub requests: u64,
    /// Requests in flight (above the simulator's 16 batch slots, so queueing shows).
    #[arg(long, default_value_t = 24)]
    pub concurrency: usize,
    /// Folder for results; the run gets a subfolder.
    #[arg(long, env = "TRACEBENCH_OUT", default_value = "results")]
    pub out: PathBuf,
    /// No live dashboard: a progress line on stderr instead.
    #[arg(long)]
    pub no_tui: bool,
    /// The SQLite history database.
    #[arg(long, env = "TRACEBENCH_DB", default_value = "results/tracebench.db")]
    pub db: PathBuf,
}

/// `tracebench selfcheck`.
#[derive(Args, Debug, Clone)]
pub struct SelfcheckArgs {
    /// Concurrency levels to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,50,200,500,1000")]
    pub levels: Vec<usize>,
    /// Requests per stream at each level (each level sends levels × this).
    #[arg(long, default_value_t = 3)]
    pub rounds: u64,
    /// The simulator's time to first token.
    #[arg(long, default_value = "50ms", value_parser = crate::units::parse_duration)]
    pub ttft: std::time::Duration,
    /// The simulator's gap between tokens.
    #[arg(long, default_value = "10ms", value_parser = crate::units::parse_duration)]
    pub itl: std::time::Duration,
    /// Output tokens per request.
    #[arg(long, default_value_t = 64)]
    pub tokens: u64,
    /// Write the figures as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `tracebench collect`.
#[derive(Args, Debug, Clone)]
pub struct CollectArgs {
    /// Where to write the spans (OTLP JSON, one span a line).
    #[arg(long, default_value = "spans.jsonl")]
    pub out: PathBuf,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// `tracebench join`.
#[derive(Args, Debug, Clone)]
pub struct JoinArgs {
    /// A run folder (with requests.jsonl and spans.jsonl).
    pub run_dir: PathBuf,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// `tracebench show`.
#[derive(Args, Debug, Clone)]
pub struct ShowArgs {
    pub run_dir: PathBuf,
    pub request_id: String,
}

/// `tracebench report`.
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    pub run_dir: PathBuf,
    /// Also record the run in this history database.
    #[arg(long)]
    pub db: Option<PathBuf>,
    #[command(flatten)]
    pub window: WindowArgs,
}

/// `tracebench compare`.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Run folders or `vllm bench serve --save-result` JSON files, or experiment
    /// folders; the first is the baseline.
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<PathBuf>,
    /// Exit 1 when a metric moves past its limit against the baseline, e.g.
    /// 'p99_ttft_ms:+10%,output_throughput:-5%' (for experiments with repeats,
    /// moves within the repeats' noise do not count).
    #[arg(long, value_name = "LIMITS")]
    pub fail_on: Option<String>,
    #[command(flatten)]
    pub window: WindowArgs,
}

/// `tracebench merge`.
#[derive(Args, Debug, Clone)]
pub struct MergeArgs {
    /// The shard folders (`RUN_ID.shard-I-of-N`) of one run.
    #[arg(required = true, num_args = 1..)]
    pub shards: Vec<PathBuf>,
    /// The merged run folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Wait up to this long for shard folders that are missing or still
    /// running (e.g. `10m` in a merge Job), then merge what is there.
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration)]
    pub wait: Option<Duration>,
    #[command(flatten)]
    pub history: HistoryArgs,
}

/// A time window of a folder's records (a proxy's, say), by when each request was sent.
#[derive(Args, Debug, Clone, Default)]
pub struct WindowArgs {
    /// Only requests sent at or after this: RFC 3339 (`2026-01-31T12:00:00Z`)
    /// or a duration ago (`30m`).
    #[arg(long, value_parser = crate::proxy::window::parse_instant)]
    pub since: Option<u64>,
    /// Only requests sent before this (same forms as --since).
    #[arg(long, value_parser = crate::proxy::window::parse_instant)]
    pub until: Option<u64>,
}

/// `on` / `off` for a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// The tracing flags of `run`, `join` and `collect` (checked into a
/// [`crate::trace::TraceConfig`]).
#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// Where server spans come from.
    #[arg(long, value_enum, default_value = "otlp")]
    pub trace_source: TraceSource,
    /// Address of the embedded OTLP/gRPC receiver.
    #[arg(long, env = "TRACEBENCH_OTLP_GRPC", default_value = "127.0.0.1:4317")]
    pub otlp_grpc: SocketAddr,
    /// Address of the embedded OTLP/HTTP receiver (`POST /v1/traces`).
    #[arg(long, env = "TRACEBENCH_OTLP_HTTP", default_value = "127.0.0.1:4318")]
    pub otlp_http: SocketAddr,
    /// Send every received export on to this OTLP endpoint (`grpc://host:4317` or `http://host:4318`).
    #[arg(long, value_name = "URL")]
    pub otlp_forward: Option<String>,
    /// Jaeger query service, e.g. `http://localhost:16686` (with `--trace-source jaeger`).
    #[arg(long, value_name = "URL", env = "TRACEBENCH_JAEGER_URL")]
    pub jaeger_url: Option<String>,
    /// Tempo query endpoint, e.g. `http://localhost:3200` (with `--trace-source tempo`).
    #[arg(long, value_name = "URL", env = "TRACEBENCH_TEMPO_URL")]
    pub tempo_url: Option<String>,
    /// Jaeger UI base for a per-request trace link, e.g. `http://localhost:16686`.
    #[arg(long, value_name = "URL")]
    pub jaeger_ui: Option<String>,
    /// How long to wait for spans after the last response.
    #[arg(long, default_value = "15s", value_parser = crate::units::parse_duration)]
    pub span_wait: Duration,
    /// After the run, export one client span per request to this OTLP endpoint.
    #[arg(long, value_name = "URL")]
    pub export_client_spans: Option<String>,
    /// Send a W3C `traceparent` (and so ask for server spans) with every request.
    #[arg(long, value_enum, default_value = "on")]
    pub trace_header: Switch,
}
