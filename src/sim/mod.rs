//! (stub until the sim branch lands)
use std::net::SocketAddr;
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SimArgs {
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    #[arg(long, default_value_t = 5000)]
    pub span_delay_ms: u64,
}
pub struct SimServer;
impl SimServer {
    pub fn addr(&self) -> SocketAddr {
        unimplemented!()
    }
    pub fn url(&self) -> String {
        unimplemented!()
    }
    pub async fn shutdown(self) -> anyhow::Result<()> {
        Ok(())
    }
}
pub async fn spawn(_args: SimArgs) -> anyhow::Result<SimServer> {
    anyhow::bail!("stub")
}
pub async fn run_until_ctrl_c(_args: SimArgs) -> anyhow::Result<()> {
    anyhow::bail!("stub")
}
