//! The compact form the span store keeps of each span: its ids and times,
//! which of the engines' span names it has, and only for the spans a request
//! view is made from (vLLM and SGLang request spans, spans with TGI's timing
//! fields) the name, service and attributes. The attributes are kept as JSON
//! text and parsed when a view is made: a vLLM request span then costs about a
//! quarter of the parsed [`Span`].

use super::span::Span;
use serde_json::{Map, Value};
use std::sync::Arc;

/// vLLM's per-request span name.
const VLLM_REQUEST_SPAN: &str = "llm_request";
/// The `module` attribute on SGLang's request root span.
const SGLANG_REQUEST_MODULE: &str = "sglang::request";
/// TGI's timing fields on its handler span (`chat_completions`, `generate`, ...).
const TGI_TIMING_FIELDS: [&str; 3] = ["total_time", "queue_time", "inference_time"];

/// The span names the engine mapping looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeName {
    /// vLLM's request span, `llm_request`.
    LlmRequest,
    /// SGLang's queue slice, `prefill_waiting`.
    PrefillWaiting,
    /// TGI's queue span, `queued`.
    Queued,
    /// TGI's forward step, `infer`.
    Infer,
    /// TGI's per-token `send_generation`, with the `generated_tokens` its
    /// `generation` field states (on the last one).
    SendGeneration { generated_tokens: Option<u64> },
    /// Any other name.
    Other,
}

/// One span of a stored trace.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanNode {
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub name: NodeName,
    /// Only for the spans a request view may be made from.
    pub detail: Option<Box<SpanDetail>>,
}

/// What a request view takes from its span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanDetail {
    pub name: Box<str>,
    pub service_name: Option<Arc<str>>,
    /// SGLang's request root: `module` is `sglang::request` and `rid` is set.
    pub sglang_request: bool,
    /// Carries TGI's timing fields (a handler candidate).
    pub tgi_timed: bool,
    /// The attributes as a JSON object.
    attributes: Box<str>,
}

impl SpanDetail {
    /// The attributes, parsed.
    pub fn attributes(&self) -> Map<String, Value> {
        // The text was written from a map, so it reads back; an empty map otherwise.
        serde_json::from_str(&self.attributes).unwrap_or_default()
    }
}

impl SpanNode {
    /// The compact form of a span; `service` gives the (shared) service name.
    pub fn of(span: &Span, service: impl FnOnce(&str) -> Arc<str>) -> Self {
        let name = match span.name.as_str() {
            VLLM_REQUEST_SPAN => NodeName::LlmRequest,
            "prefill_waiting" => NodeName::PrefillWaiting,
            "queued" => NodeName::Queued,
            "infer" => NodeName::Infer,
            "send_generation" => NodeName::SendGeneration {
                generated_tokens: span.attr_str("generation").and_then(generated_tokens_of),
            },
            _ => NodeName::Other,
        };
        let sglang_request = span.attr_str("module") == Some(SGLANG_REQUEST_MODULE)
            && span.attributes.contains_key("rid");
        let tgi_timed = TGI_TIMING_FIELDS
            .iter()
            .any(|k| span.attributes.contains_key(*k));
        let detail = (name == NodeName::LlmRequest || sglang_request || tgi_timed).then(|| {
            Box::new(SpanDetail {
                name: span.name.as_str().into(),
                service_name: span.service_name.as_deref().map(service),
                sglang_request,
                tgi_timed,
                // Serializing a JSON map to text cannot fail.
                attributes: serde_json::to_string(&span.attributes)
                    .unwrap_or_default()
                    .into(),
            })
        });
        Self {
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            start_unix_ns: span.start_unix_ns,
            end_unix_ns: span.end_unix_ns,
            name,
            detail,
        }
    }

    /// End minus start (0 when the end is before the start).
    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }
}

/// `generated_tokens: N` inside the Debug text of TGI's final `Generation`.
fn generated_tokens_of(generation: &str) -> Option<u64> {
    let rest = generation.split("generated_tokens: ").nth(1)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::test_support::{fixture_spans, nodes_of};

    #[test]
    fn request_spans_keep_their_attributes_and_others_only_their_place() {
        let spans = fixture_spans("vllm/traced-chat.spans.pb");
        let node = &nodes_of(&spans)[0];
        assert_eq!(node.name, NodeName::LlmRequest);
        let detail = node.detail.as_ref().unwrap();
        assert_eq!(detail.attributes(), spans[0].attributes);
        assert_eq!(detail.service_name.as_deref(), Some("vllm"));
        assert_eq!(&*detail.name, "llm_request");

        let sglang = fixture_spans("sglang/chat-stream.overlap.otlp.json");
        let nodes = nodes_of(&sglang);
        let detailed: Vec<&SpanDetail> = nodes.iter().filter_map(|n| n.detail.as_deref()).collect();
        assert_eq!(detailed.len(), 1, "only the request root");
        assert!(detailed[0].sglang_request);
        assert!(nodes.iter().any(|n| n.name == NodeName::PrefillWaiting));

        let tgi = nodes_of(&fixture_spans("tgi/chat-stream.request-trace.otlp.json"));
        let tokens: Vec<u64> = tgi
            .iter()
            .filter_map(|n| match n.name {
                NodeName::SendGeneration { generated_tokens } => generated_tokens,
                _ => None,
            })
            .collect();
        assert_eq!(tokens, vec![20]);
        assert!(tgi
            .iter()
            .any(|n| n.detail.as_ref().is_some_and(|d| d.tgi_timed)));
    }

    #[test]
    fn generated_tokens_are_read_from_the_debug_text() {
        assert_eq!(
            generated_tokens_of("Generation { generated_tokens: 17, finish: Length }"),
            Some(17)
        );
        assert_eq!(generated_tokens_of("Generation { text: \"x\" }"), None);
    }
}
