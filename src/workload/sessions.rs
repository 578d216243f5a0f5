//! Multi-turn sessions: each turn sends the whole history so far, the model's
//! *actual* replies included, so prompts grow as they do in a chat. A
//! session's turns go in order on one slot of the load (the next turn waits
//! for the answer and the turn's think time); its id goes in the
//! `X-Session-Id` header so routers can keep affinity.
//!
//! Sessions come from a JSONL file (`--dataset-format sessions`), from a
//! ShareGPT conversation (`--sharegpt-turns all`), or are synthetic
//! (`--turns MEAN[:STD]`, `--think-time MEAN[:STD]`).

use super::dataset::{check_messages, item_images};
use super::images::Image;
use super::{BodyOptions, Item, Prompt};
use crate::client::PreparedRequest;
use crate::units::{parse_duration, BadValue};
use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// One session as planned: its id and its turns.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: Arc<str>,
    pub turns: Vec<Turn>,
}

/// One turn: what it adds to the history, its output budget, its think time.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// Messages the turn appends (its user message, a system message first).
    pub messages: Vec<Value>,
    pub max_tokens: Option<u64>,
    /// Waited after the previous answer before this turn is sent.
    pub delay: Duration,
    pub images: Vec<Arc<Image>>,
}

/// `--turns` and `--think-time` of synthetic sessions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SyntheticSessions {
    pub turns: super::LengthsConfig,
    pub think_time: ThinkTime,
}

/// A think time: `MEAN` or `MEAN:STDDEV` durations, e.g. `2s:1s`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct ThinkTime {
    #[serde(serialize_with = "seconds")]
    pub mean: Duration,
    #[serde(serialize_with = "seconds")]
    pub stddev: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl std::str::FromStr for ThinkTime {
    type Err = BadValue;
    fn from_str(text: &str) -> Result<Self, BadValue> {
        let (mean, stddev) = match text.split_once(':') {
            Some((m, s)) => (parse_duration(m)?, parse_duration(s)?),
            None => (parse_duration(text)?, Duration::ZERO),
        };
        Ok(Self { mean, stddev })
    }
}

impl ThinkTime {
    /// A think time drawn from the distribution (never negative).
    pub fn sample(&self, rng: &mut StdRng) -> Duration {
        if self.stddev.is_zero() {
            return self.mean;
        }
        let normal = Normal::new(self.mean.as_secs_f64(), self.stddev.as_secs_f64())
            .expect("stddev is a duration, so >= 0");
        Duration::from_secs_f64(normal.sample(rng).max(0.0))
    }
}

