//! The summary table printed at the end of a run: the latency statistics,
//! throughput, goodput, errors by kind, the span join and the diagnosis.

use crate::analysis::summary::error_counts;
use crate::analysis::Summary;
use serde_json::Value;
use std::fmt::Write;

/// Rows of the latency table: (metric key, label).
const ROWS: [(&str, &str); 12] = [
    ("ttft_ms", "TTFT (ms)"),
    ("ttfo_ms", "TTFO, answer (ms)"),
    ("tpot_ms", "TPOT (ms)"),
    ("itl_chunk_ms", "ITL per chunk (ms)"),
    ("itl_token_ms", "ITL per token (ms)"),
    ("e2e_ms", "E2E (ms)"),
    ("schedule_lag_ms", "schedule lag (ms)"),
    ("server.queue_ms", "server queue (ms)"),
    ("server.prefill_ms", "server prefill (ms)"),
    ("server.decode_ms", "server decode (ms)"),
    ("decomposition.network_ms", "network (ms)"),
    ("decomposition.frontend_ms", "frontend (ms)"),
];

/// Prints to stdout; a closed pipe (`| head`) is not an error.
pub fn print(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Rounding noise below the printed precision shows as 0.00, not -0.00.
fn tidy(value: f64) -> f64 {
    if value.abs() < 0.005 {
        0.0
    } else {
        value
    }
}

/// The whole summary as text for a terminal.
pub fn render(summary: &Summary) -> String {
    let mut out = String::new();
    let r = &summary.requests;
    let _ = writeln!(
        out,
        "run {}{}: {} requests, {} ok, {} failed{} in {:.2} s",
        summary.run_id,
        if summary.partial {
            " (partial: stopped early)"
        } else {
            ""
        },
        r.total,
        r.ok,
        r.failed,
        if r.warmup > 0 {
            format!(" ({} warm-up not counted)", r.warmup)
        } else {
            String::new()
        },
        summary.duration_s
    );
    let _ = writeln!(
        out,
        "{:<22}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "metric", "count", "mean", "p50", "p90", "p95", "p99", "max"
    );
    for (key, label) in ROWS {
        if let Some(s) = summary.metrics.get(key) {
            let _ = writeln!(
                out,
                "{label:<22}{:>8}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
                s.count,
                tidy(s.mean),
                tidy(s.p50),
                tidy(s.p90),
                tidy(s.p95),
                tidy(s.p99),
                tidy(s.max)
            );
        }
    }
    let _ = writeln!(
        out,
        "throughput: {:.2} req/s, {:.1} output tok/s, {:.1} total tok/s",
        summary.request_throughput, summary.output_throughput, summary.total_token_throughput
    );
    if let Some(g) = &summary.goodput {
        let _ = writeln!(
            out,
            "goodput: {:.2} req/s ({} of {} requests met every SLO, {:.1}%)",
            g.requests_per_s,
            g.met,
            g.total,
            g.fraction * 100.0
        );
    }
    let errors = error_counts(summary);
    if !errors.is_empty() {
        let list: Vec<String> = errors
            .iter()
            .map(|(k, n)| format!("{} {n}", k.as_str()))
            .collect();
        let _ = writeln!(out, "errors: {}", list.join(", "));
    }
    if let Some(join) = &summary.join {
        let missing: Vec<String> = join
            .missing
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        let _ = writeln!(
            out,
            "server spans: {} of {} joined ({:.1}%){}",
            join.joined,
            join.requests,
            join.rate * 100.0,
            if missing.is_empty() {
                String::new()
            } else {
                format!("; missing: {}", missing.join(", "))
            }
        );
    }
    if let Some(server) = &summary.server_metrics {
        out.push_str(&server_metrics_line(server));
    }
    if let Some(gpu) = &summary.gpu {
        out.push_str(&gpu_lines(gpu));
    }
    if let Some(workload) = &summary.workload {
        out.push_str(&workload.lines());
    }
    if let Some(diagnosis) = &summary.diagnosis {
        let _ = writeln!(out, "{diagnosis}");
    }
    out
}

/// The server's own view over the measured window, from its `/metrics`.
fn server_metrics_line(server: &Value) -> String {
    let mut parts = Vec::new();
    for (key, label, scale, unit) in [
        ("running", "running", 1.0, ""),
        ("waiting", "waiting", 1.0, ""),
        ("kv_cache_usage", "KV cache", 100.0, "%"),
    ] {
        if let (Some(max), Some(mean)) = (number(&server[key]["max"]), number(&server[key]["mean"]))
        {
            parts.push(format!(
                "{label} max {:.1}{unit} mean {:.1}{unit}",
                max * scale,
                mean * scale
            ));
        }
    }
    if let Some(preemptions) = number(&server["preemptions"]) {
        parts.push(format!("{preemptions:.0} preemptions"));
    }
    for (key, label) in [("ttft", "TTFT"), ("queue", "queue")] {
        let latency = &server["latency"][key];
        if let (Some(p50), Some(p99)) = (number(&latency["p50_ms"]), number(&latency["p99_ms"])) {
            parts.push(format!("its {label} p50 {p50:.1} ms p99 {p99:.1} ms"));
        }
    }
    if parts.is_empty() {
        return String::new();
    }
    format!("server /metrics: {}\n", parts.join(", "))
}

/// One line per GPU: memory over the idle baseline, utilisation, energy.
fn gpu_lines(gpu: &Value) -> String {
    let mut out = String::new();
    for card in gpu["gpus"].as_array().into_iter().flatten() {
        let name = card["name"].as_str().unwrap_or("GPU");
        let id = card["gpu"].as_str().unwrap_or("?");
        let mib = |key: &str| number(&card[key]).map_or("?".to_string(), |v| format!("{v:.0}"));
        let mut line = format!(
            "GPU {id} ({name}): memory idle {} MiB, peak {} MiB (+{} MiB)",
            mib("idle_memory_mib"),
            mib("peak_memory_mib"),
            mib("peak_over_idle_mib")
        );
        if let (Some(mean), Some(max)) = (
            number(&card["mean_gpu_util_pct"]),
            number(&card["max_gpu_util_pct"]),
        ) {
            let _ = write!(line, ", util mean {mean:.0}% max {max:.0}%");
        }
        if let Some(joules) = number(&card["energy_j"]) {
            let _ = write!(line, ", {joules:.0} J");
        }
        if let Some(per_token) = number(&card["joules_per_output_token"]) {
            let _ = write!(line, " ({per_token:.3} J/token)");
        }
        out.push_str(&line);
        out.push('\n');
    }
    if let Some(gaps) = number(&gpu["gaps"]).filter(|g| *g > 0.0) {
        let _ = writeln!(out, "GPU sampling had {gaps:.0} gaps (see telemetry.jsonl)");
    }
    out
}

fn number(value: &Value) -> Option<f64> {
    value.as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn telemetry_summaries_get_their_lines() {
        let server = json!({
            "running": {"max": 2.0, "mean": 1.67}, "waiting": {"max": 6.0, "mean": 5.5},
            "kv_cache_usage": {"max": 0.25, "mean": 0.125}, "preemptions": 0.0,
            "latency": {"ttft": {"p50_ms": 375.0, "p99_ms": 718.75}},
        });
        let line = server_metrics_line(&server);
        assert!(line.contains("waiting max 6.0 mean 5.5"), "{line}");
        assert!(line.contains("KV cache max 25.0% mean 12.5%"), "{line}");
        assert!(
            line.contains("its TTFT p50 375.0 ms p99 718.8 ms"),
            "{line}"
        );
        assert_eq!(server_metrics_line(&json!({})), "");

        let gpu = json!({"gpus": [{"gpu": "0", "name": "NVIDIA H100", "idle_memory_mib": 70000.0,
            "peak_memory_mib": 71000.0, "peak_over_idle_mib": 1000.0, "mean_gpu_util_pct": 40.0,
            "max_gpu_util_pct": 99.0, "energy_j": 1234.0, "joules_per_output_token": 0.5}], "gaps": 3});
        let lines = gpu_lines(&gpu);
        assert!(
            lines
                .contains("GPU 0 (NVIDIA H100): memory idle 70000 MiB, peak 71000 MiB (+1000 MiB)"),
            "{lines}"
        );
        assert!(
            lines.contains("util mean 40% max 99%, 1234 J (0.500 J/token)"),
            "{lines}"
        );
        assert!(lines.contains("3 gaps"), "{lines}");
    }
}
