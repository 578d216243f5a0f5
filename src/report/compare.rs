//! `tracebench compare`: runs side by side, metric by metric, with deltas
//! against the first run and the better run per metric. A run is a tracebench
//! run folder (its `summary.json`, through [`RunFolder`]), a `summary.json`
//! itself, or a `vllm bench serve --save-result` JSON file; all are read
//! through vLLM's key names, which our summary also carries.

use super::run_folder::RunFolder;
use anyhow::{bail, Context};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Whether a smaller or a larger value of a metric is better.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Better {
    Lower,
    Higher,
}

/// The compared rows: label, vLLM-spelled key, which direction is better.
const ROWS: [(&str, &str, Better); 18] = [
    ("TTFT mean (ms)", "mean_ttft_ms", Better::Lower),
    ("TTFT p50 (ms)", "median_ttft_ms", Better::Lower),
    ("TTFT p99 (ms)", "p99_ttft_ms", Better::Lower),
    ("TPOT mean (ms)", "mean_tpot_ms", Better::Lower),
    ("TPOT p50 (ms)", "median_tpot_ms", Better::Lower),
    ("TPOT p99 (ms)", "p99_tpot_ms", Better::Lower),
    ("ITL mean (ms)", "mean_itl_ms", Better::Lower),
    ("ITL p50 (ms)", "median_itl_ms", Better::Lower),
    ("ITL p99 (ms)", "p99_itl_ms", Better::Lower),
    ("E2E mean (ms)", "mean_e2el_ms", Better::Lower),
    ("E2E p50 (ms)", "median_e2el_ms", Better::Lower),
    ("E2E p99 (ms)", "p99_e2el_ms", Better::Lower),
    ("requests/s", "request_throughput", Better::Higher),
    ("output tokens/s", "output_throughput", Better::Higher),
    ("total tokens/s", "total_token_throughput", Better::Higher),
    ("goodput (req/s)", "request_goodput", Better::Higher),
    ("completed", "completed", Better::Higher),
    ("errors", "failed", Better::Lower),
];

/// One run to compare: a short name, where it came from, its vLLM-spelled values.
#[derive(Debug)]
struct ComparedRun {
    name: String,
    origin: String,
    values: Value,
}

