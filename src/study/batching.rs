//! `tracebench study batching`: sequential (one request at a time), static
//! batches of B (send B, wait for all B) and continuous batching (B in
//! flight, the next sent the moment one finishes), on the same prompts and
//! seed. The verdict: the speed-ups against sequential, and where the time
//! went (how much of each arm's wall time had fewer than half the B slots busy).

use super::args::BatchingArgs;
use super::figures::{self, ms, one, pct};
use crate::experiment::state::{Analysis, ExperimentState, StudyChart, StudySection, StudyTable};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The arms, in case order.
const ARMS: [&str; 3] = ["sequential", "static", "continuous"];

/// The experiment plan: one case per arm.
pub fn plan(args: &BatchingArgs) -> Value {
    let b = args.batch_size;
    let loads = [
        json!({ "concurrency": 1 }),
        json!({ "batch_size": b }),
        json!({ "concurrency": b }),
    ];
    let cases: Vec<Value> = ARMS
        .iter()
        .zip(loads)
        .map(|(name, load)| json!({ "name": name, "model": "target", "params": load }))
        .collect();
    let defaults = json!({ "output_tokens": args.output_tokens, "requests": args.requests });
    super::experiment("batching", &args.common, false, defaults, json!(cases))
}

/// One arm's figures.
#[derive(Debug, Default)]
struct Arm {
    figures: BTreeMap<&'static str, f64>,
    /// Fraction of the wall time with fewer than half of the B slots busy.
    under_half: Option<f64>,
    running: Vec<(f64, f64)>,
}

const FIGURES: [(&str, &str); 12] = [
    ("duration_s", "wall s"),
    ("request_throughput", "req/s"),
    ("output_throughput", "tok/s"),
    ("mean_ttft_ms", "TTFT mean ms"),
    ("p95_ttft_ms", "TTFT p95 ms"),
    ("median_tpot_ms", "TPOT ms"),
    ("median_e2e_ms", "E2E ms"),
    ("mean_server.queue_ms", "queue ms"),
    ("mean_server.prefill_ms", "prefill ms"),
    ("mean_server.decode_ms", "decode ms"),
    ("server_running_max", "running max"),
    ("gpu_util_mean", "GPU util %"),
];

impl Analysis for BatchingArgs {
    fn analyse(&self, dir: &Path, state: &ExperimentState) -> anyhow::Result<StudySection> {
        let arms: Vec<Arm> = (0..ARMS.len())
            .map(|case| arm(dir, state, case, self.batch_size))
            .collect();
        let tput = |i: usize| arms[i].figures.get("output_throughput").copied();
        let speedup = |i: usize| Some(tput(i)? / tput(0).filter(|t| *t > 0.0)?);
        let mut figures = BTreeMap::new();
        for (arm, name) in arms.iter().zip(ARMS) {
            for (key, value) in &arm.figures {
                figures.insert(format!("{name}.{key}"), *value);
            }
            if let Some(u) = arm.under_half {
                figures.insert(format!("{name}.under_half_busy_fraction"), u);
            }
        }
        for (i, name) in ARMS.iter().enumerate().skip(1) {
            if let Some(s) = speedup(i) {
                figures.insert(format!("{name}.speedup_vs_sequential"), s);
            }
        }
        let verdict = verdict(&arms, self.batch_size, speedup(1), speedup(2));
        Ok(StudySection {
            kind: "batching".into(),
            question: format!(
                "Does continuous batching beat static batches of {} on this workload, and by how much?",
                self.batch_size
            ),
            verdict,
            figures,
            tables: vec![table(&arms)],
            charts: vec![StudyChart {
                id: "study-running".into(),
                title: "Running batch over time (server /metrics)".into(),
                x_label: "s since the arm's start".into(),
                y_label: "requests running".into(),
                lines: arms
                    .iter()
                    .zip(ARMS)
                    .map(|(a, n)| (n.to_string(), a.running.clone()))
                    .collect(),
            }],
            notes: vec![format!(
                "Slots busy are the client's requests in flight (of B = {}); the running batch is the server's own gauge; queue, prefill and decode are the means of the joined server spans. Between arms the server's prefix cache is reset when the study launched the server (--cmd).",
                self.batch_size
            )],
        })
    }
}

