//! Goodput: the rate of requests (and their tokens) that met every SLO given.
//!
//! A request meets the SLOs when it succeeded and each limit holds: TTFT, TPOT,
//! E2E, every chunk gap (ITL), and the server's queue time when a span joined.
//! Failed requests count against goodput.

use crate::record::RequestRecord;
use crate::units::BadValue;
use serde::{Deserialize, Serialize};

/// Service-level objectives in milliseconds; `None` means no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub itl_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
    pub queue_ms: Option<f64>,
}

/// Goodput of a run against its SLOs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Goodput {
    pub slo: Slo,
    pub met: u64,
    pub total: u64,
    pub fraction: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
}

impl Slo {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none()
            && self.tpot_ms.is_none()
            && self.itl_ms.is_none()
            && self.e2e_ms.is_none()
            && self.queue_ms.is_none()
    }

    /// Parses `ttft:500ms,tpot:50ms` style specs (one `name:duration` per item).
    pub fn parse(spec: &str) -> Result<Slo, BadValue> {
        let mut slo = Slo::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item
                .split_once(':')
                .or_else(|| item.split_once('='))
                .ok_or_else(|| BadValue(format!("SLO `{item}` must look like `ttft:500ms`")))?;
            let ms = crate::units::as_ms(crate::units::parse_duration(value)?);
            let slot = match name.trim() {
                "ttft" => &mut slo.ttft_ms,
                "tpot" => &mut slo.tpot_ms,
                "itl" => &mut slo.itl_ms,
                "e2e" | "e2el" => &mut slo.e2e_ms,
                "queue" => &mut slo.queue_ms,
                other => {
                    return Err(BadValue(format!(
                        "unknown SLO `{other}` (known: ttft, tpot, itl, e2e, queue)"
                    )))
                }
            };
            *slot = Some(ms);
        }
        Ok(slo)
    }

    /// True when the request succeeded and met every limit.
    pub fn met_by(&self, record: &RequestRecord) -> bool {
        let within = |limit: Option<f64>, value: Option<f64>| match (limit, value) {
            (None, _) => true,
            (Some(limit), Some(value)) => value <= limit,
            (Some(_), None) => false,
        };
        let max_itl = record
            .itl_chunk_ms
            .iter()
            .copied()
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        record.ok()
            && within(self.ttft_ms, record.ttft_ms)
            && (self.tpot_ms.is_none() || record.tpot_ms.is_none_or(|v| v <= self.tpot_ms.unwrap()))
            && (self.itl_ms.is_none() || max_itl.is_none_or(|v| v <= self.itl_ms.unwrap()))
            && within(self.e2e_ms, record.e2e_ms)
            && within(
                self.queue_ms,
                record.server.as_ref().and_then(|s| s.queue_ms),
            )
    }
}

/// Counts the measured records that meet the SLOs, one record at a time.
#[derive(Debug, Clone)]
pub struct GoodputCounter {
    slo: Slo,
    met: u64,
    total: u64,
    met_output_tokens: u64,
}

impl GoodputCounter {
    pub fn new(slo: &Slo) -> Self {
        Self {
            slo: slo.clone(),
            met: 0,
            total: 0,
            met_output_tokens: 0,
        }
    }

    pub fn observe(&mut self, record: &RequestRecord) {
        self.total += 1;
        if self.slo.met_by(record) {
            self.met += 1;
            self.met_output_tokens += record.output_tokens.unwrap_or(0);
        }
    }

    /// Goodput over a measured window of `duration_s` seconds.
    pub fn finish(self, duration_s: f64) -> Goodput {
        let per_s = |v: f64| {
            if duration_s > 0.0 {
                v / duration_s
            } else {
                0.0
            }
        };
        Goodput {
            fraction: self.met as f64 / self.total.max(1) as f64,
            requests_per_s: per_s(self.met as f64),
            output_tokens_per_s: per_s(self.met_output_tokens as f64),
            slo: self.slo,
            met: self.met,
            total: self.total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_with_units() {
        let slo = Slo::parse("ttft:500ms, tpot=50ms,e2e:2s").unwrap();
        assert_eq!(slo.ttft_ms, Some(500.0));
        assert_eq!(slo.tpot_ms, Some(50.0));
        assert_eq!(slo.e2e_ms, Some(2000.0));
        assert!(slo.itl_ms.is_none());
        assert!(Slo::parse("latency:1s")
            .unwrap_err()
            .to_string()
            .contains("unknown SLO"));
        assert!(Slo::parse("ttft").is_err());
    }
}
