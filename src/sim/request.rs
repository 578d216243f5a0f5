//! What the simulator knows about one request: the parsed request itself and,
//! once it is done, the instants it really went through. Metrics, spans and the
//! truth log are all computed from a [`FinishedRequest`], so they agree.

use std::time::Duration;

use tokio::time::Instant;

use crate::client::traceparent::TraceParent;

/// The text of every generated token (the simulator's detokenizer).
pub(crate) const TOKEN_TEXT: &str = " tok";

/// Which OpenAI endpoint a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Chat,
    Completions,
}

/// A validated request, as the engine and the response encoder need it.
#[derive(Debug, Clone)]
pub(crate) struct RequestInfo {
    pub api: Api,
    /// The response `id` (`chatcmpl-..` / `cmpl-..`).
    pub response_id: String,
    /// The `X-Request-Id` header, when the client sent one.
    pub client_request_id: Option<String>,
    /// Unix seconds at arrival (the `created` field).
    pub created: u64,
    pub prompt_tokens: u32,
    /// Output tokens the request will get (asked for, capped by the context).
    pub max_tokens: u32,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stream: bool,
    pub include_usage: bool,
    pub continuous_usage: bool,
    /// Prompt tokens served from the prefix cache (`None`: caching off).
    pub cached_tokens: Option<u32>,
    /// Leading output tokens streamed as reasoning.
    pub reasoning_tokens: u32,
    pub traceparent: Option<TraceParent>,
    /// When the handler had the parsed request (vLLM's arrival time).
    pub arrival: Instant,
    /// When the API server handed it to the engine (after its frontend work).
    pub enqueued: Instant,
}

impl RequestInfo {
    /// vLLM's `gen_ai.request.id`: the response id for chat, id + `-0` for completions.
    pub fn span_request_id(&self) -> String {
        match self.api {
            Api::Chat => self.response_id.clone(),
            Api::Completions => format!("{}-0", self.response_id),
        }
    }
}

/// A request that produced all its tokens, with the instants it went through.
#[derive(Debug)]
pub(crate) struct FinishedRequest {
    pub info: RequestInfo,
    /// When the engine took it out of the waiting queue.
    pub scheduled: Instant,
    /// When each output token was produced (first token first).
    pub token_instants: Vec<Instant>,
    /// Wall clock (ns since the epoch) right before each token-bearing chunk
    /// was handed to the connection; empty unless the truth log is on.
    pub chunk_writes_unix_ns: Vec<u64>,
}

/// The phases of a finished request, as vLLM defines them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Phases {
    pub queue: Duration,
    pub prefill: Duration,
    pub decode: Duration,
    pub ttft: Duration,
    pub e2e: Duration,
}

impl Phases {
    /// Prefill plus decode (vLLM's `time_in_model_inference`).
    pub fn inference(&self) -> Duration {
        self.prefill + self.decode
    }
}

impl FinishedRequest {
    pub fn first_token(&self) -> Instant {
        self.token_instants
            .first()
            .copied()
            .unwrap_or(self.scheduled)
    }

    /// The last output: the end of the request.
    pub fn end(&self) -> Instant {
        self.token_instants
            .last()
            .copied()
            .unwrap_or(self.scheduled)
    }

    pub fn completion_tokens(&self) -> u32 {
        self.token_instants.len() as u32
    }

    pub fn phases(&self) -> Phases {
        let arrival = self.info.arrival;
        let first = self.first_token();
        let end = self.end();
        Phases {
            queue: self.scheduled.saturating_duration_since(self.info.enqueued),
            prefill: first.saturating_duration_since(self.scheduled),
            decode: end.saturating_duration_since(first),
            ttft: first.saturating_duration_since(arrival),
            e2e: end.saturating_duration_since(arrival),
        }
    }

    /// Gaps between consecutive output tokens.
    pub fn inter_token_gaps(&self) -> impl Iterator<Item = Duration> + '_ {
        self.token_instants
            .windows(2)
            .map(|pair| pair[1].saturating_duration_since(pair[0]))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A finished chat request with the given offsets (ms from arrival).
    pub(crate) fn finished(queue_ms: u64, token_ms: &[u64]) -> FinishedRequest {
        let arrival = Instant::now();
        let at = |ms: u64| arrival + Duration::from_millis(ms);
        FinishedRequest {
            info: RequestInfo {
                api: Api::Chat,
                response_id: "chatcmpl-abc".into(),
                client_request_id: Some("abc".into()),
                created: 1,
                prompt_tokens: 7,
                max_tokens: token_ms.len() as u32,
                temperature: None,
                top_p: None,
                stream: true,
                include_usage: true,
                continuous_usage: false,
                cached_tokens: None,
                reasoning_tokens: 0,
                traceparent: None,
                arrival,
                enqueued: arrival,
            },
            scheduled: at(queue_ms),
            token_instants: token_ms.iter().map(|&ms| at(ms)).collect(),
            chunk_writes_unix_ns: Vec::new(),
        }
    }

    #[test]
    fn phases_follow_vllm_definitions() {
        let request = finished(10, &[30, 40, 55]);
        let phases = request.phases();
        assert_eq!(phases.queue, Duration::from_millis(10));
        assert_eq!(phases.prefill, Duration::from_millis(20));
        assert_eq!(phases.decode, Duration::from_millis(25));
        assert_eq!(phases.ttft, Duration::from_millis(30));
        assert_eq!(phases.e2e, Duration::from_millis(55));
        assert_eq!(phases.inference(), Duration::from_millis(45));
        let gaps: Vec<_> = request.inter_token_gaps().collect();
        assert_eq!(gaps, [Duration::from_millis(10), Duration::from_millis(15)]);
        assert_eq!(request.completion_tokens(), 3);
    }

    #[test]
    fn completions_request_id_gets_the_choice_suffix() {
        let mut request = finished(0, &[1]);
        assert_eq!(request.info.span_request_id(), "chatcmpl-abc");
        request.info.api = Api::Completions;
        request.info.response_id = "cmpl-abc".into();
        assert_eq!(request.info.span_request_id(), "cmpl-abc-0");
    }
}
