//! A study's section of the experiment report: the question, the verdict,
//! its tables and its charts, drawn from the `study` part of
//! `experiment.json` alone.

use super::chart::{line_chart, LineChart, Series, SERIES_COLORS};
use super::esc;
use crate::experiment::state::StudySection;
use std::fmt::Write as _;

/// Writes the study's section.
pub(super) fn section(page: &mut String, study: &StudySection) {
    let _ = write!(
        page,
        "<section id=\"study\"><h2>Study: {}</h2><p><em>{}</em></p><p class=\"verdict\"><strong>{}</strong></p>",
        esc(&study.kind),
        esc(&study.question),
        esc(&study.verdict)
    );
    for table in &study.tables {
        let _ = write!(page, "<h3>{}</h3><table><thead><tr>", esc(&table.title));
        for column in &table.columns {
            let _ = write!(page, "<th>{}</th>", esc(column));
        }
        page.push_str("</tr></thead><tbody>");
        for row in &table.rows {
            page.push_str("<tr>");
            for cell in row {
                let _ = write!(page, "<td>{}</td>", esc(cell));
            }
            page.push_str("</tr>");
        }
        page.push_str("</tbody></table>");
    }
    for chart in study
        .charts
        .iter()
        .filter(|c| c.lines.iter().any(|l| !l.1.is_empty()))
    {
        let series: Vec<Series> = chart
            .lines
            .iter()
            .zip(SERIES_COLORS.iter().cycle())
            .map(|((name, points), color)| Series {
                name: name.clone(),
                color,
                points: points.clone(),
            })
            .collect();
        let _ = write!(page, "<h3>{}</h3>", esc(&chart.title));
        line_chart(
            page,
            &LineChart {
                id: &chart.id,
                x_label: &chart.x_label,
                y_label: &chart.y_label,
                y_fixed: None,
                series: &series,
            },
        );
    }
    for note in &study.notes {
        let _ = write!(page, "<p class=\"note\">{}</p>", esc(note));
    }
    page.push_str("</section>");
}
