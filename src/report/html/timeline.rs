//! The request timeline sections of the report: one bar per request, split into
//! schedule lag, network, frontend, queue, prefill and decode (or the client's
//! phases without a server span), first aligned at the intended start, then on
//! the run's clock. Large runs draw an even sample of their requests.

use super::chart::{legend_html, x_axis, Scale};
use super::{esc, num, truncate};
use crate::record::RequestRecord;
use std::fmt::Write as _;

/// At most this many requests are drawn as timeline bars; larger runs draw every k-th.
pub const MAX_TIMELINE_ROWS: usize = 600;

/// One coloured phase of a timeline bar.
#[derive(Clone, Copy)]
struct Phase {
    name: &'static str,
    color: &'static str,
}

const PHASE_LAG: Phase = Phase {
    name: "schedule lag",
    color: "#b0b7c3",
};
const PHASE_NETWORK: Phase = Phase {
    name: "network",
    color: "#8e7cc3",
};
const PHASE_FRONTEND: Phase = Phase {
    name: "frontend",
    color: "#f6b26b",
};
const PHASE_QUEUE: Phase = Phase {
    name: "queue",
    color: "#e06666",
};
const PHASE_PREFILL: Phase = Phase {
    name: "prefill",
    color: "#3d85c6",
};
const PHASE_DECODE: Phase = Phase {
    name: "decode",
    color: "#6aa84f",
};
const PHASE_WAIT: Phase = Phase {
    name: "wait for first token",
    color: "#76a5af",
};
const PHASE_STREAM: Phase = Phase {
    name: "streaming",
    color: "#93c47d",
};
const PHASE_FAILED: Phase = Phase {
    name: "failed",
    color: "#990000",
};

/// The phases of one request laid end to end from its intended start, in ms.
fn bar_phases(r: &RequestRecord) -> Vec<(Phase, f64)> {
    let mut phases = vec![(PHASE_LAG, r.schedule_lag_ms.max(0.0))];
    let sent = r.instants_ns.sent;
    let ms_since_sent = |t: Option<u64>| t.map(|t| t.saturating_sub(sent) as f64 / 1e6);
    if !r.ok() {
        let end = ms_since_sent(r.instants_ns.end.or(r.instants_ns.last_token))
            .or(r.e2e_end_ms)
            .unwrap_or(0.0);
        phases.push((PHASE_FAILED, end));
        return phases;
    }
    let ttft = r.ttft_ms.unwrap_or(0.0).max(0.0);
    let streaming = match (r.instants_ns.first_token, r.instants_ns.last_token) {
        (Some(first), Some(last)) => last.saturating_sub(first) as f64 / 1e6,
        _ => 0.0,
    };
    match &r.decomposition {
        Some(d) if r.server.is_some() => {
            let mut known = 0.0;
            for (phase, value) in [
                (PHASE_NETWORK, d.network_ms),
                (PHASE_FRONTEND, d.frontend_ms),
                (PHASE_QUEUE, d.queue_ms),
                (PHASE_PREFILL, d.prefill_ms),
            ] {
                let v = value.unwrap_or(0.0).max(0.0).min((ttft - known).max(0.0));
                known += v;
                phases.push((phase, v));
            }
            if ttft > known {
                phases.push((PHASE_WAIT, ttft - known));
            }
            phases.push((PHASE_DECODE, streaming));
        }
        _ => {
            phases.push((PHASE_WAIT, ttft));
            phases.push((PHASE_STREAM, streaming));
        }
    }
    phases
}

/// Where a request bar starts and what it shows.
#[derive(Clone, Copy, PartialEq)]
enum BarLayout {
    /// Every phase of the request, placed on the run's clock from its intended start.
    OverTime,
    /// Only the phases before the first token, every bar starting at zero.
    TtftAligned,
}

/// The requests drawn as bars, chosen as requests.jsonl streams by: every
/// `stride`-th of the workload (`index`, which is the order they were sent), so
/// at most [`MAX_TIMELINE_ROWS`] whatever the size of the run.
pub(super) struct TimelineSample {
    /// Requests in the run, warm-up included.
    total: usize,
    stride: u64,
    rows: Vec<RequestRecord>,
}

