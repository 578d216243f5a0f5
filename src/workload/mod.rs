//! What to send: synthetic prompts with chosen token-length distributions
//! (alone, in shared-prefix groups or as multi-turn sessions), dataset files
//! (JSONL prompts, ShareGPT, sessions), timed traces (Mooncake JSONL, CSV),
//! and images for vision models; each turned into a ready request body a
//! bounded distance ahead of the schedule ([`feed`]), read lazily from files
//! ([`reader`]).

pub mod dataset;
pub mod feed;
pub mod images;
pub mod reader;
pub mod sessions;
pub mod sharegpt;
pub mod synthetic;
pub mod tokens;
pub mod trace;

use crate::client::{PreparedRequest, RequestMeta};
use crate::record::{CountSource, Endpoint};
use crate::units::BadValue;
use bytes::Bytes;
use images::Image;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where prompts come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    Synthetic {
        input_tokens: LengthsConfig,
        output_tokens: LengthsConfig,
        shared_prefix_tokens: u64,
        /// Distinct shared prefixes (`--prefix-groups`); each prompt draws one.
        prefix_groups: u64,
        tokenizer: Option<PathBuf>,
        /// Multi-turn sessions (`--turns`, `--think-time`), when asked for.
        sessions: Option<sessions::SyntheticSessions>,
    },
    Dataset {
        path: PathBuf,
        format: DatasetFormat,
        /// ShareGPT: the first exchange only, or the whole conversation as a session.
        sharegpt_turns: sharegpt::Turns,
        filters: sharegpt::LengthFilters,
        tokenizer: Option<PathBuf>,
    },
    /// `--trace-replay`: requests at their timestamps.
    Trace {
        path: PathBuf,
        time_scale: f64,
        tokenizer: Option<PathBuf>,
    },
}

impl Source {
    /// Sends multi-turn sessions (so `--requests` counts sessions, not requests).
    pub fn is_sessions(&self) -> bool {
        match self {
            Source::Synthetic { sessions, .. } => sessions.is_some(),
            Source::Dataset {
                format,
                sharegpt_turns,
                ..
            } => {
                *format == DatasetFormat::Sessions
                    || (*format == DatasetFormat::Sharegpt
                        && *sharegpt_turns == sharegpt::Turns::All)
            }
            Source::Trace { .. } => false,
        }
    }
}

/// What a `--dataset` file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    /// JSONL `{"prompt"}` or `{"messages"}` lines, optional `max_tokens` and `images`.
    Prompts,
    /// ShareGPT: a JSON array (or JSONL) of `{"id", "conversations": [{"from", "value"}]}`.
    Sharegpt,
    /// JSONL `{"session_id", "turns": [{"messages"|"prompt", "max_tokens", "delay_ms"}]}`.
    Sessions,
}

impl DatasetFormat {
    /// The format an entry's keys show, when they show one.
    pub fn detect(entry: &Value) -> Option<Self> {
        let has = |key| entry.get(key).is_some();
        match (
            has("conversations"),
            has("turns"),
            has("prompt") || has("messages"),
        ) {
            (true, false, false) => Some(Self::Sharegpt),
            (false, true, false) => Some(Self::Sessions),
            (false, false, true) => Some(Self::Prompts),
            _ => None,
        }
    }
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
    /// `--ttft-method two-pass`: every request also gets a `max_tokens: 1` first pass.
    pub two_pass: bool,
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
            two_pass: false,
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
    /// Sent as `image_url` parts of the last user message.
    pub images: Vec<Arc<Image>>,
    /// Trace replay: when, after the trace's first request, this one is meant to go.
    pub at: Option<Duration>,
}

impl Item {
    /// An item of text or messages, nothing else known.
    pub fn new(prompt: Prompt, max_tokens: Option<u64>) -> Self {
        Self {
            prompt,
            input_tokens: None,
            input_tokens_source: CountSource::Usage,
            max_tokens,
            images: Vec::new(),
            at: None,
        }
    }

    /// The item with `tag` and a space before its prompt's first text.
    fn tagged(&self, tag: &str) -> Self {
        let mut item = self.clone();
        match &mut item.prompt {
            Prompt::Text(text) => *text = format!("{tag} {text}"),
            Prompt::Messages(messages) => {
                if let Some(content) = messages.pointer_mut("/0/content") {
                    match content {
                        Value::String(text) => *text = format!("{tag} {text}"),
                        Value::Array(parts) => {
                            parts.insert(0, json!({"type": "text", "text": tag}))
                        }
                        _ => {}
                    }
                }
            }
        }
        item
    }
}

