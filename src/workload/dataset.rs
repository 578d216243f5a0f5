//! A JSONL dataset of prompts: each line `{"prompt": "..."}` or
//! `{"messages": [...]}`, with an optional `"max_tokens"`. The whole file is
//! read and checked before any request is sent; a bad line is an error naming
//! the file and the line.

use super::{Item, Prompt};
use crate::record::CountSource;
use anyhow::{bail, Context};
use serde_json::Value;
use std::path::Path;

/// Reads and validates every line of a dataset.
pub fn load(path: &Path, default_max_tokens: Option<u64>) -> anyhow::Result<Vec<Item>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read dataset {}", path.display()))?;
    let mut items = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), number + 1);
        let value: Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        items.push(item(&value, default_max_tokens).with_context(at)?);
    }
    if items.is_empty() {
        bail!("dataset {} has no prompts", path.display());
    }
    Ok(items)
}

fn item(value: &Value, default_max_tokens: Option<u64>) -> anyhow::Result<Item> {
    let prompt = match (value.get("prompt"), value.get("messages")) {
        (Some(Value::String(text)), None) if !text.is_empty() => Prompt::Text(text.clone()),
        (None, Some(Value::Array(messages))) if !messages.is_empty() => {
            for (i, message) in messages.iter().enumerate() {
                if message.get("role").and_then(Value::as_str).is_none()
                    || message.get("content").is_none()
                {
                    bail!("messages[{i}] needs a string `role` and a `content`");
                }
            }
            Prompt::Messages(Value::Array(messages.clone()))
        }
        (Some(_), Some(_)) => bail!("has both `prompt` and `messages`; give one"),
        _ => bail!("needs a non-empty string `prompt` or a non-empty `messages` array"),
    };
    let max_tokens = match value.get("max_tokens") {
        None | Some(Value::Null) => default_max_tokens,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| *n > 0)
                .context("`max_tokens` must be a positive integer")?,
        ),
    };
    Ok(Item {
        prompt,
        input_tokens: None,
        input_tokens_source: CountSource::Usage,
        max_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn reads_prompts_and_messages() {
        let f = file("{\"prompt\":\"hi\",\"max_tokens\":5}\n\n{\"messages\":[{\"role\":\"user\",\"content\":\"yo\"}]}\n");
        let items = load(f.path(), Some(9)).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].prompt, Prompt::Text("hi".into()));
        assert_eq!(items[0].max_tokens, Some(5));
        assert_eq!(items[1].max_tokens, Some(9));
    }

    #[test]
    fn a_bad_line_names_file_and_line() {
        for (text, needle) in [
            ("{\"prompt\":\"ok\"}\n{\"prompt\":\n", ":2: not JSON"),
            ("{\"prompt\":\"ok\"}\n{\"text\":\"x\"}\n", ":2"),
            ("{\"messages\":[{\"content\":\"x\"}]}\n", "role"),
            ("{\"prompt\":\"x\",\"max_tokens\":-3}\n", "max_tokens"),
        ] {
            let f = file(text);
            let err = format!("{:#}", load(f.path(), None).unwrap_err());
            assert!(err.contains(needle), "{err}");
            assert!(err.contains(&f.path().display().to_string()), "{err}");
        }
        let empty = file("\n");
        assert!(format!("{:#}", load(empty.path(), None).unwrap_err()).contains("no prompts"));
    }
}
