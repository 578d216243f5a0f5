//! The end of a run, in one streaming pass over `requests.jsonl`: each
//! record gets its GPU attribution and its server span, is written to the
//! final file and counted into the summary; then the diagnosis (a second,
//! light pass) and `requests.csv`. Memory is what one record and the running
//! aggregates hold, however many requests the run made.

use crate::analysis::summary::{diagnose_from, SummaryBuilder};
use crate::analysis::{Slo, Summary};
use crate::record::{records_in, RecordWriter, RequestRecord};
use crate::telemetry::TelemetryReport;
use crate::trace::{ClientSpanExporter, SpanCollector};
use anyhow::Context;
use std::path::Path;

/// What the finishing pass adds to each record.
pub struct Finishers<'a> {
    pub telemetry: Option<&'a TelemetryReport>,
    pub collector: &'a SpanCollector,
    pub client_spans: Option<&'a mut ClientSpanExporter>,
}

/// Rewrites `requests.jsonl` with the joined records and summarises them;
/// `notes` gets what failed on the side (the client spans' export).
pub async fn join_and_summarise(
    run_dir: &Path,
    run_id: &str,
    slo: &Slo,
    partial: bool,
    finishers: Finishers<'_>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Summary> {
    let path = run_dir.join("requests.jsonl");
    let mut summary = SummaryBuilder::new(slo);
    let mut out = RecordWriter::replacing(&path)?;
    let Finishers {
        telemetry,
        collector,
        mut client_spans,
    } = finishers;
    for record in records_in(&path)? {
        let mut record: RequestRecord = record?;
        if let Some(report) = telemetry {
            report.attribute(&mut record);
        }
        collector.join(&mut record);
        summary.observe(&record);
        if let Some(exporter) = client_spans.as_deref_mut() {
            if let Err(e) = exporter.add(&record).await {
                notes.push(format!("client spans were not all exported: {e:#}"));
                client_spans = None;
            }
        }
        out.write(&record)?;
    }
    out.commit()
        .with_context(|| format!("cannot rewrite {}", path.display()))?;
    let mut summary = summary.finish(run_id, partial);
    diagnose_from(&mut summary, records_in(&path)?.filter_map(Result::ok));
    Ok(summary)
}
