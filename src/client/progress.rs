//! What has been seen of one response, as it arrives: [`Progress`] applies
//! each SSE event (token-bearing or not, reasoning or answer, usage, the
//! reply's text when a session needs it), [`BodyReader`] frames the body, and
//! [`finish_whole`] reads a non-streamed answer.

use super::chunk::{answer_text, error_message, parse_chunk, Usage};
use super::http1::ConnectionStory;
use super::sse::{SseEvent, SseFramer};
use super::{excerpt, stream_error};
use crate::record::{ErrorKind, RequestError};
use std::ops::ControlFlow;
use std::time::Instant;

/// What has been seen of one response so far.
pub(crate) struct Progress {
    pub(crate) sent: Instant,
    pub(crate) sent_unix_ns: u64,
    pub(crate) connection: ConnectionStory,
    pub(crate) headers: Option<Instant>,
    pub(crate) first_byte: Option<Instant>,
    pub(crate) first_token: Option<Instant>,
    /// First token of the answer (reasoning excluded).
    pub(super) first_answer: Option<Instant>,
    pub(super) last_token: Option<Instant>,
    pub(crate) end: Option<Instant>,
    pub(crate) status: Option<u16>,
    pub(super) response_id: Option<String>,
    pub(super) finish_reason: Option<String>,
    pub(crate) usage: Usage,
    pub(super) token_events: u64,
    pub(super) chunk_arrivals: Vec<Instant>,
    /// Tokens carried by each token-bearing chunk, while every chunk's count is known.
    pub(super) tokens_per_chunk: Option<Vec<u64>>,
    pub(super) last_completion_tokens: Option<u64>,
    /// Reasoning-only token chunks, and their tokens while every count is known.
    pub(super) reasoning_chunks: u64,
    pub(super) reasoning_chunk_tokens: Option<u64>,
    /// The answer's text, when kept.
    pub(super) reply: Option<String>,
    pub(crate) done: bool,
}

impl Progress {
    pub(crate) fn new(max_tokens: Option<u64>, keep_reply: bool) -> Self {
        let capacity = max_tokens.unwrap_or(128).min(8192) as usize;
        Self {
            sent: Instant::now(),
            sent_unix_ns: 0,
            connection: ConnectionStory::default(),
            headers: None,
            first_byte: None,
            first_token: None,
            first_answer: None,
            last_token: None,
            end: None,
            status: None,
            response_id: None,
            finish_reason: None,
            usage: Usage::default(),
            token_events: 0,
            chunk_arrivals: Vec::with_capacity(capacity),
            tokens_per_chunk: Some(Vec::with_capacity(capacity)),
            last_completion_tokens: None,
            reasoning_chunks: 0,
            reasoning_chunk_tokens: Some(0),
            reply: keep_reply.then(String::new),
            done: false,
        }
    }

    /// Reasoning tokens: the server's count, else counted per chunk when every
    /// chunk's count is known or the chunks were one token each (their number
    /// is the usage count); `None` when no reasoning was seen and none reported.
    pub(super) fn reasoning_tokens(&self, output_tokens: Option<u64>) -> Option<u64> {
        if let Some(n) = self.usage.reasoning_tokens() {
            return Some(n);
        }
        if self.reasoning_chunks == 0 {
            return None;
        }
        let one_each = output_tokens == Some(self.token_events);
        match (self.tokens_per_chunk.is_some(), one_each) {
            (true, _) => self.reasoning_chunk_tokens,
            (false, true) => Some(self.reasoning_chunks),
            (false, false) => None,
        }
    }

