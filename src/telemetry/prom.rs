//! Prometheus text exposition parsing for engine `/metrics` and DCGM exporter scrapes.
//!
//! The parse itself is `openmetrics-parser`'s Prometheus text parser; a line-level tidy pass runs
//! first so that real-world quirks it rejects do not cost the whole scrape (see [`tidy`]).

use openmetrics_parser::{prometheus::parse_prometheus, MetricNumber, PrometheusValue};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// A metric family's declared type (`untyped` when none was declared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// The value of one series.
#[derive(Debug, Clone, PartialEq)]
pub enum SeriesValue {
    /// A counter, gauge or untyped sample.
    Scalar(f64),
    /// Cumulative buckets `(upper bound, count)` sorted by bound, ending with `+Inf`.
    Histogram {
        buckets: Vec<(f64, f64)>,
        sum: Option<f64>,
        count: Option<f64>,
    },
    /// Quantiles `(quantile, value)`.
    Summary {
        quantiles: Vec<(f64, f64)>,
        sum: Option<f64>,
        count: Option<f64>,
    },
}

/// One series of a family: its labels (sorted by name, empty values left out) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Vec<(String, String)>,
    pub value: SeriesValue,
}

impl Series {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(label, _)| label == name)
            .map(|(_, value)| value.as_str())
    }

    /// The scalar value, or `None` for histograms and summaries.
    pub fn scalar(&self) -> Option<f64> {
        match self.value {
            SeriesValue::Scalar(value) => Some(value),
            _ => None,
        }
    }
}

/// One metric family.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: MetricKind,
    pub series: Vec<Series>,
}

/// A line or family that could not be used, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// 1-based line number in the exposition.
    pub line: usize,
    pub reason: String,
}

/// A parsed exposition: every family that parsed, and what had to be skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
    pub skipped: Vec<Skipped>,
}

impl Exposition {
    /// The family called `name`.
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.get(name)
    }

    /// Sum of the scalar values of every series of `name` (`None` when absent).
    pub fn scalar_sum(&self, name: &str) -> Option<f64> {
        let family = self.family(name)?;
        let values: Vec<f64> = family.series.iter().filter_map(Series::scalar).collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Every series flattened to `name{labels}` → value, the way Prometheus names samples
    /// (`_bucket{le=..}`, `_sum`, `_count` for histograms; `{quantile=..}` for summaries).
    pub fn flatten(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for family in self.families.values() {
            for series in &family.series {
                let key = |suffix: &str, extra: Option<(&str, String)>| {
                    series_key(&family.name, suffix, &series.labels, extra)
                };
                match &series.value {
                    SeriesValue::Scalar(value) => {
                        out.insert(key("", None), *value);
                    }
                    SeriesValue::Histogram {
                        buckets,
                        sum,
                        count,
                    } => {
                        for (bound, cumulative) in buckets {
                            out.insert(
                                key("_bucket", Some(("le", format_bound(*bound)))),
                                *cumulative,
                            );
                        }
                        insert_some(&mut out, key("_sum", None), *sum);
                        insert_some(&mut out, key("_count", None), *count);
                    }
                    SeriesValue::Summary {
                        quantiles,
                        sum,
                        count,
                    } => {
                        for (quantile, value) in quantiles {
                            out.insert(
                                key("", Some(("quantile", format_bound(*quantile)))),
                                *value,
                            );
                        }
                        insert_some(&mut out, key("_sum", None), *sum);
                        insert_some(&mut out, key("_count", None), *count);
                    }
                }
            }
        }
        out
    }
}

fn insert_some(out: &mut BTreeMap<String, f64>, key: String, value: Option<f64>) {
    if let Some(value) = value {
        out.insert(key, value);
    }
}

fn format_bound(bound: f64) -> String {
    if bound == f64::INFINITY {
        "+Inf".to_string()
    } else {
        bound.to_string()
    }
}

/// `name{a="1",b="x"}` with values escaped as in the text format.
fn series_key(
    name: &str,
    suffix: &str,
    labels: &[(String, String)],
    extra: Option<(&str, String)>,
) -> String {
    let mut key = format!("{name}{suffix}");
    let all = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra.as_ref().map(|(k, v)| (*k, v.as_str())));
    let mut first = true;
    for (label, value) in all {
        key.push(if first { '{' } else { ',' });
        first = false;
        let escaped = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(key, "{label}=\"{escaped}\"");
    }
    if !first {
        key.push('}');
    }
    key
}

