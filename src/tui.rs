//! (stub until the view branch lands)
use crate::analysis::live::LiveSnapshot;
pub enum DashboardExit {
    Finished,
    UserQuit,
}
pub fn run_dashboard(
    _snapshots: tokio::sync::watch::Receiver<LiveSnapshot>,
    _title: String,
) -> std::io::Result<DashboardExit> {
    Ok(DashboardExit::Finished)
}
