//! Engine detection and mapping: finds the request span(s) of vLLM, SGLang and
//! TGI among the spans of one trace (in the store's compact form) and maps each
//! engine's own names onto the common `ServerView` fields (milliseconds; a field
//! the engine lacks is None).

use super::node::{NodeName, SpanDetail, SpanNode};
use super::span::{attr_f64, attr_str, attr_u64};
use crate::client::traceparent::hex;
pub use crate::record::Engine;
use crate::record::ServerView;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A request span found in a trace, with the engine that made it.
struct RequestSpan<'a> {
    engine: Engine,
    node: &'a SpanNode,
    detail: &'a SpanDetail,
}

/// Every request view found in the spans of one trace, earliest start first.
/// Unrelated spans (start-up spans, batch traces, HTTP spans) are ignored.
pub fn request_views(trace: &[SpanNode]) -> Vec<ServerView> {
    let tree = Tree::new(trace);
    let mut views: Vec<ServerView> = request_spans(trace, &tree)
        .into_iter()
        .map(|request| {
            let attributes = request.detail.attributes();
            match request.engine {
                Engine::Vllm => vllm_view(&request, attributes),
                Engine::Sglang => sglang_view(&request, attributes, &tree),
                Engine::Tgi => tgi_view(&request, attributes, &tree),
            }
        })
        .collect();
    views.sort_by_key(|v| v.start_unix_ns);
    views
}

/// True when the trace holds a request span (no attribute is parsed).
pub fn has_request_span(trace: &[SpanNode]) -> bool {
    let direct = trace.iter().any(|n| {
        n.name == NodeName::LlmRequest || n.detail.as_ref().is_some_and(|d| d.sglang_request)
    });
    direct || !request_spans(trace, &Tree::new(trace)).is_empty()
}

/// The request spans of a trace: vLLM `llm_request`, SGLang request roots, and
/// for each TGI `queued` span its handler.
fn request_spans<'a>(trace: &'a [SpanNode], tree: &Tree<'a>) -> Vec<RequestSpan<'a>> {
    let mut found = Vec::new();
    for node in trace {
        let detail = node.detail.as_deref();
        let request = match (node.name, detail) {
            (NodeName::LlmRequest, Some(detail)) => Some((Engine::Vllm, node, detail)),
            (_, Some(detail)) if detail.sglang_request => Some((Engine::Sglang, node, detail)),
            (NodeName::Queued, _) => {
                tgi_handler(node, tree).and_then(|h| Some((Engine::Tgi, h, h.detail.as_deref()?)))
            }
            _ => None,
        };
        if let Some((engine, node, detail)) = request {
            found.push(RequestSpan {
                engine,
                node,
                detail,
            });
        }
    }
    found
}

/// Which engine produced a trace, when any request span in it is recognized.
pub fn detect_engine(trace: &[SpanNode]) -> Option<Engine> {
    let tree = Tree::new(trace);
    request_spans(trace, &tree)
        .into_iter()
        .min_by_key(|r| r.node.start_unix_ns)
        .map(|r| r.engine)
}

/// Parent/child lookups within one trace.
struct Tree<'a> {
    by_id: HashMap<[u8; 8], &'a SpanNode>,
    children: HashMap<[u8; 8], Vec<&'a SpanNode>>,
}

impl<'a> Tree<'a> {
    fn new(trace: &'a [SpanNode]) -> Self {
        let mut by_id = HashMap::new();
        let mut children: HashMap<[u8; 8], Vec<&SpanNode>> = HashMap::new();
        for node in trace {
            by_id.insert(node.span_id, node);
            if let Some(parent) = node.parent_span_id {
                children.entry(parent).or_default().push(node);
            }
        }
        Self { by_id, children }
    }

    fn parent(&self, node: &SpanNode) -> Option<&'a SpanNode> {
        self.by_id.get(&node.parent_span_id?).copied()
    }

    /// All descendants of `root` (not `root` itself), depth first.
    fn descendants(&self, root: &SpanNode) -> Vec<&'a SpanNode> {
        let mut out = Vec::new();
        let mut stack = vec![root.span_id];
        let mut guard = 0usize;
        while let Some(id) = stack.pop() {
            guard += 1;
            if guard > self.by_id.len() + 1 {
                break; // a cycle in malformed input
            }
            for child in self.children.get(&id).into_iter().flatten() {
                out.push(*child);
                stack.push(child.span_id);
            }
        }
        out
    }
}