/// Parses a Prometheus text exposition. Never fails: what cannot be used is listed in
/// [`Exposition::skipped`] (an HTML page yields no families and one skipped entry per line).
pub fn parse(text: &str) -> Exposition {
    let tidied = tidy(text);
    let mut exposition = Exposition {
        families: BTreeMap::new(),
        skipped: tidied.skipped,
    };
    // One call for the whole tidied text (the usual case); only when the crate rejects it is
    // each family parsed on its own, so that one bad family does not cost the others.
    let whole: String = tidied
        .families
        .iter()
        .map(|chunk| chunk.text.as_str())
        .collect();
    if let Ok(families) = run_parser(&whole) {
        if let Ok(converted) = families
            .into_iter()
            .map(convert_family)
            .collect::<Result<Vec<_>, _>>()
        {
            exposition.families = converted.into_iter().map(|f| (f.name.clone(), f)).collect();
            return exposition;
        }
    }
    for chunk in tidied.families {
        let parsed = run_parser(&chunk.text).and_then(|families| {
            let family = families
                .into_iter()
                .next()
                .ok_or_else(|| "no samples".to_string())?;
            convert_family(family)
        });
        match parsed {
            Ok(family) => {
                exposition.families.insert(family.name.clone(), family);
            }
            Err(reason) => exposition.skipped.push(Skipped {
                line: chunk.first_line,
                reason: format!("family {}: {reason}", chunk.name),
            }),
        }
    }
    exposition.skipped.sort_by_key(|skipped| skipped.line);
    exposition
}

type CrateFamily =
    openmetrics_parser::MetricFamily<openmetrics_parser::PrometheusType, PrometheusValue>;

/// Runs the crate. It is guarded against panics (it has internal `unwrap`s); a panic becomes
/// an error like any other.
fn run_parser(text: &str) -> Result<Vec<CrateFamily>, String> {
    let parsed = std::panic::catch_unwind(|| parse_prometheus(text))
        .map_err(|_| "the parser panicked".to_string())?
        .map_err(|error| {
            error
                .to_string()
                .lines()
                .next()
                .unwrap_or("parse error")
                .trim()
                .to_string()
        })?;
    Ok(parsed.families.into_values().collect())
}

/// The crate's family in this module's terms.
fn convert_family(family: CrateFamily) -> Result<Family, String> {
    let name = family.family_name.clone();
    let kind = match family.family_type {
        openmetrics_parser::PrometheusType::Counter => MetricKind::Counter,
        openmetrics_parser::PrometheusType::Gauge => MetricKind::Gauge,
        openmetrics_parser::PrometheusType::Histogram => MetricKind::Histogram,
        openmetrics_parser::PrometheusType::Summary => MetricKind::Summary,
        openmetrics_parser::PrometheusType::Unknown => MetricKind::Untyped,
    };
    let mut series = Vec::new();
    for sample in family.iter_samples() {
        let mut labels: Vec<(String, String)> = sample
            .get_labelset()
            .map_err(|error| error.to_string())?
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(label, value)| (label.clone(), value.clone()))
            .collect();
        labels.sort();
        let value = match &sample.value {
            PrometheusValue::Unknown(number) | PrometheusValue::Gauge(number) => {
                SeriesValue::Scalar(number.as_f64())
            }
            PrometheusValue::Counter(counter) => SeriesValue::Scalar(counter.value.as_f64()),
            PrometheusValue::Histogram(histogram) => {
                let mut buckets: Vec<(f64, f64)> = histogram
                    .buckets
                    .iter()
                    .map(|bucket| (bucket.upper_bound, bucket.count.as_f64()))
                    .collect();
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                SeriesValue::Histogram {
                    buckets,
                    sum: histogram.sum.as_ref().map(MetricNumber::as_f64),
                    count: histogram.count.map(|count| count as f64),
                }
            }
            PrometheusValue::Summary(summary) => SeriesValue::Summary {
                quantiles: summary
                    .quantiles
                    .iter()
                    .map(|quantile| (quantile.quantile, quantile.value.as_f64()))
                    .collect(),
                sum: summary.sum.as_ref().map(MetricNumber::as_f64),
                count: summary.count.map(|count| count as f64),
            },
        };
        series.push(Series { labels, value });
    }
    Ok(Family { name, kind, series })
}

