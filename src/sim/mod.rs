//! `tracebench sim`: a small server that behaves like vLLM's OpenAI API and
//! engine (continuous batching, queueing, `/metrics`, OTLP spans in vLLM's,
//! SGLang's or TGI's shape) so everything can be tried and tested without a GPU.
//! A deterministic mode paces every stream exactly for accuracy self-checks.

mod api;
mod engine;
mod flavor;
mod metrics;
mod prefix;
mod prompt;
mod recorder;
mod request;
mod spans;
mod stream;
mod truth;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::serve::ListenerExt;
use rand::SeedableRng;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use flavor::Flavor;

use crate::clock::RunClock;

/// Flags of `tracebench sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Served model name; requests naming another model get a 404.
    #[arg(long, default_value = "tracebench-sim")]
    pub model: String,
    /// Context length: prompt plus output tokens.
    #[arg(long, default_value_t = 4096)]
    pub max_model_len: u32,
    /// Most sequences in the running batch; more requests wait in the queue.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: u32,
    /// KV cache size in tokens; a request reserves prompt + max_tokens.
    #[arg(long, default_value_t = 262_144)]
    pub kv_capacity_tokens: u64,
    /// Prefill speed (prompt tokens per second), chunked within engine steps.
    #[arg(long, default_value_t = 20_000.0)]
    pub prefill_tokens_per_s: f64,
    /// Base duration of one engine step, in milliseconds.
    #[arg(long, default_value_t = 8.0)]
    pub decode_step_ms: f64,
    /// Added to every step per running sequence, in milliseconds.
    #[arg(long, default_value_t = 0.08)]
    pub decode_step_per_seq_ms: f64,
    /// API-server time before a request reaches the engine queue (templating,
    /// tokenization), in milliseconds: the span's TTFT includes it, its queue
    /// time does not, like vLLM's frontend.
    #[arg(long, default_value_t = 2.0)]
    pub frontend_ms: f64,
    /// Deterministic mode: first token this long after arrival (ms), no
    /// batching effects. Defaults to --itl-ms when only that is given.
    #[arg(long)]
    pub ttft_ms: Option<f64>,
    /// Deterministic mode: one token every this many ms after the first.
    /// Defaults to --ttft-ms when only that is given.
    #[arg(long)]
    pub itl_ms: Option<f64>,
    /// Append one JSON line per finished request with its chunk write instants.
    #[arg(long)]
    pub truth_log: Option<PathBuf>,
    /// Export request spans: grpc://HOST:4317 or http://HOST:4318/v1/traces.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Batch span processor schedule delay, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub span_delay_ms: u64,
    /// Whose span shape to export.
    #[arg(long, value_enum, default_value_t = Flavor::Vllm)]
    pub flavor: Flavor,
    /// service.name of the spans [default: vllm, sglang or tgi, by flavor].
    #[arg(long)]
    pub service_name: Option<String>,
    /// Seed of the random response ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Answer `/health` with 503 for this long after start (a model loading), e.g. `5s`.
    #[arg(long, default_value = "0s", value_parser = crate::units::parse_duration)]
    pub ready_after: Duration,
    /// Cache prompt prefixes in 16-token blocks: repeated leading blocks cost
    /// no prefill and are reported as `usage.prompt_tokens_details.cached_tokens`.
    #[arg(long)]
    pub prefix_caching: bool,
    /// Chat: stream the first N output tokens as `delta.reasoning_content`,
    /// like a reasoning model.
    #[arg(long, default_value_t = 0)]
    pub reasoning_tokens: u32,
}

/// Parses no arguments, so [`SimArgs::default`] equals the flags' defaults.
#[derive(clap::Parser)]
struct DefaultFlags {
    #[command(flatten)]
    args: SimArgs,
}

impl Default for SimArgs {
    fn default() -> Self {
        use clap::Parser as _;
        DefaultFlags::try_parse_from(["sim"])
            .map(|flags| flags.args)
            .expect("every sim flag has a default")
    }
}

fn millis(value: f64, flag: &str) -> anyhow::Result<Duration> {
    if !value.is_finite() || value < 0.0 {
        bail!("{flag} must be a non-negative number of milliseconds, got {value}");
    }
    Ok(Duration::from_secs_f64(value / 1000.0))
}

/// How output tokens are timed, from validated flags.
#[derive(Debug)]
enum Timing {
    Engine {
        config: engine::EngineConfig,
        frontend: Duration,
    },
    Deterministic {
        ttft: Duration,
        itl: Duration,
    },
}