/// A session from one JSONL entry:
/// `{"session_id", "turns": [{"messages"|"prompt", "max_tokens", "delay_ms", "images"}]}`.
pub fn parse(
    value: &Value,
    default_max_tokens: Option<u64>,
    base: &Path,
) -> anyhow::Result<Session> {
    let id = match value.get("session_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => bail!("needs a `session_id` (a non-empty string or a number)"),
    };
    let turns = match value.get("turns") {
        Some(Value::Array(turns)) if !turns.is_empty() => turns,
        Some(Value::Array(_)) => bail!("session `{id}` has no turns"),
        _ => bail!("session `{id}` needs a `turns` array"),
    };
    let turns = turns
        .iter()
        .enumerate()
        .map(|(i, turn)| {
            parse_turn(turn, default_max_tokens, base)
                .with_context(|| format!("session `{id}` turns[{i}]"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Session {
        id: id.into(),
        turns,
    })
}

fn parse_turn(value: &Value, default_max_tokens: Option<u64>, base: &Path) -> anyhow::Result<Turn> {
    let messages = match (value.get("prompt"), value.get("messages")) {
        (Some(Value::String(text)), None) if !text.is_empty() => {
            vec![json!({"role": "user", "content": text})]
        }
        (None, Some(Value::Array(messages))) if !messages.is_empty() => {
            check_messages(messages)?;
            messages.clone()
        }
        (Some(_), Some(_)) => bail!("has both `prompt` and `messages`; give one"),
        _ => bail!("needs a non-empty string `prompt` or a non-empty `messages` array"),
    };
    let delay = match value.get("delay_ms") {
        None | Some(Value::Null) => Duration::ZERO,
        Some(v) => v
            .as_f64()
            .filter(|ms| *ms >= 0.0 && ms.is_finite())
            .map(|ms| Duration::from_secs_f64(ms / 1e3))
            .context("`delay_ms` must be a number of milliseconds >= 0")?,
    };
    let item = super::dataset::max_tokens(value, default_max_tokens)?;
    Ok(Turn {
        messages,
        max_tokens: item,
        delay,
        images: item_images(value, base)?,
    })
}

impl Session {
    /// A session of ShareGPT-like exchanges: each user text a turn, no think time.
    pub fn from_texts(id: Arc<str>, system: Option<&str>, turns: Vec<(String, u64)>) -> Self {
        let turns = turns
            .into_iter()
            .enumerate()
            .map(|(i, (text, max_tokens))| {
                let mut messages = Vec::new();
                if let (0, Some(system)) = (i, system) {
                    messages.push(json!({"role": "system", "content": system}));
                }
                messages.push(json!({"role": "user", "content": text}));
                Turn {
                    messages,
                    max_tokens: Some(max_tokens),
                    delay: Duration::ZERO,
                    images: Vec::new(),
                }
            })
            .collect();
        Self { id, turns }
    }
}

/// A session being sent: its history grows with every answer.
#[derive(Debug)]
pub struct SessionRun {
    session: Session,
    index: u64,
    warmup: bool,
    body: Arc<BodyOptions>,
    run_id: Arc<str>,
    history: Vec<Value>,
    next: usize,
}

impl SessionRun {
    /// Session `index` of the workload, its requests built with `body`.
    pub fn new(
        session: Session,
        index: u64,
        warmup: bool,
        body: Arc<BodyOptions>,
        run_id: Arc<str>,
    ) -> Self {
        Self {
            session,
            index,
            warmup,
            body,
            run_id,
            history: Vec::new(),
            next: 0,
        }
    }

    pub fn id(&self) -> &str {
        &self.session.id
    }

    pub fn turns(&self) -> usize {
        self.session.turns.len()
    }

    /// The next turn's request (the history so far and the turn's messages)
    /// and its think time; `None` when the session is done.
    pub fn next_turn(&mut self) -> Option<(PreparedRequest, Duration)> {
        let turn = self.session.turns.get(self.next)?;
        let start = self.history.len();
        self.history.extend(turn.messages.iter().cloned());
        // Images stay in the history: later turns send them again, as a chat does.
        let mut added = Value::Array(self.history.split_off(start));
        super::attach_images(&mut added, &turn.images);
        if let Value::Array(added) = added {
            self.history.extend(added);
        }
        let item = Item::new(
            Prompt::Messages(Value::Array(self.history.clone())),
            turn.max_tokens,
        );
        let mut request = self
            .body
            .prepare(self.index, &self.run_id, self.warmup, &item);
        request.request_id = format!("{}-t{}", request.request_id, self.next);
        request.meta.session_id = Some(self.session.id.clone());
        request.meta.turn = Some(self.next as u32);
        request.meta.images = super::images::info(&turn.images);
        request.meta.keep_reply = self.next + 1 < self.session.turns.len();
        let delay = turn.delay;
        self.next += 1;
        Some((request, delay))
    }

    /// The model's answer to the last turn, for the next turn's history.
    pub fn answered(&mut self, reply: String) {
        self.history
            .push(json!({"role": "assistant", "content": reply}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Endpoint;

    #[test]
    fn the_history_carries_the_actual_replies() {
        let session = parse(
            &json!({"session_id": "s1", "turns": [
                {"prompt": "hello", "max_tokens": 4},
                {"messages": [{"role": "user", "content": "and then?"}], "delay_ms": 250}
            ]}),
            None,
            Path::new("."),
        )
        .unwrap();
        let body = Arc::new(BodyOptions::new(Endpoint::Chat, "m"));
        let mut run = SessionRun::new(session, 7, false, body, "run".into());
        let (first, delay) = run.next_turn().unwrap();
        assert_eq!(delay, Duration::ZERO);
        assert_eq!(first.request_id, "run-000007-t0");
        assert!(first.meta.keep_reply);
        assert_eq!(first.meta.session_id.as_deref(), Some("s1"));
        run.answered("hi there".into());
        let (second, delay) = run.next_turn().unwrap();
        assert_eq!(delay, Duration::from_millis(250));
        assert_eq!(second.meta.turn, Some(1));
        assert!(!second.meta.keep_reply, "the last answer is not needed");
        let body: Value = serde_json::from_slice(&second.body).unwrap();
        let roles: Vec<&str> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(body["messages"][1]["content"], "hi there");
        assert!(run.next_turn().is_none());
    }

    #[test]
    fn bad_sessions_say_which_turn() {
        for (value, needle) in [
            (
                json!({"session_id": "a", "turns": []}),
                "session `a` has no turns",
            ),
            (json!({"turns": [{"prompt": "x"}]}), "session_id"),
            (
                json!({"session_id": "b", "turns": [{"prompt": "x"}, {"text": "y"}]}),
                "session `b` turns[1]",
            ),
            (
                json!({"session_id": "c", "turns": [{"prompt": "x", "delay_ms": -1}]}),
                "delay_ms",
            ),
        ] {
            let err = format!("{:#}", parse(&value, None, Path::new(".")).unwrap_err());
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn think_times_parse_and_never_go_negative() {
        let t: ThinkTime = "2s:1s".parse().unwrap();
        assert_eq!(
            (t.mean, t.stddev),
            (Duration::from_secs(2), Duration::from_secs(1))
        );
        assert_eq!("500ms".parse::<ThinkTime>().unwrap().stddev, Duration::ZERO);
        assert!("2".parse::<ThinkTime>().is_err());
        let wide: ThinkTime = "10ms:1s".parse().unwrap();
        let mut rng = rand::SeedableRng::seed_from_u64(1);
        assert!((0..100).all(|_| wide.sample(&mut rng) < Duration::from_secs(10)));
    }
}
