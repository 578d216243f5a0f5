//! One request against an OpenAI-compatible server: send it with its
//! `traceparent` and `X-Request-Id`, stream the response through our own SSE
//! framer, stamp monotonic instants as bytes arrive, and turn whatever happened
//! (success, HTTP error, reset, stall, Ctrl-C) into a [`RequestRecord`].
//! Servers are spoken to by our own HTTP/1.1 exchange (`http1`), over plain
//! TCP for `http://` and TLS for `https://`, so both take their instants at
//! the same points; reqwest serves the side requests (discovery, tokenize).

pub mod chunk;
mod connection;
pub mod discover;
mod framing;
pub(crate) mod http1;
mod preconnect;
mod progress;
pub mod sse;
pub mod traceparent;

pub use preconnect::Preconnected;

use crate::clock::RunClock;
use crate::record::{
    ConnectionInfo, CountSource, Endpoint, ErrorKind, ImagesInfo, Instants, RequestError,
    RequestRecord, Timeline, TtftMethod, REQUEST_SCHEMA,
};
use crate::shard::Shard;
use bytes::Bytes;
use chunk::error_message;
use connection::TlsTarget;
use http1::{ConnectionStory, Http1Error, Http1Pool, Http1Response};
use progress::BodyReader;
pub(crate) use progress::{finish_stream, finish_whole, Progress};
use sse::SseFramer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use traceparent::{hex, TraceParent};

/// A request ready to send: its body was built before the clock started.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub index: u64,
    pub request_id: String,
    pub warmup: bool,
    pub body: Bytes,
    pub max_tokens: Option<u64>,
    pub input_tokens: Option<u64>,
    pub input_tokens_source: Option<CountSource>,
    pub meta: RequestMeta,
}

/// What a request carries beyond its body: for its record, its timing and
/// how it is sent.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// Sent as `X-Session-Id` (so routers can keep a session on one replica).
    pub session_id: Option<Arc<str>>,
    pub turn: Option<u32>,
    pub images: Option<ImagesInfo>,
    /// Trace replay: when, after the trace's first request, this one is meant to go.
    pub at: Option<Duration>,
    /// `--ttft-method two-pass`: the body of the first pass (`max_tokens: 1`).
    pub first_pass: Option<Bytes>,
    /// Keep the answer's text (a session's next turn sends it back).
    pub keep_reply: bool,
}

/// How every request of a run is sent.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub base_url: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// Extra headers (`-H`), the API key's `Authorization` included.
    pub headers: reqwest::header::HeaderMap,
    /// Send `traceparent` (W3C) on every request.
    pub trace_header: bool,
    pub first_byte_timeout: Duration,
    pub request_timeout: Duration,
    pub run_id: String,
    /// The shard this client sends for: its records say so, its trace ids begin with it.
    pub shard: Option<Shard>,
}

impl ClientOptions {
    /// Streaming requests with `traceparent`, no extra headers, the default
    /// timeouts of `tracebench run` (first byte 5 min, whole request 10 min).
    pub fn new(base_url: &str, endpoint: Endpoint, model: &str, run_id: &str) -> Self {
        Self {
            base_url: base_url.to_string(),
            endpoint,
            model: model.to_string(),
            stream: true,
            headers: Default::default(),
            trace_header: true,
            first_byte_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(600),
            run_id: run_id.to_string(),
            shard: None,
        }
    }
}

/// Sends requests; cheap to clone (shares the connection pool).
#[derive(Clone)]
pub struct Client {
    pool: Arc<Http1Pool>,
    /// The path (and query) every request is posted to.
    path: String,
    options: Arc<ClientOptions>,
    clock: RunClock,
}

/// Largest error body excerpt kept in a record.
const BODY_EXCERPT_BYTES: usize = 1024;

/// Makes rustls (with ring) the process's TLS provider; reqwest clients need
/// one to build, even for plain HTTP. A provider already installed is kept.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The `User-Agent` of every request tracebench sends.
const USER_AGENT: &str = concat!("tracebench/", env!("CARGO_PKG_VERSION"));

