//! Timed trace replay (`--trace-replay FILE`): Mooncake's JSONL
//! (`{"timestamp": ms, "input_length", "output_length", "hash_ids": [...]}`)
//! or a CSV with a `timestamp,input_length,output_length` header. Requests
//! go at their timestamps (measured from the first line's, scaled by
//! `--time-scale`), and prompts are built from 512-token blocks, one per
//! hash id, so requests that share leading `hash_ids` share exactly those
//! blocks' tokens: the server's prefix cache sees what production saw.
//! Tokens past the blocks (and all of a CSV line's) are unique to the line.

use super::reader::{Entries, Entry, EntryReader};
use super::synthetic::Synthetic;
use super::tokens::TokenCounter;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Tokens of one hash block (Mooncake's block size).
pub const BLOCK_TOKENS: u64 = 512;

/// One line of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRequest {
    /// Milliseconds, as written.
    pub timestamp_ms: f64,
    pub input_length: u64,
    pub output_length: u64,
    pub hash_ids: Vec<u64>,
}

/// Reads and checks one line (its time order is [`Order`]'s business).
pub fn parse(value: &Value) -> anyhow::Result<TraceRequest> {
    let timestamp_ms = value
        .get("timestamp")
        .and_then(Value::as_f64)
        .context("needs a numeric `timestamp` (milliseconds)")?;
    if !(timestamp_ms >= 0.0 && timestamp_ms.is_finite()) {
        bail!("`timestamp` is {timestamp_ms}; it must be >= 0");
    }
    let length = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_u64)
            .filter(|n| *n > 0)
            .with_context(|| format!("`{key}` must be a positive integer"))
    };
    let hash_ids = match value.get("hash_ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|id| {
                id.as_u64()
                    .context("`hash_ids` must be non-negative integers")
            })
            .collect::<anyhow::Result<_>>()?,
        Some(_) => bail!("`hash_ids` must be an array"),
    };
    Ok(TraceRequest {
        timestamp_ms,
        input_length: length("input_length")?,
        output_length: length("output_length")?,
        hash_ids,
    })
}

/// Timestamps never go back.
#[derive(Debug, Default)]
pub struct Order {
    previous: Option<f64>,
}

impl Order {
    pub fn check(&mut self, request: &TraceRequest) -> anyhow::Result<()> {
        if let Some(previous) = self.previous.filter(|p| request.timestamp_ms < *p) {
            bail!(
                "timestamp {} is before the previous line's {previous}; a trace must be in time order",
                request.timestamp_ms
            );
        }
        self.previous = Some(request.timestamp_ms);
        Ok(())
    }
}

/// A trace's lines, JSONL or CSV, as entries.
pub enum Rows {
    Json(EntryReader),
    Csv {
        path: PathBuf,
        reader: csv::Reader<File>,
        columns: [usize; 3],
        number: u64,
    },
}

impl Rows {
    /// A `.csv` file is CSV; anything else JSONL.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let is_csv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if !is_csv {
            return Ok(Rows::Json(EntryReader::open(path)?));
        }
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(path)
            .with_context(|| format!("cannot read trace {}", path.display()))?;
        let headers = reader
            .headers()
            .with_context(|| format!("{}:1: not CSV", path.display()))?;
        let mut columns = [0; 3];
        for (slot, name) in columns
            .iter_mut()
            .zip(["timestamp", "input_length", "output_length"])
        {
            *slot = headers.iter().position(|h| h == name).with_context(|| {
                format!(
                    "{}:1: the header needs a `{name}` column (timestamp,input_length,output_length)",
                    path.display()
                )
            })?;
        }
        Ok(Rows::Csv {
            path: path.to_path_buf(),
            reader,
            columns,
            number: 0,
        })
    }
}

impl Entries for Rows {
    fn next_entry(&mut self) -> anyhow::Result<Option<Entry>> {
        let (path, reader, columns, number) = match self {
            Rows::Json(reader) => return reader.next_entry(),
            Rows::Csv {
                path,
                reader,
                columns,
                number,
            } => (path, reader, columns, number),
        };
        let mut record = csv::StringRecord::new();
        let more = reader
            .read_record(&mut record)
            .with_context(|| format!("{}: not CSV", path.display()))?;
        if !more {
            return Ok(None);
        }
        *number += 1;
        let line = record.position().map_or(0, |p| p.line());
        let cell = |i: usize| -> anyhow::Result<Value> {
            let text = record.get(columns[i]).unwrap_or("");
            let value: f64 = text
                .parse()
                .with_context(|| format!("{}:{line}: `{text}` is not a number", path.display()))?;
            Ok(match value.fract() == 0.0 && value >= 0.0 {
                true => json!(value as u64),
                false => json!(value),
            })
        };
        let value =
            json!({"timestamp": cell(0)?, "input_length": cell(1)?, "output_length": cell(2)?});
        Ok(Some(Entry {
            number: *number,
            line,
            value,
        }))
    }

    fn place(&self, entry: &Entry) -> String {
        match self {
            Rows::Json(reader) => reader.place(entry),
            Rows::Csv { path, .. } => format!("{}:{}", path.display(), entry.line),
        }
    }
}

