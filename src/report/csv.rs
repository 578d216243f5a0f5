//! `requests.csv`: one row per request, the record flattened into scalar
//! columns (nested objects joined with `.`, lists as JSON text), in send order.

use crate::record::{records_in, RequestRecord};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Flattens a JSON value into `prefix.key` columns.
pub fn flatten(prefix: &str, value: &Value, out: &mut Map<String, Value>) {
    match value {
        Value::Object(map) if prefix != "server.attributes" => {
            for (key, inner) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, inner, out);
            }
        }
        Value::Object(_) | Value::Array(_) => {
            out.insert(prefix.to_string(), Value::String(value.to_string()));
        }
        _ => {
            out.insert(prefix.to_string(), value.clone());
        }
    }
}

/// Records held back at most while waiting for an earlier index to arrive.
const REORDER_WINDOW: usize = 65_536;

/// Writes `requests.csv` from a `requests.jsonl` in two streaming passes:
/// the first finds the columns (the union over all records), the second
/// writes the rows in send order (records finish out of order, but only by
/// about what was in flight, so a bounded window puts them back).
pub fn write_from_jsonl(jsonl: &Path, path: &Path) -> anyhow::Result<()> {
    let mut columns: Vec<String> = Vec::new();
    let mut known = std::collections::HashSet::new();
    for record in records_in(jsonl)? {
        for key in row(&record?).keys() {
            if known.insert(key.clone()) {
                columns.push(key.clone());
            }
        }
    }
    let mut writer = csv::Writer::from_path(path)?;
    writer.write_record(&columns)?;
    let mut held = BTreeMap::new();
    let mut next = 0;
    for record in records_in(jsonl)? {
        let record = record?;
        held.insert(record.index, row(&record));
        while let Some((&first, _)) = held.first_key_value() {
            if first > next && held.len() <= REORDER_WINDOW {
                break;
            }
            let row = held.remove(&first).expect("the first key is held");
            write_row(&mut writer, &columns, &row)?;
            next = first + 1;
        }
    }
    for row in held.values() {
        write_row(&mut writer, &columns, row)?;
    }
    writer.flush()?;
    Ok(())
}

fn row(record: &RequestRecord) -> Map<String, Value> {
    let mut row = Map::new();
    let value = serde_json::to_value(record).expect("records serialize");
    flatten("", &value, &mut row);
    row
}

fn write_row(
    writer: &mut csv::Writer<std::fs::File>,
    columns: &[String],
    row: &Map<String, Value>,
) -> anyhow::Result<()> {
    writer.write_record(columns.iter().map(|c| match row.get(c) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }))?;
    Ok(())
}
