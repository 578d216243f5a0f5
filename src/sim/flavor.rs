//! How each engine shapes a request's spans: vLLM's single `llm_request`
//! SERVER span, SGLang's ` Req <rid>` tree with its stage slices, and TGI's
//! router spans with Rust `Debug` duration strings. All times come from what
//! the simulator really did with the request.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;
use opentelemetry_sdk::Resource;
use tokio::time::Instant;

use super::request::{Api, FinishedRequest, TOKEN_TEXT};
use crate::clock::RunClock;

/// Which engine's span shape the simulator exports.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    #[default]
    Vllm,
    Sglang,
    Tgi,
}

impl Flavor {
    /// The `service.name` the engine reports by default.
    pub fn default_service_name(self) -> &'static str {
        match self {
            Flavor::Vllm => "vllm",
            Flavor::Sglang => "sglang",
            Flavor::Tgi => "tgi",
        }
    }

    /// The instrumentation scope the engine's spans carry.
    pub(crate) fn scope(self) -> InstrumentationScope {
        match self {
            Flavor::Vllm => InstrumentationScope::builder("vllm.tracing.otel").build(),
            Flavor::Sglang => InstrumentationScope::builder("sglang server").build(),
            Flavor::Tgi => InstrumentationScope::builder("opentelemetry-otlp")
                .with_version("0.13.0")
                .build(),
        }
    }

    /// The resource: TGI replaces the SDK's default resource, the others keep it.
    pub(crate) fn resource(self, service_name: &str) -> Resource {
        let builder = match self {
            Flavor::Tgi => Resource::builder_empty(),
            Flavor::Vllm | Flavor::Sglang => Resource::builder(),
        };
        builder.with_service_name(service_name.to_owned()).build()
    }

    /// Creates (and ends) the spans of one finished request.
    pub(crate) fn emit(self, writer: &SpanWriter<'_>, request: &FinishedRequest) {
        match self {
            Flavor::Vllm => emit_vllm(writer, request),
            Flavor::Sglang => emit_sglang(writer, request),
            Flavor::Tgi => emit_tgi(writer, request),
        }
    }
}

/// Creates spans with explicit times on one tracer.
pub(crate) struct SpanWriter<'a> {
    pub tracer: &'a SdkTracer,
    pub clock: &'a RunClock,
    /// The served model name (SGLang's `gen_ai.response.model`).
    pub model: &'a str,
    /// Host id and pid for SGLang's thread spans.
    pub host_id: &'a str,
    pub pid: u32,
}

impl SpanWriter<'_> {
    fn system_time(&self, instant: Instant) -> SystemTime {
        let unix_ns = self.clock.unix_ns_of(self.clock.ns_at(instant.into_std()));
        SystemTime::UNIX_EPOCH + Duration::from_nanos(unix_ns)
    }

    /// Starts a span under `parent`; the returned context holds it.
    fn open(
        &self,
        parent: &Context,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        start: Instant,
        attributes: Vec<KeyValue>,
    ) -> Context {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(self.system_time(start))
            .with_attributes(attributes)
            .start_with_context(self.tracer, parent);
        parent.with_span(span)
    }

    fn close(&self, span: &Context, end: Instant) {
        span.span().end_with_timestamp(self.system_time(end));
    }

    fn leaf(
        &self,
        parent: &Context,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        (start, end): (Instant, Instant),
        attributes: Vec<KeyValue>,
    ) {
        let span = self.open(parent, name, kind, start, attributes);
        self.close(&span, end);
    }
}

