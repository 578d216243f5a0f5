//! The body's framing on the HTTP/1.1 transport: what a response head says
//! about its body (chunked, `Content-Length`, until close, none), and the
//! decoder that undoes it whatever the read boundaries, on the task that reads.

use super::http1::Http1Error;

/// Largest chunk-size or trailer line accepted.
const MAX_FRAMING_LINE: usize = 4096;

/// What the response head says about the body.
pub(super) struct ParsedHead {
    pub content_type: Option<String>,
    pub body: BodyDecoder,
    pub keep_alive: bool,
}

impl ParsedHead {
    pub fn read(head: &httparse::Response<'_, '_>, status: u16) -> Result<Self, Http1Error> {
        let mut content_type = None;
        let mut chunked = false;
        let mut length = None;
        let mut keep_alive = head.version == Some(1);
        for header in head.headers.iter() {
            let value = String::from_utf8_lossy(header.value);
            if header.name.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.trim().to_string());
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked |= value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            } else if header.name.eq_ignore_ascii_case("content-length") {
                let parsed = value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| Http1Error::Protocol(format!("bad Content-Length {value:?}")))?;
                length = Some(parsed);
            } else if header.name.eq_ignore_ascii_case("connection") {
                let value = value.to_ascii_lowercase();
                if value.contains("close") {
                    keep_alive = false;
                } else if value.contains("keep-alive") {
                    keep_alive = true;
                }
            }
        }
        let framing = if status == 204 || status == 304 {
            Framing::Done
        } else if chunked {
            Framing::Chunked(ChunkState::Size)
        } else if let Some(length) = length {
            if length == 0 {
                Framing::Done
            } else {
                Framing::Length(length)
            }
        } else {
            keep_alive = false;
            Framing::UntilClose
        };
        Ok(Self {
            content_type,
            body: BodyDecoder { framing },
            keep_alive,
        })
    }
}

/// How the body's end is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Chunked(ChunkState),
    /// Bytes still to come.
    Length(u64),
    UntilClose,
    Done,
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
}

/// Undoes the body's framing, whatever the read boundaries.
#[derive(Debug)]
pub(super) struct BodyDecoder {
    framing: Framing,
}

impl BodyDecoder {
    pub fn is_done(&self) -> bool {
        self.framing == Framing::Done
    }

    /// Appends to `out` the body bytes of `input`, up to where it stops
    /// making sense without more input; returns the bytes of `input` used.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Http1Error> {
        let mut used = 0;
        loop {
            let available = &input[used..];
            match self.framing {
                Framing::Done => return Ok(used),
                Framing::UntilClose => {
                    out.extend_from_slice(available);
                    return Ok(input.len());
                }
                Framing::Length(left) => {
                    let take = available.len().min(left as usize);
                    out.extend_from_slice(&available[..take]);
                    let left = left - take as u64;
                    self.framing = if left == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(left)
                    };
                    return Ok(used + take);
                }
                Framing::Chunked(ChunkState::Data(left)) => {
                    if available.is_empty() {
                        return Ok(used);
                    }
                    let take = available.len().min(left as usize);
                    out.extend_from_slice(&available[..take]);
                    used += take;
                    let left = left - take as u64;
                    self.framing = Framing::Chunked(if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    });
                }
                Framing::Chunked(ChunkState::DataEnd) => {
                    if available.len() < 2 {
                        return Ok(used);
                    }
                    if &available[..2] != b"\r\n" {
                        return Err(Http1Error::Protocol(
                            "a chunk of the body is longer than its size says".into(),
                        ));
                    }
                    used += 2;
                    self.framing = Framing::Chunked(ChunkState::Size);
                }
                Framing::Chunked(state @ (ChunkState::Size | ChunkState::Trailers)) => {
                    let Some(newline) = available.iter().position(|&b| b == b'\n') else {
                        if available.len() > MAX_FRAMING_LINE {
                            return Err(Http1Error::Protocol(
                                "a chunk-size line of the body is too long".into(),
                            ));
                        }
                        return Ok(used);
                    };
                    let line = &available[..newline];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    self.framing = match (state, line.is_empty()) {
                        (ChunkState::Trailers, true) => Framing::Done,
                        (ChunkState::Trailers, false) => Framing::Chunked(ChunkState::Trailers),
                        _ => match chunk_size(line)? {
                            0 => Framing::Chunked(ChunkState::Trailers),
                            size => Framing::Chunked(ChunkState::Data(size)),
                        },
                    };
                    used += newline + 1;
                }
            }
        }
    }

    /// The connection closed: the end of a body that runs until close, an
    /// error for any other.
    pub fn end_of_input(&mut self) -> Result<(), Http1Error> {
        match self.framing {
            Framing::UntilClose => {
                self.framing = Framing::Done;
                Ok(())
            }
            _ => Err(Http1Error::Send(
                "the server closed the connection before the end of the body".into(),
            )),
        }
    }
}

