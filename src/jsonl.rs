//! JSONL files read one line at a time into typed values: a run's records,
//! spans and telemetry never have to be in memory all at once. A bad line is
//! an error naming the file and the line, and reading can go on after it.

use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// Why a line of a JSONL file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line that is not what the file holds (e.g. the torn last line of a killed run).
    #[error("{}:{line}: unreadable line", path.display())]
    Line {
        path: PathBuf,
        /// 1-based.
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// The lines of a JSONL file parsed one at a time. Blank lines are skipped; an
/// unparsable line is an [`JsonlError::Line`] item and reading goes on after it;
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
    pub fn open(path: &Path) -> Result<JsonLines<T>, JsonlError> {
        let file = std::fs::File::open(path).map_err(|source| JsonlError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::over(path, Some(BufReader::new(file))))
    }

    /// Opens a JSONL file that a run may not have written: a missing file has no lines.
    pub fn open_if_present(path: &Path) -> Result<JsonLines<T>, JsonlError> {
        match Self::open(path) {
            Err(JsonlError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
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
    type Item = Result<T, JsonlError>;

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
                    return Some(Err(JsonlError::Io {
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
                serde_json::from_str(line).map_err(|source| JsonlError::Line {
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
    type Item = Result<T, JsonlError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.lines.next() {
                Some(Err(JsonlError::Line { path, line, source })) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn lines_of(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn lines_carry_their_file_and_number() {
        let (_dir, path) = lines_of("1\n\n2\nnope\n3");
        let items: Vec<Result<u32, JsonlError>> = JsonLines::open(&path).unwrap().collect();
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
            Err(JsonlError::Io { .. })
        ));
    }
}
