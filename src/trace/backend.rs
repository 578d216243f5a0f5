//! What the Jaeger and Tempo clients share: the HTTP client, error wording, and
//! polling a trace until its span set stops changing or a deadline passes.

use super::span::spans_of;
use crate::client::error_chain;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// One fetch: the trace's spans, `None` when the backend does not have it (yet),
/// or an error string fit for `server_missing_reason`.
pub type Fetched = Result<Option<Vec<ResourceSpans>>, String>;

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
pub fn http_client() -> Result<reqwest::Client, String> {
    crate::client::http_client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// GET `url`: its body, `None` for a 404 (not there yet), or the reason it failed.
pub async fn get_found(
    http: &reqwest::Client,
    url: &str,
    accept: Option<&str>,
) -> Result<Option<bytes::Bytes>, String> {
    let mut request = http.get(url);
    if let Some(accept) = accept {
        request = request.header(reqwest::header::ACCEPT, accept);
    }
    let response = request.send().await.map_err(|e| unreachable(url, &e))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(bad_status(url, status));
    }
    response
        .bytes()
        .await
        .map(Some)
        .map_err(|e| unreachable(url, &e))
}

/// The reason for a request error on the way to a backend.
pub fn unreachable(url: &str, error: &reqwest::Error) -> String {
    format!("trace backend unreachable: {url}: {}", error_chain(error))
}

/// The reason for an HTTP status a backend should not answer.
pub fn bad_status(url: &str, status: reqwest::StatusCode) -> String {
    format!("trace backend error: {url} answered {status}")
}

/// The reason for a body that could not be read.
pub fn unreadable(url: &str, error: impl std::fmt::Display) -> String {
    format!("trace backend sent an unreadable answer: {url}: {error}")
}

/// The identity of a span set: (trace id, span id) of each span.
type SpanIds = BTreeSet<([u8; 16], [u8; 8])>;

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
            let ids: SpanIds = spans_of(&found)
                .map_err(|e| format!("trace backend sent an unreadable span: {e}"))?
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
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/vllm/traced-chat-n2.spans.pb"
        );
        decode_protobuf(&std::fs::read(path).unwrap())
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
            async { Err("trace backend error: x answered 500".to_string()) }
        };
        let error = fetch_settled(failing, start + Duration::from_secs(60), Backoff::default())
            .await
            .unwrap_err();
        assert!(error.contains("500"));
        assert_eq!(polls.load(Ordering::SeqCst), 1);
    }
}