/// Checks the flags and decides how tokens are timed.
fn timing(args: &SimArgs) -> anyhow::Result<Timing> {
    if args.max_model_len == 0 || args.max_num_seqs == 0 {
        bail!("--max-model-len and --max-num-seqs must be at least 1");
    }
    if args.kv_capacity_tokens < args.max_model_len as u64 {
        bail!(
            "--kv-capacity-tokens ({}) must hold at least one full context (--max-model-len {})",
            args.kv_capacity_tokens,
            args.max_model_len
        );
    }
    if !(args.prefill_tokens_per_s.is_finite() && args.prefill_tokens_per_s > 0.0) {
        bail!("--prefill-tokens-per-s must be a positive number");
    }
    let config = engine::EngineConfig {
        max_num_seqs: args.max_num_seqs as usize,
        kv_capacity_tokens: args.kv_capacity_tokens,
        prefill_tokens_per_s: args.prefill_tokens_per_s,
        decode_step: millis(args.decode_step_ms, "--decode-step-ms")?,
        decode_step_per_seq: millis(args.decode_step_per_seq_ms, "--decode-step-per-seq-ms")?,
    };
    match (args.ttft_ms, args.itl_ms) {
        (None, None) => Ok(Timing::Engine {
            config,
            frontend: millis(args.frontend_ms, "--frontend-ms")?,
        }),
        (ttft, itl) => Ok(Timing::Deterministic {
            ttft: millis(ttft.or(itl).unwrap_or_default(), "--ttft-ms")?,
            itl: millis(itl.or(ttft).unwrap_or_default(), "--itl-ms")?,
        }),
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
    engine: Option<JoinHandle<()>>,
    recorder: JoinHandle<anyhow::Result<()>>,
}

impl SimServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight responses finish, then flushes the
    /// truth log and exports every pending span.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // An error means the server already stopped; the joins below say why.
        let _ = self.stop.send(());
        self.server
            .await
            .context("the simulator's server task panicked")?
            .context("the simulator's server failed")?;
        if let Some(engine) = self.engine {
            engine.await.context("the simulator's engine panicked")?;
        }
        self.recorder
            .await
            .context("the simulator's recorder panicked")?
    }
}

/// Connections the kernel may hold for the simulator before it accepts them
/// (capped by `net.core.somaxconn`). The runtime's default of 128 drops the
/// SYNs of a client that opens hundreds of connections at once, and each
/// dropped SYN costs that connection a one-second retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `host:port` (the first address it resolves to that binds)
/// with a [`LISTEN_BACKLOG`]-deep accept queue.
async fn listen(host: &str, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let mut last_error = None;
    for address in tokio::net::lookup_host((host, port)).await? {
        let socket = if address.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(address) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the host resolves to no address",
        )
    }))
}

