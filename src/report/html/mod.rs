//! The HTML report of one run (`report.html`): setup, summary table, latency
//! CDFs, a per-request timeline split into network, frontend, queue, prefill
//! and decode, throughput and telemetry over time, the slowest requests and errors.
//!
//! The page is built from the run folder in two streaming passes over
//! `requests.jsonl` and one over each sample file, into aggregates bounded
//! whatever the size of the run (see each section's module). The charts are SVG
//! written as text, the style and scripts are inlined, so the file is
//! self-contained and needs no network; a small inline script only checks the
//! page (see `scripts/check-report.sh`).

mod chart;
mod curves;
pub mod experiment;
mod study;
mod tables;
mod timeline;

pub use timeline::MAX_TIMELINE_ROWS;

use super::run_folder::{ReadError, RunFolder, SummaryOrigin};
use crate::record::RequestRecord;
use anyhow::Context;
use curves::{end_ns, Distributions, GpuCharts, ServerMetricCharts, TimeBuckets};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tables::{Errors, Slowest};
use timeline::TimelineSample;

/// The page's style sheet.
const STYLE: &str = include_str!("../assets/report.css");
/// Installed first: records every script error of the page for the self-check.
const ERROR_TRAP_SCRIPT: &str = include_str!("../assets/error-trap.js");
/// Checks the drawn page and writes its verdict into `#tracebench-check`.
const CHECK_SCRIPT: &str = include_str!("../assets/self-check.js");

/// Writes `run_dir/report.html` from the files of the run folder and returns its path.
pub fn write_report(run_dir: &Path) -> anyhow::Result<PathBuf> {
    let html = render_report(&RunFolder::open(run_dir)?)?;
    let path = run_dir.join("report.html");
    std::fs::write(&path, html).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// What the first pass over `requests.jsonl` gathers.
#[derive(Default)]
struct FirstPass {
    records: usize,
    max_index: u64,
    /// When the last measured request ended; `None` without measured requests.
    last_end_ns: Option<u64>,
    distributions: Distributions,
    slowest: Slowest,
    errors: Errors,
}

impl FirstPass {
    fn add(&mut self, record: &RequestRecord) {
        self.records += 1;
        self.max_index = self.max_index.max(record.index);
        if !record.warmup {
            self.last_end_ns = self.last_end_ns.max(Some(end_ns(record)));
        }
        self.distributions.add(record);
        self.slowest.add(record);
        self.errors.add(record);
    }
}

/// The whole report page as one string. Unreadable lines and files are noted
/// on the page; only I/O errors and a missing `requests.jsonl` fail.
pub fn render_report(folder: &RunFolder) -> anyhow::Result<String> {
    let mut problems = Vec::new();
    let mut first = FirstPass::default();
    for record in folder.records()?.skip_unreadable(&mut problems) {
        first.add(&record?);
    }
    let run = match folder.run_json() {
        Ok(Some(run)) => run,
        Ok(None) => {
            problems.push("run.json is missing; setup not shown".into());
            Value::Null
        }
        Err(ReadError::NotJson { source, .. }) => {
            problems.push(format!("run.json is not JSON ({source}); setup not shown"));
            Value::Null
        }
        Err(e) => {
            let cause = std::error::Error::source(&e).map_or_else(String::new, |c| c.to_string());
            problems.push(format!(
                "run.json cannot be read ({cause}); setup not shown"
            ));
            Value::Null
        }
    };
    let (summary, origin) = folder.summary_or_computed(&run)?;
    if origin == SummaryOrigin::Computed {
        problems.push(
            "summary.json is missing or unreadable; the summary was computed from requests.jsonl without SLOs"
                .into(),
        );
    }
    // The second pass needs the size and the end of the run from the first.
    let mut timeline = TimelineSample::new(first.records, first.max_index);
    let mut buckets = first.last_end_ns.map(TimeBuckets::new);
    for record in folder.records()?.skip_unreadable(&mut Vec::new()) {
        let record = record?;
        timeline.add(&record);
        if let Some(buckets) = &mut buckets {
            buckets.add(&record);
        }
    }
    let mut gpu = GpuCharts::default();
    for sample in folder.telemetry()?.skip_unreadable(&mut problems) {
        gpu.add(&sample?);
    }
    let mut server_metrics = ServerMetricCharts::default();
    for sample in folder.server_metrics()?.skip_unreadable(&mut problems) {
        server_metrics.add(&sample?);
    }

    let run_id = run["run_id"].as_str().unwrap_or(summary.run_id.as_str());
    let partial = run["partial"].as_bool().unwrap_or(false) || summary.partial;
    let mut page = String::with_capacity(256 * 1024);
    open_page(&mut page, &format!("tracebench report: {run_id}"));
    if partial {
        page.push_str(
            "<div class=\"banner\">Partial run: it was stopped before its end. \
             The numbers cover the requests that finished.</div>",
        );
    }
    for problem in &problems {
        let _ = write!(page, "<div class=\"note warn\">{}</div>", esc(problem));
    }
    tables::section_headline(&mut page, &summary);
    tables::section_summary(&mut page, &summary);
    first.distributions.render(&mut page);
    timeline.render(&mut page);
    TimeBuckets::render(buckets, &mut page);
    server_metrics.render(&mut page);
    gpu.render(&mut page);
    first.slowest.render(&mut page);
    first.errors.render(&mut page);
    tables::section_setup(&mut page, &run);
    close_page(&mut page);
    Ok(page)
}

/// The page's head (style, the error trap, a strict content policy) and its title.
fn open_page(page: &mut String, title: &str) {
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\
         <title>{}</title><style>{STYLE}</style><script>{ERROR_TRAP_SCRIPT}</script></head><body><main>",
        esc(title)
    );
    let _ = write!(page, "<h1>{}</h1>", esc(title));
}

/// The self-check's verdict line and script, and the page's end.
fn close_page(page: &mut String) {
    page.push_str(
        "<footer><span id=\"tracebench-check\" data-verdict=\"pending\">report self-check: pending</span></footer>",
    );
    page.push_str("</main><script>");
    page.push_str(CHECK_SCRIPT);
    page.push_str("</script></body></html>\n");
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
pub(super) fn safe_url(url: &str) -> Option<&str> {
    let lower = url.trim_start().to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://")).then_some(url)
}

/// Milliseconds (or any magnitude) with sensible precision.
pub(super) fn num(v: f64) -> String {
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

/// A number, or a dash when absent.
pub(super) fn opt_num(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "–".into())
}

/// At most `max_chars` characters of `text`, with an ellipsis when cut.
pub(super) fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let mut out: String = text.chars().take(max_chars).collect();
        out.push('…');
        out
    }
}

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
}