/// The size of a chunk-size line (hex digits, maybe `;extensions`).
fn chunk_size(line: &[u8]) -> Result<u64, Http1Error> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits).unwrap_or_default().trim();
    u64::from_str_radix(digits, 16)
        .ok()
        .filter(|size| *size < 1 << 40)
        .ok_or_else(|| {
            Http1Error::Protocol(format!(
                "bad chunk-size line {:?}",
                String::from_utf8_lossy(line)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunked body with extensions and trailers, and what it decodes to.
    const CHUNKED: &[u8] =
        b"5;name=value\r\ndata:\r\n18\r\n {\"x\":1}\n\ndata: [DONE]\n\n\r\n0\r\nx-trailer: 1\r\n\r\n";
    const DECODED: &[u8] = b"data: {\"x\":1}\n\ndata: [DONE]\n\n";

    /// Feeds `input` in two reads split at `split`, keeping unused bytes for
    /// the next read as the response does; returns the body and whether it ended.
    fn decode_split(framing: Framing, input: &[u8], split: usize) -> (Vec<u8>, bool) {
        let mut decoder = BodyDecoder { framing };
        let mut out = Vec::new();
        let mut pending = input[..split].to_vec();
        let used = decoder.decode(&pending, &mut out).expect("valid framing");
        pending.drain(..used);
        pending.extend_from_slice(&input[split..]);
        let used = decoder.decode(&pending, &mut out).expect("valid framing");
        assert_eq!(used, pending.len(), "split at {split}: bytes left over");
        (out, decoder.is_done())
    }

    #[test]
    fn chunked_bodies_decode_at_every_read_boundary() {
        for split in 0..=CHUNKED.len() {
            let (body, done) = decode_split(Framing::Chunked(ChunkState::Size), CHUNKED, split);
            assert_eq!(body, DECODED, "split at {split}");
            assert!(done, "split at {split}");
        }
    }

    #[test]
    fn length_and_close_delimited_bodies() {
        let body = b"{\"id\":\"x\"}";
        for split in 0..=body.len() {
            let (out, done) = decode_split(Framing::Length(body.len() as u64), body, split);
            assert_eq!(out, body);
            assert!(done);
        }
        let mut decoder = BodyDecoder {
            framing: Framing::UntilClose,
        };
        let mut out = Vec::new();
        decoder.decode(body, &mut out).unwrap();
        assert!(!decoder.is_done());
        decoder.end_of_input().unwrap();
        assert!(decoder.is_done());
        assert_eq!(out, body);
    }

    #[test]
    fn broken_framing_is_a_clear_error() {
        let long_line = vec![b'1'; MAX_FRAMING_LINE + 1];
        for (input, expected) in [
            (&b"zz\r\n"[..], "bad chunk-size line \"zz\""),
            (b"2\r\nabc\r\n", "longer than its size"),
            (&long_line, "too long"),
        ] {
            let mut decoder = BodyDecoder {
                framing: Framing::Chunked(ChunkState::Size),
            };
            let error = decoder.decode(input, &mut Vec::new()).unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
        let mut decoder = BodyDecoder {
            framing: Framing::Length(10),
        };
        decoder.decode(b"abc", &mut Vec::new()).unwrap();
        let error = decoder.end_of_input().unwrap_err();
        assert!(
            error.to_string().contains("before the end of the body"),
            "{error}"
        );
    }
}
