//! `tracebench study output-length`: the same prompt with exact output
//! lengths (`ignore_eos` and `min_tokens`), at a fixed concurrency. Per
//! length: TPOT, per-token ITL, the server span's decode time and the
//! server's KV-cache gauge. The verdict: the slope of TPOT against output
//! length (ms per 1,000 tokens, 95% interval) and whether TPOT is flat
//! within the tolerance.

use super::args::OutputLengthArgs;
use super::figures::{self, ms, one, pct, Fit};
use crate::experiment::state::{Analysis, ExperimentState, StudyChart, StudySection, StudyTable};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The experiment plan: one case, the lengths in lockstep with their `min_tokens`.
pub fn plan(args: &OutputLengthArgs) -> Value {
    let lengths = &args.output_tokens;
    let min_tokens: Vec<Value> = lengths.iter().map(|n| json!({ "min_tokens": n })).collect();
    let case = json!({
        "name": "lengths",
        "model": "target",
        "params": { "concurrency": args.concurrency, "requests": args.requests },
        "zip": { "extra_body": min_tokens, "output_tokens": lengths },
    });
    // The same prompt: all but its last token shared by every request (the
    // generator keeps one token of each prompt its own).
    let shared = args.common.input_tokens.saturating_sub(1);
    let defaults = json!({ "shared_prefix_tokens": shared });
    super::experiment(
        "output-length",
        &args.common,
        false,
        defaults,
        json!([case]),
    )
}

const FIGURES: [(&str, &str); 6] = [
    ("median_tpot_ms", "TPOT median ms"),
    ("mean_tpot_ms", "TPOT mean ms"),
    ("mean_itl_token_ms", "ITL per token ms"),
    ("mean_server.decode_ms", "decode ms (span)"),
    ("server_kv_cache_max", "KV cache peak"),
    ("gpu_peak_memory_mib", "GPU memory peak MiB"),
];

impl Analysis for OutputLengthArgs {
    fn analyse(&self, dir: &Path, state: &ExperimentState) -> anyhow::Result<StudySection> {
        let mut rows = Vec::new();
        let mut per_request = Vec::new();
        let mut figures = BTreeMap::new();
        let mut tpot_line = Vec::new();
        let mut kv_line = Vec::new();
        for point in figures::ok_points(state, 0) {
            let Some(length) = point.spec.axes.get("output_tokens").and_then(Value::as_f64) else {
                continue;
            };
            let summary = figures::summary(dir, point).unwrap_or_default();
            let value = |name: &str| figures::metric(&summary, name);
            let mut row = vec![format!("{length}")];
            for (name, _) in FIGURES {
                let v = value(name);
                row.push(if name == "server_kv_cache_max" {
                    kv_pct(v)
                } else {
                    one(v)
                });
                if let Some(v) = v {
                    figures.insert(format!("{length}.{name}"), v);
                }
            }
            let kv_per_request =
                value("server_kv_cache_max").map(|kv| kv / self.concurrency as f64);
            row.push(kv_pct(kv_per_request));
            rows.push(row);
            tpot_line.extend(value("median_tpot_ms").map(|v| (length, v)));
            kv_line.extend(value("server_kv_cache_max").map(|v| (length, v * 100.0)));
            figures::each_record(dir, point, |r| {
                if let (Some(n), Some(tpot)) = (r.output_tokens, r.tpot_ms) {
                    per_request.push((n as f64, tpot));
                }
            });
        }
        let fit = figures::fit(&per_request);
        let (verdict, flat) = verdict(fit, &per_request, self.tolerance);
        if let Some(f) = fit {
            figures.insert("tpot_slope_ms_per_1k_tokens".into(), f.slope * 1000.0);
            figures.insert(
                "tpot_slope_ci95_ms_per_1k_tokens".into(),
                f.slope_ci95 * 1000.0,
            );
            figures.insert("tpot_flat".into(), f64::from(u8::from(flat)));
        }
        let mut columns: Vec<String> = vec!["output tokens".into()];
        columns.extend(FIGURES.iter().map(|(_, l)| l.to_string()));
        columns.push("KV per request (peak ÷ concurrency)".into());
        Ok(StudySection {
            kind: "output-length".into(),
            question: "Does TPOT stay flat as outputs grow (is the KV cache doing its job)?".into(),
            verdict,
            figures,
            tables: vec![StudyTable { title: "Per output length".into(), columns, rows }],
            charts: vec![
                chart("study-tpot", "TPOT against output length", "TPOT median ms", tpot_line),
                chart("study-kv", "KV-cache usage against output length (server gauge)", "KV cache peak %", kv_line),
            ],
            notes: vec![
                "KV-cache figures are the server's own gauge (vllm:kv_cache_usage_perc from /metrics): GPU memory under vLLM is flat because the KV cache is reserved at start, so NVML memory does not show it.".into(),
                format!("The slope is a least-squares line over every request's (output tokens, TPOT); flat means the fitted change over the lengths run is within {} of the TPOT at the shortest length.", pct(Some(self.tolerance))),
            ],
        })
    }
}

/// A KV-cache fraction as a percentage with two decimals (small models use little).
fn kv_pct(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{:.2}%", v * 100.0))
}

fn chart(id: &str, title: &str, y: &str, points: Vec<(f64, f64)>) -> StudyChart {
    StudyChart {
        id: id.into(),
        title: title.into(),
        x_label: "output tokens".into(),
        y_label: y.into(),
        lines: vec![(y.to_string(), points)],
    }
}

/// The sentence, and whether TPOT is flat within `tolerance`.
fn verdict(fit: Option<Fit>, points: &[(f64, f64)], tolerance: f64) -> (String, bool) {
    let Some(f) = fit else {
        return (
            "output-length: no verdict (fewer than three requests with a TPOT, or one length only)"
                .into(),
            false,
        );
    };
    let lo = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let base = f.intercept + f.slope * lo;
    let change = f.slope * (hi - lo) / base.abs().max(f64::EPSILON);
    let flat = change.abs() <= tolerance;
    let sentence = format!(
        "output-length: TPOT {} {:.2} ms per 1,000 output tokens (95% CI ±{:.2}), {:+.1}% from {lo} to {hi} tokens (TPOT {} at {lo}): {}.",
        if f.slope >= 0.0 { "rises" } else { "falls" },
        (f.slope * 1000.0).abs(),
        f.slope_ci95 * 1000.0,
        change * 100.0,
        ms(Some(base)),
        if flat {
            format!("flat within {}", pct(Some(tolerance)))
        } else if f.slope.abs() <= f.slope_ci95 {
            format!("not shown flat within {}: the slope's interval includes 0, so the change is within the noise (more --requests per length narrow it)", pct(Some(tolerance)))
        } else if f.slope < 0.0 {
            format!("not flat within {}, but falling: fixed per-request costs spread over more tokens, no sign of a KV-cache penalty", pct(Some(tolerance)))
        } else {
            format!("not flat (tolerance {}): each token costs more as the context grows", pct(Some(tolerance)))
        }
    );
    (sentence, flat)
}
