//! Starting shards together: `--start-at` (an RFC 3339 wall-clock instant
//! every shard waits for), and what each shard knows of its own clock, kept in
//! its `run.json`: the offset from the server's clock (from the server's
//! `Date` header) and the kernel's NTP state (`adjtimex`), so the merge can
//! say how far apart the shards' clocks may have been.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long the `Date` header is watched for its second to turn over.
const DATE_WATCH: Duration = Duration::from_millis(1_200);
/// The gap between two looks at the `Date` header.
const DATE_POLL: Duration = Duration::from_millis(10);

/// What a shard knows of its clock (in `run.json` as `clock`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClockCheck {
    /// This host's wall clock minus the server's, ms (positive: this host is
    /// ahead), from the instant the server's `Date` header turned to the next second.
    pub server_offset_ms: Option<f64>,
    /// The estimate is within this many ms either way.
    pub server_offset_uncertainty_ms: Option<f64>,
    /// Why there is no offset estimate, when there is none.
    pub server_offset_note: Option<String>,
    /// The kernel's NTP discipline, when it can be read.
    pub ntp: Option<NtpState>,
}

/// The kernel's view of its clock discipline (`adjtimex(2)`, read only).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NtpState {
    /// An NTP daemon keeps the clock synchronised (the kernel's state is not `TIME_ERROR`).
    pub synchronized: bool,
    /// The daemon's estimate of the clock's error, ms.
    pub estimated_error_ms: f64,
    /// Its bound on the error, ms.
    pub max_error_ms: f64,
}

/// Parses `--start-at`: an RFC 3339 instant such as `2026-01-31T12:00:00Z`.
pub fn parse_start_at(text: &str) -> Result<DateTime<Utc>, crate::units::BadValue> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            crate::units::BadValue(format!(
                "`{text}` is not an RFC 3339 instant like 2026-01-31T12:00:00Z: {e}"
            ))
        })
}

/// Waits until the wall clock reads `at`, or `stop` is cancelled. Returns
/// what a reader should know when the instant had already passed.
pub async fn wait_until(at: DateTime<Utc>, stop: &CancellationToken) -> Option<String> {
    let late = Utc::now() - at;
    if late > chrono::TimeDelta::zero() {
        return Some(format!(
            "--start-at {} had passed {:.3}s before this process was ready; it started at once",
            at.to_rfc3339(),
            late.as_seconds_f64()
        ));
    }
    let wait = (-late).to_std().unwrap_or_default();
    eprintln!(
        "note: waiting {:.1}s for --start-at {}",
        wait.as_secs_f64(),
        at.to_rfc3339()
    );
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = stop.cancelled() => {}
    }
    None
}

/// Checks this host's clock: the offset from the server's `Date` header
/// (watched for about a second) and the kernel's NTP state.
pub async fn check(http: &reqwest::Client, base_url: &str) -> ClockCheck {
    let mut check = ClockCheck {
        ntp: ntp_state(),
        ..ClockCheck::default()
    };
    match server_offset(http, &format!("{base_url}/v1/models")).await {
        Ok((offset, uncertainty)) => {
            check.server_offset_ms = Some(offset);
            check.server_offset_uncertainty_ms = Some(uncertainty);
        }
        Err(why) => check.server_offset_note = Some(why),
    }
    check
}

/// One look at the server's `Date`: the whole seconds it says, and the local
/// wall clock (ns) just before the request left and just after the answer came.
async fn look(http: &reqwest::Client, url: &str) -> Result<(i64, u64, u64), String> {
    let before = crate::units::unix_now_ns();
    let response = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("the server did not answer {url}: {e}"))?;
    let after = crate::units::unix_now_ns();
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("the server's answer to {url} has no Date header"))?;
    let date = DateTime::parse_from_rfc2822(date)
        .map_err(|e| format!("the server's Date header `{date}` is not an HTTP date: {e}"))?;
    Ok((date.timestamp(), before, after))
}

/// Local minus server wall clock (ms) and its uncertainty: the server's
/// second turned over between the last look that saw the old second (sent
/// at `before`) and the first that saw the new one (answered at `after`).
async fn server_offset(http: &reqwest::Client, url: &str) -> Result<(f64, f64), String> {
    let started = Instant::now();
    let (mut second, mut before, _) = look(http, url).await?;
    while started.elapsed() < DATE_WATCH {
        tokio::time::sleep(DATE_POLL).await;
        let (now_second, now_before, after) = look(http, url).await?;
        if now_second != second {
            let turned_local_ns = (before as f64 + after as f64) / 2.0;
            let server_ns = now_second as f64 * 1e9;
            let offset_ms = (turned_local_ns - server_ns) / 1e6;
            let uncertainty_ms = (after - before) as f64 / 2e6;
            return Ok((offset_ms, uncertainty_ms));
        }
        (second, before) = (now_second, now_before);
    }
    Err(format!(
        "the server's Date header did not change within {}",
        humantime::format_duration(DATE_WATCH)
    ))
}

/// The kernel's NTP state, read with `adjtimex(2)` (no privilege needed to read).
pub fn ntp_state() -> Option<NtpState> {
    // SAFETY: a zeroed `timex` with `modes == 0` asks only to read the state.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut timex) };
    if state < 0 {
        return None;
    }
    Some(NtpState {
        synchronized: state != libc::TIME_ERROR,
        estimated_error_ms: timex.esterror as f64 / 1e3,
        max_error_ms: timex.maxerror as f64 / 1e3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_at_is_rfc3339_and_bad_text_says_so() {
        let at = parse_start_at("2026-01-31T12:00:00+01:00").unwrap();
        assert_eq!(at.to_rfc3339(), "2026-01-31T11:00:00+00:00");
        let e = parse_start_at("tomorrow").unwrap_err().0;
        assert!(e.contains("RFC 3339"), "{e}");
    }

    #[tokio::test]
    async fn a_passed_instant_starts_at_once_and_says_so() {
        let at = Utc::now() - chrono::TimeDelta::seconds(2);
        let note = wait_until(at, &CancellationToken::new()).await.unwrap();
        assert!(note.contains("had passed"), "{note}");
        let soon = Utc::now() + chrono::TimeDelta::milliseconds(150);
        let waited = Instant::now();
        assert_eq!(wait_until(soon, &CancellationToken::new()).await, None);
        assert!(waited.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn the_kernel_ntp_state_reads() {
        let state = ntp_state().expect("adjtimex reads on Linux");
        assert!(state.max_error_ms >= 0.0 && state.estimated_error_ms >= 0.0);
    }
}
