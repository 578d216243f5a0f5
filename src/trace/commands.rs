//! The trace side of `tracebench join` (join a finished run again, one record
//! at a time) and `tracebench collect` (the receiver alone).

use super::collector::{receiver_config, JoinReport, SpanCollector};
use super::config::TraceConfig;
use super::receiver::Receiver;
use crate::record::{records_in, rewrite_each_record};
use anyhow::Context;
use std::path::Path;

/// `tracebench join RUN_DIR`: joins again from `requests.jsonl` and
/// `spans.jsonl`, or from Jaeger/Tempo when that is the source, and rewrites
/// `requests.jsonl` atomically, one record at a time.
pub async fn join_run_dir(run_dir: &Path, config: &TraceConfig) -> anyhow::Result<JoinReport> {
    let requests = run_dir.join("requests.jsonl");
    let mut collector = SpanCollector::for_rejoin(config);
    match &config.backend {
        Some(url) => {
            for record in records_in(&requests)? {
                collector.observe(&record?);
            }
            collector
                .query_backend(url, config.span_wait, None, "", &mut |_| {})
                .await?;
        }
        None => collector
            .load_spans_jsonl(&run_dir.join("spans.jsonl"))
            .context(
                "nothing to join from: give --trace-source jaeger --jaeger-url URL (or tempo) to query a backend",
            )?,
    }
    rewrite_each_record(&requests, |record| collector.join(record))?;
    Ok(collector.report())
}

/// `tracebench collect --out spans.jsonl`: the receiver alone, until Ctrl-C.
pub async fn collect_until_ctrl_c(config: &TraceConfig, out: &Path) -> anyhow::Result<()> {
    // Nothing is joined: the spans go to the file only.
    let receiver = Receiver::start(receiver_config(config, out.to_path_buf()), None).await?;
    eprintln!(
        "receiving OTLP on grpc://{} and http://{}/v1/traces, writing {}; Ctrl-C stops",
        receiver.grpc_addr(),
        receiver.http_addr(),
        out.display()
    );
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    let counters = receiver.shutdown().await?;
    eprintln!(
        "stopped: {} spans accepted, {} requests refused, {} malformed, {} forward failures",
        counters.accepted_spans,
        counters.refused_requests,
        counters.malformed_requests,
        counters.forward_failures
    );
    Ok(())
}
