//! The per-request record (`tracebench.request/1`) and its on-disk log.
//!
//! One [`RequestRecord`] is written to `requests.jsonl` the moment its request
//! completes (flushed, so a killed run keeps it); the join later fills in the
//! server's view. `schemas/request.schema.json` is the contract for this shape.

use crate::client::traceparent::TraceId;
use crate::jsonl::{JsonLines, JsonlError};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Schema name written into every record.
pub const REQUEST_SCHEMA: &str = "tracebench.request/1";

/// Which API a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions`
    Completions,
}

impl Endpoint {
    /// The URL path of this endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }
}

/// The inference engines whose spans and metrics tracebench reads by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    Vllm,
    Sglang,
    Tgi,
}

impl Engine {
    /// The lower-case name used in files (`vllm`, `sglang`, `tgi`).
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm",
            Engine::Sglang => "sglang",
            Engine::Tgi => "tgi",
        }
    }
}

/// Where a token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountSource {
    /// The server's `usage` object.
    Usage,
    /// Counted token-bearing stream events (one event may hold several tokens).
    Events,
    /// A local tokenizer (`--tokenizer`).
    Tokenizer,
    /// The server's `POST /tokenize`.
    ServerTokenize,
    /// The workload's approximation (no tokenizer available).
    Estimate,
}

/// Why a request failed. `Copy` so it can be counted cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Could not connect or send the request.
    Connect,
    /// No response byte within the first-byte timeout.
    FirstByteTimeout,
    /// The whole request took longer than the request timeout.
    Timeout,
    /// The server answered with a non-2xx status.
    HttpStatus,
    /// The stream broke: reset, truncated, malformed SSE, an `error` event, an oversized line.
    Stream,
    /// The body was not what the API promises (not SSE, not JSON, invalid UTF-8).
    InvalidResponse,
    /// The run was stopped (Ctrl-C) while the request was in flight.
    Cancelled,
}

impl ErrorKind {
    /// Every kind, in a stable order (for tables).
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Connect,
        ErrorKind::FirstByteTimeout,
        ErrorKind::Timeout,
        ErrorKind::HttpStatus,
        ErrorKind::Stream,
        ErrorKind::InvalidResponse,
        ErrorKind::Cancelled,
    ];

    /// The snake_case name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::FirstByteTimeout => "first_byte_timeout",
            ErrorKind::Timeout => "timeout",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::Stream => "stream",
            ErrorKind::InvalidResponse => "invalid_response",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

/// A failed request's error: what kind, what was said, and the HTTP status if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default)]
    pub status: Option<u16>,
    /// The first bytes of an error body (at most 1 KiB), for HTTP status errors.
    #[serde(default)]
    pub body_excerpt: Option<String>,
}

/// Client instants in nanoseconds since the run's start (monotonic clock).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Instants {
    pub intended: u64,
    /// Before the request took a connection (and before a new one's connect).
    pub sent: u64,
    /// The request's last byte handed to the kernel (`None` when it never was).
    pub written: Option<u64>,
    pub headers: Option<u64>,
    pub first_byte: Option<u64>,
    pub first_token: Option<u64>,
    pub last_token: Option<u64>,
    pub end: Option<u64>,
}

/// The server's view of one request, mapped from its span(s) onto common fields.
/// A field the engine does not report is `None`, never zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerView {
    /// `vllm`, `sglang` or `tgi`.
    pub engine: String,
    pub span_name: String,
    #[serde(default)]
    pub service_name: Option<String>,
    pub span_id: String,
    pub queue_ms: Option<f64>,
    pub prefill_ms: Option<f64>,
    pub decode_ms: Option<f64>,
    pub inference_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub request_id: Option<String>,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// Every attribute of the request's span, as JSON values.
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// How a request got its connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// An idle kept-alive connection carried the request.
    pub reused: bool,
    /// A new connection's TCP connect; `None` when reused.
    pub connect_ms: Option<f64>,
    /// A new `https://` connection's TLS handshake, after the connect; `None`
    /// when reused or over `http://`.
    pub tls_ms: Option<f64>,
}

impl ConnectionInfo {
    /// Connection setup inside the request's TTFT: connect plus TLS (0 when reused).
    pub fn setup_ms(&self) -> f64 {
        self.connect_ms.unwrap_or(0.0) + self.tls_ms.unwrap_or(0.0)
    }
}

