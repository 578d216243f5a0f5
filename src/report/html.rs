//! The HTML report of one run (`report.html`): setup, summary table, latency
//! CDFs, a per-request timeline split into network, frontend, queue, prefill
//! and decode, throughput and telemetry over time, the slowest requests and errors.
//!
//! The charts are SVG built here, so the file is self-contained and needs no
//! network; a small inline script only checks the page (see `scripts/check-report.sh`).
//! The run folder reader ([`RunFolder`], [`read_jsonl`]) is shared with the SQLite history.

use crate::analysis::summary::CLIENT_METRICS;
use crate::analysis::{summarize, Slo, Summary};
use crate::record::RequestRecord;
use anyhow::Context;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// At most this many requests are drawn as timeline bars; larger runs draw every k-th.
pub const MAX_TIMELINE_ROWS: usize = 600;
/// At most this many points per line of a chart.
const MAX_LINE_POINTS: usize = 800;
/// Quantile points of a CDF curve.
const CDF_POINTS: usize = 400;
/// At most this many buckets in the throughput / in-flight charts.
const MAX_TIME_BUCKETS: usize = 600;
/// Example messages shown per error kind.
const ERROR_EXAMPLES: usize = 3;
/// Rows of the slowest-requests tables.
const SLOWEST: usize = 10;

/// Everything of a run folder the report and the history need, read leniently:
/// an unreadable line is skipped and described in `problems`, never fatal.
#[derive(Debug)]
pub struct RunFolder {
    pub dir: PathBuf,
    /// `run.json`, or `Value::Null` when absent.
    pub run: Value,
    pub records: Vec<RequestRecord>,
    pub summary: Summary,
    /// True when `summary.json` was missing or unreadable and the summary was computed here.
    pub summary_computed: bool,
    pub telemetry: Vec<Value>,
    pub server_metrics: Vec<Value>,
    /// Human-readable notes about files or lines that could not be read.
    pub problems: Vec<String>,
}

impl RunFolder {
    /// Reads a run folder; fails only when it has no `requests.jsonl`.
    pub fn load(dir: &Path) -> anyhow::Result<RunFolder> {
        let requests = dir.join("requests.jsonl");
        if !requests.is_file() {
            anyhow::bail!(
                "{} is not a run folder: it has no requests.jsonl",
                dir.display()
            );
        }
        let mut problems = Vec::new();
        let records: Vec<RequestRecord> = read_jsonl(&requests, &mut problems)?;
        let run = match std::fs::read_to_string(dir.join("run.json")) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                problems.push(format!("run.json is not JSON ({e}); setup not shown"));
                Value::Null
            }),
            Err(_) => {
                problems.push("run.json is missing; setup not shown".into());
                Value::Null
            }
        };
        let stored_summary = read_summary(&dir.join("summary.json")).ok();
        let summary_computed = stored_summary.is_none();
        let summary = stored_summary.unwrap_or_else(|| {
            problems.push(
                "summary.json is missing or unreadable; the summary was computed from requests.jsonl without SLOs"
                    .into(),
            );
            let run_id = run["run_id"]
                .as_str()
                .or_else(|| records.first().map(|r| r.run_id.as_str()))
                .unwrap_or("unknown");
            let partial = run["partial"].as_bool().unwrap_or(false);
            summarize(run_id, &records, &Slo::default(), partial)
        });
        let telemetry = read_jsonl(&dir.join("telemetry.jsonl"), &mut problems)?;
        let server_metrics = read_jsonl(&dir.join("server_metrics.jsonl"), &mut problems)?;
        Ok(RunFolder {
            dir: dir.to_path_buf(),
            run,
            records,
            summary,
            summary_computed,
            telemetry,
            server_metrics,
            problems,
        })
    }

    /// The run id from run.json, else from the summary.
    pub fn run_id(&self) -> &str {
        self.run["run_id"]
            .as_str()
            .unwrap_or(self.summary.run_id.as_str())
    }

    /// True when run.json or the summary says the run was stopped early.
    pub fn partial(&self) -> bool {
        self.run["partial"].as_bool().unwrap_or(false) || self.summary.partial
    }
}

/// Reads a `summary.json`. It goes through a JSON value first because the
/// flattened vLLM-spelled keys repeat some field names (`request_throughput`,
/// `output_throughput`, ...), which a direct typed parse refuses as duplicates.
pub fn read_summary(path: &Path) -> anyhow::Result<Summary> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    serde_json::from_value(value)
        .with_context(|| format!("{} is not a tracebench summary", path.display()))
}

/// Calls `each(line_number, value)` for every parsable line of a JSONL file. A
/// missing file yields nothing; an unparsable line (e.g. the torn last line of a
/// killed run) is described in `problems` and skipped. Fails only on I/O errors.
pub fn for_each_jsonl<T: DeserializeOwned>(
    path: &Path,
    problems: &mut Vec<String>,
    mut each: impl FnMut(usize, T) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut skipped = 0usize;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(&line) {
            Ok(value) => each(index + 1, value)?,
            Err(e) => {
                if skipped == 0 {
                    problems.push(format!(
                        "{name}:{}: skipped unreadable line ({e})",
                        index + 1
                    ));
                }
                skipped += 1;
            }
        }
    }
    if skipped > 1 {
        problems.push(format!("{name}: {skipped} unreadable lines skipped in all"));
    }
    Ok(())
}

/// Every parsable line of a JSONL file (see [`for_each_jsonl`]).
pub fn read_jsonl<T: DeserializeOwned>(
    path: &Path,
    problems: &mut Vec<String>,
) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::new();
    for_each_jsonl(path, problems, |_, value| {
        out.push(value);
        Ok(())
    })?;
    Ok(out)
}

