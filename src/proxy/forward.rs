//! One request through the proxy: the proxy's own `/tracebench/*` routes, or
//! the request passed to the fixed upstream (never a target the request
//! names) with its headers, a continued or new `traceparent` and an
//! `X-Request-Id`; the answer comes back as it arrives. Inference calls are
//! measured ([`super::measure`]): streams through [`super::relay`], JSON
//! answers with a `metrics` object and `Server-Timing`. A server that is
//! down answers 502, one that is too slow 504, both in the OpenAI error shape.

use super::measure::{endpoint_of, inspect, server_timing, with_metrics, Exchange};
use super::relay::SseRelay;
use super::upstream::{BodyReader, UpstreamBody, UpstreamHead};
use super::Shared;
use crate::client::finish_whole;
use crate::client::traceparent::TraceParent;
use crate::record::{ErrorKind, RequestError};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The body of every answer the proxy gives.
pub(crate) type ProxyBody = BoxBody<Bytes, std::io::Error>;

/// Largest JSON answer held to add its metrics.
const MAX_JSON_ANSWER: usize = 64 << 20;

/// Request header that asks for the metrics of a stream as a `data:` event.
pub const METRICS_HEADER: &str = "x-tracebench-metrics";

/// Headers that belong to one connection, never passed on (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON answer of the proxy's own.
fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    json_bytes(status, Bytes::from(value.to_string()))
}

fn json_bytes(status: StatusCode, json: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(full(json));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error in the OpenAI error shape.
pub(crate) fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<ProxyBody> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": status.as_u16()}}),
    )
}

/// Answers one request.
pub(crate) async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<ProxyBody> {
    let path = request.uri().path().to_string();
    if let Some(route) = path.strip_prefix("/tracebench/") {
        return own_route(&shared, request.method(), route);
    }
    let deadline = tokio::time::Instant::now() + shared.config.limits.request_timeout;
    let (parts, body) = request.into_parts();
    let body = match read_body(
        &shared,
        body,
        parts.headers.get(hyper::header::CONTENT_LENGTH),
        deadline,
    )
    .await
    {
        Ok(body) => body,
        Err(refusal) => {
            shared.metrics.count("", refusal.status().as_u16(), None);
            return refusal;
        }
    };
    shared
        .metrics
        .received_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    let inference = endpoint_of(&parts.method, &path).and_then(|e| inspect(e, &body));
    let (inference, body) = match inference {
        Some((inference, rewritten)) => (Some(inference), rewritten.unwrap_or(body)),
        None => (None, body),
    };
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let trace = shared
        .config
        .trace
        .trace_header
        .then(|| continue_trace(parts.headers.get("traceparent")));
    let headers = upstream_headers(&parts.headers, &request_id, trace);
    let metrics_as_data = parts
        .headers
        .get(METRICS_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"data"));
    let exchange = inference.map(|i| Exchange::start(shared.clone(), request_id.clone(), i, trace));
    let answer = Answer {
        shared,
        exchange,
        deadline,
        request_id,
        metrics_as_data,
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // Boxed: the connection keeps the room of its request's future while it
    // lives, and the upstream call is most of it.
    Box::pin(answer.send(&parts.method, path, headers, body)).await
}

/// The `traceparent` sent upstream: the client's trace with the proxy's own
/// span id as the parent, or a new trace.
fn continue_trace(incoming: Option<&HeaderValue>) -> TraceParent {
    let mut fresh = TraceParent::random(&mut rand::rng());
    if let Some(theirs) = incoming
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
    {
        fresh.trace_id = theirs.trace_id;
        fresh.sampled = theirs.sampled;
    }
    fresh
}

/// `/tracebench/health`, `/tracebench/metrics`, `/tracebench/requests/{id}`.
fn own_route(shared: &Shared, method: &hyper::Method, route: &str) -> Response<ProxyBody> {
    if method != hyper::Method::GET {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "only GET",
        );
    }
    match route {
        "health" => json_response(
            StatusCode::OK,
            &json!({"status": "ok", "upstream": shared.config.upstream.as_str(), "run_id": shared.config.run_id}),
        ),
        "metrics" => {
            let text = shared
                .metrics
                .render(shared.in_flight.load(Ordering::Relaxed));
            let mut response = Response::new(full(text));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => match route
            .strip_prefix("requests/")
            .and_then(|id| shared.recent.get(id))
        {
            Some(record) => json_bytes(StatusCode::OK, record),
            None => error_response(
                StatusCode::NOT_FOUND,
                "not_found_error",
                "no such request among the recent ones (GET /tracebench/requests/{X-Request-Id})",
            ),
        },
    }
}

