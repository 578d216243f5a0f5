//! A time window of a records folder, as a run folder of its own: the
//! records sent in `[--since, --until)` copied to `window-<since>-<until>/`
//! inside it, with its own `run.json`, `summary.json` and `requests.csv`, so
//! `report` and `compare` read a proxy's hour like a run.

use crate::analysis::Slo;
use crate::cli::WindowArgs;
use crate::record::{records_in, RecordWriter};
use crate::report::run_folder::{RunFolder, REQUESTS, RUN};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// `path` itself when no window is asked for, else the window's folder
/// (written, or rewritten, inside `path`).
pub fn folder_or_window(path: &Path, window: &WindowArgs) -> anyhow::Result<PathBuf> {
    if window.since.is_none() && window.until.is_none() {
        return Ok(path.to_path_buf());
    }
    let since = window.since.unwrap_or(0);
    let until = window.until.unwrap_or(u64::MAX);
    if since >= until {
        bail!("--since must be before --until");
    }
    write_window(path, since, until)
}

/// Writes the records of `dir` sent in `[since_ns, until_ns)` (Unix ns) to a
/// window folder inside it, one record at a time, with `run.json` saying
/// which window it is. Fails when no record falls in the window.
pub fn write_window(dir: &Path, since_ns: u64, until_ns: u64) -> anyhow::Result<PathBuf> {
    let folder = RunFolder::open(dir)?;
    let name = format!("window-{}-{}", stamp(since_ns), stamp(until_ns));
    let out = dir.join(name);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut writer = RecordWriter::replacing(&out.join(REQUESTS))?;
    let mut kept = 0u64;
    for record in records_in(&folder.path(REQUESTS))? {
        let record = record?;
        if (since_ns..until_ns).contains(&record.sent_unix_ns) {
            writer.write(&record)?;
            kept += 1;
        }
    }
    if kept == 0 {
        let _ = std::fs::remove_dir(&out);
        bail!(
            "no request of {} was sent between {} and {}",
            dir.display(),
            stamp(since_ns),
            stamp(until_ns)
        );
    }
    writer.commit()?;
    let mut run = folder.run_json()?.unwrap_or_else(|| serde_json::json!({}));
    if let Some(object) = run.as_object_mut() {
        let run_id = object.get("run_id").and_then(|v| v.as_str()).unwrap_or("");
        let window_id = format!("{run_id}@{}..{}", stamp(since_ns), stamp(until_ns));
        object.insert("run_id".into(), window_id.into());
        object.insert(
            "window".into(),
            serde_json::json!({"since_unix_ns": since_ns, "until_unix_ns": until_ns, "requests": kept}),
        );
    }
    let run_id = run["run_id"].as_str().map(str::to_string);
    crate::run::write_json(&out.join(RUN), &run)?;
    let summary = RunFolder::open(&out)?.summarize(run_id.as_deref(), &Slo::default(), false)?;
    crate::run::write_summary(&out, &summary)?;
    Ok(out)
}

/// A window bound as a compact UTC time (`20260131T120000Z`), or `start`/`end`.
fn stamp(unix_ns: u64) -> String {
    match unix_ns {
        0 => "start".into(),
        u64::MAX => "end".into(),
        ns => chrono::DateTime::from_timestamp_nanos(ns as i64)
            .format("%Y%m%dT%H%M%SZ")
            .to_string(),
    }
}

/// `--since`/`--until`: RFC 3339, or a duration ago (`30m`); Unix ns.
pub fn parse_instant(text: &str) -> Result<u64, crate::units::BadValue> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return at
            .timestamp_nanos_opt()
            .and_then(|ns| u64::try_from(ns).ok())
            .ok_or_else(|| crate::units::BadValue::new(format!("`{text}` is out of range")));
    }
    match crate::units::parse_duration(text) {
        Ok(ago) => Ok(crate::units::unix_now_ns().saturating_sub(ago.as_nanos() as u64)),
        Err(_) => Err(crate::units::BadValue::new(format!(
            "`{text}` is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration ago (30m)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_rfc3339_or_a_duration_ago() {
        assert_eq!(
            parse_instant("1970-01-01T00:00:01Z").unwrap(),
            1_000_000_000
        );
        let ago = parse_instant("10m").unwrap();
        let expected = crate::units::unix_now_ns() - 600_000_000_000;
        assert!(
            ago.abs_diff(expected) < 5_000_000_000,
            "{ago} vs {expected}"
        );
        assert!(parse_instant("yesterday-ish").is_err());
        assert_eq!(stamp(1_000_000_000), "19700101T000001Z");
    }
}
