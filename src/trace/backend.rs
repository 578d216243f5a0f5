//! What the Jaeger and Tempo clients share: the HTTP client, the errors,
//! polling a trace until its span set stops changing or a deadline passes, and
//! fetching many traces a few at a time.

use super::config::BackendUrl;
use super::jaeger::JaegerClient;
use super::span::{spans_of, DecodeError};
use super::tempo::TempoClient;
use crate::client::error_chain;
use crate::client::traceparent::TraceId;
use futures::{Stream, StreamExt};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Traces fetched from a backend at once.
const BACKEND_CONCURRENCY: usize = 16;

/// Why a trace could not be fetched; the text is fit for `server_missing_reason`.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("trace backend unreachable: {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("trace backend error: {url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("trace backend sent an unreadable answer: {url}: {reason}")]
    Unreadable { url: String, reason: String },
    #[error("trace backend sent an unreadable span: {0}")]
    UnreadableSpan(#[from] DecodeError),
}

impl BackendError {
    /// A request error on the way to a backend.
    pub fn unreachable(url: &str, error: &reqwest::Error) -> Self {
        Self::Unreachable {
            url: url.to_string(),
            reason: error_chain(error),
        }
    }

    /// An HTTP status a backend should not answer.
    pub fn status(url: &str, status: reqwest::StatusCode) -> Self {
        Self::Status {
            url: url.to_string(),
            status,
        }
    }

    /// A body that could not be read.
    pub fn unreadable(url: &str, error: impl std::fmt::Display) -> Self {
        Self::Unreadable {
            url: url.to_string(),
            reason: error.to_string(),
        }
    }
}

/// One fetch: the trace's spans, or `None` when the backend does not have it (yet).
pub type Fetched = Result<Option<Vec<ResourceSpans>>, BackendError>;

/// Delays between polls of one trace: `first`, doubling up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(250),
            max: Duration::from_secs(2),
        }
    }
}

/// An HTTP client for trace backends (10 s per request, https allowed).
pub fn backend_http_client() -> anyhow::Result<reqwest::Client> {
    crate::client::http_client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build an HTTP client for the trace backend: {e}"))
}

/// GET `url`: its body, or `None` for a 404 (not there yet).
pub async fn get_found(
    http: &reqwest::Client,
    url: &str,
    accept: Option<&str>,
) -> Result<Option<bytes::Bytes>, BackendError> {
    let mut request = http.get(url);
    if let Some(accept) = accept {
        request = request.header(reqwest::header::ACCEPT, accept);
    }
    let response = request
        .send()
        .await
        .map_err(|e| BackendError::unreachable(url, &e))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(BackendError::status(url, status));
    }
    response
        .bytes()
        .await
        .map(Some)
        .map_err(|e| BackendError::unreachable(url, &e))
}

/// A trace backend to query by trace id.
pub enum Backend {
    Jaeger(JaegerClient),
    Tempo(TempoClient),
}

impl Backend {
    /// A client for the configured backend.
    pub fn new(url: &BackendUrl) -> anyhow::Result<Self> {
        let http = backend_http_client()?;
        Ok(match url {
            BackendUrl::Jaeger(url) => Backend::Jaeger(JaegerClient::new(http, url)),
            BackendUrl::Tempo(url) => Backend::Tempo(TempoClient::new(http, url)),
        })
    }

    /// `Jaeger` or `Tempo`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Jaeger(_) => "Jaeger",
            Backend::Tempo(_) => "Tempo",
        }
    }

    async fn fetch(&self, trace_id: &TraceId) -> Fetched {
        match self {
            Backend::Jaeger(client) => client.fetch(trace_id).await,
            Backend::Tempo(client) => client.fetch(trace_id).await,
        }
    }

    /// Fetches each trace, a few at a time, each until its span set settles
    /// or the deadline passes; yields each as it is done.
    pub fn fetch_each(
        &self,
        trace_ids: Vec<TraceId>,
        deadline: Instant,
    ) -> impl Stream<Item = (TraceId, Fetched)> + '_ {
        futures::stream::iter(trace_ids)
            .map(move |trace_id| async move {
                let fetched =
                    fetch_settled(|| self.fetch(&trace_id), deadline, Backoff::default()).await;
                (trace_id, fetched)
            })
            .buffer_unordered(BACKEND_CONCURRENCY)
    }
}

