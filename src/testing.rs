//! What the tests, benchmarks, examples and the demo share: the folder of
//! real payloads beside the checkout (`../shared/fixtures`), a free loopback
//! port, and a quiet run (no dashboard, no database, no telemetry, no spans)
//! to call from code.

use crate::config::RunConfig;
use std::path::{Path, PathBuf};

/// The fixtures folder: real payloads captured from vLLM, SGLang, TGI, Jaeger,
/// Tempo and DCGM (its README is the index).
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");

/// The path of a fixture, e.g. `vllm/chat-stream.sse`.
pub fn fixture(relative: &str) -> PathBuf {
    Path::new(FIXTURES).join(relative)
}

/// A fixture's bytes; panics with the path when it cannot be read.
pub fn fixture_bytes(relative: &str) -> Vec<u8> {
    let path = fixture(relative);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixture's text; panics with the path when it cannot be read.
pub fn fixture_text(relative: &str) -> String {
    let path = fixture(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A loopback port nothing listens on right now (for a receiver the
/// simulator must be told about before it starts).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A run of `url` writing under `out` that shows and records nothing else:
/// no dashboard, no history database, no GPU or `/metrics` sampling, no
/// `traceparent` and so no span wait. Change its fields to shape the run.
pub fn quiet_run(url: &str, out: &Path) -> RunConfig {
    let defaults = RunConfig::default();
    let trace = crate::trace::TraceConfig {
        trace_header: false,
        ..defaults.trace
    };
    RunConfig {
        url: url.trim_end_matches('/').to_string(),
        out: out.to_path_buf(),
        tui: false,
        db: None,
        telemetry: crate::telemetry::TelemetryConfig::off(),
        trace,
        ..defaults
    }
}