fn seconds_attr_ms(attributes: &Map<String, Value>, key: &str) -> Option<f64> {
    attr_f64(attributes, key).map(|s| s * 1e3)
}

fn base_view(request: &RequestSpan, attributes: Map<String, Value>) -> ServerView {
    let node = request.node;
    ServerView {
        engine: request.engine.as_str().to_string(),
        span_name: request.detail.name.to_string(),
        service_name: request.detail.service_name.as_deref().map(str::to_string),
        span_id: hex(&node.span_id),
        start_unix_ns: node.start_unix_ns,
        end_unix_ns: node.end_unix_ns,
        request_id: attr_str(&attributes, "gen_ai.request.id").map(str::to_string),
        prompt_tokens: attr_u64(&attributes, "gen_ai.usage.prompt_tokens"),
        completion_tokens: attr_u64(&attributes, "gen_ai.usage.completion_tokens"),
        attributes,
        ..ServerView::default()
    }
}

/// vLLM `llm_request`: every latency is a float-seconds attribute.
fn vllm_view(request: &RequestSpan, attributes: Map<String, Value>) -> ServerView {
    let a = &attributes;
    ServerView {
        queue_ms: seconds_attr_ms(a, "gen_ai.latency.time_in_queue"),
        prefill_ms: seconds_attr_ms(a, "gen_ai.latency.time_in_model_prefill"),
        decode_ms: seconds_attr_ms(a, "gen_ai.latency.time_in_model_decode"),
        inference_ms: seconds_attr_ms(a, "gen_ai.latency.time_in_model_inference"),
        ttft_ms: seconds_attr_ms(a, "gen_ai.latency.time_to_first_token"),
        e2e_ms: seconds_attr_ms(a, "gen_ai.latency.e2e"),
        ..base_view(request, attributes)
    }
}

/// SGLang ` Req <rid>`: the queue is the `prefill_waiting` slice under it, and
/// `time_in_model_prefill` includes that wait, so the wait is taken off.
fn sglang_view(request: &RequestSpan, attributes: Map<String, Value>, tree: &Tree) -> ServerView {
    let waiting = tree
        .descendants(request.node)
        .into_iter()
        .filter(|n| n.name == NodeName::PrefillWaiting)
        .min_by_key(|n| n.start_unix_ns);
    let queue_ms = waiting.map(|n| n.duration_ns() as f64 / 1e6);
    let a = &attributes;
    let prefill_with_wait = seconds_attr_ms(a, "gen_ai.latency.time_in_model_prefill");
    let prefill_ms = match (prefill_with_wait, queue_ms) {
        (Some(prefill), Some(queue)) => Some(prefill - queue),
        _ => None,
    };
    ServerView {
        queue_ms,
        prefill_ms,
        decode_ms: seconds_attr_ms(a, "gen_ai.latency.time_in_model_decode"),
        inference_ms: seconds_attr_ms(a, "gen_ai.latency.time_in_model_inference"),
        ttft_ms: seconds_attr_ms(a, "gen_ai.latency.time_to_first_token"),
        e2e_ms: seconds_attr_ms(a, "gen_ai.latency.e2e"),
        ..base_view(request, attributes)
    }
}

/// The handler span of a TGI `queued` span: its highest ancestor in the trace
/// that carries TGI's timing fields. `None` while the handler has not arrived
/// (it closes last) or never recorded them.
fn tgi_handler<'a>(queued: &SpanNode, tree: &Tree<'a>) -> Option<&'a SpanNode> {
    let mut handler = None;
    let mut current = tree.parent(queued);
    let mut steps = 0;
    while let Some(node) = current {
        steps += 1;
        if steps > tree.by_id.len() {
            break; // a cycle in malformed input
        }
        if node.detail.as_ref().is_some_and(|d| d.tgi_timed) {
            handler = Some(node);
        }
        current = tree.parent(node);
    }
    handler
}

