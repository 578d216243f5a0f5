//! A concurrent run through the library: 64 requests, 8 in flight, against the
//! built-in simulator, with the same dispatch loop `tracebench run` uses, then
//! the summary's TTFT percentiles.
//!
//! cargo run --example concurrent_run

use tracebench::analysis::{summarize, Slo};
use tracebench::client::{Client, ClientOptions};
use tracebench::clock::RunClock;
use tracebench::dispatch::{Dispatcher, Stops};
use tracebench::record::{CountSource, Endpoint};
use tracebench::schedule::Schedule;
use tracebench::workload::feed::Feed;
use tracebench::workload::{BodyOptions, Item, Prompt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sim = tracebench::sim::spawn(tracebench::sim::SimArgs {
        port: 0,
        ..Default::default()
    })
    .await?;
    let body = BodyOptions {
        ignore_eos: true,
        ..BodyOptions::new(Endpoint::Chat, "tracebench-sim")
    };
    let requests: Vec<_> = (0..64)
        .map(|i| {
            let item = Item {
                prompt: Prompt::Text(format!("prompt number {i} with a few words")),
                input_tokens: None,
                input_tokens_source: CountSource::Usage,
                max_tokens: Some(24),
                images: Vec::new(),
                at: None,
            };
            body.prepare(i, "example", false, &item)
        })
        .collect();
    let client = Client::new(
        ClientOptions::new(&sim.url(), Endpoint::Chat, "tracebench-sim", "example"),
        RunClock::start(),
    )?;
    let schedule = Schedule::Closed { concurrency: 8 };
    let (dispatcher, mut finished) = Dispatcher::new(client, schedule, 0, Stops::default());
    dispatcher
        .run_phase(&mut Feed::from_requests(requests), None, None)
        .await;
    drop(dispatcher);
    let mut records = Vec::new();
    while let Some(done) = finished.recv().await {
        records.push(done.record);
    }
    let summary = summarize("example", &records, &Slo::default(), false);
    let ttft = &summary.metrics["ttft_ms"];
    println!(
        "{} requests at {:.1} req/s; TTFT p50 {:.1} ms, p99 {:.1} ms",
        summary.requests.ok, summary.request_throughput, ttft.p50, ttft.p99
    );
    sim.shutdown().await
}