/// The text of one family, ready for the crate.
struct FamilyChunk {
    name: String,
    first_line: usize,
    text: String,
}

struct Tidied {
    families: Vec<FamilyChunk>,
    skipped: Vec<Skipped>,
}

/// A sample line split into its parts; label values stay escaped as written.
struct SampleLine<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    rest: &'a str,
}

#[derive(Default)]
struct FamilyBuilder {
    first_line: usize,
    declared_type: Option<String>,
    samples: Vec<OwnedSample>,
}

/// Groups an exposition into one text per family, fixing what real exporters get wrong and
/// the crate rejects, and skipping (with a reason) only the lines that cannot be samples:
///
/// - a sample whose value is not a number (dcgm-exporter writes
///   `ERROR - FAILED TO CONVERT TO STRING` for blob fields) or a line that is not a sample at all
///   (`...` in documentation excerpts) is skipped;
/// - samples of one family are gathered even when `# TYPE` stands apart from them (the
///   dcgm-exporter README example) or when families have no `# TYPE` at all (the crate would
///   fold consecutive untyped families into one); such families, and unknown types, get
///   `# TYPE name untyped`; `# HELP` and other comments are not needed and left out;
/// - series of one family with different label names (MIG series carry `GPU_I_ID`, whole GPUs
///   do not) are given the missing labels with empty values, which the text format defines as
///   equal to an absent label; empty labels are dropped again after parsing.
fn tidy(text: &str) -> Tidied {
    let mut skipped = Vec::new();
    // First pass: descriptors, so that `x_bucket` finds its histogram `x` wherever `# TYPE x` is.
    let mut declared: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        if let Some((name, kind)) = descriptor(line, "TYPE") {
            declared
                .entry(name.to_string())
                .or_insert_with(|| kind.trim().to_string());
        }
    }
    let mut staged: Vec<(String, usize, Staged)> = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw_line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('#') {
            if let Some((name, kind)) = descriptor(line, "TYPE") {
                staged.push((
                    name.to_string(),
                    number,
                    Staged::Type(kind.trim().to_string()),
                ));
            }
            continue;
        }
        match split_sample(line) {
            Ok(sample) => {
                let family = family_of(sample.name, &declared);
                let labels = sample
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                staged.push((
                    family,
                    number,
                    Staged::Sample(OwnedSample {
                        name: sample.name.to_string(),
                        labels,
                        rest: sample.rest.to_string(),
                    }),
                ));
            }
            Err(reason) => skipped.push(Skipped {
                line: number,
                reason,
            }),
        }
    }
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, FamilyBuilder> = HashMap::new();
    for (family, number, item) in staged {
        let builder = families.entry(family.clone()).or_insert_with(|| {
            order.push(family);
            FamilyBuilder {
                first_line: number,
                ..FamilyBuilder::default()
            }
        });
        match item {
            Staged::Type(kind) => {
                builder.declared_type.get_or_insert(kind);
            }
            Staged::Sample(sample) => builder.samples.push(sample),
        }
    }
    let chunks = order
        .into_iter()
        .filter_map(|name| {
            let builder = families.remove(&name)?;
            (!builder.samples.is_empty()).then(|| render_family(&name, builder))
        })
        .collect();
    Tidied {
        families: chunks,
        skipped,
    }
}

/// A sample line held for re-emission: name, labels (values still escaped), value part.
struct OwnedSample {
    name: String,
    labels: Vec<(String, String)>,
    rest: String,
}

enum Staged {
    Type(String),
    Sample(OwnedSample),
}

