//! A whole `tracebench run` from code: a `RunConfig` built in the program,
//! spans included, against the built-in simulator, run twice in one process
//! at two concurrencies; each writes its own run folder, as the command does.
//!
//! cargo run --example library_run

use tracebench::config::{RunConfig, StopAfter};
use tracebench::schedule::Schedule;
use tracebench::testing::free_port;
use tracebench::trace::TraceConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (grpc, http) = (free_port()?, free_port()?);
    let sim = tracebench::sim::spawn(tracebench::sim::SimArgs {
        port: 0,
        max_num_seqs: 4,
        otlp_endpoint: Some(format!("grpc://127.0.0.1:{grpc}")),
        span_delay_ms: 200,
        ..Default::default()
    })
    .await?;
    let out = std::env::temp_dir().join("tracebench-library-run");
    for concurrency in [2, 8] {
        let defaults = RunConfig::default();
        let trace = TraceConfig {
            otlp_grpc: ([127, 0, 0, 1], grpc).into(),
            otlp_http: ([127, 0, 0, 1], http).into(),
            ..defaults.trace
        };
        let config = RunConfig {
            url: sim.url(),
            run_id: Some(format!("library-c{concurrency}")),
            stop: StopAfter::Requests(40),
            schedule: Schedule::Closed { concurrency },
            ignore_eos: true,
            trace,
            out: out.clone(),
            db: None,
            tui: false,
            ..defaults
        };
        let outcome = tracebench::run::execute(config, "library_run example".into()).await?;
        let ttft = &outcome.summary.metrics["ttft_ms"];
        let queue = &outcome.summary.metrics["server.queue_ms"];
        println!(
            "concurrency {concurrency}: TTFT p50 {:.1} ms (server queue p50 {:.1} ms), {} in {}",
            ttft.p50,
            queue.p50,
            outcome.summary.requests.ok,
            outcome.run_dir.display()
        );
    }
    sim.shutdown().await
}