/// Reads one run: a run folder (its `summary.json`), or a JSON result file.
fn read_run(path: &Path) -> anyhow::Result<ComparedRun> {
    if path.is_dir() {
        let summary = RunFolder::open(path)
            .and_then(|folder| folder.summary())
            .with_context(|| format!("{} has no readable summary.json", path.display()))?;
        return Ok(ComparedRun {
            name: summary.run_id.clone(),
            origin: format!("tracebench run, {}", path.display()),
            values: serde_json::to_value(&summary)?,
        });
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut values: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if !values.is_object() {
        bail!("{} is not a result object", path.display());
    }
    let is_tracebench = values["schema"]
        .as_str()
        .is_some_and(|s| s.starts_with("tracebench.summary"));
    if !is_tracebench && values.get("mean_ttft_ms").is_none() && values.get("completed").is_none() {
        bail!(
            "{} is neither a tracebench summary nor a `vllm bench serve --save-result` file",
            path.display()
        );
    }
    if values.get("failed").is_none() {
        if let Some(failed) = vllm_failed_count(&values) {
            values["failed"] = failed.into();
        }
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let (name, origin) = if is_tracebench {
        let run_id = values["run_id"].as_str().unwrap_or(&file_name).to_string();
        (run_id, format!("tracebench run, {}", path.display()))
    } else {
        let model = values["model_id"].as_str().unwrap_or("?");
        (
            file_name.trim_end_matches(".json").to_string(),
            format!("vllm bench serve ({model}), {}", path.display()),
        )
    };
    Ok(ComparedRun {
        name,
        origin,
        values,
    })
}

/// Failures in a vLLM result: its `errors` list (an empty string per success),
/// else `num_prompts - completed`.
fn vllm_failed_count(values: &Value) -> Option<u64> {
    if let Some(errors) = values["errors"].as_array() {
        return Some(
            errors
                .iter()
                .filter(|e| e.as_str().is_some_and(|s| !s.is_empty()))
                .count() as u64,
        );
    }
    let prompts = values["num_prompts"].as_u64()?;
    Some(prompts.saturating_sub(values["completed"].as_u64()?))
}

fn fmt_value(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e12 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A run's name and values (vLLM-spelled keys included), for the `--fail-on` gate.
pub fn run_values(path: &Path) -> anyhow::Result<(String, Value)> {
    read_run(path).map(|run| (run.name, run.values))
}

/// The comparison table as text: a column per run, deltas against the first.
pub fn compare(paths: &[PathBuf]) -> anyhow::Result<String> {
    if paths.len() < 2 {
        bail!("compare needs at least two runs (run folders or vllm result files)");
    }
    let runs = paths
        .iter()
        .map(|p| read_run(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut out = String::new();
    for (i, run) in runs.iter().enumerate() {
        let _ = writeln!(out, "[{}] {}: {}", i + 1, run.name, run.origin);
    }
    out.push('\n');

    let mut table: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["metric".to_string()];
    header.extend((1..=runs.len()).map(|i| format!("[{i}]")));
    header.push("best".into());
    table.push(header);
    for (label, key, better) in ROWS {
        let values: Vec<Option<f64>> = runs.iter().map(|r| r.values[key].as_f64()).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        let mut row = vec![label.to_string()];
        let base = values[0];
        for (i, value) in values.iter().enumerate() {
            row.push(match (value, base) {
                (None, _) => "–".into(),
                (Some(v), _) if i == 0 => fmt_value(*v),
                (Some(v), Some(b)) => {
                    let delta = v - b;
                    let pct = if b != 0.0 {
                        format!(", {:+.1}%", delta / b * 100.0)
                    } else {
                        String::new()
                    };
                    let sign = if delta >= 0.0 { "+" } else { "" };
                    format!("{} ({sign}{}{pct})", fmt_value(*v), fmt_value(delta))
                }
                (Some(v), None) => fmt_value(*v),
            });
        }
        row.push(best_of(&values, better));
        table.push(row);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (r, row) in table.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let pad = widths[c] - cell.chars().count();
                if c == 0 || c == row.len() - 1 {
                    format!("{cell}{}", " ".repeat(pad))
                } else {
                    format!("{}{cell}", " ".repeat(pad))
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if r == 0 {
            let _ = writeln!(
                out,
                "{}",
                "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
            );
        }
    }
    out.push_str("\nDeltas are against [1]. Lower is better for latencies and errors, higher for throughput.\n");
    Ok(out)
}

/// `[i]` of the best run for a row, `=` on a tie, `–` when fewer than two have a value.
fn best_of(values: &[Option<f64>], better: Better) -> String {
    let present: Vec<(usize, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (i, v)))
        .collect();
    if present.len() < 2 {
        return "–".into();
    }
    let pick = |a: f64, b: f64| match better {
        Better::Lower => a < b,
        Better::Higher => a > b,
    };
    let mut best = present[0];
    for &(i, v) in &present[1..] {
        if pick(v, best.1) {
            best = (i, v);
        }
    }
    if present.iter().all(|(_, v)| *v == best.1) {
        "=".into()
    } else {
        format!("[{}]", best.0 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_respects_direction_and_ties() {
        assert_eq!(
            best_of(&[Some(3.0), Some(1.0), Some(2.0)], Better::Lower),
            "[2]"
        );
        assert_eq!(
            best_of(&[Some(3.0), Some(1.0), Some(2.0)], Better::Higher),
            "[1]"
        );
        assert_eq!(best_of(&[Some(1.0), Some(1.0)], Better::Lower), "=");
        assert_eq!(best_of(&[Some(1.0), None], Better::Lower), "–");
    }

    #[test]
    fn vllm_failures_come_from_errors_or_counts() {
        let v = serde_json::json!({"errors": ["", "timeout", "", "reset"]});
        assert_eq!(vllm_failed_count(&v), Some(2));
        let v = serde_json::json!({"num_prompts": 100, "completed": 97});
        assert_eq!(vllm_failed_count(&v), Some(3));
        assert_eq!(vllm_failed_count(&serde_json::json!({})), None);
    }
}
