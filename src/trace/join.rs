//! The join of one record: its server view, decomposition and trace link from
//! the span store, or the reason it has none.

use super::store::SpanStore;
use crate::client::traceparent::TraceId;
use crate::record::{ErrorKind, RequestRecord};
use std::collections::HashMap;

/// Reason written for records sent without a trace header.
pub const TRACING_OFF: &str = "tracing_off";

/// How the join words the records it cannot fill.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    /// `--jaeger-ui`: base of the per-request trace link.
    pub jaeger_ui: Option<String>,
    /// Reason for a successful traced request without a span, e.g. `no span arrived within 15s`.
    pub no_span_reason: String,
    /// Per trace id: why the trace backend could not give it.
    pub backend_errors: HashMap<TraceId, String>,
}

/// What a join did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinCounts {
    pub joined: u64,
    pub missing: u64,
    /// Request spans beyond the first for one request (e.g. one per choice with `n=2`).
    pub duplicates: u64,
    /// Spans whose trace matched no record (start-up spans, other clients).
    pub unrelated_spans: u64,
}

impl JoinCounts {
    /// Adds another join's counts.
    pub fn add(&mut self, other: JoinCounts) {
        self.joined += other.joined;
        self.missing += other.missing;
        self.duplicates += other.duplicates;
        self.unrelated_spans += other.unrelated_spans;
    }
}

/// The `--jaeger-ui` link of a trace.
fn trace_link(jaeger_ui: Option<&str>, trace_id: Option<TraceId>) -> Option<String> {
    jaeger_ui
        .zip(trace_id)
        .map(|(ui, id)| format!("{}/trace/{id}", ui.trim_end_matches('/')))
}

/// Fills `server`, `decomposition`, `trace_url` and `server_missing_reason` of
/// one record from the store, and marks the traces it used (so they are not
/// counted unrelated). Several request spans for one request count as
/// duplicates; the earliest is used. The counts are this record's.
pub fn join_record(
    record: &mut RequestRecord,
    store: &mut SpanStore,
    options: &JoinOptions,
) -> JoinCounts {
    let mut counts = JoinCounts::default();
    record.trace_url = trace_link(options.jaeger_ui.as_deref(), record.trace_id);
    let (views, traces) = store.views_for(record);
    store.mark_used(record.trace_id.into_iter().chain(traces));
    let mut views = views.into_iter();
    match views.next() {
        Some(first) => {
            counts.joined = 1;
            counts.duplicates = views.len() as u64;
            record.server = Some(first);
            record.server_missing_reason = None;
            record.decomposition = crate::analysis::decompose(record);
        }
        None => {
            counts.missing = 1;
            record.server = None;
            record.decomposition = None;
            record.server_missing_reason = Some(missing_reason(record, options));
        }
    }
    counts
}

/// Marks a record as sent without tracing: no view, `tracing_off`, and the
/// trace link when it did send a trace id.
pub fn mark_tracing_off(record: &mut RequestRecord, jaeger_ui: Option<&str>) {
    record.server = None;
    record.decomposition = None;
    record.server_missing_reason = Some(TRACING_OFF.to_string());
    record.trace_url = trace_link(jaeger_ui, record.trace_id);
}