impl TimelineSample {
    /// A sample for `total` records whose largest `index` is `max_index`.
    pub fn new(total: usize, max_index: u64) -> TimelineSample {
        let span = (total as u64).max(max_index.saturating_add(1));
        TimelineSample {
            total,
            stride: span.div_ceil(MAX_TIMELINE_ROWS as u64).max(1),
            rows: Vec::new(),
        }
    }

    pub fn add(&mut self, record: &RequestRecord) {
        if record.index.is_multiple_of(self.stride) {
            self.rows.push(record.clone());
        }
    }

    /// Both timeline sections: TTFT parts aligned at zero, then every phase over time.
    pub fn render(mut self, page: &mut String) {
        if self.total == 0 {
            page.push_str("<h2>Every request</h2><p class=\"note\">No requests in this run.</p>");
            return;
        }
        self.rows.sort_by_key(|r| (r.instants_ns.sent, r.index));
        let rows: Vec<&RequestRecord> = self.rows.iter().collect();
        section_timeline(page, &rows, self.total, self.stride);
    }
}

fn section_timeline(page: &mut String, rows: &[&RequestRecord], total: usize, stride: u64) {
    let with_server = rows.iter().any(|r| r.server.is_some());
    let sampling = if stride > 1 {
        format!(
            " This run has {total} requests: every {} request in send order is drawn ({} bars).",
            ordinal(stride),
            rows.len()
        )
    } else {
        String::new()
    };

    page.push_str("<h2>Where TTFT went, request by request</h2>");
    let ok_rows: Vec<&RequestRecord> = rows.iter().copied().filter(|r| r.ok()).collect();
    let text = if with_server {
        "Each successful request's time to first token, from its intended start, in the order sent: \
         schedule lag, network, server frontend, queue, prefill. Long red means queueing; long blue means prefill."
    } else {
        "No server spans were joined, so each successful request's time to first token shows \
         the client phases only: schedule lag and wait for first token."
    };
    let _ = write!(
        page,
        "<p class=\"note\">{}{}</p>",
        esc(text),
        esc(&sampling)
    );
    let legend: Vec<Phase> = if with_server {
        vec![
            PHASE_LAG,
            PHASE_NETWORK,
            PHASE_FRONTEND,
            PHASE_QUEUE,
            PHASE_PREFILL,
            PHASE_WAIT,
        ]
    } else {
        vec![PHASE_LAG, PHASE_WAIT]
    };
    legend_html(page, legend.iter().map(|p| (p.name, p.color)));
    if ok_rows.is_empty() {
        page.push_str("<p class=\"note\">No successful requests.</p>");
    } else {
        request_bars(
            page,
            "ttft-breakdown",
            &ok_rows,
            BarLayout::TtftAligned,
            "ms since intended start",
        );
    }

    page.push_str("<h2>Every request over time</h2>");
    let text = if with_server {
        "One bar per request on the run's clock, in the order sent: the TTFT parts as above, then decode \
         (the client's streaming time). Requests without a server span show the client phases."
    } else {
        "One bar per request on the run's clock, in the order sent: schedule lag, wait for first token, streaming."
    };
    let _ = write!(
        page,
        "<p class=\"note\">{}{}</p>",
        esc(text),
        esc(&sampling)
    );
    let legend: Vec<Phase> = if with_server {
        vec![
            PHASE_LAG,
            PHASE_NETWORK,
            PHASE_FRONTEND,
            PHASE_QUEUE,
            PHASE_PREFILL,
            PHASE_DECODE,
            PHASE_WAIT,
            PHASE_STREAM,
            PHASE_FAILED,
        ]
    } else {
        vec![PHASE_LAG, PHASE_WAIT, PHASE_STREAM, PHASE_FAILED]
    };
    legend_html(page, legend.iter().map(|p| (p.name, p.color)));
    request_bars(
        page,
        "timeline",
        rows,
        BarLayout::OverTime,
        "seconds since run start",
    );
}

