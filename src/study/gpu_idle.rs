//! The GPU idle threshold of `study coldstart`: per start, the GPU samples of
//! the idle window (`--idle-window`: from a second after the first request's
//! answer to the first measured send, nothing in flight) are the idle
//! baseline, those taken while a measured request was in flight are busy, and
//! from the two comes the utilisation below which the server is doing
//! nothing ([`threshold`]). At each sample the busiest GPU's utilisation
//! counts (a GPU the server leaves alone does not dilute it) and memory is
//! summed over the GPUs.

use super::figures::{self, one};
use crate::experiment::results::{spread, PointResult};
use crate::experiment::state::{StudySection, StudyTable};
use crate::telemetry::gpu::busy_interval;
use std::collections::BTreeMap;
use std::path::Path;

/// NVML and DCGM report utilisation averaged over up to the last second:
/// samples this soon after the first request's answer may still show it.
const SETTLE_NS: u64 = 1_000_000_000;
/// The least margin over the idle maximum, percentage points: utilisation
/// comes in whole percents and an idle GPU's readings jitter by a point or two.
const MIN_MARGIN_PCT: f64 = 2.0;
/// Busy is told apart from idle only this far above the idle maximum.
const MIN_GAP_PCT: f64 = 5.0;

/// The utilisation (percent) below which the GPU is idle: the idle maximum
/// plus a quarter of the way to the busy mean, at least [`MIN_MARGIN_PCT`]
/// (closer to idle than to busy, so a load lighter than the one measured
/// still counts as busy). `None` when the busy mean is less than
/// [`MIN_GAP_PCT`] above the idle maximum: the two cannot be told apart.
pub fn threshold(idle_max: f64, busy_mean: f64) -> Option<f64> {
    let gap = busy_mean - idle_max;
    (gap >= MIN_GAP_PCT).then(|| idle_max + (gap / 4.0).max(MIN_MARGIN_PCT))
}

/// One sampling of one source: the busiest GPU's utilisation and the memory
/// used over its GPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Instant {
    t_ns: u64,
    util_pct: Option<f64>,
    memory_mib: Option<f64>,
}

/// GPU samples of one start (or of all), told idle or busy.
#[derive(Debug, Clone, Default, PartialEq)]
struct Samples {
    /// Instants read, whether idle, busy or neither.
    read: usize,
    idle_util: Vec<f64>,
    idle_memory: Vec<f64>,
    busy_util: Vec<f64>,
}

/// What samples say, percent and MiB; `None` where no sample was taken.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    idle_mean: Option<f64>,
    idle_max: Option<f64>,
    idle_memory: Option<f64>,
    busy_mean: Option<f64>,
    threshold: Option<f64>,
}

impl Samples {
    /// The samples of a point's run folder.
    fn of_point(dir: &Path, point: &PointResult) -> Self {
        let mut warmup_end = None::<u64>;
        let mut measured = Vec::new();
        figures::each_record_and_warmup(dir, point, |record| {
            let (sent, end) = busy_interval(record);
            if record.warmup {
                warmup_end = Some(warmup_end.map_or(end, |w| w.max(end)));
            } else {
                measured.push((sent, end));
            }
        });
        Self::told_apart(&instants(dir, point), warmup_end, &measured)
    }

    /// Idle: from [`SETTLE_NS`] after the warm-up's last answer (from the
    /// start without warm-up) to the first measured send; busy: inside a
    /// measured request's send → end.
    fn told_apart(instants: &[Instant], warmup_end: Option<u64>, measured: &[(u64, u64)]) -> Self {
        let idle_from = warmup_end.map_or(0, |end| end + SETTLE_NS);
        let idle_to = measured.iter().map(|m| m.0).min().unwrap_or(u64::MAX);
        let mut samples = Self {
            read: instants.len(),
            ..Self::default()
        };
        for instant in instants {
            if (idle_from..idle_to).contains(&instant.t_ns) {
                samples.idle_util.extend(instant.util_pct);
                samples.idle_memory.extend(instant.memory_mib);
            } else if measured
                .iter()
                .any(|&(s, e)| (s..=e).contains(&instant.t_ns))
            {
                samples.busy_util.extend(instant.util_pct);
            }
        }
        samples
    }