/// Why a record has no server view.
pub fn missing_reason(record: &RequestRecord, options: &JoinOptions) -> String {
    let Some(trace_id) = record.trace_id else {
        return TRACING_OFF.to_string();
    };
    if let Some(error) = &record.error {
        return match error.kind {
            ErrorKind::Connect => "request failed before the server answered (connect)".to_string(),
            kind => format!("request failed ({}) and no span arrived", kind.as_str()),
        };
    }
    if let Some(error) = options.backend_errors.get(&trace_id) {
        return error.clone();
    }
    options.no_span_reason.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::test_support::{fixture_spans, record};

    fn store_of(file: &str) -> SpanStore {
        let mut store = SpanStore::new();
        store.insert_all(fixture_spans(&format!("vllm/{file}")));
        store
    }

    fn join(
        records: &mut [RequestRecord],
        store: &mut SpanStore,
        options: &JoinOptions,
    ) -> JoinCounts {
        let mut counts = JoinCounts::default();
        for record in records {
            counts.add(join_record(record, store, options));
        }
        counts.unrelated_spans = store.unrelated_spans();
        counts
    }

    #[test]
    fn joins_by_trace_id_and_counts_duplicates() {
        let mut store = store_of("traced-chat-n2.spans.pb");
        let mut records = vec![record("a", Some("2222222222222222222222222222aaaa"))];
        let options = JoinOptions {
            jaeger_ui: Some("http://localhost:16686/".into()),
            ..JoinOptions::default()
        };
        let counts = join(&mut records, &mut store, &options);
        assert_eq!(
            counts,
            JoinCounts {
                joined: 1,
                missing: 0,
                duplicates: 1,
                unrelated_spans: 0
            }
        );
        let r = &records[0];
        assert!(r.server.is_some());
        assert_eq!(r.server_missing_reason, None);
        assert_eq!(
            r.trace_url.as_deref(),
            Some("http://localhost:16686/trace/2222222222222222222222222222aaaa")
        );
        let d = r.decomposition.as_ref().unwrap();
        let s = r.server.as_ref().unwrap();
        assert!((d.network_ms.unwrap() - (40.0 - s.ttft_ms.unwrap())).abs() < 1e-9);
    }

    #[test]
    fn falls_back_to_the_request_id_and_reports_unrelated_spans() {
        // The untraced capture's span is a root of a trace the client never saw.
        let spans = fixture_spans("vllm/untraced-chat.spans.pb");
        let gen_ai_id = spans
            .iter()
            .find_map(|s| s.attr_str("gen_ai.request.id"))
            .unwrap()
            .to_string();
        let request_id = gen_ai_id.strip_prefix("chatcmpl-").unwrap();
        let mut records = vec![
            record(request_id, Some("0102030405060708090a0b0c0d0e0f10")),
            record("other", Some("1112131415161718191a1b1c1d1e1f20")),
        ];
        let options = JoinOptions {
            no_span_reason: "no span arrived within 15s".into(),
            ..JoinOptions::default()
        };
        let mut store = store_of("untraced-chat.spans.pb");
        let counts = join(&mut records, &mut store, &options);
        assert_eq!(counts.joined, 1);
        assert_eq!(counts.missing, 1);
        assert_eq!(counts.unrelated_spans, 0);
        assert_eq!(
            records[0].server.as_ref().unwrap().request_id.as_deref(),
            Some(gen_ai_id.as_str())
        );
        assert_eq!(
            records[1].server_missing_reason.as_deref(),
            Some("no span arrived within 15s")
        );

        let mut lonely = vec![record("nobody", Some("1112131415161718191a1b1c1d1e1f20"))];
        let mut store = store_of("untraced-chat.spans.pb");
        assert_eq!(join(&mut lonely, &mut store, &options).unrelated_spans, 1);
    }

    #[test]
    fn reasons_for_missing_spans() {
        let mut store = SpanStore::new();
        let off = record("a", None);
        let mut failed = record("b", Some("0102030405060708090a0b0c0d0e0f10"));
        failed.error = Some(crate::record::RequestError {
            kind: ErrorKind::Connect,
            message: "refused".into(),
            status: None,
            body_excerpt: None,
        });
        let unreachable = record("c", Some("1112131415161718191a1b1c1d1e1f20"));
        let options = JoinOptions {
            backend_errors: HashMap::from([(
                "1112131415161718191a1b1c1d1e1f20".parse().unwrap(),
                "trace backend unreachable: connection refused".to_string(),
            )]),
            ..JoinOptions::default()
        };
        let mut records = vec![off, failed, unreachable];
        join(&mut records, &mut store, &options);
        assert_eq!(
            records[0].server_missing_reason.as_deref(),
            Some(TRACING_OFF)
        );
        assert_eq!(records[0].trace_url, None);
        assert_eq!(
            records[1].server_missing_reason.as_deref(),
            Some("request failed before the server answered (connect)")
        );
        assert_eq!(
            records[2].server_missing_reason.as_deref(),
            Some("trace backend unreachable: connection refused")
        );
        assert!(records
            .iter()
            .all(|r| r.server.is_none() && r.decomposition.is_none()));
    }
}
