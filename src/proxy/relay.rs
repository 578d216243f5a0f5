//! Server-Sent Events passing through: upstream bytes are cut at event
//! boundaries (a complete event goes on the moment its blank line arrives;
//! only the unfinished event is held), each event is measured through the
//! client's own framer and chunk reader, the usage chunk the proxy asked for
//! on the client's behalf is taken out, and the metrics go in just before
//! `data: [DONE]`.

use super::measure::Exchange;
use crate::client::chunk::parse_chunk;
use crate::client::sse::{find_line_end, SseFramer, DEFAULT_MAX_EVENT_BYTES};
use crate::client::{finish_stream, stream_error};
use crate::record::RequestError;
use bytes::{Bytes, BytesMut};
use std::ops::ControlFlow;
use std::time::Instant;

/// Cuts a byte stream into complete SSE events (each with its blank line).
#[derive(Debug, Default)]
pub(crate) struct EventSplitter {
    /// Bytes of the unfinished event.
    tail: BytesMut,
    /// Where in `tail` the first line not yet looked at starts.
    scanned: usize,
}

/// Offsets in `buf` just past each blank line from `from` on, and where
/// scanning stopped (the start of the first unfinished line).
fn event_ends(buf: &[u8], mut at: usize, ends: &mut Vec<usize>) -> usize {
    while let Some((end, next)) = find_line_end(&buf[at..]) {
        if end == 0 {
            ends.push(at + next);
        }
        at += next;
    }
    at
}

impl EventSplitter {
    /// Calls `each` with every event `chunk` completes, in order; a chunk of
    /// whole events is handed on as slices of itself (no copy).
    pub fn push(&mut self, chunk: Bytes, ends: &mut Vec<usize>, mut each: impl FnMut(Bytes)) {
        ends.clear();
        if self.tail.is_empty() {
            let stopped = event_ends(&chunk, 0, ends);
            let mut start = 0;
            for &end in ends.iter() {
                each(chunk.slice(start..end));
                start = end;
            }
            self.tail.extend_from_slice(&chunk[start..]);
            self.scanned = stopped - start;
            return;
        }
        self.tail.extend_from_slice(&chunk);
        self.scanned = event_ends(&self.tail, self.scanned, ends);
        let mut taken = 0;
        for &end in ends.iter() {
            each(self.tail.split_to(end - taken).freeze());
            taken = end;
        }
        self.scanned -= taken;
    }

    /// The bytes of an unfinished event, taken out.
    pub fn take_tail(&mut self) -> Bytes {
        self.scanned = 0;
        self.tail.split().freeze()
    }

    pub fn held(&self) -> usize {
        self.tail.len()
    }
}

/// One stream's relay state.
pub(crate) struct SseRelay {
    splitter: EventSplitter,
    framer: SseFramer,
    ends: Vec<usize>,
    /// The proxy asked for `include_usage`: the usage-only chunk is not the client's.
    strip_usage: bool,
    /// Hand the metrics as a `data:` event instead of a comment.
    metrics_as_data: bool,
    /// The first thing wrong with the stream, recorded when it ends.
    failure: Option<RequestError>,
}

impl SseRelay {
    pub fn new(strip_usage: bool, metrics_as_data: bool) -> Self {
        Self {
            splitter: EventSplitter::default(),
            framer: SseFramer::default(),
            ends: Vec::new(),
            strip_usage,
            metrics_as_data,
            failure: None,
        }
    }

    /// Measures one upstream chunk; returns what goes on to the client now.
    pub fn relay(&mut self, chunk: Bytes, arrived: Instant, exchange: &mut Exchange) -> Bytes {
        let mut out: Vec<Bytes> = Vec::new();
        let Self {
            splitter,
            framer,
            ends,
            strip_usage,
            metrics_as_data,
            failure,
        } = self;
        splitter.push(chunk, ends, |event| {
            let mut verdict = Verdict::Keep;
            let broke = framer.feed(&event, |e| {
                if e.data == b"[DONE]" {
                    verdict = Verdict::Done;
                } else if *strip_usage && is_usage_only(e.data) {
                    verdict = Verdict::Drop;
                }
                match exchange.progress.on_event(e, arrived) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(error) => ControlFlow::Break(error),
                }
            });
            match broke {
                Ok(Some(error)) => {
                    failure.get_or_insert(error);
                }
                Ok(None) => {}
                Err(e) => {
                    failure.get_or_insert(stream_error(e.to_string()));
                }
            }
            match verdict {
                Verdict::Keep => out.push(event),
                Verdict::Drop => {}
                Verdict::Done => {
                    if !exchange.is_done() {
                        let metrics = exchange.complete(failure.take());
                        out.push(metrics_event(&metrics, *metrics_as_data));
                    }
                    out.push(event);
                }
            }
        });
        if splitter.held() > DEFAULT_MAX_EVENT_BYTES {
            self.failure.get_or_insert(stream_error(format!(
                "an SSE event exceeded {DEFAULT_MAX_EVENT_BYTES} bytes"
            )));
            out.push(self.splitter.take_tail());
        }
        concat(out)
    }

    /// The upstream's stream ended: records the request (unless `[DONE]` did)
    /// and returns what is left for the client: any unfinished event, and the
    /// metrics when the stream ended well without `[DONE]`.
    pub fn finish(&mut self, exchange: &mut Exchange) -> Bytes {
        let tail = self.splitter.take_tail();
        let _ = self.framer.feed(&tail, |_| ControlFlow::<()>::Continue(()));
        let mut out = vec![tail];
        if !exchange.is_done() {
            let error = self
                .failure
                .take()
                .or_else(|| finish_stream(&self.framer, &exchange.progress).err());
            let ok = error.is_none();
            let metrics = exchange.complete(error);
            if ok {
                out.push(metrics_event(&metrics, self.metrics_as_data));
            }
        }
        concat(out)
    }
}