    fn extend(&mut self, other: &Samples) {
        self.read += other.read;
        self.idle_util.extend(&other.idle_util);
        self.idle_memory.extend(&other.idle_memory);
        self.busy_util.extend(&other.busy_util);
    }

    fn reading(&self) -> Reading {
        let of = |values: &[f64]| (!values.is_empty()).then(|| spread(values));
        let idle = of(&self.idle_util);
        let idle_max = idle.as_ref().map(|s| s.max);
        let busy_mean = of(&self.busy_util).and_then(|s| s.mean);
        Reading {
            idle_mean: idle.and_then(|s| s.mean),
            idle_max,
            idle_memory: of(&self.idle_memory).and_then(|s| s.mean),
            busy_mean,
            threshold: idle_max.zip(busy_mean).and_then(|(i, b)| threshold(i, b)),
        }
    }

    fn row(&self, case: &str, repeat: &str) -> Vec<String> {
        let r = self.reading();
        vec![
            case.to_string(),
            repeat.to_string(),
            self.idle_util.len().to_string(),
            one(r.idle_mean),
            one(r.idle_max),
            one(r.idle_memory),
            self.busy_util.len().to_string(),
            one(r.busy_mean),
            one(r.threshold),
        ]
    }
}

/// The point's GPU samples as instants, in time order per source.
fn instants(dir: &Path, point: &PointResult) -> Vec<Instant> {
    let mut by_time: BTreeMap<(String, u64), Instant> = BTreeMap::new();
    figures::each_gpu_sample(dir, point, |line| {
        let Some(t_ns) = line["t_ns"].as_u64() else {
            return;
        };
        let source = line["source"].as_str().unwrap_or_default().to_string();
        let instant = by_time.entry((source, t_ns)).or_insert(Instant {
            t_ns,
            ..Instant::default()
        });
        if let Some(util) = line["gpu_util_pct"].as_f64() {
            instant.util_pct = Some(instant.util_pct.map_or(util, |u| u.max(util)));
        }
        if let Some(memory) = line["memory_used_mib"].as_f64() {
            *instant.memory_mib.get_or_insert(0.0) += memory;
        }
    });
    by_time.into_values().collect()
}

