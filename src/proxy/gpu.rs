//! GPU memory per request at the proxy: the telemetry samplers of `run`
//! ([`crate::telemetry`]) feed a short history of total GPU memory; a request
//! takes the latest value when it starts and the peak of the samples taken
//! while it ran, or is marked `overlapped` when another request shared its
//! time (as `run` attributes memory), or `no_samples`.

use crate::record::GpuAttribution;
use crate::telemetry::Telemetry;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Samples kept (ten minutes at the default 100 ms interval).
const HISTORY: usize = 6000;

/// Recent total GPU memory samples.
#[derive(Debug, Default)]
pub(crate) struct GpuWatch {
    samples: Mutex<VecDeque<(Instant, f64)>>,
}

/// What a request saw of the GPU when it started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GpuStart {
    pub memory_before_mib: Option<f64>,
    at: Instant,
}

impl GpuWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, f64)>> {
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a sample (the oldest goes beyond [`HISTORY`]).
    pub fn push(&self, at: Instant, memory_mib: f64) {
        let mut samples = self.lock();
        if samples.len() == HISTORY {
            samples.pop_front();
        }
        samples.push_back((at, memory_mib));
    }

    pub fn start(&self) -> GpuStart {
        GpuStart {
            memory_before_mib: self.lock().back().map(|s| s.1),
            at: Instant::now(),
        }
    }

    /// The request's attribution: its peak and its peak over the memory
    /// before it, unless it overlapped another or no sample fell inside it.
    pub fn attribute(&self, start: &GpuStart, end: Instant, overlapped: bool) -> GpuAttribution {
        if overlapped {
            return GpuAttribution::Unattributed("overlapped".into());
        }
        let peak = self
            .lock()
            .iter()
            .filter(|(at, _)| (start.at..=end).contains(at))
            .map(|s| s.1)
            .reduce(f64::max);
        match (peak, start.memory_before_mib) {
            (Some(peak), Some(before)) => GpuAttribution::Alone {
                peak_memory_mib: peak,
                memory_over_idle_mib: (peak - before).max(0.0),
            },
            _ => GpuAttribution::Unattributed("no_samples".into()),
        }
    }
}

/// Copies the samplers' latest total GPU memory into `watch` every
/// `interval` until `stop`.
pub(crate) async fn follow(
    telemetry: Arc<Telemetry>,
    watch: Arc<GpuWatch>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let memory: Vec<f64> = telemetry
            .gauges()
            .into_iter()
            .filter(|g| g.unit == "MiB" && g.name.ends_with(" memory"))
            .map(|g| g.value)
            .collect();
        if !memory.is_empty() {
            watch.push(Instant::now(), memory.iter().sum());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_over_the_memory_before_unless_overlapped() {
        let watch = GpuWatch::default();
        let before = watch.start();
        assert_eq!(before.memory_before_mib, None);
        watch.push(Instant::now(), 1000.0);
        let start = watch.start();
        assert_eq!(start.memory_before_mib, Some(1000.0));
        watch.push(Instant::now(), 1600.0);
        watch.push(Instant::now(), 1200.0);
        let end = Instant::now();
        watch.push(end + Duration::from_secs(1), 9000.0);
        assert_eq!(
            watch.attribute(&start, end, false),
            GpuAttribution::Alone {
                peak_memory_mib: 1600.0,
                memory_over_idle_mib: 600.0
            }
        );
        assert_eq!(
            watch.attribute(&start, end, true),
            GpuAttribution::Unattributed("overlapped".into())
        );
        assert_eq!(
            watch.attribute(&before, before.at, false),
            GpuAttribution::Unattributed("no_samples".into())
        );
    }
}
