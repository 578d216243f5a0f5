//! The proxy in front of the deterministic simulator, over real HTTP and
//! real OTLP: streams and JSON answers of both APIs come back with their
//! metrics, other paths pass through byte for byte, the server's spans are
//! joined into the records it serves and writes, and its Prometheus text
//! counts what passed.

mod proxy_support;

use proxy_support::*;
use std::time::Duration;
use tracebench::record::RecordSource;

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../schemas/request.schema.json")).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_answers_come_back_measured_and_spans_join() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, proxy) = sim_and_proxy(dir.path(), Duration::from_secs(10)).await;
    let http = http();
    let chat = format!("{}/v1/chat/completions", proxy.url());

    // A stream that did not ask for usage: the usage chunk the proxy asked for
    // is gone, the metrics comment sits right before [DONE].
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let response = http
        .post(&chat)
        .header("x-request-id", "stream-1")
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&chat_body(true, 8))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = response.text().await.unwrap();
    assert!(!body.contains("\"usage\""), "{body}");
    assert!(
        body.ends_with("\n\ndata: [DONE]\n\n"),
        "the stream still ends with [DONE]: {body}"
    );
    let comment_at = body.find(": tracebench-metrics ").unwrap();
    assert!(comment_at > body.rfind("\"finish_reason\":\"length\"").unwrap());
    let metrics = metrics_comment(&body);
    assert_eq!(metrics["request_id"], "stream-1");
    assert_eq!(metrics["trace_id"], trace_id);
    assert_eq!(metrics["output_tokens"], 8);
    assert_eq!(metrics["chunks"], 8);
    let ttft = metrics["ttft_ms"].as_f64().unwrap();
    let tpot = metrics["tpot_ms"].as_f64().unwrap();
    assert!((TTFT_MS..TTFT_MS + 1000.0).contains(&ttft), "ttft {ttft}");
    assert!(
        (ITL_MS * 0.5..ITL_MS + 100.0).contains(&tpot),
        "tpot {tpot}"
    );
    let e2e = metrics["e2e_ms"].as_f64().unwrap();
    assert!(e2e >= TTFT_MS + 7.0 * ITL_MS * 0.5, "e2e {e2e}");

    // A stream that asked for usage keeps its usage chunk.
    let mut asked = chat_body(true, 4);
    asked["stream_options"] = serde_json::json!({"include_usage": true});
    let body = http
        .post(&chat)
        .json(&asked)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("\"choices\":[]") && body.contains("\"completion_tokens\":4"),
        "{body}"
    );
    assert_eq!(metrics_comment(&body)["output_tokens"], 4);

    // Metrics as a data event, when asked for.
    let body = http
        .post(&chat)
        .header(tracebench::proxy::METRICS_HEADER, "data")
        .json(&chat_body(true, 3))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains(": tracebench-metrics"));
    let event = body
        .split("\n\n")
        .find(|e| e.contains("tracebench.metrics"))
        .unwrap();
    let event: serde_json::Value =
        serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(event["metrics"]["output_tokens"], 3);

    // A JSON answer gets a metrics object and Server-Timing; its usage stays.
    let response = http
        .post(&chat)
        .header("x-request-id", "whole-1")
        .json(&chat_body(false, 5))
        .send()
        .await
        .unwrap();
    let timing = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        timing.starts_with("ttft;dur=") && timing.contains("e2e;dur="),
        "{timing}"
    );
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    assert_eq!(answer["metrics"]["output_tokens"], 5);
    assert_eq!(answer["metrics"]["request_id"], "whole-1");
    assert!(answer["metrics"]["e2e_ms"].as_f64().unwrap() >= TTFT_MS + 4.0 * ITL_MS * 0.5);

    // Completions, streamed.
    let body = http
        .post(format!("{}/v1/completions", proxy.url()))
        .json(&serde_json::json!({"model": "tiny", "prompt": "Once", "max_tokens": 6, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metrics_comment(&body)["output_tokens"], 6);

    // Other paths pass through (byte for byte: the scripted upstream's test;
    // the simulator's model list has a fresh permission id per call).
    for path in ["/v1/models", "/version", "/no/such/path"] {
        let direct = http
            .get(format!("{}{path}", sim.url()))
            .send()
            .await
            .unwrap();
        let proxied = http
            .get(format!("{}{path}", proxy.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(direct.status(), proxied.status(), "{path}");
        let direct: serde_json::Value = direct.json().await.unwrap_or_default();
        let proxied: serde_json::Value = proxied.json().await.unwrap_or_default();
        assert_eq!(direct["data"][0]["id"], proxied["data"][0]["id"], "{path}");
        assert_eq!(direct["version"], proxied["version"], "{path}");
    }

    // The server's span arrives after the answer and is joined.
    let joined = record_when(&proxy, "stream-1", |r| !r["server"].is_null()).await;
    assert_eq!(joined["source"], "proxy");
    assert_eq!(joined["trace_id"], trace_id);
    assert_ne!(
        joined["span_id"], "b7ad6b7169203331",
        "the proxy's own span is the parent"
    );
    assert!(joined["server"]["queue_ms"].is_number(), "{joined}");
    assert!(
        joined["decomposition"]["prefill_ms"].is_number(),
        "{joined}"
    );
    record_when(&proxy, "whole-1", |r| !r["server"].is_null()).await;

    let text = http
        .get(format!("{}/tracebench/metrics", proxy.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let families = openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("{e:?}\n{text}"))
        .families;
    assert!(
        families.contains_key("tracebench_proxy_queue_time_seconds"),
        "{text}"
    );
    assert!(
        text.contains(
            "tracebench_proxy_time_to_first_token_seconds_count{model=\"tiny\",status=\"200\"} 5"
        ),
        "{text}"
    );
    assert!(
        text.contains("tracebench_proxy_requests_total{model=\"\",status=\"200\"}"),
        "{text}"
    );
    let health = http
        .get(format!("{}/tracebench/health", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let outcome = proxy.shutdown().await.unwrap();
    sim.shutdown().await.unwrap();
    let records = records(&outcome.dir);
    assert_eq!(records.len(), 5, "one record per inference request");
    assert!(records
        .iter()
        .all(|r| r.source == Some(RecordSource::Proxy) && r.ok()));
    assert!(
        records.iter().all(|r| r.server.is_some()),
        "all joined: {records:?}"
    );
    assert_eq!(outcome.totals.joined, 5);
    let validator = validator();
    for line in std::fs::read_to_string(outcome.dir.join("requests.jsonl"))
        .unwrap()
        .lines()
    {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{line}");
    }
    for file in [
        "summary.json",
        "requests.csv",
        "report.html",
        "run.json",
        "spans.jsonl",
    ] {
        assert!(outcome.dir.join(file).is_file(), "{file}");
    }
    assert_eq!(outcome.summary.requests.total, 5);
}
