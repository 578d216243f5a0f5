//! (stub until the view branch lands)
use std::path::{Path, PathBuf};
pub fn write_report(run_dir: &Path) -> anyhow::Result<PathBuf> {
    Ok(run_dir.join("report.html"))
}