/// Writes `run_dir/report.html` from the files of the run folder and returns its path.
pub fn write_report(run_dir: &Path) -> anyhow::Result<PathBuf> {
    let folder = RunFolder::load(run_dir)?;
    let html = render_report(&folder);
    let path = run_dir.join("report.html");
    std::fs::write(&path, html).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The whole report page as one string.
pub fn render_report(folder: &RunFolder) -> String {
    let mut page = String::with_capacity(256 * 1024);
    let title = format!("tracebench report: {}", folder.run_id());
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\
         <title>{}</title><style>{STYLE}</style><script>{ERROR_TRAP_SCRIPT}</script></head><body><main>",
        esc(&title)
    );
    let _ = write!(page, "<h1>{}</h1>", esc(&title));
    if folder.partial() {
        page.push_str(
            "<div class=\"banner\">Partial run: it was stopped before its end. \
             The numbers cover the requests that finished.</div>",
        );
    }
    for problem in &folder.problems {
        let _ = write!(page, "<div class=\"note warn\">{}</div>", esc(problem));
    }
    section_headline(&mut page, folder);
    section_summary(&mut page, &folder.summary);
    section_distributions(&mut page, &folder.records);
    section_timeline(&mut page, &folder.records);
    section_over_time(&mut page, &folder.records);
    section_server_metrics(&mut page, &folder.server_metrics);
    section_gpu(&mut page, &folder.telemetry);
    section_slowest(&mut page, &folder.records);
    section_errors(&mut page, &folder.records);
    section_setup(&mut page, &folder.run);
    page.push_str(
        "<footer><span id=\"tracebench-check\" data-verdict=\"pending\">report self-check: pending</span></footer>",
    );
    page.push_str("</main><script>");
    page.push_str(CHECK_SCRIPT);
    page.push_str("</script></body></html>\n");
    page
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A link target only when it is a plain http(s) URL (no `javascript:` and the like).
fn safe_url(url: &str) -> Option<&str> {
    let lower = url.trim_start().to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://")).then_some(url)
}

/// Milliseconds (or any magnitude) with sensible precision.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{v:.3}")
    }
}

fn opt_num(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "–".into())
}

// ---------------------------------------------------------------- sections

fn section_headline(page: &mut String, folder: &RunFolder) {
    let s = &folder.summary;
    let mut cards: Vec<(String, String, String)> = vec![
        (
            "Requests".into(),
            format!("{}", s.requests.total),
            format!(
                "{} ok, {} failed, {} warm-up",
                s.requests.ok, s.requests.failed, s.requests.warmup
            ),
        ),
        (
            "Duration".into(),
            format!("{} s", num(s.duration_s)),
            "first send to last completion".into(),
        ),
        (
            "Throughput".into(),
            format!("{} req/s", num(s.request_throughput)),
            format!(
                "{} output tok/s, {} total tok/s",
                num(s.output_throughput),
                num(s.total_token_throughput)
            ),
        ),
    ];
    if let Some(g) = &s.goodput {
        cards.push((
            "Goodput".into(),
            format!("{} req/s", num(g.requests_per_s)),
            format!(
                "{} of {} met the SLOs ({:.1}%): {}",
                g.met,
                g.total,
                g.fraction * 100.0,
                slo_text(&g.slo)
            ),
        ));
    }
    if let Some(j) = &s.join {
        let missing: Vec<String> = j.missing.iter().map(|(k, v)| format!("{v} {k}")).collect();
        cards.push((
            "Span join".into(),
            format!("{:.1}%", j.rate * 100.0),
            if missing.is_empty() {
                format!(
                    "{} of {} requests got their server span",
                    j.joined, j.requests
                )
            } else {
                format!(
                    "{} of {} joined; missing: {}",
                    j.joined,
                    j.requests,
                    missing.join(", ")
                )
            },
        ));
    }
    page.push_str("<div class=\"cards\">");
    for (name, value, detail) in cards {
        let _ = write!(
            page,
            "<div class=\"card\"><div class=\"k\">{}</div><div class=\"v\">{}</div><div class=\"d\">{}</div></div>",
            esc(&name),
            esc(&value),
            esc(&detail)
        );
    }
    page.push_str("</div>");
    if let Some(diagnosis) = &s.diagnosis {
        let _ = write!(
            page,
            "<div class=\"diagnosis\"><b>Diagnosis.</b> {}</div>",
            esc(diagnosis)
        );
    }
}

fn slo_text(slo: &Slo) -> String {
    let parts: Vec<String> = [
        ("TTFT", slo.ttft_ms),
        ("TPOT", slo.tpot_ms),
        ("ITL", slo.itl_ms),
        ("E2E", slo.e2e_ms),
        ("queue", slo.queue_ms),
    ]
    .iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n} ≤ {} ms", num(v))))
    .collect();
    parts.join(", ")
}

/// Display name and unit of a summary metric key.
fn metric_label(key: &str) -> (String, &'static str) {
    let unit = if key.ends_with("_ms") { "ms" } else { "tokens" };
    let label = match key {
        "ttft_ms" => "TTFT".to_string(),
        "tpot_ms" => "TPOT".to_string(),
        "itl_chunk_ms" => "ITL (per chunk)".to_string(),
        "itl_token_ms" => "ITL (per token)".to_string(),
        "e2e_ms" => "E2E".to_string(),
        "schedule_lag_ms" => "Schedule lag".to_string(),
        "input_tokens" => "Input tokens".to_string(),
        "output_tokens" => "Output tokens".to_string(),
        other => other
            .trim_end_matches("_ms")
            .replace("decomposition.", "TTFT part: ")
            .replace("server.", "server ")
            .replace('_', " "),
    };
    (label, unit)
}

fn section_summary(page: &mut String, summary: &Summary) {
    page.push_str("<h2>Summary</h2>");
    if summary.metrics.is_empty() {
        page.push_str("<p class=\"note\">No finished requests: nothing to summarise.</p>");
        return;
    }
    let mut keys: Vec<&str> = CLIENT_METRICS
        .iter()
        .copied()
        .filter(|k| summary.metrics.contains_key(*k))
        .collect();
    keys.extend(
        summary
            .metrics
            .keys()
            .map(String::as_str)
            .filter(|k| !CLIENT_METRICS.contains(k)),
    );
    page.push_str(
        "<table class=\"num\"><thead><tr><th>metric</th><th>unit</th><th>count</th><th>mean</th>\
         <th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>max</th></tr></thead><tbody>",
    );
    for key in keys {
        let Some(stats) = summary.metrics.get(key) else {
            continue;
        };
        let (label, unit) = metric_label(key);
        let class = if key.starts_with("server.") || key.starts_with("decomposition.") {
            " class=\"server\""
        } else {
            ""
        };
        let _ = write!(
            page,
            "<tr{class}><td title=\"{}\">{}</td><td>{unit}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(key),
            esc(&label),
            stats.count,
            num(stats.mean),
            num(stats.p50),
            num(stats.p90),
            num(stats.p95),
            num(stats.p99),
            num(stats.max)
        );
    }
    page.push_str("</tbody></table>");
    let mut extra = Vec::new();
    if summary.gpu.is_some() || summary.server_metrics.is_some() {
        extra.push("GPU and server-metric summaries are in summary.json.");
    }
    for line in extra {
        let _ = write!(page, "<p class=\"note\">{}</p>", esc(line));
    }
}

