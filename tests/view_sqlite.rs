//! The SQLite history: several synthetic runs over several days are written
//! (through the live `HistoryWriter` and through `import_run_dir`), and every
//! example query of `docs/sqlite.md` is run and checked against the records.

mod view_support;

use rusqlite::Connection;
use std::collections::BTreeMap;
use std::path::Path;
use tracebench::record::RequestRecord;
use tracebench::report::sqlite::{import_run_dir, HistoryWriter};
use view_support::{write_run_folder, SyntheticRun};

const DAY_NS: u64 = 86_400 * 1_000_000_000;
/// 2026-11-20T09:00:00Z
const DAY1_NS: u64 = 1_795_165_200 * 1_000_000_000;

/// The SQL blocks of the docs that start with `-- query: NAME`.
fn documented_queries() -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/sqlite.md"))
        .expect("docs/sqlite.md");
    let mut queries = BTreeMap::new();
    for block in doc.split("```sql\n").skip(1) {
        let body = block.split("```").next().unwrap_or_default();
        if let Some(rest) = body.strip_prefix("-- query: ") {
            let (name, sql) = rest.split_once('\n').expect("query body");
            queries.insert(name.trim().to_string(), sql.to_string());
        }
    }
    queries
}

struct Written {
    run: SyntheticRun,
    records: Vec<RequestRecord>,
    duration_s: f64,
}

fn day_of(run: &SyntheticRun) -> String {
    chrono::DateTime::from_timestamp_nanos(run.started_unix_ns as i64)
        .format("%Y-%m-%d")
        .to_string()
}

/// Five runs on three days, two models, four concurrencies; the odd ones go
/// through the live writer, the others through an import of their folder.
fn fill(db: &Path, root: &Path) -> Vec<Written> {
    let plan = [
        ("d1-tiny-c4", "tiny", 0, 4),
        ("d1-big-c16", "big", 0, 16),
        ("d2-tiny-c8", "tiny", 1, 8),
        ("d2-big-c32", "big", 1, 32),
        ("d3-tiny-c4", "tiny", 2, 4),
    ];
    let mut written = Vec::new();
    for (n, (run_id, model, day, concurrency)) in plan.into_iter().enumerate() {
        let mut run = SyntheticRun::new(run_id, 60 + n as u64 * 10);
        run.model = model.into();
        run.started_unix_ns = DAY1_NS + day * DAY_NS + n as u64 * 3_600_000_000_000;
        run.concurrency = concurrency;
        run.seed = 100 + n as u64;
        let dir = root.join(run_id);
        let (records, summary) = write_run_folder(&dir, &run);
        if n % 2 == 0 {
            let run_json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
            let writer = HistoryWriter::open(db, run_id, &run_json).expect("open history");
            for record in &records {
                writer.record(record);
            }
            writer.finish(&dir, &summary).expect("finish history");
        } else {
            import_run_dir(db, &dir).expect("import run folder");
        }
        written.push(Written {
            run,
            records,
            duration_s: summary.duration_s,
        });
    }
    written
}

fn measured(written: &Written) -> impl Iterator<Item = &RequestRecord> {
    written.records.iter().filter(|r| !r.warmup)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn documented_queries_answer_from_the_records() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("results/tracebench.db");
    let written = fill(&db, tmp.path());
    let conn = Connection::open(&db).unwrap();
    let queries = documented_queries();
    assert_eq!(
        queries.keys().cloned().collect::<Vec<_>>(),
        [
            // Run against a real experiment's history in tests/experiment_runs.rs.
            "experiment_curve",
            "p95_ttft_per_model_per_day",
            "queue_share_by_concurrency",
            "sla_per_day"
        ],
        "the docs' named queries changed; update this test"
    );

    // SLA compliance and goodput per day.
    let mut expected: BTreeMap<String, (u64, u64, f64)> = BTreeMap::new();
    for w in &written {
        let entry = expected.entry(day_of(&w.run)).or_default();
        for r in measured(w) {
            entry.0 += 1;
            if r.ok() && r.ttft_ms.is_some_and(|t| t <= 200.0) {
                entry.1 += 1;
            }
        }
        entry.2 += w.duration_s;
    }
    let mut statement = conn.prepare(&queries["sla_per_day"]).unwrap();
    let rows: Vec<(String, i64, i64, f64, f64)> = statement
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 3, "three days: {rows:?}");
    for (day, requests, met, pct, goodput) in &rows {
        let (want_requests, want_met, duration) = expected[day];
        assert_eq!(
            (*requests, *met),
            (want_requests as i64, want_met as i64),
            "day {day}"
        );
        assert!(
            close(*pct, 100.0 * want_met as f64 / want_requests as f64),
            "day {day}"
        );
        assert!(
            close(*goodput, want_met as f64 / duration),
            "day {day}: {goodput}"
        );
    }
    assert!(
        rows.iter().any(|r| r.2 < r.1),
        "some requests must miss the 200 ms TTFT limit, or the query proves nothing: {rows:?}"
    );

    // Nearest-rank p95 TTFT per model per day.
    let mut ttfts: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for w in &written {
        for r in measured(w).filter(|r| r.ok()) {
            if let Some(t) = r.ttft_ms {
                ttfts
                    .entry((day_of(&w.run), r.model.clone()))
                    .or_default()
                    .push(t);
            }
        }
    }
    let mut statement = conn
        .prepare(&queries["p95_ttft_per_model_per_day"])
        .unwrap();
    let rows: Vec<(String, String, f64, i64)> = statement
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), ttfts.len(), "{rows:?}");
    for (day, model, p95, n) in rows {
        let values = ttfts
            .get_mut(&(day.clone(), model.clone()))
            .expect("known group");
        values.sort_by(|a, b| a.total_cmp(b));
        let rank = (0.95 * values.len() as f64).ceil() as usize;
        assert_eq!(n as usize, values.len());
        assert!(
            close(p95, values[rank - 1]),
            "{day} {model}: {p95} vs {}",
            values[rank - 1]
        );
    }

    // Queue share of TTFT by concurrency.
    let mut shares: BTreeMap<u64, (u64, f64, f64, f64)> = BTreeMap::new();
    for w in &written {
        for r in measured(w).filter(|r| r.ok()) {
            let (Some(q), Some(t)) = (r.decomposition.as_ref().and_then(|d| d.queue_ms), r.ttft_ms)
            else {
                continue;
            };
            let entry = shares.entry(w.run.concurrency).or_default();
            entry.0 += 1;
            entry.1 += q / t;
            entry.2 += q;
            entry.3 += t;
        }
    }
    let mut statement = conn
        .prepare(&queries["queue_share_by_concurrency"])
        .unwrap();
    let rows: Vec<(i64, i64, f64, f64)> = statement
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![4, 8, 16, 32]
    );
    for (concurrency, n, mean_share, share) in &rows {
        let (want_n, sum_share, queue, ttft) = shares[&(*concurrency as u64)];
        assert_eq!(*n, want_n as i64);
        assert!(close(*mean_share, sum_share / want_n as f64));
        assert!(close(*share, queue / ttft));
    }
    assert!(
        rows[3].3 > rows[0].3,
        "queue share grows with concurrency in this data: {rows:?}"
    );
}