/// The client's body, within `--max-body` (413) and `--idle-timeout` (408).
async fn read_body(
    shared: &Shared,
    mut body: Incoming,
    length: Option<&HeaderValue>,
    deadline: tokio::time::Instant,
) -> Result<Bytes, Response<ProxyBody>> {
    let limits = &shared.config.limits;
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            &format!(
                "the request body is larger than --max-body ({} bytes)",
                limits.max_body
            ),
        )
    };
    let declared = length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return Err(too_large());
    }
    let mut collected = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    loop {
        let wait = limits
            .idle_timeout
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let frame = match tokio::time::timeout(wait, body.frame()).await {
            Err(_) => {
                return Err(error_response(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the request body did not arrive within --idle-timeout",
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &format!("the request body could not be read: {e}"),
                ))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limits.max_body {
                return Err(too_large());
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}

/// The headers sent upstream: the client's less hop-by-hop ones, `Host`
/// and `Content-Length` (the transport sets both), with the trace and the
/// request id.
fn upstream_headers(
    incoming: &HeaderMap,
    request_id: &str,
    trace: Option<TraceParent>,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    copy_headers(incoming, &mut headers, &["host", "content-length"]);
    if let Some(trace) = trace {
        headers.insert(
            "traceparent",
            HeaderValue::from_str(&trace.header_value()).expect("hex is a header value"),
        );
    }
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", id);
    }
    headers
}

/// Copies headers, less hop-by-hop ones, those the `Connection` header
/// names, and `skip`.
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, skip: &[&str]) {
    let named: Vec<String> = from
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in from {
        let name_str = name.as_str();
        if HOP_BY_HOP.contains(&name_str)
            || skip.contains(&name_str)
            || named.iter().any(|n| n == name_str)
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// A request on its way: what answers it needs.
struct Answer {
    shared: Arc<Shared>,
    exchange: Option<Exchange>,
    deadline: tokio::time::Instant,
    request_id: String,
    metrics_as_data: bool,
}

impl Answer {
    /// Sends the request upstream (measured ones over the HTTP/1.1
    /// exchange) and answers with what comes back.
    async fn send(
        mut self,
        method: &hyper::Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response<ProxyBody> {
        let first_byte = self.first_byte_wait();
        let shared = self.shared.clone();
        let upstream = &shared.upstream;
        let answered = match self.exchange.as_mut() {
            Some(exchange) => {
                let story = &mut exchange.progress.connection;
                let call = upstream.post(path, &headers, &body, story);
                tokio::time::timeout(first_byte, call).await
            }
            None => {
                let call = upstream.pass(method, path, headers, body);
                tokio::time::timeout(first_byte, call).await
            }
        };
        let upstream = match answered {
            Ok(Ok(upstream)) => upstream,
            Ok(Err((error, status))) => return self.fail(error, status),
            Err(_) => {
                let error = RequestError {
                    kind: ErrorKind::FirstByteTimeout,
                    message: format!(
                        "the upstream sent no answer within {}",
                        humantime::format_duration(first_byte)
                    ),
                    status: None,
                    body_excerpt: None,
                };
                return self.fail(error, StatusCode::GATEWAY_TIMEOUT);
            }
        };
        self.answer(upstream).await
    }

    /// How long the upstream may take to start answering.
    fn first_byte_wait(&self) -> std::time::Duration {
        let limits = self.shared.config.limits;
        limits.idle_timeout.min(
            self.deadline
                .saturating_duration_since(tokio::time::Instant::now()),
        )
    }

    /// Reads `body` within this request's limits.
    fn reader(&self, body: UpstreamBody) -> BodyReader {
        BodyReader::new(body, self.shared.config.limits.idle_timeout, self.deadline)
    }

    /// The client's answer to what the upstream began to send.
    async fn answer(mut self, upstream: UpstreamHead) -> Response<ProxyBody> {
        let UpstreamHead {
            status,
            headers: upstream_headers,
            arrived,
            body: upstream,
        } = upstream;
        let mut head = Response::builder().status(status.as_u16());
        let headers = head.headers_mut().expect("a fresh builder");
        copy_headers(&upstream_headers, headers, &[]);
        if !headers.contains_key("x-request-id") {
            if let Ok(id) = HeaderValue::from_str(&self.request_id) {
                headers.insert(HeaderName::from_static("x-request-id"), id);
            }
        }
        let content_type = upstream_headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let Some(exchange) = self.exchange.as_mut() else {
            self.shared.metrics.count("", status.as_u16(), None);
            return pass_through(head, upstream, None, self);
        };
        exchange.progress.headers = Some(arrived);
        exchange.progress.status = Some(status.as_u16());
        exchange.client_status = Some(status.as_u16());
        let measured = status.is_success();
        if measured && content_type.starts_with("text/event-stream") {
            let relay = SseRelay::new(exchange.inference().injected_usage, self.metrics_as_data);
            head.headers_mut()
                .expect("a builder")
                .remove(hyper::header::CONTENT_LENGTH);
            return stream(head, upstream, relay, self);
        }
        if measured && content_type.starts_with("application/json") && !exchange.inference().stream
        {
            return self.json(head, upstream).await;
        }
        // Without a length the server reads the answer to its end, so the
        // record is made from all of it (with one, it stops polling early).
        head.headers_mut()
            .expect("a builder")
            .remove(hyper::header::CONTENT_LENGTH);
        pass_through(head, upstream, Some(status), self)
    }

    /// The proxy's own error answer; the record says what failed.
    fn fail(mut self, error: RequestError, status: StatusCode) -> Response<ProxyBody> {
        let message = error.message.clone();
        let kind = match status {
            StatusCode::GATEWAY_TIMEOUT => "gateway_timeout",
            StatusCode::BAD_REQUEST => "invalid_request_error",
            _ => "bad_gateway",
        };
        match self.exchange.as_mut() {
            Some(exchange) => {
                exchange.client_status = Some(status.as_u16());
                exchange.complete(Some(error));
            }
            None => self
                .shared
                .metrics
                .count("", status.as_u16(), Some(error.kind)),
        }
        error_response(status, kind, &message)
    }

    /// A complete JSON answer: held (up to 64 MiB), measured, given its
    /// `metrics` object and `Server-Timing`.
    async fn json(
        mut self,
        mut head: hyper::http::response::Builder,
        upstream: UpstreamBody,
    ) -> Response<ProxyBody> {
        let mut whole = Vec::new();
        let mut reader = self.reader(upstream);
        let read = loop {
            match reader.next().await {
                Err(broke) => break Err(broke),
                Ok(None) => break Ok(()),
                Ok(Some((chunk, arrived))) => {
                    let exchange = self.exchange.as_mut().expect("measured");
                    exchange.progress.first_byte.get_or_insert(arrived);
                    whole.extend_from_slice(&chunk);
                    if whole.len() > MAX_JSON_ANSWER {
                        break Err((
                            ErrorKind::InvalidResponse,
                            format!("the upstream's JSON answer exceeded {MAX_JSON_ANSWER} bytes"),
                        ));
                    }
                }
            }
        };
        if let Err((kind, message)) = read {
            let status = if kind == ErrorKind::Timeout {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            let error = RequestError {
                kind,
                message,
                status: None,
                body_excerpt: None,
            };
            return self.fail(error, status);
        }
        let exchange = self.exchange.as_mut().expect("measured");
        let now = Instant::now();
        exchange.progress.end = Some(now);
        let outcome = finish_whole(&whole, now, &mut exchange.progress);
        let metrics = exchange.complete(outcome.err());
        let body = match with_metrics(&whole, &metrics) {
            Some(body) => body,
            None => Bytes::from(whole),
        };
        let headers = head.headers_mut().expect("a builder");
        headers.remove(hyper::header::CONTENT_LENGTH);
        if let Ok(timing) = HeaderValue::from_str(&server_timing(&metrics)) {
            headers.insert(HeaderName::from_static("server-timing"), timing);
        }
        self.shared
            .metrics
            .sent_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        head.body(full(body)).unwrap_or_else(|e| {
            error_response(StatusCode::BAD_GATEWAY, "bad_gateway", &e.to_string())
        })
    }
}

/// What a relayed body reads next.
struct Flow {
    upstream: BodyReader,
    answer: Answer,
    relay: Option<SseRelay>,
    /// A failing measured answer keeps its first KiB for the record.
    excerpt: Option<(u16, Vec<u8>)>,
    ended: bool,
}

fn stream(
    head: hyper::http::response::Builder,
    upstream: UpstreamBody,
    relay: SseRelay,
    answer: Answer,
) -> Response<ProxyBody> {
    relayed(
        head,
        Flow {
            upstream: answer.reader(upstream),
            answer,
            relay: Some(relay),
            excerpt: None,
            ended: false,
        },
    )
}

/// The answer's bytes as they come; a measured non-2xx (or unexpected) answer
/// is recorded as failed, with the start of its body.
fn pass_through(
    head: hyper::http::response::Builder,
    upstream: UpstreamBody,
    measured_status: Option<StatusCode>,
    answer: Answer,
) -> Response<ProxyBody> {
    let excerpt = measured_status.map(|s| (s.as_u16(), Vec::new()));
    relayed(
        head,
        Flow {
            upstream: answer.reader(upstream),
            answer,
            relay: None,
            excerpt,
            ended: false,
        },
    )
}

fn relayed(head: hyper::http::response::Builder, flow: Flow) -> Response<ProxyBody> {
    let body = futures::stream::unfold(flow, |mut flow| async move {
        let item = flow.next().await?;
        Some((item, flow))
    })
    .map(|item| item.map(Frame::data));
    head.body(BodyExt::boxed(StreamBody::new(body)))
        .unwrap_or_else(|e| error_response(StatusCode::BAD_GATEWAY, "bad_gateway", &e.to_string()))
}

impl Flow {
    /// The next bytes for the client; `None` at the end.
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if self.ended {
                return None;
            }
            let (chunk, arrived) = match self.upstream.next().await {
                Err((kind, message)) => return self.broke(kind, message),
                Ok(None) => {
                    self.ended = true;
                    let rest = self.end();
                    return (!rest.is_empty()).then(|| Ok(self.sent(rest)));
                }
                Ok(Some(chunk)) => chunk,
            };
            let out = match (self.answer.exchange.as_mut(), self.relay.as_mut()) {
                (Some(exchange), Some(relay)) => {
                    exchange.progress.first_byte.get_or_insert(arrived);
                    relay.relay(chunk, arrived, exchange)
                }
                _ => {
                    if let Some((_, excerpt)) = &mut self.excerpt {
                        let room = 1024usize.saturating_sub(excerpt.len());
                        excerpt.extend_from_slice(&chunk[..room.min(chunk.len())]);
                    }
                    chunk
                }
            };
            if !out.is_empty() {
                return Some(Ok(self.sent(out)));
            }
        }
    }

    fn sent(&self, bytes: Bytes) -> Bytes {
        self.answer
            .shared
            .metrics
            .sent_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        bytes
    }

    /// The upstream ended: the relay's last bytes, or the failed answer's record.
    fn end(&mut self) -> Bytes {
        let Some(exchange) = self.answer.exchange.as_mut() else {
            return Bytes::new();
        };
        if let Some(relay) = self.relay.as_mut() {
            return relay.finish(exchange);
        }
        if let Some((status, excerpt)) = self.excerpt.take() {
            let body = String::from_utf8_lossy(&excerpt).into_owned();
            let (kind, message) = if (200..300).contains(&status) {
                (
                    ErrorKind::InvalidResponse,
                    format!(
                        "the answer was not what was asked for (stream: {})",
                        exchange.inference().stream
                    ),
                )
            } else {
                let said = serde_json::from_str::<serde_json::Value>(&body)
                    .map(|v| crate::client::chunk::error_message(&v))
                    .unwrap_or_default();
                (ErrorKind::HttpStatus, format!("HTTP {status}: {said}"))
            };
            exchange.complete(Some(RequestError {
                kind,
                message,
                status: Some(status),
                body_excerpt: Some(body),
            }));
        }
        Bytes::new()
    }

    /// The upstream broke or stalled mid-answer: recorded, and the client's
    /// answer is cut (an error ends the body without its last chunk).
    fn broke(&mut self, kind: ErrorKind, message: String) -> Option<Result<Bytes, std::io::Error>> {
        self.ended = true;
        if let Some(exchange) = self.answer.exchange.as_mut() {
            exchange.complete(Some(RequestError {
                kind,
                message: message.clone(),
                status: None,
                body_excerpt: None,
            }));
        }
        Some(Err(std::io::Error::other(message)))
    }
}
