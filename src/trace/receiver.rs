//! The embedded OTLP trace receiver: gRPC `TraceService/Export` and HTTP
//! `POST /v1/traces` (protobuf or JSON, optionally gzip), a bounded queue to
//! one writer task that appends every span to `spans.jsonl` and the span store,
//! and an optional forwarder that passes each export on without blocking.

use super::join::SpanStore;
use super::span::{decode_json, decode_protobuf, spans_of, DecodeError, Span, SpanLine};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError};

/// Largest message accepted, compressed or not (the OTLP spec suggests up to 64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Export requests waiting for the writer before new ones are refused.
pub const QUEUE_CAPACITY: usize = 1024;
/// Export requests waiting to be forwarded before new ones are dropped.
const FORWARD_QUEUE_CAPACITY: usize = 256;
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const GRPC_SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";

/// Where and how the receiver listens.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// `--otlp-grpc`.
    pub grpc_addr: SocketAddr,
    /// `--otlp-http`.
    pub http_addr: SocketAddr,
    /// `--otlp-forward`: another OTLP endpoint that gets every export request.
    pub forward: Option<String>,
    /// The `spans.jsonl` to append to (created or truncated).
    pub spans_path: PathBuf,
    /// Cap on a request body and on its decompressed size.
    pub max_message_bytes: usize,
    /// Export requests the queue holds before answering 503 / RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
}

impl ReceiverConfig {
    /// Default limits for the given addresses and output file.
    pub fn new(grpc_addr: SocketAddr, http_addr: SocketAddr, spans_path: PathBuf) -> Self {
        Self {
            grpc_addr,
            http_addr,
            forward: None,
            spans_path,
            max_message_bytes: MAX_MESSAGE_BYTES,
            queue_capacity: QUEUE_CAPACITY,
        }
    }
}

/// What the receiver has counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReceiverCounters {
    /// Spans taken in (queued for the writer).
    pub accepted_spans: u64,
    /// Export requests refused: queue full (503) or too large (413).
    pub refused_requests: u64,
    /// Export requests that could not be read: bad protobuf, bad JSON, bad gzip,
    /// wrong id lengths, unsupported content type (400 / INVALID_ARGUMENT).
    pub malformed_requests: u64,
    /// Export requests that could not be forwarded (`--otlp-forward`).
    pub forward_failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted_spans: AtomicU64,
    refused_requests: AtomicU64,
    malformed_requests: AtomicU64,
    forward_failures: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ReceiverCounters {
        ReceiverCounters {
            accepted_spans: self.accepted_spans.load(Ordering::Relaxed),
            refused_requests: self.refused_requests.load(Ordering::Relaxed),
            malformed_requests: self.malformed_requests.load(Ordering::Relaxed),
            forward_failures: self.forward_failures.load(Ordering::Relaxed),
        }
    }
}

/// One accepted export request with its spans already checked.
struct Batch {
    request: ExportTraceServiceRequest,
    spans: Vec<Span>,
}

/// Why an export request was not taken.
#[derive(Debug)]
enum Refusal {
    Malformed(String),
    TooLarge(String),
    Full,
    Unsupported(String),
}

/// The state both servers share: decode, check, queue.
struct Ingest {
    queue: RwLock<Option<mpsc::Sender<Batch>>>,
    counters: Arc<Counters>,
    max_message_bytes: usize,
}

impl Ingest {
    fn refuse(&self, refusal: Refusal) -> Refusal {
        let counter = match refusal {
            Refusal::Malformed(_) | Refusal::Unsupported(_) => &self.counters.malformed_requests,
            Refusal::TooLarge(_) | Refusal::Full => &self.counters.refused_requests,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        refusal
    }

    /// Checks the decoded request's spans and queues it for the writer.
    fn accept(
        &self,
        decoded: Result<ExportTraceServiceRequest, DecodeError>,
    ) -> Result<(), Refusal> {
        let request = decoded.map_err(|e| self.refuse(Refusal::Malformed(e.to_string())))?;
        let spans = spans_of(&request.resource_spans)
            .map_err(|e| self.refuse(Refusal::Malformed(e.to_string())))?;
        if request.resource_spans.is_empty() {
            return Ok(());
        }
        let count = spans.len() as u64;
        let sender = self.queue.read().ok().and_then(|q| q.clone());
        let sent = sender
            .map(|s| s.try_send(Batch { request, spans }).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(self.refuse(Refusal::Full));
        }
        self.counters
            .accepted_spans
            .fetch_add(count, Ordering::Relaxed);
        Ok(())
    }
}

/// A running receiver.
pub struct Receiver {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    ingest: Arc<Ingest>,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    writer: JoinHandle<Result<(), String>>,
    forwarder: Option<JoinHandle<()>>,
}

/// Binds an address or says which flag picks another.
async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("{addr} is already in use: pick another with {flag}")
        } else {
            anyhow::anyhow!("cannot listen on {addr} ({flag}): {error}")
        }
    })
}

