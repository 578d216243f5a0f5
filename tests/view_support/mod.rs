//! Synthetic run folders for the report, history and compare tests: records with
//! client timings, joined server views and errors, plus run.json, summary.json,
//! spans, GPU telemetry and server metrics, written as a real run writes them.
#![allow(dead_code)]

use serde_json::json;
use std::path::Path;
use tracebench::analysis::{decompose, summarize, Slo, Summary};
use tracebench::record::{
    rewrite_records, ConnectionInfo, CountSource, Endpoint, ErrorKind, Instants, RequestError,
    RequestRecord, ServerView,
};

/// What to put into a synthetic run.
#[derive(Debug, Clone)]
pub struct SyntheticRun {
    pub run_id: String,
    pub model: String,
    pub started_unix_ns: u64,
    pub requests: u64,
    pub concurrency: u64,
    /// Join a server span to every successful request.
    pub with_server: bool,
    /// Every n-th request fails (0: none fail).
    pub fail_every: u64,
    pub with_telemetry: bool,
    pub partial: bool,
    pub seed: u64,
}

impl SyntheticRun {
    pub fn new(run_id: &str, requests: u64) -> Self {
        SyntheticRun {
            run_id: run_id.to_string(),
            model: "tiny".into(),
            started_unix_ns: 1_795_333_865_000_000_000,
            requests,
            concurrency: 8,
            with_server: true,
            fail_every: 17,
            with_telemetry: true,
            partial: false,
            seed: 7,
        }
    }
}

/// A deterministic xorshift generator, enough for varied test data.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in 0..1.
    pub fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

const MS: u64 = 1_000_000;

