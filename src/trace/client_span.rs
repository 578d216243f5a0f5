//! The client's own span per request: kind CLIENT, with the trace and span ids
//! that went out in `traceparent` (so the server's span is its child), client
//! timings as attributes and `first_token`/`last_token` events, exported over
//! OTLP by a [`ClientSpanExporter`] fed one record at a time.

use super::config::OtlpEndpoint;
use crate::client::traceparent::unhex;
use crate::record::RequestRecord;
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use std::time::{Duration, UNIX_EPOCH};

/// Spans per export call.
const EXPORT_BATCH: usize = 512;

/// The client span of one record, or `None` when it sent no trace header.
pub fn client_span_data(record: &RequestRecord) -> Option<SpanData> {
    let trace_id = record.trace_id?.to_bytes();
    let span_id: [u8; 8] = unhex(record.span_id.as_deref()?)?.try_into().ok()?;
    let instants = &record.instants_ns;
    let wall = |run_ns: u64| {
        let offset = run_ns.saturating_sub(instants.sent);
        UNIX_EPOCH + Duration::from_nanos(record.sent_unix_ns.saturating_add(offset))
    };
    let end_ns = instants
        .end
        .or(instants.last_token)
        .or(instants.first_byte)
        .or(instants.headers)
        .unwrap_or(instants.sent);

    let mut attributes = vec![
        KeyValue::new("http.request.method", "POST"),
        KeyValue::new("url.path", record.endpoint.path()),
        KeyValue::new("gen_ai.request.model", record.model.clone()),
        KeyValue::new("tracebench.request_id", record.request_id.clone()),
        KeyValue::new("tracebench.run_id", record.run_id.clone()),
        KeyValue::new("tracebench.stream", record.stream),
        KeyValue::new("tracebench.warmup", record.warmup),
        KeyValue::new("tracebench.schedule_lag_ms", record.schedule_lag_ms),
    ];
    let optional_f64 = [
        ("tracebench.ttft_ms", record.ttft_ms),
        ("tracebench.e2e_ms", record.e2e_ms),
        ("tracebench.tpot_ms", record.tpot_ms),
    ];
    attributes.extend(
        optional_f64
            .into_iter()
            .filter_map(|(k, v)| Some(KeyValue::new(k, v?))),
    );
    let optional_u64 = [
        ("gen_ai.usage.input_tokens", record.input_tokens),
        ("gen_ai.usage.output_tokens", record.output_tokens),
        ("gen_ai.request.max_tokens", record.max_tokens),
        ("http.response.status_code", record.status.map(u64::from)),
    ];
    attributes.extend(
        optional_u64
            .into_iter()
            .filter_map(|(k, v)| Some(KeyValue::new(k, i64::try_from(v?).ok()?))),
    );
    if let Some(id) = &record.response_id {
        attributes.push(KeyValue::new("gen_ai.response.id", id.clone()));
    }
    let status = match &record.error {
        Some(error) => {
            attributes.push(KeyValue::new("error.type", error.kind.as_str()));
            Status::error(error.message.clone())
        }
        None => Status::Ok,
    };
    let events: Vec<Event> = [
        ("first_token", instants.first_token),
        ("last_token", instants.last_token),
    ]
    .into_iter()
    .filter_map(|(name, at)| Some(Event::new(name, wall(at?), Vec::new(), 0)))
    .collect();

    let mut span_events = SpanEvents::default();
    span_events.events = events;
    Some(SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(trace_id),
            SpanId::from_bytes(span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Client,
        name: format!("POST {}", record.endpoint.path()).into(),
        start_time: wall(instants.sent),
        end_time: wall(end_ns),
        attributes,
        dropped_attributes_count: 0,
        events: span_events,
        links: SpanLinks::default(),
        status,
        instrumentation_scope: InstrumentationScope::builder("tracebench")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    })
}

/// Exports client spans in batches as records are fed to it: holds at most
/// one batch, so a streaming pass over the records can use it.
pub struct ClientSpanExporter {
    exporter: opentelemetry_otlp::SpanExporter,
    endpoint: String,
    batch: Vec<SpanData>,
    exported: u64,
}

impl ClientSpanExporter {
    /// An exporter to `grpc://host:port` or `http(s)://host:port[/v1/traces]`.
    pub fn new(endpoint: &OtlpEndpoint) -> anyhow::Result<Self> {
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let mut exporter = match endpoint {
            OtlpEndpoint::Grpc(url) => builder
                .with_tonic()
                .with_endpoint(url.clone())
                .with_timeout(Duration::from_secs(10))
                .build()?,
            OtlpEndpoint::Http(url) => {
                crate::client::install_tls_provider();
                builder
                    .with_http()
                    .with_http_client(reqwest::Client::new())
                    .with_endpoint(url.clone())
                    .with_timeout(Duration::from_secs(10))
                    .build()?
            }
        };
        exporter.set_resource(
            &opentelemetry_sdk::Resource::builder_empty()
                .with_service_name("tracebench")
                .build(),
        );
        Ok(Self {
            exporter,
            endpoint: endpoint.url().to_string(),
            batch: Vec::with_capacity(EXPORT_BATCH),
            exported: 0,
        })
    }

    /// Adds the client span of one record (none when it sent no trace
    /// header); exports a batch when one is full.
    pub async fn add(&mut self, record: &RequestRecord) -> anyhow::Result<()> {
        if let Some(span) = client_span_data(record) {
            self.batch.push(span);
            if self.batch.len() >= EXPORT_BATCH {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(EXPORT_BATCH));
        let count = batch.len() as u64;
        self.exporter.export(batch).await.map_err(|e| {
            anyhow::anyhow!("exporting client spans to {} failed: {e}", self.endpoint)
        })?;
        self.exported += count;
        Ok(())
    }

    /// Exports what is left; returns how many spans were exported in all.
    pub async fn finish(mut self) -> anyhow::Result<u64> {
        if !self.batch.is_empty() {
            self.flush().await?;
        }
        Ok(self.exported)
    }
}

/// Exports the client span of every traced record (see [`ClientSpanExporter`]).
pub async fn export_client_spans(
    records: &[RequestRecord],
    endpoint: &OtlpEndpoint,
) -> anyhow::Result<u64> {
    let mut exporter = ClientSpanExporter::new(endpoint)?;
    for record in records {
        exporter.add(record).await?;
    }
    exporter.finish().await
}
