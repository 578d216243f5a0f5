//! The SQLite history of all runs (`results/tracebench.db`): one row per run,
//! per request (client and server fields flattened), per span, GPU sample and
//! server-metrics sample. Schema and example queries: `docs/sqlite.md`.
//!
//! [`HistoryWriter`] writes from its own thread in batched transactions, so the
//! request path only sends on a channel and never waits on disk.

use super::run_folder::{JsonLines, RunFolder};
use crate::analysis::Summary;
use crate::record::{GpuAttribution, RequestRecord};
use anyhow::{bail, Context};
use rusqlite::{params, Connection, Transaction};
use serde_json::Value;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Version of [`SCHEMA`], kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 2;

/// The `requests` columns version 2 added (how the request got its
/// connection), appended to a version-1 table in this order.
const ADDED_IN_2: [&str; 5] = [
    "written_ns INTEGER",
    "connection_reused INTEGER",
    "connection_connect_ms REAL",
    "connection_tls_ms REAL",
    "connect_ms REAL",
];

/// Records written per transaction by the writer thread at most.
const BATCH: usize = 512;

/// The tables and indexes, created when missing.
const SCHEMA: &str = include_str!("history.sql");

/// Opens (creating when needed) a history database and brings its schema to
/// [`SCHEMA_VERSION`]; refuses a database written by a newer tracebench.
pub fn open_db(path: &Path) -> anyhow::Result<Connection> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut conn = Connection::open(path)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .with_context(|| format!("{} is not a usable SQLite database", path.display()))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        bail!(
            "{} has history schema version {version}; this tracebench knows version {SCHEMA_VERSION} (upgrade tracebench)",
            path.display()
        );
    }
    let tx = conn.transaction()?;
    if version == 1 {
        for column in ADDED_IN_2 {
            tx.execute_batch(&format!("ALTER TABLE requests ADD COLUMN {column}"))
                .with_context(|| format!("cannot bring {} to schema version 2", path.display()))?;
        }
    }
    tx.execute_batch(SCHEMA)
        .with_context(|| format!("cannot create the schema in {}", path.display()))?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(conn)
}

/// Records a run into the history while it runs, then completes it at the end.
pub struct HistoryWriter {
    sender: mpsc::Sender<RequestRecord>,
    thread: JoinHandle<(Connection, Option<anyhow::Error>)>,
    run_id: String,
}

impl HistoryWriter {
    /// Creates the schema if needed, inserts the run's row (replacing any earlier
    /// import of the same run id) and starts the writer thread.
    pub fn open(path: &Path, run_id: &str, run_json: &Value) -> anyhow::Result<HistoryWriter> {
        let mut conn = open_db(path)?;
        let tx = conn.transaction()?;
        delete_run(&tx, run_id)?;
        insert_run(&tx, run_id, run_json)?;
        tx.commit()?;
        let (sender, receiver) = mpsc::channel::<RequestRecord>();
        let thread = std::thread::Builder::new()
            .name("tracebench-history".into())
            .spawn(move || write_live(conn, receiver))
            .context("cannot start the history writer thread")?;
        Ok(HistoryWriter {
            sender,
            thread,
            run_id: run_id.to_string(),
        })
    }

    /// Queues one finished record; returns at once (the channel is unbounded).
    pub fn record(&self, record: &RequestRecord) {
        // A closed channel means the writer stopped on an error, which finish reports.
        let _ = self.sender.send(record.clone());
    }

    /// Waits for queued records, then in one transaction replaces the run's
    /// request rows with the final joined records of `run_dir/requests.jsonl`
    /// (read one at a time), loads spans, telemetry and server metrics from
    /// `run_dir`, and stores the summary. A failure of the live writes is not
    /// reported when this final write succeeds (it rewrites every request row);
    /// unreadable lines of the run files are reported as an error after
    /// everything readable was stored.
    pub fn finish(self, run_dir: &Path, summary: &Summary) -> anyhow::Result<()> {
        let HistoryWriter {
            sender,
            thread,
            run_id,
        } = self;
        drop(sender);
        let (mut conn, _live_error) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the history writer thread panicked"))?;
        let folder = RunFolder::open(run_dir)?;
        let mut problems = Vec::new();
        let tx = conn.transaction()?;
        write_final(&tx, &run_id, &folder, summary, &mut problems)?;
        tx.commit()
            .context("cannot commit the run to the history")?;
        problems_to_result(run_dir, problems)
    }
}