fn section_distributions(page: &mut String, records: &[RequestRecord]) {
    page.push_str("<h2>Latency distributions (CDF)</h2><div class=\"grid\">");
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| !r.warmup && r.ok()).collect();
    let charts: [CdfChart; 4] = [
        (
            "cdf-ttft",
            "TTFT",
            [
                ("client", |r| r.ttft_ms.into_iter().collect()),
                ("server", |r| {
                    r.server
                        .as_ref()
                        .and_then(|s| s.ttft_ms)
                        .into_iter()
                        .collect()
                }),
            ],
        ),
        (
            "cdf-itl",
            "ITL",
            [
                ("per chunk", |r| r.itl_chunk_ms.clone()),
                ("per token", |r| r.itl_token_ms.clone().unwrap_or_default()),
            ],
        ),
        (
            "cdf-tpot",
            "TPOT",
            [
                ("client", |r| r.tpot_ms.into_iter().collect()),
                ("", |_| Vec::new()),
            ],
        ),
        (
            "cdf-e2e",
            "E2E",
            [
                ("client", |r| r.e2e_ms.into_iter().collect()),
                ("server", |r| {
                    r.server
                        .as_ref()
                        .and_then(|s| s.e2e_ms)
                        .into_iter()
                        .collect()
                }),
            ],
        ),
    ];
    for (id, name, picks) in charts {
        let mut series = Vec::new();
        for (i, (label, pick)) in picks.iter().enumerate() {
            let mut values: Vec<f64> = ok
                .iter()
                .flat_map(|r| pick(r))
                .filter(|v| v.is_finite())
                .collect();
            if values.is_empty() {
                continue;
            }
            values.sort_by(|a, b| a.total_cmp(b));
            series.push(Series {
                name: format!("{label} (n={})", values.len()),
                color: SERIES_COLORS[i],
                points: cdf_points(&values),
            });
        }
        let _ = write!(page, "<div class=\"chart\"><h3>{name}</h3>");
        if series.is_empty() {
            let _ = write!(page, "<p class=\"note\">No {name} values in this run.</p>");
        } else {
            line_chart(
                page,
                &LineChart {
                    id,
                    x_label: "ms",
                    y_label: "fraction of requests",
                    y_fixed: Some((0.0, 1.0)),
                    series: &series,
                },
            );
        }
        page.push_str("</div>");
    }
    page.push_str("</div>");
}

