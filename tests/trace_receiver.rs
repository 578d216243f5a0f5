//! The embedded OTLP receiver over real gRPC and HTTP: protobuf, JSON and gzip
//! accepted and written to spans.jsonl; malformed, oversized and bomb bodies
//! refused with the right status and counted; a full queue answers 503;
//! forwarding; and the port-in-use message.

mod trace_support;

use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tracebench::client::traceparent::TraceId;
use tracebench::testing::fixture_bytes;
use tracebench::trace::receiver::{Receiver, ReceiverConfig, ReceiverCounters};
use tracebench::trace::span::{decode_protobuf, for_each_span_in_jsonl};
use tracebench::trace::store::SpanStore;
use tracebench::trace::OtlpEndpoint;

struct Running {
    receiver: Receiver,
    store: Arc<Mutex<SpanStore>>,
    dir: tempfile::TempDir,
}

async fn start(configure: impl FnOnce(&mut ReceiverConfig)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ReceiverConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("spans.jsonl"),
    );
    configure(&mut config);
    let store = Arc::new(Mutex::new(SpanStore::new()));
    let receiver = Receiver::start(config, Some(store.clone())).await.unwrap();
    Running {
        receiver,
        store,
        dir,
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn http() -> reqwest::Client {
    tracebench::client::install_tls_provider();
    reqwest::Client::new()
}

async fn post(
    addr: std::net::SocketAddr,
    content_type: &str,
    gzipped: bool,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = http()
        .post(format!("http://{addr}/v1/traces"))
        .header("content-type", content_type)
        .body(body);
    if gzipped {
        request = request.header("content-encoding", "gzip");
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn grpc_and_http_exports_reach_the_store_and_spans_jsonl() {
    let running = start(|_| {}).await;
    let grpc_addr = running.receiver.grpc_addr();
    let http_addr = running.receiver.http_addr();

    // gRPC, gzip-compressed: the 12 concurrent vLLM spans.
    let concurrent = decode_protobuf(&fixture_bytes("vllm/concurrent-12.spans.pb")).unwrap();
    let mut client = TraceServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    client.export(concurrent.clone()).await.unwrap();

    // HTTP protobuf.
    let response = post(
        http_addr,
        "application/x-protobuf",
        false,
        fixture_bytes("vllm/traced-chat.spans.pb"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    assert!(response.bytes().await.unwrap().is_empty());

    // HTTP JSON, and gzip-compressed JSON.
    let response = post(
        http_addr,
        "application/json",
        false,
        fixture_bytes("sglang/chat-stream.overlap.otlp.json"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.unwrap(), "{}");
    let body = gzip(&fixture_bytes("otlp/trace.json"));
    let response = post(http_addr, "application/json; charset=utf-8", true, body).await;
    assert_eq!(response.status(), 200);

    let expected_spans = 12 + 1 + 28 + 1;
    let spans_path = running.dir.path().join("spans.jsonl");
    let counters = running.receiver.shutdown().await.unwrap();
    assert_eq!(
        counters,
        ReceiverCounters {
            accepted_spans: expected_spans,
            ..ReceiverCounters::default()
        }
    );
    let store = running.store.lock().unwrap();
    assert_eq!(store.span_count(), expected_spans);
    let trace_id: [u8; 16] = concurrent.resource_spans[0].scope_spans[0].spans[0]
        .trace_id
        .clone()
        .try_into()
        .unwrap();
    assert_eq!(store.trace_span_count(&TraceId::from(trace_id)), 1);
    let mut lines = Vec::new();
    let unreadable = for_each_span_in_jsonl(&spans_path, |s| lines.push(s)).unwrap();
    assert_eq!(lines.len() as u64, expected_spans);
    assert_eq!(unreadable, 0);
    assert!(lines
        .iter()
        .any(|s| s.name == " Req 3f2a9c7e" && s.service_name.as_deref() == Some("sglang")));
}

#[tokio::test]
async fn malformed_and_oversized_inputs_are_refused_and_counted() {
    let running = start(|c| c.max_message_bytes = 64 * 1024).await;
    let http_addr = running.receiver.http_addr();
    let wrong_id = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0011","spanId":"0123456789abcdef","name":"x"}]}]}]}"#;

    let cases: Vec<(&str, &str, bool, Vec<u8>, u16)> = vec![
        (
            "bad protobuf",
            "application/x-protobuf",
            false,
            vec![0x0a, 0xff, 0xff, 0xff],
            400,
        ),
        (
            "bad json",
            "application/json",
            false,
            b"{\"resourceSpans\": [".to_vec(),
            400,
        ),
        (
            "wrong id length",
            "application/json",
            false,
            wrong_id.to_vec(),
            400,
        ),
        (
            "bad gzip",
            "application/json",
            true,
            b"plain text".to_vec(),
            400,
        ),
        (
            "unknown content type",
            "text/plain",
            false,
            b"hello".to_vec(),
            415,
        ),
        (
            "oversize body",
            "application/x-protobuf",
            false,
            vec![0u8; 200 * 1024],
            413,
        ),
        (
            "gzip bomb",
            "application/x-protobuf",
            true,
            gzip(&vec![0u8; 32 * 1024 * 1024]),
            413,
        ),
    ];
    for (what, content_type, gzipped, body, status) in cases {
        assert!(
            body.len() < 1024 * 1024,
            "{what}: keep request bodies small"
        );
        let response = post(http_addr, content_type, gzipped, body).await;
        assert_eq!(response.status().as_u16(), status, "{what}");
        if content_type == "application/json" {
            let error: serde_json::Value = response.json().await.unwrap();
            assert!(
                error["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {error}"
            );
        }
    }

    // gRPC: bad protobuf and a wrong id length are INVALID_ARGUMENT.
    let mut client =
        TraceServiceClient::connect(format!("http://{}", running.receiver.grpc_addr()))
            .await
            .unwrap();
    let mut bad = decode_protobuf(&fixture_bytes("vllm/traced-chat.spans.pb")).unwrap();
    bad.resource_spans[0].scope_spans[0].spans[0].span_id = vec![1, 2, 3];
    let status = client.export(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("spanId"), "{}", status.message());
    let raw = raw_grpc_frame(&[0x0a, 0xff, 0xff, 0xff]);
    let response = http_grpc_post(running.receiver.grpc_addr(), raw).await;
    assert_eq!(response, Some(3), "grpc-status of undecodable protobuf");

    // The receiver is still alive and takes a good request.
    let response = post(
        http_addr,
        "application/x-protobuf",
        false,
        fixture_bytes("vllm/traced-chat.spans.pb"),
    )
    .await;
    assert_eq!(response.status(), 200);

    let counters = running.receiver.shutdown().await.unwrap();
    assert_eq!(counters.malformed_requests, 5 + 2);
    assert_eq!(counters.refused_requests, 2);
    assert_eq!(counters.accepted_spans, 1);
}

/// A gRPC message frame: no compression, 4-byte big-endian length, payload.
fn raw_grpc_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Sends raw bytes as a gRPC Export call over HTTP/2 and returns `grpc-status`.
async fn http_grpc_post(addr: std::net::SocketAddr, frame: Vec<u8>) -> Option<i32> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::post(format!(
        "http://{addr}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
    .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let header_status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let collected = response.into_body().collect().await.unwrap();
    header_status.or_else(|| {
        collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap().parse().unwrap())
    })
}

// Two workers: the writer blocks one of them on the held store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_and_resource_exhausted() {
    let running = start(|c| c.queue_capacity = 1).await;
    let http_addr = running.receiver.http_addr();
    let body = fixture_bytes("vllm/traced-chat.spans.pb");
    // Holding the store stops the writer at its first batch; one more fills the queue.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let store = running.store.clone();
    let holder = std::thread::spawn(move || {
        let _held = store.lock().unwrap();
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    locked_rx.recv().unwrap();
    let mut statuses = vec![post(http_addr, "application/x-protobuf", false, body.clone()).await];
    // The writer writes spans.jsonl before it waits for the store: then it holds batch 1.
    let spans_path = running.dir.path().join("spans.jsonl");
    for _ in 0..500 {
        if std::fs::metadata(&spans_path)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for _ in 0..3 {
        statuses.push(post(http_addr, "application/x-protobuf", false, body.clone()).await);
    }
    let mut client =
        TraceServiceClient::connect(format!("http://{}", running.receiver.grpc_addr()))
            .await
            .unwrap();
    let grpc = client
        .export(decode_protobuf(&body).unwrap())
        .await
        .unwrap_err();
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(grpc.code(), tonic::Code::ResourceExhausted);
    let codes: Vec<u16> = statuses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 503).count(), 2, "{codes:?}");
    let refused = statuses.iter().find(|r| r.status() == 503).unwrap();
    assert_eq!(refused.headers()["retry-after"], "1");

    let counters = running.receiver.shutdown().await.unwrap();
    assert_eq!(counters.accepted_spans, 2);
    assert_eq!(counters.refused_requests, 3);
    assert_eq!(running.store.lock().unwrap().span_count(), 2);
}

#[tokio::test]
async fn exports_are_forwarded_over_grpc_and_http() {
    for scheme in ["grpc", "http"] {
        let downstream = start(|_| {}).await;
        let target = match scheme {
            "grpc" => format!("grpc://{}", downstream.receiver.grpc_addr()),
            _ => format!("http://{}", downstream.receiver.http_addr()),
        };
        let target = OtlpEndpoint::parse(&target, "--otlp-forward").unwrap();
        let upstream = start(|c| c.forward = Some(target)).await;
        let body = fixture_bytes("vllm/traced-chat-n2.spans.pb");
        let response = post(
            upstream.receiver.http_addr(),
            "application/x-protobuf",
            false,
            body,
        )
        .await;
        assert_eq!(response.status(), 200);
        let upstream_counters = upstream.receiver.shutdown().await.unwrap();
        assert_eq!(upstream_counters.forward_failures, 0, "{scheme}");
        let downstream_counters = downstream.receiver.shutdown().await.unwrap();
        assert_eq!(downstream_counters.accepted_spans, 2, "{scheme}");
    }
}

#[tokio::test]
async fn forwarding_to_a_dead_endpoint_is_counted_not_blocking() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let target = OtlpEndpoint::parse(&format!("http://{dead}"), "--otlp-forward").unwrap();
    let running = start(|c| c.forward = Some(target)).await;
    let body = fixture_bytes("vllm/traced-chat.spans.pb");
    for _ in 0..3 {
        let response = post(
            running.receiver.http_addr(),
            "application/x-protobuf",
            false,
            body.clone(),
        )
        .await;
        assert_eq!(response.status(), 200);
    }
    let counters = running.receiver.shutdown().await.unwrap();
    assert_eq!(counters.accepted_spans, 3);
    assert_eq!(counters.forward_failures, 3);
}

#[tokio::test]
async fn a_port_in_use_names_the_flag() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (grpc, http, flag) in [
        (addr, "127.0.0.1:0".parse().unwrap(), "--otlp-grpc"),
        ("127.0.0.1:0".parse().unwrap(), addr, "--otlp-http"),
    ] {
        let config = ReceiverConfig::new(grpc, http, dir.path().join("spans.jsonl"));
        let error = match Receiver::start(config, None).await {
            Ok(_) => panic!("{addr} was free"),
            Err(error) => error.to_string(),
        };
        assert_eq!(
            error,
            format!("{addr} is already in use: pick another with {flag}")
        );
    }
}

#[tokio::test]
async fn empty_export_is_accepted() {
    let running = start(|_| {}).await;
    let body = ExportTraceServiceRequest::default().encode_to_vec();
    let response = post(
        running.receiver.http_addr(),
        "application/x-protobuf",
        false,
        body,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        running.receiver.shutdown().await.unwrap(),
        ReceiverCounters::default()
    );
}
