//! Counting prompt tokens: a local `tokenizer.json` (exact), the server's
//! `POST /tokenize` (exact for that server), or an approximation when neither
//! is available (then the server's `usage` is what gets recorded).

use crate::record::CountSource;
use anyhow::Context;
use std::path::Path;

/// How prompt tokens are counted.
pub enum TokenCounter {
    Tokenizer(Box<tokenizers::Tokenizer>),
    Server {
        http: reqwest::Client,
        url: String,
        model: String,
    },
    /// Roughly one token per word of the synthetic vocabulary.
    Estimate,
}

impl TokenCounter {
    /// A counter from a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{}: not a tokenizer.json: {e}", path.display()))?;
        Ok(TokenCounter::Tokenizer(Box::new(tokenizer)))
    }

    /// The server's `/tokenize` when it answers for this model, else `None`.
    pub async fn from_server(http: &reqwest::Client, base_url: &str, model: &str) -> Option<Self> {
        let counter = TokenCounter::Server {
            http: http.clone(),
            url: format!("{}/tokenize", base_url.trim_end_matches('/')),
            model: model.to_string(),
        };
        counter.count("probe").await.ok().map(|_| counter)
    }

    /// The counter for a run: `tokenizer` when given, else the server's
    /// `/tokenize`, else an estimate (with a note saying so).
    pub async fn choose(
        tokenizer: Option<&Path>,
        http: &reqwest::Client,
        base_url: &str,
        model: &str,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Self> {
        if let Some(path) = tokenizer {
            return Self::from_file(path);
        }
        if let Some(counter) = Self::from_server(http, base_url, model).await {
            return Ok(counter);
        }
        notes.push(
            "prompt lengths are approximate (no --tokenizer, no /tokenize); \
             the server's usage counts are recorded"
                .into(),
        );
        Ok(TokenCounter::Estimate)
    }

    pub fn source(&self) -> CountSource {
        match self {
            TokenCounter::Tokenizer(_) => CountSource::Tokenizer,
            TokenCounter::Server { .. } => CountSource::ServerTokenize,
            TokenCounter::Estimate => CountSource::Estimate,
        }
    }

    /// Tokens in `text` (no special tokens, no chat template).
    pub async fn count(&self, text: &str) -> anyhow::Result<u64> {
        match self {
            TokenCounter::Tokenizer(tokenizer) => {
                let encoding = tokenizer
                    .encode(text, false)
                    .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))?;
                Ok(encoding.len() as u64)
            }
            TokenCounter::Server { http, url, model } => {
                let body = serde_json::json!({"model": model, "prompt": text, "add_special_tokens": false});
                let answer: serde_json::Value = http
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .with_context(|| format!("POST {url}"))?
                    .json()
                    .await
                    .with_context(|| format!("POST {url}: not JSON"))?;
                answer
                    .get("count")
                    .and_then(|c| c.as_u64())
                    .or_else(|| {
                        answer
                            .get("tokens")
                            .and_then(|t| t.as_array())
                            .map(|t| t.len() as u64)
                    })
                    .with_context(|| format!("POST {url}: no `count` in the answer"))
            }
            TokenCounter::Estimate => Ok(text.split_whitespace().count() as u64),
        }
    }
}
