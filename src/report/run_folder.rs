//! The typed reader of a run folder (`results/<run_id>/`): `run.json`,
//! `summary.json`, and the JSONL files (`requests.jsonl`, `spans.jsonl`,
//! `telemetry.jsonl`, `server_metrics.jsonl`) read one line at a time, so the
//! report, the history and compare never hold a whole file of a run in memory.

use crate::analysis::{summarize, Slo, Summary};
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

    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// The run's `summary.json`.
    pub fn summary(&self) -> Result<Summary, ReadError> {
        read_summary(&self.path(SUMMARY))
    }

    /// The stored summary or, when `summary.json` is missing or unreadable, one
    /// computed from `requests.jsonl` without SLOs (which only the run knew);
    /// only that fallback holds every record in memory. `run` is `run.json`
    /// (or `Value::Null`), for the run id and whether the run was partial.
    pub fn summary_or_computed(&self, run: &Value) -> Result<(Summary, SummaryOrigin), ReadError> {
        if let Ok(summary) = self.summary() {
            return Ok((summary, SummaryOrigin::Stored));
        }
        let mut unused = Vec::new();
        let records = self
            .records()?
            .skip_unreadable(&mut unused)
            .collect::<Result<Vec<_>, _>>()?;
        let run_id = run["run_id"]
            .as_str()
            .or_else(|| records.first().map(|r| r.run_id.as_str()))
            .unwrap_or("unknown");
        let partial = run["partial"].as_bool().unwrap_or(false);
        let summary = summarize(run_id, &records, &Slo::default(), partial);
        Ok((summary, SummaryOrigin::Computed))
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

/// Reads a `summary.json`. It goes through a JSON value first because the
/// flattened vLLM-spelled keys repeat some field names (`request_throughput`,
/// `output_throughput`, ...), which a direct typed parse refuses as duplicates.
pub fn read_summary(path: &Path) -> Result<Summary, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|source| ReadError::NotJson {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_value(value).map_err(|source| ReadError::NotASummary {
        path: path.to_path_buf(),
        source,
    })
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
