//! Building a summary from records on disk: read a run's `requests.jsonl`,
//! summarise it with an SLO, print the table `tracebench run` prints.
//!
//! cargo run --example summary_from_records -- results/<run_id>/requests.jsonl [ttft:500ms]

use tracebench::analysis::{summarize, Slo};
use tracebench::record::read_records;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        anyhow::bail!("usage: summary_from_records REQUESTS_JSONL [SLO]");
    };
    let slo = match args.next() {
        Some(spec) => Slo::parse(&spec).map_err(anyhow::Error::msg)?,
        None => Slo::default(),
    };
    let records = read_records(std::path::Path::new(&path))?;
    let run_id = records
        .first()
        .map(|r| r.run_id.clone())
        .unwrap_or_default();
    let summary = summarize(&run_id, &records, &slo, false);
    print!("{}", tracebench::report::console::render(&summary));
    Ok(())
}
