//! Client spans exported with opentelemetry-otlp into our own receiver, over
//! gRPC and HTTP, fed one record at a time or all at once: the ids are the
//! ones sent in `traceparent`, so the server's span (parented on them) is the
//! client span's child.

mod trace_support;

use std::sync::{Arc, Mutex};
use trace_support::{record, Timing};
use tracebench::testing::fixture_bytes;
use tracebench::trace::receiver::{Receiver, ReceiverConfig};
use tracebench::trace::span::{decode_protobuf, for_each_span_in_jsonl, SpanKind};
use tracebench::trace::store::SpanStore;
use tracebench::trace::{export_client_spans, ClientSpanExporter, OtlpEndpoint};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_spans_parent_the_server_span() {
    for scheme in ["grpc", "http"] {
        let dir = tempfile::tempdir().unwrap();
        let spans_path = dir.path().join("spans.jsonl");
        let config = ReceiverConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            spans_path.clone(),
        );
        let store = Arc::new(Mutex::new(SpanStore::new()));
        let receiver = Receiver::start(config, Some(store.clone())).await.unwrap();

        // The traced-chat capture: traceparent 00-00112233...-0123456789abcdef-01.
        let timing = Timing {
            sent_unix_ns: 1_795_333_000_000_000_000,
            sent: 1_000,
            first_token: 31_001_000,
            last_token: 67_001_000,
            end: 68_001_000,
        };
        let traced = record(
            "traced",
            Some("00112233445566778899aabbccddeeff"),
            Some("0123456789abcdef"),
            &timing,
        );
        let untraced = record("untraced", None, None, &timing);
        let url = match scheme {
            "grpc" => format!("grpc://{}", receiver.grpc_addr()),
            _ => format!("http://{}", receiver.http_addr()),
        };
        let endpoint = OtlpEndpoint::parse(&url, "--export-client-spans").unwrap();
        let exported = if scheme == "grpc" {
            let mut exporter = ClientSpanExporter::new(&endpoint).unwrap();
            for record in [&traced, &untraced] {
                exporter.add(record).await.unwrap();
            }
            exporter.finish().await.unwrap()
        } else {
            export_client_spans(&[traced, untraced], &endpoint)
                .await
                .unwrap()
        };
        assert_eq!(
            exported, 1,
            "{scheme}: the untraced record has no client span"
        );
        let server = decode_protobuf(&fixture_bytes("vllm/traced-chat.spans.pb")).unwrap();
        let mut client = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(
            format!("http://{}", receiver.grpc_addr()),
        )
        .await
        .unwrap();
        client.export(server).await.unwrap();
        let counters = receiver.shutdown().await.unwrap();
        assert_eq!(
            counters.accepted_spans, 2,
            "{scheme}: one client span (the untraced record has none) + one server span"
        );

        let mut spans = Vec::new();
        for_each_span_in_jsonl(&spans_path, |s| spans.push(s)).unwrap();
        let client_span = spans
            .iter()
            .find(|s| s.kind == SpanKind::Client)
            .expect("client span");
        let server_span = spans
            .iter()
            .find(|s| s.name == "llm_request")
            .expect("server span");
        assert_eq!(
            client_span.trace_id.to_string(),
            "00112233445566778899aabbccddeeff"
        );
        assert_eq!(client_span.span_id_hex(), "0123456789abcdef");
        assert_eq!(client_span.parent_span_id, None);
        assert_eq!(server_span.trace_id, client_span.trace_id);
        assert_eq!(
            server_span.parent_span_id,
            Some(client_span.span_id),
            "the server span is the client span's child"
        );
        assert_eq!(client_span.name, "POST /v1/chat/completions");
        assert_eq!(client_span.service_name.as_deref(), Some("tracebench"));
        assert_eq!(client_span.scope_name, "tracebench");
        assert_eq!(client_span.start_unix_ns, 1_795_333_000_000_000_000);
        assert_eq!(
            client_span.end_unix_ns,
            1_795_333_000_000_000_000 + 68_000_000
        );
        assert_eq!(client_span.attributes["tracebench.request_id"], "traced");
        assert_eq!(client_span.attributes["tracebench.ttft_ms"], 31.0);
        assert_eq!(client_span.attributes["gen_ai.usage.output_tokens"], 64);
        let store = store.lock().unwrap();
        assert_eq!(store.trace_span_count(&client_span.trace_id), 2);
    }
}

#[tokio::test]
async fn client_span_events_mark_first_and_last_token() {
    let timing = Timing {
        sent_unix_ns: 5_000_000_000,
        sent: 100,
        first_token: 200,
        last_token: 900,
        end: 1000,
    };
    let traced = record(
        "t",
        Some("00112233445566778899aabbccddeeff"),
        Some("0123456789abcdef"),
        &timing,
    );
    let data = tracebench::trace::client_span::client_span_data(&traced).unwrap();
    let at = |name: &str| {
        data.events.iter().find(|e| e.name == name).map(|e| {
            e.timestamp
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
    };
    assert_eq!(at("first_token"), Some(5_000_000_100));
    assert_eq!(at("last_token"), Some(5_000_000_800));
    assert_eq!(data.span_kind, opentelemetry::trace::SpanKind::Client);
    let error = OtlpEndpoint::parse("ftp://nowhere", "--export-client-spans").unwrap_err();
    assert!(
        error.to_string().contains("--export-client-spans"),
        "{error}"
    );
}