/// Builds the records of a run: queue time grows with concurrency and load.
pub fn synthetic_records(run: &SyntheticRun) -> Vec<RequestRecord> {
    let mut noise = Noise::new(run.seed);
    let interval_ms = 40.0 / run.concurrency as f64 * 8.0;
    (0..run.requests)
        .map(|i| {
            let sent = (i as f64 * interval_ms * MS as f64) as u64 + 5 * MS;
            let lag_ms = noise.next() * 2.0;
            let intended = sent.saturating_sub((lag_ms * MS as f64) as u64);
            let input_tokens = 200 + (noise.next() * 800.0) as u64;
            let output_tokens = 16 + (noise.next() * 48.0) as u64;
            let network_ms = 0.5 + noise.next() * 2.0;
            let frontend_ms = 2.0 + noise.next() * 3.0;
            let load = ((i % 40) as f64 / 40.0) * run.concurrency as f64;
            let queue_ms = load * (3.0 + noise.next() * 6.0);
            let prefill_ms = 10.0 + input_tokens as f64 * 0.05;
            let tpot_ms = 6.0 + noise.next() * 4.0 + run.concurrency as f64 * 0.2;
            let decode_ms = tpot_ms * (output_tokens - 1) as f64;
            let ttft_ms = network_ms + frontend_ms + queue_ms + prefill_ms;
            let streaming_ms = decode_ms + 0.3;
            let first_token = sent + (ttft_ms * MS as f64) as u64;
            let last_token = first_token + (streaming_ms * MS as f64) as u64;
            let end = last_token + MS / 2;
            let sent_unix_ns = run.started_unix_ns + sent;
            let trace_id = format!("{:032x}", ((run.seed as u128) << 64) + i as u128 + 1);
            let fails = run.fail_every > 0 && i % run.fail_every == run.fail_every - 1;
            let mut record = RequestRecord {
                schema: "tracebench.request/1".into(),
                run_id: run.run_id.clone(),
                request_id: format!("{}-{i}", run.run_id),
                index: i,
                warmup: i < 2,
                endpoint: Endpoint::Chat,
                model: run.model.clone(),
                stream: true,
                trace_id: Some(trace_id.parse().expect("32 hex characters")),
                span_id: Some(format!("{:016x}", i + 1)),
                max_tokens: Some(64),
                input_tokens: Some(input_tokens),
                input_tokens_source: Some(CountSource::Usage),
                output_tokens: Some(output_tokens),
                output_tokens_source: Some(CountSource::Usage),
                status: Some(200),
                response_id: Some(format!("chatcmpl-{i:08x}")),
                finish_reason: Some("length".into()),
                error: None,
                connection: Some(ConnectionInfo {
                    reused: true,
                    connect_ms: None,
                    tls_ms: None,
                }),
                sent_unix_ns,
                instants_ns: Instants {
                    intended,
                    sent,
                    written: Some(sent + MS / 20),
                    headers: Some(sent + MS),
                    first_byte: Some(sent + MS),
                    first_token: Some(first_token),
                    last_token: Some(last_token),
                    end: Some(end),
                },
                ttft_ms: Some((first_token - sent) as f64 / 1e6),
                e2e_ms: Some((last_token - sent) as f64 / 1e6),
                e2e_end_ms: Some((end - sent) as f64 / 1e6),
                tpot_ms: Some((last_token - first_token) as f64 / 1e6 / (output_tokens - 1) as f64),
                schedule_lag_ms: (sent - intended) as f64 / 1e6,
                chunks: output_tokens,
                itl_chunk_ms: vec![
                    (last_token - first_token) as f64
                        / 1e6
                        / (output_tokens - 1) as f64;
                    output_tokens as usize - 1
                ],
                itl_token_ms: None,
                session_id: None,
                turn: None,
                ttfo_ms: None,
                reasoning_tokens: None,
                answer_tokens: None,
                cached_tokens: None,
                multi_token_chunks: None,
                images: None,
                ttft_method: Default::default(),
                reply: None,
                server: None,
                server_missing_reason: Some("no_span".into()),
                decomposition: None,
                trace_url: Some(format!("http://127.0.0.1:16686/trace/{trace_id}")),
                gpu: None,
                shard: None,
                source: None,
            };
            if fails {
                record.error = Some(if (i / run.fail_every).is_multiple_of(2) {
                    RequestError {
                        kind: ErrorKind::HttpStatus,
                        message: "HTTP 503 <script>window.__xss=1</script>".into(),
                        status: Some(503),
                        body_excerpt: Some(
                            "{\"error\":\"<img src=x onerror=\\\"window.__xss=2\\\">\"}".into(),
                        ),
                    }
                } else {
                    RequestError {
                        kind: ErrorKind::Stream,
                        message: "stream reset after 3 events".into(),
                        status: None,
                        body_excerpt: None,
                    }
                });
                record.status = Some(503);
                record.ttft_ms = None;
                record.e2e_ms = None;
                record.tpot_ms = None;
                record.output_tokens = None;
                record.itl_chunk_ms.clear();
                record.instants_ns.first_token = None;
                record.instants_ns.last_token = None;
                record.server_missing_reason = Some("failed".into());
            } else if run.with_server {
                let server_start = sent_unix_ns + (network_ms * 0.5 * MS as f64) as u64;
                let server_e2e = frontend_ms + queue_ms + prefill_ms + decode_ms;
                record.server = Some(ServerView {
                    engine: "vllm".into(),
                    span_name: "llm_request".into(),
                    service_name: Some("vllm".into()),
                    span_id: format!("{:016x}", 0xabc0_0000 + i),
                    queue_ms: Some(queue_ms),
                    prefill_ms: Some(prefill_ms),
                    decode_ms: Some(decode_ms),
                    inference_ms: Some(prefill_ms + decode_ms),
                    ttft_ms: Some(frontend_ms + queue_ms + prefill_ms),
                    e2e_ms: Some(server_e2e),
                    prompt_tokens: Some(input_tokens),
                    completion_tokens: Some(output_tokens),
                    request_id: record.response_id.clone(),
                    start_unix_ns: server_start,
                    end_unix_ns: server_start + (server_e2e * MS as f64) as u64,
                    attributes: serde_json::Map::from_iter([(
                        "gen_ai.request.max_tokens".to_string(),
                        json!(64),
                    )]),
                });
                record.server_missing_reason = None;
                record.decomposition = decompose(&record);
            }
            if i == 3 {
                record.request_id = "\"><img src=x onerror=\"window.__xss=3\">".into();
                record.trace_url = Some("javascript:window.__xss=4".into());
            }
            record
        })
        .collect()
}

/// The SLOs the synthetic summaries use.
pub fn synthetic_slo() -> Slo {
    Slo {
        ttft_ms: Some(120.0),
        ..Slo::default()
    }
}

