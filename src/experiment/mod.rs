//! `tracebench experiment FILE.yaml`: many runs as one study. The stages,
//! each in its module: the file is read ([`file`], with [`vars`]) and turned
//! into a checked plan ([`plan`], run parameters through [`params`]); the
//! runner ([`runner`]) starts the servers it must ([`server`]), runs every
//! point as a normal run (`run::execute`), stops climbing at saturation
//! ([`saturation`]) or searches for capacity ([`search`], SLOs in [`slo`]),
//! and keeps `experiment.json` and `points.csv` current after every point
//! ([`state`]), so a killed experiment resumes where it stopped. At the end
//! come the figures across repeats ([`results`]), the reading ([`reading`]),
//! the combined report and the history. Metric names: [`metrics`].

pub mod describe;
pub mod file;
pub mod metrics;
pub mod params;
pub mod plan;
pub mod point;
pub mod reading;
pub mod results;
pub mod runner;
pub mod saturation;
pub mod search;
pub mod server;
pub mod slo;
pub mod state;
pub mod suggest;
mod vars;

pub use runner::run_experiment;

use file::At;
use std::path::{Path, PathBuf};

/// A mistake in an experiment file, at its line and column (0 when unknown).
#[derive(Debug, thiserror::Error)]
pub struct Located {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            let (line, column) = (self.line, self.column);
            write!(
                f,
                "{}:{line}:{column}: {}",
                self.file.display(),
                self.message
            )
        }
    }
}

impl Located {
    /// `message` at the place of `value` in `file`.
    pub fn at<T>(file: &Path, value: &At<T>, message: impl Into<String>) -> Located {
        Located {
            file: file.to_path_buf(),
            line: value.referenced.line(),
            column: value.referenced.column(),
            message: message.into(),
        }
    }
}