/// The values of one CDF curve taken from a record.
type CurveValues = fn(&RequestRecord) -> Vec<f64>;
/// Chart id, title, and up to two labelled curves.
type CdfChart = (&'static str, &'static str, [(&'static str, CurveValues); 2]);

/// Up to [`CDF_POINTS`] (value, fraction ≤ value) points of sorted values.
fn cdf_points(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n <= CDF_POINTS {
        return sorted
            .iter()
            .enumerate()
            .map(|(i, v)| (*v, (i + 1) as f64 / n as f64))
            .collect();
    }
    (0..=CDF_POINTS)
        .map(|k| {
            let i = ((k as f64 / CDF_POINTS as f64) * (n - 1) as f64).round() as usize;
            (sorted[i], (i + 1) as f64 / n as f64)
        })
        .collect()
}

// ---------------------------------------------------------------- timeline

/// One coloured phase of a timeline bar.
#[derive(Clone, Copy)]
struct Phase {
    name: &'static str,
    color: &'static str,
}

const PHASE_LAG: Phase = Phase {
    name: "schedule lag",
    color: "#b0b7c3",
};
const PHASE_NETWORK: Phase = Phase {
    name: "network",
    color: "#8e7cc3",
};
const PHASE_FRONTEND: Phase = Phase {
    name: "frontend",
    color: "#f6b26b",
};
const PHASE_QUEUE: Phase = Phase {
    name: "queue",
    color: "#e06666",
};
const PHASE_PREFILL: Phase = Phase {
    name: "prefill",
    color: "#3d85c6",
};
const PHASE_DECODE: Phase = Phase {
    name: "decode",
    color: "#6aa84f",
};
const PHASE_WAIT: Phase = Phase {
    name: "wait for first token",
    color: "#76a5af",
};
const PHASE_STREAM: Phase = Phase {
    name: "streaming",
    color: "#93c47d",
};
const PHASE_FAILED: Phase = Phase {
    name: "failed",
    color: "#990000",
};

/// The phases of one request laid end to end from its intended start, in ms.
fn bar_phases(r: &RequestRecord) -> Vec<(Phase, f64)> {
    let mut phases = vec![(PHASE_LAG, r.schedule_lag_ms.max(0.0))];
    let sent = r.instants_ns.sent;
    let ms_since_sent = |t: Option<u64>| t.map(|t| t.saturating_sub(sent) as f64 / 1e6);
    if !r.ok() {
        let end = ms_since_sent(r.instants_ns.end.or(r.instants_ns.last_token))
            .or(r.e2e_end_ms)
            .unwrap_or(0.0);
        phases.push((PHASE_FAILED, end));
        return phases;
    }
    let ttft = r.ttft_ms.unwrap_or(0.0).max(0.0);
    let streaming = match (r.instants_ns.first_token, r.instants_ns.last_token) {
        (Some(first), Some(last)) => last.saturating_sub(first) as f64 / 1e6,
        _ => 0.0,
    };
    match &r.decomposition {
        Some(d) if r.server.is_some() => {
            let mut known = 0.0;
            for (phase, value) in [
                (PHASE_NETWORK, d.network_ms),
                (PHASE_FRONTEND, d.frontend_ms),
                (PHASE_QUEUE, d.queue_ms),
                (PHASE_PREFILL, d.prefill_ms),
            ] {
                let v = value.unwrap_or(0.0).max(0.0).min((ttft - known).max(0.0));
                known += v;
                phases.push((phase, v));
            }
            if ttft > known {
                phases.push((PHASE_WAIT, ttft - known));
            }
            phases.push((PHASE_DECODE, streaming));
        }
        _ => {
            phases.push((PHASE_WAIT, ttft));
            phases.push((PHASE_STREAM, streaming));
        }
    }
    phases
}

/// Where a request bar starts and what it shows.
#[derive(Clone, Copy, PartialEq)]
enum BarLayout {
    /// Every phase of the request, placed on the run's clock from its intended start.
    OverTime,
    /// Only the phases before the first token, every bar starting at zero.
    TtftAligned,
}

fn section_timeline(page: &mut String, records: &[RequestRecord]) {
    if records.is_empty() {
        page.push_str("<h2>Every request</h2><p class=\"note\">No requests in this run.</p>");
        return;
    }
    let mut order: Vec<&RequestRecord> = records.iter().collect();
    order.sort_by_key(|r| (r.instants_ns.sent, r.index));
    let stride = order.len().div_ceil(MAX_TIMELINE_ROWS).max(1);
    let rows: Vec<&RequestRecord> = order.iter().copied().step_by(stride).collect();
    let with_server = rows.iter().any(|r| r.server.is_some());
    let sampling = if stride > 1 {
        format!(
            " This run has {} requests: every {} request in send order is drawn ({} bars).",
            order.len(),
            ordinal(stride),
            rows.len()
        )
    } else {
        String::new()
    };

    page.push_str("<h2>Where TTFT went, request by request</h2>");
    let ok_rows: Vec<&RequestRecord> = rows.iter().copied().filter(|r| r.ok()).collect();
    let text = if with_server {
        "Each successful request's time to first token, from its intended start, in the order sent: \
         schedule lag, network, server frontend, queue, prefill. Long red means queueing; long blue means prefill."
    } else {
        "No server spans were joined, so each successful request's time to first token shows \
         the client phases only: schedule lag and wait for first token."
    };
    let _ = write!(
        page,
        "<p class=\"note\">{}{}</p>",
        esc(text),
        esc(&sampling)
    );
    let legend: Vec<Phase> = if with_server {
        vec![
            PHASE_LAG,
            PHASE_NETWORK,
            PHASE_FRONTEND,
            PHASE_QUEUE,
            PHASE_PREFILL,
            PHASE_WAIT,
        ]
    } else {
        vec![PHASE_LAG, PHASE_WAIT]
    };
    legend_html(page, legend.iter().map(|p| (p.name, p.color)));
    if ok_rows.is_empty() {
        page.push_str("<p class=\"note\">No successful requests.</p>");
    } else {
        request_bars(
            page,
            "ttft-breakdown",
            &ok_rows,
            BarLayout::TtftAligned,
            "ms since intended start",
        );
    }

    page.push_str("<h2>Every request over time</h2>");
    let text = if with_server {
        "One bar per request on the run's clock, in the order sent: the TTFT parts as above, then decode \
         (the client's streaming time). Requests without a server span show the client phases."
    } else {
        "One bar per request on the run's clock, in the order sent: schedule lag, wait for first token, streaming."
    };
    let _ = write!(
        page,
        "<p class=\"note\">{}{}</p>",
        esc(text),
        esc(&sampling)
    );
    let legend: Vec<Phase> = if with_server {
        vec![
            PHASE_LAG,
            PHASE_NETWORK,
            PHASE_FRONTEND,
            PHASE_QUEUE,
            PHASE_PREFILL,
            PHASE_DECODE,
            PHASE_WAIT,
            PHASE_STREAM,
            PHASE_FAILED,
        ]
    } else {
        vec![PHASE_LAG, PHASE_WAIT, PHASE_STREAM, PHASE_FAILED]
    };
    legend_html(page, legend.iter().map(|p| (p.name, p.color)));
    request_bars(
        page,
        "timeline",
        &rows,
        BarLayout::OverTime,
        "seconds since run start",
    );
}

/// One horizontal bar per request, top to bottom in the given order.
fn request_bars(
    page: &mut String,
    id: &str,
    rows: &[&RequestRecord],
    layout: BarLayout,
    x_label: &str,
) {
    let phases_of = |r: &RequestRecord| -> Vec<(Phase, f64)> {
        let phases = bar_phases(r);
        match layout {
            BarLayout::OverTime => phases,
            BarLayout::TtftAligned => phases
                .into_iter()
                .filter(|(p, _)| p.name != PHASE_DECODE.name && p.name != PHASE_STREAM.name)
                .collect(),
        }
    };
    // Bar start and the unit of the x axis (seconds over time, ms when aligned).
    let unit = match layout {
        BarLayout::OverTime => 1e3,
        BarLayout::TtftAligned => 1.0,
    };
    let start_of = |r: &RequestRecord| match layout {
        BarLayout::OverTime => r.instants_ns.intended.min(r.instants_ns.sent) as f64 / 1e9,
        BarLayout::TtftAligned => 0.0,
    };
    let ends = rows
        .iter()
        .map(|r| start_of(r) + phases_of(r).iter().map(|(_, v)| v).sum::<f64>() / unit);
    let end = ends.fold(0.0f64, f64::max);
    let start = rows
        .iter()
        .map(|r| start_of(r))
        .fold(f64::INFINITY, f64::min);
    let x = Scale::new(start.min(end), end.max(start + 1e-3));
    let (width, left, right, top, bottom) = (1120.0, 64.0, 16.0, 8.0, 36.0);
    let plot_h = (rows.len() as f64 * 10.0).clamp(120.0, 720.0);
    let row_h = plot_h / rows.len() as f64;
    let bar_h = (row_h * 0.78).max(0.6);
    let plot_w = width - left - right;
    let height = plot_h + top + bottom;
    let mut body = String::new();
    let mut marks = 0usize;
    x_axis(&mut body, &x, left, top, plot_w, plot_h, x_label);
    for (i, r) in rows.iter().enumerate() {
        let y = top + i as f64 * row_h + (row_h - bar_h) / 2.0;
        let mut t = start_of(r);
        let phases = phases_of(r);
        let _ = write!(
            body,
            "<g><title>{}</title>",
            esc(&bar_tooltip(r, &bar_phases(r)))
        );
        for (phase, ms) in phases {
            if ms <= 0.0 {
                continue;
            }
            let x0 = left + x.at(t) * plot_w;
            t += ms / unit;
            let x1 = left + x.at(t) * plot_w;
            let _ = write!(
                body,
                "<rect data-mark=\"1\" x=\"{x0:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{bar_h:.2}\" fill=\"{}\"/>",
                (x1 - x0).max(0.4),
                phase.color
            );
            marks += 1;
        }
        body.push_str("</g>");
    }
    let label_every = (rows.len() / 12).max(1);
    for (i, r) in rows.iter().enumerate().step_by(label_every) {
        let y = top + (i as f64 + 0.5) * row_h;
        let _ = write!(
            body,
            "<text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" dominant-baseline=\"middle\">#{}</text>",
            left - 6.0,
            y,
            r.index
        );
    }
    let _ = write!(
        page,
        "<svg data-chart=\"{id}\" data-expect=\"{marks}\" viewBox=\"0 0 {width} {height:.0}\" class=\"wide\" role=\"img\" aria-label=\"{id}\">{body}</svg>"
    );
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn bar_tooltip(r: &RequestRecord, phases: &[(Phase, f64)]) -> String {
    let mut text = format!("#{} {}", r.index, r.request_id);
    if r.warmup {
        text.push_str(" (warm-up)");
    }
    if let Some(e) = &r.error {
        let _ = write!(
            text,
            "\nerror {}: {}",
            e.kind.as_str(),
            truncate(&e.message, 200)
        );
    }
    if let Some(v) = r.ttft_ms {
        let _ = write!(text, "\nTTFT {} ms", num(v));
    }
    if let Some(v) = r.e2e_ms {
        let _ = write!(text, ", E2E {} ms", num(v));
    }
    for (phase, ms) in phases.iter().filter(|(_, ms)| *ms > 0.0) {
        let _ = write!(text, "\n{}: {} ms", phase.name, num(*ms));
    }
    text
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let mut out: String = text.chars().take(max_chars).collect();
        out.push('…');
        out
    }
}

// ---------------------------------------------------------------- over time

fn section_over_time(page: &mut String, records: &[RequestRecord]) {
    page.push_str("<h2>Throughput and concurrency over time</h2>");
    let measured: Vec<&RequestRecord> = records.iter().filter(|r| !r.warmup).collect();
    let Some(series) = time_buckets(&measured) else {
        page.push_str("<p class=\"note\">No measured requests.</p>");
        return;
    };
    if series.bucket_s > 1.0 {
        let _ = write!(
            page,
            "<p class=\"note\">Averaged over {} s buckets.</p>",
            num(series.bucket_s)
        );
    }
    page.push_str("<div class=\"grid\">");
    let charts: [(&str, &str, &str, &Points); 3] = [
        (
            "throughput-tokens",
            "Output tokens/s",
            "tokens/s",
            &series.tokens_per_s,
        ),
        (
            "throughput-requests",
            "Completed requests/s",
            "requests/s",
            &series.requests_per_s,
        ),
        (
            "in-flight",
            "Requests in flight",
            "requests (mean)",
            &series.in_flight,
        ),
    ];
    for (i, (id, title, y_label, points)) in charts.into_iter().enumerate() {
        let _ = write!(page, "<div class=\"chart\"><h3>{title}</h3>");
        line_chart(
            page,
            &LineChart {
                id,
                x_label: "seconds since run start",
                y_label,
                y_fixed: None,
                series: &[Series {
                    name: title.to_string(),
                    color: SERIES_COLORS[i],
                    points: points.clone(),
                }],
            },
        );
        page.push_str("</div>");
    }
    page.push_str("</div>");
}

/// (x, y) points of one line.
type Points = Vec<(f64, f64)>;

/// Per-bucket rates over the run.
struct TimeBuckets {
    bucket_s: f64,
    tokens_per_s: Points,
    requests_per_s: Points,
    in_flight: Points,
}

fn time_buckets(measured: &[&RequestRecord]) -> Option<TimeBuckets> {
    let end_ns = |r: &RequestRecord| {
        r.instants_ns
            .end
            .or(r.instants_ns.last_token)
            .unwrap_or(r.instants_ns.sent)
    };
    let last_ns = measured.iter().map(|r| end_ns(r)).max()?;
    let span_s = last_ns as f64 / 1e9;
    let bucket_s = (span_s / MAX_TIME_BUCKETS as f64).ceil().max(1.0);
    let buckets = (span_s / bucket_s).floor() as usize + 1;
    let mut done = vec![0.0; buckets];
    let mut tokens = vec![0.0; buckets];
    let mut busy_s = vec![0.0; buckets];
    for r in measured {
        let (start, end) = (r.instants_ns.sent as f64 / 1e9, end_ns(r) as f64 / 1e9);
        let b = ((end / bucket_s) as usize).min(buckets - 1);
        done[b] += 1.0;
        if r.ok() {
            tokens[b] += r.output_tokens.unwrap_or(0) as f64;
        }
        let first = (start / bucket_s) as usize;
        for (k, slot) in busy_s.iter_mut().enumerate().take(b + 1).skip(first) {
            let lo = start.max(k as f64 * bucket_s);
            let hi = end.min((k + 1) as f64 * bucket_s);
            *slot += (hi - lo).max(0.0);
        }
    }
    let at = |k: usize| (k as f64 + 0.5) * bucket_s;
    let per_s = |v: &[f64]| {
        v.iter()
            .enumerate()
            .map(|(k, v)| (at(k), v / bucket_s))
            .collect()
    };
    Some(TimeBuckets {
        bucket_s,
        tokens_per_s: per_s(&tokens),
        requests_per_s: per_s(&done),
        in_flight: per_s(&busy_s),
    })
}

// ---------------------------------------------------------------- telemetry

/// Groups numeric samples by a key into time series (seconds since run start).
fn sample_series(
    samples: &[Value],
    key: impl Fn(&Value) -> String,
    field: &str,
    scale: f64,
) -> BTreeMap<String, Points> {
    let mut out: BTreeMap<String, Points> = BTreeMap::new();
    for sample in samples.iter().filter(|s| s.get("gap").is_none()) {
        let (Some(t), Some(v)) = (sample["t_ns"].as_f64(), sample[field].as_f64()) else {
            continue;
        };
        out.entry(key(sample))
            .or_default()
            .push((t / 1e9, v * scale));
    }
    for points in out.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// Counts gap records by reason, for a one-line note.
fn gap_note(samples: &[Value]) -> Option<String> {
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for sample in samples {
        if let Some(reason) = sample.get("gap") {
            let reason = reason
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| reason.to_string());
            *reasons.entry(reason).or_default() += 1;
        }
    }
    (!reasons.is_empty()).then(|| {
        let parts: Vec<String> = reasons.iter().map(|(k, v)| format!("{v}× {k}")).collect();
        format!("Sampling gaps: {}.", parts.join("; "))
    })
}

/// Chart id, title, y label, and named lines.
type SeriesChart = (
    &'static str,
    &'static str,
    &'static str,
    BTreeMap<String, Points>,
);

/// One chart per metric; each map entry becomes a line.
fn series_charts(page: &mut String, charts: &[SeriesChart]) {
    page.push_str("<div class=\"grid\">");
    for (id, title, y_label, lines) in charts {
        if lines.is_empty() {
            continue;
        }
        let series: Vec<Series> = lines
            .iter()
            .enumerate()
            .map(|(i, (name, points))| Series {
                name: name.clone(),
                color: SERIES_COLORS[i % SERIES_COLORS.len()],
                points: points.clone(),
            })
            .collect();
        let _ = write!(page, "<div class=\"chart\"><h3>{}</h3>", esc(title));
        line_chart(
            page,
            &LineChart {
                id,
                x_label: "seconds since run start",
                y_label,
                y_fixed: None,
                series: &series,
            },
        );
        page.push_str("</div>");
    }
    page.push_str("</div>");
}

fn section_server_metrics(page: &mut String, samples: &[Value]) {
    if samples.is_empty() {
        return;
    }
    page.push_str("<h2>Server metrics</h2>");
    if let Some(note) = gap_note(samples) {
        let _ = write!(page, "<p class=\"note\">{}</p>", esc(&note));
    }
    let by_field = |field: &str| -> Vec<(f64, f64)> {
        sample_series(samples, |_| String::new(), field, 1.0)
            .into_values()
            .next()
            .unwrap_or_default()
    };
    let mut queue_lines = BTreeMap::new();
    for (name, field) in [("running", "running"), ("waiting", "waiting")] {
        let points = by_field(field);
        if !points.is_empty() {
            queue_lines.insert(name.to_string(), points);
        }
    }
    let kv = sample_series(samples, |_| "KV cache".into(), "kv_cache_usage", 100.0);
    let charts = [
        (
            "server-queue",
            "Running and waiting requests",
            "requests",
            queue_lines,
        ),
        ("server-kv", "KV cache usage", "%", kv),
    ];
    if charts.iter().all(|c| c.3.is_empty()) {
        page.push_str("<p class=\"note\">No usable server metric samples.</p>");
        return;
    }
    series_charts(page, &charts);
}

fn section_gpu(page: &mut String, samples: &[Value]) {
    if samples.is_empty() {
        return;
    }
    page.push_str("<h2>GPU</h2>");
    if let Some(note) = gap_note(samples) {
        let _ = write!(page, "<p class=\"note\">{}</p>", esc(&note));
    }
    let gpu_name = |s: &Value| {
        let host = s["host"].as_str().unwrap_or("");
        let gpu = s["gpu"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| s["gpu"].to_string());
        if host.is_empty() {
            format!("GPU {gpu}")
        } else {
            format!("{host} GPU {gpu}")
        }
    };
    let charts = [
        (
            "gpu-memory",
            "GPU memory used",
            "MiB",
            sample_series(samples, gpu_name, "memory_used_mib", 1.0),
        ),
        (
            "gpu-util",
            "GPU utilisation",
            "%",
            sample_series(samples, gpu_name, "gpu_util_pct", 1.0),
        ),
        (
            "gpu-power",
            "GPU power",
            "W",
            sample_series(samples, gpu_name, "power_w", 1.0),
        ),
    ];
    if charts.iter().all(|c| c.3.is_empty()) {
        page.push_str("<p class=\"note\">No usable GPU samples.</p>");
        return;
    }
    series_charts(page, &charts);
}

// ---------------------------------------------------------------- tables

fn section_slowest(page: &mut String, records: &[RequestRecord]) {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| !r.warmup && r.ok()).collect();
    if ok.is_empty() {
        return;
    }
    page.push_str("<h2>Slowest requests</h2><div class=\"grid\">");
    type Key = fn(&RequestRecord) -> Option<f64>;
    let tables: [(&str, Key); 2] = [("by TTFT", |r| r.ttft_ms), ("by E2E", |r| r.e2e_ms)];
    for (title, key) in tables {
        let mut sorted: Vec<&RequestRecord> =
            ok.iter().copied().filter(|r| key(r).is_some()).collect();
        sorted.sort_by(|a, b| key(b).unwrap_or(0.0).total_cmp(&key(a).unwrap_or(0.0)));
        let _ = write!(
            page,
            "<div><h3>Top {SLOWEST} {title}</h3><table class=\"num\"><thead><tr><th>#</th><th>request</th>\
             <th>TTFT</th><th>E2E</th><th>queue</th><th>prefill</th><th>out tok</th><th>trace</th></tr></thead><tbody>"
        );
        for r in sorted.iter().take(SLOWEST) {
            let server = r.server.as_ref();
            let trace_id = r.trace_id.map(|t| t.to_string());
            let trace = match (r.trace_url.as_deref().and_then(safe_url), &trace_id) {
                (Some(url), id) => format!(
                    "<a href=\"{}\" rel=\"noreferrer\" title=\"{}\">open</a>",
                    esc(url),
                    esc(id.as_deref().unwrap_or(url))
                ),
                (None, Some(id)) => format!("<code title=\"{0}\">{0}</code>", esc(id)),
                (None, None) => "–".into(),
            };
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{trace}</td></tr>",
                r.index,
                esc(&truncate(&r.request_id, 24)),
                opt_num(r.ttft_ms),
                opt_num(r.e2e_ms),
                opt_num(server.and_then(|s| s.queue_ms)),
                opt_num(server.and_then(|s| s.prefill_ms)),
                r.output_tokens.map(|v| v.to_string()).unwrap_or_else(|| "–".into()),
            );
        }
        page.push_str("</tbody></table></div>");
    }
    page.push_str(
        "</div><p class=\"note\">Times in ms; queue and prefill from the server's span.</p>",
    );
}

/// Failed requests of one kind: how many, their HTTP statuses, a few messages.
#[derive(Default)]
struct ErrorGroup {
    count: u64,
    statuses: BTreeMap<u16, u64>,
    examples: Vec<String>,
}

fn section_errors(page: &mut String, records: &[RequestRecord]) {
    page.push_str("<h2>Errors</h2>");
    let mut kinds: BTreeMap<crate::record::ErrorKind, ErrorGroup> = BTreeMap::new();
    for r in records.iter().filter(|r| !r.warmup) {
        let Some(error) = &r.error else { continue };
        let entry = kinds.entry(error.kind).or_default();
        entry.count += 1;
        if let Some(status) = error.status {
            *entry.statuses.entry(status).or_default() += 1;
        }
        let mut example = error.message.clone();
        if let Some(body) = &error.body_excerpt {
            let _ = write!(example, " — {body}");
        }
        let example = truncate(&example, 300);
        if entry.examples.len() < ERROR_EXAMPLES && !entry.examples.contains(&example) {
            entry.examples.push(example);
        }
    }
    if kinds.is_empty() {
        page.push_str("<p class=\"note\">No failed requests.</p>");
        return;
    }
    page.push_str(
        "<table><thead><tr><th>kind</th><th>count</th><th>HTTP status</th><th>example messages</th></tr></thead><tbody>",
    );
    for (kind, group) in kinds {
        let count = group.count;
        let statuses: Vec<String> = group
            .statuses
            .iter()
            .map(|(s, n)| format!("{s} ×{n}"))
            .collect();
        let examples: Vec<String> = group
            .examples
            .iter()
            .map(|e| format!("<li>{}</li>", esc(e)))
            .collect();
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{count}</td><td>{}</td><td><ul>{}</ul></td></tr>",
            kind.as_str(),
            esc(&statuses.join(", ")),
            examples.join("")
        );
    }
    page.push_str("</tbody></table>");
}