/// The TTFT decomposition: `connect + network + frontend + queue + prefill = ttft`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Decomposition {
    /// Connection setup ([`ConnectionInfo::setup_ms`]); `None` for records
    /// that do not say how they got their connection.
    pub connect_ms: Option<f64>,
    pub network_ms: Option<f64>,
    pub frontend_ms: Option<f64>,
    pub queue_ms: Option<f64>,
    pub prefill_ms: Option<f64>,
    pub arrival_delay_ms: Option<f64>,
    pub stream_overhead_ms: Option<f64>,
}

/// GPU memory attributed to one request, or why it could not be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GpuAttribution {
    /// The request ran alone on the GPU(s): peak and peak-over-idle memory while it ran.
    Alone {
        peak_memory_mib: f64,
        memory_over_idle_mib: f64,
    },
    /// Another request overlapped it in time, or no sample fell inside it: a reason string
    /// (`"overlapped"`, `"no_samples"`).
    Unattributed(String),
}

/// A request's images, as its record tells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagesInfo {
    pub count: u32,
    /// Width x height summed over the images; `None` when one is a URL of unknown size.
    pub pixels: Option<u64>,
    /// Encoded bytes summed over the images; `None` when one is a URL.
    pub bytes: Option<u64>,
}

/// How a record's TTFT was taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TtftMethod {
    /// The first token-bearing event of a stream.
    #[default]
    Stream,
    /// A non-streamed answer: TTFT is its E2E.
    #[value(skip)]
    Whole,
    /// The E2E of a `max_tokens: 1` pass of the same prompt, sent first.
    TwoPass,
}

/// One request: what the client saw, and (after the join) what the server did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub schema: String,
    pub run_id: String,
    /// Unique in the run; also sent as `X-Request-Id`.
    pub request_id: String,
    /// Position in the workload (0-based, warm-up requests first).
    pub index: u64,
    pub warmup: bool,
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// W3C trace id sent in `traceparent` (32 lower-case hex), when tracing headers are on.
    pub trace_id: Option<TraceId>,
    /// The client span id sent as the parent in `traceparent` (16 hex).
    pub span_id: Option<String>,
    pub max_tokens: Option<u64>,
    pub input_tokens: Option<u64>,
    pub input_tokens_source: Option<CountSource>,
    pub output_tokens: Option<u64>,
    pub output_tokens_source: Option<CountSource>,
    pub status: Option<u16>,
    pub response_id: Option<String>,
    pub finish_reason: Option<String>,
    pub error: Option<RequestError>,
    /// How the request got its connection; `None` when it never had one.
    pub connection: Option<ConnectionInfo>,
    /// Wall clock at `sent`, ns since the Unix epoch.
    pub sent_unix_ns: u64,
    pub instants_ns: Instants,
    pub ttft_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
    pub e2e_end_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub schedule_lag_ms: f64,
    /// Token-bearing events received.
    pub chunks: u64,
    pub itl_chunk_ms: Vec<f64>,
    /// Per-token gaps, only when tokens per chunk were known.
    pub itl_token_ms: Option<Vec<f64>>,
    // Workloads (sessions, reasoning, prefix cache, images); `default` so
    // records written before these fields still read.
    /// The session this request is a turn of (also sent as `X-Session-Id`).
    #[serde(default)]
    pub session_id: Option<String>,
    /// 0-based turn within its session.
    #[serde(default)]
    pub turn: Option<u32>,
    /// Time to the first answer token (reasoning does not count).
    #[serde(default)]
    pub ttfo_ms: Option<f64>,
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
    #[serde(default)]
    pub answer_tokens: Option<u64>,
    /// Prompt tokens served from the server's prefix cache.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
    /// Chunks that carried more than one token, when every chunk's count was known.
    #[serde(default)]
    pub multi_token_chunks: Option<u64>,
    #[serde(default)]
    pub images: Option<ImagesInfo>,
    #[serde(default)]
    pub ttft_method: TtftMethod,
    /// The answer's text, kept only for a session's next turn; never written.
    #[serde(skip)]
    pub reply: Option<String>,
    pub server: Option<ServerView>,
    /// Why `server` is null (`pending` until the join has run).
    pub server_missing_reason: Option<String>,
    pub decomposition: Option<Decomposition>,
    pub trace_url: Option<String>,
    pub gpu: Option<GpuAttribution>,
    /// The shard (`--shard I/N`) that sent it; absent for a run of one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    /// What measured the request: absent for `tracebench run`, `proxy` for
    /// `tracebench proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RecordSource>,
}