enum Verdict {
    Keep,
    Drop,
    Done,
}

/// The final usage-only chunk (`"choices":[]` with `usage`).
fn is_usage_only(data: &[u8]) -> bool {
    memchr::memmem::find(data, b"\"usage\"").is_some()
        && parse_chunk(data).is_ok_and(|c| c.choices == 0 && c.usage.is_some())
}

/// The metrics as an SSE comment (ignored by SSE clients) or, when asked
/// for, as a data event shaped like a chunk without choices.
pub(crate) fn metrics_event(metrics: &serde_json::Value, as_data: bool) -> Bytes {
    let text = if as_data {
        let event = serde_json::json!({
            "object": "tracebench.metrics",
            "choices": [],
            "metrics": metrics,
        });
        format!("data: {event}\n\n")
    } else {
        format!(": tracebench-metrics {metrics}\n\n")
    };
    Bytes::from(text)
}

fn concat(pieces: Vec<Bytes>) -> Bytes {
    match pieces.len() {
        0 => Bytes::new(),
        1 => pieces.into_iter().next().expect("one piece"),
        _ => {
            let mut all = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
            for piece in pieces {
                all.extend_from_slice(&piece);
            }
            all.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut splitter = EventSplitter::default();
        let mut ends = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(Bytes::copy_from_slice(chunk), &mut ends, |e| {
                out.push(e.to_vec())
            });
        }
        out
    }

    #[test]
    fn every_split_of_a_real_stream_gives_the_same_events_and_bytes() {
        let body = crate::testing::fixture_bytes("vllm/chat-stream.sse");
        let whole = events_of(&[&body]);
        assert_eq!(whole.concat(), body, "whole events cover the body");
        assert_eq!(whole.last().unwrap(), b"data: [DONE]\n\n");
        for cut in 0..=body.len() {
            assert_eq!(events_of(&[&body[..cut], &body[cut..]]), whole, "cut {cut}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(events_of(&bytes), whole, "one byte at a time");
    }

    #[test]
    fn crlf_and_cr_events_and_a_held_tail() {
        let events = events_of(&[b"data: a\r\n\r\ndata: b\r\rdata: c\r", b"\n\r\n: x"]);
        assert_eq!(
            events,
            vec![
                b"data: a\r\n\r\n".to_vec(),
                b"data: b\r\r".to_vec(),
                b"data: c\r\n\r\n".to_vec()
            ]
        );
        let mut splitter = EventSplitter::default();
        splitter.push(
            Bytes::from_static(b"data: partial"),
            &mut Vec::new(),
            |_| panic!("nothing is complete"),
        );
        assert_eq!(splitter.take_tail(), Bytes::from_static(b"data: partial"));
    }

    #[test]
    fn the_usage_only_chunk_is_told_apart() {
        let body = crate::testing::fixture_text("vllm/chat-stream.sse");
        let data: Vec<&str> = body
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .collect();
        let usage_only: Vec<bool> = data.iter().map(|d| is_usage_only(d.as_bytes())).collect();
        assert_eq!(usage_only.iter().filter(|u| **u).count(), 1);
        assert!(usage_only[data.len() - 2], "the chunk before [DONE]");
        let continuous = crate::testing::fixture_text("vllm/chat-stream-continuous-usage.sse");
        let with_choices = continuous
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| d.contains("\"content\""))
            .filter(|d| is_usage_only(d.as_bytes()))
            .count();
        assert_eq!(with_choices, 0, "chunks with choices and usage stay");
    }
}
