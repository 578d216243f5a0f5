//! The run's clock: one monotonic origin shared by the client instants and the
//! telemetry samples, plus the wall-clock time of that origin so instants can be
//! placed beside server spans and GPU samples (which carry wall-clock times).

use std::time::Instant;

/// A run's time origin.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    start: Instant,
    start_unix_ns: u64,
}

impl RunClock {
    /// Starts the clock now.
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            start_unix_ns: crate::units::unix_now_ns(),
        }
    }

    /// Nanoseconds from the origin to `instant` (0 if before it).
    pub fn ns_at(&self, instant: Instant) -> u64 {
        instant.saturating_duration_since(self.start).as_nanos() as u64
    }

    /// Nanoseconds since the origin, now.
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// Wall clock (ns since the Unix epoch) of a run-relative instant.
    pub fn unix_ns_of(&self, run_ns: u64) -> u64 {
        self.start_unix_ns + run_ns
    }

    /// Wall clock of the origin, ns since the Unix epoch.
    pub fn start_unix_ns(&self) -> u64 {
        self.start_unix_ns
    }
}
