//! The simulator's spans, really exported over OTLP/gRPC (to an in-test tonic
//! `TraceService`) and OTLP/HTTP protobuf (to an in-test axum endpoint): vLLM's
//! `llm_request` shape and parenting, no span for unsampled requests, real
//! queue times under load, and the SGLang and TGI span trees.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use tracebench::client::traceparent::hex;
use tracebench::sim::{spawn, Flavor, SimArgs, SimServer};

/// A span as received, with its resource's service name and its scope name.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    scope: String,
    span: Span,
}

#[derive(Debug, Clone, Default)]
struct Inbox(Arc<Mutex<Vec<Received>>>);

impl Inbox {
    fn push(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().expect("inbox");
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                let scope = scope_spans.scope.map(|s| s.name).unwrap_or_default();
                for span in scope_spans.spans {
                    spans.push(Received {
                        service: service.clone(),
                        scope: scope.clone(),
                        span,
                    });
                }
            }
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.0.lock().expect("inbox").clone()
    }

    /// Polls until `count` spans named `name` arrived (bounded).
    async fn wait_for(&self, name: &str, count: usize) -> Vec<Received> {
        for _ in 0..400 {
            let found: Vec<_> = self
                .spans()
                .into_iter()
                .filter(|r| r.span.name == name)
                .collect();
            if found.len() >= count {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("fewer than {count} `{name}` spans arrived");
    }
}

#[tonic::async_trait]
impl TraceService for Inbox {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on a free port: `grpc://127.0.0.1:PORT`.
async fn grpc_receiver(inbox: Inbox) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(inbox))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    format!("grpc://{addr}")
}

/// An OTLP/HTTP protobuf receiver: `http://127.0.0.1:PORT/v1/traces`.
async fn http_receiver(inbox: Inbox) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let inbox = inbox.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        inbox.push(request);
                        let response = ExportTraceServiceResponse::default().encode_to_vec();
                        (
                            axum::http::StatusCode::OK,
                            [("content-type", "application/x-protobuf")],
                            response,
                        )
                    }
                    Err(_) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [("content-type", "text/plain")],
                        Vec::new(),
                    ),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1/traces")
}

fn client() -> reqwest::Client {
    // Only plain HTTP is used, but reqwest needs a TLS provider to build.
    tracebench::client::install_tls_provider();
    reqwest::Client::builder().build().expect("HTTP client")
}

fn traceparent(trace: u8, span: u8, sampled: bool) -> (String, [u8; 16], [u8; 8]) {
    let trace_id = [trace; 16];
    let span_id = [span; 8];
    let flags = if sampled { "01" } else { "00" };
    (
        format!("00-{}-{}-{flags}", hex(&trace_id), hex(&span_id)),
        trace_id,
        span_id,
    )
}

/// Sends a streaming request and reads it to the end.
async fn stream(
    server: &SimServer,
    path: &str,
    request_id: &str,
    traceparent: Option<&str>,
    max_tokens: u32,
) {
    let body = match path {
        "/v1/completions" => {
            json!({"prompt": "one two three", "max_tokens": max_tokens, "stream": true})
        }
        _ => {
            json!({"messages": [{"role": "user", "content": "one two three"}], "max_tokens": max_tokens, "stream": true})
        }
    };
    let mut request = client()
        .post(format!("{}{path}", server.url()))
        .header("X-Request-Id", request_id)
        .json(&body);
    if let Some(value) = traceparent {
        request = request.header("traceparent", value);
    }
    let text = request
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    assert!(text.ends_with("data: [DONE]\n\n"));
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()
}

fn double(span: &Span, key: &str) -> f64 {
    match attribute(span, key) {
        Some(AnyValue::DoubleValue(v)) => *v,
        other => panic!("{key} is not a double: {other:?}"),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(AnyValue::IntValue(v)) => *v,
        other => panic!("{key} is not an int: {other:?}"),
    }
}

