//! `requests.csv`: one row per request, the record flattened into scalar
//! columns (nested objects joined with `.`, lists as JSON text), in send order.

use crate::jsonl::JsonLines;
use anyhow::Context;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Calls `leaf` with each column of `value` flattened under `prefix`: nested
/// objects give `prefix.key` columns; lists, and the span's attributes, stay
/// one column of JSON text.
fn for_each_column(prefix: &str, value: &Value, leaf: &mut impl FnMut(&str, &Value)) {
    match value {
        Value::Object(map) if prefix != "server.attributes" => {
            for (key, inner) in map {
                if prefix.is_empty() {
                    for_each_column(key, inner, leaf);
                } else {
                    for_each_column(&format!("{prefix}.{key}"), inner, leaf);
                }
            }
        }
        _ => leaf(prefix, value),
    }
}

/// One cell's text: empty for null, a string as it is, anything else as JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
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
    let mut position = HashMap::new();
    for record in JsonLines::<Value>::open(jsonl)? {
        for_each_column("", &record?, &mut |name, _| {
            if !position.contains_key(name) {
                position.insert(name.to_string(), columns.len());
                columns.push(name.to_string());
            }
        });
    }
    let mut writer = csv::Writer::from_path(path)?;
    writer.write_record(&columns)?;
    let mut held = BTreeMap::new();
    let mut next = 0;
    for (number, record) in JsonLines::<Value>::open(jsonl)?.enumerate() {
        let record = record?;
        let index = record["index"]
            .as_u64()
            .with_context(|| format!("{}: record {} has no index", jsonl.display(), number + 1))?;
        let mut row = vec![String::new(); columns.len()];
        for_each_column("", &record, &mut |name, value| {
            row[position[name]] = cell(value);
        });
        held.insert(index, row);
        while let Some((&first, _)) = held.first_key_value() {
            if first > next && held.len() <= REORDER_WINDOW {
                break;
            }
            let row = held.remove(&first).expect("the first key is held");
            writer.write_record(&row)?;
            next = first + 1;
        }
    }
    for row in held.values() {
        writer.write_record(row)?;
    }
    writer.flush()?;
    Ok(())
}
