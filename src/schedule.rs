//! When to send: the load shapes. A schedule only says *when* a request is
//! meant to go (its intended instant) and how many may be in flight; the one
//! dispatch loop in `run` does the sending for every shape, so schedule lag
//! (`sent - intended`) means the same thing everywhere.

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Gamma};
use std::time::Duration;

/// Inter-arrival process of an open-loop schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Exponential gaps (a Poisson process).
    Poisson,
    /// Equal gaps of 1/rate.
    Constant,
    /// Gamma gaps with shape `--burstiness` (< 1 burstier, > 1 smoother than Poisson).
    Gamma,
}

/// A load shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Schedule {
    /// Keep `concurrency` requests in flight; the next goes when one finishes.
    Closed { concurrency: usize },
    /// Requests arrive at `rate` per second whatever the server does; an optional
    /// cap on in-flight requests delays (never drops) arrivals beyond it.
    Open {
        rate: f64,
        arrival: Arrival,
        burstiness: f64,
        max_concurrency: Option<usize>,
    },
    /// Send `size` at once, wait for all of them, send the next `size`.
    Batch { size: usize },
    /// Trace replay: each request goes at its own timestamp (from the
    /// workload); an optional cap delays (never drops) requests beyond it.
    Replay { max_concurrency: Option<usize> },
}

/// Most requests an uncapped open-loop run may have in flight at once.
pub const UNCAPPED: usize = tokio::sync::Semaphore::MAX_PERMITS;

impl Schedule {
    /// How many requests may be in flight at once.
    pub fn in_flight_limit(&self) -> usize {
        match self {
            Schedule::Closed { concurrency } => *concurrency,
            Schedule::Open {
                max_concurrency, ..
            }
            | Schedule::Replay { max_concurrency } => max_concurrency.unwrap_or(UNCAPPED),
            Schedule::Batch { size } => *size,
        }
    }

    /// Offsets from the start at which open-loop requests are intended to go;
    /// `None` for closed loop and batches (a request is intended the moment a
    /// slot frees up).
    pub fn arrivals(&self, seed: u64) -> Option<Arrivals> {
        match *self {
            Schedule::Open {
                rate,
                arrival,
                burstiness,
                ..
            } => Some(Arrivals::new(rate, arrival, burstiness, seed)),
            _ => None,
        }
    }
}

/// The intended send offsets of an open-loop schedule.
pub struct Arrivals {
    rng: StdRng,
    gap: Gap,
    at: f64,
}

enum Gap {
    Fixed(f64),
    Gamma(Gamma<f64>),
}

impl Arrivals {
    fn new(rate: f64, arrival: Arrival, burstiness: f64, seed: u64) -> Self {
        let gap = match arrival {
            Arrival::Constant => Gap::Fixed(1.0 / rate),
            // Poisson is Gamma with shape 1; the mean gap stays 1/rate for any shape.
            Arrival::Poisson => Gap::Gamma(Gamma::new(1.0, 1.0 / rate).expect("rate checked > 0")),
            Arrival::Gamma => Gap::Gamma(
                Gamma::new(burstiness, 1.0 / (rate * burstiness)).expect("burstiness checked > 0"),
            ),
        };
        Self {
            rng: StdRng::seed_from_u64(seed),
            gap,
            at: 0.0,
        }
    }
}

impl Iterator for Arrivals {
    type Item = Duration;

    /// The first request goes at 0; each later one a drawn gap after the previous.
    fn next(&mut self) -> Option<Duration> {
        let now = self.at;
        self.at += match &self.gap {
            Gap::Fixed(g) => *g,
            Gap::Gamma(d) => d.sample(&mut self.rng),
        };
        Some(Duration::from_secs_f64(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(arrival: Arrival, burstiness: f64) -> Vec<f64> {
        let schedule = Schedule::Open {
            rate: 20.0,
            arrival,
            burstiness,
            max_concurrency: None,
        };
        let times: Vec<f64> = schedule
            .arrivals(3)
            .unwrap()
            .take(20_001)
            .map(|d| d.as_secs_f64())
            .collect();
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn mean_and_cv(v: &[f64]) -> (f64, f64) {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn every_arrival_process_keeps_the_rate() {
        for (arrival, burstiness, cv) in [
            (Arrival::Constant, 1.0, 0.0),
            (Arrival::Poisson, 1.0, 1.0),
            (Arrival::Gamma, 0.25, 2.0),
            (Arrival::Gamma, 4.0, 0.5),
        ] {
            let (mean, got_cv) = mean_and_cv(&gaps(arrival, burstiness));
            assert!(
                (mean - 0.05).abs() < 0.05 * 0.05,
                "{arrival:?} mean gap {mean}"
            );
            assert!(
                (got_cv - cv).abs() < 0.08,
                "{arrival:?}/{burstiness}: cv {got_cv}, want {cv}"
            );
        }
    }

    #[test]
    fn first_arrival_is_immediate_and_seed_reproduces() {
        let schedule = Schedule::Open {
            rate: 5.0,
            arrival: Arrival::Poisson,
            burstiness: 1.0,
            max_concurrency: Some(4),
        };
        let a: Vec<_> = schedule.arrivals(9).unwrap().take(5).collect();
        let b: Vec<_> = schedule.arrivals(9).unwrap().take(5).collect();
        assert_eq!(a[0], Duration::ZERO);
        assert_eq!(a, b);
        assert_ne!(
            a,
            schedule.arrivals(10).unwrap().take(5).collect::<Vec<_>>()
        );
        assert_eq!(schedule.in_flight_limit(), 4);
        assert!(Schedule::Closed { concurrency: 8 }.arrivals(1).is_none());
    }
}