    /// Applies one SSE event that arrived at `arrived`.
    pub(crate) fn on_event(
        &mut self,
        event: SseEvent<'_>,
        arrived: Instant,
    ) -> Result<(), RequestError> {
        if event.event == Some("error") {
            return Err(stream_error(format!(
                "the server sent an error event: {}",
                String::from_utf8_lossy(event.data)
            )));
        }
        if event.data == b"[DONE]" {
            self.done = true;
            self.end = Some(arrived);
            return Ok(());
        }
        let chunk = parse_chunk(event.data).map_err(|e| RequestError {
            kind: ErrorKind::InvalidResponse,
            message: e.to_string(),
            status: None,
            body_excerpt: Some(excerpt(event.data)),
        })?;
        if let Some(message) = chunk.error {
            return Err(stream_error(format!(
                "the server reported an error mid-stream: {message}"
            )));
        }
        if self.response_id.is_none() {
            self.response_id = chunk.id.map(|id| id.into_owned());
        }
        // With continuous usage stats (usage on chunks that have choices), the rise
        // of completion_tokens is the token count; the final usage-only chunk is not a token.
        let continuous = chunk.choices > 0;
        let usage_tokens = chunk
            .usage
            .filter(|_| continuous)
            .and_then(|u| u.completion_tokens)
            .map(|now| {
                let before = self.last_completion_tokens.replace(now).unwrap_or(0);
                now.saturating_sub(before)
            });
        let carries = match usage_tokens {
            Some(n) => n > 0,
            None => chunk.carries_token,
        };
        if let Some(usage) = chunk.usage {
            let kept = &mut self.usage;
            kept.prompt_tokens = usage.prompt_tokens.or(kept.prompt_tokens);
            kept.completion_tokens = usage.completion_tokens.or(kept.completion_tokens);
            kept.prompt_tokens_details = usage.prompt_tokens_details.or(kept.prompt_tokens_details);
            kept.completion_tokens_details = usage
                .completion_tokens_details
                .or(kept.completion_tokens_details);
        }
        if let Some(reply) = self.reply.as_mut() {
            reply.push_str(&answer_text(event.data).unwrap_or_default());
        }
        if carries {
            self.token_events += 1;
            self.first_token.get_or_insert(arrived);
            self.last_token = Some(arrived);
            self.chunk_arrivals.push(arrived);
            let known = usage_tokens.filter(|n| *n > 0).or(chunk.token_ids);
            match (known, self.tokens_per_chunk.as_mut()) {
                (Some(n), Some(counts)) => counts.push(n),
                _ => self.tokens_per_chunk = None,
            }
            if chunk.answers {
                self.first_answer.get_or_insert(arrived);
            } else {
                self.reasoning_chunks += 1;
                self.reasoning_chunk_tokens =
                    self.reasoning_chunk_tokens.zip(known).map(|(a, b)| a + b);
            }
        }
        if chunk.finish_reason.is_some() {
            self.finish_reason = chunk.finish_reason;
        }
        Ok(())
    }
}

/// The body being read: the SSE framer for streams, the bytes for JSON answers.
pub(super) struct BodyReader {
    pub(super) framer: SseFramer,
    pub(super) whole: Vec<u8>,
}

impl BodyReader {
    pub(super) fn feed_stream(
        &mut self,
        bytes: &[u8],
        arrived: Instant,
        progress: &mut Progress,
    ) -> Result<(), RequestError> {
        let failed = self
            .framer
            .feed(bytes, |event| match progress.on_event(event, arrived) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => ControlFlow::Break(e),
            })
            .map_err(|e| stream_error(e.to_string()))?;
        match failed {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    pub(super) fn finish_stream(&self, progress: &mut Progress) -> Result<(), RequestError> {
        finish_stream(&self.framer, progress)
    }
}

/// The end of a stream: an error unless it ended as a complete answer
/// (`[DONE]`, or a finish reason with no event cut off).
pub(crate) fn finish_stream(framer: &SseFramer, progress: &Progress) -> Result<(), RequestError> {
    if progress.done {
        return Ok(());
    }
    if progress.token_events == 0 && progress.response_id.is_none() {
        return Err(RequestError {
            kind: ErrorKind::InvalidResponse,
            message: "the body is not an SSE stream of completion chunks".into(),
            status: progress.status,
            body_excerpt: None,
        });
    }
    if framer.has_partial_event() {
        return Err(stream_error(
            "the stream was cut off in the middle of an event".into(),
        ));
    }
    if progress.finish_reason.is_none() {
        return Err(stream_error(
            "the stream ended before [DONE] and before any finish_reason".into(),
        ));
    }
    Ok(())
}

/// A non-streaming answer: one JSON body, all tokens at once.
pub(crate) fn finish_whole(
    body: &[u8],
    at: Instant,
    progress: &mut Progress,
) -> Result<(), RequestError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| RequestError {
        kind: ErrorKind::InvalidResponse,
        message: format!("the response is not JSON: {e}"),
        status: progress.status,
        body_excerpt: Some(excerpt(body)),
    })?;
    if let Some(error) = value.get("error") {
        return Err(stream_error(format!(
            "the server reported an error: {}",
            error_message(error)
        )));
    }
    progress.response_id = value.get("id").and_then(|v| v.as_str()).map(str::to_string);
    if let Some(usage) = value.get("usage") {
        progress.usage = serde_json::from_value(usage.clone()).unwrap_or_default();
    }
    progress.finish_reason = value
        .pointer("/choices/0/finish_reason")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    progress.first_token = Some(at);
    progress.first_answer = Some(at);
    progress.last_token = Some(at);
    progress.tokens_per_chunk = None;
    if let Some(reply) = progress.reply.as_mut() {
        reply.push_str(&answer_text(body).unwrap_or_default());
    }
    Ok(())
}
