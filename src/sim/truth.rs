//! The truth log: one JSON line per finished request with the wall-clock
//! instants at which the simulator handed each token-bearing chunk to the
//! connection. `tracebench selfcheck` compares client arrival times with these.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use super::request::FinishedRequest;
use crate::clock::RunClock;

/// One line of the truth log.
#[derive(Debug, Serialize)]
struct TruthLine<'a> {
    request_id: Option<&'a str>,
    arrival_unix_ns: u64,
    chunk_write_unix_ns: &'a [u64],
    first_token_unix_ns: u64,
}

/// A buffered, append-only truth log owned by one task.
#[derive(Debug)]
pub(crate) struct TruthLog {
    writer: BufWriter<File>,
}

impl TruthLog {
    /// Opens (creating or appending to) the log file.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open truth log {}", path.display()))?;
        Ok(Self {
            writer: BufWriter::with_capacity(256 * 1024, file),
        })
    }

    /// Buffers one request's line.
    pub fn append(&mut self, request: &FinishedRequest, clock: &RunClock) -> anyhow::Result<()> {
        let unix_ns =
            |instant: tokio::time::Instant| clock.unix_ns_of(clock.ns_at(instant.into_std()));
        let line = TruthLine {
            request_id: request.info.client_request_id.as_deref(),
            arrival_unix_ns: unix_ns(request.info.arrival),
            chunk_write_unix_ns: &request.chunk_writes_unix_ns,
            first_token_unix_ns: unix_ns(request.first_token()),
        };
        serde_json::to_writer(&mut self.writer, &line).context("cannot write truth log")?;
        self.writer
            .write_all(b"\n")
            .context("cannot write truth log")
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.writer.flush().context("cannot flush truth log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::request::tests::finished;

    #[test]
    fn writes_one_line_per_request_with_its_instants() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("truth.jsonl");
        let clock = RunClock::start();
        let mut log = TruthLog::open(&path).expect("open");
        let mut request = finished(5, &[20, 30]);
        request.chunk_writes_unix_ns = vec![100, 200];
        log.append(&request, &clock).expect("append");
        request.info.client_request_id = None;
        log.append(&request, &clock).expect("append");
        log.flush().expect("flush");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["request_id"], "abc");
        assert!(lines[1]["request_id"].is_null());
        assert_eq!(
            lines[0]["chunk_write_unix_ns"],
            serde_json::json!([100, 200])
        );
        let arrival = lines[0]["arrival_unix_ns"].as_u64().expect("number");
        let first = lines[0]["first_token_unix_ns"].as_u64().expect("number");
        assert_eq!(first - arrival, 20_000_000);
    }
}
