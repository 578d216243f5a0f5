//! Analysis of finished records: distribution statistics, the run summary,
//! goodput against SLOs, the TTFT decomposition and a plain-language diagnosis.

pub mod diagnosis;
pub mod goodput;
pub mod live;
pub mod stats;
pub mod summary;
pub mod workload;

pub use goodput::{Goodput, Slo};
pub use stats::Stats;
pub use summary::{decompose, summarize, Summary};