/// TGI handler: durations are Rust `Duration` Debug strings; TTFT is the first
/// `send_generation` start minus the handler start; prefill is the first
/// `infer` step up to its token.
fn tgi_view(request: &RequestSpan, attributes: Map<String, Value>, tree: &Tree) -> ServerView {
    let handler = request.node;
    let below = tree.descendants(handler);
    let earliest = |name: NodeName| {
        below
            .iter()
            .filter(|n| n.name == name)
            .min_by_key(|n| n.start_unix_ns)
            .copied()
    };
    let sends: Vec<&SpanNode> = below
        .iter()
        .filter(|n| matches!(n.name, NodeName::SendGeneration { .. }))
        .copied()
        .collect();
    let first_send = sends.iter().min_by_key(|n| n.start_unix_ns).copied();
    let duration_field = |key: &str| attr_str(&attributes, key).and_then(parse_debug_duration_ms);

    let queue_ms = duration_field("queue_time")
        .or_else(|| earliest(NodeName::Queued).map(|n| n.duration_ns() as f64 / 1e6));
    let prefill_ms = match (earliest(NodeName::Infer), first_send) {
        (Some(infer), Some(send)) if send.start_unix_ns >= infer.start_unix_ns => {
            Some((send.start_unix_ns - infer.start_unix_ns) as f64 / 1e6)
        }
        _ => None,
    };
    let inference_ms = duration_field("inference_time");
    let decode_ms = match (inference_ms, prefill_ms) {
        (Some(inference), Some(prefill)) => Some(inference - prefill),
        _ => None,
    };
    let ttft_ms = first_send
        .filter(|n| n.start_unix_ns >= handler.start_unix_ns)
        .map(|n| (n.start_unix_ns - handler.start_unix_ns) as f64 / 1e6);
    let generated_tokens = sends.iter().find_map(|n| match n.name {
        NodeName::SendGeneration { generated_tokens } => generated_tokens,
        _ => None,
    });
    let completion_tokens = generated_tokens.or((!sends.is_empty()).then_some(sends.len() as u64));
    let e2e_ms = duration_field("total_time").or(Some(handler.duration_ns() as f64 / 1e6));
    ServerView {
        queue_ms,
        prefill_ms,
        decode_ms,
        inference_ms,
        ttft_ms,
        e2e_ms,
        completion_tokens,
        prompt_tokens: None,
        request_id: None,
        ..base_view(request, attributes)
    }
}

