//! The typed reader of a run folder (`results/<run_id>/`), through which the
//! report, the history, compare and `show` read a run back: `run.json`,
//! `summary.json`, and the JSONL files (`requests.jsonl`, `spans.jsonl`,
//! `telemetry.jsonl`, `server_metrics.jsonl`) one line at a time, so that no
//! reader needs every record of a run in memory.

use crate::analysis::summary::{diagnose_from, SummaryBuilder};
use crate::analysis::{Slo, Summary};
pub use crate::jsonl::{JsonLines, JsonlError, SkipUnreadable};
use crate::record::RequestRecord;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The per-request records, joined with their server spans at the end of the run.
pub const REQUESTS: &str = "requests.jsonl";
/// The setup of the run: command line, resolved configuration, server, host, notes.
pub const RUN: &str = "run.json";
/// The summary the run computed (`tracebench.summary/1`).
pub const SUMMARY: &str = "summary.json";
/// The server spans as received (one OTLP/JSON resource span per line).
pub const SPANS: &str = "spans.jsonl";
/// GPU samples (`tracebench.gpu_sample/1`), with gap records.
pub const TELEMETRY: &str = "telemetry.jsonl";
/// Server `/metrics` samples (`tracebench.server_metrics/1`), with gap records.
pub const SERVER_METRICS: &str = "server_metrics.jsonl";

/// Why part of a run folder could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{} is not a run folder: it has no {REQUESTS}", dir.display())]
    NotARunFolder { dir: PathBuf },
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lines(#[from] JsonlError),
    #[error("{} is not JSON", path.display())]
    NotJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is not a tracebench summary", path.display())]
    NotASummary {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Where a summary came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryOrigin {
    /// The run's own `summary.json`.
    Stored,
    /// Computed from `requests.jsonl` because `summary.json` was missing or unreadable.
    Computed,
}

/// One run folder. Nothing is read until asked for; each JSONL accessor opens
/// its file anew, so a caller may make several passes.
#[derive(Debug, Clone)]
pub struct RunFolder {
    dir: PathBuf,
}

impl RunFolder {
    /// The run folder at `dir`; fails when it has no `requests.jsonl`.
    pub fn open(dir: &Path) -> Result<RunFolder, ReadError> {
        if !dir.join(REQUESTS).is_file() {
            return Err(ReadError::NotARunFolder {
                dir: dir.to_path_buf(),
            });
        }
        Ok(RunFolder {
            dir: dir.to_path_buf(),
        })
    }

    /// The path of one of the folder's files ([`REQUESTS`], [`RUN`], ...).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// `run.json`; `None` when the run did not write it.
    pub fn run_json(&self) -> Result<Option<Value>, ReadError> {
        let path = self.path(RUN);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ReadError::Io { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| ReadError::NotJson { path, source })
    }

    /// The run's `summary.json`. It is parsed as a JSON value first because the
    /// flattened vLLM-spelled keys repeat some field names (`request_throughput`,
    /// `output_throughput`, ...), which a direct typed parse refuses as duplicates.
    pub fn summary(&self) -> Result<Summary, ReadError> {
        let path = self.path(SUMMARY);
        let text = std::fs::read_to_string(&path).map_err(|source| ReadError::Io {
            path: path.clone(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ReadError::NotJson {
            path: path.clone(),
            source,
        })?;
        serde_json::from_value(value).map_err(|source| ReadError::NotASummary { path, source })
    }

    /// The stored summary or, when `summary.json` is missing or unreadable, one
    /// computed from `requests.jsonl` without SLOs (which only the run knew).
    /// `run` is `run.json` (or `Value::Null`), for the run id and whether the
    /// run was partial.
    pub fn summary_or_computed(&self, run: &Value) -> Result<(Summary, SummaryOrigin), ReadError> {
        if let Ok(summary) = self.summary() {
            return Ok((summary, SummaryOrigin::Stored));
        }
        let partial = run["partial"].as_bool().unwrap_or(false);
        let summary = self.summarize(run["run_id"].as_str(), &Slo::default(), partial)?;
        Ok((summary, SummaryOrigin::Computed))
    }

    /// The summary of `requests.jsonl` in two streaming passes (the second for
    /// the diagnosis), unreadable lines left out; the run id is the first
    /// record's when `run_id` is `None`.
    pub fn summarize(
        &self,
        run_id: Option<&str>,
        slo: &Slo,
        partial: bool,
    ) -> Result<Summary, ReadError> {
        let mut unused = Vec::new();
        let mut builder = SummaryBuilder::new(slo);
        let mut first_run_id = None;
        for record in self.records()?.skip_unreadable(&mut unused) {
            let record = record?;
            first_run_id.get_or_insert_with(|| record.run_id.clone());
            builder.observe(&record);
        }
        let run_id = run_id.map(str::to_string).or(first_run_id);
        let mut summary = builder.finish(run_id.as_deref().unwrap_or("unknown"), partial);
        let records = self.records()?.skip_unreadable(&mut unused);
        diagnose_from(&mut summary, records.filter_map(Result::ok));
        Ok(summary)
    }

    /// The records of `requests.jsonl`, one at a time, in file order.
    pub fn records(&self) -> Result<JsonLines<RequestRecord>, JsonlError> {
        JsonLines::open(&self.path(REQUESTS))
    }

    /// The lines of `spans.jsonl` (none when absent).
    pub fn spans(&self) -> Result<JsonLines<Value>, JsonlError> {
        JsonLines::open_if_present(&self.path(SPANS))
    }

    /// The lines of `telemetry.jsonl` (none when absent).
    pub fn telemetry(&self) -> Result<JsonLines<Value>, JsonlError> {
        JsonLines::open_if_present(&self.path(TELEMETRY))
    }

    /// The lines of `server_metrics.jsonl` (none when absent).
    pub fn server_metrics(&self) -> Result<JsonLines<Value>, JsonlError> {
        JsonLines::open_if_present(&self.path(SERVER_METRICS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_requests_is_not_a_run_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            RunFolder::open(dir.path()),
            Err(ReadError::NotARunFolder { .. })
        ));
    }
}
