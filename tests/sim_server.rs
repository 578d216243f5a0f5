//! The simulator over real HTTP: response shapes against vLLM's captured
//! fixtures, vLLM's errors, `/tokenize` and friends, `/metrics` following the
//! engine, client disconnects, and 2,000 concurrent deterministic streams
//! checked against the truth log.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use tracebench::sim::{spawn, SimArgs, SimServer};

/// The fixtures' prompt: 13 words, so 13 tokens for the simulator.
const PROMPT: &str = "the model serves tokens quickly while the queue waits for prefill and decode";

fn fixture(name: &str) -> String {
    tracebench::testing::fixture_text(&format!("vllm/{name}"))
}

fn client() -> reqwest::Client {
    // Only plain HTTP is used, but reqwest needs a TLS provider to build.
    tracebench::client::install_tls_provider();
    reqwest::Client::builder().build().expect("HTTP client")
}

/// A fast deterministic simulator (1 ms to the first token, 1 ms apart).
fn fast_args() -> SimArgs {
    SimArgs {
        port: 0,
        ttft_ms: Some(1.0),
        itl_ms: Some(1.0),
        ..SimArgs::default()
    }
}

async fn start(args: SimArgs) -> SimServer {
    spawn(args).await.expect("simulator starts")
}

/// Keys per level (sorted), with every leaf reduced to its JSON type.
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        other => other.clone(),
    }
}

/// The JSON events of an SSE body, and whether it ended with `[DONE]`.
fn sse_events(body: &str) -> (Vec<Value>, bool) {
    let data: Vec<&str> = body
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .collect();
    let done = data.last() == Some(&"[DONE]");
    let events = data
        .iter()
        .filter(|d| **d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("event is JSON"))
        .collect();
    (events, done)
}

async fn post(
    server: &SimServer,
    path: &str,
    body: &Value,
    request_id: Option<&str>,
) -> reqwest::Response {
    let mut request = client().post(format!("{}{path}", server.url())).json(body);
    if let Some(id) = request_id {
        request = request.header("X-Request-Id", id);
    }
    request.send().await.expect("request sent")
}

fn chat_body(max_tokens: u64, stream_options: Value) -> Value {
    json!({
        "model": "tracebench-sim",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": true,
        "stream_options": stream_options,
        "ignore_eos": true,
    })
}