/// A reqwest builder with the TLS provider installed and tracebench's user
/// agent; every HTTP client of tracebench starts here and adds its timeouts.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder().user_agent(USER_AGENT)
}

/// The reqwest client of a run's side requests (discovery, `/tokenize`): no
/// proxy surprises, Nagle off, no timeout of its own.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(http_client_builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .build()?)
}

impl Client {
    pub fn new(options: ClientOptions, clock: RunClock) -> anyhow::Result<Self> {
        let url = format!(
            "{}{}",
            options.base_url.trim_end_matches('/'),
            options.endpoint.path()
        );
        // `-H` may replace the user agent or the content type.
        let fixed = [
            ("user-agent", USER_AGENT.as_bytes()),
            ("content-type", b"application/json".as_slice()),
        ]
        .into_iter()
        .filter(|(name, _)| !options.headers.contains_key(*name));
        let headers = options
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()));
        let (pool, path) = http1_pool(&url, fixed.chain(headers))?;
        Ok(Self {
            pool: Arc::new(pool),
            path,
            options: Arc::new(options),
            clock,
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Sends one request and returns its record; never fails: errors are data.
    pub async fn send(
        &self,
        request: &PreparedRequest,
        intended: Instant,
        cancel: &CancellationToken,
    ) -> RequestRecord {
        let trace = self
            .options
            .trace_header
            .then(|| TraceParent::random(&mut rand::rng()))
            .map(|t| match self.options.shard {
                Some(shard) => t.with_prefix(shard.trace_prefix()),
                None => t,
            });
        let Some(first_pass) = &request.meta.first_pass else {
            let (progress, error) = self.exchange(request, &request.body, trace, cancel).await;
            return self.build_record(request, intended, trace, progress, error);
        };
        // Two passes: the first (max_tokens 1, no traceparent) times the first token.
        let (first, error) = self.exchange(request, first_pass, None, cancel).await;
        if error.is_some() {
            let mut record = self.build_record(request, intended, None, first, error);
            record.ttft_method = TtftMethod::TwoPass;
            return record;
        }
        let (progress, error) = self.exchange(request, &request.body, trace, cancel).await;
        let mut record = self.build_record(request, intended, trace, progress, error);
        record.ttft_method = TtftMethod::TwoPass;
        let first_e2e = first.end.map(|end| (end - first.sent).as_secs_f64() * 1e3);
        record.ttft_ms = first_e2e;
        record.ttfo_ms = first_e2e;
        record.tpot_ms = match (record.e2e_ms, first_e2e, record.output_tokens) {
            (Some(full), Some(first), Some(n)) if n > 1 => Some((full - first) / (n - 1) as f64),
            _ => None,
        };
        record
    }

    /// One HTTP exchange of `body`: what was seen of it, and its error if it failed.
    async fn exchange(
        &self,
        request: &PreparedRequest,
        body: &Bytes,
        trace: Option<TraceParent>,
        cancel: &CancellationToken,
    ) -> (Progress, Option<RequestError>) {
        let mut progress = Progress::new(request.max_tokens, request.meta.keep_reply);
        // A token of its own: polling the run's shared token on every chunk would
        // make all in-flight requests contend for one lock.
        let cancel = cancel.child_token();
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(RequestError {
                kind: ErrorKind::Cancelled,
                message: "the run was stopped while this request was in flight".into(),
                status: None,
                body_excerpt: None,
            }),
            result = tokio::time::timeout(
                self.options.request_timeout,
                self.drive(request, body, trace, &mut progress),
            ) => result.unwrap_or_else(|_| Err(RequestError {
                kind: ErrorKind::Timeout,
                message: format!(
                    "no complete response within the request timeout ({})",
                    humantime::format_duration(self.options.request_timeout)
                ),
                status: None,
                body_excerpt: None,
            })),
        };
        if outcome.is_err() && progress.end.is_none() {
            progress.end = Some(Instant::now());
        }
        (progress, outcome.err())
    }

    /// Sends and reads the response, filling `progress` as it goes. `sent` is
    /// taken here, before the request takes a connection from the pool or
    /// opens one: a new connection's setup is inside its TTFT.
    async fn drive(
        &self,
        request: &PreparedRequest,
        body: &Bytes,
        trace: Option<TraceParent>,
        progress: &mut Progress,
    ) -> Result<(), RequestError> {
        let first_byte_deadline = tokio::time::Instant::now() + self.options.first_byte_timeout;
        progress.sent = Instant::now();
        progress.sent_unix_ns = crate::units::unix_now_ns();
        let post = self.post(request, body, trace, &mut progress.connection);
        let mut response = tokio::time::timeout_at(first_byte_deadline, post)
            .await
            .map_err(|_| self.first_byte_timeout())??;
        progress.headers = Some(response.arrived());
        let status = response.status;
        progress.status = Some(status);
        if !(200..300).contains(&status) {
            return Err(http_status_error(&mut response).await);
        }
        let is_json = response
            .content_type
            .as_deref()
            .is_some_and(|v| v.starts_with("application/json"));
        if self.options.stream && is_json {
            let excerpt = read_excerpt(&mut response).await;
            return Err(RequestError {
                kind: ErrorKind::InvalidResponse,
                message: "asked for a stream but the server answered with JSON".into(),
                status: Some(status),
                body_excerpt: Some(excerpt),
            });
        }
        self.read_body(&mut response, first_byte_deadline, progress)
            .await
    }

    /// Reads the body of a 2xx answer into `progress`.
    async fn read_body(
        &self,
        response: &mut Http1Response,
        first_byte_deadline: tokio::time::Instant,
        progress: &mut Progress,
    ) -> Result<(), RequestError> {
        let mut reader = BodyReader {
            framer: SseFramer::default(),
            whole: Vec::new(),
        };
        loop {
            let next = if progress.first_byte.is_none() {
                tokio::time::timeout_at(first_byte_deadline, response.chunk())
                    .await
                    .map_err(|_| self.first_byte_timeout())?
            } else {
                response.chunk().await
            };
            let (bytes, arrived) = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    return Err(stream_error(format!(
                        "the connection broke mid-response: {e}"
                    )))
                }
            };
            progress.first_byte.get_or_insert(arrived);
            if self.options.stream {
                reader.feed_stream(bytes, arrived, progress)?;
            } else {
                reader.whole.extend_from_slice(bytes);
            }
        }
        let now = Instant::now();
        progress.end.get_or_insert(now);
        if self.options.stream {
            reader.finish_stream(progress)
        } else {
            finish_whole(&reader.whole, now, progress)
        }
    }

    /// Sends the request; returns once the response head is in, with `story`
    /// saying how the request got its connection.
    async fn post(
        &self,
        request: &PreparedRequest,
        body: &Bytes,
        trace: Option<TraceParent>,
        story: &mut ConnectionStory,
    ) -> Result<Http1Response, RequestError> {
        let traceparent = trace.map(|t| t.header_value());
        let mut headers = vec![("x-request-id", request.request_id.as_bytes())];
        if let Some(value) = &traceparent {
            headers.push(("traceparent", value.as_bytes()));
        }
        if let Some(session) = &request.meta.session_id {
            headers.push(("x-session-id", session.as_bytes()));
        }
        self.pool
            .post(&self.path, &headers, body, story)
            .await
            .map_err(|e| match e {
                Http1Error::Send(message) => RequestError {
                    kind: ErrorKind::Connect,
                    message: format!("could not send the request: {message}"),
                    status: None,
                    body_excerpt: None,
                },
                Http1Error::Protocol(message) => RequestError {
                    kind: ErrorKind::InvalidResponse,
                    message,
                    status: None,
                    body_excerpt: None,
                },
            })
    }

    fn first_byte_timeout(&self) -> RequestError {
        RequestError {
            kind: ErrorKind::FirstByteTimeout,
            message: format!(
                "no response byte within the first-byte timeout ({})",
                humantime::format_duration(self.options.first_byte_timeout)
            ),
            status: None,
            body_excerpt: None,
        }
    }

    fn build_record(
        &self,
        request: &PreparedRequest,
        intended: Instant,
        trace: Option<TraceParent>,
        progress: Progress,
        error: Option<RequestError>,
    ) -> RequestRecord {
        let origin = Origin {
            run_id: &self.options.run_id,
            endpoint: self.options.endpoint,
            model: &self.options.model,
            stream: self.options.stream,
            clock: &self.clock,
            shard: self.options.shard.map(|s| s.index),
        };
        build_record(&origin, request, intended, trace, progress, error)
    }
}