impl Receiver {
    /// Binds both listeners (an address in use is an error naming its flag),
    /// opens the spans file and starts the servers, the writer and the forwarder.
    pub async fn start(
        config: ReceiverConfig,
        store: Arc<Mutex<SpanStore>>,
    ) -> anyhow::Result<Self> {
        let forward_target = config
            .forward
            .as_deref()
            .map(ForwardTarget::new)
            .transpose()?;
        let grpc_listener = bind(config.grpc_addr, "--otlp-grpc").await?;
        let http_listener = bind(config.http_addr, "--otlp-http").await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let file = std::fs::File::create(&config.spans_path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", config.spans_path.display()))?;

        let counters = Arc::new(Counters::default());
        let (queue_tx, queue_rx) = mpsc::channel(config.queue_capacity.max(1));
        let (forward_tx, forwarder) = match forward_target {
            Some(target) => {
                let (tx, rx) = mpsc::channel(FORWARD_QUEUE_CAPACITY);
                let task = tokio::spawn(forward_loop(target, rx, counters.clone()));
                (Some(tx), Some(task))
            }
            None => (None, None),
        };
        let writer = {
            let counters = counters.clone();
            tokio::spawn(write_loop(file, queue_rx, store, forward_tx, counters))
        };
        let ingest = Arc::new(Ingest {
            queue: RwLock::new(Some(queue_tx)),
            counters: counters.clone(),
            max_message_bytes: config.max_message_bytes,
        });
        let (stop, stopped) = watch::channel(false);
        let servers = vec![
            tokio::spawn(serve_grpc(grpc_listener, ingest.clone(), stopped.clone())),
            tokio::spawn(serve_http(http_listener, ingest.clone(), stopped)),
        ];
        Ok(Self {
            grpc_addr,
            http_addr,
            ingest,
            counters,
            stop,
            servers,
            writer,
            forwarder,
        })
    }

    /// The gRPC address actually bound (useful with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The HTTP address actually bound.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The counters now.
    pub fn counters(&self) -> ReceiverCounters {
        self.counters.snapshot()
    }

    /// Stops listening, lets the writer write everything queued, waits for the
    /// forwarder to pass on what it holds (up to 10 s), and returns the counters.
    /// An error means `spans.jsonl` could not be written completely.
    pub async fn shutdown(self) -> anyhow::Result<ReceiverCounters> {
        let _ = self.stop.send(true);
        for server in self.servers {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if let Ok(mut queue) = self.ingest.queue.write() {
            queue.take();
        }
        let written = self.writer.await;
        if let Some(forwarder) = self.forwarder {
            let abort = forwarder.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), forwarder)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        match written {
            Ok(Ok(())) => Ok(self.counters.snapshot()),
            Ok(Err(error)) => Err(anyhow::anyhow!(error)),
            Err(error) => Err(anyhow::anyhow!("the span writer stopped: {error}")),
        }
    }
}

/// The one writer: each batch's spans go to `spans.jsonl` (flushed per batch),
/// then into the store, then to the forwarder. A write error is remembered and
/// returned at the end; the spans still reach the store.
async fn write_loop(
    file: std::fs::File,
    mut queue: mpsc::Receiver<Batch>,
    store: Arc<Mutex<SpanStore>>,
    forward: Option<mpsc::Sender<ExportTraceServiceRequest>>,
    counters: Arc<Counters>,
) -> Result<(), String> {
    let mut out = tokio::fs::File::from_std(file);
    let mut first_error: Option<String> = None;
    while let Some(batch) = queue.recv().await {
        let mut lines = Vec::new();
        for line in SpanLine::all_of(&batch.request.resource_spans) {
            // Serializing proto types to a Vec cannot fail; skip a line rather than stop.
            if serde_json::to_writer(&mut lines, &line).is_ok() {
                lines.push(b'\n');
            }
        }
        let written = match out.write_all(&lines).await {
            Ok(()) => out.flush().await,
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            first_error.get_or_insert_with(|| format!("cannot write spans.jsonl: {error}"));
        }
        if let Ok(mut store) = store.lock() {
            for span in batch.spans {
                store.insert(span);
            }
        }
        if let Some(forward) = &forward {
            if forward.try_send(batch.request).is_err() {
                counters.forward_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Where `--otlp-forward` sends export requests.
enum ForwardTarget {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http {
        client: reqwest::Client,
        url: String,
    },
}

impl ForwardTarget {
    fn new(url: &str) -> anyhow::Result<Self> {
        if let Some(rest) = url.strip_prefix("grpc://") {
            let channel = tonic::transport::Endpoint::from_shared(format!(
                "http://{}",
                rest.trim_end_matches('/')
            ))
            .map_err(|e| anyhow::anyhow!("--otlp-forward {url}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
            let client =
                TraceServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
            Ok(Self::Grpc(client))
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let client = crate::client::http_client_builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| anyhow::anyhow!("--otlp-forward {url}: {e}"))?;
            Ok(Self::Http {
                client,
                url: otlp_http_traces_url(url),
            })
        } else {
            anyhow::bail!(
                "--otlp-forward {url}: the URL must start with grpc://, http:// or https://"
            )
        }
    }

    async fn send(&mut self, request: ExportTraceServiceRequest) -> Result<(), String> {
        match self {
            Self::Grpc(client) => client
                .export(request)
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
            Self::Http { client, url } => {
                let response = client
                    .post(url.as_str())
                    .header(header::CONTENT_TYPE, "application/x-protobuf")
                    .body(request.encode_to_vec())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("{url} answered {}", response.status()))
                }
            }
        }
    }
}

/// An OTLP/HTTP base URL completed with `/v1/traces` when it has no path.
pub fn otlp_http_traces_url(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    if after_scheme.trim_end_matches('/').contains('/') {
        url.to_string()
    } else {
        format!("{}/v1/traces", url.trim_end_matches('/'))
    }
}

async fn forward_loop(
    mut target: ForwardTarget,
    mut requests: mpsc::Receiver<ExportTraceServiceRequest>,
    counters: Arc<Counters>,
) {
    let mut reported = false;
    while let Some(request) = requests.recv().await {
        if let Err(error) = target.send(request).await {
            counters.forward_failures.fetch_add(1, Ordering::Relaxed);
            if !reported {
                eprintln!(
                    "warning: --otlp-forward failed (further failures are only counted): {error}"
                );
                reported = true;
            }
        }
    }
}

async fn wait_for_stop(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

// ---------------------------------------------------------------- HTTP

/// The two OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    ingest: Arc<Ingest>,
    stopped: watch::Receiver<bool>,
) {
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(http_export))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(ingest);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(wait_for_stop(stopped))
        .await
    {
        eprintln!("warning: the OTLP/HTTP receiver stopped: {error}");
    }
}

async fn http_export(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let encoding = match content_type.split(';').next().unwrap_or("").trim() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        other => {
            let refusal = ingest.refuse(Refusal::Unsupported(format!(
                "unsupported content type `{other}`: send application/x-protobuf or application/json"
            )));
            return refusal_response(Encoding::Json, refusal);
        }
    };
    match read_export(&ingest, &headers, body, encoding).await {
        Ok(()) => {
            let body = match encoding {
                Encoding::Protobuf => ExportTraceServiceResponse::default().encode_to_vec(),
                Encoding::Json => b"{}".to_vec(),
            };
            ([(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
        }
        Err(refusal) => refusal_response(encoding, refusal),
    }
}

async fn read_export(
    ingest: &Ingest,
    headers: &HeaderMap,
    body: Body,
    encoding: Encoding,
) -> Result<(), Refusal> {
    let limit = ingest.max_message_bytes;
    let raw = axum::body::to_bytes(body, limit).await.map_err(|error| {
        let too_large = error
            .into_inner()
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some();
        ingest.refuse(if too_large {
            Refusal::TooLarge(format!("body larger than {limit} bytes"))
        } else {
            Refusal::Malformed("could not read the body".into())
        })
    })?;
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let bytes = match content_encoding.as_str() {
        "gzip" => gunzip_capped(&raw, limit).map_err(|r| ingest.refuse(r))?,
        "identity" | "" => raw,
        other => {
            return Err(ingest.refuse(Refusal::Unsupported(format!(
                "unsupported content encoding `{other}`: send gzip or none"
            ))))
        }
    };
    ingest.accept(match encoding {
        Encoding::Protobuf => decode_protobuf(&bytes),
        Encoding::Json => decode_json(&bytes),
    })
}

/// Decompresses gzip, refusing output beyond `limit` bytes (a gzip bomb stops
/// at the cap instead of filling memory).
fn gunzip_capped(compressed: &[u8], limit: usize) -> Result<Bytes, Refusal> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Refusal::Malformed(format!("bad gzip body: {e}")))?;
    if out.len() > limit {
        return Err(Refusal::TooLarge(format!(
            "body decompresses to more than {limit} bytes"
        )));
    }
    Ok(Bytes::from(out))
}

/// The `google.rpc.Status` OTLP/HTTP puts in error bodies.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn refusal_response(encoding: Encoding, refusal: Refusal) -> Response {
    let (status, code, message) = match refusal {
        Refusal::Malformed(m) => (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument, m),
        Refusal::Unsupported(m) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
            m,
        ),
        Refusal::TooLarge(m) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            tonic::Code::ResourceExhausted,
            m,
        ),
        Refusal::Full => (
            StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::Unavailable,
            "the span queue is full; retry later".to_string(),
        ),
    };
    let rpc = RpcStatus {
        code: code as i32,
        message,
    };
    let body = match encoding {
        Encoding::Protobuf => rpc.encode_to_vec(),
        Encoding::Json => serde_json::json!({"code": rpc.code, "message": rpc.message})
            .to_string()
            .into_bytes(),
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

// ---------------------------------------------------------------- gRPC

async fn serve_grpc(
    listener: tokio::net::TcpListener,
    ingest: Arc<Ingest>,
    stopped: watch::Receiver<bool>,
) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    if let Err(error) = tonic::transport::Server::builder()
        .add_service(GrpcExport { ingest })
        .serve_with_incoming_shutdown(incoming, wait_for_stop(stopped))
        .await
    {
        eprintln!("warning: the OTLP/gRPC receiver stopped: {error}");
    }
}

/// `TraceService` with the message kept as bytes until the handler, so bad
/// protobuf is answered INVALID_ARGUMENT and counted like every other bad input.
#[derive(Clone)]
struct GrpcExport {
    ingest: Arc<Ingest>,
}

impl tonic::server::NamedService for GrpcExport {
    const NAME: &'static str = GRPC_SERVICE_NAME;
}

impl<B> Service<tonic::codegen::http::Request<B>> for GrpcExport
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        if request.uri().path() != GRPC_EXPORT_PATH {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("only TraceService/Export is served").into_http())
            });
        }
        let ingest = self.ingest.clone();
        Box::pin(async move {
            let limit = ingest.max_message_bytes;
            let mut grpc = tonic::server::Grpc::new(RawExportCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit);
            Ok(grpc.unary(ExportMethod(ingest), request).await)
        })
    }
}

