//! The live terminal dashboard (ratatui + crossterm): progress, live latency
//! percentiles, throughput over time, the server's phases as spans arrive,
//! telemetry gauges and recent errors, redrawn about four times a second.
//!
//! [`draw_dashboard`] is a pure function of a [`LiveSnapshot`] (tested with
//! ratatui's `TestBackend`); [`run_dashboard`] owns the terminal and always restores it.

use crate::analysis::live::{Gauge, LivePercentiles, LiveSnapshot, PhaseMeans};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::crossterm::{cursor, execute};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Gauge as GaugeWidget, Paragraph, Row, Sparkline, Table};
use ratatui::{DefaultTerminal, Frame, Terminal};
use std::io::stdout;
use std::sync::Once;
use std::time::Duration;

/// Time between redraws.
const REDRAW: Duration = Duration::from_millis(250);

/// Why the dashboard returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DashboardExit {
    /// The run ended: the snapshot sender was dropped.
    Finished,
    /// The user pressed `q`, Esc or Ctrl-C.
    UserQuit,
}

/// Runs the dashboard until the sender of `snapshots` is dropped or the user
/// quits. Blocking: call it from a blocking thread. The terminal is restored on
/// every way out, including a panic.
pub fn run_dashboard(
    mut snapshots: tokio::sync::watch::Receiver<LiveSnapshot>,
    title: String,
    context: Vec<String>,
) -> std::io::Result<DashboardExit> {
    install_restoring_panic_hook();
    let _restore = TerminalGuard::enter()?;
    let mut terminal: DefaultTerminal =
        Terminal::new(ratatui::backend::CrosstermBackend::new(stdout()))?;
    terminal.clear()?;
    loop {
        let finished = snapshots.has_changed().is_err();
        let snapshot = snapshots.borrow_and_update().clone();
        terminal.draw(|frame| draw_dashboard(frame, &snapshot, &title, &context))?;
        if finished {
            return Ok(DashboardExit::Finished);
        }
        if event::poll(REDRAW)? {
            if let Event::Key(key) = event::read()? {
                if is_quit_key(&key) {
                    return Ok(DashboardExit::UserQuit);
                }
            }
        }
    }
}