/// The writer thread: batches of records, one transaction each. After the first
/// error it keeps draining the channel (so senders never block) and returns it.
fn write_live(
    mut conn: Connection,
    receiver: mpsc::Receiver<RequestRecord>,
) -> (Connection, Option<anyhow::Error>) {
    let mut error: Option<anyhow::Error> = None;
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        if error.is_some() {
            continue;
        }
        let result = conn
            .transaction()
            .map_err(anyhow::Error::from)
            .and_then(|tx| {
                for record in &batch {
                    insert_request(&tx, record)?;
                }
                tx.commit().map_err(anyhow::Error::from)
            });
        if let Err(e) = result {
            error = Some(e.context("cannot write requests to the history"));
        }
    }
    (conn, error)
}

/// Imports a finished run folder (run.json, requests.jsonl, summary.json and the
/// sample files), replacing an earlier import of the same run.
pub fn import_run_dir(db: &Path, run_dir: &Path) -> anyhow::Result<()> {
    let folder = RunFolder::open(run_dir)?;
    let Some(run) = folder.run_json().ok().flatten() else {
        bail!(
            "{} has no readable run.json; cannot import it",
            run_dir.display()
        );
    };
    let (summary, _) = folder.summary_or_computed(&run)?;
    let run_id = run["run_id"]
        .as_str()
        .unwrap_or(summary.run_id.as_str())
        .to_string();
    let mut conn = open_db(db)?;
    let mut problems = Vec::new();
    let tx = conn.transaction()?;
    delete_run(&tx, &run_id)?;
    insert_run(&tx, &run_id, &run)?;
    write_final(&tx, &run_id, &folder, &summary, &mut problems)?;
    tx.commit()
        .with_context(|| format!("cannot commit {} to {}", run_id, db.display()))?;
    problems_to_result(run_dir, problems)
}

fn problems_to_result(run_dir: &Path, problems: Vec<String>) -> anyhow::Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "stored the run, but some lines of {} could not be read: {}",
            run_dir.display(),
            problems.join("; ")
        )
    }
}

fn delete_run(tx: &Transaction, run_id: &str) -> anyhow::Result<()> {
    for table in ["requests", "spans", "telemetry", "server_metrics", "runs"] {
        tx.execute(&format!("DELETE FROM {table} WHERE run_id = ?1"), [run_id])?;
    }
    Ok(())
}