/// Parses Rust's `Duration` Debug format (`"30.504061ms"`, `"1.5s"`, `"850µs"`,
/// `"500ns"`) into milliseconds.
pub fn parse_debug_duration_ms(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text
        .strip_suffix("µs")
        .or_else(|| text.strip_suffix("μs"))
        .or_else(|| text.strip_suffix("us"))
    {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ns") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::Span;
    use crate::trace::test_support::{fixture_spans, nodes_of};

    fn views(spans: &[Span]) -> Vec<ServerView> {
        request_views(&nodes_of(spans))
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    #[test]
    fn vllm_attributes_in_seconds_become_ms() {
        let spans = fixture_spans("vllm/traced-chat.spans.pb");
        let views = views(&spans);
        assert_eq!(views.len(), 1);
        let v = &views[0];
        let span = &spans[0];
        assert_eq!(v.engine, "vllm");
        assert!(close(
            v.queue_ms,
            span.attr_f64("gen_ai.latency.time_in_queue").unwrap() * 1e3
        ));
        assert!(close(v.ttft_ms, 30.76481819152832));
        assert!(close(v.e2e_ms, 66.1165714263916));
        assert!(close(v.prefill_ms, 16.014365000046382));
        assert_eq!(v.prompt_tokens, Some(15));
        assert_eq!(v.completion_tokens, Some(16));
        assert_eq!(v.request_id.as_deref(), Some("chatcmpl-b667cda1694cf546"));
        assert_eq!(v.service_name.as_deref(), Some("vllm"));
        assert_eq!(v.attributes, span.attributes);
        assert_eq!(detect_engine(&nodes_of(&spans)), Some(Engine::Vllm));
    }

    #[test]
    fn vllm_n2_gives_two_views_sorted_by_start() {
        let views = views(&fixture_spans("vllm/traced-chat-n2.spans.pb"));
        assert_eq!(views.len(), 2);
        assert_ne!(views[0].span_id, views[1].span_id);
        assert!(views[0].start_unix_ns <= views[1].start_unix_ns);
    }

    #[test]
    fn sglang_queue_is_taken_out_of_prefill() {
        for (file, queue_ns, ttft_s) in [
            (
                "sglang/chat-stream.overlap.otlp.json",
                30_110_976.0,
                0.07693947400002799,
            ),
            (
                "sglang/chat-stream.no-overlap.otlp.json",
                30_116_608.0,
                0.0762178059994767,
            ),
        ] {
            let spans = fixture_spans(file);
            let views = views(&spans);
            assert_eq!(views.len(), 1, "{file}");
            let v = &views[0];
            assert_eq!(v.engine, "sglang");
            assert_eq!(v.span_name, " Req 3f2a9c7e");
            assert!(
                close(v.queue_ms, queue_ns / 1e6),
                "{file}: {:?}",
                v.queue_ms
            );
            assert!(close(v.ttft_ms, ttft_s * 1e3));
            let root = spans.iter().find(|s| s.name == " Req 3f2a9c7e").unwrap();
            let with_wait = root
                .attr_f64("gen_ai.latency.time_in_model_prefill")
                .unwrap()
                * 1e3;
            assert!(close(v.prefill_ms, with_wait - queue_ns / 1e6));
            // The prefill without the wait is close to the prefill_forward slice (about 40 ms).
            let forward = spans
                .iter()
                .find(|s| s.name == "prefill_forward")
                .unwrap()
                .duration_ns() as f64
                / 1e6;
            assert!(
                (v.prefill_ms.unwrap() - forward).abs() < 5.0,
                "{:?} vs {forward}",
                v.prefill_ms
            );
            assert_eq!(v.prompt_tokens, Some(15));
            assert_eq!(v.completion_tokens, Some(20));
            assert_eq!(
                v.request_id.as_deref(),
                Some("3f2a9c7e5b1d4e8fa0c6d2b4e6f8a1c3")
            );
            assert_eq!(detect_engine(&nodes_of(&spans)), Some(Engine::Sglang));
        }
    }

    #[test]
    fn tgi_handler_and_children_map_to_phases() {
        let spans = fixture_spans("tgi/chat-stream.request-trace.otlp.json");
        let views = views(&spans);
        assert_eq!(views.len(), 1);
        let v = &views[0];
        assert_eq!(v.engine, "tgi");
        assert_eq!(v.span_name, "chat_completions");
        assert!(close(v.queue_ms, 30.504061));
        assert!(close(v.prefill_ms, 41.863062), "{:?}", v.prefill_ms);
        assert!(close(v.ttft_ms, 73.842048), "{:?}", v.ttft_ms);
        assert!(close(v.e2e_ms, 301.845752));
        assert!(close(v.inference_ms, 269.979593));
        assert!(close(v.decode_ms, 269.979593 - 41.863062));
        assert_eq!(v.completion_tokens, Some(20));
        assert_eq!(v.prompt_tokens, None);
        assert_eq!(v.request_id, None);
        assert_eq!(
            v.service_name.as_deref(),
            Some("text-generation-inference.router")
        );
    }

    #[test]
    fn tgi_without_handler_yet_and_batch_traces_give_nothing() {
        let spans: Vec<Span> = fixture_spans("tgi/chat-stream.request-trace.otlp.json")
            .into_iter()
            .filter(|s| s.name != "chat_completions")
            .collect();
        assert!(views(&spans).is_empty());
        assert!(views(&fixture_spans(
            "tgi/chat-stream.batch-traces.sample.otlp.json"
        ))
        .is_empty());
        assert!(views(&fixture_spans("tgi/variant.otel-http-span.otlp.json")).is_empty());
        assert!(views(&fixture_spans("otlp/trace.json")).is_empty());
    }

    #[test]
    fn debug_durations_parse_in_every_unit() {
        for (text, ms) in [
            ("30ms", 30.0),
            ("30.504061ms", 30.504061),
            ("1.5s", 1500.0),
            ("2.000000001s", 2000.000001),
            ("999µs", 0.999),
            ("12.3μs", 0.0123),
            ("500ns", 0.0005),
        ] {
            let parsed = parse_debug_duration_ms(text).unwrap();
            assert!((parsed - ms).abs() < 1e-9, "{text}: {parsed}");
        }
        for bad in ["", "ms", "12", "1.2h", "-3ms", "abc s"] {
            assert_eq!(parse_debug_duration_ms(bad), None, "{bad}");
        }
    }
}
