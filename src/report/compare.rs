//! (stub until the view branch lands)
use std::path::PathBuf;
pub fn compare(_paths: &[PathBuf]) -> anyhow::Result<String> {
    anyhow::bail!("stub")
}
