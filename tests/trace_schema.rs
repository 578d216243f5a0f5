//! `schemas/span.schema.json` against real `spans.jsonl` lines: the receiver
//! writes vLLM, SGLang and TGI spans, and every line must validate; lines
//! with broken ids must not.

mod trace_support;

use tracebench::testing::fixture_bytes;
use tracebench::trace::receiver::{Receiver, ReceiverConfig};

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../schemas/span.schema.json"))
            .expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

#[tokio::test]
async fn received_span_lines_validate() {
    tracebench::client::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let spans_path = dir.path().join("spans.jsonl");
    let config = ReceiverConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        spans_path.clone(),
    );
    let receiver = Receiver::start(config, None).await.unwrap();
    let client = reqwest::Client::new();
    for (file, content_type) in [
        ("vllm/concurrent-12.spans.pb", "application/x-protobuf"),
        ("vllm/untraced-chat.spans.pb", "application/x-protobuf"),
        (
            "sglang/chat-stream.no-overlap.otlp.json",
            "application/json",
        ),
        (
            "tgi/chat-stream.request-trace.otlp.json",
            "application/json",
        ),
        (
            "tgi/chat-stream.batch-traces.sample.otlp.json",
            "application/json",
        ),
        ("otlp/trace.json", "application/json"),
    ] {
        let response = client
            .post(format!("http://{}/v1/traces", receiver.http_addr()))
            .header("content-type", content_type)
            .body(fixture_bytes(file))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{file}");
    }
    let accepted = receiver.shutdown().await.unwrap().accepted_spans;

    let validator = validator();
    let text = std::fs::read_to_string(&spans_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, accepted);
    for line in &lines {
        let errors: Vec<String> = validator.iter_errors(line).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}\n{line}");
    }
    // The schema is not vacuous: a short trace id or a missing span is refused.
    let mut broken = lines[0].clone();
    broken["span"]["traceId"] = "0011".into();
    assert!(!validator.is_valid(&broken));
    let mut no_span = lines[0].clone();
    no_span.as_object_mut().unwrap().remove("span");
    assert!(!validator.is_valid(&no_span));
}