fn section_setup(page: &mut String, run: &Value) {
    page.push_str("<h2>Setup and environment</h2>");
    if run.is_null() {
        page.push_str("<p class=\"note\">run.json is missing.</p>");
        return;
    }
    let text = |v: &Value| match v {
        Value::Null => "–".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let time = |v: &Value| {
        v.as_u64()
            .and_then(|ns| i64::try_from(ns).ok())
            .map(|ns| {
                chrono::DateTime::from_timestamp_nanos(ns)
                    .format("%Y-%m-%d %H:%M:%S UTC")
                    .to_string()
            })
            .unwrap_or_else(|| "–".into())
    };
    let models: Vec<String> = run["server"]["models"]["data"]
        .as_array()
        .map(|data| {
            data.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let server_version = match &run["server"]["version"] {
        Value::Object(o) => o
            .get("version")
            .map(text)
            .unwrap_or_else(|| Value::Object(o.clone()).to_string()),
        other => text(other),
    };
    let rows = [
        ("run id", text(&run["run_id"])),
        ("command line", text(&run["command_line"])),
        ("started", time(&run["started_unix_ns"])),
        ("ended", time(&run["ended_unix_ns"])),
        ("partial", text(&run["partial"])),
        ("server URL", text(&run["server"]["url"])),
        ("server version", server_version),
        (
            "server models",
            if models.is_empty() {
                "–".into()
            } else {
                models.join(", ")
            },
        ),
        (
            "host",
            format!(
                "{} ({}, {} CPUs)",
                text(&run["host"]["hostname"]),
                text(&run["host"]["os"]),
                text(&run["host"]["cpus"])
            ),
        ),
        (
            "tool",
            format!(
                "{} {} ({})",
                text(&run["tool"]["name"]),
                text(&run["tool"]["version"]),
                text(&run["tool"]["git_commit"])
            ),
        ),
    ];
    page.push_str("<table class=\"kv\"><tbody>");
    for (key, value) in rows {
        let _ = write!(
            page,
            "<tr><th>{}</th><td><code>{}</code></td></tr>",
            esc(key),
            esc(&value)
        );
    }
    page.push_str("</tbody></table>");
    if let Some(notes) = run["notes"].as_array().filter(|n| !n.is_empty()) {
        page.push_str("<h3>Notes</h3><ul>");
        for note in notes {
            let _ = write!(page, "<li>{}</li>", esc(&text(note)));
        }
        page.push_str("</ul>");
    }
    let config = serde_json::to_string_pretty(&run["config"]).unwrap_or_default();
    let _ = write!(
        page,
        "<details open><summary>Resolved configuration</summary><pre>{}</pre></details>",
        esc(&config)
    );
}

// ---------------------------------------------------------------- SVG charts

const SERIES_COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a chart.
struct Series {
    name: String,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

struct LineChart<'a> {
    /// Stable id, also the name the page's self-check reports.
    id: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    /// Fixed y range (e.g. 0..1 for a CDF); else 0..max.
    y_fixed: Option<(f64, f64)>,
    series: &'a [Series],
}

/// A linear map of `min..max` onto `0..1`.
struct Scale {
    min: f64,
    max: f64,
}

impl Scale {
    fn new(min: f64, max: f64) -> Scale {
        if max > min {
            Scale { min, max }
        } else {
            Scale {
                min,
                max: min + 1.0,
            }
        }
    }

    fn at(&self, v: f64) -> f64 {
        ((v - self.min) / (self.max - self.min)).clamp(0.0, 1.0)
    }

    /// About `n` round tick values inside the range.
    fn ticks(&self, n: usize) -> Vec<f64> {
        let raw = (self.max - self.min) / n.max(1) as f64;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * magnitude)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * magnitude);
        let mut ticks = Vec::new();
        let mut t = (self.min / step).ceil() * step;
        while t <= self.max + step * 1e-9 && ticks.len() < 50 {
            ticks.push(t);
            t += step;
        }
        ticks
    }
}

/// Every `k`-th point so that at most [`MAX_LINE_POINTS`] remain (the last is kept).
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_LINE_POINTS {
        return points.to_vec();
    }
    let stride = points.len().div_ceil(MAX_LINE_POINTS);
    let mut out: Vec<(f64, f64)> = points.iter().copied().step_by(stride).collect();
    if let Some(last) = points.last() {
        if out.last() != Some(last) {
            out.push(*last);
        }
    }
    out
}