fn render_family(name: &str, builder: FamilyBuilder) -> FamilyChunk {
    let kind = builder
        .declared_type
        .as_deref()
        .filter(|kind| matches!(*kind, "counter" | "gauge" | "histogram" | "summary"))
        .unwrap_or("untyped");
    let structural: &[&str] = match kind {
        "histogram" => &["le"],
        "summary" => &["quantile"],
        _ => &[],
    };
    let mut all_labels: Vec<String> = Vec::new();
    for OwnedSample { labels, .. } in &builder.samples {
        for (label, _) in labels {
            if !structural.contains(&label.as_str()) && !all_labels.contains(label) {
                all_labels.push(label.clone());
            }
        }
    }
    let mut text = String::new();
    let _ = writeln!(text, "# TYPE {name} {kind}");
    for OwnedSample {
        name: sample_name,
        labels,
        rest,
    } in &builder.samples
    {
        text.push_str(sample_name);
        let missing = all_labels
            .iter()
            .filter(|label| !labels.iter().any(|(k, _)| k == *label));
        let pairs = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(missing.map(|label| (label.as_str(), "")));
        let mut separator = '{';
        for (label, value) in pairs {
            text.push(separator);
            separator = ',';
            for part in [label, "=\"", value, "\""] {
                text.push_str(part);
            }
        }
        if separator == ',' {
            text.push('}');
        }
        text.push(' ');
        text.push_str(rest);
        text.push('\n');
    }
    FamilyChunk {
        name: name.to_string(),
        first_line: builder.first_line,
        text,
    }
}

/// `# HELP name text` / `# TYPE name kind` → `(name, rest)`.
fn descriptor<'a>(line: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix(keyword)?;
    let rest = rest.strip_prefix([' ', '\t'])?.trim_start();
    let end = rest.find([' ', '\t']).unwrap_or(rest.len());
    let name = &rest[..end];
    (!name.is_empty()).then(|| (name, &rest[end..]))
}

/// The family a sample belongs to: its own name, or the declared histogram/summary it is a
/// `_bucket`/`_sum`/`_count` line of.
fn family_of(sample_name: &str, declared: &HashMap<String, String>) -> String {
    if declared.contains_key(sample_name) {
        return sample_name.to_string();
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample_name.strip_suffix(suffix) {
            match declared.get(base).map(String::as_str) {
                Some("histogram") => return base.to_string(),
                Some("summary") if suffix != "_bucket" => return base.to_string(),
                _ => {}
            }
        }
    }
    sample_name.to_string()
}

/// Splits `name{labels} value [timestamp]`; an error says why the line is not a sample.
fn split_sample(line: &str) -> Result<SampleLine<'_>, String> {
    let shown = || line.chars().take(60).collect::<String>();
    let name_end = line
        .char_indices()
        .find(|(i, c)| {
            !(c.is_ascii_alphabetic() || *c == '_' || *c == ':' || (*i > 0 && c.is_ascii_digit()))
        })
        .map(|(i, _)| i)
        .unwrap_or(line.len());
    if name_end == 0 {
        return Err(format!("not a sample line: `{}`", shown()));
    }
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, remainder) =
            split_labels(after_brace).ok_or_else(|| format!("unreadable labels: `{}`", shown()))?;
        labels = parsed;
        rest = remainder;
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(format!("no value after the series name: `{}`", shown()));
    }
    let rest = rest.trim();
    let value = rest.split_whitespace().next().unwrap_or("");
    if value.parse::<f64>().is_err() {
        return Err(format!("value is not a number: `{}`", shown()));
    }
    Ok(SampleLine { name, labels, rest })
}