impl BodyOptions {
    /// The JSON body of one request.
    pub fn body(&self, item: &Item) -> Bytes {
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model));
        match (&item.prompt, self.endpoint) {
            (Prompt::Text(text), Endpoint::Chat) => {
                let mut messages = json!([{"role": "user", "content": text}]);
                attach_images(&mut messages, &item.images);
                body.insert("messages".into(), messages);
            }
            (Prompt::Messages(messages), Endpoint::Chat) => {
                let mut messages = messages.clone();
                attach_images(&mut messages, &item.images);
                body.insert("messages".into(), messages);
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

    /// Turns an item into a request ready to send. With two passes, each
    /// pass's prompt begins with its own tag, so the second cannot be served
    /// from the prefix cache the first filled.
    pub fn prepare(&self, index: u64, run_id: &str, warmup: bool, item: &Item) -> PreparedRequest {
        let request_id = format!("{run_id}-{index:06}");
        let (body, first_pass) = match self.two_pass {
            false => (self.body(item), None),
            true => {
                let mut first = item.tagged(&pass_tag(&request_id, 1));
                first.max_tokens = Some(1);
                let full = self.body(&item.tagged(&pass_tag(&request_id, 2)));
                (full, Some(self.body(&first)))
            }
        };
        PreparedRequest {
            index,
            request_id,
            warmup,
            body,
            max_tokens: item.max_tokens,
            input_tokens: item.input_tokens,
            input_tokens_source: Some(item.input_tokens_source),
            meta: RequestMeta {
                images: images::info(&item.images),
                at: item.at,
                first_pass,
                ..RequestMeta::default()
            },
        }
    }
}

/// A short tag unique to a request and pass (`pass 1a2b3c4d:`).
fn pass_tag(request_id: &str, pass: u8) -> String {
    let hash = crate::hash::fnv1a_extend(crate::hash::FNV_OFFSET, request_id.bytes().chain([pass]));
    format!("pass {:08x}:", hash as u32)
}

/// Adds `images` as `image_url` parts to the last user message (its text
/// content becomes a text part first).
fn attach_images(messages: &mut Value, images: &[Arc<Image>]) {
    if images.is_empty() {
        return;
    }
    let Some(message) = messages
        .as_array_mut()
        .and_then(|m| m.iter_mut().rev().find(|m| m["role"] == "user"))
    else {
        return;
    };
    let mut parts = match message["content"].take() {
        Value::String(text) => vec![json!({"type": "text", "text": text})],
        Value::Array(parts) => parts,
        _ => Vec::new(),
    };
    parts.extend(
        images
            .iter()
            .map(|i| json!({"type": "image_url", "image_url": {"url": i.url}})),
    );
    message["content"] = Value::Array(parts);
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
            two_pass: false,
        }
    }

    fn item(prompt: Prompt) -> Item {
        Item {
            input_tokens: Some(3),
            input_tokens_source: CountSource::Estimate,
            ..Item::new(prompt, Some(16))
        }
    }

    #[test]
    fn images_become_parts_of_the_last_user_message() {
        let image = Arc::new(images::generate(1, 8, 8, images::ImageFormat::Png));
        let mut with_images = item(Prompt::Text("look".into()));
        with_images.images = vec![image.clone(), image];
        let body = options(Endpoint::Chat, None).body(&with_images);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let parts = v["messages"][0]["content"].as_array().unwrap();
        assert_eq!(parts[0], json!({"type": "text", "text": "look"}));
        assert_eq!(parts.len(), 3);
        assert!(parts[2]["image_url"]["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,"));
        let prepared = options(Endpoint::Chat, None).prepare(0, "r", false, &with_images);
        assert_eq!(prepared.meta.images.unwrap().count, 2);
    }

    #[test]
    fn two_passes_differ_in_their_tag_and_the_first_asks_for_one_token() {
        let mut two = options(Endpoint::Chat, None);
        two.two_pass = true;
        let prepared = two.prepare(3, "run", false, &item(Prompt::Text("a b c".into())));
        let full: Value = serde_json::from_slice(&prepared.body).unwrap();
        let first: Value = serde_json::from_slice(&prepared.meta.first_pass.unwrap()).unwrap();
        assert_eq!(
            (first["max_tokens"].as_u64(), full["max_tokens"].as_u64()),
            (Some(1), Some(16))
        );
        let text = |v: &Value| v["messages"][0]["content"].as_str().unwrap().to_string();
        assert_ne!(text(&first), text(&full));
        assert!(text(&full).starts_with("pass ") && text(&full).ends_with(": a b c"));
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
