//! The typed reader of a run folder (`results/<run_id>/`), through which the
//! report, the history, compare and `show` read a run back: `run.json`,
//! `summary.json`, and the JSONL files (`requests.jsonl`, `spans.jsonl`,
//! `telemetry.jsonl`, `server_metrics.jsonl`) one line at a time, so that no
//! reader needs every record of a run in memory.

use crate::analysis::{summarize, Slo, Summary};
use crate::record::RequestRecord;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::marker::PhantomData;
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
    /// One line of a JSONL file that is not what the file holds (e.g. the torn last line of a killed run).
    #[error("{}:{line}: unreadable line", path.display())]
    Line {
        path: PathBuf,
        /// 1-based.
        line: usize,
        #[source]
        source: serde_json::Error,
    },
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

/// The lines of a JSONL file parsed one at a time. Blank lines are skipped; an
/// unparsable line is a [`ReadError::Line`] item and reading goes on after it;
/// after an I/O error the iterator ends.
pub struct JsonLines<T> {
    path: PathBuf,
    /// `None` once reading failed, or for a file that is absent.
    reader: Option<BufReader<std::fs::File>>,
    line: usize,
    buffer: String,
    item: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonLines<T> {
    /// Opens a JSONL file; a missing file is an error.
    pub fn open(path: &Path) -> Result<JsonLines<T>, ReadError> {
        let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::over(path, Some(BufReader::new(file))))
    }

    /// Opens a JSONL file that a run may not have written: a missing file has no lines.
    pub fn open_if_present(path: &Path) -> Result<JsonLines<T>, ReadError> {
        match Self::open(path) {
            Err(ReadError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(Self::over(path, None))
            }
            other => other,
        }
    }

    fn over(path: &Path, reader: Option<BufReader<std::fs::File>>) -> JsonLines<T> {
        JsonLines {
            path: path.to_path_buf(),
            reader,
            line: 0,
            buffer: String::new(),
            item: PhantomData,
        }
    }

    /// The same lines with unreadable ones left out and described in `problems`
    /// (the first one with its line number, then how many in all), as the report
    /// and the history note them; only I/O errors remain as items.
    pub fn skip_unreadable(self, problems: &mut Vec<String>) -> SkipUnreadable<'_, T> {
        SkipUnreadable {
            lines: self,
            problems,
            skipped: 0,
        }
    }
}

impl<T: DeserializeOwned> Iterator for JsonLines<T> {
    type Item = Result<T, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let reader = self.reader.as_mut()?;
            self.buffer.clear();
            match reader.read_line(&mut self.buffer) {
                Ok(0) => {
                    self.reader = None;
                    return None;
                }
                Ok(_) => self.line += 1,
                Err(source) => {
                    self.reader = None;
                    return Some(Err(ReadError::Io {
                        path: self.path.clone(),
                        source,
                    }));
                }
            }
            let line = self.buffer.strip_suffix('\n').unwrap_or(&self.buffer);
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str(line).map_err(|source| ReadError::Line {
                    path: self.path.clone(),
                    line: self.line,
                    source,
                }),
            );
        }
    }
}

/// [`JsonLines`] without its unreadable lines (see [`JsonLines::skip_unreadable`]).
pub struct SkipUnreadable<'p, T> {
    lines: JsonLines<T>,
    problems: &'p mut Vec<String>,
    skipped: usize,
}

impl<T: DeserializeOwned> Iterator for SkipUnreadable<'_, T> {
    type Item = Result<T, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.lines.next() {
                Some(Err(ReadError::Line { path, line, source })) => {
                    if self.skipped == 0 {
                        self.problems.push(format!(
                            "{}:{line}: skipped unreadable line ({source})",
                            file_name(&path)
                        ));
                    }
                    self.skipped += 1;
                }
                None => {
                    let skipped = std::mem::take(&mut self.skipped);
                    if skipped > 1 {
                        self.problems.push(format!(
                            "{}: {skipped} unreadable lines skipped in all",
                            file_name(&self.lines.path)
                        ));
                    }
                    return None;
                }
                item => return item,
            }
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
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
    pub fn records(&self) -> Result<JsonLines<RequestRecord>, ReadError> {
        JsonLines::open(&self.path(REQUESTS))
    }

    /// The lines of `spans.jsonl` (none when absent).
    pub fn spans(&self) -> Result<JsonLines<Value>, ReadError> {
        JsonLines::open_if_present(&self.path(SPANS))
    }

    /// The lines of `telemetry.jsonl` (none when absent).
    pub fn telemetry(&self) -> Result<JsonLines<Value>, ReadError> {
        JsonLines::open_if_present(&self.path(TELEMETRY))
    }

    /// The lines of `server_metrics.jsonl` (none when absent).
    pub fn server_metrics(&self) -> Result<JsonLines<Value>, ReadError> {
        JsonLines::open_if_present(&self.path(SERVER_METRICS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn lines_carry_their_file_and_number() {
        let (_dir, path) = lines_of("1\n\n2\nnope\n3");
        let items: Vec<Result<u32, ReadError>> = JsonLines::open(&path).unwrap().collect();
        assert_eq!(items.len(), 4);
        assert_eq!(items[1].as_ref().unwrap(), &2);
        let err = items[2].as_ref().unwrap_err().to_string();
        assert!(err.ends_with("x.jsonl:4: unreadable line"), "{err}");
        assert_eq!(items[3].as_ref().unwrap(), &3);
    }

    #[test]
    fn unreadable_lines_are_noted_once_with_a_total() {
        let (_dir, path) = lines_of("1\nx\n2\ny\nz\n");
        let mut problems = Vec::new();
        let values: Vec<u32> = JsonLines::open(&path)
            .unwrap()
            .skip_unreadable(&mut problems)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(values, [1, 2]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("x.jsonl:2: skipped unreadable line ("));
        assert_eq!(problems[1], "x.jsonl: 3 unreadable lines skipped in all");
    }

    #[test]
    fn an_absent_optional_file_has_no_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.jsonl");
        assert_eq!(
            JsonLines::<Value>::open_if_present(&path).unwrap().count(),
            0
        );
        assert!(matches!(
            JsonLines::<Value>::open(&path),
            Err(ReadError::Io { .. })
        ));
        assert!(matches!(
            RunFolder::open(dir.path()),
            Err(ReadError::NotARunFolder { .. })
        ));
    }
}
