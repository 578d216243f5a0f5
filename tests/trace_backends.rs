//! Jaeger and Tempo as trace sources, against real HTTP servers in the test:
//! the stable Jaeger API, the UI API fallback, Tempo's protobuf answer, a
//! server that answers 500, one that sends garbage, and one that is down.

mod trace_support;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use trace_support::{config, record, trace_args, Timing};
use tracebench::client::traceparent::TraceId;
use tracebench::record::{read_records, rewrite_records, RequestRecord};
use tracebench::testing::fixture_bytes;
use tracebench::trace::backend::backend_http_client;
use tracebench::trace::jaeger::JaegerClient;
use tracebench::trace::span::{decode_protobuf, spans_of};
use tracebench::trace::tempo::TraceByIdResponse;
use tracebench::trace::{join_run_dir, TraceSource};

/// The vLLM trace the tests look for (`traced-chat`).
const TRACE: &str = "00112233445566778899aabbccddeeff";

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn traced_chat_json() -> serde_json::Value {
    serde_json::from_slice(&fixture_bytes("vllm/traced-chat.spans.otlp.json")).unwrap()
}

fn not_found_v3() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": {"httpCode": 404, "message": "trace not found"}})),
    )
        .into_response()
}

/// Jaeger v2 with the stable API: the fixture trace under its id, 404 JSON otherwise.
fn jaeger_v3() -> axum::Router {
    axum::Router::new().route(
        "/api/v3/traces/{id}",
        axum::routing::get(|UrlPath(id): UrlPath<String>| async move {
            if id == TRACE {
                axum::Json(serde_json::json!({ "result": traced_chat_json() })).into_response()
            } else {
                not_found_v3()
            }
        }),
    )
}

/// An old Jaeger without `/api/v3`: only the UI API, with the trace id's leading zeros dropped.
fn jaeger_ui_only() -> axum::Router {
    axum::Router::new().route(
        "/api/traces/{id}",
        axum::routing::get(|UrlPath(id): UrlPath<String>| async move {
            if id != TRACE {
                return (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({"data": null, "errors": [{"code": 404, "msg": "trace not found"}]}))).into_response();
            }
            let spans = spans_of(&decode_protobuf(&fixture_bytes("vllm/traced-chat.spans.pb")).unwrap().resource_spans).unwrap();
            let span = &spans[0];
            let tags: Vec<serde_json::Value> = span
                .attributes
                .iter()
                .map(|(key, value)| {
                    let kind = if value.is_f64() { "float64" } else if value.is_i64() { "int64" } else { "string" };
                    serde_json::json!({"key": key, "type": kind, "value": value})
                })
                .chain([serde_json::json!({"key": "span.kind", "type": "string", "value": "server"})])
                .collect();
            let short_trace = TRACE.trim_start_matches('0');
            axum::Json(serde_json::json!({
                "data": [{
                    "traceID": short_trace,
                    "spans": [{
                        "traceID": short_trace, "spanID": span.span_id_hex(), "operationName": span.name,
                        "references": [{"refType": "CHILD_OF", "traceID": short_trace, "spanID": "0123456789abcdef"}],
                        "startTime": span.start_unix_ns / 1000, "duration": span.duration_ns() / 1000,
                        "tags": tags, "logs": [], "processID": "p1", "warnings": null
                    }],
                    "processes": {"p1": {"serviceName": "vllm", "tags": []}},
                    "warnings": null
                }],
                "total": 0, "limit": 0, "offset": 0, "errors": null
            }))
            .into_response()
        }),
    )
}

/// Tempo: `TraceByIDResponse` protobuf when asked for protobuf.
fn tempo() -> axum::Router {
    axum::Router::new().route(
        "/api/v2/traces/{id}",
        axum::routing::get(
            |UrlPath(id): UrlPath<String>, headers: axum::http::HeaderMap| async move {
                assert_eq!(headers[header::ACCEPT], "application/protobuf");
                if id != TRACE {
                    return StatusCode::NOT_FOUND.into_response();
                }
                let request = decode_protobuf(&fixture_bytes("vllm/traced-chat.spans.pb")).unwrap();
                let body = TraceByIdResponse {
                    trace: Some(TracesData {
                        resource_spans: request.resource_spans,
                    }),
                }
                .encode_to_vec();
                ([(header::CONTENT_TYPE, "application/protobuf")], body).into_response()
            },
        ),
    )
}

fn records() -> Vec<RequestRecord> {
    let timing = Timing {
        sent_unix_ns: 1_795_333_000_000_000_000,
        sent: 0,
        first_token: 40_000_000,
        last_token: 70_000_000,
        end: 71_000_000,
    };
    vec![
        record("found", Some(TRACE), Some("0123456789abcdef"), &timing),
        record(
            "absent",
            Some("ffffffffffffffffffffffffffffffff"),
            Some("0123456789abcdef"),
            &timing,
        ),
    ]
}

