//! What to send: synthetic prompts with chosen token-length distributions, or
//! a JSONL dataset; each turned into a ready request body a bounded distance
//! ahead of the schedule ([`feed`]).

pub mod dataset;
pub mod feed;
pub mod synthetic;
pub mod tokens;

use crate::client::PreparedRequest;
use crate::record::{CountSource, Endpoint};
use crate::units::BadValue;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// Where prompts come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    Synthetic {
        input_tokens: LengthsConfig,
        output_tokens: LengthsConfig,
        shared_prefix_tokens: u64,
        tokenizer: Option<PathBuf>,
    },
    Dataset {
        path: PathBuf,
    },
}

/// Serializable view of [`Lengths`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LengthsConfig {
    pub mean: u64,
    pub stddev: f64,
}

impl From<Lengths> for LengthsConfig {
    fn from(l: Lengths) -> Self {
        Self {
            mean: l.mean,
            stddev: l.stddev,
        }
    }
}

impl From<LengthsConfig> for Lengths {
    fn from(l: LengthsConfig) -> Self {
        Self {
            mean: l.mean,
            stddev: l.stddev,
        }
    }
}

/// A length distribution: `MEAN` or `MEAN:STDDEV` tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lengths {
    pub mean: u64,
    pub stddev: f64,
}

impl std::str::FromStr for Lengths {
    type Err = BadValue;
    fn from_str(text: &str) -> Result<Self, BadValue> {
        let (mean, stddev) = match text.split_once(':') {
            Some((m, s)) => (m, Some(s)),
            None => (text, None),
        };
        let mean: u64 = mean
            .trim()
            .parse()
            .map_err(|_| BadValue(format!("`{text}` is not MEAN or MEAN:STDDEV tokens")))?;
        let stddev: f64 = match stddev {
            Some(s) => s
                .trim()
                .parse()
                .map_err(|_| BadValue(format!("`{text}`: STDDEV must be a number")))?,
            None => 0.0,
        };
        if mean == 0 || !(stddev >= 0.0 && stddev.is_finite()) {
            return Err(BadValue(format!(
                "`{text}`: MEAN must be > 0 and STDDEV >= 0"
            )));
        }
        Ok(Lengths { mean, stddev })
    }
}

/// How request bodies are built.
#[derive(Debug, Clone)]
pub struct BodyOptions {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    pub ignore_eos: bool,
    pub temperature: Option<f64>,
    /// Merged (deeply) into every body last, so it can override anything.
    pub extra_body: Option<Map<String, Value>>,
}

impl BodyOptions {
    /// Streaming bodies for `model`, no sampling options, nothing extra.
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        Self {
            endpoint,
            model: model.to_string(),
            stream: true,
            ignore_eos: false,
            temperature: None,
            extra_body: None,
        }
    }
}

/// One prompt before it becomes a body.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Messages(Value),
}

/// A workload item: the prompt, its token count if known, and its output budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub prompt: Prompt,
    pub input_tokens: Option<u64>,
    pub input_tokens_source: CountSource,
    pub max_tokens: Option<u64>,
}

impl Item {
    /// The key that keeps items together when a run is split into shards:
    /// every item of one key goes to the same shard. An item is its own unit,
    /// keyed by its `line` (0-based) in the dataset.
    pub fn unit_key(&self, line: usize) -> String {
        line.to_string()
    }
}

impl BodyOptions {
    /// The JSON body of one request.
    pub fn body(&self, item: &Item) -> Bytes {
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model));
        match (&item.prompt, self.endpoint) {
            (Prompt::Text(text), Endpoint::Chat) => {
                body.insert(
                    "messages".into(),
                    json!([{"role": "user", "content": text}]),
                );
            }
            (Prompt::Messages(messages), Endpoint::Chat) => {
                body.insert("messages".into(), messages.clone());
            }
            (Prompt::Text(text), Endpoint::Completions) => {
                body.insert("prompt".into(), json!(text));
            }
            (Prompt::Messages(messages), Endpoint::Completions) => {
                body.insert("prompt".into(), json!(flatten_messages(messages)));
            }
        }
        if let Some(max_tokens) = item.max_tokens {
            body.insert("max_tokens".into(), json!(max_tokens));
        }
        body.insert("stream".into(), json!(self.stream));
        if self.stream {
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        if self.ignore_eos {
            body.insert("ignore_eos".into(), json!(true));
        }
        if let Some(t) = self.temperature {
            body.insert("temperature".into(), json!(t));
        }
        if let Some(extra) = &self.extra_body {
            merge(&mut body, extra);
        }
        Bytes::from(serde_json::to_vec(&Value::Object(body)).expect("JSON values serialize"))
    }

    /// Turns an item into a request ready to send.
    pub fn prepare(&self, index: u64, run_id: &str, warmup: bool, item: &Item) -> PreparedRequest {
        PreparedRequest {
            index,
            request_id: format!("{run_id}-{index:06}"),
            warmup,
            body: self.body(item),
            max_tokens: item.max_tokens,
            input_tokens: item.input_tokens,
            input_tokens_source: Some(item.input_tokens_source),
        }
    }
}

/// Chat messages as one completions prompt: their text contents, one per line.
fn flatten_messages(messages: &Value) -> String {
    let contents =
        messages
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| match m.get("content") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(parts)) => Some(
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                _ => None,
            });
    contents.collect::<Vec<_>>().join("\n")
}

/// Deep merge: objects merge key by key, anything else replaces.
fn merge(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (key, value) in from {
        match (into.get_mut(key), value) {
            (Some(Value::Object(existing)), Value::Object(incoming)) => merge(existing, incoming),
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(endpoint: Endpoint, extra: Option<Value>) -> BodyOptions {
        BodyOptions {
            endpoint,
            model: "m".into(),
            stream: true,
            ignore_eos: true,
            temperature: Some(0.0),
            extra_body: extra.map(|v| v.as_object().unwrap().clone()),
        }
    }

    fn item(prompt: Prompt) -> Item {
        Item {
            prompt,
            input_tokens: Some(3),
            input_tokens_source: CountSource::Estimate,
            max_tokens: Some(16),
        }
    }

    #[test]
    fn chat_body_always_asks_for_usage_and_merges_extra_deeply() {
        let extra = json!({"stream_options": {"continuous_usage_stats": true}, "top_p": 0.9});
        let body = options(Endpoint::Chat, Some(extra)).body(&item(Prompt::Text("a b c".into())));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["messages"][0]["content"], "a b c");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["continuous_usage_stats"], true);
        assert_eq!(v["top_p"], 0.9);
        assert_eq!(
            (v["max_tokens"].as_u64(), v["ignore_eos"].as_bool()),
            (Some(16), Some(true))
        );
    }

    #[test]
    fn completions_body_takes_text_prompts() {
        let messages = json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]);
        let body = options(Endpoint::Completions, None).body(&item(Prompt::Messages(messages)));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["prompt"], "be brief\nhi");
        assert!(v.get("messages").is_none());
    }

    #[test]
    fn lengths_parse() {
        assert_eq!(
            "512".parse::<Lengths>().unwrap(),
            Lengths {
                mean: 512,
                stddev: 0.0
            }
        );
        assert_eq!(
            "128:32".parse::<Lengths>().unwrap(),
            Lengths {
                mean: 128,
                stddev: 32.0
            }
        );
        assert!("0".parse::<Lengths>().is_err());
        assert!("x:1".parse::<Lengths>().is_err());
        assert!("10:-1".parse::<Lengths>().is_err());
    }
}
