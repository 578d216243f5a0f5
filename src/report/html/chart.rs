//! The SVG charts of the report, drawn as text: line charts with axes, ticks and
//! a legend, the linear scale they share with the request timeline, and
//! [`LinePoints`], which keeps a streamed line to a bounded number of points.

use super::{esc, num};
use std::fmt::Write as _;

/// At most this many points per line of a chart (plus its last point).
const MAX_LINE_POINTS: usize = 800;

/// (x, y) points of one line.
pub(super) type Points = Vec<(f64, f64)>;

/// Colours of the lines of one chart, in order.
pub(super) const SERIES_COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a chart.
pub(super) struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Points,
}

/// A chart of lines over a shared x axis.
pub(super) struct LineChart<'a> {
    /// Stable id, also the name the page's self-check reports.
    pub id: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// Fixed y range (e.g. 0..1 for a CDF); else 0..max.
    pub y_fixed: Option<(f64, f64)>,
    pub series: &'a [Series],
}

/// A linear map of `min..max` onto `0..1`.
pub(super) struct Scale {
    min: f64,
    max: f64,
}

impl Scale {
    pub fn new(min: f64, max: f64) -> Scale {
        if max > min {
            Scale { min, max }
        } else {
            Scale {
                min,
                max: min + 1.0,
            }
        }
    }

    pub fn at(&self, v: f64) -> f64 {
        ((v - self.min) / (self.max - self.min)).clamp(0.0, 1.0)
    }

    /// About `n` round tick values inside the range.
    fn ticks(&self, n: usize) -> Vec<f64> {
        let raw = (self.max - self.min) / n.max(1) as f64;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * magnitude)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * magnitude);
        let mut ticks = Vec::new();
        let mut t = (self.min / step).ceil() * step;
        while t <= self.max + step * 1e-9 && ticks.len() < 50 {
            ticks.push(t);
            t += step;
        }
        ticks
    }
}

/// The points of one line as they arrive, at most [`MAX_LINE_POINTS`] + 1 of them
/// however many arrive: every point while they fit, then every 2nd, 4th, ...
/// (the stride doubles whenever the kept points overflow); the last point is always kept.
pub(super) struct LinePoints {
    kept: Points,
    stride: usize,
    seen: usize,
    last: Option<(f64, f64)>,
}

impl Default for LinePoints {
    fn default() -> Self {
        LinePoints {
            kept: Vec::new(),
            stride: 1,
            seen: 0,
            last: None,
        }
    }
}

impl LinePoints {
    pub fn push(&mut self, point: (f64, f64)) {
        if self.seen.is_multiple_of(self.stride) {
            self.kept.push(point);
            if self.kept.len() > MAX_LINE_POINTS {
                self.stride *= 2;
                self.kept = self.kept.iter().copied().step_by(2).collect();
            }
        }
        self.seen += 1;
        self.last = Some(point);
    }

    /// The kept points, ordered by x.
    pub fn into_points(self) -> Points {
        let mut points = self.kept;
        if let Some(last) = self.last {
            if points.last() != Some(&last) {
                points.push(last);
            }
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    }
}

/// The colour key above a chart.
pub(super) fn legend_html<'a>(
    page: &mut String,
    entries: impl Iterator<Item = (&'a str, &'a str)>,
) {
    page.push_str("<div class=\"legend\">");
    for (name, color) in entries {
        let _ = write!(
            page,
            "<span><i style=\"background:{color}\"></i>{}</span>",
            esc(name)
        );
    }
    page.push_str("</div>");
}

/// Writes the x axis (grid lines and labels) of a plot area.
pub(super) fn x_axis(
    body: &mut String,
    x: &Scale,
    left: f64,
    top: f64,
    plot_w: f64,
    plot_h: f64,
    label: &str,
) {
    for t in x.ticks(8) {
        let px = left + x.at(t) * plot_w;
        let _ = write!(
            body,
            "<line class=\"grid\" x1=\"{px:.1}\" y1=\"{top:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\"/>\
             <text class=\"tick\" x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top + plot_h,
            top + plot_h + 14.0,
            num(t)
        );
    }
    let _ = write!(
        body,
        "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        left + plot_w / 2.0,
        top + plot_h + 30.0,
        esc(label)
    );
}

