//! Reading one streamed chunk (`chat.completion.chunk` / `text_completion`)
//! without building a JSON tree: only what the timings need — does it carry a
//! token, how many if the server says, `usage`, `finish_reason`, `id`, errors.
//!
//! A chunk carries a token when a choice has generated text (even an empty
//! string: vLLM emits one chunk per token and byte-level BPE pieces of a split
//! UTF-8 character decode to `""`), reasoning text, tool-call deltas or token
//! ids. A chat delta that only announces the role (`{"role":"assistant",
//! "content":""}`) and a final `delta: {}` carry none. With
//! `continuous_usage_stats` the rise of `usage.completion_tokens` decides.
//!
//! Reasoning (`delta.reasoning_content`, vLLM and DeepSeek; `delta.reasoning`,
//! newer vLLM and OpenRouter) counts as a token but not as an *answer*
//! token ([`ChunkInfo::answers`], for TTFO). Logprobs (chat `logprobs.content`,
//! completions `logprobs.tokens`) give the chunk's token count when asked for.

use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// Token counts the server reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
}

/// `usage.prompt_tokens_details` (vLLM with `--enable-prompt-tokens-details`, OpenAI).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

/// `usage.completion_tokens_details` (OpenAI reasoning models).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    pub fn cached_tokens(&self) -> Option<u64> {
        self.prompt_tokens_details.and_then(|d| d.cached_tokens)
    }

    pub fn reasoning_tokens(&self) -> Option<u64> {
        self.completion_tokens_details
            .and_then(|d| d.reasoning_tokens)
    }
}

/// What one chunk says.
#[derive(Debug, Default, PartialEq)]
pub struct ChunkInfo<'a> {
    pub id: Option<Cow<'a, str>>,
    /// How many choices the chunk had (the final usage chunk has none).
    pub choices: u32,
    /// Some choice carried generated output.
    pub carries_token: bool,
    /// Some choice carried answer output (text, content, tool calls), not only reasoning.
    pub answers: bool,
    /// Token ids the chunk listed (vLLM `return_token_ids`) or its logprobs
    /// entries, when it had either.
    pub token_ids: Option<u64>,
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    /// An error object inside the stream (`{"error": {...}}`).
    pub error: Option<String>,
}

/// Why a chunk could not be read.
#[derive(Debug, thiserror::Error)]
#[error("stream chunk is not valid JSON: {0}")]
pub struct ChunkError(#[from] serde_json::Error);

/// Reads a chunk's JSON payload.
pub fn parse_chunk(data: &[u8]) -> Result<ChunkInfo<'_>, ChunkError> {
    let raw: RawChunk<'_> = serde_json::from_slice(data)?;
    let choices = raw.choices.unwrap_or_default();
    Ok(ChunkInfo {
        id: raw.id,
        choices: choices.count,
        carries_token: choices.carries_token,
        answers: choices.answers,
        token_ids: choices.token_ids,
        usage: raw.usage,
        finish_reason: choices.finish_reason,
        error: raw.error.map(|e| error_message(&e)),
    })
}

/// The message of an OpenAI-style error object (or the whole object).
pub fn error_message(error: &serde_json::Value) -> String {
    let inner = error.get("error").unwrap_or(error);
    match inner.get("message").and_then(|m| m.as_str()) {
        Some(message) => message.to_string(),
        None => inner.to_string(),
    }
}

#[derive(Deserialize)]
struct RawChunk<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    choices: Option<ChoicesScan>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// The folded result of all choices of a chunk.
#[derive(Debug, Default)]
struct ChoicesScan {
    count: u32,
    carries_token: bool,
    answers: bool,
    token_ids: Option<u64>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceScan {
    #[serde(default)]
    delta: Option<DeltaScan>,
    #[serde(default)]
    text: Option<Text>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    token_ids: Option<Count>,
    #[serde(default)]
    logprobs: Option<LogprobsScan>,
}

/// Chat `logprobs: {"content": [...]}` or completions `logprobs: {"tokens": [...]}`.
#[derive(Deserialize)]
struct LogprobsScan {
    #[serde(default)]
    content: Option<Count>,
    #[serde(default)]
    tokens: Option<Count>,
}

#[derive(Deserialize)]
struct DeltaScan {
    #[serde(default)]
    role: Option<IgnoredAny>,
    #[serde(default)]
    content: Option<Text>,
    #[serde(default)]
    reasoning_content: Option<Text>,
    #[serde(default)]
    reasoning: Option<Text>,
    #[serde(default)]
    tool_calls: Option<Count>,
    #[serde(default)]
    token_ids: Option<Count>,
}

impl ChoiceScan {
    /// Tokens the choice says it carries: token ids, else logprobs entries.
    fn token_count(&self) -> Option<u64> {
        let ids = self
            .token_ids
            .or(self.delta.as_ref().and_then(|d| d.token_ids));
        let logprobs = self.logprobs.as_ref().and_then(|l| l.content.or(l.tokens));
        ids.or(logprobs).map(|c| c.0)
    }