/// The client's context: its span as a remote parent, a fresh root when it sent
/// no `traceparent`, or `None` (no span) when it is unsampled and the engine
/// honors that.
fn client_parent(request: &FinishedRequest, honors_sampling: bool) -> Option<Context> {
    let Some(parent) = request.info.traceparent else {
        return Some(Context::new());
    };
    if !parent.sampled && honors_sampling {
        return None;
    }
    let flags = if parent.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let context = SpanContext::new(
        TraceId::from_bytes(parent.trace_id.to_bytes()),
        SpanId::from_bytes(parent.span_id),
        flags,
        true,
        TraceState::default(),
    );
    Some(Context::new().with_remote_span_context(context))
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn emit_vllm(writer: &SpanWriter<'_>, request: &FinishedRequest) {
    let Some(parent) = client_parent(request, true) else {
        return;
    };
    let info = &request.info;
    let phases = request.phases();
    let attributes = vec![
        KeyValue::new("gen_ai.latency.time_to_first_token", seconds(phases.ttft)),
        KeyValue::new("gen_ai.latency.e2e", seconds(phases.e2e)),
        KeyValue::new("gen_ai.latency.time_in_queue", seconds(phases.queue)),
        KeyValue::new("gen_ai.usage.prompt_tokens", info.prompt_tokens as i64),
        KeyValue::new(
            "gen_ai.usage.completion_tokens",
            request.completion_tokens() as i64,
        ),
        KeyValue::new(
            "gen_ai.latency.time_in_model_prefill",
            seconds(phases.prefill),
        ),
        KeyValue::new(
            "gen_ai.latency.time_in_model_decode",
            seconds(phases.decode),
        ),
        KeyValue::new(
            "gen_ai.latency.time_in_model_inference",
            seconds(phases.inference()),
        ),
        KeyValue::new("gen_ai.request.id", info.span_request_id()),
        KeyValue::new("gen_ai.request.top_p", info.top_p.unwrap_or(1.0)),
        KeyValue::new("gen_ai.request.max_tokens", info.max_tokens as i64),
        KeyValue::new(
            "gen_ai.request.temperature",
            info.temperature.unwrap_or(1.0),
        ),
        KeyValue::new("gen_ai.request.n", 1i64),
    ];
    writer.leaf(
        &parent,
        "llm_request",
        SpanKind::Server,
        (info.arrival, request.end()),
        attributes,
    );
}

fn emit_sglang(writer: &SpanWriter<'_>, request: &FinishedRequest) {
    let Some(parent) = client_parent(request, true) else {
        return;
    };
    let info = &request.info;
    let phases = request.phases();
    let (arrival, first, end) = (info.arrival, request.first_token(), request.end());
    let rid = info
        .response_id
        .trim_start_matches("chatcmpl-")
        .trim_start_matches("cmpl-")
        .to_owned();
    let rid8: String = rid.chars().take(8).collect();
    let mut attributes = vec![
        KeyValue::new("rid", rid.clone()),
        KeyValue::new("module", "sglang::request"),
        KeyValue::new("gen_ai.usage.prompt_tokens", info.prompt_tokens as i64),
        KeyValue::new(
            "gen_ai.usage.completion_tokens",
            request.completion_tokens() as i64,
        ),
        KeyValue::new("gen_ai.usage.cached_tokens", 0i64),
        KeyValue::new("gen_ai.request.id", rid),
        KeyValue::new("gen_ai.request.max_tokens", info.max_tokens as i64),
        KeyValue::new("gen_ai.request.top_k", -1i64),
        KeyValue::new("gen_ai.request.n", 1i64),
        KeyValue::new("gen_ai.response.model", writer.model.to_owned()),
        KeyValue::new("gen_ai.response.finish_reasons", r#"["length"]"#),
        KeyValue::new("gen_ai.latency.time_to_first_token", seconds(phases.ttft)),
        KeyValue::new("gen_ai.latency.e2e", seconds(phases.e2e)),
        KeyValue::new(
            "gen_ai.latency.time_in_model_decode",
            seconds(phases.decode),
        ),
        // Dispatch to the scheduler is instant here, so inference and
        // prefill (which includes the queue wait in SGLang) start at arrival.
        KeyValue::new(
            "gen_ai.latency.time_in_model_inference",
            seconds(phases.e2e),
        ),
        KeyValue::new("gen_ai.latency.time_in_model_prefill", seconds(phases.ttft)),
    ];
    for (key, value) in [
        ("gen_ai.request.top_p", info.top_p),
        ("gen_ai.request.temperature", info.temperature),
    ] {
        if let Some(value) = value.filter(|v| *v != 0.0) {
            attributes.push(KeyValue::new(key, value));
        }
    }
    let root = writer.open(
        &parent,
        format!(" Req {rid8}"),
        SpanKind::Internal,
        arrival,
        attributes,
    );
    let host8: String = writer.host_id.chars().take(8).collect();
    let thread = |label: &'static str, extra: Vec<KeyValue>| {
        let mut attributes = vec![
            KeyValue::new("host_id", writer.host_id.to_owned()),
            KeyValue::new("pid", writer.pid as i64),
            KeyValue::new("thread_label", label),
        ];
        attributes.extend(extra);
        attributes
    };
    let tokenizer = writer.open(
        &root,
        format!("Tokenizer(host:{host8} | pid:{})", writer.pid),
        SpanKind::Internal,
        arrival,
        thread("Tokenizer", vec![]),
    );
    // The frontend's work (tokenize, then dispatch to the scheduler) fills the
    // time between arrival and the engine queue.
    writer.leaf(
        &tokenizer,
        "tokenize",
        SpanKind::Internal,
        (arrival, info.enqueued),
        vec![],
    );
    writer.leaf(
        &tokenizer,
        "api_server_dispatch",
        SpanKind::Internal,
        (info.enqueued, info.enqueued),
        vec![],
    );
    writer.close(&tokenizer, info.enqueued);
    let scheduler = writer.open(
        &root,
        format!(
            "Scheduler [TP 0]  [PP 0] (host:{host8} | pid:{})",
            writer.pid
        ),
        SpanKind::Internal,
        arrival,
        thread(
            "Scheduler",
            vec![
                KeyValue::new("tp_rank", 0i64),
                KeyValue::new("pp_rank", 0i64),
            ],
        ),
    );
    writer.leaf(
        &scheduler,
        "request_process",
        SpanKind::Internal,
        (info.enqueued, info.enqueued),
        vec![],
    );
    writer.leaf(
        &scheduler,
        "prefill_waiting",
        SpanKind::Internal,
        (info.enqueued, request.scheduled),
        vec![],
    );
    writer.leaf(
        &scheduler,
        "prefill_forward",
        SpanKind::Internal,
        (request.scheduled, first),
        vec![],
    );
    let decode = writer.open(
        &scheduler,
        "decode_forward",
        SpanKind::Internal,
        first,
        vec![],
    );
    for (step, pair) in request.token_instants.windows(2).enumerate() {
        let attributes = vec![KeyValue::new("decode_ct", step as i64)];
        writer.leaf(
            &decode,
            "decode_loop",
            SpanKind::Internal,
            (pair[0], pair[1]),
            attributes,
        );
    }
    writer.close(&decode, end);
    writer.close(&scheduler, end);
    writer.close(&root, end);
}

fn code(namespace: &'static str, filepath: &'static str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("code.namespace", namespace),
        KeyValue::new("code.filepath", filepath),
    ]
}