/// The prompt of a trace line and its token count: one block of words per
/// hash id (the same id always gives the same words), then words unique to
/// `line` up to `input_length`.
pub async fn prompt(
    request: &TraceRequest,
    line: u64,
    words: &Synthetic,
    counter: &TokenCounter,
) -> anyhow::Result<(String, u64)> {
    let mut text = String::new();
    let mut count = 0;
    for (i, id) in request.hash_ids.iter().enumerate() {
        let tokens = request
            .input_length
            .saturating_sub(i as u64 * BLOCK_TOKENS)
            .min(BLOCK_TOKENS);
        if tokens == 0 {
            break;
        }
        // The key holds the block's length: a last, partial block is its own.
        let key = id.wrapping_mul(0x1000_0000_01b3) ^ tokens ^ ((i == 0) as u64) << 63;
        let (block, n) = words.words(key, tokens, text.is_empty(), counter).await?;
        push(&mut text, &block);
        count += n;
    }
    if count < request.input_length {
        let key = !line.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let (tail, n) = words
            .words(key, request.input_length - count, text.is_empty(), counter)
            .await?;
        push(&mut text, &tail);
        count += n;
    }
    Ok((text, count))
}

fn push(text: &mut String, words: &str) {
    if !text.is_empty() {
        text.push(' ');
    }
    text.push_str(words);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(suffix: &str, text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn all(path: &Path) -> anyhow::Result<Vec<TraceRequest>> {
        let mut rows = Rows::open(path)?;
        let mut order = Order::default();
        let mut out = Vec::new();
        while let Some(entry) = rows.next_entry()? {
            let request = parse(&entry.value)
                .and_then(|r| order.check(&r).map(|()| r))
                .with_context(|| rows.place(&entry))?;
            out.push(request);
        }
        Ok(out)
    }

    #[test]
    fn jsonl_and_csv_lines() {
        let jsonl = file(
            ".jsonl",
            "{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 5, \"hash_ids\": [1, 2]}\n{\"timestamp\": 10.5, \"input_length\": 7, \"output_length\": 1}\n",
        );
        let lines = all(jsonl.path()).unwrap();
        assert_eq!(lines[0].hash_ids, [1, 2]);
        assert_eq!(lines[1].timestamp_ms, 10.5);
        let csv = file(
            ".csv",
            "timestamp,input_length,output_length\n0,12,3\n 250 , 40 , 8\n",
        );
        let lines = all(csv.path()).unwrap();
        assert_eq!((lines[1].timestamp_ms, lines[1].input_length), (250.0, 40));
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        for (suffix, text, needle) in [
            (".jsonl", "{\"timestamp\": -5, \"input_length\": 1, \"output_length\": 1}\n", ":1: `timestamp` is -5"),
            (".jsonl", "{\"timestamp\": 9, \"input_length\": 1, \"output_length\": 1}\n{\"timestamp\": 3, \"input_length\": 1, \"output_length\": 1}\n", ":2: timestamp 3 is before the previous line's 9"),
            (".jsonl", "{\"timestamp\": 1, \"input_length\": 0, \"output_length\": 1}\n", "input_length"),
            (".csv", "timestamp,input_length,output_length\n1,2,3\n4,x,6\n", ":3: `x` is not a number"),
            (".csv", "time,input_length,output_length\n1,2,3\n", "`timestamp` column"),
        ] {
            let f = file(suffix, text);
            let err = format!("{:#}", all(f.path()).unwrap_err());
            assert!(err.contains(needle), "{err}");
            assert!(err.contains(&f.path().display().to_string()), "{err}");
        }
    }

    #[tokio::test]
    async fn shared_leading_hash_ids_share_exactly_their_blocks() {
        let counter = TokenCounter::Estimate;
        let words = Synthetic::new(
            "8".parse().unwrap(),
            "8".parse().unwrap(),
            0,
            1,
            3,
            &counter,
        )
        .await
        .unwrap();
        let request = |hash_ids: Vec<u64>, input_length| TraceRequest {
            timestamp_ms: 0.0,
            input_length,
            output_length: 4,
            hash_ids,
        };
        let (a, na) = prompt(&request(vec![7, 8, 9], 1300), 1, &words, &counter)
            .await
            .unwrap();
        let (b, nb) = prompt(&request(vec![7, 8, 4], 1100), 2, &words, &counter)
            .await
            .unwrap();
        let (c, _) = prompt(&request(vec![5], 300), 3, &words, &counter)
            .await
            .unwrap();
        assert_eq!((na, nb), (1300, 1100));
        let words_of = |t: &str| t.split(' ').map(str::to_string).collect::<Vec<_>>();
        let (a, b, c) = (words_of(&a), words_of(&b), words_of(&c));
        assert_eq!(a.len(), 1300);
        assert_eq!(a[..1024], b[..1024], "blocks 7 and 8 are shared");
        assert_ne!(a[1024..1100], b[1024..1100], "blocks 9 and 4 differ");
        assert_ne!(a[..300], c[..], "block 5 is not block 7");
        // A line without hash ids is unique: no other line shares its start.
        let (d, _) = prompt(&request(vec![], 64), 4, &words, &counter)
            .await
            .unwrap();
        let (e, _) = prompt(&request(vec![], 64), 5, &words, &counter)
            .await
            .unwrap();
        assert_ne!(d, e);
    }
}