/// Writes a chart's legend (when it has several lines or a fixed range) and its SVG.
pub(super) fn line_chart(page: &mut String, chart: &LineChart) {
    let series: Vec<(&Series, &Points)> = chart
        .series
        .iter()
        .map(|s| (s, &s.points))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_min, mut x_max, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for (x, y) in all {
        x_min = x_min.min(*x);
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    if !x_min.is_finite() {
        (x_min, x_max) = (0.0, 1.0);
    }
    let x = Scale::new(x_min.min(0.0), x_max);
    let y = match chart.y_fixed {
        Some((lo, hi)) => Scale::new(lo, hi),
        None => Scale::new(0.0, if y_max > 0.0 { y_max * 1.05 } else { 1.0 }),
    };
    let (width, height, left, right, top, bottom) = (540.0, 250.0, 58.0, 14.0, 10.0, 40.0);
    let (plot_w, plot_h) = (width - left - right, height - top - bottom);
    let mut body = String::new();
    x_axis(&mut body, &x, left, top, plot_w, plot_h, chart.x_label);
    for t in y.ticks(5) {
        let py = top + (1.0 - y.at(t)) * plot_h;
        let label = if chart.y_fixed == Some((0.0, 1.0)) {
            format!("{:.0}%", t * 100.0)
        } else {
            num(t)
        };
        let _ = write!(
            body,
            "<line class=\"grid\" x1=\"{left:.1}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\"/>\
             <text class=\"tick\" x=\"{:.1}\" y=\"{py:.1}\" text-anchor=\"end\" dominant-baseline=\"middle\">{label}</text>",
            left + plot_w,
            left - 6.0
        );
    }
    let _ = write!(
        body,
        "<text class=\"axis\" transform=\"translate(12 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        top + plot_h / 2.0,
        esc(chart.y_label)
    );
    let mut marks = 0;
    for (s, points) in &series {
        let mut d = String::with_capacity(points.len() * 14);
        for (i, (px, py)) in points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { "L" },
                left + x.at(*px) * plot_w,
                top + (1.0 - y.at(*py)) * plot_h
            );
        }
        if points.len() == 1 {
            let _ = write!(d, "h2");
        }
        let _ = write!(
            body,
            "<path data-mark=\"1\" d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\"><title>{}</title></path>",
            s.color,
            esc(&s.name)
        );
        marks += 1;
    }
    if series.len() > 1 || chart.y_fixed.is_some() {
        legend_html(page, series.iter().map(|(s, _)| (s.name.as_str(), s.color)));
    }
    let _ = write!(
        page,
        "<svg data-chart=\"{}\" data-expect=\"{marks}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\">{body}</svg>",
        esc(chart.id),
        esc(chart.id)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        let ticks = Scale::new(0.0, 97.0).ticks(5);
        assert_eq!(ticks, vec![0.0, 20.0, 40.0, 60.0, 80.0]);
        let ticks = Scale::new(0.3, 1.7).ticks(4);
        assert!(ticks.iter().all(|t| (0.3..=1.7).contains(t)));
        assert!(ticks.len() >= 3);
    }

    #[test]
    fn a_long_line_is_thinned_evenly_and_keeps_its_last_point() {
        let mut line = LinePoints::default();
        for i in 0..5000 {
            line.push((i as f64, 1.0));
        }
        let points = line.into_points();
        assert!(points.len() <= MAX_LINE_POINTS + 1, "{}", points.len());
        assert!(points.len() > MAX_LINE_POINTS / 2, "{}", points.len());
        assert_eq!(points.last(), Some(&(4999.0, 1.0)));
        let gaps: Vec<f64> = points[..points.len() - 1]
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .collect();
        assert!(gaps.iter().all(|g| *g == gaps[0]), "even stride");
    }

    #[test]
    fn a_short_line_keeps_every_point() {
        let mut line = LinePoints::default();
        for i in (0..MAX_LINE_POINTS).rev() {
            line.push((i as f64, 2.0));
        }
        let points = line.into_points();
        assert_eq!(points.len(), MAX_LINE_POINTS);
        assert_eq!(points[0], (0.0, 2.0));
    }
}
