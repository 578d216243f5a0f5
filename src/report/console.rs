//! The summary table printed at the end of a run: the latency statistics,
//! throughput, goodput, errors by kind, the span join and the diagnosis.

use crate::analysis::summary::error_counts;
use crate::analysis::Summary;
use std::fmt::Write;

/// Rows of the latency table: (metric key, label).
const ROWS: [(&str, &str); 11] = [
    ("ttft_ms", "TTFT (ms)"),
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
    if let Some(diagnosis) = &summary.diagnosis {
        let _ = writeln!(out, "{diagnosis}");
    }
    out
}
