//! `tracebench show RUN_DIR REQUEST_ID`: one request as a markdown block to
//! paste into a bug report (request, client and server timings, the TTFT
//! decomposition, the trace link and the command line of the run).

use crate::record::RequestRecord;
use crate::report::run_folder::{RunFolder, REQUESTS};
use anyhow::Context;
use std::fmt::Write;
use std::path::Path;

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.3}"))
}

fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "–".to_string(), |v| v.to_string())
}

/// The markdown block for one request of a run folder (its records read one at a time).
pub fn show_request(run_dir: &Path, request_id: &str) -> anyhow::Result<String> {
    let folder = RunFolder::open(run_dir)?;
    let mut found = None;
    for record in folder.records()? {
        let record = record?;
        if record.request_id == request_id {
            found = Some(record);
            break;
        }
    }
    let record = found.with_context(|| {
        format!(
            "no request `{request_id}` in {}",
            folder.path(REQUESTS).display()
        )
    })?;
    let command_line = folder
        .run_json()
        .ok()
        .flatten()
        .and_then(|run| run.get("command_line")?.as_str().map(str::to_string));
    Ok(render(&record, command_line.as_deref()))
}

fn render(r: &RequestRecord, command_line: Option<&str>) -> String {
    let mut out = String::new();
    let source = |s: Option<crate::record::CountSource>| {
        s.map(|s| {
            format!(
                " ({})",
                serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )
        })
        .unwrap_or_default()
    };
    let _ = writeln!(
        out,
        "### tracebench request `{}` (run `{}`)\n",
        r.request_id, r.run_id
    );
    let _ = writeln!(
        out,
        "- request: `POST {}`, model `{}`, stream {}, max_tokens {}",
        r.endpoint.path(),
        r.model,
        r.stream,
        count(r.max_tokens)
    );
    let _ = writeln!(
        out,
        "- tokens: input {}{}, output {}{}",
        count(r.input_tokens),
        source(r.input_tokens_source),
        count(r.output_tokens),
        source(r.output_tokens_source)
    );
    match &r.error {
        Some(e) => {
            let _ = writeln!(
                out,
                "- result: failed, {} {}: {}",
                e.kind.as_str(),
                count(e.status.map(u64::from)),
                e.message
            );
        }
        None => {
            let _ = writeln!(
                out,
                "- result: HTTP {}, finish_reason {}",
                count(r.status.map(u64::from)),
                r.finish_reason.as_deref().unwrap_or("–")
            );
        }
    }
    if let Some(trace_id) = &r.trace_id {
        let link = r
            .trace_url
            .as_deref()
            .map(|u| format!(" ({u})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "- trace: `{trace_id}`, client span `{}`{link}",
            r.span_id.as_deref().unwrap_or("–")
        );
    }
    let _ = writeln!(out, "\n| client | ms |\n|---|---:|");
    for (name, value) in [
        ("ttft", r.ttft_ms),
        ("tpot", r.tpot_ms),
        ("e2e (last token)", r.e2e_ms),
        ("e2e (stream end)", r.e2e_end_ms),
        ("schedule lag", Some(r.schedule_lag_ms)),
    ] {
        let _ = writeln!(out, "| {name} | {} |", ms(value));
    }
    if let Some(c) = &r.connection {
        let how = if c.reused { "reused" } else { "new" };
        let _ = writeln!(
            out,
            "
connection: {how}; connect {} ms, TLS {} ms",
            ms(c.connect_ms),
            ms(c.tls_ms)
        );
    }
    match &r.server {
        Some(s) => {
            let _ = writeln!(
                out,
                "\n| server: {} `{}` span `{}` | ms |\n|---|---:|",
                s.engine,
                s.span_name.trim(),
                s.span_id
            );
            for (name, value) in [
                ("queue", s.queue_ms),
                ("prefill", s.prefill_ms),
                ("decode", s.decode_ms),
                ("inference", s.inference_ms),
                ("ttft", s.ttft_ms),
                ("e2e", s.e2e_ms),
            ] {
                let _ = writeln!(out, "| {name} | {} |", ms(value));
            }
            let _ = writeln!(
                out,
                "\nserver tokens: prompt {}, completion {}; request id `{}`",
                count(s.prompt_tokens),
                count(s.completion_tokens),
                s.request_id.as_deref().unwrap_or("–")
            );
        }
        None => {
            let _ = writeln!(
                out,
                "\nserver span: none ({})",
                r.server_missing_reason.as_deref().unwrap_or("unknown")
            );
        }
    }
    if let Some(d) = &r.decomposition {
        let _ = writeln!(out, "\n| TTFT decomposition | ms |\n|---|---:|");
        for (name, value) in [
            ("connection setup", d.connect_ms),
            ("network + http", d.network_ms),
            ("server frontend", d.frontend_ms),
            ("queue", d.queue_ms),
            ("prefill", d.prefill_ms),
            ("arrival delay (send → server start)", d.arrival_delay_ms),
            ("stream overhead (decode)", d.stream_overhead_ms),
        ] {
            let _ = writeln!(out, "| {name} | {} |", ms(value));
        }
    }
    let _ = writeln!(
        out,
        "\ncommand line:\n\n```\n{}\n```",
        command_line.unwrap_or("(run.json not found)")
    );
    out
}
