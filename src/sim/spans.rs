//! Exports one span (tree) per finished request over OTLP, gRPC or HTTP
//! protobuf, through the SDK's batch processor with the engine's schedule
//! delay, so spans arrive seconds after the response like they do from vLLM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};
use opentelemetry_sdk::Resource;

use super::flavor::{Flavor, SpanWriter};
use super::request::FinishedRequest;
use crate::clock::RunClock;

/// Spans waiting for export at most; beyond that the SDK drops (and counts) them.
const MAX_QUEUED_SPANS: usize = 1 << 16;

/// Where spans go and in which engine's shape.
#[derive(Debug, Clone)]
pub(crate) struct SpanSettings {
    pub endpoint: String,
    pub flavor: Flavor,
    pub service_name: String,
    pub schedule_delay: Duration,
    pub model: String,
}

/// The span exporter of a running simulator.
#[derive(Debug)]
pub(crate) struct SpanSink {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    flavor: Flavor,
    clock: RunClock,
    model: String,
    host_id: String,
}

impl SpanSink {
    /// Builds the exporter; must run inside the Tokio runtime that will carry
    /// the exports.
    pub fn start(settings: &SpanSettings, clock: RunClock) -> anyhow::Result<Self> {
        let exporter = build_exporter(&settings.endpoint)?;
        let processor = BatchSpanProcessor::builder(OnTokio {
            inner: Arc::new(exporter),
            runtime: tokio::runtime::Handle::current(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(settings.schedule_delay)
                .with_max_queue_size(MAX_QUEUED_SPANS)
                .build(),
        )
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(settings.flavor.resource(&settings.service_name))
            .build();
        let tracer = provider.tracer_with_scope(settings.flavor.scope());
        Ok(Self {
            provider,
            tracer,
            flavor: settings.flavor,
            clock,
            model: settings.model.clone(),
            host_id: format!("{:032x}", rand::random::<u128>()),
        })
    }

    /// Creates the request's spans; the batch processor exports them later.
    pub fn emit(&self, request: &FinishedRequest) {
        let writer = SpanWriter {
            tracer: &self.tracer,
            clock: &self.clock,
            model: &self.model,
            host_id: &self.host_id,
            pid: std::process::id(),
        };
        self.flavor.emit(&writer, request);
    }

    /// Exports every pending span and stops the exporter.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // The SDK's shutdown blocks until its worker thread has exported,
        // and the export itself runs on this runtime: wait off the runtime.
        let provider = self.provider;
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .context("span exporter shutdown panicked")?
            .context("span exporter shutdown failed")
    }
}

/// `grpc://host:port` → OTLP/gRPC; `http://host:port/v1/traces` → OTLP/HTTP protobuf.
fn build_exporter(endpoint: &str) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    let exporter = if let Some(address) = endpoint.strip_prefix("grpc://") {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{address}"))
            .build()
    } else if endpoint.starts_with("http://") {
        crate::client::install_tls_provider();
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build()
    } else {
        bail!(
            "--otlp-endpoint `{endpoint}`: expected grpc://HOST:PORT or http://HOST:PORT/v1/traces"
        );
    };
    exporter.with_context(|| format!("cannot set up the OTLP exporter for {endpoint}"))
}

/// Runs an exporter's network calls on the Tokio runtime: the SDK's batch
/// processor exports from its own thread, where tonic and reqwest have no
/// reactor.
#[derive(Debug)]
struct OnTokio<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnTokio<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = Arc::clone(&self.inner);
        self.runtime
            .spawn(async move { inner.export(batch).await })
            .await
            .map_err(|e| OTelSdkError::InternalFailure(format!("span export task failed: {e}")))?
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
