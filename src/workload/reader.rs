//! Dataset files read one entry at a time: JSON Lines (one value a line) or
//! one JSON array of objects (ShareGPT), through a buffered reader, so a file
//! of any size costs one entry of memory. Every entry knows where it is
//! (entry number and line), so every error names the file and the place.
//!
//! [`check_upfront`] is the check before the first request: a file up to
//! [`UPFRONT_BYTES`] is checked whole; a larger one its first
//! [`UPFRONT_ENTRIES`] entries (the rest is checked as it is read, still
//! before each entry is sent), so start-up does not grow with the file.

use anyhow::{bail, Context};
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Files up to this size are checked whole before the first request.
pub const UPFRONT_BYTES: u64 = 16 << 20;
/// Entries of a larger file checked before the first request.
pub const UPFRONT_ENTRIES: u64 = 1024;
/// Largest single entry (a missing quote would otherwise read the whole file).
const MAX_ENTRY_BYTES: usize = 64 << 20;

/// One entry of a dataset and where it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// 1-based position among the file's entries.
    pub number: u64,
    /// 1-based line the entry starts on.
    pub line: u64,
    pub value: Value,
}

/// How the file holds its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One JSON value per line (blank lines skipped).
    Lines,
    /// One JSON array whose elements are objects.
    Array,
}

/// Reads a dataset's entries in order.
pub struct EntryReader {
    path: PathBuf,
    layout: Layout,
    input: BufReader<File>,
    line: u64,
    number: u64,
    buf: Vec<u8>,
    /// Array layout: an element was read (a `,` or `]` comes next).
    after_element: bool,
    done: bool,
}

impl EntryReader {
    /// Opens `path` and tells its layout from its first non-blank byte.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file =
            File::open(path).with_context(|| format!("cannot read dataset {}", path.display()))?;
        let mut reader = Self {
            path: path.to_path_buf(),
            layout: Layout::Lines,
            input: BufReader::with_capacity(1 << 16, file),
            line: 1,
            number: 0,
            buf: Vec::new(),
            after_element: false,
            done: false,
        };
        if reader.peek_non_blank()? == Some(b'[') {
            reader.layout = Layout::Array;
            reader.input.consume(1);
        }
        Ok(reader)
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `FILE:LINE` for JSON Lines, `FILE: entry N (line L)` for an array.
    pub fn place(&self, entry: &Entry) -> String {
        match self.layout {
            Layout::Lines => format!("{}:{}", self.path.display(), entry.line),
            Layout::Array => format!(
                "{}: entry {} (line {})",
                self.path.display(),
                entry.number,
                entry.line
            ),
        }
    }