/// One horizontal bar per request, top to bottom in the given order.
fn request_bars(
    page: &mut String,
    id: &str,
    rows: &[&RequestRecord],
    layout: BarLayout,
    x_label: &str,
) {
    let phases_of = |r: &RequestRecord| -> Vec<(Phase, f64)> {
        let phases = bar_phases(r);
        match layout {
            BarLayout::OverTime => phases,
            BarLayout::TtftAligned => phases
                .into_iter()
                .filter(|(p, _)| p.name != PHASE_DECODE.name && p.name != PHASE_STREAM.name)
                .collect(),
        }
    };
    // Bar start and the unit of the x axis (seconds over time, ms when aligned).
    let unit = match layout {
        BarLayout::OverTime => 1e3,
        BarLayout::TtftAligned => 1.0,
    };
    let start_of = |r: &RequestRecord| match layout {
        BarLayout::OverTime => r.instants_ns.intended.min(r.instants_ns.sent) as f64 / 1e9,
        BarLayout::TtftAligned => 0.0,
    };
    let ends = rows
        .iter()
        .map(|r| start_of(r) + phases_of(r).iter().map(|(_, v)| v).sum::<f64>() / unit);
    let end = ends.fold(0.0f64, f64::max);
    let start = rows
        .iter()
        .map(|r| start_of(r))
        .fold(f64::INFINITY, f64::min);
    let x = Scale::new(start.min(end), end.max(start + 1e-3));
    let (width, left, right, top, bottom) = (1120.0, 64.0, 16.0, 8.0, 36.0);
    let plot_h = (rows.len() as f64 * 10.0).clamp(120.0, 720.0);
    let row_h = plot_h / rows.len() as f64;
    let bar_h = (row_h * 0.78).max(0.6);
    let plot_w = width - left - right;
    let height = plot_h + top + bottom;
    let mut body = String::new();
    let mut marks = 0usize;
    x_axis(&mut body, &x, left, top, plot_w, plot_h, x_label);
    for (i, r) in rows.iter().enumerate() {
        let y = top + i as f64 * row_h + (row_h - bar_h) / 2.0;
        let mut t = start_of(r);
        let phases = phases_of(r);
        let _ = write!(
            body,
            "<g><title>{}</title>",
            esc(&bar_tooltip(r, &bar_phases(r)))
        );
        for (phase, ms) in phases {
            if ms <= 0.0 {
                continue;
            }
            let x0 = left + x.at(t) * plot_w;
            t += ms / unit;
            let x1 = left + x.at(t) * plot_w;
            let _ = write!(
                body,
                "<rect data-mark=\"1\" x=\"{x0:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{bar_h:.2}\" fill=\"{}\"/>",
                (x1 - x0).max(0.4),
                phase.color
            );
            marks += 1;
        }
        body.push_str("</g>");
    }
    let label_every = (rows.len() / 12).max(1);
    for (i, r) in rows.iter().enumerate().step_by(label_every) {
        let y = top + (i as f64 + 0.5) * row_h;
        let _ = write!(
            body,
            "<text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" dominant-baseline=\"middle\">#{}</text>",
            left - 6.0,
            y,
            r.index
        );
    }
    let _ = write!(
        page,
        "<svg data-chart=\"{id}\" data-expect=\"{marks}\" viewBox=\"0 0 {width} {height:.0}\" class=\"wide\" role=\"img\" aria-label=\"{id}\">{body}</svg>"
    );
}

fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn bar_tooltip(r: &RequestRecord, phases: &[(Phase, f64)]) -> String {
    let mut text = format!("#{} {}", r.index, r.request_id);
    if r.warmup {
        text.push_str(" (warm-up)");
    }
    if let Some(e) = &r.error {
        let _ = write!(
            text,
            "\nerror {}: {}",
            e.kind.as_str(),
            truncate(&e.message, 200)
        );
    }
    if let Some(v) = r.ttft_ms {
        let _ = write!(text, "\nTTFT {} ms", num(v));
    }
    if let Some(v) = r.e2e_ms {
        let _ = write!(text, ", E2E {} ms", num(v));
    }
    for (phase, ms) in phases.iter().filter(|(_, ms)| *ms > 0.0) {
        let _ = write!(text, "\n{}: {} ms", phase.name, num(*ms));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals() {
        assert_eq!(ordinal(2), "2nd");
        assert_eq!(ordinal(11), "11th");
        assert_eq!(ordinal(23), "23rd");
        assert_eq!(ordinal(84), "84th");
    }

    #[test]
    fn the_sample_is_bounded_even_with_sparse_indexes() {
        assert_eq!(TimelineSample::new(600, 599).stride, 1);
        assert_eq!(TimelineSample::new(10_000, 9_999).stride, 17);
        let sparse = TimelineSample::new(1_000, 1_000_000);
        assert!(1_000_000 / sparse.stride < MAX_TIMELINE_ROWS as u64);
    }
}