/// Adds the GPU figures, the table of each start (case, point) and the notes
/// to `section`; returns the verdict's clause, empty when no GPU was sampled.
pub fn add(section: &mut StudySection, dir: &Path, starts: &[(String, &PointResult)]) -> String {
    let mut all = Samples::default();
    let mut rows = Vec::new();
    for (case, point) in starts {
        let samples = Samples::of_point(dir, point);
        rows.push(samples.row(case, &(point.spec.repeat + 1).to_string()));
        all.extend(&samples);
    }
    if all.read == 0 {
        section.notes.push("No GPU was sampled (`--gpu`: NVML where a driver is present, or a DCGM exporter's URL), so the GPU's idle threshold is not measured.".into());
        return String::new();
    }
    rows.push(all.row("all", "–"));
    section.tables.push(StudyTable {
        title: "GPU idle and busy (utilisation % of the busiest GPU, memory summed over GPUs)"
            .into(),
        columns: [
            "case",
            "repeat",
            "idle samples",
            "idle util mean",
            "idle util max",
            "idle memory MiB",
            "busy samples",
            "busy util mean",
            "idle below",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    });
    let reading = all.reading();
    for (name, value) in [
        ("gpu_idle_util_mean_pct", reading.idle_mean),
        ("gpu_idle_util_max_pct", reading.idle_max),
        ("gpu_idle_memory_mib", reading.idle_memory),
        ("gpu_busy_util_mean_pct", reading.busy_mean),
        ("gpu_idle_threshold_pct", reading.threshold),
    ] {
        if let Some(value) = value {
            section.figures.insert(name.into(), value);
        }
    }
    clause(section, &all, &reading)
}

/// The verdict's clause, with a note where no threshold is given.
fn clause(section: &mut StudySection, all: &Samples, reading: &Reading) -> String {
    let memory = reading
        .idle_memory
        .map_or(String::new(), |m| format!(", idle memory {m:.0} MiB"));
    match (reading.idle_max, reading.busy_mean, reading.threshold) {
        (Some(idle), Some(busy), Some(below)) => format!(
            "; the GPU is idle below {below:.0}% utilisation (idle max {idle:.0}%, busy mean {busy:.0}%{memory})"
        ),
        (Some(idle), Some(busy), None) => {
            section.notes.push(format!("The busy mean is less than {MIN_GAP_PCT:.0} points above the idle maximum: the load did not keep the sampled GPU measurably busy (or it is not the server's GPU), so no idle threshold is given."));
            format!("; the GPU's idle and busy utilisation cannot be told apart (idle max {idle:.0}%, busy mean {busy:.0}%{memory})")
        }
        _ => {
            section.notes.push("An idle threshold needs GPU samples in the idle window (`--idle-window`, which starts a second after the first request's answer) and while requests run (more `--requests` or `--output-tokens` against the GPU's sampling interval).".into());
            format!(
                "; no GPU idle threshold ({} idle and {} busy GPU samples)",
                all.idle_util.len(),
                all.busy_util.len()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_idle_max_plus_a_quarter_of_the_gap_at_least_two_points() {
        assert_eq!(threshold(1.0, 83.0), Some(1.0 + 82.0 / 4.0));
        // A gap of 6: a quarter is 1.5, the floor of 2 points holds.
        assert_eq!(threshold(3.0, 9.0), Some(5.0));
        assert_eq!(threshold(0.0, MIN_GAP_PCT), Some(MIN_MARGIN_PCT));
        for (idle, busy) in [(3.0, 9.0), (1.0, 83.0), (40.0, 100.0)] {
            let t = threshold(idle, busy).unwrap();
            assert!(idle < t && t < busy, "{idle} < {t} < {busy}");
        }
    }

    #[test]
    fn busy_too_close_to_idle_cannot_be_told_apart() {
        assert_eq!(threshold(40.0, 44.9), None);
        assert_eq!(threshold(0.0, 0.0), None);
        assert_eq!(threshold(50.0, 30.0), None, "busy below idle");
    }

    fn at(t_ns: u64, util: f64, memory: f64) -> Instant {
        Instant {
            t_ns,
            util_pct: Some(util),
            memory_mib: Some(memory),
        }
    }

    #[test]
    fn samples_are_idle_in_the_window_busy_in_a_request_and_else_neither() {
        const S: u64 = 1_000_000_000;
        let instants = [
            at(0, 70.0, 900.0),          // before the warm-up's answer: neither
            at(S + S / 2, 60.0, 900.0),  // within the settle second: neither
            at(3 * S, 2.0, 1000.0),      // idle
            at(4 * S, 4.0, 1200.0),      // idle
            at(5 * S + 1, 90.0, 1500.0), // in the first request
            at(6 * S + 5, 0.0, 1500.0),  // between the requests: neither
            at(7 * S, 80.0, 1500.0),     // in the second request
        ];
        let measured = [(5 * S, 6 * S), (7 * S, 8 * S)];
        let samples = Samples::told_apart(&instants, Some(S), &measured);
        assert_eq!(samples.read, 7);
        assert_eq!(samples.idle_util, [2.0, 4.0]);
        assert_eq!(samples.busy_util, [90.0, 80.0]);
        let r = samples.reading();
        assert_eq!((r.idle_mean, r.idle_max), (Some(3.0), Some(4.0)));
        assert_eq!((r.idle_memory, r.busy_mean), (Some(1100.0), Some(85.0)));
        assert_eq!(r.threshold, threshold(4.0, 85.0));
        // Without a warm-up the window opens at the run's start.
        let cold = Samples::told_apart(&instants, None, &measured);
        assert_eq!(cold.idle_util, [70.0, 60.0, 2.0, 4.0]);
        let none = Samples::told_apart(&[], Some(S), &measured).reading();
        assert_eq!((none.idle_max, none.threshold), (None, None));
    }
}
