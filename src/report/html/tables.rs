//! The text and table sections of the report: headline cards and diagnosis,
//! the summary table, the slowest requests, errors by kind, and the setup
//! from `run.json`. The slowest and error tables are gathered as
//! `requests.jsonl` streams by and keep a bounded number of rows.

use super::{esc, num, opt_num, safe_url, truncate};
use crate::analysis::summary::CLIENT_METRICS;
use crate::analysis::{Slo, Summary};
use crate::record::{ErrorKind, RequestRecord};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The headline cards (requests, duration, throughput, goodput, span join) and the diagnosis.
pub(super) fn section_headline(page: &mut String, s: &Summary) {
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

/// The table of every summarised metric.
pub(super) fn section_summary(page: &mut String, summary: &Summary) {
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

/// Rows of each slowest-requests table.
const SLOWEST: usize = 10;
/// Example messages shown per error kind.
const ERROR_EXAMPLES: usize = 3;

/// The slowest successful measured requests by one key, slowest first; equal
/// keys keep file order.
struct SlowestBy {
    title: &'static str,
    key: fn(&RequestRecord) -> Option<f64>,
    rows: Vec<(f64, RequestRecord)>,
}

impl SlowestBy {
    fn add(&mut self, record: &RequestRecord) {
        let Some(value) = (self.key)(record) else {
            return;
        };
        let at = self
            .rows
            .partition_point(|(v, _)| v.total_cmp(&value).is_ge());
        if at < SLOWEST {
            self.rows.insert(at, (value, record.clone()));
            self.rows.truncate(SLOWEST);
        }
    }
}

/// The slowest-requests tables, by TTFT and by E2E.
pub(super) struct Slowest {
    any_ok: bool,
    tables: [SlowestBy; 2],
}

impl Default for Slowest {
    fn default() -> Self {
        let table = |title, key| SlowestBy {
            title,
            key,
            rows: Vec::new(),
        };
        Slowest {
            any_ok: false,
            tables: [
                table("by TTFT", |r| r.ttft_ms),
                table("by E2E", |r| r.e2e_ms),
            ],
        }
    }
}

impl Slowest {
    pub fn add(&mut self, record: &RequestRecord) {
        if record.warmup || !record.ok() {
            return;
        }
        self.any_ok = true;
        for table in &mut self.tables {
            table.add(record);
        }
    }

    pub fn render(self, page: &mut String) {
        if !self.any_ok {
            return;
        }
        page.push_str("<h2>Slowest requests</h2><div class=\"grid\">");
        for table in self.tables {
            let title = table.title;
            let _ = write!(
                page,
                "<div><h3>Top {SLOWEST} {title}</h3><table class=\"num\"><thead><tr><th>#</th><th>request</th>\
                 <th>TTFT</th><th>E2E</th><th>queue</th><th>prefill</th><th>out tok</th><th>trace</th></tr></thead><tbody>"
            );
            for (_, r) in &table.rows {
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
}

/// Failed requests of one kind: how many, their HTTP statuses, a few messages.
#[derive(Default)]
struct ErrorGroup {
    count: u64,
    statuses: BTreeMap<u16, u64>,
    examples: Vec<String>,
}

/// The errors table of the measured requests, by kind.
#[derive(Default)]
pub(super) struct Errors {
    kinds: BTreeMap<ErrorKind, ErrorGroup>,
}

impl Errors {
    pub fn add(&mut self, r: &RequestRecord) {
        if r.warmup {
            return;
        }
        let Some(error) = &r.error else { return };
        let entry = self.kinds.entry(error.kind).or_default();
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

    pub fn render(self, page: &mut String) {
        let kinds = self.kinds;
        page.push_str("<h2>Errors</h2>");
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
}

/// The setup of the run from run.json: command line, server, host, tool, notes, configuration.
pub(super) fn section_setup(page: &mut String, run: &Value) {
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
