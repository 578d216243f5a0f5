//! Live statistics while a run is going: HDR histograms fed one record at a
//! time by the aggregator, and cheap snapshots for the dashboard and the
//! progress line (O(1) per record, never a sort on the request path).

use crate::record::RequestRecord;
use hdrhistogram::Histogram;
use std::collections::VecDeque;

/// Percentiles of one live metric, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LivePercentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// One second of the run: completions and output tokens in it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tick {
    pub second: u64,
    pub completed: u64,
    pub output_tokens: u64,
    pub in_flight: u64,
}

/// What the dashboard draws: a copy, taken at its refresh rate.
#[derive(Debug, Clone, Default)]
pub struct LiveSnapshot {
    pub done: u64,
    pub failed: u64,
    pub in_flight: u64,
    pub total: Option<u64>,
    pub elapsed_s: f64,
    pub ttft: LivePercentiles,
    pub itl: LivePercentiles,
    pub tpot: LivePercentiles,
    pub e2e: LivePercentiles,
    pub output_tokens: u64,
    pub timeline: Vec<Tick>,
    pub recent_errors: Vec<String>,
    /// Mean server phases of the spans joined so far (filled by the trace stage).
    pub phases: Option<PhaseMeans>,
    /// Telemetry gauges (GPU memory, utilisation, server running/waiting), latest first-class values.
    pub gauges: Vec<Gauge>,
}

/// Mean server-side phases over the spans joined so far, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseMeans {
    pub spans: u64,
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// One live telemetry value with its recent history (oldest first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauge {
    /// What it is, e.g. `GPU0 memory` or `server waiting`.
    pub name: String,
    /// Unit for display, e.g. `MiB`, `%`, `reqs`.
    pub unit: String,
    pub value: f64,
    pub history: Vec<f64>,
}

impl LiveSnapshot {
    /// Completed requests per second so far.
    pub fn rate(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.done as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    /// Seconds left at the current rate, when the total is known.
    pub fn eta_s(&self) -> Option<f64> {
        let total = self.total?;
        let rate = self.rate();
        (rate > 0.0).then(|| total.saturating_sub(self.done) as f64 / rate)
    }
}

/// Histograms of microseconds, 3 significant figures, up to one hour.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Accumulates records as they complete.
pub struct LiveStats {
    ttft: Histogram<u64>,
    itl: Histogram<u64>,
    tpot: Histogram<u64>,
    e2e: Histogram<u64>,
    done: u64,
    failed: u64,
    output_tokens: u64,
    total: Option<u64>,
    timeline: Vec<Tick>,
    recent_errors: VecDeque<String>,
}

const RECENT_ERRORS: usize = 8;

impl LiveStats {
    pub fn new(total: Option<u64>) -> Self {
        Self {
            ttft: histogram(),
            itl: histogram(),
            tpot: histogram(),
            e2e: histogram(),
            done: 0,
            failed: 0,
            output_tokens: 0,
            total,
            timeline: Vec::new(),
            recent_errors: VecDeque::new(),
        }
    }

    /// Takes in one finished record (warm-up records are ignored).
    pub fn observe(&mut self, record: &RequestRecord) {
        if record.warmup {
            return;
        }
        self.done += 1;
        let second = record.instants_ns.end.unwrap_or(record.instants_ns.sent) / 1_000_000_000;
        let tick = self.tick_mut(second);
        tick.completed += 1;
        if let Some(error) = &record.error {
            self.failed += 1;
            if self.recent_errors.len() == RECENT_ERRORS {
                self.recent_errors.pop_front();
            }
            self.recent_errors.push_back(format!(
                "{} {}: {}",
                record.request_id,
                error.kind.as_str(),
                error.message
            ));
            return;
        }
        let tokens = record.output_tokens.unwrap_or(0);
        self.tick_mut(second).output_tokens += tokens;
        self.output_tokens += tokens;
        let record_ms = |h: &mut Histogram<u64>, ms: f64| {
            h.saturating_record((ms * 1e3).max(1.0) as u64);
        };
        if let Some(v) = record.ttft_ms {
            record_ms(&mut self.ttft, v);
        }
        if let Some(v) = record.tpot_ms {
            record_ms(&mut self.tpot, v);
        }
        if let Some(v) = record.e2e_ms {
            record_ms(&mut self.e2e, v);
        }
        for gap in &record.itl_chunk_ms {
            record_ms(&mut self.itl, *gap);
        }
    }

    /// Notes how many requests were in flight at `second` since the run's start.
    pub fn sample_in_flight(&mut self, second: u64, in_flight: u64) {
        let tick = self.tick_mut(second);
        tick.in_flight = tick.in_flight.max(in_flight);
    }

    fn tick_mut(&mut self, second: u64) -> &mut Tick {
        while self.timeline.len() as u64 <= second {
            let next = self.timeline.len() as u64;
            self.timeline.push(Tick {
                second: next,
                ..Tick::default()
            });
        }
        &mut self.timeline[second as usize]
    }

    /// A copy for drawing.
    pub fn snapshot(&self, in_flight: u64, elapsed_s: f64) -> LiveSnapshot {
        let percentiles = |h: &Histogram<u64>| LivePercentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5) as f64 / 1e3,
            p90: h.value_at_quantile(0.9) as f64 / 1e3,
            p99: h.value_at_quantile(0.99) as f64 / 1e3,
            max: h.max() as f64 / 1e3,
        };
        LiveSnapshot {
            done: self.done,
            failed: self.failed,
            in_flight,
            total: self.total,
            elapsed_s,
            ttft: percentiles(&self.ttft),
            itl: percentiles(&self.itl),
            tpot: percentiles(&self.tpot),
            e2e: percentiles(&self.e2e),
            output_tokens: self.output_tokens,
            timeline: self.timeline.clone(),
            recent_errors: self.recent_errors.iter().cloned().collect(),
            phases: None,
            gauges: Vec::new(),
        }
    }
}