/// What measured a request (the record's optional `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordSource {
    /// `tracebench run` (also what a record without `source` means).
    Run,
    /// `tracebench proxy`: a request some other client sent through the proxy.
    Proxy,
}

impl RequestRecord {
    /// True when the request finished without error.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// What the client saw of one request, on the run's clock: the material
/// every derived metric of its record is computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    pub instants: Instants,
    /// Arrival of every token-bearing chunk, ns since the run's start.
    pub chunk_arrivals_ns: Vec<u64>,
    /// Tokens each token-bearing chunk carried, when every chunk's count is known.
    pub tokens_per_chunk: Option<Vec<u64>>,
    pub output_tokens: Option<u64>,
    /// The request finished without error.
    pub ok: bool,
}

/// A request's derived metrics, as `docs/metrics.md` defines them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Derived {
    pub ttft_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
    pub e2e_end_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub schedule_lag_ms: f64,
    pub itl_chunk_ms: Vec<f64>,
    pub itl_token_ms: Option<Vec<f64>>,
}

/// Milliseconds from `from_ns` to `to_ns` (0 when `to_ns` is earlier).
fn ms_between(from_ns: u64, to_ns: u64) -> f64 {
    Duration::from_nanos(to_ns.saturating_sub(from_ns)).as_secs_f64() * 1e3
}

impl Timeline {
    /// TTFT, E2E, TPOT, the ITL lists and the schedule lag of this request.
    /// Latencies that need a whole answer (E2E, TPOT) are only given when it
    /// finished without error.
    pub fn derive(&self) -> Derived {
        let i = &self.instants;
        let since_sent = |at: Option<u64>| at.map(|t| ms_between(i.sent, t));
        let tpot_ms = match (i.first_token, i.last_token, self.output_tokens) {
            (Some(first), Some(last), Some(n)) if n > 1 && self.ok => {
                Some(ms_between(first, last) / (n - 1) as f64)
            }
            _ => None,
        };
        let itl_chunk_ms: Vec<f64> = self
            .chunk_arrivals_ns
            .windows(2)
            .map(|w| ms_between(w[0], w[1]))
            .collect();
        let itl_token_ms = self.tokens_per_chunk.as_ref().map(|counts| {
            itl_chunk_ms
                .iter()
                .zip(counts.iter().skip(1))
                .flat_map(|(gap, tokens)| {
                    let tokens = (*tokens).max(1);
                    std::iter::repeat_n(gap / tokens as f64, tokens as usize)
                })
                .collect()
        });
        Derived {
            ttft_ms: since_sent(i.first_token),
            e2e_ms: since_sent(i.last_token.filter(|_| self.ok)),
            e2e_end_ms: since_sent(i.end.filter(|_| self.ok)),
            tpot_ms,
            schedule_lag_ms: ms_between(i.intended, i.sent),
            itl_chunk_ms,
            itl_token_ms,
        }
    }
}

/// Append-only JSONL log of records: each line written and flushed at once.
pub struct RecordLog {
    file: File,
    path: PathBuf,
}

impl RecordLog {
    /// Creates (or truncates) the log at `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one record as a line and hands it to the OS before returning.
    pub fn append(&mut self, record: &RequestRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.append_line(&line)
    }