fn unix_ns_to_rfc3339(ns: Option<u64>) -> Option<String> {
    let ns = i64::try_from(ns?).ok()?;
    Some(
        chrono::DateTime::from_timestamp_nanos(ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

fn insert_run(tx: &Transaction, run_id: &str, run: &Value) -> anyhow::Result<()> {
    let text = |v: &Value| v.as_str().map(str::to_string);
    let started = run["started_unix_ns"].as_u64();
    let model = text(&run["model"])
        .or_else(|| text(&run["config"]["model"]))
        .or_else(|| text(&run["server"]["models"]["data"][0]["id"]));
    let url = text(&run["server"]["url"]).or_else(|| text(&run["config"]["url"]));
    let server_version = match &run["server"]["version"] {
        Value::Null => None,
        Value::Object(o) => o
            .get("version")
            .and_then(text)
            .or_else(|| Some(Value::Object(o.clone()).to_string())),
        other => Some(other.to_string()),
    };
    tx.execute(
        "INSERT INTO runs (run_id, started_at, started_unix_ns, ended_unix_ns, model, url, command_line,
            tool_version, git_commit, hostname, server_version, partial, config, run_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            run_id,
            unix_ns_to_rfc3339(started),
            started.and_then(|v| i64::try_from(v).ok()),
            run["ended_unix_ns"].as_u64().and_then(|v| i64::try_from(v).ok()),
            model,
            url,
            text(&run["command_line"]),
            text(&run["tool"]["version"]),
            text(&run["tool"]["git_commit"]),
            text(&run["host"]["hostname"]),
            server_version,
            run["partial"].as_bool().unwrap_or(false),
            run["config"].to_string(),
            run.to_string(),
        ],
    )
    .context("cannot insert the run row")?;
    Ok(())
}

/// Final rows of a run: request rows replaced by the records of
/// `requests.jsonl`, sample files loaded, summary stored.
fn write_final(
    tx: &Transaction,
    run_id: &str,
    folder: &RunFolder,
    summary: &Summary,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    for table in ["requests", "spans", "telemetry", "server_metrics"] {
        tx.execute(&format!("DELETE FROM {table} WHERE run_id = ?1"), [run_id])?;
    }
    let mut first_model = None;
    for record in folder.records()?.skip_unreadable(problems) {
        let record = record?;
        if first_model.is_none() && !record.model.is_empty() {
            first_model = Some(record.model.clone());
        }
        insert_request(tx, &record)?;
    }
    load_spans(tx, run_id, folder.spans()?, problems)?;
    load_telemetry(tx, run_id, folder.telemetry()?, problems)?;
    load_server_metrics(tx, run_id, folder.server_metrics()?, problems)?;
    let ended = folder
        .run_json()
        .ok()
        .flatten()
        .and_then(|run| run["ended_unix_ns"].as_u64())
        .and_then(|v| i64::try_from(v).ok());
    tx.execute(
        "UPDATE runs SET finished = 1, partial = (partial OR ?2), requests = ?3, ok = ?4, failed = ?5,
            duration_s = ?6, request_throughput = ?7, output_throughput = ?8, goodput_rps = ?9,
            join_rate = ?10, summary = ?11, model = COALESCE(model, ?12),
            ended_unix_ns = COALESCE(?13, ended_unix_ns)
         WHERE run_id = ?1",
        params![
            run_id,
            summary.partial,
            summary.requests.total as i64,
            summary.requests.ok as i64,
            summary.requests.failed as i64,
            summary.duration_s,
            summary.request_throughput,
            summary.output_throughput,
            summary.goodput.as_ref().map(|g| g.requests_per_s),
            summary.join.as_ref().map(|j| j.rate),
            serde_json::to_string(summary)?,
            first_model,
            ended,
        ],
    )
    .context("cannot store the summary")?;
    Ok(())
}

fn int(v: Option<u64>) -> Option<i64> {
    v.and_then(|v| i64::try_from(v).ok())
}

fn insert_request(tx: &Transaction, r: &RequestRecord) -> anyhow::Result<()> {
    let mut statement = tx.prepare_cached(
        "INSERT OR REPLACE INTO requests VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
            ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33,
            ?34, ?35, ?36, ?37, ?38, ?39, ?40, ?41, ?42, ?43, ?44, ?45, ?46, ?47, ?48, ?49, ?50, ?51, ?52,
            ?53, ?54, ?55, ?56, ?57, ?58, ?59, ?60, ?61, ?62, ?63, ?64, ?65, ?66, ?67, ?68, ?69)",
    )?;
    let server = r.server.as_ref();
    let d = r.decomposition.as_ref();
    let error = r.error.as_ref();
    let (gpu_peak, gpu_over_idle, gpu_unattributed) = match &r.gpu {
        Some(GpuAttribution::Alone {
            peak_memory_mib,
            memory_over_idle_mib,
        }) => (Some(*peak_memory_mib), Some(*memory_over_idle_mib), None),
        Some(GpuAttribution::Unattributed(reason)) => (None, None, Some(reason.clone())),
        None => (None, None, None),
    };
    let i = &r.instants_ns;
    statement
        .execute(rusqlite::params_from_iter::<Vec<Box<dyn rusqlite::ToSql>>>(
            vec![
                Box::new(r.run_id.clone()),
                Box::new(r.request_id.clone()),
                Box::new(int(Some(r.index))),
                Box::new(r.warmup),
                Box::new(serde_name(&r.endpoint)),
                Box::new(r.model.clone()),
                Box::new(r.stream),
                Box::new(r.trace_id.map(|t| t.to_string())),
                Box::new(r.span_id.clone()),
                Box::new(int(r.max_tokens)),
                Box::new(int(r.input_tokens)),
                Box::new(r.input_tokens_source.as_ref().and_then(serde_name)),
                Box::new(int(r.output_tokens)),
                Box::new(r.output_tokens_source.as_ref().and_then(serde_name)),
                Box::new(r.status),
                Box::new(r.response_id.clone()),
                Box::new(r.finish_reason.clone()),
                Box::new(error.map(|e| e.kind.as_str())),
                Box::new(error.map(|e| e.message.clone())),
                Box::new(error.and_then(|e| e.status)),
                Box::new(error.and_then(|e| e.body_excerpt.clone())),
                Box::new(int(Some(r.sent_unix_ns))),
                Box::new(int(Some(i.intended))),
                Box::new(int(Some(i.sent))),
                Box::new(int(i.headers)),
                Box::new(int(i.first_byte)),
                Box::new(int(i.first_token)),
                Box::new(int(i.last_token)),
                Box::new(int(i.end)),
                Box::new(r.ttft_ms),
                Box::new(r.e2e_ms),
                Box::new(r.e2e_end_ms),
                Box::new(r.tpot_ms),
                Box::new(r.schedule_lag_ms),
                Box::new(int(Some(r.chunks))),
                Box::new(serde_json::to_string(&r.itl_chunk_ms)?),
                Box::new(
                    r.itl_token_ms
                        .as_ref()
                        .map(serde_json::to_string)
                        .transpose()?,
                ),
                Box::new(server.map(|s| s.engine.clone())),
                Box::new(server.map(|s| s.span_name.clone())),
                Box::new(server.and_then(|s| s.service_name.clone())),
                Box::new(server.map(|s| s.span_id.clone())),
                Box::new(server.and_then(|s| s.queue_ms)),
                Box::new(server.and_then(|s| s.prefill_ms)),
                Box::new(server.and_then(|s| s.decode_ms)),
                Box::new(server.and_then(|s| s.inference_ms)),
                Box::new(server.and_then(|s| s.ttft_ms)),
                Box::new(server.and_then(|s| s.e2e_ms)),
                Box::new(int(server.and_then(|s| s.prompt_tokens))),
                Box::new(int(server.and_then(|s| s.completion_tokens))),
                Box::new(server.and_then(|s| s.request_id.clone())),
                Box::new(int(server.map(|s| s.start_unix_ns))),
                Box::new(int(server.map(|s| s.end_unix_ns))),
                Box::new(
                    server
                        .map(|s| serde_json::to_string(&s.attributes))
                        .transpose()?,
                ),
                Box::new(r.server_missing_reason.clone()),
                Box::new(d.and_then(|d| d.network_ms)),
                Box::new(d.and_then(|d| d.frontend_ms)),
                Box::new(d.and_then(|d| d.queue_ms)),
                Box::new(d.and_then(|d| d.prefill_ms)),
                Box::new(d.and_then(|d| d.arrival_delay_ms)),
                Box::new(d.and_then(|d| d.stream_overhead_ms)),
                Box::new(r.trace_url.clone()),
                Box::new(gpu_peak),
                Box::new(gpu_over_idle),
                Box::new(gpu_unattributed),
                Box::new(int(i.written)),
                Box::new(r.connection.map(|c| c.reused)),
                Box::new(r.connection.and_then(|c| c.connect_ms)),
                Box::new(r.connection.and_then(|c| c.tls_ms)),
                Box::new(d.and_then(|d| d.connect_ms)),
            ],
        ))
        .with_context(|| format!("cannot store request {}", r.request_id))?;
    Ok(())
}

/// The snake_case name serde gives a unit enum variant (`chat`, `usage`, ...).
fn serde_name<T: serde::Serialize>(value: &T) -> Option<String> {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
}

/// An OTLP/JSON unix-nano time: a string (as protobuf JSON writes int64) or a number.
fn otlp_nanos(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        other => other.as_i64(),
    }
}

