//! What the simulator reads of a prompt: the words of a completions prompt
//! or of every chat message (its tokenizer makes one token of each
//! whitespace-separated word), and the tokens of image parts (a `data:`
//! URL's decoded bytes over [`IMAGE_BYTES_PER_TOKEN`], so images count
//! toward prefill).

use super::api::ApiError;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Prompt {
    Text(String),
    Texts(Vec<String>),
    TokenIds(Vec<u32>),
}

#[derive(Debug, Deserialize)]
pub(super) struct Message {
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    image_url: Option<ImageUrl>,
}

#[derive(Debug, Deserialize)]
struct ImageUrl {
    url: String,
}

/// Encoded image bytes that cost one prompt token (a 50 kB JPEG: ~800 tokens).
const IMAGE_BYTES_PER_TOKEN: usize = 64;
/// Tokens of an image given by URL (not fetched).
const IMAGE_URL_TOKENS: u32 = 256;

/// Prompt tokens of the messages' images: a `data:` URL's decoded bytes
/// over [`IMAGE_BYTES_PER_TOKEN`], a fixed count for other URLs.
pub(super) fn image_tokens(messages: &[Message]) -> u32 {
    let parts = messages.iter().filter_map(|m| match &m.content {
        Some(Content::Parts(parts)) => Some(parts),
        _ => None,
    });
    parts
        .flatten()
        .filter_map(|p| p.image_url.as_ref())
        .map(|image| match image.url.split_once(";base64,") {
            Some((_, data)) => (data.len() * 3 / 4).div_ceil(IMAGE_BYTES_PER_TOKEN).max(1) as u32,
            None => IMAGE_URL_TOKENS,
        })
        .sum()
}

/// The words of a prompt or of a conversation's message contents: the
/// simulator's tokenizer makes one token of each whitespace-separated word.
pub(super) fn prompt_words<'a>(
    prompt: Option<&'a Prompt>,
    messages: Option<&'a [Message]>,
) -> Result<Vec<&'a str>, ApiError> {
    let mut words = Vec::new();
    match (prompt, messages) {
        (Some(Prompt::Text(text)), _) => words.extend(text.split_whitespace()),
        (Some(Prompt::Texts(texts)), _) if texts.len() == 1 => {
            words.extend(texts[0].split_whitespace())
        }
        (Some(Prompt::Texts(_)), _) => {
            return Err(ApiError::bad_request(
                "the simulator serves one prompt per request".into(),
                Some("prompt"),
            ))
        }
        (Some(Prompt::TokenIds(_)), _) => {}
        (None, Some(messages)) => {
            for content in messages.iter().filter_map(|m| m.content.as_ref()) {
                match content {
                    Content::Text(text) => words.extend(text.split_whitespace()),
                    Content::Parts(parts) => {
                        for text in parts.iter().filter_map(|p| p.text.as_deref()) {
                            words.extend(text.split_whitespace());
                        }
                    }
                }
            }
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "the request needs `prompt` or `messages`".into(),
                None,
            ))
        }
    }
    Ok(words)
}

pub(super) fn prompt_token_count(
    prompt: Option<&Prompt>,
    messages: Option<&[Message]>,
) -> Result<u32, ApiError> {
    match prompt {
        Some(Prompt::TokenIds(ids)) => Ok(ids.len() as u32),
        _ => Ok(prompt_words(prompt, messages)?.len() as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_tokens_for_prompts_and_messages() {
        let messages: Vec<Message> = serde_json::from_value(serde_json::json!([
            {"role": "system", "content": "be  brief"},
            {"role": "user", "content": [{"type": "text", "text": "one two three"}, {"type": "image_url"}]},
            {"role": "assistant", "content": null},
        ]))
        .expect("messages");
        assert_eq!(prompt_token_count(None, Some(&messages)).ok(), Some(5));
        let prompt = Prompt::Text(" a\tb\nc ".into());
        assert_eq!(prompt_token_count(Some(&prompt), None).ok(), Some(3));
        assert_eq!(
            prompt_token_count(Some(&Prompt::TokenIds(vec![1, 2])), None).ok(),
            Some(2)
        );
        assert_eq!(
            prompt_token_count(Some(&Prompt::Text(String::new())), None).ok(),
            Some(0)
        );
        assert!(
            prompt_token_count(Some(&Prompt::Texts(vec!["a".into(), "b".into()])), None).is_err()
        );
    }
}