/// `q`, Esc, or Ctrl-C (raw mode delivers Ctrl-C as a key, not SIGINT).
fn is_quit_key(key: &KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && match key.code {
            KeyCode::Char('q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// Raw mode and the alternate screen while alive; restored on drop.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> std::io::Result<TerminalGuard> {
        enable_raw_mode()?;
        let guard = TerminalGuard;
        execute!(stdout(), EnterAlternateScreen, cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(stdout(), LeaveAlternateScreen, cursor::Show);
}

/// Restores the terminal before the panic message prints (else it is lost in
/// the alternate screen). Installed once per process; harmless when not in raw mode.
fn install_restoring_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

/// Draws the whole dashboard for one snapshot, under `context` lines (an
/// experiment's progress and curve so far) when there are any.
pub fn draw_dashboard(frame: &mut Frame, snapshot: &LiveSnapshot, title: &str, context: &[String]) {
    let gauge_rows = if snapshot.gauges.is_empty() {
        3
    } else {
        snapshot.gauges.len().min(6) as u16 + 2
    };
    let context_rows = if context.is_empty() {
        0
    } else {
        context.len().min(4) as u16 + 2
    };
    let [experiment, progress, middle, throughput, telemetry, errors, help] = Layout::vertical([
        Constraint::Length(context_rows),
        Constraint::Length(4),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(gauge_rows),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    if !context.is_empty() {
        let lines: Vec<Line> = context
            .iter()
            .take(4)
            .map(|l| Line::raw(l.as_str()))
            .collect();
        frame.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(" Experiment ")),
            experiment,
        );
    }
    draw_progress(frame, progress, snapshot, title);
    let [latency, phases] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(middle);
    draw_latency(frame, latency, snapshot);
    draw_phases(frame, phases, snapshot.phases.as_ref());
    draw_throughput(frame, throughput, snapshot);
    draw_gauges(frame, telemetry, &snapshot.gauges);
    draw_errors(frame, errors, snapshot);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(" q", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(" / "),
            Span::styled("Esc", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(" / "),
            Span::styled("Ctrl-C", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(": stop the run (in-flight requests drain, a partial report is written)"),
        ]))
        .style(Style::new().fg(Color::DarkGray)),
        help,
    );
}

/// Seconds as `1h02m`, `3m05s` or `42s`.
fn duration_text(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn ms_text(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn draw_progress(frame: &mut Frame, area: Rect, s: &LiveSnapshot, title: &str) {
    let block = Block::bordered().title(Span::styled(
        format!(" {title} "),
        Style::new().add_modifier(Modifier::BOLD),
    ));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [bar, text] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(inner);
    let (ratio, label) = match s.total {
        Some(total) if total > 0 => {
            let ratio = (s.done as f64 / total as f64).clamp(0.0, 1.0);
            (
                ratio,
                format!("{}/{} ({:.0}%)", s.done, total, ratio * 100.0),
            )
        }
        _ => (0.0, format!("{} done", s.done)),
    };
    frame.render_widget(
        GaugeWidget::default()
            .gauge_style(Style::new().fg(Color::Green).bg(Color::Black))
            .ratio(ratio)
            .label(label)
            .use_unicode(true),
        bar,
    );
    let tokens_per_s = if s.elapsed_s > 0.0 {
        s.output_tokens as f64 / s.elapsed_s
    } else {
        0.0
    };
    let eta = s.eta_s().map(duration_text).unwrap_or_else(|| "–".into());
    let failed_style = if s.failed > 0 {
        Style::new().fg(Color::Red)
    } else {
        Style::new()
    };
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::raw(format!("done {}", s.done)),
            Span::raw(format!(" · in flight {}", s.in_flight)),
            Span::styled(format!(" · failed {}", s.failed), failed_style),
            Span::raw(format!(
                " · total {}",
                s.total.map(|t| t.to_string()).unwrap_or_else(|| "–".into())
            )),
            Span::raw(format!(
                " · {:.1} req/s · {:.0} tok/s",
                s.rate(),
                tokens_per_s
            )),
            Span::raw(format!(
                " · elapsed {} · ETA {eta}",
                duration_text(s.elapsed_s)
            )),
        ])),
        text,
    );
}