fn legend_html<'a>(page: &mut String, entries: impl Iterator<Item = (&'a str, &'a str)>) {
    page.push_str("<div class=\"legend\">");
    for (name, color) in entries {
        let _ = write!(
            page,
            "<span><i style=\"background:{color}\"></i>{}</span>",
            esc(name)
        );
    }
    page.push_str("</div>");
}

/// Writes the x axis (grid lines and labels) of a plot area.
fn x_axis(
    body: &mut String,
    x: &Scale,
    left: f64,
    top: f64,
    plot_w: f64,
    plot_h: f64,
    label: &str,
) {
    for t in x.ticks(8) {
        let px = left + x.at(t) * plot_w;
        let _ = write!(
            body,
            "<line class=\"grid\" x1=\"{px:.1}\" y1=\"{top:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\"/>\
             <text class=\"tick\" x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top + plot_h,
            top + plot_h + 14.0,
            num(t)
        );
    }
    let _ = write!(
        body,
        "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        left + plot_w / 2.0,
        top + plot_h + 30.0,
        esc(label)
    );
}

fn line_chart(page: &mut String, chart: &LineChart) {
    let series: Vec<(&Series, Vec<(f64, f64)>)> = chart
        .series
        .iter()
        .map(|s| (s, thin(&s.points)))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_min, mut x_max, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for (x, y) in all {
        x_min = x_min.min(*x);
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    if !x_min.is_finite() {
        (x_min, x_max) = (0.0, 1.0);
    }
    let x = Scale::new(x_min.min(0.0), x_max);
    let y = match chart.y_fixed {
        Some((lo, hi)) => Scale::new(lo, hi),
        None => Scale::new(0.0, if y_max > 0.0 { y_max * 1.05 } else { 1.0 }),
    };
    let (width, height, left, right, top, bottom) = (540.0, 250.0, 58.0, 14.0, 10.0, 40.0);
    let (plot_w, plot_h) = (width - left - right, height - top - bottom);
    let mut body = String::new();
    x_axis(&mut body, &x, left, top, plot_w, plot_h, chart.x_label);
    for t in y.ticks(5) {
        let py = top + (1.0 - y.at(t)) * plot_h;
        let label = if chart.y_fixed == Some((0.0, 1.0)) {
            format!("{:.0}%", t * 100.0)
        } else {
            num(t)
        };
        let _ = write!(
            body,
            "<line class=\"grid\" x1=\"{left:.1}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\"/>\
             <text class=\"tick\" x=\"{:.1}\" y=\"{py:.1}\" text-anchor=\"end\" dominant-baseline=\"middle\">{label}</text>",
            left + plot_w,
            left - 6.0
        );
    }
    let _ = write!(
        body,
        "<text class=\"axis\" transform=\"translate(12 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        top + plot_h / 2.0,
        esc(chart.y_label)
    );
    let mut marks = 0;
    for (s, points) in &series {
        let mut d = String::with_capacity(points.len() * 14);
        for (i, (px, py)) in points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { "L" },
                left + x.at(*px) * plot_w,
                top + (1.0 - y.at(*py)) * plot_h
            );
        }
        if points.len() == 1 {
            let _ = write!(d, "h2");
        }
        let _ = write!(
            body,
            "<path data-mark=\"1\" d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\"><title>{}</title></path>",
            s.color,
            esc(&s.name)
        );
        marks += 1;
    }
    if series.len() > 1 || chart.y_fixed.is_some() {
        legend_html(page, series.iter().map(|(s, _)| (s.name.as_str(), s.color)));
    }
    let _ = write!(
        page,
        "<svg data-chart=\"{}\" data-expect=\"{marks}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\">{body}</svg>",
        esc(chart.id),
        esc(chart.id)
    );
}