/// The HTTP/1.1 pool of the server at `url` (`http://` or `https://`),
/// with `headers` on every request, and the URL's path with its query.
pub(crate) fn http1_pool<'a>(
    url: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> anyhow::Result<(Http1Pool, String)> {
    let parsed = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("bad URL {url}: {e}"))?;
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        anyhow::bail!("the URL {url} names no server");
    };
    let tls = match parsed.scheme() {
        "http" => None,
        "https" => Some(TlsTarget::new(host)?),
        _ => anyhow::bail!("the URL {url} is not an http:// or https:// server address"),
    };
    let path = match parsed.query() {
        Some(query) => format!("{}?{query}", parsed.path()),
        None => parsed.path().to_string(),
    };
    Ok((Http1Pool::new(host, port, tls, headers), path))
}

/// What a record takes from whoever sent its request (a run's client, the proxy).
pub(crate) struct Origin<'a> {
    pub run_id: &'a str,
    pub endpoint: Endpoint,
    pub model: &'a str,
    pub stream: bool,
    pub clock: &'a RunClock,
    /// The shard (`--shard I/N`) of a run's client.
    pub shard: Option<u32>,
}

/// The record of one request from what was seen of its response.
pub(crate) fn build_record(
    origin: &Origin<'_>,
    request: &PreparedRequest,
    intended: Instant,
    trace: Option<TraceParent>,
    progress: Progress,
    error: Option<RequestError>,
) -> RequestRecord {
    let ok = error.is_none();
    let (output_tokens, output_source) = match progress.usage.completion_tokens {
        Some(n) => (Some(n), Some(CountSource::Usage)),
        None if origin.stream && progress.token_events > 0 => {
            (Some(progress.token_events), Some(CountSource::Events))
        }
        None => (None, None),
    };
    let (input_tokens, input_source) = match progress.usage.prompt_tokens {
        Some(n) => (Some(n), Some(CountSource::Usage)),
        None => (request.input_tokens, request.input_tokens_source),
    };
    let connection = connection_info(&progress.connection);
    let timeline = timeline(origin.clock, intended, &progress, output_tokens, ok);
    let derived = timeline.derive();
    let reasoning_tokens = progress.reasoning_tokens(output_tokens);
    let ttfo_ms = progress
        .first_answer
        .map(|at| (at - progress.sent).as_secs_f64() * 1e3);
    let server_missing_reason = if trace.is_none() {
        Some("tracing_off".to_string())
    } else {
        Some("pending".to_string())
    };
    RequestRecord {
        schema: REQUEST_SCHEMA.to_string(),
        run_id: origin.run_id.to_string(),
        request_id: request.request_id.clone(),
        index: request.index,
        warmup: request.warmup,
        endpoint: origin.endpoint,
        model: origin.model.to_string(),
        stream: origin.stream,
        trace_id: trace.map(|t| t.trace_id),
        span_id: trace.map(|t| hex(&t.span_id)),
        max_tokens: request.max_tokens,
        input_tokens,
        input_tokens_source: input_source,
        output_tokens,
        output_tokens_source: output_source,
        status: progress.status,
        response_id: progress.response_id,
        finish_reason: progress.finish_reason,
        error,
        connection,
        sent_unix_ns: progress.sent_unix_ns,
        instants_ns: timeline.instants,
        ttft_ms: derived.ttft_ms,
        e2e_ms: derived.e2e_ms,
        e2e_end_ms: derived.e2e_end_ms,
        tpot_ms: derived.tpot_ms,
        schedule_lag_ms: derived.schedule_lag_ms,
        chunks: progress.token_events,
        itl_chunk_ms: derived.itl_chunk_ms,
        itl_token_ms: derived.itl_token_ms,
        session_id: request.meta.session_id.as_deref().map(str::to_string),
        turn: request.meta.turn,
        ttfo_ms,
        reasoning_tokens,
        answer_tokens: reasoning_tokens.and_then(|r| output_tokens?.checked_sub(r)),
        cached_tokens: progress.usage.cached_tokens(),
        multi_token_chunks: progress
            .tokens_per_chunk
            .as_ref()
            .map(|counts| counts.iter().filter(|n| **n > 1).count() as u64),
        images: request.meta.images,
        ttft_method: match origin.stream {
            true => TtftMethod::Stream,
            false => TtftMethod::Whole,
        },
        reply: progress.reply,
        server: None,
        server_missing_reason,
        decomposition: None,
        trace_url: None,
        gpu: None,
        shard: origin.shard,
        source: None,
    }
}

