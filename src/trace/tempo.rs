//! Fetching one trace from Grafana Tempo: `GET /api/v2/traces/{id}` asking for
//! protobuf, whose `TraceByIDResponse.trace` is wire-identical to OTLP `TracesData`.

use super::backend::{get_found, BackendError, Fetched};
use crate::client::traceparent::TraceId;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;

/// Tempo's `TraceByIDResponse`: only the trace is read (other fields are skipped).
#[derive(Clone, PartialEq, Message)]
pub struct TraceByIdResponse {
    #[prost(message, optional, tag = "1")]
    pub trace: Option<TracesData>,
}

/// A Tempo query endpoint (`--tempo-url`, e.g. `http://localhost:3200`).
pub struct TempoClient {
    http: reqwest::Client,
    base: String,
}

impl TempoClient {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// One look for a trace. `Ok(None)` while Tempo does not have it.
    pub async fn fetch(&self, trace_id: &TraceId) -> Fetched {
        let url = format!("{}/api/v2/traces/{trace_id}", self.base);
        let Some(body) = get_found(&self.http, &url, Some("application/protobuf")).await? else {
            return Ok(None);
        };
        let decoded =
            TraceByIdResponse::decode(body).map_err(|e| BackendError::unreadable(&url, e))?;
        let resource_spans = decoded.trace.map(|t| t.resource_spans).unwrap_or_default();
        Ok((!resource_spans.is_empty()).then_some(resource_spans))
    }
}
