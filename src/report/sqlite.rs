//! (stub until the view branch lands)
use crate::analysis::Summary;
use crate::record::RequestRecord;
use std::path::Path;
pub struct HistoryWriter;
impl HistoryWriter {
    pub fn open(
        _path: &Path,
        _run_id: &str,
        _run_json: &serde_json::Value,
    ) -> anyhow::Result<HistoryWriter> {
        Ok(HistoryWriter)
    }
    pub fn record(&self, _record: &RequestRecord) {}
    pub fn finish(
        self,
        _run_dir: &Path,
        _records: &[RequestRecord],
        _summary: &Summary,
    ) -> anyhow::Result<()> {
        Ok(())
    }
}
pub fn import_run_dir(_db: &Path, _run_dir: &Path) -> anyhow::Result<()> {
    Ok(())
}