fn arm(dir: &Path, state: &ExperimentState, case: usize, slots: usize) -> Arm {
    let Some(point) = figures::ok_points(state, case).into_iter().next() else {
        return Arm::default();
    };
    let mut arm = Arm::default();
    if let Some(summary) = figures::summary(dir, point) {
        for (name, _) in FIGURES {
            if let Some(v) = figures::metric(&summary, name) {
                arm.figures.insert(name, v);
            }
        }
    }
    let mut spans = Vec::new();
    figures::each_record(dir, point, |r| {
        if let Some(e2e) = r.e2e_ms {
            spans.push((r.sent_unix_ns, r.sent_unix_ns + (e2e * 1e6) as u64));
        }
    });
    arm.under_half = under_half(&mut spans, slots);
    arm.running = figures::server_series(dir, point, "running");
    arm
}

/// The fraction of `[first send, last end]` with fewer than half of
/// `slots` requests in flight, from (send, end) instants.
fn under_half(spans: &mut [(u64, u64)], slots: usize) -> Option<f64> {
    let start = spans.iter().map(|s| s.0).min()?;
    let end = spans.iter().map(|s| s.1).max()?;
    let mut events: Vec<(u64, i64)> = spans.iter().flat_map(|s| [(s.0, 1), (s.1, -1)]).collect();
    events.sort_unstable();
    let (mut busy, mut at, mut low) = (0i64, start, 0u64);
    for (t, delta) in events {
        if (busy as f64) < slots as f64 / 2.0 {
            low += t - at;
        }
        busy += delta;
        at = t;
    }
    (end > start).then(|| low as f64 / (end - start) as f64)
}

fn table(arms: &[Arm]) -> StudyTable {
    let mut columns = vec!["arm".to_string()];
    columns.extend(FIGURES.iter().map(|(_, label)| label.to_string()));
    columns.push("under half busy".into());
    let rows = arms
        .iter()
        .zip(ARMS)
        .map(|(arm, name)| {
            let mut row = vec![name.to_string()];
            row.extend(
                FIGURES
                    .iter()
                    .map(|(key, _)| one(arm.figures.get(key).copied())),
            );
            row.push(pct(arm.under_half));
            row
        })
        .collect();
    StudyTable {
        title: "The three arms".into(),
        columns,
        rows,
    }
}

fn verdict(arms: &[Arm], b: usize, static_x: Option<f64>, continuous_x: Option<f64>) -> String {
    let (Some(s), Some(c)) = (static_x, continuous_x) else {
        return "batching: no verdict (an arm did not finish; see the points)".into();
    };
    let winner = if c > s {
        format!("continuous batching beat static batches by {:.2}×", c / s)
    } else {
        format!(
            "static batches were not beaten (continuous/static {:.2}×)",
            c / s
        )
    };
    let ttft = |i: usize| ms(arms[i].figures.get("mean_ttft_ms").copied());
    format!(
        "batching (B = {b}): against sequential, static batches ran {s:.2}× and continuous batching {c:.2}× the output tokens/s: {winner}. Static batches wait for their slowest member: {} of their wall time had fewer than half the slots busy (continuous: {}); mean TTFT sequential {}, static {}, continuous {}.",
        pct(arms[1].under_half),
        pct(arms[2].under_half),
        ttft(0),
        ttft(1),
        ttft(2)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_under_half_busy_are_timed() {
        // 4 slots: two requests over 0..10 and two over 0..4: from 4 to 10 only 2 busy (not under 2).
        let mut spans = vec![(0, 10), (0, 10), (0, 4), (0, 4)];
        assert_eq!(under_half(&mut spans, 4), Some(0.0));
        // one straggler alone from 4 to 10: 6 of 10 under half.
        let mut spans = vec![(0, 10), (0, 4), (0, 4), (0, 4)];
        assert_eq!(under_half(&mut spans, 4), Some(0.6));
        assert_eq!(under_half(&mut [], 4), None);
    }
}