/// Binds `args.host:args.port` and serves until [`SimServer::shutdown`].
pub async fn spawn(args: SimArgs) -> anyhow::Result<SimServer> {
    let timing = timing(&args)?;
    let listener = listen(&args.host, args.port)
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr().context("no local address")?;
    let clock = RunClock::start();
    let metrics = Arc::new(metrics::Metrics::new(&args.model));
    let truth = args
        .truth_log
        .as_deref()
        .map(truth::TruthLog::open)
        .transpose()?;
    let spans = match &args.otlp_endpoint {
        Some(endpoint) => Some(spans::SpanSink::start(
            &spans::SpanSettings {
                endpoint: endpoint.clone(),
                flavor: args.flavor,
                service_name: args
                    .service_name
                    .clone()
                    .unwrap_or_else(|| args.flavor.default_service_name().to_owned()),
                schedule_delay: Duration::from_millis(args.span_delay_ms),
                model: args.model.clone(),
            },
            clock,
        )?),
        None => None,
    };
    let stamp_writes = truth.is_some();
    let (recorder, recorder_task) = recorder::start(metrics.clone(), spans, truth, clock);
    let (pacing, engine_task) = match timing {
        Timing::Engine { config, frontend } => {
            let (engine, task) = engine::start(config, metrics.clone());
            (api::Pacing::Engine { engine, frontend }, Some(task))
        }
        Timing::Deterministic { ttft, itl } => (api::Pacing::Deterministic { ttft, itl }, None),
    };
    let state = Arc::new(api::AppState {
        max_model_len: args.max_model_len,
        pacing,
        response: Arc::new(stream::ResponseContext {
            model: args.model.clone(),
            metrics,
            recorder,
            clock,
            stamp_writes,
        }),
        ids: Mutex::new(rand::rngs::StdRng::seed_from_u64(args.seed)),
        ready_at: std::time::Instant::now() + args.ready_after,
        prefix_cache: args
            .prefix_caching
            .then(|| prefix::PrefixCache::new(args.kv_capacity_tokens)),
        reasoning_tokens: args.reasoning_tokens,
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let listener = listener.tap_io(|tcp| {
        // Without it small SSE chunks wait for ACKs (Nagle) and skew latencies.
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move {
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(SimServer {
        addr,
        stop,
        server,
        engine: engine_task,
        recorder: recorder_task,
    })
}

/// What `tracebench sim` runs: serve until Ctrl-C, then shut down cleanly.
pub async fn run_until_ctrl_c(args: SimArgs) -> anyhow::Result<()> {
    let server = spawn(args).await?;
    println!("tracebench sim listening on {}", server.url());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot wait for SIGTERM")?;
    let interrupted = tokio::select! {
        stop = tokio::signal::ctrl_c() => stop.context("cannot wait for Ctrl-C"),
        _ = terminate.recv() => Ok(()),
    };
    let shutdown = server.shutdown().await;
    interrupted?;
    shutdown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_flags_defaults() {
        let args = SimArgs::default();
        assert_eq!((args.host.as_str(), args.port), ("127.0.0.1", 8000));
        assert_eq!(
            (args.model.as_str(), args.max_model_len, args.max_num_seqs),
            ("tracebench-sim", 4096, 64)
        );
        assert_eq!(
            (args.kv_capacity_tokens, args.span_delay_ms, args.seed),
            (262_144, 5000, 0)
        );
        assert_eq!(
            (
                args.decode_step_ms,
                args.decode_step_per_seq_ms,
                args.prefill_tokens_per_s
            ),
            (8.0, 0.08, 20_000.0)
        );
        assert_eq!(args.flavor, Flavor::Vllm);
        assert!(args.ttft_ms.is_none() && args.itl_ms.is_none() && args.service_name.is_none());
        assert!(
            matches!(timing(&args), Ok(Timing::Engine { .. })),
            "engine mode by default"
        );
        let deterministic = SimArgs {
            itl_ms: Some(5.0),
            ..SimArgs::default()
        };
        let expected = Duration::from_millis(5);
        assert!(matches!(
            timing(&deterministic),
            Ok(Timing::Deterministic { ttft, itl }) if ttft == expected && itl == expected
        ));
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        let cases = [
            (
                SimArgs {
                    max_num_seqs: 0,
                    ..SimArgs::default()
                },
                "--max-num-seqs",
            ),
            (
                SimArgs {
                    kv_capacity_tokens: 10,
                    ..SimArgs::default()
                },
                "--kv-capacity-tokens",
            ),
            (
                SimArgs {
                    prefill_tokens_per_s: 0.0,
                    ..SimArgs::default()
                },
                "--prefill-tokens-per-s",
            ),
            (
                SimArgs {
                    decode_step_ms: f64::NAN,
                    ..SimArgs::default()
                },
                "--decode-step-ms",
            ),
            (
                SimArgs {
                    ttft_ms: Some(-1.0),
                    ..SimArgs::default()
                },
                "--ttft-ms",
            ),
        ];
        for (args, flag) in cases {
            let error = timing(&args).expect_err("rejected").to_string();
            assert!(error.contains(flag), "{error}");
        }
    }

    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_accept_queue() {
        // Nothing accepts: every connection that completes sits in the queue.
        // With the runtime's default backlog of 128, the rest would never complete.
        let listener = listen("127.0.0.1", 0).await.expect("listens");
        let address = listener.local_addr().expect("address");
        let connects = (0..300).map(|_| tokio::net::TcpStream::connect(address));
        let connected =
            tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(connects))
                .await
                .expect("every connection completes");
        assert!(connected.iter().all(Result::is_ok));
    }

    #[tokio::test]
    async fn spawn_rejects_a_bad_otlp_endpoint_and_a_busy_port() {
        let bad_endpoint = SimArgs {
            port: 0,
            otlp_endpoint: Some("ftp://x".into()),
            ..SimArgs::default()
        };
        let error = spawn(bad_endpoint).await.expect_err("rejected").to_string();
        assert!(error.contains("grpc://"), "{error}");
        let running = spawn(SimArgs {
            port: 0,
            ..SimArgs::default()
        })
        .await
        .expect("starts");
        let busy = SimArgs {
            port: running.addr().port(),
            ..SimArgs::default()
        };
        let error = spawn(busy).await.expect_err("rejected").to_string();
        assert!(error.contains("cannot listen"), "{error}");
        running.shutdown().await.expect("clean shutdown");
    }
}
