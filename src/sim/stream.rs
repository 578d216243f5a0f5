//! The response side of a request: the SSE chunks in vLLM's exact shapes
//! (pre-serialized once per request so the per-token path only clones `Bytes`)
//! and the body stream that writes one chunk per token as the engine produces it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use tokio::time::Instant;

use super::engine::{EngineEvent, TokenSource};
use super::metrics::Metrics;
use super::recorder::FinishedRequests;
use super::request::{Api, FinishedRequest, RequestInfo, TOKEN_TEXT};
use crate::clock::RunClock;

/// `system_fingerprint` of usage chunks and non-streaming responses.
pub(crate) const SYSTEM_FINGERPRINT: &str = concat!("tracebench-sim-", env!("CARGO_PKG_VERSION"));
const DONE: &[u8] = b"data: [DONE]\n\n";

/// Builds the SSE events of one response.
#[derive(Debug)]
pub(crate) struct ChunkEncoder {
    api: Api,
    /// `data: {"id":..,"object":..,"created":..,"model":..,"choices":`
    prefix: String,
    prompt_tokens: u32,
    completion_tokens: u32,
    continuous_usage: bool,
    cached_tokens: Option<u32>,
    /// Chat: the first this many tokens are `delta.reasoning_content`.
    reasoning_tokens: u32,
    /// The chunk of every token but the last (shared, never rebuilt).
    plain_token: Bytes,
    plain_reasoning: Bytes,
}