    /// Carries answer output: a token that is not only reasoning.
    fn answers(&self) -> bool {
        if let Some(text) = self.text {
            return text.present;
        }
        let Some(delta) = &self.delta else {
            return self.carries_token();
        };
        let non_empty = |t: Option<Text>| t.is_some_and(|t| t.non_empty);
        let reasons = non_empty(delta.reasoning_content) || non_empty(delta.reasoning);
        non_empty(delta.content)
            || delta.tool_calls.is_some_and(|c| c.0 > 0)
            || (!reasons && self.carries_token())
    }

    fn carries_token(&self) -> bool {
        if self.token_ids.is_some_and(|c| c.0 > 0) {
            return true;
        }
        if let Some(text) = self.text {
            return text.present;
        }
        let Some(delta) = &self.delta else {
            return false;
        };
        let non_empty = |t: Option<Text>| t.is_some_and(|t| t.non_empty);
        let announces_role = delta.role.is_some();
        let content = delta.content.is_some_and(|t| t.present);
        non_empty(delta.content)
            || non_empty(delta.reasoning_content)
            || non_empty(delta.reasoning)
            || delta.tool_calls.is_some_and(|c| c.0 > 0)
            || delta.token_ids.is_some_and(|c| c.0 > 0)
            || (content && !announces_role)
    }
}

/// A JSON string seen only for whether it is there and non-empty.
#[derive(Debug, Clone, Copy)]
struct Text {
    present: bool,
    non_empty: bool,
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, v: &str) -> Result<Text, E> {
                Ok(Text {
                    present: true,
                    non_empty: !v.is_empty(),
                })
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// The length of a JSON array, counted without storing it.
#[derive(Debug, Clone, Copy)]
struct Count(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl<'de> Visitor<'de> for CountVisitor {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(CountVisitor)
    }
}

impl<'de> Deserialize<'de> for ChoicesScan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ChoicesVisitor;
        impl<'de> Visitor<'de> for ChoicesVisitor {
            type Value = ChoicesScan;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ChoicesScan, A::Error> {
                let mut scan = ChoicesScan::default();
                while let Some(choice) = seq.next_element::<ChoiceScan>()? {
                    scan.count += 1;
                    scan.carries_token |= choice.carries_token();
                    scan.answers |= choice.answers();
                    if let Some(n) = choice.token_count() {
                        *scan.token_ids.get_or_insert(0) += n;
                    }
                    if choice.finish_reason.is_some() {
                        scan.finish_reason = choice.finish_reason;
                    }
                }
                Ok(scan)
            }
        }
        d.deserialize_seq(ChoicesVisitor)
    }
}