#[tokio::test]
async fn chat_stream_has_vllms_event_sequence_and_shapes() {
    let server = start(fast_args()).await;
    let response = post(
        &server,
        "/v1/chat/completions",
        &chat_body(16, json!({"include_usage": true})),
        Some("abc123"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let (ours, done) = sse_events(&response.text().await.expect("body"));
    let (theirs, _) = sse_events(&fixture("chat-stream.sse"));
    assert!(done);
    assert_eq!(
        ours.len(),
        theirs.len(),
        "role chunk, 16 token chunks, usage chunk"
    );
    for (index, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(shape(a), shape(b), "event {index}");
        assert_eq!(a["id"], "chatcmpl-abc123");
    }
    assert_eq!(
        ours[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(ours[16]["choices"][0]["finish_reason"], "length");
    assert!(ours[1..16]
        .iter()
        .all(|e| e["choices"][0]["finish_reason"].is_null()));
    assert_eq!(
        ours[17]["usage"],
        json!({"prompt_tokens": 13, "total_tokens": 29, "completion_tokens": 16})
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn completions_and_continuous_usage_streams_match_their_fixtures() {
    let server = start(fast_args()).await;
    let body = json!({"model": "tracebench-sim", "prompt": PROMPT, "max_tokens": 16, "stream": true,
                      "stream_options": {"include_usage": true}, "ignore_eos": true});
    let text = post(&server, "/v1/completions", &body, None)
        .await
        .text()
        .await
        .expect("body");
    let (ours, done) = sse_events(&text);
    let (theirs, _) = sse_events(&fixture("completions-stream.sse"));
    assert!(done);
    assert_eq!(
        ours.iter().map(shape).collect::<Vec<_>>(),
        theirs.iter().map(shape).collect::<Vec<_>>()
    );
    let id = ours[0]["id"].as_str().expect("id");
    assert!(
        id.starts_with("cmpl-") && id.len() == "cmpl-".len() + 16,
        "{id}"
    );
    assert_eq!(ours[16]["usage"]["prompt_tokens"], 13);

    let body = chat_body(
        16,
        json!({"include_usage": true, "continuous_usage_stats": true}),
    );
    let text = post(&server, "/v1/chat/completions", &body, None)
        .await
        .text()
        .await
        .expect("body");
    let (ours, _) = sse_events(&text);
    let (theirs, _) = sse_events(&fixture("chat-stream-continuous-usage.sse"));
    assert_eq!(
        ours.iter().map(shape).collect::<Vec<_>>(),
        theirs.iter().map(shape).collect::<Vec<_>>()
    );
    let counts: Vec<u64> = ours[..17]
        .iter()
        .map(|e| e["usage"]["completion_tokens"].as_u64().expect("count"))
        .collect();
    assert_eq!(counts, (0..=16).collect::<Vec<_>>());

    let no_usage = post(
        &server,
        "/v1/chat/completions",
        &chat_body(3, json!({})),
        None,
    )
    .await;
    let (events, done) = sse_events(&no_usage.text().await.expect("body"));
    assert!(done);
    assert_eq!(
        events.len(),
        4,
        "role chunk and 3 token chunks, no usage chunk"
    );
    assert!(events.iter().all(|e| e.get("usage").is_none()));
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn non_streaming_responses_match_vllms_shapes() {
    let server = start(fast_args()).await;
    let chat = json!({"model": "tracebench-sim", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16});
    let response = post(&server, "/v1/chat/completions", &chat, Some("n1")).await;
    assert_eq!(response.status(), 200);
    let ours: Value = response.json().await.expect("JSON");
    let theirs: Value =
        serde_json::from_str(&fixture("chat-nonstream.json")).expect("fixture JSON");
    assert_eq!(shape(&ours), shape(&theirs));
    assert_eq!(ours["id"], "chatcmpl-n1");
    assert_eq!(ours["usage"]["completion_tokens"], 16);
    assert_eq!(
        ours["choices"][0]["message"]["content"]
            .as_str()
            .map(|t| t.split_whitespace().count()),
        Some(16)
    );

    let completion = json!({"model": "tracebench-sim", "prompt": PROMPT, "max_tokens": 16});
    let ours: Value = post(&server, "/v1/completions", &completion, None)
        .await
        .json()
        .await
        .expect("JSON");
    let theirs: Value =
        serde_json::from_str(&fixture("completions-nonstream.json")).expect("fixture JSON");
    assert_eq!(shape(&ours), shape(&theirs));
    assert_eq!(
        ours["usage"],
        json!({"prompt_tokens": 13, "total_tokens": 29, "completion_tokens": 16,
                                     "prompt_tokens_details": null, "completion_tokens_details": null})
    );
    server.shutdown().await.expect("clean shutdown");
}

/// The JSON body of a raw fixture response (after the blank line).
fn fixture_error_body(name: &str) -> Value {
    let text = fixture(name);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .or_else(|| text.split("\n\n").nth(1))
        .expect("body");
    serde_json::from_str(body).expect("error JSON")
}

#[tokio::test]
async fn errors_have_vllms_status_and_body() {
    let server = start(fast_args()).await;
    let mut unknown = chat_body(16, json!({"include_usage": true}));
    unknown["model"] = json!("no-such-model");
    let response = post(&server, "/v1/chat/completions", &unknown, None).await;
    assert_eq!(response.status(), 404);
    let ours: Value = response.json().await.expect("JSON");
    let theirs = fixture_error_body("error-unknown-model.txt");
    assert_eq!(shape(&ours), shape(&theirs));
    assert_eq!(ours["error"]["type"], theirs["error"]["type"]);
    assert_eq!(
        ours["error"]["message"],
        "The model `no-such-model` does not exist. Valid aliases: tracebench-sim."
    );

    let response = post(
        &server,
        "/v1/chat/completions",
        &chat_body(5000, json!({})),
        None,
    )
    .await;
    assert_eq!(response.status(), 400);
    let ours: Value = response.json().await.expect("JSON");
    let theirs = fixture_error_body("error-max-tokens-too-large.txt");
    assert_eq!(shape(&ours), shape(&theirs));
    assert_eq!(
        (&ours["error"]["type"], &ours["error"]["param"]),
        (&theirs["error"]["type"], &theirs["error"]["param"])
    );
    assert!(ours["error"]["message"]
        .as_str()
        .expect("message")
        .starts_with("max_tokens=5000 cannot be greater than max_model_len=4096."));

    let malformed = r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":16,"stream":true"#;
    let response = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .header("content-type", "application/json")
        .body(malformed)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let ours: Value = response.json().await.expect("JSON");
    let theirs = fixture_error_body("error-malformed-json.txt");
    assert_eq!(shape(&ours), shape(&theirs));
    assert_eq!(
        (&ours["error"]["type"], &ours["error"]["param"]),
        (&theirs["error"]["type"], &theirs["error"]["param"])
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn output_is_capped_by_the_context_like_vllm() {
    let server = start(SimArgs {
        max_model_len: 64,
        ..fast_args()
    })
    .await;
    let body = json!({"model": "tracebench-sim", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 60});
    let ours: Value = post(&server, "/v1/chat/completions", &body, None)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(ours["usage"]["completion_tokens"], 64 - 13);
    assert_eq!(ours["choices"][0]["finish_reason"], "length");
    let no_max: Value = post(&server, "/v1/completions", &json!({"prompt": "a b"}), None)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        no_max["usage"]["completion_tokens"], 62,
        "default 128 capped to the context"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn tokenize_models_version_and_health() {
    let server = start(fast_args()).await;
    let counted: Value = post(
        &server,
        "/tokenize",
        &json!({"model": "tracebench-sim", "prompt": PROMPT}),
        None,
    )
    .await
    .json()
    .await
    .expect("JSON");
    assert_eq!(counted["count"], 13);
    assert_eq!(counted["max_model_len"], 4096);
    assert_eq!(counted["tokens"].as_array().map(Vec::len), Some(13));
    let messages = json!({"model": "tracebench-sim", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "three more words"}]}]});
    let counted: Value = post(&server, "/tokenize", &messages, None)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(counted["count"], 5);

    let models: Value = client()
        .get(format!("{}/v1/models", server.url()))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    let theirs: Value = serde_json::from_str(&fixture("models.json")).expect("fixture JSON");
    assert_eq!(shape(&models), shape(&theirs));
    assert_eq!(models["data"][0]["id"], "tracebench-sim");
    assert_eq!(models["data"][0]["max_model_len"], 4096);

    let version: Value = client()
        .get(format!("{}/version", server.url()))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        version["version"],
        concat!("tracebench-sim ", env!("CARGO_PKG_VERSION"))
    );
    let health = client()
        .get(format!("{}/health", server.url()))
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status(), 200);
    server.shutdown().await.expect("clean shutdown");
}

/// One sample of `/metrics` (labels `engine="0",model_name="tracebench-sim"`).
async fn metric(server: &SimServer, name: &str) -> f64 {
    let text = client()
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    let prefix = format!("{name}{{engine=\"0\",model_name=\"tracebench-sim\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Polls a metric until `done` holds (bounded).
async fn wait_for_metric(server: &SimServer, name: &str, done: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..500 {
        let value = metric(server, name).await;
        if done(value) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} never reached the expected value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_engine_under_load() {
    let args = SimArgs {
        port: 0,
        max_num_seqs: 2,
        decode_step_ms: 20.0,
        ..SimArgs::default()
    };
    let server = start(args).await;
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let url = format!("{}/v1/chat/completions", server.url());
            tokio::spawn(async move {
                client()
                    .post(url)
                    .json(&chat_body(20, json!({"include_usage": true})))
                    .send()
                    .await?
                    .text()
                    .await
            })
        })
        .collect();
    let waiting = wait_for_metric(&server, "vllm:num_requests_waiting", |v| v > 0.0).await;
    assert!(waiting <= 4.0);
    assert_eq!(metric(&server, "vllm:num_requests_running").await, 2.0);
    assert!(metric(&server, "vllm:kv_cache_usage_perc").await > 0.0);
    for request in requests {
        let body = request.await.expect("task").expect("response");
        assert!(body.ends_with("data: [DONE]\n\n"));
    }
    wait_for_metric(&server, "vllm:e2e_request_latency_seconds_count", |v| {
        v == 6.0
    })
    .await;
    assert_eq!(
        metric(&server, "vllm:prompt_tokens_total").await,
        6.0 * 13.0
    );
    assert_eq!(
        metric(&server, "vllm:generation_tokens_total").await,
        6.0 * 20.0
    );
    assert_eq!(metric(&server, "vllm:num_requests_running").await, 0.0);
    assert_eq!(metric(&server, "vllm:num_requests_waiting").await, 0.0);
    assert_eq!(
        metric(&server, "vllm:inter_token_latency_seconds_count").await,
        6.0 * 19.0
    );
    assert!(
        metric(&server, "vllm:request_queue_time_seconds_sum").await > 0.0,
        "4 of 6 requests queued"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_disconnect_frees_the_slot_and_records_nothing() {
    let args = SimArgs {
        port: 0,
        max_num_seqs: 1,
        ..SimArgs::default()
    };
    let server = start(args).await;
    let mut abandoned = post(
        &server,
        "/v1/chat/completions",
        &chat_body(4000, json!({})),
        None,
    )
    .await;
    abandoned
        .chunk()
        .await
        .expect("first chunk")
        .expect("stream open");
    drop(abandoned);
    // With the only slot still taken this would wait for 4,000 decode steps.
    let next = tokio::time::timeout(
        Duration::from_secs(20),
        post(
            &server,
            "/v1/chat/completions",
            &chat_body(5, json!({})),
            None,
        ),
    )
    .await
    .expect("the slot was freed");
    assert!(next
        .text()
        .await
        .expect("body")
        .ends_with("data: [DONE]\n\n"));
    wait_for_metric(&server, "vllm:e2e_request_latency_seconds_count", |v| {
        v >= 1.0
    })
    .await;
    assert_eq!(
        metric(&server, "vllm:e2e_request_latency_seconds_count").await,
        1.0,
        "no record for the aborted request"
    );
    assert!(metric(&server, "vllm:generation_tokens_total").await < 100.0);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_deterministic_streams_all_complete_and_are_in_the_truth_log() {
    const STREAMS: usize = 2000;
    const TOKENS: usize = 5;
    let dir = tempfile::tempdir().expect("temp dir");
    let truth_path = dir.path().join("truth.jsonl");
    let args = SimArgs {
        port: 0,
        ttft_ms: Some(50.0),
        itl_ms: Some(10.0),
        truth_log: Some(truth_path.clone()),
        ..SimArgs::default()
    };
    let server = start(args).await;
    let _ = client();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let url = format!("{}/v1/completions", server.url());
    let body = json!({"prompt": "a b c", "max_tokens": TOKENS, "stream": true});
    let requests = (0..STREAMS).map(|i| {
        let request = http
            .post(&url)
            .header("X-Request-Id", format!("r{i}"))
            .json(&body);
        async move {
            let text = request.send().await?.error_for_status()?.text().await?;
            Ok::<_, reqwest::Error>(text)
        }
    });
    let bodies = futures::future::join_all(requests).await;
    for body in bodies {
        let (events, done) = sse_events(&body.expect("stream completed"));
        assert!(done);
        assert_eq!(events.len(), TOKENS);
    }
    server.shutdown().await.expect("clean shutdown");

    let text = std::fs::read_to_string(&truth_path).expect("truth log");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), STREAMS);
    let ids: HashSet<&str> = lines
        .iter()
        .map(|l| l["request_id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        (0..STREAMS)
            .map(|i| format!("r{i}"))
            .collect::<HashSet<_>>()
            .iter()
            .map(String::as_str)
            .collect()
    );
    for line in &lines {
        let arrival = line["arrival_unix_ns"].as_u64().expect("arrival");
        let first_token = line["first_token_unix_ns"].as_u64().expect("first token");
        let writes: Vec<u64> = line["chunk_write_unix_ns"]
            .as_array()
            .expect("writes")
            .iter()
            .map(|w| w.as_u64().expect("instant"))
            .collect();
        assert_eq!(writes.len(), TOKENS);
        assert!(first_token >= arrival && writes[0] >= first_token);
        assert!(
            writes.windows(2).all(|w| w[0] < w[1]),
            "write instants increase"
        );
    }
}