/// The request's instants and chunk arrivals on the run's clock.
fn timeline(
    clock: &RunClock,
    intended: Instant,
    progress: &Progress,
    output_tokens: Option<u64>,
    ok: bool,
) -> Timeline {
    let ns = |i: Option<Instant>| i.map(|i| clock.ns_at(i));
    Timeline {
        instants: Instants {
            intended: clock.ns_at(intended),
            sent: clock.ns_at(progress.sent),
            written: ns(progress.connection.written),
            headers: ns(progress.headers),
            first_byte: ns(progress.first_byte),
            first_token: ns(progress.first_token),
            last_token: ns(progress.last_token),
            end: ns(progress.end),
        },
        chunk_arrivals_ns: progress
            .chunk_arrivals
            .iter()
            .map(|&i| clock.ns_at(i))
            .collect(),
        tokens_per_chunk: progress.tokens_per_chunk.clone(),
        output_tokens,
        ok,
    }
}

/// The record's view of how a request got its connection; `None` when it never had one.
fn connection_info(story: &ConnectionStory) -> Option<ConnectionInfo> {
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    story.has_connection().then(|| ConnectionInfo {
        reused: story.reused,
        connect_ms: ms(story.connect),
        tls_ms: ms(story.tls),
    })
}

pub(crate) fn stream_error(message: String) -> RequestError {
    RequestError {
        kind: ErrorKind::Stream,
        message,
        status: None,
        body_excerpt: None,
    }
}

/// A non-2xx answer: its status, the server's message and the body's start.
async fn http_status_error(response: &mut Http1Response) -> RequestError {
    let status = response.status;
    let body = read_excerpt(response).await;
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .map(|v| error_message(&v))
        .unwrap_or_else(|| {
            reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error")
                .to_string()
        });
    RequestError {
        kind: ErrorKind::HttpStatus,
        message: format!("HTTP {status}: {message}"),
        status: Some(status),
        body_excerpt: Some(body),
    }
}

/// Reads at most [`BODY_EXCERPT_BYTES`] of a body, giving up after 5 s.
async fn read_excerpt(response: &mut Http1Response) -> String {
    let mut body = Vec::new();
    let read = async {
        while let Ok(Some((bytes, _))) = response.chunk().await {
            body.extend_from_slice(bytes);
            if body.len() >= BODY_EXCERPT_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    excerpt(&body)
}

fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(BODY_EXCERPT_BYTES)];
    String::from_utf8_lossy(cut).into_owned()
}

/// An error and its causes on one line (reqwest hides the useful part in sources).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