/// The answer text of a chunk's first choice (`delta.content` or `text`),
/// for a session's next turn; read only when a reply is kept.
pub fn answer_text(data: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow, default)]
        choices: Vec<RawChoice<'a>>,
    }
    #[derive(Deserialize)]
    struct RawChoice<'a> {
        #[serde(borrow, default)]
        delta: Option<RawDelta<'a>>,
        #[serde(borrow, default)]
        message: Option<RawDelta<'a>>,
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct RawDelta<'a> {
        #[serde(borrow, default)]
        content: Option<Cow<'a, str>>,
    }
    let raw: Raw<'_> = serde_json::from_slice(data).ok()?;
    let choice = raw.choices.into_iter().next()?;
    choice
        .text
        .or(choice.delta.and_then(|d| d.content))
        .or(choice.message.and_then(|m| m.content))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(name: &str) -> Vec<String> {
        let body = crate::testing::fixture_text(&format!("vllm/{name}"));
        body.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }

    fn token_events(name: &str) -> usize {
        events(name)
            .iter()
            .filter(|e| *e != "[DONE]")
            .filter(|e| parse_chunk(e.as_bytes()).unwrap().carries_token)
            .count()
    }

    #[test]
    fn real_vllm_streams_count_one_event_per_token() {
        // 16 tokens each (empty-content token chunks included, role chunk excluded).
        assert_eq!(token_events("chat-stream.sse"), 16);
        assert_eq!(token_events("completions-stream.sse"), 16);
        assert_eq!(token_events("chat-stream-continuous-usage.sse"), 16);
        // n=2: 32 token chunks, one choice each.
        assert_eq!(token_events("chat-stream-n2.sse"), 32);
    }

    #[test]
    fn role_usage_and_finish_chunks() {
        let all = events("chat-stream.sse");
        let role = parse_chunk(all[0].as_bytes()).unwrap();
        assert!(!role.carries_token);
        assert_eq!(role.id.as_deref(), Some("chatcmpl-a2a78dcb0d8477ce"));
        let last_token = parse_chunk(all[16].as_bytes()).unwrap();
        assert!(last_token.carries_token);
        assert_eq!(last_token.finish_reason.as_deref(), Some("length"));
        let usage = parse_chunk(all[17].as_bytes()).unwrap();
        assert!(!usage.carries_token);
        assert_eq!(
            usage.usage,
            Some(Usage {
                prompt_tokens: Some(15),
                completion_tokens: Some(16),
                ..Usage::default()
            })
        );
    }

    #[test]
    fn continuous_usage_rises_by_one_per_token_chunk() {
        let all = events("chat-stream-continuous-usage.sse");
        let counts: Vec<u64> = all[..17]
            .iter()
            .map(|e| {
                parse_chunk(e.as_bytes())
                    .unwrap()
                    .usage
                    .unwrap()
                    .completion_tokens
                    .unwrap()
            })
            .collect();
        assert_eq!(counts, (0..=16).collect::<Vec<u64>>());
    }

    #[test]
    fn other_servers_shapes() {
        // OpenAI-style final chunk: empty delta with a finish reason carries no token.
        let end =
            parse_chunk(br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#).unwrap();
        assert!(!end.carries_token);
        assert_eq!(end.finish_reason.as_deref(), Some("stop"));
        // Role and text together (some servers) is a token.
        assert!(
            parse_chunk(br#"{"choices":[{"delta":{"role":"assistant","content":"Hi"}}]}"#)
                .unwrap()
                .carries_token
        );
        // Reasoning models.
        assert!(
            parse_chunk(br#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#)
                .unwrap()
                .carries_token
        );
        assert!(
            !parse_chunk(br#"{"choices":[{"delta":{"content":null}}]}"#)
                .unwrap()
                .carries_token
        );
        for reasoning in [
            r#"{"choices":[{"delta":{"reasoning_content":"hmm","content":null}}]}"#,
            r#"{"choices":[{"delta":{"reasoning":"so","content":""}}]}"#,
        ] {
            let chunk = parse_chunk(reasoning.as_bytes()).unwrap();
            assert!(chunk.carries_token && !chunk.answers, "{reasoning}");
        }
        let answer = parse_chunk(br#"{"choices":[{"delta":{"content":"4"}}]}"#).unwrap();
        assert!(answer.carries_token && answer.answers);
        // A bundled first chunk with two logprobs entries carries two tokens.
        let bundled = parse_chunk(
            br#"{"choices":[{"delta":{"content":"ab"},"logprobs":{"content":[{"token":"a"},{"token":"b"}]}}]}"#,
        )
        .unwrap();
        assert_eq!(bundled.token_ids, Some(2));
        let text = parse_chunk(
            br#"{"choices":[{"text":" x y","logprobs":{"tokens":[" x"," y"],"token_logprobs":[-1,-2]}}]}"#,
        )
        .unwrap();
        assert_eq!((text.token_ids, text.answers), (Some(2), true));
        let usage = parse_chunk(
            br#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":8},"completion_tokens_details":{"reasoning_tokens":3}}}"#,
        )
        .unwrap()
        .usage
        .unwrap();
        assert_eq!(
            (usage.cached_tokens(), usage.reasoning_tokens()),
            (Some(8), Some(3))
        );
        assert_eq!(
            answer_text(br#"{"choices":[{"delta":{"content":"h\u00e9"}}]}"#).as_deref(),
            Some("h\u{e9}")
        );
        assert_eq!(
            answer_text(br#"{"choices":[{"text":"t"}]}"#).as_deref(),
            Some("t")
        );
        let ids =
            parse_chunk(br#"{"choices":[{"delta":{"content":""},"token_ids":[5,6,7]}]}"#).unwrap();
        assert_eq!(ids.token_ids, Some(3));
        let err =
            parse_chunk(br#"{"error":{"message":"boom","type":"InternalServerError"}}"#).unwrap();
        assert_eq!(err.error.as_deref(), Some("boom"));
        assert!(parse_chunk(b"{not json").is_err());
        assert!(
            parse_chunk(br#"{"choices":[{"delta":{"content":"\u00e9\ufffd"}}]}"#)
                .unwrap()
                .carries_token
        );
    }
}