    /// Appends a record already written as a JSON line (its end included).
    pub fn append_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.file.write_all(line)?;
        self.file.flush()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every record of a `requests.jsonl` into memory (small runs, tests).
pub fn read_records(path: &Path) -> anyhow::Result<Vec<RequestRecord>> {
    Ok(records_in(path)?.collect::<Result<_, _>>()?)
}

/// The records of a `requests.jsonl`, one line at a time; a bad line is an
/// error naming the file and line.
pub fn records_in(path: &Path) -> Result<JsonLines<RequestRecord>, JsonlError> {
    JsonLines::open(path)
}

/// Rewrites a records file one record at a time: each is read, changed by
/// `change`, and written to the new version (see [`RecordWriter`]). Holds one
/// record at a time; returns how many there were.
pub fn rewrite_each_record(
    path: &Path,
    mut change: impl FnMut(&mut RequestRecord),
) -> anyhow::Result<u64> {
    use anyhow::Context;
    let mut out = RecordWriter::replacing(path)
        .with_context(|| format!("cannot write beside {}", path.display()))?;
    let mut count = 0;
    for record in records_in(path)? {
        let mut record = record?;
        change(&mut record);
        out.write(&record)?;
        count += 1;
    }
    out.commit()
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(count)
}

/// Rewrites a records file atomically (temp file + rename), e.g. after the join.
pub fn rewrite_records(path: &Path, records: &[RequestRecord]) -> std::io::Result<()> {
    let mut out = RecordWriter::replacing(path)?;
    for record in records {
        out.write(record)?;
    }
    out.commit()
}

/// Writes a new version of a records file beside it; [`RecordWriter::commit`]
/// puts it in place (until then readers see the old one). Dropped without a
/// commit, it removes the unfinished version.
pub struct RecordWriter {
    out: std::io::BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl RecordWriter {
    pub fn replacing(path: &Path) -> std::io::Result<Self> {
        let tmp = path.with_extension("jsonl.tmp");
        Ok(Self {
            out: std::io::BufWriter::new(File::create(&tmp)?),
            tmp,
            path: path.to_path_buf(),
            committed: false,
        })
    }

    pub fn write(&mut self, record: &RequestRecord) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, record).map_err(std::io::Error::other)?;
        self.out.write_all(b"\n")
    }

