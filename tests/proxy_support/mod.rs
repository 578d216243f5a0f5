//! Shared by the proxy tests: a deterministic simulator exporting its spans
//! to the proxy's receiver, the proxy in front of it, and readers of what
//! the proxy wrote.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;
use tracebench::proxy::{Proxy, ProxyConfig};
use tracebench::record::RequestRecord;
use tracebench::sim::{SimArgs, SimServer};

/// The simulator's time to first token and gap between tokens.
pub const TTFT_MS: f64 = 40.0;
pub const ITL_MS: f64 = 5.0;

/// A deterministic simulator whose spans go to the proxy's receiver, and
/// the proxy in front of it (span wait `span_wait`).
pub async fn sim_and_proxy(out: &Path, span_wait: Duration) -> (SimServer, Proxy) {
    let mut config = ProxyConfig::local("http://127.0.0.1:9", out).unwrap();
    config.trace.span_wait = span_wait;
    let sim = tracebench::sim::spawn(SimArgs {
        port: 0,
        model: "tiny".into(),
        ttft_ms: Some(TTFT_MS),
        itl_ms: Some(ITL_MS),
        otlp_endpoint: Some(format!("grpc://{}", config.trace.otlp_grpc)),
        span_delay_ms: 100,
        ..SimArgs::default()
    })
    .await
    .unwrap();
    config.upstream = sim.url().parse().unwrap();
    let proxy = tracebench::proxy::start(config, "test".into())
        .await
        .unwrap();
    (sim, proxy)
}

/// A proxy of `upstream` with tracing off and these limits changed.
pub async fn proxy_of(upstream: &str, out: &Path, change: impl FnOnce(&mut ProxyConfig)) -> Proxy {
    let mut config = ProxyConfig::local(upstream, out).unwrap();
    config.trace.trace_header = false;
    change(&mut config);
    tracebench::proxy::start(config, "test".into())
        .await
        .unwrap()
}

pub fn http() -> reqwest::Client {
    tracebench::client::install_tls_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The records a stopped proxy wrote.
pub fn records(dir: &Path) -> Vec<RequestRecord> {
    tracebench::record::read_records(&dir.join("requests.jsonl")).unwrap()
}

/// The `: tracebench-metrics {...}` comment of a stream, parsed.
pub fn metrics_comment(body: &str) -> serde_json::Value {
    let line = body
        .lines()
        .find_map(|l| l.strip_prefix(": tracebench-metrics "))
        .unwrap_or_else(|| panic!("no metrics comment in\n{body}"));
    serde_json::from_str(line).unwrap()
}

/// Polls `GET /tracebench/requests/{id}` until `ready` holds (up to 10 s).
pub async fn record_when(
    proxy: &Proxy,
    id: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let url = format!("{}/tracebench/requests/{id}", proxy.url());
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        let response = http().get(&url).send().await.unwrap();
        if response.status() == 200 {
            last = response.json().await.unwrap();
            if ready(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("record {id} never got ready: {last}");
}

pub fn chat_body(stream: bool, max_tokens: u64) -> serde_json::Value {
    serde_json::json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}