// ---------------------------------------------------------------- page assets

const STYLE: &str = "\
:root{--fg:#1d2330;--muted:#5b6475;--line:#e3e6ec;--bg:#fff;--card:#f6f7f9}\
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--fg);\
font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif}\
main{max-width:1180px;margin:0 auto;padding:20px 24px 40px}\
h1{font-size:22px;margin:4px 0 14px}h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid var(--line);padding-bottom:4px}\
h3{font-size:14px;margin:6px 0}\
.banner{background:#fff3cd;border:1px solid #e0b400;padding:10px 14px;border-radius:6px;font-weight:600;margin:8px 0}\
.note{color:var(--muted);margin:6px 0}.warn{color:#8a4b00}\
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:10px}\
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px}\
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}\
.card .v{font-size:22px;font-weight:650}.card .d{color:var(--muted);font-size:12px}\
.diagnosis{margin:12px 0;padding:10px 14px;border-left:4px solid #3d85c6;background:#eef4fb;border-radius:4px}\
table{border-collapse:collapse;width:100%;margin:6px 0}th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}\
thead th{background:var(--card);font-weight:600}table.num td:not(:first-child):not(:nth-child(2)){text-align:right;font-variant-numeric:tabular-nums}\
tr.server td:first-child{color:#1f4e79}table.kv th{width:160px;color:var(--muted);font-weight:500}\
td ul{margin:0;padding-left:16px}code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}\
pre{background:var(--card);border:1px solid var(--line);padding:10px;overflow:auto;max-height:420px}\
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:14px}\
.chart{border:1px solid var(--line);border-radius:8px;padding:8px 10px}\
svg{width:100%;height:auto;display:block}svg.wide{border:1px solid var(--line);border-radius:8px}\
svg .grid{stroke:#eceef2;stroke-width:1}svg .tick{fill:#6b7385;font-size:10px}svg .axis{fill:#4a5163;font-size:11px}\
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:4px 0 6px;font-size:12px;color:var(--muted)}\
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-2px}\
footer{margin-top:30px;color:var(--muted);font-size:11px}a{color:#1f5fa8}";