#[test]
fn every_file_of_a_run_lands_in_its_table() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("tracebench.db");
    let dir = tmp.path().join("run-a");
    let run = SyntheticRun::new("run-a", 50);
    let (records, summary) = write_run_folder(&dir, &run);
    import_run_dir(&db, &dir).unwrap();
    // Importing again replaces, it does not duplicate.
    import_run_dir(&db, &dir).unwrap();
    let conn = Connection::open(&db).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |row| row.get(0)).unwrap() };
    let lines = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .count() as i64
    };
    assert_eq!(count("SELECT COUNT(*) FROM runs"), 1);
    assert_eq!(count("SELECT COUNT(*) FROM requests"), records.len() as i64);
    assert_eq!(count("SELECT COUNT(*) FROM spans"), lines("spans.jsonl"));
    assert_eq!(
        count("SELECT COUNT(*) FROM telemetry"),
        lines("telemetry.jsonl")
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM server_metrics"),
        lines("server_metrics.jsonl")
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM telemetry WHERE gap IS NOT NULL"),
        1
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM requests WHERE error_kind IS NOT NULL"),
        records.iter().filter(|r| !r.ok()).count() as i64
    );
    // Joined spans are findable by trace id, and the flattened columns hold the record's values.
    let joined = records.iter().find(|r| r.server.is_some()).unwrap();
    let (queue, network, itl, span_name): (f64, f64, String, String) = conn
        .query_row(
            "SELECT q.server_queue_ms, q.network_ms, q.itl_chunk_ms, s.name
             FROM requests q JOIN spans s ON s.trace_id = q.trace_id
             WHERE q.request_id = ?1",
            [&joined.request_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap();
    let server = joined.server.as_ref().unwrap();
    assert_eq!(queue, server.queue_ms.unwrap());
    assert_eq!(
        network,
        joined.decomposition.as_ref().unwrap().network_ms.unwrap()
    );
    assert_eq!(
        serde_json::from_str::<Vec<f64>>(&itl).unwrap(),
        joined.itl_chunk_ms
    );
    assert_eq!(span_name, "llm_request");
    let (stored, model, finished): (String, String, i64) = conn
        .query_row("SELECT summary, model, finished FROM runs", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["requests"]["total"], summary.requests.total);
    assert_eq!((model.as_str(), finished), ("tiny", 1));
}

#[test]
fn unreadable_lines_are_reported_once_and_the_rest_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("tracebench.db");
    let dir = tmp.path().join("run-torn");
    let (_, summary) = write_run_folder(&dir, &SyntheticRun::new("run-torn", 30));
    let mut spans = std::fs::read_to_string(dir.join("spans.jsonl")).unwrap();
    let good_spans = spans.lines().count() as i64;
    spans.push_str("{\"span\": {\"traceId\": \"tor");
    std::fs::write(dir.join("spans.jsonl"), spans).unwrap();
    let run_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    let writer = HistoryWriter::open(&db, "run-torn", &run_json).unwrap();
    let err = writer.finish(&dir, &summary).unwrap_err().to_string();
    assert!(err.contains("spans.jsonl:"), "{err}");
    let conn = Connection::open(&db).unwrap();
    let stored: i64 = conn
        .query_row("SELECT COUNT(*) FROM spans", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, good_spans);
}

#[test]
fn a_database_that_cannot_be_opened_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let not_a_db = tmp.path().join("file.db");
    std::fs::write(&not_a_db, vec![b'x'; 4096]).unwrap();
    let err = HistoryWriter::open(&not_a_db, "r", &serde_json::json!({}))
        .err()
        .expect("must fail");
    assert!(format!("{err:#}").contains("file.db"), "{err:#}");
    // A folder that is not a run folder.
    let err = import_run_dir(&tmp.path().join("h.db"), tmp.path()).unwrap_err();
    assert!(err.to_string().contains("not a run folder"), "{err}");
}
