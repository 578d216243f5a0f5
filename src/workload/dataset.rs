//! A JSONL dataset of prompts: each line `{"prompt": "..."}` or
//! `{"messages": [...]}`, with an optional `"max_tokens"` and `"images"`
//! (paths relative to the file, or `data:` / `file://` / `http(s)://` URLs).
//! Read lazily ([`Cycling`]: from the start again when the run needs more);
//! a bad line is an error naming the file and the line.

use super::images::Image;
use super::reader::{Entry, EntryReader};
use super::{Item, Prompt};
use anyhow::{bail, Context};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A dataset read entry by entry, from the start again at its end.
pub struct Cycling {
    path: PathBuf,
    reader: EntryReader,
    /// Entries of this pass that gave the run something.
    used_in_pass: u64,
}

impl Cycling {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            reader: EntryReader::open(path)?,
            used_in_pass: 0,
        })
    }

    /// The next entry, reading the file again from the start at its end;
    /// `what` names what was looked for when a whole pass gave nothing.
    pub fn next_entry(&mut self, what: &str) -> anyhow::Result<Entry> {
        if let Some(entry) = self.reader.next_entry()? {
            return Ok(entry);
        }
        if self.used_in_pass == 0 {
            bail!("no entry of {} gives {what}", self.path.display());
        }
        self.used_in_pass = 0;
        self.reader = EntryReader::open(&self.path)?;
        self.next_entry(what)
    }

    /// The entry gave the run a request or a session.
    pub fn used(&mut self) {
        self.used_in_pass += 1;
    }

    /// Where `entry` is, for errors.
    pub fn place(&self, entry: &Entry) -> String {
        self.reader.place(entry)
    }

    /// The folder relative image paths start from.
    pub fn base(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// One prompt line as an item.
pub fn item(value: &Value, default_max_tokens: Option<u64>, base: &Path) -> anyhow::Result<Item> {
    let prompt = match (value.get("prompt"), value.get("messages")) {
        (Some(Value::String(text)), None) if !text.is_empty() => Prompt::Text(text.clone()),
        (None, Some(Value::Array(messages))) if !messages.is_empty() => {
            check_messages(messages)?;
            Prompt::Messages(Value::Array(messages.clone()))
        }
        (Some(_), Some(_)) => bail!("has both `prompt` and `messages`; give one"),
        _ => bail!("needs a non-empty string `prompt` or a non-empty `messages` array"),
    };
    let mut item = Item::new(prompt, max_tokens(value, default_max_tokens)?);
    item.images = item_images(value, base)?;
    Ok(item)
}

/// Every message has a string `role` and a `content`.
pub fn check_messages(messages: &[Value]) -> anyhow::Result<()> {
    for (i, message) in messages.iter().enumerate() {
        if message.get("role").and_then(Value::as_str).is_none() || message.get("content").is_none()
        {
            bail!("messages[{i}] needs a string `role` and a `content`");
        }
    }
    Ok(())
}

/// The entry's `max_tokens`, else the run's.
pub fn max_tokens(value: &Value, default: Option<u64>) -> anyhow::Result<Option<u64>> {
    match value.get("max_tokens") {
        None | Some(Value::Null) => Ok(default),
        Some(v) => Ok(Some(
            v.as_u64()
                .filter(|n| *n > 0)
                .context("`max_tokens` must be a positive integer")?,
        )),
    }
}

/// The entry's `images`: URLs as given, paths (relative to `base`) read.
pub fn item_images(value: &Value, base: &Path) -> anyhow::Result<Vec<Arc<Image>>> {
    let Some(images) = value.get("images") else {
        return Ok(Vec::new());
    };
    let images = images
        .as_array()
        .context("`images` must be an array of paths or URLs")?;
    images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let text = image
                .as_str()
                .with_context(|| format!("images[{i}] must be a path or a URL"))?;
            let is_url = ["http://", "https://", "data:", "file://"]
                .iter()
                .any(|scheme| text.starts_with(scheme));
            let image = match is_url {
                true => Image {
                    url: text.to_string(),
                    size: None,
                    bytes: None,
                },
                false => {
                    Image::from_file(&base.join(text)).with_context(|| format!("images[{i}]"))?
                }
            };
            Ok(Arc::new(image))
        })
        .collect()
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

    fn check(path: &Path) -> anyhow::Result<(u64, bool)> {
        let reader = EntryReader::open(path)?;
        super::super::reader::check_upfront(path, reader, |e| {
            item(&e.value, None, Path::new(".")).map(drop)
        })
    }

    #[test]
    fn reads_prompts_and_messages_again_and_again() {
        let f = file("{\"prompt\":\"hi\",\"max_tokens\":5}\n\n{\"messages\":[{\"role\":\"user\",\"content\":\"yo\"}]}\n");
        let mut cycling = Cycling::open(f.path()).unwrap();
        let mut items = Vec::new();
        for _ in 0..3 {
            let entry = cycling.next_entry("a prompt").unwrap();
            items.push(item(&entry.value, Some(9), cycling.base()).unwrap());
            cycling.used();
        }
        assert_eq!(items[0].prompt, Prompt::Text("hi".into()));
        assert_eq!(items[0].max_tokens, Some(5));
        assert_eq!(items[1].max_tokens, Some(9));
        assert_eq!(items[2], items[0], "the file is read again from the start");
    }

    #[test]
    fn a_bad_line_names_file_and_line() {
        for (text, needle) in [
            ("{\"prompt\":\"ok\"}\n{\"prompt\":\n", ":2: not JSON"),
            ("{\"prompt\":\"ok\"}\n{\"text\":\"x\"}\n", ":2: needs"),
            ("{\"messages\":[{\"content\":\"x\"}]}\n", "role"),
            ("{\"prompt\":\"x\",\"max_tokens\":-3}\n", "max_tokens"),
            (
                "{\"prompt\":\"x\",\"images\":[\"missing.png\"]}\n",
                "images[0]",
            ),
        ] {
            let f = file(text);
            let err = format!("{:#}", check(f.path()).unwrap_err());
            assert!(err.contains(needle), "{err}");
            assert!(err.contains(&f.path().display().to_string()), "{err}");
        }
        let empty = file("\n");
        assert!(format!("{:#}", check(empty.path()).unwrap_err()).contains("no entries"));
    }

    #[test]
    fn images_are_urls_as_given_or_files_read() {
        let dir = tempfile::tempdir().unwrap();
        let png = super::super::images::generate(3, 20, 10, super::super::images::ImageFormat::Png);
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            png.url.split_once(',').unwrap().1,
        )
        .unwrap();
        std::fs::write(dir.path().join("cat.png"), bytes).unwrap();
        let value = serde_json::json!({"prompt": "what is it", "images": ["cat.png", "https://example.invalid/x.jpg"]});
        let item = item(&value, None, dir.path()).unwrap();
        assert_eq!(item.images[0].size, Some((20, 10)));
        assert!(item.images[0].url.starts_with("data:image/png;base64,"));
        assert_eq!(item.images[1].url, "https://example.invalid/x.jpg");
        assert_eq!(
            super::super::images::info(&item.images).unwrap().pixels,
            None
        );
    }
}
