//! `requests.csv`: one row per request, the record flattened into scalar
//! columns (nested objects joined with `.`, lists as JSON text), in send order.

use crate::record::RequestRecord;
use serde_json::{Map, Value};
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

/// Writes every record as a CSV row; the columns are the union over all records.
pub fn write_records(path: &Path, records: &[RequestRecord]) -> anyhow::Result<()> {
    let mut sorted: Vec<&RequestRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.index);
    let rows: Vec<Map<String, Value>> = sorted
        .iter()
        .map(|r| {
            let mut row = Map::new();
            flatten(
                "",
                &serde_json::to_value(r).expect("records serialize"),
                &mut row,
            );
            row
        })
        .collect();
    let mut columns: Vec<String> = Vec::new();
    for row in &rows {
        for key in row.keys() {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    let mut writer = csv::Writer::from_path(path)?;
    writer.write_record(&columns)?;
    for row in &rows {
        writer.write_record(columns.iter().map(|c| match row.get(c) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        }))?;
    }
    writer.flush()?;
    Ok(())
}