fn draw_latency(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    let row = |name: &str, p: &LivePercentiles| {
        let cells = if p.count == 0 {
            vec!["–".to_string(); 4]
        } else {
            vec![
                ms_text(p.p50),
                ms_text(p.p90),
                ms_text(p.p99),
                ms_text(p.max),
            ]
        };
        let mut all = vec![name.to_string(), p.count.to_string()];
        all.extend(cells);
        Row::new(all)
    };
    let widths = [
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    let table = Table::new(
        [
            row("TTFT", &s.ttft),
            row("ITL", &s.itl),
            row("TPOT", &s.tpot),
            row("E2E", &s.e2e),
        ],
        widths,
    )
    .header(
        Row::new(["", "n", "p50", "p90", "p99", "max"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(" Latency (ms) "));
    frame.render_widget(table, area);
}

fn draw_phases(frame: &mut Frame, area: Rect, phases: Option<&PhaseMeans>) {
    let title = match phases {
        Some(p) => format!(" Server phases (mean of {} spans) ", p.spans),
        None => " Server phases ".to_string(),
    };
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(p) = phases.filter(|p| p.spans > 0) else {
        frame.render_widget(
            Paragraph::new("waiting for server spans…").style(Style::new().fg(Color::DarkGray)),
            inner,
        );
        return;
    };
    let total = p.queue_ms + p.prefill_ms + p.decode_ms;
    let label_width = 28u16;
    let bar_width = inner.width.saturating_sub(label_width) as f64;
    let lines: Vec<Line> = [
        ("queue", p.queue_ms, Color::Red),
        ("prefill", p.prefill_ms, Color::Blue),
        ("decode", p.decode_ms, Color::Green),
    ]
    .iter()
    .map(|(name, ms, color)| {
        let share = if total > 0.0 { ms / total } else { 0.0 };
        let cells = (share * bar_width).round() as usize;
        Line::from(vec![
            Span::raw(format!(
                "{name:<8}{:>9} ms {:>4.0}% ",
                ms_text(*ms),
                share * 100.0
            )),
            Span::styled("█".repeat(cells), Style::new().fg(*color)),
        ])
    })
    .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

/// The last `width` values, scaled to 0..=1000 of their maximum for a sparkline.
fn sparkline_data(values: impl Iterator<Item = f64>, width: u16) -> Vec<u64> {
    let values: Vec<f64> = values.collect();
    let tail = &values[values.len().saturating_sub(width as usize)..];
    let max = tail.iter().copied().fold(0.0f64, f64::max);
    tail.iter()
        .map(|v| {
            if max > 0.0 {
                (v.max(0.0) / max * 1000.0).round() as u64
            } else {
                0
            }
        })
        .collect()
}

fn draw_throughput(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    // The last tick is the second still in progress: leave it out of the rates.
    let complete = &s.timeline[..s.timeline.len().saturating_sub(1)];
    let last = complete.last();
    let peak = complete.iter().map(|t| t.output_tokens).max().unwrap_or(0);
    let title = format!(
        " Output tokens/s: now {} · peak {} · completions/s now {} ",
        last.map(|t| t.output_tokens).unwrap_or(0),
        peak,
        last.map(|t| t.completed).unwrap_or(0),
    );
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if complete.is_empty() {
        frame.render_widget(
            Paragraph::new("no full second yet").style(Style::new().fg(Color::DarkGray)),
            inner,
        );
        return;
    }
    let data = sparkline_data(complete.iter().map(|t| t.output_tokens as f64), inner.width);
    frame.render_widget(
        Sparkline::default()
            .data(data)
            .max(1000)
            .style(Style::new().fg(Color::Cyan)),
        inner,
    );
}

fn draw_gauges(frame: &mut Frame, area: Rect, gauges: &[Gauge]) {
    let block = Block::bordered().title(" Telemetry ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if gauges.is_empty() {
        frame.render_widget(
            Paragraph::new("no telemetry (GPU or server /metrics) in this run")
                .style(Style::new().fg(Color::DarkGray)),
            inner,
        );
        return;
    }
    let rows = Layout::vertical(vec![
        Constraint::Length(1);
        gauges.len().min(inner.height as usize)
    ])
    .split(inner);
    for (gauge, row) in gauges.iter().zip(rows.iter()) {
        let [label, history] =
            Layout::horizontal([Constraint::Length(34), Constraint::Min(1)]).areas(*row);
        frame.render_widget(
            Paragraph::new(format!(
                "{:<20}{:>9} {}",
                gauge.name,
                ms_text(gauge.value),
                gauge.unit
            )),
            label,
        );
        let data = sparkline_data(gauge.history.iter().copied(), history.width);
        frame.render_widget(
            Sparkline::default()
                .data(data)
                .max(1000)
                .style(Style::new().fg(Color::Magenta)),
            history,
        );
    }
}

fn draw_errors(frame: &mut Frame, area: Rect, s: &LiveSnapshot) {
    let block = Block::bordered().title(format!(" Recent errors ({} failed) ", s.failed));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if s.recent_errors.is_empty() {
        frame.render_widget(
            Paragraph::new("none").style(Style::new().fg(Color::DarkGray)),
            inner,
        );
        return;
    }
    let skip = s.recent_errors.len().saturating_sub(inner.height as usize);
    let lines: Vec<Line> = s.recent_errors[skip..]
        .iter()
        .map(|e| Line::styled(e.replace(['\n', '\r'], " "), Style::new().fg(Color::Red)))
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::live::Tick;
    use ratatui::backend::TestBackend;

    fn screen(snapshot: &LiveSnapshot, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal
            .draw(|frame| draw_dashboard(frame, snapshot, "tracebench · tiny @ 127.0.0.1", &[]))
            .unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    fn busy_snapshot() -> LiveSnapshot {
        let percentiles = |base: f64| LivePercentiles {
            count: 120,
            p50: base,
            p90: base * 2.0,
            p99: base * 3.0,
            max: base * 4.0,
        };
        LiveSnapshot {
            done: 120,
            failed: 3,
            in_flight: 8,
            total: Some(480),
            elapsed_s: 30.0,
            ttft: percentiles(41.5),
            itl: percentiles(9.25),
            tpot: percentiles(10.5),
            e2e: percentiles(612.0),
            output_tokens: 7680,
            timeline: (0..31)
                .map(|second| Tick {
                    second,
                    completed: 4,
                    output_tokens: 200 + second * 3,
                    in_flight: 8,
                })
                .collect(),
            recent_errors: vec!["req-17 http_status: HTTP 503 overloaded".into()],
            phases: Some(PhaseMeans {
                spans: 97,
                queue_ms: 30.0,
                prefill_ms: 10.0,
                decode_ms: 60.0,
            }),
            gauges: vec![
                Gauge {
                    name: "GPU0 memory".into(),
                    unit: "MiB".into(),
                    value: 61234.0,
                    history: vec![60000.0, 60500.0, 61234.0],
                },
                Gauge {
                    name: "server waiting".into(),
                    unit: "reqs".into(),
                    value: 4.0,
                    history: vec![0.0, 2.0, 4.0],
                },
            ],
        }
    }

    #[test]
    fn a_busy_run_shows_progress_percentiles_phases_gauges_and_errors() {
        let text = screen(&busy_snapshot(), 120, 36);
        for expected in [
            "tracebench · tiny @ 127.0.0.1",
            "120/480 (25%)",
            "in flight 8",
            "failed 3",
            "4.0 req/s",
            "256 tok/s",
            "ETA 1m30s",
            "TTFT",
            "41.5",
            "166",
            "9.25",
            "E2E",
            "2448",
            "mean of 97 spans",
            "queue",
            "30.0 ms   30%",
            "decode",
            "60.0 ms   60%",
            "now 287",
            "peak 287",
            "GPU0 memory",
            "61234 MiB",
            "server waiting",
            "req-17 http_status: HTTP 503 overloaded",
            "Ctrl-C",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn an_empty_start_says_what_it_waits_for() {
        let text = screen(&LiveSnapshot::default(), 100, 30);
        for expected in [
            "0 done",
            "ETA –",
            "waiting for server spans",
            "no full second yet",
            "no telemetry",
            "none",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        for (w, h) in [(1, 1), (10, 4), (30, 8), (200, 60)] {
            screen(&busy_snapshot(), w, h);
        }
    }

    #[test]
    fn quit_keys() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(is_quit_key(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(is_quit_key(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(is_quit_key(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!is_quit_key(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!is_quit_key(&key(KeyCode::Enter, KeyModifiers::NONE)));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_text(42.4), "42s");
        assert_eq!(duration_text(185.0), "3m05s");
        assert_eq!(duration_text(3725.0), "1h02m");
    }

    #[test]
    fn sparklines_keep_the_latest_values() {
        let data = sparkline_data((1..=10).map(f64::from), 4);
        assert_eq!(data, vec![700, 800, 900, 1000]);
        assert_eq!(sparkline_data([0.0, 0.0].into_iter(), 5), vec![0, 0]);
    }
}