impl ChunkEncoder {
    pub fn new(info: &RequestInfo, model: &str) -> Self {
        let object = match info.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completions => "text_completion",
        };
        let prefix = format!(
            "data: {{\"id\":{},\"object\":\"{object}\",\"created\":{},\"model\":{},\"choices\":",
            json_string(&info.response_id),
            info.created,
            json_string(model)
        );
        let mut encoder = Self {
            api: info.api,
            prefix,
            prompt_tokens: info.prompt_tokens,
            completion_tokens: info.max_tokens,
            continuous_usage: info.continuous_usage,
            cached_tokens: info.cached_tokens,
            reasoning_tokens: match info.api {
                Api::Chat => info.reasoning_tokens,
                Api::Completions => 0,
            },
            plain_token: Bytes::new(),
            plain_reasoning: Bytes::new(),
        };
        let after_reasoning = encoder.reasoning_tokens + 1;
        encoder.plain_token = Bytes::from(encoder.build_token(after_reasoning, false));
        encoder.plain_reasoning = Bytes::from(encoder.build_token(1, false));
        encoder
    }

    /// Chat only: the role chunk sent when the first token is ready.
    pub fn role(&self) -> Bytes {
        let mut out = self.prefix.clone();
        out.push_str(r#"[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]"#);
        if self.continuous_usage {
            self.push_running_usage(&mut out, 0);
        }
        out.push_str(",\"prompt_token_ids\":null,\"prompt_text\":null}\n\n");
        Bytes::from(out)
    }

    /// The chunk of the `produced`-th token (1-based).
    pub fn token(&self, produced: u32) -> Bytes {
        let last = produced >= self.completion_tokens;
        if last || self.continuous_usage {
            Bytes::from(self.build_token(produced, last))
        } else if produced <= self.reasoning_tokens {
            self.plain_reasoning.clone()
        } else {
            self.plain_token.clone()
        }
    }

    fn build_token(&self, produced: u32, last: bool) -> String {
        let finish = if last { r#""length""# } else { "null" };
        let mut out = self.prefix.clone();
        match self.api {
            Api::Chat => {
                let stop = if last { r#","stop_reason":null"# } else { "" };
                let field = match produced <= self.reasoning_tokens {
                    true => "reasoning_content",
                    false => "content",
                };
                out.push_str(&format!(
                    r#"[{{"index":0,"delta":{{"{field}":"{TOKEN_TEXT}"}},"logprobs":null,"finish_reason":{finish}{stop},"token_ids":null}}]"#
                ));
            }
            Api::Completions => out.push_str(&format!(
                r#"[{{"index":0,"text":"{TOKEN_TEXT}","logprobs":null,"finish_reason":{finish},"stop_reason":null,"prompt_token_ids":null,"token_ids":null}}]"#
            )),
        }
        if self.continuous_usage {
            self.push_running_usage(&mut out, produced);
        }
        out.push_str("}\n\n");
        out
    }

    fn push_running_usage(&self, out: &mut String, produced: u32) {
        out.push_str(&format!(
            r#","usage":{{"prompt_tokens":{},"total_tokens":{},"completion_tokens":{produced},"completion_tokens_details":null}}"#,
            self.prompt_tokens,
            self.prompt_tokens + produced
        ));
    }

    /// The final usage chunk (`stream_options.include_usage`).
    pub fn usage(&self) -> Bytes {
        let details = match self.cached_tokens {
            Some(n) => format!(",\"prompt_tokens_details\":{{\"cached_tokens\":{n}}}"),
            None => String::new(),
        };
        Bytes::from(format!(
            "{}[],\"usage\":{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":{}{details}}},\"system_fingerprint\":\"{SYSTEM_FINGERPRINT}\"}}\n\n",
            self.prefix,
            self.prompt_tokens,
            self.prompt_tokens + self.completion_tokens,
            self.completion_tokens
        ))
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// What a response needs besides its own request.
#[derive(Debug)]
pub(crate) struct ResponseContext {
    pub model: String,
    pub metrics: Arc<Metrics>,
    pub recorder: FinishedRequests,
    pub clock: RunClock,
    /// Stamp chunk write instants (only when the truth log is on).
    pub stamp_writes: bool,
}

/// One request's progress through generation, shared by the streaming and
/// non-streaming responses.
pub(crate) struct Generation {
    pub info: RequestInfo,
    source: TokenSource,
    scheduled: Option<Instant>,
    tokens: Vec<Instant>,
    writes: Vec<u64>,
    context: Arc<ResponseContext>,
}

impl Generation {
    pub fn new(info: RequestInfo, source: TokenSource, context: Arc<ResponseContext>) -> Self {
        let capacity = info.max_tokens as usize;
        Self {
            info,
            source,
            scheduled: None,
            tokens: Vec::with_capacity(capacity),
            writes: Vec::with_capacity(if context.stamp_writes { capacity } else { 0 }),
            context,
        }
    }

    pub fn produced(&self) -> u32 {
        self.tokens.len() as u32
    }

    pub fn is_complete(&self) -> bool {
        self.produced() >= self.info.max_tokens
    }

    /// The next output token's instant; `None` when the engine stopped early.
    pub fn poll_token(&mut self, cx: &mut Context<'_>) -> Poll<Option<Instant>> {
        loop {
            match self.source.poll_event(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(EngineEvent::Scheduled(at))) => self.scheduled = Some(at),
                Poll::Ready(Some(EngineEvent::Token(at))) => {
                    if self.tokens.is_empty() {
                        self.context
                            .metrics
                            .add_prompt_tokens(self.info.prompt_tokens);
                    }
                    self.context.metrics.add_generation_token();
                    self.tokens.push(at);
                    return Poll::Ready(Some(at));
                }
            }
        }
    }

    /// Waits for every token; false when the engine stopped early.
    pub async fn run_to_end(&mut self) -> bool {
        while !self.is_complete() {
            if std::future::poll_fn(|cx| self.poll_token(cx))
                .await
                .is_none()
            {
                return false;
            }
        }
        true
    }

    /// Notes that a token-bearing chunk is being handed to the connection now.
    pub fn stamp_write(&mut self) {
        if self.context.stamp_writes {
            let now = Instant::now().into_std();
            let run_ns = self.context.clock.ns_at(now);
            self.writes.push(self.context.clock.unix_ns_of(run_ns));
        }
    }

    /// Hands the finished request to the recorder (metrics, span, truth log).
    pub fn finish(&mut self) {
        let finished = FinishedRequest {
            info: self.info.clone(),
            scheduled: self.scheduled.unwrap_or(self.info.arrival),
            token_instants: std::mem::take(&mut self.tokens),
            chunk_writes_unix_ns: std::mem::take(&mut self.writes),
        };
        self.context.recorder.record(finished);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Tokens,
    Usage,
    Done,
    Closed,
}

/// The SSE body of a streaming response.
pub(crate) struct SseStream {
    generation: Generation,
    encoder: ChunkEncoder,
    /// A token chunk held back one poll so the role chunk goes first.
    held_token: Option<Bytes>,
    phase: Phase,
}

impl SseStream {
    pub fn new(generation: Generation) -> Self {
        let encoder = ChunkEncoder::new(&generation.info, &generation.context.model);
        Self {
            generation,
            encoder,
            held_token: None,
            phase: Phase::Tokens,
        }
    }

    fn hand_over_token(
        &mut self,
        chunk: Bytes,
    ) -> Poll<Option<Result<Bytes, std::convert::Infallible>>> {
        self.generation.stamp_write();
        if self.generation.is_complete() {
            self.generation.finish();
            self.phase = Phase::Usage;
        }
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl Stream for SseStream {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(chunk) = this.held_token.take() {
            return this.hand_over_token(chunk);
        }
        loop {
            match this.phase {
                Phase::Tokens => {
                    let Some(_) = std::task::ready!(this.generation.poll_token(cx)) else {
                        // The engine stopped (server shutdown): end without [DONE].
                        this.phase = Phase::Closed;
                        return Poll::Ready(None);
                    };
                    let produced = this.generation.produced();
                    let chunk = this.encoder.token(produced);
                    if produced == 1 && this.generation.info.api == Api::Chat {
                        this.held_token = Some(chunk);
                        return Poll::Ready(Some(Ok(this.encoder.role())));
                    }
                    return this.hand_over_token(chunk);
                }
                Phase::Usage => {
                    this.phase = Phase::Done;
                    if this.generation.info.include_usage {
                        return Poll::Ready(Some(Ok(this.encoder.usage())));
                    }
                }
                Phase::Done => {
                    this.phase = Phase::Closed;
                    return Poll::Ready(Some(Ok(Bytes::from_static(DONE))));
                }
                Phase::Closed => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::request::tests::finished;
    use crate::testing::fixture_text;

    /// A JSON text with keys kept in document order, string values replaced
    /// by `s` and numbers by `n`: equal skeletons mean equal shapes.
    fn skeleton(json: &str) -> String {
        let bytes = json.as_bytes();
        let mut out = String::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    let start = i;
                    i += 1;
                    while bytes[i] != b'"' {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                    let is_key = json[i..].trim_start().starts_with(':');
                    out.push_str(if is_key { &json[start..i] } else { "s" });
                }
                b'-' | b'0'..=b'9' => {
                    while i < bytes.len()
                        && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                    {
                        i += 1;
                    }
                    out.push('n');
                }
                other => {
                    out.push(other as char);
                    i += 1;
                }
            }
        }
        out
    }

    /// The `data:` payloads of an SSE body, without `[DONE]`.
    fn events(sse: &str) -> Vec<&str> {
        sse.split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .filter(|data| *data != "[DONE]")
            .collect()
    }

    fn usage(event: &str) -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(event).expect("event is JSON")["usage"].clone()
    }

    fn encode_all(info: &RequestInfo) -> String {
        let encoder = ChunkEncoder::new(info, "tiny");
        let mut out = String::new();
        if info.api == Api::Chat {
            out.push_str(std::str::from_utf8(&encoder.role()).expect("utf8"));
        }
        for produced in 1..=info.max_tokens {
            out.push_str(std::str::from_utf8(&encoder.token(produced)).expect("utf8"));
        }
        out.push_str(std::str::from_utf8(&encoder.usage()).expect("utf8"));
        out
    }

    #[test]
    fn chat_chunks_have_vllm_shapes_with_continuous_usage() {
        let mut info = finished(0, &[1]).info;
        info.max_tokens = 16;
        info.prompt_tokens = 15;
        info.continuous_usage = true;
        let encoded = encode_all(&info);
        let ours = events(&encoded);
        let fixture = fixture_text("vllm/chat-stream-continuous-usage.sse");
        let theirs = events(&fixture);
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(skeleton(a), skeleton(b));
            assert_eq!(usage(a), usage(b), "token counts follow the fixture");
        }
    }

    #[test]
    fn completion_chunks_have_vllm_shapes() {
        let mut info = finished(0, &[1]).info;
        info.api = Api::Completions;
        info.max_tokens = 16;
        info.prompt_tokens = 13;
        let encoded = encode_all(&info);
        let ours = events(&encoded);
        let fixture = fixture_text("vllm/completions-stream.sse");
        let theirs = events(&fixture);
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(skeleton(a), skeleton(b));
        }
        assert!(ours[15].contains(r#""finish_reason":"length""#));
        assert_eq!(usage(ours[16]), usage(theirs[16]));
    }

    #[test]
    fn ids_and_model_names_are_escaped() {
        let mut info = finished(0, &[1]).info;
        info.response_id = "chatcmpl-a\"b".into();
        let chunk = ChunkEncoder::new(&info, "m\\x").token(1);
        let json: serde_json::Value =
            serde_json::from_slice(chunk.strip_prefix(b"data: ").expect("prefix"))
                .expect("valid JSON");
        assert_eq!(json["id"], "chatcmpl-a\"b");
        assert_eq!(json["model"], "m\\x");
    }
}