    pub fn commit(mut self) -> std::io::Result<()> {
        self.out.flush()?;
        std::fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_line(request_id: &str, trace_id: &str) -> String {
        serde_json::json!({
            "schema": REQUEST_SCHEMA, "run_id": "r", "request_id": request_id, "index": 0,
            "warmup": false, "endpoint": "chat", "model": "m", "stream": true,
            "trace_id": trace_id, "span_id": "0123456789abcdef", "max_tokens": 4,
            "input_tokens": null, "input_tokens_source": null, "output_tokens": null,
            "output_tokens_source": null, "status": 200, "response_id": null,
            "finish_reason": null, "error": null, "sent_unix_ns": 0,
            "instants_ns": {"intended": 0, "sent": 0, "headers": null, "first_byte": null,
                            "first_token": null, "last_token": null, "end": null},
            "ttft_ms": null, "e2e_ms": null, "e2e_end_ms": null, "tpot_ms": null,
            "schedule_lag_ms": 0.0, "chunks": 0, "itl_chunk_ms": [], "itl_token_ms": null,
            "server": null, "server_missing_reason": "pending", "decomposition": null,
            "trace_url": null, "gpu": null
        })
        .to_string()
    }

    #[test]
    fn records_are_rewritten_one_at_a_time_and_bad_lines_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.jsonl");
        let trace = "00112233445566778899aabbccddeeff";
        let text = format!(
            "{}\n\n{}\n",
            record_line("a", trace),
            record_line("b", trace)
        );
        std::fs::write(&path, &text).unwrap();
        let count = rewrite_each_record(&path, |r| r.server_missing_reason = None).unwrap();
        assert_eq!(count, 2);
        let rewritten = std::fs::read_to_string(&path).unwrap();
        assert_eq!(rewritten.lines().count(), 2, "the blank line is dropped");
        assert!(rewritten.contains(&format!(r#""trace_id":"{trace}""#)));
        let back = read_records(&path).unwrap();
        assert!(back.iter().all(|r| r.server_missing_reason.is_none()));
        assert!(!dir.path().join("requests.jsonl.tmp").exists());

        let bad = record_line("c", "not-a-trace-id");
        std::fs::write(&path, format!("{}\n{bad}\n", record_line("a", trace))).unwrap();
        let error = format!("{:#}", read_records(&path).unwrap_err());
        assert!(
            error.contains("requests.jsonl:2: unreadable line"),
            "{error}"
        );
        assert!(error.contains("not a trace id"), "{error}");
        let before = std::fs::read_to_string(&path).unwrap();
        assert!(rewrite_each_record(&path, |_| {}).is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            before,
            "a failed rewrite leaves the file as it was"
        );
        assert!(!dir.path().join("requests.jsonl.tmp").exists());
    }

    const MS: u64 = 1_000_000;

    /// Sent at 10 ms, three token chunks at 60, 70 and 90 ms, ended at 91 ms.
    fn timeline(ok: bool) -> Timeline {
        Timeline {
            instants: Instants {
                intended: 8 * MS,
                sent: 10 * MS,
                written: Some(11 * MS),
                headers: Some(20 * MS),
                first_byte: Some(20 * MS),
                first_token: Some(60 * MS),
                last_token: Some(90 * MS),
                end: Some(91 * MS),
            },
            chunk_arrivals_ns: vec![60 * MS, 70 * MS, 90 * MS],
            tokens_per_chunk: Some(vec![1, 1, 2]),
            output_tokens: Some(4),
            ok,
        }
    }

    #[test]
    fn metrics_come_from_the_timeline() {
        let d = timeline(true).derive();
        assert_eq!(d.ttft_ms, Some(50.0));
        assert_eq!(d.e2e_ms, Some(80.0));
        assert_eq!(d.e2e_end_ms, Some(81.0));
        assert_eq!(d.tpot_ms, Some(10.0));
        assert_eq!(d.schedule_lag_ms, 2.0);
        assert_eq!(d.itl_chunk_ms, [10.0, 20.0]);
        assert_eq!(d.itl_token_ms, Some(vec![10.0, 10.0, 10.0]));
        let unknown_counts = Timeline {
            tokens_per_chunk: None,
            ..timeline(true)
        };
        assert_eq!(unknown_counts.derive().itl_token_ms, None);
    }

    #[test]
    fn a_failed_request_keeps_ttft_and_gaps_but_no_whole_answer_latencies() {
        let d = timeline(false).derive();
        assert_eq!(d.ttft_ms, Some(50.0));
        assert_eq!((d.e2e_ms, d.e2e_end_ms, d.tpot_ms), (None, None, None));
        assert_eq!(d.itl_chunk_ms, [10.0, 20.0]);
    }

    /// A record with a joined span whose own TTFT is 40 ms, over `connection`.
    fn joined(connection: Option<ConnectionInfo>) -> RequestRecord {
        let mut record: RequestRecord = serde_json::from_value(serde_json::json!({
            "schema": REQUEST_SCHEMA, "run_id": "r", "request_id": "r-1", "index": 0,
            "warmup": false, "endpoint": "chat", "model": "m", "stream": true,
            "trace_id": null, "span_id": null, "max_tokens": 4, "input_tokens": null,
            "input_tokens_source": null, "output_tokens": 4, "output_tokens_source": "usage",
            "status": 200, "response_id": null, "finish_reason": "length", "error": null,
            "sent_unix_ns": 0, "instants_ns": {"intended": 0, "sent": 0},
            "ttft_ms": 50.0, "e2e_ms": 80.0, "e2e_end_ms": 81.0, "tpot_ms": 10.0,
            "schedule_lag_ms": 0.0, "chunks": 4, "itl_chunk_ms": [], "itl_token_ms": null,
            "server": null, "server_missing_reason": null, "decomposition": null,
            "trace_url": null, "gpu": null
        }))
        .expect("a record without the connection fields still reads");
        record.connection = connection;
        record.server = Some(ServerView {
            ttft_ms: Some(40.0),
            queue_ms: Some(25.0),
            prefill_ms: Some(10.0),
            ..ServerView::default()
        });
        record
    }

    #[test]
    fn a_new_connections_setup_is_its_own_ttft_phase() {
        let new = ConnectionInfo {
            reused: false,
            connect_ms: Some(3.0),
            tls_ms: Some(4.0),
        };
        assert_eq!(new.setup_ms(), 7.0);
        let d = crate::analysis::decompose(&joined(Some(new))).expect("joined");
        assert_eq!((d.connect_ms, d.network_ms), (Some(7.0), Some(3.0)));
        let parts = [
            d.connect_ms,
            d.network_ms,
            d.frontend_ms,
            d.queue_ms,
            d.prefill_ms,
        ];
        assert_eq!(parts.iter().map(|p| p.unwrap()).sum::<f64>(), 50.0);
        let reused = ConnectionInfo {
            reused: true,
            ..ConnectionInfo::default()
        };
        let d = crate::analysis::decompose(&joined(Some(reused))).expect("joined");
        assert_eq!((d.connect_ms, d.network_ms), (Some(0.0), Some(10.0)));
        // Records from before connections were recorded: network holds any setup.
        let d = crate::analysis::decompose(&joined(None)).expect("joined");
        assert_eq!((d.connect_ms, d.network_ms), (None, Some(10.0)));
    }
}
