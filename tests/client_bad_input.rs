//! The client against a raw TCP server that misbehaves on purpose: every
//! failure must become a record with a clear error kind and whatever timings
//! were taken, never a panic or a lost request.

mod scripted_support;

use scripted_support::{chunk, SSE_HEAD, TOKEN};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracebench::client::{Client, ClientOptions, PreparedRequest};
use tracebench::clock::RunClock;
use tracebench::record::{Endpoint, ErrorKind, RequestRecord};

fn fixture(name: &str) -> Vec<u8> {
    tracebench::testing::fixture_bytes(&format!("vllm/{name}"))
}

/// What the scripted server does after reading a request.
#[derive(Clone)]
enum Script {
    /// Write these bytes, then close normally.
    Write(Vec<u8>),
    /// Write these bytes, then reset the connection (RST).
    WriteThenReset(Vec<u8>),
    /// Write these bytes, then stay silent.
    WriteThenStall(Vec<u8>),
}

async fn read_request(socket: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    loop {
        let n = socket.read(&mut byte).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&byte[..n]);
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + length {
                return;
            }
        }
    }
}

async fn serve(script: Script) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let script = script.clone();
            tokio::spawn(async move {
                read_request(&mut socket).await;
                match script {
                    Script::Write(bytes) => {
                        let _ = socket.write_all(&bytes).await;
                        let _ = socket.shutdown().await;
                    }
                    Script::WriteThenReset(bytes) => {
                        let _ = socket.write_all(&bytes).await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let std = socket.into_std().unwrap();
                        socket2::SockRef::from(&std)
                            .set_linger(Some(Duration::ZERO))
                            .unwrap();
                        drop(std);
                    }
                    Script::WriteThenStall(bytes) => {
                        let _ = socket.write_all(&bytes).await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

fn client(url: &str, first_byte: Duration, whole: Duration) -> Client {
    Client::new(
        ClientOptions {
            first_byte_timeout: first_byte,
            request_timeout: whole,
            ..ClientOptions::new(url, Endpoint::Chat, "tiny", "t")
        },
        RunClock::start(),
    )
    .unwrap()
}

fn request() -> PreparedRequest {
    PreparedRequest {
        index: 0,
        request_id: "t-000000".into(),
        warmup: false,
        body: bytes::Bytes::from_static(b"{\"model\":\"tiny\"}"),
        max_tokens: Some(16),
        input_tokens: None,
        input_tokens_source: None,
        meta: Default::default(),
    }
}

async fn run_script(script: Script) -> RequestRecord {
    let url = serve(script).await;
    let client = client(&url, Duration::from_secs(5), Duration::from_secs(10));
    client
        .send(&request(), Instant::now(), &CancellationToken::new())
        .await
}

fn kind(record: &RequestRecord) -> ErrorKind {
    record
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("expected an error: {record:?}"))
        .kind
}

#[tokio::test]
async fn a_real_vllm_stream_is_measured() {
    let record = run_script(Script::Write(fixture("chat-stream.http"))).await;
    assert!(record.ok(), "{:?}", record.error);
    assert_eq!(record.output_tokens, Some(16));
    assert_eq!(record.input_tokens, Some(15));
    assert_eq!(record.chunks, 16);
    assert_eq!(record.itl_chunk_ms.len(), 15);
    assert_eq!(
        record.response_id.as_deref(),
        Some("chatcmpl-a2a78dcb0d8477ce")
    );
    assert_eq!(record.finish_reason.as_deref(), Some("length"));
    let i = &record.instants_ns;
    assert!(i.sent <= i.headers.unwrap() && i.headers.unwrap() <= i.first_byte.unwrap());
    assert!(i.first_byte.unwrap() <= i.first_token.unwrap() && i.first_token <= i.last_token);
    assert!(record.ttft_ms.unwrap() <= record.e2e_ms.unwrap());
    assert_eq!(record.trace_id.map(|t| t.to_string().len()), Some(32));
    assert_eq!(record.server_missing_reason.as_deref(), Some("pending"));
}

#[tokio::test]
async fn continuous_usage_gives_per_token_itl() {
    let record = run_script(Script::Write(fixture("chat-stream-continuous-usage.http"))).await;
    assert!(record.ok(), "{:?}", record.error);
    assert_eq!(record.output_tokens, Some(16));
    assert_eq!(record.itl_token_ms.as_ref().map(Vec::len), Some(15));
}

#[tokio::test]
async fn http_error_keeps_status_and_message() {
    let record = run_script(Script::Write(fixture("error-unknown-model.txt"))).await;
    assert_eq!(kind(&record), ErrorKind::HttpStatus);
    let error = record.error.unwrap();
    assert_eq!(error.status, Some(404));
    assert!(
        error.message.contains("does not exist"),
        "{}",
        error.message
    );
    assert!(error.body_excerpt.unwrap().contains("NotFoundError"));
}

#[tokio::test]
async fn a_body_that_is_not_sse() {
    let record = run_script(Script::Write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 11\r\n\r\nhello world"
            .to_vec(),
    ))
    .await;
    assert_eq!(kind(&record), ErrorKind::InvalidResponse);
    let json = run_script(Script::Write(
        fixture("chat-nonstream.headers.txt")
            .into_iter()
            .chain(fixture("chat-nonstream.json"))
            .collect(),
    ))
    .await;
    assert_eq!(kind(&json), ErrorKind::InvalidResponse);
}

#[tokio::test]
async fn a_reset_mid_stream_keeps_the_timings_taken() {
    let mut bytes = SSE_HEAD.to_vec();
    for _ in 0..3 {
        bytes.extend(chunk(TOKEN));
    }
    let record = run_script(Script::WriteThenReset(bytes)).await;
    assert_eq!(kind(&record), ErrorKind::Stream);
    assert_eq!(record.chunks, 3);
    assert!(record.ttft_ms.is_some());
    assert!(record.instants_ns.end.is_some());
}

#[tokio::test]
async fn a_truncated_stream_is_an_error() {
    let mut bytes = SSE_HEAD.to_vec();
    bytes.extend(chunk(TOKEN));
    bytes.extend(chunk(b"data: {\"id\":\"chatcmpl-x\",\"choi"));
    bytes.extend_from_slice(b"0\r\n\r\n");
    let record = run_script(Script::Write(bytes)).await;
    assert_eq!(kind(&record), ErrorKind::Stream);
    assert!(record.error.unwrap().message.contains("cut off"));
}

#[tokio::test]
async fn invalid_utf8_and_error_events() {
    let mut bytes = SSE_HEAD.to_vec();
    bytes.extend(chunk(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"\xff\xfe\"}}]}\n\n",
    ));
    bytes.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(
        kind(&run_script(Script::Write(bytes)).await),
        ErrorKind::InvalidResponse
    );

    let mut bytes = SSE_HEAD.to_vec();
    bytes.extend(chunk(TOKEN));
    bytes.extend(chunk(
        b"event: error\ndata: {\"error\":{\"message\":\"engine died\"}}\n\n",
    ));
    bytes.extend_from_slice(b"0\r\n\r\n");
    let record = run_script(Script::Write(bytes)).await;
    assert_eq!(kind(&record), ErrorKind::Stream);
    assert!(record.error.unwrap().message.contains("engine died"));

    let mut bytes = SSE_HEAD.to_vec();
    bytes.extend(chunk(
        br#"data: {"error":{"message":"out of memory","code":500}}

"#,
    ));
    bytes.extend_from_slice(b"0\r\n\r\n");
    let record = run_script(Script::Write(bytes)).await;
    assert!(record.error.unwrap().message.contains("out of memory"));
}

#[tokio::test]
async fn an_enormous_line_is_refused() {
    let mut bytes = SSE_HEAD.to_vec();
    let mut line = b"data: ".to_vec();
    line.extend(std::iter::repeat_n(b'x', 5 << 20));
    bytes.extend(chunk(&line));
    let record = run_script(Script::WriteThenStall(bytes)).await;
    assert_eq!(kind(&record), ErrorKind::Stream);
    assert!(record.error.unwrap().message.contains("exceeded"));
}

#[tokio::test]
async fn stalls_hit_the_first_byte_and_request_timeouts() {
    let url = serve(Script::WriteThenStall(Vec::new())).await;
    let record = client(&url, Duration::from_millis(300), Duration::from_secs(10))
        .send(&request(), Instant::now(), &CancellationToken::new())
        .await;
    assert_eq!(kind(&record), ErrorKind::FirstByteTimeout);

    let mut bytes = SSE_HEAD.to_vec();
    bytes.extend(chunk(TOKEN));
    let url = serve(Script::WriteThenStall(bytes)).await;
    let record = client(&url, Duration::from_secs(5), Duration::from_millis(500))
        .send(&request(), Instant::now(), &CancellationToken::new())
        .await;
    assert_eq!(kind(&record), ErrorKind::Timeout);
    assert_eq!(record.chunks, 1);
}

#[tokio::test]
async fn cancel_and_connect_errors() {
    let url = serve(Script::WriteThenStall(SSE_HEAD.to_vec())).await;
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stopper.cancel();
    });
    let record = client(&url, Duration::from_secs(5), Duration::from_secs(10))
        .send(&request(), Instant::now(), &cancel)
        .await;
    assert_eq!(kind(&record), ErrorKind::Cancelled);
    assert!(record.instants_ns.headers.is_some());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let record = client(
        &format!("http://127.0.0.1:{port}"),
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .send(&request(), Instant::now(), &CancellationToken::new())
    .await;
    assert_eq!(kind(&record), ErrorKind::Connect);
    assert!(record.error.unwrap().message.contains("onnect"));
}