/// Writes the two records to a run folder, joins with the given source and URL,
/// and returns the joined records.
async fn join_with(source: TraceSource, url: String) -> Vec<RequestRecord> {
    let run_dir = tempfile::tempdir().unwrap();
    let requests = run_dir.path().join("requests.jsonl");
    rewrite_records(&requests, &records()).unwrap();
    let mut args = trace_args(source, Duration::from_millis(800));
    match source {
        TraceSource::Jaeger => args.jaeger_url = Some(url),
        _ => args.tempo_url = Some(url),
    }
    join_run_dir(run_dir.path(), &config(&args)).await.unwrap();
    read_records(&requests).unwrap()
}

fn assert_found_and_absent(joined: &[RequestRecord], backend: &str) {
    let server = joined[0]
        .server
        .as_ref()
        .unwrap_or_else(|| panic!("{backend}: {:?}", joined[0].server_missing_reason));
    assert_eq!(server.engine, "vllm");
    assert_eq!(
        server.request_id.as_deref(),
        Some("chatcmpl-b667cda1694cf546")
    );
    assert!((server.ttft_ms.unwrap() - 30.76481819152832).abs() < 1e-9);
    assert_eq!(server.prompt_tokens, Some(15));
    assert!(joined[0].decomposition.is_some());
    assert_eq!(joined[1].server, None);
    assert_eq!(
        joined[1].server_missing_reason.as_deref(),
        Some(format!("trace not found in {backend}").as_str())
    );
}

#[tokio::test]
async fn jaeger_stable_api() {
    let addr = serve(jaeger_v3()).await;
    let joined = join_with(TraceSource::Jaeger, format!("http://{addr}")).await;
    assert_found_and_absent(&joined, "Jaeger");
}

#[tokio::test]
async fn jaeger_ui_api_fallback_pads_ids() {
    let addr = serve(jaeger_ui_only()).await;
    let joined = join_with(TraceSource::Jaeger, format!("http://{addr}/")).await;
    assert_found_and_absent(&joined, "Jaeger");
    let server = joined[0].server.as_ref().unwrap();
    // µs resolution: the span times lose their sub-µs digits but nothing else.
    assert_eq!(server.start_unix_ns % 1000, 0);
    assert_eq!(server.service_name.as_deref(), Some("vllm"));
}

#[tokio::test]
async fn tempo_protobuf() {
    let addr = serve(tempo()).await;
    let joined = join_with(TraceSource::Tempo, format!("http://{addr}")).await;
    assert_found_and_absent(&joined, "Tempo");
}

#[tokio::test]
async fn backend_failures_become_the_missing_reason() {
    let failing = serve(
        axum::Router::new().fallback(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
    )
    .await;
    let garbage =
        serve(axum::Router::new().fallback(|| async { (StatusCode::OK, "<html>not json</html>") }))
            .await;
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (source, addr, expected) in [
        (
            TraceSource::Jaeger,
            failing,
            "answered 500 Internal Server Error",
        ),
        (
            TraceSource::Tempo,
            failing,
            "answered 500 Internal Server Error",
        ),
        (
            TraceSource::Jaeger,
            garbage,
            "trace backend sent an unreadable answer",
        ),
        (
            TraceSource::Tempo,
            garbage,
            "trace backend sent an unreadable answer",
        ),
        (TraceSource::Jaeger, down, "trace backend unreachable"),
        (TraceSource::Tempo, down, "trace backend unreachable"),
    ] {
        let joined = join_with(source, format!("http://{addr}")).await;
        for r in &joined {
            let reason = r.server_missing_reason.as_deref().unwrap_or_default();
            assert!(
                r.server.is_none() && reason.contains(expected),
                "{source:?} {addr}: {reason}"
            );
        }
    }
}

#[tokio::test]
async fn jaeger_polls_until_the_span_set_settles() {
    // The n=2 trace appears one span at a time: the first poll sees one span.
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/api/v3/traces/{id}",
            axum::routing::get(
                |State(polls): State<Arc<std::sync::atomic::AtomicUsize>>| async move {
                    let n = polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut trace: serde_json::Value = serde_json::from_slice(&fixture_bytes(
                        "vllm/traced-chat-n2.spans.otlp.json",
                    ))
                    .unwrap();
                    if n == 0 {
                        trace["resourceSpans"][0]["scopeSpans"][0]["spans"]
                            .as_array_mut()
                            .unwrap()
                            .truncate(1);
                    }
                    axum::Json(serde_json::json!({ "result": trace }))
                },
            ),
        )
        .with_state(polls.clone());
    let addr = serve(app).await;
    let client = JaegerClient::new(backend_http_client().unwrap(), &format!("http://{addr}"));
    let trace_id: TraceId = "2222222222222222222222222222aaaa".parse().unwrap();
    let found = tracebench::trace::backend::fetch_settled(
        || client.fetch(&trace_id),
        tokio::time::Instant::now() + Duration::from_secs(10),
        tracebench::trace::backend::Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(spans_of(&found).unwrap().len(), 2);
    assert_eq!(polls.load(std::sync::atomic::Ordering::SeqCst), 3);
}
