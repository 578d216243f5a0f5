//! (stub until the telemetry branch lands)
use crate::clock::RunClock;
use crate::record::RequestRecord;
use std::path::Path;
#[derive(clap::Args, Debug, Clone)]
pub struct TelemetryArgs {
    #[arg(long, default_value = "off")]
    pub gpu: Vec<String>,
}
pub struct Telemetry;
pub struct TelemetryReport {
    pub gpu: Option<serde_json::Value>,
    pub server_metrics: Option<serde_json::Value>,
}
pub async fn start(
    _args: &TelemetryArgs,
    _base_url: &str,
    _run_dir: &Path,
    _clock: RunClock,
) -> anyhow::Result<Telemetry> {
    Ok(Telemetry)
}
impl Telemetry {
    pub fn gauges(&self) -> Vec<crate::analysis::live::Gauge> {
        Vec::new()
    }
    pub fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    pub async fn finish(
        self,
        _window_ns: (u64, u64),
        _output_tokens: u64,
    ) -> anyhow::Result<TelemetryReport> {
        Ok(TelemetryReport {
            gpu: None,
            server_metrics: None,
        })
    }
}
impl TelemetryReport {
    pub fn attribute(&self, _records: &mut [RequestRecord]) {}
}
