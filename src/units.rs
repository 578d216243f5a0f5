//! Human units on the command line: durations like `500ms`, `5s`, `10m`.
//!
//! Every flag that takes a duration parses it here, so the accepted spellings
//! are the same everywhere.

use std::time::Duration;

/// A flag value that does not parse, with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

impl BadValue {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Parses a duration with a unit (`250ms`, `1.5s`, `10m`, `1h`, `2h 30m`).
/// A bare number is rejected so that `--duration 60` cannot mean two things.
pub fn parse_duration(text: &str) -> Result<Duration, BadValue> {
    let text = text.trim();
    if text.is_empty() {
        return Err(BadValue::new("empty duration"));
    }
    if text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(BadValue(format!(
            "`{text}` has no unit: write e.g. `{text}s` or `{text}ms`"
        )));
    }
    if let Some(seconds) = text.strip_suffix('s').and_then(|n| n.parse::<f64>().ok()) {
        return seconds_to_duration(seconds, text);
    }
    humantime::parse_duration(text)
        .map_err(|e| BadValue(format!("`{text}` is not a duration: {e}")))
}

fn seconds_to_duration(seconds: f64, text: &str) -> Result<Duration, BadValue> {
    if seconds.is_finite() && seconds >= 0.0 {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(BadValue(format!("`{text}` is not a duration")))
    }
}

/// Milliseconds of a duration as a float.
pub fn as_ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Wall clock now, in nanoseconds since the Unix epoch.
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2h 30m").unwrap(), Duration::from_secs(9000));
    }

    #[test]
    fn bare_numbers_and_junk_are_rejected() {
        assert!(parse_duration("60").unwrap_err().0.contains("no unit"));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