/// The identity of a span set: (trace id, span id) of each span.
type SpanIds = BTreeSet<(TraceId, [u8; 8])>;

/// Polls `fetch` until two polls in a row give the same non-empty span set, or
/// the deadline passes (then the last spans seen, if any). An error ends the
/// polling at once.
pub async fn fetch_settled<F, Fut>(mut fetch: F, deadline: Instant, backoff: Backoff) -> Fetched
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Fetched>,
{
    let mut last: Option<(Vec<ResourceSpans>, SpanIds)> = None;
    let mut delay = backoff.first;
    loop {
        if let Some(found) = fetch().await? {
            let ids: SpanIds = spans_of(&found)?
                .iter()
                .map(|s| (s.trace_id, s.span_id))
                .collect();
            if !ids.is_empty() && last.as_ref().is_some_and(|(_, previous)| *previous == ids) {
                return Ok(Some(found));
            }
            last = Some((found, ids));
        }
        if Instant::now() + delay > deadline {
            return Ok(last.map(|(found, _)| found));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(backoff.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::decode_protobuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn n2_spans() -> Vec<ResourceSpans> {
        decode_protobuf(&crate::testing::fixture_bytes(
            "vllm/traced-chat-n2.spans.pb",
        ))
        .unwrap()
        .resource_spans
    }

    /// The first n2 span alone, as if the second had not arrived yet.
    fn first_only() -> Vec<ResourceSpans> {
        let mut partial = n2_spans();
        partial[0].scope_spans[0].spans.truncate(1);
        partial
    }

    #[tokio::test(start_paused = true)]
    async fn waits_until_the_span_set_stops_changing() {
        let polls = AtomicUsize::new(0);
        let fetch = || {
            let n = polls.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(match n {
                    0 => None,
                    1 | 2 => Some(first_only()),
                    _ => Some(n2_spans()),
                })
            }
        };
        // Two equal answers in a row (polls 1 and 2) would end it with one span;
        // here the third poll gives both, so the answer depends on the sequence.
        let found = fetch_settled(
            fetch,
            Instant::now() + Duration::from_secs(60),
            Backoff::default(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(spans_of(&found).unwrap().len(), 1);
        assert_eq!(polls.load(Ordering::SeqCst), 3);

        let polls = AtomicUsize::new(0);
        let growing = || {
            let n = polls.fetch_add(1, Ordering::SeqCst);
            async move { Ok(Some(if n == 0 { first_only() } else { n2_spans() })) }
        };
        let found = fetch_settled(
            growing,
            Instant::now() + Duration::from_secs(60),
            Backoff::default(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(spans_of(&found).unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_returns_what_was_seen_and_errors_stop_at_once() {
        let start = Instant::now();
        let never = || async { Ok(None) };
        let found = fetch_settled(never, start + Duration::from_secs(5), Backoff::default())
            .await
            .unwrap();
        assert!(found.is_none());
        assert!(Instant::now() <= start + Duration::from_secs(5));
        assert!(Instant::now() >= start + Duration::from_secs(3));

        let polls = AtomicUsize::new(0);
        let failing = || {
            polls.fetch_add(1, Ordering::SeqCst);
            async {
                Err(BackendError::status(
                    "http://x",
                    reqwest::StatusCode::INTERNAL_SERVER_ERROR,
                ))
            }
        };
        let error = fetch_settled(failing, start + Duration::from_secs(60), Backoff::default())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("500"), "{error}");
        assert_eq!(polls.load(Ordering::SeqCst), 1);
    }
}