fn load_spans(
    tx: &Transaction,
    run_id: &str,
    lines: JsonLines<Value>,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut statement = tx.prepare(
        "INSERT INTO spans (run_id, trace_id, span_id, parent_span_id, name, service_name,
            start_unix_ns, end_unix_ns, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for line in lines.skip_unreadable(problems) {
        let line = line?;
        let span = &line["span"];
        let service = line["resource"]["attributes"]
            .as_array()
            .and_then(|attrs| attrs.iter().find(|a| a["key"] == "service.name"))
            .and_then(|a| a["value"]["stringValue"].as_str());
        let hex = |key: &str| {
            span[key]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_ascii_lowercase)
        };
        statement.execute(params![
            run_id,
            hex("traceId"),
            hex("spanId"),
            hex("parentSpanId"),
            span["name"].as_str(),
            service,
            otlp_nanos(&span["startTimeUnixNano"]),
            otlp_nanos(&span["endTimeUnixNano"]),
            line.to_string(),
        ])?;
    }
    Ok(())
}

fn load_telemetry(
    tx: &Transaction,
    run_id: &str,
    lines: JsonLines<Value>,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut statement = tx.prepare(
        "INSERT INTO telemetry VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?;
    for s in lines.skip_unreadable(problems) {
        let s = s?;
        let text = |k: &str| match &s[k] {
            Value::Null => None,
            Value::String(v) => Some(v.clone()),
            other => Some(other.to_string()),
        };
        statement.execute(params![
            run_id,
            s["t_ns"].as_i64(),
            s["unix_ns"].as_i64(),
            text("source"),
            text("host"),
            text("gpu"),
            text("uuid"),
            text("name"),
            s["memory_used_mib"].as_f64(),
            s["memory_total_mib"].as_f64(),
            s["gpu_util_pct"].as_f64(),
            s["mem_util_pct"].as_f64(),
            s["power_w"].as_f64(),
            s["energy_j"].as_f64(),
            s["temperature_c"].as_f64(),
            s["sm_clock_mhz"].as_f64(),
            text("gap"),
        ])?;
    }
    Ok(())
}

fn load_server_metrics(
    tx: &Transaction,
    run_id: &str,
    lines: JsonLines<Value>,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut statement = tx.prepare(
        "INSERT INTO server_metrics VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for s in lines.skip_unreadable(problems) {
        let s = s?;
        statement.execute(params![
            run_id,
            s["t_ns"].as_i64(),
            s["unix_ns"].as_i64(),
            s["url"].as_str(),
            s["engine"].as_str(),
            s["running"].as_f64(),
            s["waiting"].as_f64(),
            s["kv_cache_usage"].as_f64(),
            s["preemptions_total"].as_f64(),
            s["prompt_tokens_total"].as_f64(),
            s["generation_tokens_total"].as_f64(),
            (!s["raw"].is_null()).then(|| s["raw"].to_string()),
            s["gap"].as_str(),
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_versioned_and_newer_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let conn = open_db(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = open_db(&path).unwrap_err().to_string();
        assert!(err.contains("schema version 3"), "{err}");
    }

    #[test]
    fn a_version_1_database_gets_the_connection_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let conn = open_db(&path).unwrap();
        // Version 1 as it was written: the requests table without them.
        for column in ADDED_IN_2 {
            let name = column.split(' ').next().unwrap();
            conn.execute_batch(&format!("ALTER TABLE requests DROP COLUMN {name}"))
                .unwrap();
        }
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let mut conn = open_db(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, 2);
        let mut record = crate::trace::test_support::record("r-1", None);
        record.instants_ns.written = Some(11);
        record.connection = Some(crate::record::ConnectionInfo {
            reused: false,
            connect_ms: Some(0.5),
            tls_ms: None,
        });
        let tx = conn.transaction().unwrap();
        insert_request(&tx, &record).unwrap();
        tx.commit().unwrap();
        let row: (i64, bool, f64) = conn
            .query_row(
                "SELECT written_ns, connection_reused, connection_connect_ms FROM requests",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .unwrap();
        assert_eq!(row, (11, false, 0.5));
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not.db");
        std::fs::write(
            &path,
            "this is a text file, not SQLite, and it is long enough",
        )
        .unwrap();
        let err = format!("{:#}", open_db(&path).unwrap_err());
        assert!(err.contains("not.db"), "{err}");
    }

    #[test]
    fn otlp_times_parse_from_strings_and_numbers() {
        assert_eq!(
            otlp_nanos(&serde_json::json!("1795333865537596928")),
            Some(1795333865537596928)
        );
        assert_eq!(otlp_nanos(&serde_json::json!(12)), Some(12));
        assert_eq!(otlp_nanos(&serde_json::json!("x")), None);
    }
}
