//! `GET /tracebench/metrics`: the proxy's own histograms (TTFT, ITL, TPOT,
//! E2E; queue and prefill once spans are joined) by model and status, and
//! counters of requests, errors and bytes, as Prometheus text (version 0.0.4),
//! named by Prometheus conventions (`tracebench_proxy_*`, base unit seconds,
//! `_total` counters). Distinct model labels are capped so a client cannot
//! grow the series without bound.

use crate::record::{ErrorKind, RequestRecord};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bucket upper bounds, seconds.
const BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

/// Distinct model labels kept; requests for further models count as `other`.
const MAX_MODELS: usize = 64;

/// The histograms, by name and help text, in exposition order.
const HISTOGRAMS: [(&str, &str); 6] = [
    (
        "tracebench_proxy_time_to_first_token_seconds",
        "Time from the request going upstream to its first token, at the proxy.",
    ),
    (
        "tracebench_proxy_inter_token_latency_seconds",
        "Gap between consecutive token-bearing chunks, at the proxy.",
    ),
    (
        "tracebench_proxy_time_per_output_token_seconds",
        "Mean time per output token after the first, at the proxy.",
    ),
    (
        "tracebench_proxy_e2e_request_latency_seconds",
        "Time from the request going upstream to its last token, at the proxy.",
    ),
    (
        "tracebench_proxy_queue_time_seconds",
        "Time the request waited in the server's queue, from its span.",
    ),
    (
        "tracebench_proxy_prefill_time_seconds",
        "Time the server spent on the prompt, from its span.",
    ),
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe_ms(&mut self, ms: f64) {
        let seconds = ms / 1e3;
        for (bound, count) in BUCKETS.iter().zip(self.buckets.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// One (model, status) series.
#[derive(Debug, Clone, Default)]
struct Series {
    histograms: [Histogram; HISTOGRAMS.len()],
    requests: u64,
}

#[derive(Debug, Default)]
struct Inner {
    series: BTreeMap<(String, String), Series>,
    errors: BTreeMap<(String, &'static str), u64>,
    models: usize,
}

/// The proxy's counters and histograms.
#[derive(Debug, Default)]
pub(crate) struct ProxyMetrics {
    inner: Mutex<Inner>,
    pub received_bytes: AtomicU64,
    pub sent_bytes: AtomicU64,
}

impl Inner {
    /// The label a model gets (`other` past the cap).
    fn model_label(&mut self, model: &str) -> String {
        let known = self.series.keys().any(|(m, _)| m == model);
        if known || self.models < MAX_MODELS {
            if !known {
                self.models += 1;
            }
            model.to_string()
        } else {
            "other".to_string()
        }
    }

    fn series(&mut self, model: &str, status: u16) -> &mut Series {
        let model = self.model_label(model);
        self.series.entry((model, status.to_string())).or_default()
    }
}

impl ProxyMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a finished request (measured or passed through) that the
    /// client got `status` for.
    pub fn count(&self, model: &str, status: u16, error: Option<ErrorKind>) {
        let mut inner = self.lock();
        inner.series(model, status).requests += 1;
        if let Some(kind) = error {
            let model = inner.model_label(model);
            *inner.errors.entry((model, kind.as_str())).or_default() += 1;
        }
    }

    /// Counts a measured request and its client-side latencies.
    pub fn observe(&self, record: &RequestRecord, status: u16) {
        self.count(&record.model, status, record.error.as_ref().map(|e| e.kind));
        let mut inner = self.lock();
        let series = inner.series(&record.model, status);
        let h = &mut series.histograms;
        if let Some(ttft) = record.ttft_ms {
            h[0].observe_ms(ttft);
        }
        for gap in &record.itl_chunk_ms {
            h[1].observe_ms(*gap);
        }
        if let Some(tpot) = record.tpot_ms {
            h[2].observe_ms(tpot);
        }
        if let Some(e2e) = record.e2e_ms {
            h[3].observe_ms(e2e);
        }
    }

    /// Adds the server's queue and prefill of a joined record.
    pub fn observe_join(&self, record: &RequestRecord, status: u16) {
        let Some(server) = &record.server else {
            return;
        };
        let mut inner = self.lock();
        let h = &mut inner.series(&record.model, status).histograms;
        if let Some(queue) = server.queue_ms {
            h[4].observe_ms(queue);
        }
        if let Some(prefill) = server.prefill_ms {
            h[5].observe_ms(prefill);
        }
    }

    /// The Prometheus text exposition, with `in_flight` requests being answered now.
    pub fn render(&self, in_flight: u64) -> String {
        let inner = self.lock();
        let mut out = String::with_capacity(16 << 10);
        for (i, (name, help)) in HISTOGRAMS.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for ((model, status), series) in &inner.series {
                let h = &series.histograms[i];
                if h.count == 0 {
                    continue;
                }
                let labels = format!("model=\"{}\",status=\"{status}\"", escape(model));
                for (bound, count) in BUCKETS.iter().zip(h.buckets) {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
                }
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
                let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
            }
        }
        let name = "tracebench_proxy_requests_total";
        let _ = writeln!(out, "# HELP {name} Requests answered, by model and the status the client got.\n# TYPE {name} counter");
        for ((model, status), series) in &inner.series {
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\",status=\"{status}\"}} {}",
                escape(model),
                series.requests
            );
        }
        let name = "tracebench_proxy_request_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Failed requests, by model and error kind.\n# TYPE {name} counter"
        );
        for ((model, kind), count) in &inner.errors {
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\",kind=\"{kind}\"}} {count}",
                escape(model)
            );
        }
        let counters = [
            (
                "tracebench_proxy_received_bytes_total",
                "Bytes of request bodies received from clients.",
                &self.received_bytes,
            ),
            (
                "tracebench_proxy_sent_bytes_total",
                "Bytes of response bodies sent to clients.",
                &self.sent_bytes,
            ),
        ];
        for (name, help, value) in counters {
            let value = value.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let name = "tracebench_proxy_requests_in_flight";
        let _ = writeln!(
            out,
            "# HELP {name} Requests being answered now.\n# TYPE {name} gauge\n{name} {in_flight}"
        );
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_parses_as_prometheus_and_counts_what_came() {
        let metrics = ProxyMetrics::default();
        let mut record = crate::trace::test_support::record("a", None);
        record.itl_chunk_ms = vec![2.0, 4.0];
        metrics.observe(&record, 200);
        record.model = "we\"ird\nname".into();
        metrics.observe(&record, 200);
        metrics.count("tiny", 502, Some(ErrorKind::Connect));
        metrics.received_bytes.store(10, Ordering::Relaxed);
        let text = metrics.render(0);
        let parsed = openmetrics_parser::prometheus::parse_prometheus(&text)
            .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        let families = parsed.families;
        assert!(families.contains_key("tracebench_proxy_time_to_first_token_seconds"));
        assert!(text.contains(
            "tracebench_proxy_time_to_first_token_seconds_bucket{model=\"tiny\",status=\"200\",le=\"0.05\"} 1"
        ));
        assert!(text.contains(
            "tracebench_proxy_time_to_first_token_seconds_bucket{model=\"tiny\",status=\"200\",le=\"0.025\"} 0"
        ));
        assert!(text.contains(
            "tracebench_proxy_inter_token_latency_seconds_count{model=\"tiny\",status=\"200\"} 2"
        ));
        assert!(text.contains("tracebench_proxy_requests_total{model=\"tiny\",status=\"502\"} 1"));
        assert!(text
            .contains("tracebench_proxy_request_errors_total{model=\"tiny\",kind=\"connect\"} 1"));
        assert!(text.contains("model=\"we\\\"ird\\nname\""));
        assert!(text.contains("tracebench_proxy_received_bytes_total 10"));
    }

    #[test]
    fn model_labels_are_capped() {
        let metrics = ProxyMetrics::default();
        for i in 0..(MAX_MODELS + 10) {
            metrics.count(&format!("m{i}"), 200, None);
        }
        let text = metrics.render(0);
        assert!(text.contains("tracebench_proxy_requests_total{model=\"other\",status=\"200\"} 10"));
        assert_eq!(
            text.matches("tracebench_proxy_requests_total{").count(),
            MAX_MODELS + 1
        );
    }
}