    /// The next entry; `None` at the end of the file.
    pub fn next_entry(&mut self) -> anyhow::Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        match self.layout {
            Layout::Lines => self.next_line(),
            Layout::Array => self.next_element(),
        }
    }

    fn next_line(&mut self) -> anyhow::Result<Option<Entry>> {
        loop {
            self.buf.clear();
            let read = self
                .input
                .read_until(b'\n', &mut self.buf)
                .with_context(|| format!("cannot read dataset {}", self.path.display()))?;
            if read == 0 {
                self.done = true;
                return Ok(None);
            }
            let line = self.line;
            self.line += 1;
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.number += 1;
            let value = serde_json::from_slice(&self.buf)
                .with_context(|| format!("{}:{line}: not JSON", self.path.display()))?;
            return Ok(Some(Entry {
                number: self.number,
                line,
                value,
            }));
        }
    }

    fn next_element(&mut self) -> anyhow::Result<Option<Entry>> {
        let at = |this: &Self| format!("{}:{}", this.path.display(), this.line);
        match (self.peek_non_blank()?, self.after_element) {
            (None, _) => bail!("{}: the JSON array is not closed with `]`", at(self)),
            (Some(b']'), _) => {
                self.done = true;
                return Ok(None);
            }
            (Some(b','), true) => {
                self.input.consume(1);
                self.after_element = false;
                return self.next_element();
            }
            (Some(b'{'), false) => {}
            (Some(_), true) => bail!("{}: expected `,` or `]` between entries", at(self)),
            (Some(_), false) => bail!(
                "{}: entry {} is not a JSON object",
                at(self),
                self.number + 1
            ),
        }
        let line = self.line;
        self.number += 1;
        self.read_object()?;
        self.after_element = true;
        let value = serde_json::from_slice(&self.buf).with_context(|| {
            format!(
                "{}: entry {} (line {line}): not JSON",
                self.path.display(),
                self.number
            )
        })?;
        Ok(Some(Entry {
            number: self.number,
            line,
            value,
        }))
    }

    /// Copies one object (the next byte is its `{`) into `buf`.
    fn read_object(&mut self) -> anyhow::Result<()> {
        self.buf.clear();
        let (mut depth, mut in_string, mut escaped) = (0u32, false, false);
        loop {
            let chunk = self
                .input
                .fill_buf()
                .with_context(|| format!("cannot read dataset {}", self.path.display()))?;
            if chunk.is_empty() {
                bail!(
                    "{}: the file ends inside entry {}",
                    self.path.display(),
                    self.number
                );
            }
            let mut used = 0;
            let mut closed = false;
            for &b in chunk {
                used += 1;
                if b == b'\n' {
                    self.line += 1;
                }
                if in_string {
                    match (escaped, b) {
                        (true, _) => escaped = false,
                        (false, b'\\') => escaped = true,
                        (false, b'"') => in_string = false,
                        _ => {}
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            closed = true;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            self.buf.extend_from_slice(&chunk[..used]);
            self.input.consume(used);
            if closed {
                return Ok(());
            }
            if self.buf.len() > MAX_ENTRY_BYTES {
                bail!(
                    "{}: entry {} is larger than {} MiB (a missing quote or brace?)",
                    self.path.display(),
                    self.number,
                    MAX_ENTRY_BYTES >> 20
                );
            }
        }
    }

    /// The next byte that is not whitespace (left unread), counting lines.
    fn peek_non_blank(&mut self) -> anyhow::Result<Option<u8>> {
        loop {
            let chunk = self
                .input
                .fill_buf()
                .with_context(|| format!("cannot read dataset {}", self.path.display()))?;
            let Some(&first) = chunk.first() else {
                return Ok(None);
            };
            if !first.is_ascii_whitespace() {
                return Ok(Some(first));
            }
            if first == b'\n' {
                self.line += 1;
            }
            self.input.consume(1);
        }
    }
}

/// Entries read in order, each with its place for errors.
pub trait Entries {
    /// The next entry; `None` at the end.
    fn next_entry(&mut self) -> anyhow::Result<Option<Entry>>;
    /// Where `entry` is (`FILE:LINE`, or `FILE: entry N (line L)`).
    fn place(&self, entry: &Entry) -> String;
}

impl Entries for EntryReader {
    fn next_entry(&mut self) -> anyhow::Result<Option<Entry>> {
        EntryReader::next_entry(self)
    }
    fn place(&self, entry: &Entry) -> String {
        EntryReader::place(self, entry)
    }
}

/// Checks a dataset before the first request: every entry of a file up to
/// [`UPFRONT_BYTES`], the first [`UPFRONT_ENTRIES`] of a larger one. `check`
/// sees each entry; its error is prefixed with the entry's place. Returns
/// the entries checked and whether that was the whole file; a file with no
/// entry at all is an error.
pub fn check_upfront<E: Entries>(
    path: &Path,
    mut entries: E,
    mut check: impl FnMut(&Entry) -> anyhow::Result<()>,
) -> anyhow::Result<(u64, bool)> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read dataset {}", path.display()))?
        .len();
    let limit = if size <= UPFRONT_BYTES {
        u64::MAX
    } else {
        UPFRONT_ENTRIES
    };
    let mut checked = 0;
    let mut whole = false;
    while checked < limit {
        let Some(entry) = entries.next_entry()? else {
            whole = true;
            break;
        };
        check(&entry).with_context(|| entries.place(&entry))?;
        checked += 1;
    }
    if checked == 0 {
        bail!("dataset {} has no entries", path.display());
    }
    Ok((checked, whole))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn all(path: &Path) -> anyhow::Result<Vec<Entry>> {
        let mut reader = EntryReader::open(path)?;
        let mut out = Vec::new();
        while let Some(entry) = reader.next_entry()? {
            out.push(entry);
        }
        Ok(out)
    }

    #[test]
    fn lines_and_arrays_give_entries_with_their_places() {
        let lines = file("{\"a\":1}\n\n{\"a\":2}\n");
        let entries = all(lines.path()).unwrap();
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.number, e.line))
                .collect::<Vec<_>>(),
            [(1, 1), (2, 3)]
        );
        let array = file("[\n  {\"a\": \"x}\\\"]\"},\n  {\"b\": [1, {\"c\": 2}]\n  }\n]\n");
        let mut reader = EntryReader::open(array.path()).unwrap();
        assert_eq!(reader.layout(), Layout::Array);
        let first = reader.next_entry().unwrap().unwrap();
        assert_eq!(first.value["a"], "x}\"]");
        let second = reader.next_entry().unwrap().unwrap();
        assert_eq!((second.number, second.line), (2, 3));
        assert_eq!(second.value["b"][1]["c"], 2);
        assert!(reader.place(&second).ends_with(": entry 2 (line 3)"));
        assert!(reader.next_entry().unwrap().is_none());
        assert!(all(file("[]").path()).unwrap().is_empty());
    }

    #[test]
    fn broken_files_name_the_place() {
        for (text, needle) in [
            ("{\"a\":1}\n{\"a\":\n", ":2: not JSON"),
            ("[{\"a\":1} {\"a\":2}]", "expected `,` or `]`"),
            ("[{\"a\":1},\n 3]", "entry 2 is not a JSON object"),
            ("[{\"a\":1},\n{\"a\":\"open", "ends inside entry 2"),
            ("[{\"a\":1}", "not closed"),
            ("[{\"a\":1},\n{\"a\":tru}]", "entry 2 (line 2): not JSON"),
        ] {
            let f = file(text);
            let err = format!("{:#}", all(f.path()).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.contains(&f.path().display().to_string()), "{err}");
        }
    }

    #[test]
    fn the_upfront_check_names_the_entry_and_refuses_empty_files() {
        let f = file("{\"ok\":1}\n{\"ok\":2}\n{\"bad\":3}\n");
        let open = || EntryReader::open(f.path()).unwrap();
        let err = check_upfront(f.path(), open(), |e| match e.value.get("ok") {
            Some(_) => Ok(()),
            None => bail!("needs `ok`"),
        })
        .unwrap_err();
        assert!(format!("{err:#}").ends_with(":3: needs `ok`"), "{err:#}");
        assert_eq!(
            check_upfront(f.path(), open(), |_| Ok(())).unwrap(),
            (3, true)
        );
        let empty = file("\n\n");
        let reader = EntryReader::open(empty.path()).unwrap();
        assert!(format!(
            "{:#}",
            check_upfront(empty.path(), reader, |_| Ok(())).unwrap_err()
        )
        .contains("no entries"));
    }
}