/// TGI's `Generation` message as its `Debug` output shows it.
fn tgi_generation(token_index: usize, request: &FinishedRequest) -> String {
    let tokens = request.token_instants.len();
    let generated_text = if token_index + 1 == tokens {
        format!(
            "Some(GeneratedText {{ text: {:?}, generated_tokens: {tokens}, finish_reason: Length, seed: None }})",
            TOKEN_TEXT.repeat(tokens)
        )
    } else {
        "None".to_owned()
    };
    format!(
        "Generation {{ request_id: 0, prefill_tokens: None, tokens: Some(Tokens {{ ids: [{token_index}], logprobs: [-0.5], texts: [{TOKEN_TEXT:?}], is_special: [false] }}), generated_text: {generated_text}, top_tokens: [] }}"
    )
}

fn emit_tgi(writer: &SpanWriter<'_>, request: &FinishedRequest) {
    // TGI samples everything, even an unsampled client parent.
    let Some(parent) = client_parent(request, false) else {
        return;
    };
    let info = &request.info;
    let (arrival, end) = (info.arrival, request.end());
    let queue_time = request.scheduled.saturating_duration_since(info.enqueued);
    let inference_time = end.saturating_duration_since(request.scheduled);
    let time_per_token = inference_time / request.completion_tokens().max(1);
    let parameters = format!(
        "GenerateParameters {{ best_of: None, temperature: {:?}, repetition_penalty: None, frequency_penalty: None, top_k: None, top_p: {:?}, typical_p: None, do_sample: {}, max_new_tokens: Some({}), return_full_text: None, stop: [], truncate: None, watermark: false, details: true, decoder_input_details: false, seed: None, top_n_tokens: None, grammar: None, adapter_id: None }}",
        info.temperature,
        info.top_p,
        info.temperature.is_some_and(|t| t > 0.0),
        info.max_tokens
    );
    let handler = match info.api {
        Api::Chat => "chat_completions",
        Api::Completions => "completions",
    };
    let mut attributes = code("text_generation_router::server", "router/src/server.rs");
    attributes.extend([
        KeyValue::new("parameters", parameters),
        KeyValue::new(
            "total_time",
            format!("{:?}", end.saturating_duration_since(arrival)),
        ),
        KeyValue::new("validation_time", format!("{:?}", Duration::ZERO)),
        KeyValue::new("queue_time", format!("{queue_time:?}")),
        KeyValue::new("inference_time", format!("{inference_time:?}")),
        KeyValue::new("time_per_token", format!("{time_per_token:?}")),
    ]);
    let root = writer.open(&parent, handler, SpanKind::Internal, arrival, attributes);
    let server_code = || code("text_generation_router::server", "router/src/server.rs");
    let async_stream = info.stream.then(|| {
        writer.open(
            &root,
            "async_stream",
            SpanKind::Internal,
            arrival,
            server_code(),
        )
    });
    let generate_name = if info.stream {
        "generate_stream"
    } else {
        "generate"
    };
    let generate = writer.open(
        async_stream.as_ref().unwrap_or(&root),
        generate_name,
        SpanKind::Internal,
        arrival,
        code("text_generation_router::infer", "router/src/infer/mod.rs"),
    );
    let backend = || {
        code(
            "text_generation_router_v3::backend",
            "backends/v3/src/backend.rs",
        )
    };
    let schedule = writer.open(
        &generate,
        "schedule",
        SpanKind::Internal,
        arrival,
        backend(),
    );
    writer.leaf(
        &schedule,
        "queued",
        SpanKind::Internal,
        (info.enqueued, request.scheduled),
        code(
            "text_generation_router_v3::queue",
            "backends/v3/src/queue.rs",
        ),
    );
    // One `infer` per forward step the request was in, each living until the
    // next step starts; the first is the prefill (opened by the queue).
    let mut step_start = request.scheduled;
    for (index, &token) in request.token_instants.iter().enumerate() {
        let step_end = request.token_instants.get(index + 1).map_or(end, |_| token);
        let attributes = if index == 0 {
            code(
                "text_generation_router_v3::queue",
                "backends/v3/src/queue.rs",
            )
        } else {
            backend()
        };
        let infer = writer.open(
            &schedule,
            "infer",
            SpanKind::Internal,
            step_start,
            attributes,
        );
        let mut attributes = backend();
        attributes.push(KeyValue::new("generation", tgi_generation(index, request)));
        writer.leaf(
            &infer,
            "send_generation",
            SpanKind::Internal,
            (token, token),
            attributes,
        );
        writer.close(&infer, step_end);
        step_start = token;
    }
    for span in [
        Some(&schedule),
        Some(&generate),
        async_stream.as_ref(),
        Some(&root),
    ]
    .into_iter()
    .flatten()
    {
        writer.close(span, end);
    }
}
