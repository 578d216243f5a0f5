//! The embedded OTLP trace receiver: gRPC `TraceService/Export` ([`grpc`]) and
//! HTTP `POST /v1/traces` ([`http`]), a bounded queue to one writer task that
//! appends every span to `spans.jsonl` and the span store, and an optional
//! forwarder that passes each export on without blocking.

mod grpc;
mod http;

use super::config::OtlpEndpoint;
use super::span::{spans_of, DecodeError, Span, SpanLine};
use super::store::{CompactSpans, SpanStore};
use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Largest message accepted, compressed or not (the OTLP spec suggests up to 64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Export requests waiting for the writer before new ones are refused.
pub const QUEUE_CAPACITY: usize = 1024;
/// Export requests waiting to be forwarded before new ones are dropped.
const FORWARD_QUEUE_CAPACITY: usize = 256;
pub(super) const GRPC_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
pub(super) const GRPC_SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";

/// Where and how the receiver listens.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// `--otlp-grpc`.
    pub grpc_addr: SocketAddr,
    /// `--otlp-http`.
    pub http_addr: SocketAddr,
    /// `--otlp-forward`: another OTLP endpoint that gets every export request.
    pub forward: Option<OtlpEndpoint>,
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
    writer: JoinHandle<anyhow::Result<()>>,
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
    /// opens the spans file and starts the servers, the writer and the
    /// forwarder. Spans go to `store` too when one is given.
    pub async fn start(
        config: ReceiverConfig,
        store: Option<Arc<Mutex<SpanStore>>>,
    ) -> anyhow::Result<Self> {
        let forward_target = config
            .forward
            .as_ref()
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
            tokio::spawn(grpc::serve_grpc(
                grpc_listener,
                ingest.clone(),
                stopped.clone(),
            )),
            tokio::spawn(http::serve_http(http_listener, ingest.clone(), stopped)),
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
        written.context("the span writer stopped")??;
        Ok(self.counters.snapshot())
    }
}

/// The one writer: each batch's spans go to `spans.jsonl` (flushed per batch),
/// then into the store (if any), then to the forwarder. A write error is
/// remembered and returned at the end; the spans still reach the store.
async fn write_loop(
    file: std::fs::File,
    mut queue: mpsc::Receiver<Batch>,
    store: Option<Arc<Mutex<SpanStore>>>,
    forward: Option<mpsc::Sender<ExportTraceServiceRequest>>,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    let mut out = tokio::fs::File::from_std(file);
    let mut first_error: Option<std::io::Error> = None;
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
            first_error.get_or_insert(error);
        }
        if let Some(store) = &store {
            let compact = CompactSpans::of(batch.spans);
            if let Ok(mut store) = store.lock() {
                store.insert_compact(compact);
            }
        }
        if let Some(forward) = &forward {
            if forward.try_send(batch.request).is_err() {
                counters.forward_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    match first_error {
        Some(error) => Err(error).context("cannot write spans.jsonl"),
        None => Ok(()),
    }
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
    fn new(endpoint: &OtlpEndpoint) -> anyhow::Result<Self> {
        match endpoint {
            OtlpEndpoint::Grpc(url) => {
                let channel = tonic::transport::Endpoint::from_shared(url.clone())
                    .with_context(|| format!("--otlp-forward {url}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(10))
                    .connect_lazy();
                let client =
                    TraceServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
                Ok(Self::Grpc(client))
            }
            OtlpEndpoint::Http(url) => {
                let client = crate::client::http_client_builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .with_context(|| format!("--otlp-forward {url}"))?;
                Ok(Self::Http {
                    client,
                    url: url.clone(),
                })
            }
        }
    }

    async fn send(&mut self, request: ExportTraceServiceRequest) -> anyhow::Result<()> {
        match self {
            Self::Grpc(client) => {
                client.export(request).await?;
                Ok(())
            }
            Self::Http { client, url } => {
                let response = client
                    .post(url.as_str())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(request.encode_to_vec())
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "{url} answered {}",
                    response.status()
                );
                Ok(())
            }
        }
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
                    "warning: --otlp-forward failed (further failures are only counted): {error:#}"
                );
                reported = true;
            }
        }
    }
}

pub(super) async fn wait_for_stop(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}
