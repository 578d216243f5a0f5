//! Shared by the tests that answer with a scripted HTTP server: the bytes of
//! a chunked SSE answer.

#![allow(dead_code)] // each test file uses its own subset

/// One HTTP/1.1 chunk holding `data`.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The head of a chunked SSE answer.
pub const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

/// One token-bearing chat completion event.
pub const TOKEN: &[u8] = b"data: {\"id\":\"chatcmpl-x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n";
