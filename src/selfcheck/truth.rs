//! The simulator's truth log, and the client's records set against it: each
//! request's TTFT error, each chunk gap's error and the merged chunks, the
//! figures of a first wave, and how many streams were really in flight.

use super::WaveFigures;
use crate::analysis::stats::percentile_of_sorted;
use crate::record::RequestRecord;
use anyhow::Context;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// One truth-log line of the simulator.
#[derive(Debug, Deserialize)]
pub(super) struct Truth {
    pub request_id: Option<String>,
    pub arrival_unix_ns: u64,
    pub chunk_write_unix_ns: Vec<u64>,
}

/// The simulator's truth-log entries of the requests of `run_id`, by request id.
pub(super) fn read_truth(path: &Path, run_id: &str) -> anyhow::Result<HashMap<String, Truth>> {
    let file = std::fs::File::open(path).context("the simulator wrote no truth log")?;
    let prefix = format!("{run_id}-");
    let mut truth = HashMap::new();
    for line in BufReader::new(file).lines() {
        let entry: Truth = serde_json::from_str(&line?).context("bad truth-log line")?;
        if let Some(id) = entry
            .request_id
            .clone()
            .filter(|id| id.starts_with(&prefix))
        {
            truth.insert(id, entry);
        }
    }
    Ok(truth)
}

/// A successful request's TTFT error, ms: its first token's arrival minus the
/// simulator's first write, plus the time from `sent` to the request's write.
pub(super) fn ttft_error_ms(record: &RequestRecord, truth: &Truth) -> Option<f64> {
    let i = &record.instants_ns;
    let (first_token, written) = (i.first_token?, i.written?);
    let first_write = *truth.chunk_write_unix_ns.first()?;
    let client_first = record.sent_unix_ns as f64 + (first_token - i.sent) as f64;
    let before_write = (written - i.sent) as f64;
    Some((client_first - first_write as f64 + before_write) / 1e6)
}

pub(super) fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    values
}

/// The TTFT figures of the first wave of `records` (those sent before any
/// other finished: the first `concurrency` of them).
pub(super) fn wave_figures(
    records: &[RequestRecord],
    truth: &HashMap<String, Truth>,
) -> WaveFigures {
    let ok = records.iter().filter(|r| r.ok());
    let errors = ok
        .filter_map(|r| ttft_error_ms(r, truth.get(&r.request_id)?))
        .collect();
    let connects = records
        .iter()
        .filter_map(|r| r.connection.and_then(|c| c.connect_ms))
        .collect::<Vec<f64>>();
    let errors = sorted(errors);
    WaveFigures {
        requests: records.len() as u64,
        failed: records.iter().filter(|r| !r.ok()).count() as u64,
        reused: records
            .iter()
            .filter(|r| r.connection.is_some_and(|c| c.reused))
            .count() as u64,
        ttft_error_p50_ms: percentile_of_sorted(&errors, 50.0),
        ttft_error_p99_ms: percentile_of_sorted(&errors, 99.0),
        connect_p99_ms: (!connects.is_empty())
            .then(|| percentile_of_sorted(&sorted(connects), 99.0)),
    }
}

/// Compares one request's chunk gaps as the client saw them (`seen_ms`) with
/// the simulator's write instants: pushes each gap's absolute error (ms) to
/// `errors` and returns how many gaps the client saw as none although the
/// simulator wrote them at least half of `itl_ms` apart (merged chunks).
pub(super) fn compare_gaps(
    seen_ms: &[f64],
    writes_unix_ns: &[u64],
    itl_ms: f64,
    errors: &mut Vec<f64>,
) -> usize {
    let mut merged = 0;
    let real_gaps = writes_unix_ns
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e6);
    for (seen, real) in seen_ms.iter().zip(real_gaps) {
        errors.push((seen - real).abs());
        if *seen < 1e-6 && real >= itl_ms / 2.0 {
            merged += 1;
        }
    }
    merged
}

/// Most intervals [arrival, last write] open at one instant.
pub(super) fn max_overlap<'a>(truth: impl Iterator<Item = &'a Truth>) -> usize {
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for t in truth {
        let end = t
            .chunk_write_unix_ns
            .last()
            .copied()
            .unwrap_or(t.arrival_unix_ns);
        edges.push((t.arrival_unix_ns, 1));
        edges.push((end, -1));
    }
    edges.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        open += delta;
        most = most.max(open);
    }
    most as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_counts_streams_open_together() {
        let t = |a: u64, b: u64| Truth {
            request_id: None,
            arrival_unix_ns: a,
            chunk_write_unix_ns: vec![a + 1, b],
        };
        let truth = [t(0, 10), t(5, 15), t(12, 20), t(30, 40)];
        assert_eq!(max_overlap(truth.iter()), 2);
        assert_eq!(max_overlap([].iter()), 0);
    }

    #[test]
    fn a_chunk_read_with_the_next_one_throws_off_two_gaps_and_counts_as_merged() {
        let ms = 1_000_000;
        // Written every 10 ms; the client read the third chunk together with the
        // fourth, so it saw the third one 10 ms late and no gap after it.
        let writes = [0, 10 * ms, 20 * ms, 30 * ms, 40 * ms];
        let mut errors = Vec::new();
        let merged = compare_gaps(&[10.0, 20.0, 0.0, 10.0], &writes, 10.0, &mut errors);
        assert_eq!(merged, 1);
        assert_eq!(errors, [0.0, 10.0, 10.0, 0.0]);
        // Two chunks the simulator itself wrote together are not the client's doing.
        let writes = [0, 10 * ms, 10 * ms + ms / 10];
        errors.clear();
        assert_eq!(compare_gaps(&[10.0, 0.0], &writes, 10.0, &mut errors), 0);
        assert!((errors[1] - 0.1).abs() < 1e-9);
    }

    #[test]
    fn the_ttft_error_holds_the_time_before_the_write() {
        let ms = 1_000_000;
        let mut record: RequestRecord = serde_json::from_value(serde_json::json!({
            "schema": "tracebench.request/1", "run_id": "r", "request_id": "r-1", "index": 0,
            "warmup": false, "endpoint": "chat", "model": "m", "stream": true,
            "trace_id": null, "span_id": null, "max_tokens": 4, "input_tokens": null,
            "input_tokens_source": null, "output_tokens": 4, "output_tokens_source": "usage",
            "status": 200, "response_id": null, "finish_reason": "length", "error": null,
            "sent_unix_ns": 1_000 * ms,
            "instants_ns": {"intended": 0, "sent": 10 * ms, "written": 11 * ms, "first_token": 62 * ms},
            "ttft_ms": 52.0, "e2e_ms": null, "e2e_end_ms": null, "tpot_ms": null,
            "schedule_lag_ms": 0.0, "chunks": 4, "itl_chunk_ms": [], "itl_token_ms": null,
            "server": null, "server_missing_reason": null, "decomposition": null,
            "trace_url": null, "gpu": null
        }))
        .unwrap();
        // Written 1 ms after sent; the first token arrived 0.5 ms after its write.
        let truth = Truth {
            request_id: Some("r-1".into()),
            arrival_unix_ns: 1_001 * ms,
            chunk_write_unix_ns: vec![1_051 * ms + ms / 2],
        };
        let error = ttft_error_ms(&record, &truth).unwrap();
        assert!((error - 1.5).abs() < 1e-9, "{error}");
        record.instants_ns.written = None;
        assert_eq!(ttft_error_ms(&record, &truth), None, "never written");
    }
}