fn string(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(AnyValue::StringValue(v)) => v.clone(),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn seconds_between(start_ns: u64, end_ns: u64) -> f64 {
    (end_ns - start_ns) as f64 / 1e9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_spans_over_grpc_are_parented_timed_and_skip_unsampled_requests() {
    let inbox = Inbox::default();
    let endpoint = grpc_receiver(inbox.clone()).await;
    let args = SimArgs {
        port: 0,
        max_num_seqs: 1,
        otlp_endpoint: Some(endpoint),
        span_delay_ms: 100,
        ..SimArgs::default()
    };
    let server = spawn(args).await.expect("simulator starts");
    let traced: Vec<_> = (1..=3u8).map(|i| traceparent(i, i, true)).collect();
    let (unsampled, unsampled_trace, _) = traceparent(0xde, 0xad, false);
    let sends = traced.iter().enumerate().map(|(i, (header, _, _))| {
        stream(
            &server,
            "/v1/chat/completions",
            ["q1", "q2", "q3"][i],
            Some(header.as_str()),
            20,
        )
    });
    futures::future::join_all(sends).await;
    stream(
        &server,
        "/v1/chat/completions",
        "unsampled",
        Some(&unsampled),
        3,
    )
    .await;
    stream(&server, "/v1/chat/completions", "root", None, 3).await;

    // The batch processor exports on its schedule, before any shutdown.
    let spans = inbox.wait_for("llm_request", 4).await;
    server.shutdown().await.expect("clean shutdown");
    let spans_after_shutdown = inbox.spans();
    assert_eq!(
        spans_after_shutdown.len(),
        4,
        "no span for the unsampled request"
    );
    assert!(spans_after_shutdown
        .iter()
        .all(|r| r.span.trace_id != unsampled_trace));

    let mut in_model = Vec::new();
    for (i, (_, trace_id, span_id)) in traced.iter().enumerate() {
        let received = spans
            .iter()
            .find(|r| r.span.trace_id == trace_id)
            .unwrap_or_else(|| panic!("span of request {i}"));
        let span = &received.span;
        assert_eq!(
            (received.service.as_str(), received.scope.as_str()),
            ("vllm", "vllm.tracing.otel")
        );
        assert_eq!(span.parent_span_id, span_id);
        assert_eq!(span.kind, 2, "SERVER");
        assert_eq!(
            string(span, "gen_ai.request.id"),
            format!("chatcmpl-q{}", i + 1)
        );
        assert_eq!(
            (
                int(span, "gen_ai.usage.prompt_tokens"),
                int(span, "gen_ai.usage.completion_tokens")
            ),
            (3, 20)
        );
        assert_eq!(int(span, "gen_ai.request.max_tokens"), 20);
        let (queue, prefill, decode) = (
            double(span, "gen_ai.latency.time_in_queue"),
            double(span, "gen_ai.latency.time_in_model_prefill"),
            double(span, "gen_ai.latency.time_in_model_decode"),
        );
        assert!(
            (double(span, "gen_ai.latency.time_in_model_inference") - (prefill + decode)).abs()
                < 1e-6
        );
        // TTFT = frontend (API-server time before the queue) + queue + prefill.
        let frontend = double(span, "gen_ai.latency.time_to_first_token") - (queue + prefill);
        assert!(
            frontend >= 0.002 - 1e-6,
            "frontend {frontend} s, --frontend-ms is 2"
        );
        assert!(frontend < 0.5, "frontend {frontend} s");
        let e2e = double(span, "gen_ai.latency.e2e");
        assert!(
            (e2e - seconds_between(span.start_time_unix_nano, span.end_time_unix_nano)).abs()
                < 1e-6
        );
        // Taken out of the queue: first token minus prefill.
        let ttft = double(span, "gen_ai.latency.time_to_first_token");
        let scheduled_ns = span.start_time_unix_nano + ((ttft - prefill) * 1e9) as u64;
        in_model.push((scheduled_ns, span.end_time_unix_nano, queue));
    }
    // One sequence at a time: the requests' times in the model never overlap,
    // so the ones that arrived while another ran really waited in the queue.
    in_model.sort_by_key(|&(scheduled, _, _)| scheduled);
    assert!(
        in_model.windows(2).all(|w| w[1].0 + 1_000 >= w[0].1),
        "{in_model:?}"
    );
    assert!(in_model.iter().any(|&(_, _, queue)| queue > 0.0));

    let root = spans
        .iter()
        .find(|r| string(&r.span, "gen_ai.request.id") == "chatcmpl-root")
        .expect("root span");
    assert!(root.span.parent_span_id.is_empty());
    assert!(traced
        .iter()
        .all(|(_, trace, _)| root.span.trace_id != trace));
}

#[tokio::test]
async fn vllm_completion_spans_over_http_carry_the_choice_request_id() {
    let inbox = Inbox::default();
    let endpoint = http_receiver(inbox.clone()).await;
    let args = SimArgs {
        port: 0,
        ttft_ms: Some(2.0),
        itl_ms: Some(1.0),
        otlp_endpoint: Some(endpoint),
        ..SimArgs::default()
    };
    let server = spawn(args).await.expect("simulator starts");
    let (header, trace_id, span_id) = traceparent(7, 8, true);
    stream(&server, "/v1/completions", "c1", Some(&header), 4).await;
    // The span is still batched (5 s delay): shutdown must flush it.
    server.shutdown().await.expect("clean shutdown");
    let spans = inbox.spans();
    assert_eq!(spans.len(), 1);
    let span = &spans[0].span;
    assert_eq!(
        (span.trace_id.as_slice(), span.parent_span_id.as_slice()),
        (&trace_id[..], &span_id[..])
    );
    assert_eq!(string(span, "gen_ai.request.id"), "cmpl-c1-0");
    assert_eq!(
        double(span, "gen_ai.latency.time_in_queue"),
        0.0,
        "deterministic mode never queues"
    );
    assert!(double(span, "gen_ai.latency.time_to_first_token") >= 0.002);
}

#[tokio::test]
async fn sglang_flavor_exports_the_request_tree_in_the_clients_trace() {
    let inbox = Inbox::default();
    let endpoint = grpc_receiver(inbox.clone()).await;
    let args = SimArgs {
        port: 0,
        flavor: Flavor::Sglang,
        otlp_endpoint: Some(endpoint),
        ..SimArgs::default()
    };
    let server = spawn(args).await.expect("simulator starts");
    let (header, trace_id, span_id) = traceparent(0x4b, 0x0f, true);
    stream(
        &server,
        "/v1/chat/completions",
        "3f2a9c7e5b1d4e8f",
        Some(&header),
        6,
    )
    .await;
    let (unsampled, _, _) = traceparent(0x11, 0x22, false);
    stream(
        &server,
        "/v1/chat/completions",
        "unsampled",
        Some(&unsampled),
        2,
    )
    .await;
    server.shutdown().await.expect("clean shutdown");

    let spans: Vec<Span> = inbox.spans().into_iter().map(|r| r.span).collect();
    assert!(
        spans.iter().all(|s| s.trace_id == trace_id),
        "only the sampled request is traced"
    );
    let named = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let root = named(" Req 3f2a9c7e");
    assert_eq!(root.len(), 1);
    let root = root[0];
    assert_eq!(root.parent_span_id, span_id);
    assert_eq!(root.kind, 1, "INTERNAL");
    assert_eq!(string(root, "rid"), "3f2a9c7e5b1d4e8f");
    assert_eq!(int(root, "gen_ai.usage.completion_tokens"), 6);
    assert!(attribute(root, "gen_ai.latency.time_in_queue").is_none());
    let scheduler = spans
        .iter()
        .find(|s| s.name.starts_with("Scheduler [TP 0]  [PP 0]"))
        .expect("scheduler span");
    assert_eq!(scheduler.parent_span_id, root.span_id);
    for stage in [
        "request_process",
        "prefill_waiting",
        "prefill_forward",
        "decode_forward",
    ] {
        assert_eq!(named(stage).len(), 1, "{stage}");
        assert_eq!(named(stage)[0].parent_span_id, scheduler.span_id, "{stage}");
    }
    let decode_forward = named("decode_forward")[0];
    let loops = named("decode_loop");
    assert_eq!(loops.len(), 5);
    assert!(loops
        .iter()
        .all(|s| s.parent_span_id == decode_forward.span_id));
    let mut counters: Vec<i64> = loops.iter().map(|s| int(s, "decode_ct")).collect();
    counters.sort_unstable();
    assert_eq!(counters, [0, 1, 2, 3, 4]);
    let waiting = named("prefill_waiting")[0];
    let prefill = named("prefill_forward")[0];
    assert_eq!(waiting.end_time_unix_nano, prefill.start_time_unix_nano);
    assert_eq!(
        prefill.end_time_unix_nano,
        decode_forward.start_time_unix_nano
    );
    assert!(named("tokenize").len() == 1 && named("api_server_dispatch").len() == 1);
}

/// Parses a Rust `Duration` Debug string (`12.5ms`, `1.2s`, `800µs`, `0ns`).
fn debug_duration_seconds(text: &str) -> f64 {
    let (number, scale) = [("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0)]
        .iter()
        .find_map(|(unit, scale)| text.strip_suffix(unit).map(|n| (n, *scale)))
        .unwrap_or_else(|| panic!("no unit in {text}"));
    number
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("not a duration: {text}"))
        * scale
}

#[tokio::test]
async fn tgi_flavor_traces_even_unsampled_requests_with_one_send_generation_per_token() {
    let inbox = Inbox::default();
    let endpoint = http_receiver(inbox.clone()).await;
    let args = SimArgs {
        port: 0,
        flavor: Flavor::Tgi,
        otlp_endpoint: Some(endpoint),
        ..SimArgs::default()
    };
    let server = spawn(args).await.expect("simulator starts");
    let (header, trace_id, span_id) = traceparent(0x4b, 0x0f, false);
    stream(&server, "/v1/chat/completions", "t1", Some(&header), 4).await;
    server.shutdown().await.expect("clean shutdown");

    let received = inbox.spans();
    assert!(received
        .iter()
        .all(|r| r.service == "tgi" && r.span.trace_id == trace_id));
    let spans: Vec<&Span> = received.iter().map(|r| &r.span).collect();
    let named = |name: &str| {
        spans
            .iter()
            .copied()
            .filter(|s| s.name == name)
            .collect::<Vec<_>>()
    };
    let handler = named("chat_completions");
    assert_eq!(handler.len(), 1);
    let handler = handler[0];
    assert_eq!(handler.parent_span_id, span_id);
    let total = debug_duration_seconds(&string(handler, "total_time"));
    let queue = debug_duration_seconds(&string(handler, "queue_time"));
    let inference = debug_duration_seconds(&string(handler, "inference_time"));
    // total = frontend (at least --frontend-ms, 2 ms by default) + queue + inference.
    let frontend = total - (queue + inference);
    assert!(
        (0.002 - 1e-6..0.5).contains(&frontend),
        "frontend {frontend} s"
    );
    let per_token = debug_duration_seconds(&string(handler, "time_per_token"));
    assert!((per_token - inference / 4.0).abs() < 1e-6);
    let schedule = named("schedule");
    assert_eq!(schedule.len(), 1);
    let queued = named("queued");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].parent_span_id, schedule[0].span_id);
    let infers = named("infer");
    let sends = named("send_generation");
    assert_eq!((infers.len(), sends.len()), (4, 4));
    assert!(infers
        .iter()
        .all(|s| s.parent_span_id == schedule[0].span_id));
    assert!(sends
        .iter()
        .all(|s| infers.iter().any(|i| i.span_id == s.parent_span_id)));
    let first_send = sends
        .iter()
        .map(|s| s.start_time_unix_nano)
        .min()
        .expect("sends");
    assert!(first_send > handler.start_time_unix_nano);
}
