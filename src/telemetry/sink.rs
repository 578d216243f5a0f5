//! Where samplers put what they see: JSONL files written a line at a time, the notes for
//! the user, and the live gauges the dashboard reads.
//! All three are cheap clonable handles shared between the samplers and the run, and
//! travel together with the sampling rhythm in a [`SamplerContext`].

use crate::analysis::live::Gauge;
use crate::clock::RunClock;
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// How many recent values each live gauge keeps.
const GAUGE_HISTORY: usize = 120;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a sampler (GPU or server metrics) needs besides its source.
#[derive(Debug, Clone)]
pub struct SamplerContext {
    pub interval: Duration,
    pub clock: RunClock,
    pub sink: JsonlSink,
    pub live: LiveGauges,
    /// Turns `true` when the run ends.
    pub stop: watch::Receiver<bool>,
    pub notes: Notes,
}

/// Notes for the user, each said once, in the order they arose.
#[derive(Debug, Clone, Default)]
pub struct Notes(Arc<Mutex<Vec<String>>>);

impl Notes {
    /// Adds a note unless the same text was already noted.
    pub fn push(&self, note: String) {
        let mut notes = lock(&self.0);
        if !notes.contains(&note) {
            notes.push(note);
        }
    }

    pub fn all(&self) -> Vec<String> {
        lock(&self.0).clone()
    }
}

/// A JSONL file shared by samplers: every line goes to the OS in one write, so a killed run
/// keeps every line written before it. A write error is noted once and never stops sampling.
#[derive(Debug, Clone)]
pub struct JsonlSink {
    file: Arc<Mutex<File>>,
    path: PathBuf,
    notes: Notes,
}

impl JsonlSink {
    /// Creates (or truncates) the file.
    pub fn create(path: &Path, notes: Notes) -> anyhow::Result<Self> {
        let file = File::create(path)
            .map_err(|error| anyhow::anyhow!("cannot create {}: {error}", path.display()))?;
        Ok(Self {
            file: Arc::new(Mutex::new(file)),
            path: path.to_path_buf(),
            notes,
        })
    }

    /// Appends one JSON value as a line.
    pub fn write(&self, line: &impl serde::Serialize) {
        let result = serde_json::to_vec(line)
            .map_err(std::io::Error::other)
            .and_then(|mut bytes| {
                bytes.push(b'\n');
                lock(&self.file).write_all(&bytes)
            });
        if let Err(error) = result {
            self.notes.push(format!(
                "telemetry: cannot write {} ({error}); lines are missing",
                self.path.display()
            ));
        }
    }
}

/// Live gauge values with their recent history, keyed by display name.
#[derive(Debug, Clone, Default)]
pub struct LiveGauges(Arc<Mutex<BTreeMap<String, GaugeHistory>>>);

/// One gauge's unit and recent values, oldest first.
#[derive(Debug)]
struct GaugeHistory {
    unit: String,
    values: VecDeque<f64>,
}

impl LiveGauges {
    /// Records the newest value of gauge `name`.
    pub fn set(&self, name: &str, unit: &str, value: f64) {
        let mut gauges = lock(&self.0);
        let history = &mut gauges
            .entry(name.to_string())
            .or_insert_with(|| GaugeHistory {
                unit: unit.to_string(),
                values: VecDeque::with_capacity(GAUGE_HISTORY),
            })
            .values;
        if history.len() == GAUGE_HISTORY {
            history.pop_front();
        }
        history.push_back(value);
    }

    /// A copy of every gauge, history oldest first.
    pub fn snapshot(&self) -> Vec<Gauge> {
        lock(&self.0)
            .iter()
            .filter_map(
                |(
                    name,
                    GaugeHistory {
                        unit,
                        values: history,
                    },
                )| {
                    Some(Gauge {
                        name: name.clone(),
                        unit: unit.clone(),
                        value: *history.back()?,
                        history: history.iter().copied().collect(),
                    })
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_keep_a_bounded_history() {
        let gauges = LiveGauges::default();
        for value in 0..(GAUGE_HISTORY + 5) {
            gauges.set("GPU0 memory", "MiB", value as f64);
        }
        let snapshot = gauges.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].value, (GAUGE_HISTORY + 4) as f64);
        assert_eq!(snapshot[0].history.len(), GAUGE_HISTORY);
        assert_eq!(snapshot[0].history[0], 5.0);
    }

    #[test]
    fn notes_are_said_once() {
        let notes = Notes::default();
        notes.push("a".into());
        notes.push("b".into());
        notes.push("a".into());
        assert_eq!(notes.all(), vec!["a".to_string(), "b".to_string()]);
    }
}
