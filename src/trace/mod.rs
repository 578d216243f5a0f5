//! (stub until the trace branch lands)
use crate::record::RequestRecord;
use std::path::Path;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct TraceArgs {
    #[arg(long, default_value = "15s", value_parser = crate::units::parse_duration)]
    pub span_wait: Duration,
    #[arg(long, default_value = "on")]
    pub trace_header: String,
}
pub struct SpanCollector;
pub struct WaitProgress {
    pub missing: usize,
    pub remaining: Duration,
}
pub struct JoinReport {
    pub joined: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub unrelated_spans: u64,
}
pub async fn start_collector(_args: &TraceArgs, _run_dir: &Path) -> anyhow::Result<SpanCollector> {
    Ok(SpanCollector)
}
impl SpanCollector {
    pub fn live_phases(&self) -> Option<crate::analysis::live::PhaseMeans> {
        None
    }
    pub async fn finish(
        self,
        _records: &mut [RequestRecord],
        _on_wait: impl FnMut(WaitProgress),
    ) -> anyhow::Result<JoinReport> {
        Ok(JoinReport {
            joined: 0,
            missing: 0,
            duplicates: 0,
            unrelated_spans: 0,
        })
    }
}
pub async fn join_run_dir(_run_dir: &Path, _args: &TraceArgs) -> anyhow::Result<JoinReport> {
    anyhow::bail!("stub")
}
pub async fn collect_until_ctrl_c(_args: &TraceArgs, _out: &Path) -> anyhow::Result<()> {
    anyhow::bail!("stub")
}
pub fn show_request(_run_dir: &Path, _request_id: &str) -> anyhow::Result<String> {
    anyhow::bail!("stub")
}
pub async fn export_client_spans(
    _records: &[RequestRecord],
    _endpoint: &str,
) -> anyhow::Result<()> {
    Ok(())
}
