//! The simulator's `/metrics`: vLLM's Prometheus series with the values the
//! engine really has (queue, batch, KV usage, token counters, latency
//! histograms), written in the exposition format and bucket layout vLLM uses.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::request::FinishedRequest;

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// vLLM's `finished_reason` label values, in its order.
const FINISHED_REASONS: [&str; 5] = ["stop", "length", "abort", "error", "repetition"];

/// A cumulative Prometheus histogram.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }
}

#[derive(Debug)]
struct Histograms {
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
    inference: Histogram,
    prefill: Histogram,
    decode: Histogram,
}

/// Live engine state and cumulative counters, shared by the engine, the
/// response streams and the `/metrics` handler.
#[derive(Debug)]
pub(crate) struct Metrics {
    model: String,
    running: AtomicU64,
    waiting: AtomicU64,
    kv_usage_bits: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    finished_by_length: AtomicU64,
    histograms: Mutex<Histograms>,
}

impl Metrics {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            running: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            kv_usage_bits: AtomicU64::new(0f64.to_bits()),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            finished_by_length: AtomicU64::new(0),
            histograms: Mutex::new(Histograms {
                ttft: Histogram::new(TTFT_BUCKETS),
                itl: Histogram::new(ITL_BUCKETS),
                e2e: Histogram::new(REQUEST_BUCKETS),
                queue: Histogram::new(REQUEST_BUCKETS),
                inference: Histogram::new(REQUEST_BUCKETS),
                prefill: Histogram::new(REQUEST_BUCKETS),
                decode: Histogram::new(REQUEST_BUCKETS),
            }),
        }
    }

    /// The engine's batch state after a scheduling decision.
    pub fn set_batch(&self, running: usize, waiting: usize, kv_usage: f64) {
        self.running.store(running as u64, Ordering::Relaxed);
        self.waiting.store(waiting as u64, Ordering::Relaxed);
        self.kv_usage_bits
            .store(kv_usage.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// Requests in flight without an engine (deterministic mode).
    pub fn add_running(&self, delta: i64) {
        if delta >= 0 {
            self.running.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.running
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// A request's prompt went through prefill.
    pub fn add_prompt_tokens(&self, tokens: u32) {
        self.prompt_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
    }

    /// One output token was produced.
    pub fn add_generation_token(&self) {
        self.generation_tokens.fetch_add(1, Ordering::Relaxed);
    }

    /// Observes a finished request's latencies.
    pub fn record_finished(&self, request: &FinishedRequest) {
        let phases = request.phases();
        self.finished_by_length.fetch_add(1, Ordering::Relaxed);
        let mut h = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        h.ttft.observe(phases.ttft);
        for gap in request.inter_token_gaps() {
            h.itl.observe(gap);
        }
        h.e2e.observe(phases.e2e);
        h.queue.observe(phases.queue);
        h.inference.observe(phases.inference());
        h.prefill.observe(phases.prefill);
        h.decode.observe(phases.decode);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let labels = format!("engine=\"0\",model_name=\"{}\"", escape_label(&self.model));
        let mut out = String::with_capacity(16 * 1024);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let scalar = |out: &mut String, name: &str, kind: &str, help: &str, value: f64| {
            family_header(out, name, kind, help);
            let _ = writeln!(out, "{name}{{{labels}}} {}", py_float(value));
        };
        scalar(
            &mut out,
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            load(&self.running),
        );
        scalar(
            &mut out,
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            load(&self.waiting),
        );
        scalar(
            &mut out,
            "vllm:kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            f64::from_bits(self.kv_usage_bits.load(Ordering::Relaxed)),
        );
        scalar(
            &mut out,
            "vllm:num_preemptions_total",
            "counter",
            "Cumulative number of preemption from the engine.",
            0.0,
        );
        scalar(
            &mut out,
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            load(&self.prompt_tokens),
        );
        scalar(
            &mut out,
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            load(&self.generation_tokens),
        );
        family_header(
            &mut out,
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
        );
        for reason in FINISHED_REASONS {
            let value = if reason == "length" {
                load(&self.finished_by_length)
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                "vllm:request_success_total{{engine=\"0\",finished_reason=\"{reason}\",model_name=\"{}\"}} {}",
                escape_label(&self.model),
                py_float(value)
            );
        }
        let h = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        let families: [(&str, &str, &Histogram); 7] = [
            (
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &h.ttft,
            ),
            (
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                &h.itl,
            ),
            (
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                &h.e2e,
            ),
            (
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                &h.queue,
            ),
            (
                "vllm:request_inference_time_seconds",
                "Histogram of time spent in RUNNING phase for request.",
                &h.inference,
            ),
            (
                "vllm:request_prefill_time_seconds",
                "Histogram of time spent in PREFILL phase for request.",
                &h.prefill,
            ),
            (
                "vllm:request_decode_time_seconds",
                "Histogram of time spent in DECODE phase for request.",
                &h.decode,
            ),
        ];
        for (name, help, histogram) in families {
            family_header(&mut out, name, "histogram", help);
            for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{engine=\"0\",le=\"{}\",model_name=\"{}\"}} {}",
                    py_float(*bound),
                    escape_label(&self.model),
                    py_float(*count as f64)
                );
            }
            let count = py_float(histogram.count as f64);
            let _ = writeln!(
                out,
                "{name}_bucket{{engine=\"0\",le=\"+Inf\",model_name=\"{}\"}} {count}",
                escape_label(&self.model)
            );
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", py_float(histogram.sum));
        }
        out
    }
}

fn family_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A number the way Python's prometheus client prints it (`3.0`, `0.25`).
fn py_float(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e16 {
        format!("{value:.1}")
    } else {
        format!("{value}")
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::request::tests::finished;

    /// `name_bucket` `le` values of a family in a text exposition.
    fn bucket_bounds(text: &str, family: &str) -> Vec<String> {
        let prefix = format!("{family}_bucket{{");
        text.lines()
            .filter(|line| line.starts_with(&prefix))
            .filter_map(|line| {
                line.split("le=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn bucket_layout_and_headers_match_vllm() {
        let text = Metrics::new("m").render();
        let vllm = crate::testing::fixture_text("vllm/metrics.prom");
        for family in [
            "vllm:time_to_first_token_seconds",
            "vllm:inter_token_latency_seconds",
            "vllm:e2e_request_latency_seconds",
            "vllm:request_queue_time_seconds",
            "vllm:request_inference_time_seconds",
            "vllm:request_prefill_time_seconds",
            "vllm:request_decode_time_seconds",
        ] {
            assert_eq!(
                bucket_bounds(&text, family),
                bucket_bounds(&vllm, family),
                "{family}"
            );
            let header = format!("# TYPE {family} histogram");
            assert!(vllm.contains(&header) && text.contains(&header), "{family}");
        }
        for line in text.lines().filter(|l| l.starts_with("# HELP")) {
            assert!(vllm.contains(line), "HELP differs from vLLM: {line}");
        }
    }

    #[test]
    fn values_follow_the_engine_and_finished_requests() {
        let metrics = Metrics::new("sim \"x\"");
        metrics.set_batch(3, 5, 0.25);
        metrics.add_prompt_tokens(7);
        metrics.add_generation_token();
        metrics.record_finished(&finished(10, &[30, 40, 55]));
        let text = metrics.render();
        let labels = r#"{engine="0",model_name="sim \"x\""}"#;
        assert!(text.contains(&format!("vllm:num_requests_running{labels} 3.0")));
        assert!(text.contains(&format!("vllm:num_requests_waiting{labels} 5.0")));
        assert!(text.contains(&format!("vllm:kv_cache_usage_perc{labels} 0.25")));
        assert!(text.contains(&format!("vllm:prompt_tokens_total{labels} 7.0")));
        assert!(text.contains(&format!("vllm:generation_tokens_total{labels} 1.0")));
        assert!(text.contains(r#"vllm:request_success_total{engine="0",finished_reason="length",model_name="sim \"x\""} 1.0"#));
        assert!(text.contains(&format!(
            "vllm:inter_token_latency_seconds_count{labels} 2.0"
        )));
        assert!(text.contains(r#"vllm:time_to_first_token_seconds_bucket{engine="0",le="0.02",model_name="sim \"x\""} 0.0"#));
        assert!(text.contains(r#"vllm:time_to_first_token_seconds_bucket{engine="0",le="0.04",model_name="sim \"x\""} 1.0"#));
        assert!(text.contains(&format!("vllm:request_queue_time_seconds_sum{labels} 0.01")));
    }
}
