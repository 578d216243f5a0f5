//! One request with its metrics: start the built-in simulator, send a single
//! streaming chat request through the library's client, print what it measured.
//!
//! cargo run --example one_request

use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracebench::client::{Client, ClientOptions};
use tracebench::clock::RunClock;
use tracebench::record::{CountSource, Endpoint};
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
    let item = Item {
        prompt: Prompt::Text("where does the time go".into()),
        input_tokens: None,
        input_tokens_source: CountSource::Usage,
        max_tokens: Some(32),
        images: Vec::new(),
        at: None,
    };
    let request = body.prepare(0, "example", false, &item);
    let client = Client::new(
        ClientOptions::new(&sim.url(), Endpoint::Chat, "tracebench-sim", "example"),
        RunClock::start(),
    )?;
    let record = client
        .send(&request, Instant::now(), &CancellationToken::new())
        .await;
    println!(
        "request {} (traceparent trace id {:?})",
        record.request_id, record.trace_id
    );
    println!(
        "TTFT {:.2} ms, TPOT {:.2} ms, E2E {:.2} ms, {} output tokens ({:?}), {} chunks",
        record.ttft_ms.unwrap_or(f64::NAN),
        record.tpot_ms.unwrap_or(f64::NAN),
        record.e2e_ms.unwrap_or(f64::NAN),
        record.output_tokens.unwrap_or(0),
        record.output_tokens_source,
        record.chunks
    );
    sim.shutdown().await
}