struct ExportMethod(Arc<Ingest>);

impl tonic::server::UnaryService<Bytes> for ExportMethod {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let ingest = self.0.clone();
        Box::pin(async move {
            match ingest.accept(decode_protobuf(request.get_ref())) {
                Ok(()) => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
                Err(Refusal::Full) => Err(tonic::Status::resource_exhausted(
                    "the span queue is full; retry later",
                )),
                Err(Refusal::TooLarge(m)) => Err(tonic::Status::resource_exhausted(m)),
                Err(Refusal::Malformed(m) | Refusal::Unsupported(m)) => {
                    Err(tonic::Status::invalid_argument(m))
                }
            }
        })
    }
}

/// Decodes a gRPC message to its raw bytes and encodes the (empty) response.
struct RawExportCodec;

struct RawDecoder;

struct ResponseEncoder;

impl Codec for RawExportCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let length = src.remaining();
        Ok(Some(src.copy_to_bytes(length)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    #[test]
    fn gzip_is_capped() {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 1 << 20]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(matches!(
            gunzip_capped(&bomb, 1000),
            Err(Refusal::TooLarge(_))
        ));
        assert_eq!(gunzip_capped(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        assert!(matches!(
            gunzip_capped(b"not gzip", 1000),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn http_forward_urls_get_the_traces_path() {
        assert_eq!(
            otlp_http_traces_url("http://h:4318"),
            "http://h:4318/v1/traces"
        );
        assert_eq!(
            otlp_http_traces_url("http://h:4318/"),
            "http://h:4318/v1/traces"
        );
        assert_eq!(
            otlp_http_traces_url("https://h/custom/path"),
            "https://h/custom/path"
        );
    }
}
