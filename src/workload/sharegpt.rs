//! ShareGPT conversations: `{"id", "conversations": [{"from", "value"}]}`
//! entries of a JSON array (or JSONL). As `vllm bench serve` does, the first
//! human turn is the prompt and the following assistant turn's token length
//! is the requested output, with the same length filters (prompt and output
//! at least 4 tokens, prompt at most 1024, both at most 2048; each a flag);
//! `--sharegpt-turns all` makes the conversation a multi-turn session.

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;

/// Which part of a conversation a request is made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Turns {
    /// The first human turn, answered once.
    #[default]
    First,
    /// Every human turn, in order, as one session.
    All,
}

/// vLLM's ShareGPT length filters (in tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LengthFilters {
    /// Prompts and outputs shorter than this are skipped.
    pub min_tokens: u64,
    pub max_prompt_tokens: u64,
    /// Prompt plus output.
    pub max_total_tokens: u64,
}

impl Default for LengthFilters {
    fn default() -> Self {
        Self {
            min_tokens: 4,
            max_prompt_tokens: 1024,
            max_total_tokens: 2048,
        }
    }
}

impl LengthFilters {
    /// Why a prompt and output of these lengths are skipped; `None` when kept.
    /// `fixed_output` (a `--max-tokens`) lifts the output minimum, as in vLLM.
    pub fn reject(&self, prompt: u64, output: u64, fixed_output: bool) -> Option<&'static str> {
        if prompt < self.min_tokens || (!fixed_output && output < self.min_tokens) {
            Some("too short")
        } else if prompt > self.max_prompt_tokens || prompt + output > self.max_total_tokens {
            Some("too long")
        } else {
            None
        }
    }
}

/// A conversation: its id, system prompt, and human → assistant exchanges.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: String,
    pub system: Option<String>,
    /// Each human text and the assistant's reply to it (empty when none followed).
    pub exchanges: Vec<(String, String)>,
}

/// Reads one ShareGPT entry; a malformed one is an error saying what is wrong.
pub fn parse(value: &Value) -> anyhow::Result<Conversation> {
    let id = match value.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null) => String::new(),
        Some(_) => bail!("`id` must be a string"),
    };
    let turns = value
        .get("conversations")
        .and_then(Value::as_array)
        .context("needs a `conversations` array")?;
    let mut system = None;
    let mut exchanges: Vec<(String, String)> = Vec::new();
    for (i, turn) in turns.iter().enumerate() {
        let at = || format!("conversations[{i}]");
        let from = turn
            .get("from")
            .and_then(Value::as_str)
            .with_context(|| format!("{} needs a string `from`", at()))?;
        let text = turn
            .get("value")
            .and_then(Value::as_str)
            .with_context(|| format!("{} needs a string `value`", at()))?;
        match from {
            "human" | "user" => exchanges.push((text.to_string(), String::new())),
            "gpt" | "chatgpt" | "assistant" | "bing" | "bard" | "model" => {
                // An answer with no question before it (some dumps start so) is skipped.
                if let Some((_, reply)) = exchanges.last_mut().filter(|(_, r)| r.is_empty()) {
                    *reply = text.to_string();
                }
            }
            "system" => {
                system.get_or_insert_with(|| text.to_string());
            }
            other => bail!(
                "{}: `from` is `{other}`; expected human, gpt or system",
                at()
            ),
        }
    }
    Ok(Conversation {
        id,
        system,
        exchanges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exchanges_pair_human_turns_with_the_replies() {
        let c = parse(&json!({"id": "x1", "conversations": [
            {"from": "system", "value": "be kind"},
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "hello there"},
            {"from": "human", "value": "bye"}
        ]}))
        .unwrap();
        assert_eq!(c.system.as_deref(), Some("be kind"));
        assert_eq!(
            c.exchanges,
            [
                ("hi".into(), "hello there".into()),
                ("bye".into(), String::new())
            ]
        );
    }

    #[test]
    fn malformed_entries_say_what() {
        for (value, needle) in [
            (json!({"id": "a"}), "conversations"),
            (
                json!({"conversations": [{"from": "human"}]}),
                "conversations[0] needs a string `value`",
            ),
            (
                json!({"conversations": [{"from": "robot", "value": "x"}]}),
                "`from` is `robot`",
            ),
            (json!({"id": [1], "conversations": []}), "`id`"),
        ] {
            let err = format!("{:#}", parse(&value).unwrap_err());
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn filters_are_vllms() {
        let f = LengthFilters::default();
        assert_eq!(f.reject(3, 10, false), Some("too short"));
        assert_eq!(f.reject(10, 3, false), Some("too short"));
        assert_eq!(f.reject(10, 3, true), None);
        assert_eq!(f.reject(1025, 4, false), Some("too long"));
        assert_eq!(f.reject(1000, 1049, false), Some("too long"));
        assert_eq!(f.reject(1000, 1048, false), None);
    }
}