/// Installed first: records every script error of the page for the self-check.
const ERROR_TRAP_SCRIPT: &str = "window.__tracebenchErrors=[];\
window.addEventListener('error',function(e){window.__tracebenchErrors.push(String(e.message||e));});";

/// Counts the drawn marks of every chart against what was written, notes script
/// errors, and writes the verdict into `#tracebench-check` (read by check-report.sh).
const CHECK_SCRIPT: &str = "(function(){var el=document.getElementById('tracebench-check');\
try{var parts=[],bad=[];var charts=document.querySelectorAll('svg[data-chart]');\
for(var i=0;i<charts.length;i++){var svg=charts[i];var name=svg.getAttribute('data-chart');\
var expect=parseInt(svg.getAttribute('data-expect'),10);var drawn=svg.querySelectorAll('[data-mark]').length;\
var box=svg.getBoundingClientRect();parts.push(name+'='+drawn);\
if(drawn===0||drawn!==expect||box.width<10||box.height<10){bad.push(name);}}\
var errors=window.__tracebenchErrors||[];\
var ok=errors.length===0&&bad.length===0&&parts.length>0;\
el.setAttribute('data-verdict',ok?'ok':'fail');el.setAttribute('data-height',String(Math.ceil(document.documentElement.scrollHeight)));\
el.textContent='report self-check: '+(ok?'ok':'fail')+'; charts '+parts.join(' ')+\
(bad.length?'; empty or broken: '+bad.join(','):'')+(errors.length?'; script errors: '+errors.join(' | '):'');\
}catch(e){el.setAttribute('data-verdict','fail');el.textContent='report self-check: fail; '+e;}})();";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn only_http_links_are_linked() {
        assert_eq!(
            safe_url("http://jaeger:16686/trace/ab"),
            Some("http://jaeger:16686/trace/ab")
        );
        assert_eq!(safe_url("HTTPS://x"), Some("HTTPS://x"));
        assert_eq!(safe_url("javascript:alert(1)"), None);
        assert_eq!(safe_url(" data:text/html,x"), None);
    }

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        let ticks = Scale::new(0.0, 97.0).ticks(5);
        assert_eq!(ticks, vec![0.0, 20.0, 40.0, 60.0, 80.0]);
        let ticks = Scale::new(0.3, 1.7).ticks(4);
        assert!(ticks.iter().all(|t| (0.3..=1.7).contains(t)));
        assert!(ticks.len() >= 3);
    }

    #[test]
    fn cdf_ends_at_one_and_is_monotone() {
        let sorted: Vec<f64> = (0..10_000).map(f64::from).collect();
        let points = cdf_points(&sorted);
        assert_eq!(points.len(), CDF_POINTS + 1);
        assert_eq!(points.last().map(|p| p.1), Some(1.0));
        assert!(points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let few = cdf_points(&[1.0, 2.0]);
        assert_eq!(few, vec![(1.0, 0.5), (2.0, 1.0)]);
    }

    #[test]
    fn thinning_keeps_the_last_point() {
        let points: Vec<(f64, f64)> = (0..5000).map(|i| (i as f64, 1.0)).collect();
        let thinned = thin(&points);
        assert!(thinned.len() <= MAX_LINE_POINTS + 1);
        assert_eq!(thinned.last(), points.last());
    }

    #[test]
    fn ordinals() {
        assert_eq!(ordinal(2), "2nd");
        assert_eq!(ordinal(11), "11th");
        assert_eq!(ordinal(23), "23rd");
        assert_eq!(ordinal(84), "84th");
    }
}