/// Reads `a="x", b="y"}` (the part after `{`), returning the pairs and the text after `}`.
fn split_labels(text: &str) -> Option<(Vec<(&str, &str)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = text.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let name_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
        let label = &rest[..name_end];
        if label.is_empty() {
            return None;
        }
        rest = rest[name_end..]
            .trim_start()
            .strip_prefix('=')?
            .trim_start()
            .strip_prefix('"')?;
        let mut escaped = false;
        let value_end = rest.char_indices().find_map(|(i, c)| {
            let end = !escaped && c == '"';
            escaped = !escaped && c == '\\';
            end.then_some(i)
        })?;
        labels.push((label, &rest[..value_end]));
        rest = rest[value_end + 1..].trim_start();
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma.trim_start();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_lines_are_assembled_whatever_their_order() {
        let text = "# TYPE lat histogram\nlat_sum{m=\"a\"} 3.5\nlat_bucket{le=\"1\",m=\"a\"} 1\nlat_bucket{le=\"+Inf\",m=\"a\"} 4\nlat_count{m=\"a\"} 4\n";
        let exposition = parse(text);
        assert!(exposition.skipped.is_empty(), "{:?}", exposition.skipped);
        let family = exposition.family("lat").expect("lat parsed");
        assert_eq!(family.kind, MetricKind::Histogram);
        assert_eq!(
            family.series[0].value,
            SeriesValue::Histogram {
                buckets: vec![(1.0, 1.0), (f64::INFINITY, 4.0)],
                sum: Some(3.5),
                count: Some(4.0)
            }
        );
        let flat = exposition.flatten();
        assert_eq!(flat.get("lat_bucket{m=\"a\",le=\"+Inf\"}"), Some(&4.0));
        assert_eq!(flat.get("lat_sum{m=\"a\"}"), Some(&3.5));
    }

    #[test]
    fn untyped_neighbours_stay_separate_families() {
        let exposition = parse("a{x=\"1\"} 1\nb{x=\"1\"} 2\na{x=\"2\"} 3\n");
        assert!(exposition.skipped.is_empty(), "{:?}", exposition.skipped);
        assert_eq!(exposition.scalar_sum("a"), Some(4.0));
        assert_eq!(exposition.scalar_sum("b"), Some(2.0));
        assert_eq!(
            exposition.family("a").map(|f| f.kind),
            Some(MetricKind::Untyped)
        );
    }

    #[test]
    fn non_numeric_values_and_junk_lines_are_skipped_with_their_line() {
        let text = "# TYPE g gauge\ng{a=\"1\"} 5\ng{a=\"2\"} ERROR - FAILED\n...\n<html>\n";
        let exposition = parse(text);
        assert_eq!(exposition.scalar_sum("g"), Some(5.0));
        let lines: Vec<usize> = exposition.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![3, 4, 5]);
        assert!(exposition.skipped[0].reason.contains("not a number"));
    }

    #[test]
    fn series_missing_a_label_get_it_empty_and_lose_it_again() {
        let text = "# TYPE m gauge\nm{gpu=\"0\",GPU_I_ID=\"3\"} 1\nm{gpu=\"1\"} 2\n";
        let exposition = parse(text);
        assert!(exposition.skipped.is_empty(), "{:?}", exposition.skipped);
        let family = exposition.family("m").expect("m parsed");
        assert_eq!(family.series.len(), 2);
        let whole = family
            .series
            .iter()
            .find(|s| s.label("gpu") == Some("1"))
            .expect("gpu 1");
        assert_eq!(whole.labels, vec![("gpu".to_string(), "1".to_string())]);
        let mig = family
            .series
            .iter()
            .find(|s| s.label("gpu") == Some("0"))
            .expect("gpu 0");
        assert_eq!(mig.label("GPU_I_ID"), Some("3"));
    }

    #[test]
    fn a_bad_family_costs_only_itself() {
        // Not cumulative: the crate rejects this histogram; the gauge after it survives.
        let text = "# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n# TYPE g gauge\ng 7\n";
        let exposition = parse(text);
        assert_eq!(exposition.scalar_sum("g"), Some(7.0));
        assert!(exposition.family("h").is_none());
        assert_eq!(exposition.skipped.len(), 1);
        assert!(
            exposition.skipped[0].reason.starts_with("family h:"),
            "{:?}",
            exposition.skipped
        );
    }

    #[test]
    fn an_unknown_type_is_read_as_untyped() {
        let exposition = parse("# HELP\tx odd help\n# TYPE x gaugee\nx 3\n");
        assert_eq!(
            exposition.family("x").map(|f| f.kind),
            Some(MetricKind::Untyped)
        );
        assert_eq!(exposition.scalar_sum("x"), Some(3.0));
    }

    #[test]
    fn quoted_label_values_may_hold_braces_commas_and_escapes() {
        let exposition = parse("m{a=\"x}, y\",b=\"q\\\"z\"} 1\n");
        assert!(exposition.skipped.is_empty(), "{:?}", exposition.skipped);
        let series = &exposition.family("m").expect("m").series[0];
        assert_eq!(series.label("a"), Some("x}, y"));
        assert_eq!(series.label("b"), Some("q\"z"));
    }
}
