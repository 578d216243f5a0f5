//! Incremental Server-Sent Events framing, owned because it is the hot path.
//!
//! Bytes go in as they arrive from the socket (any split: mid-line, mid-UTF-8
//! character, several events per read); complete events come out through a
//! callback, borrowing an internal buffer that is reused, so framing allocates
//! nothing per event once warm. Handles `\n`, `\r\n` and `\r` line ends,
//! comments, multi-line `data:`, `event:` names, and a cap on event size.

/// One complete event: its `event:` name (if any) and its `data:` payload
/// (multi-line data joined with `\n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub event: Option<&'a str>,
    pub data: &'a [u8],
}

/// A stream that cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an SSE line or event exceeded {limit} bytes")]
    TooLarge { limit: usize },
}

/// The framer's state between reads.
#[derive(Debug)]
pub struct SseFramer {
    /// Bytes received but not yet consumed as complete lines.
    pending: Vec<u8>,
    /// `data:` lines of the event being assembled.
    data: Vec<u8>,
    /// `event:` name of the event being assembled.
    event: String,
    has_data: bool,
    max_event_bytes: usize,
}

/// Default cap on one event (lines included): 4 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 << 20;

impl Default for SseFramer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseFramer {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            // Both grow to what the stream needs: an event is far smaller
            // than a read, and thousands of streams each hold a framer.
            pending: Vec::new(),
            data: Vec::new(),
            event: String::new(),
            has_data: false,
            max_event_bytes,
        }
    }

    /// Feeds bytes as they arrived; calls `on_event` for every event they complete.
    /// Returns early with the callback's `Break` value if it asks to stop.
    pub fn feed<B>(
        &mut self,
        bytes: &[u8],
        mut on_event: impl FnMut(SseEvent<'_>) -> std::ops::ControlFlow<B>,
    ) -> Result<Option<B>, SseError> {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        let mut stopped = None;
        while let Some((line_end, next)) = find_line_end(&self.pending[start..]) {
            let line_end = start + line_end;
            let next = start + next;
            if line_end == start {
                if self.has_data {
                    let event = SseEvent {
                        event: (!self.event.is_empty()).then_some(self.event.as_str()),
                        data: &self.data,
                    };
                    if let std::ops::ControlFlow::Break(b) = on_event(event) {
                        stopped = Some(b);
                    }
                }
                self.reset_event();
            } else {
                self.take_line(start, line_end)?;
            }
            start = next;
            if stopped.is_some() {
                break;
            }
        }
        self.pending.drain(..start);
        if self.pending.len() > self.max_event_bytes {
            return Err(SseError::TooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(stopped)
    }

    /// True when bytes of an unfinished line or event are buffered (a stream
    /// that ends now was cut short).
    pub fn has_partial_event(&self) -> bool {
        !self.pending.iter().all(|b| *b == b'\r' || *b == b'\n') || self.has_data
    }

    fn take_line(&mut self, start: usize, end: usize) -> Result<(), SseError> {
        let line = &self.pending[start..end];
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &line[line.len()..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
                if self.data.len() > self.max_event_bytes {
                    return Err(SseError::TooLarge {
                        limit: self.max_event_bytes,
                    });
                }
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            _ => {} // `id`, `retry` and unknown fields do not matter here.
        }
        Ok(())
    }

    fn reset_event(&mut self) {
        self.data.clear();
        self.event.clear();
        self.has_data = false;
    }
}

/// Finds the first line terminator: `(end of line, start of next line)`.
/// A `\r` as the very last byte waits for the next read (it may be a `\r\n`).
pub(crate) fn find_line_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let at = memchr::memchr2(b'\n', b'\r', bytes)?;
    if bytes[at] == b'\n' {
        return Some((at, at + 1));
    }
    match bytes.get(at + 1) {
        Some(b'\n') => Some((at, at + 2)),
        Some(_) => Some((at, at + 1)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::ControlFlow;

    fn events_of(chunks: &[&[u8]]) -> Vec<(Option<String>, String)> {
        let mut framer = SseFramer::default();
        let mut out = Vec::new();
        for chunk in chunks {
            framer
                .feed::<()>(chunk, |e| {
                    out.push((
                        e.event.map(str::to_string),
                        String::from_utf8(e.data.to_vec()).unwrap(),
                    ));
                    ControlFlow::Continue(())
                })
                .unwrap();
        }
        out
    }

    fn fixture(name: &str) -> Vec<u8> {
        crate::testing::fixture_bytes(&format!("vllm/{name}"))
    }

    #[test]
    fn every_split_of_real_streams_gives_the_same_events() {
        for name in [
            "chat-stream.sse",
            "completions-stream.sse",
            "chat-stream-continuous-usage.sse",
            "chat-stream-n2.sse",
            "traced-chat.sse",
        ] {
            let body = fixture(name);
            let whole = events_of(&[&body]);
            assert!(whole.len() > 16, "{name}: {} events", whole.len());
            assert_eq!(whole.last().unwrap().1, "[DONE]");
            for cut in 0..=body.len() {
                let split = events_of(&[&body[..cut], &body[cut..]]);
                assert_eq!(split, whole, "{name} split at {cut}");
            }
        }
    }

    #[test]
    fn reads_as_they_arrived_give_the_same_events() {
        // Replay chat-stream.sse in the exact groups the socket delivered it.
        let body = fixture("chat-stream.sse");
        let timing = String::from_utf8(fixture("chat-stream.timing.jsonl")).unwrap();
        let mut chunks = Vec::new();
        let mut at = 0;
        for line in timing.lines() {
            let read: serde_json::Value = serde_json::from_str(line).unwrap();
            let len = read["body_len"].as_u64().unwrap() as usize;
            chunks.push(&body[at..at + len]);
            at += len;
        }
        assert_eq!(at, body.len());
        assert_eq!(events_of(&chunks), events_of(&[&body]));
        assert_eq!(events_of(&chunks).len(), 19);
    }

    #[test]
    fn line_endings_comments_multiline_and_event_names() {
        let stream = b": keep-alive\r\ndata: a\r\ndata: b\r\n\r\nevent: error\rdata: {\"x\":1}\r\rdata:nospace\n\n";
        let events = events_of(&[stream]);
        assert_eq!(
            events,
            vec![
                (None, "a\nb".to_string()),
                (Some("error".to_string()), "{\"x\":1}".to_string()),
                (None, "nospace".to_string()),
            ]
        );
        // A CR at the end of one read and LF at the start of the next is one line end.
        let split = events_of(&[b"data: x\r", b"\n\r", b"\n"]);
        assert_eq!(split, vec![(None, "x".to_string())]);
    }

    #[test]
    fn utf8_split_across_reads_survives() {
        let text = "data: {\"c\":\"é€😀\"}\n\n".as_bytes();
        for cut in 0..text.len() {
            let events = events_of(&[&text[..cut], &text[cut..]]);
            assert_eq!(events[0].1, "{\"c\":\"é€😀\"}");
        }
    }

    #[test]
    fn an_enormous_line_is_an_error_not_a_crash() {
        let mut framer = SseFramer::new(1024);
        let big = vec![b'x'; 2048];
        let err = framer
            .feed::<()>(&big, |_| ControlFlow::Continue(()))
            .unwrap_err();
        assert_eq!(err, SseError::TooLarge { limit: 1024 });
        let mut framer = SseFramer::new(1024);
        let mut many = Vec::new();
        for _ in 0..200 {
            many.extend_from_slice(b"data: 0123456789\n");
        }
        assert!(framer
            .feed::<()>(&many, |_| ControlFlow::Continue(()))
            .is_err());
    }

    #[test]
    fn partial_events_are_visible_at_end_of_stream() {
        let mut framer = SseFramer::default();
        framer
            .feed::<()>(b"data: {\"a\":1}\n\ndata: {\"trunc", |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(framer.has_partial_event());
        let mut framer = SseFramer::default();
        framer
            .feed::<()>(b"data: [DONE]\n\n", |_| ControlFlow::Continue(()))
            .unwrap();
        assert!(!framer.has_partial_event());
    }

    #[test]
    fn the_callback_can_stop_framing() {
        let mut framer = SseFramer::default();
        let mut seen = 0;
        let stopped = framer
            .feed(b"data: 1\n\ndata: 2\n\ndata: 3\n\n", |_| {
                seen += 1;
                if seen == 2 {
                    ControlFlow::Break("stop")
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!((stopped, seen), (Some("stop"), 2));
    }
}