/// Writes a complete run folder and returns its records and summary.
pub fn write_run_folder(dir: &Path, run: &SyntheticRun) -> (Vec<RequestRecord>, Summary) {
    std::fs::create_dir_all(dir).expect("create run folder");
    let records = synthetic_records(run);
    rewrite_records(&dir.join("requests.jsonl"), &records).expect("write requests.jsonl");
    let summary = summarize(&run.run_id, &records, &synthetic_slo(), run.partial);
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(&summary).expect("summary json"),
    )
    .expect("write summary.json");
    let last_end = records
        .iter()
        .filter_map(|r| r.instants_ns.end)
        .max()
        .unwrap_or(0);
    let run_json = json!({
        "schema": "tracebench.run/1",
        "run_id": run.run_id,
        "started_unix_ns": run.started_unix_ns,
        "ended_unix_ns": run.started_unix_ns + last_end,
        "partial": run.partial,
        "tool": {"name": "tracebench", "version": "0.1.0", "git_commit": "abc1234"},
        "host": {"hostname": "bench-<host>", "os": "linux", "cpus": 16},
        "command_line": format!("tracebench run --url http://127.0.0.1:8000 --model {} --concurrency {} --requests {}", run.model, run.concurrency, run.requests),
        "model": run.model,
        "config": {"url": "http://127.0.0.1:8000", "model": null,
                   "schedule": {"mode": "closed", "concurrency": run.concurrency},
                   "stop": {"requests": run.requests}, "slo": {"ttft_ms": 120.0}},
        "server": {"url": "http://127.0.0.1:8000", "version": {"version": "0.32.0"},
                   "models": {"object": "list", "data": [{"id": run.model, "object": "model"}]}},
        "notes": ["synthetic run </pre><b>for tests</b>"],
    });
    std::fs::write(
        dir.join("run.json"),
        serde_json::to_vec_pretty(&run_json).expect("run json"),
    )
    .expect("write run.json");
    let mut spans = String::new();
    for r in &records {
        let Some(server) = &r.server else { continue };
        let line = json!({
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "vllm"}}]},
            "scope": {"name": "vllm.tracing.otel"},
            "span": {
                "traceId": r.trace_id, "spanId": server.span_id, "parentSpanId": r.span_id,
                "name": "llm_request", "kind": 2,
                "startTimeUnixNano": server.start_unix_ns.to_string(),
                "endTimeUnixNano": server.end_unix_ns.to_string(),
                "attributes": [{"key": "gen_ai.latency.time_in_queue", "value": {"doubleValue": server.queue_ms.unwrap_or(0.0) / 1e3}}]
            }
        });
        spans.push_str(&line.to_string());
        spans.push('\n');
    }
    std::fs::write(dir.join("spans.jsonl"), spans).expect("write spans.jsonl");
    if run.with_telemetry {
        write_telemetry(dir, run, last_end);
    }
    (records, summary)
}

fn write_telemetry(dir: &Path, run: &SyntheticRun, last_end_ns: u64) {
    let mut gpu = String::new();
    let mut metrics = String::new();
    let seconds = last_end_ns / 1_000_000_000 + 1;
    for step in 0..seconds * 2 {
        let t_ns = step * 500 * MS;
        let unix_ns = run.started_unix_ns + t_ns;
        let busy = ((step % 20) as f64 / 20.0).min(0.9);
        if step == 5 {
            let gap = json!({"schema": "tracebench.gpu_sample/1", "t_ns": t_ns, "unix_ns": unix_ns, "source": "nvml", "gap": "nvml timeout"});
            gpu.push_str(&format!("{gap}\n"));
        } else {
            for device in 0..2 {
                let sample = json!({
                    "schema": "tracebench.gpu_sample/1", "t_ns": t_ns, "unix_ns": unix_ns, "source": "nvml",
                    "host": "bench", "gpu": device.to_string(), "uuid": format!("GPU-{device}"), "name": "NVIDIA H100",
                    "memory_used_mib": 60000.0 + busy * 8000.0 + device as f64 * 500.0, "memory_total_mib": 81559.0,
                    "gpu_util_pct": busy * 100.0, "mem_util_pct": busy * 60.0, "power_w": 150.0 + busy * 400.0,
                    "energy_j": step as f64 * 200.0, "temperature_c": 55.0, "sm_clock_mhz": 1980.0
                });
                gpu.push_str(&format!("{sample}\n"));
            }
        }
        let line = if step == 7 {
            json!({"schema": "tracebench.server_metrics/1", "t_ns": t_ns, "unix_ns": unix_ns, "url": "http://127.0.0.1:8000/metrics", "engine": "vllm", "gap": "connection refused"})
        } else {
            json!({
                "schema": "tracebench.server_metrics/1", "t_ns": t_ns, "unix_ns": unix_ns,
                "url": "http://127.0.0.1:8000/metrics", "engine": "vllm",
                "running": (busy * run.concurrency as f64).round(), "waiting": ((busy - 0.5).max(0.0) * 10.0).round(),
                "kv_cache_usage": busy * 0.8, "preemptions_total": 0, "prompt_tokens_total": step * 500,
                "generation_tokens_total": step * 40, "raw": {"vllm:num_requests_running{model_name=\"tiny\"}": busy}
            })
        };
        metrics.push_str(&format!("{line}\n"));
    }
    std::fs::write(dir.join("telemetry.jsonl"), gpu).expect("write telemetry.jsonl");
    std::fs::write(dir.join("server_metrics.jsonl"), metrics).expect("write server_metrics.jsonl");
}
