//! An experiment in the SQLite history: one `experiments` row and one
//! `experiment_points` row per point, each linking to its run in `runs`
//! (the runs record themselves as they go). Example queries: `docs/sqlite.md`.

use super::sqlite::open_db;
use crate::experiment::state::ExperimentState;
use anyhow::Context;
use rusqlite::params;
use std::path::Path;

/// Writes (or rewrites) the experiment's rows.
pub fn record(db: &Path, dir: &Path, state: &ExperimentState) -> anyhow::Result<()> {
    let mut conn = open_db(db)?;
    let tx = conn.transaction()?;
    let id = &state.experiment_id;
    let failed = state
        .points
        .iter()
        .filter(|p| p.status == crate::experiment::results::Status::Failed)
        .count();
    tx.execute(
        "INSERT OR REPLACE INTO experiments VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            id,
            state.name,
            state.file,
            state.file_hash,
            dir.display().to_string(),
            i64::try_from(state.started_unix_ns).ok(),
            state.ended_unix_ns.and_then(|v| i64::try_from(v).ok()),
            serde_json::to_value(state.progress)?.as_str(),
            state.points.len() as i64,
            failed as i64,
            state.reading.join("\n"),
            state.command_line,
        ],
    )
    .context("cannot insert the experiment row")?;
    tx.execute(
        "DELETE FROM experiment_points WHERE experiment_id = ?1",
        [id],
    )?;
    for p in &state.points {
        let metric = |name: &str| p.metrics.get(name).copied();
        tx.execute(
            "INSERT INTO experiment_points VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,
                ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
            params![
                id,
                p.spec.id,
                p.run_id,
                p.spec.case as i64,
                state.cases.get(p.spec.case).map(|c| c.name.clone()),
                p.spec.label,
                serde_json::to_string(&p.spec.axes)?,
                p.spec.repeat,
                p.spec.trial,
                i64::try_from(p.spec.seed).ok(),
                serde_json::to_value(p.status)?.as_str(),
                p.reason,
                metric("request_throughput"),
                metric("output_throughput"),
                metric("median_ttft_ms"),
                metric("p99_ttft_ms"),
                metric("p99_tpot_ms"),
                metric("p99_e2el_ms"),
                metric("goodput_fraction"),
                metric("error_rate"),
                metric("ttft_share.queue"),
                serde_json::to_string(&p.metrics)?,
            ],
        )
        .context("cannot insert an experiment point")?;
    }
    tx.commit()?;
    Ok(())
}
