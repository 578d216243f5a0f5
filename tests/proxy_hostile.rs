//! The proxy in front of an upstream that misbehaves on purpose (down,
//! resetting mid-stream, silent), and clients that do (leaving mid-stream,
//! oversized bodies and heads, a flood of connections, a request naming
//! another host). Every failure is a clear answer to the client and a record
//! with its error kind; nothing is relayed anywhere but the upstream.

mod proxy_support;
mod scripted_support;

use proxy_support::*;
use scripted_support::{chunk, SSE_HEAD, TOKEN};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracebench::record::ErrorKind;

const MODELS: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-upstream: scripted\r\nconnection: close\r\ncontent-length: 45\r\n\r\n{\"object\":\"list\",\"data\":[{\"id\":\"tiny\"}]}    \n";

const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 61\r\n\r\n{\"error\":{\"message\":\"max_tokens is too large\",\"code\":400}}   ";

/// What the scripted upstream does with each request.
#[derive(Clone)]
enum Script {
    /// Write these bytes; close.
    Write(&'static [u8]),
    /// Write the SSE head and two tokens, then reset the connection.
    ResetMidStream,
    /// Write these bytes, then stay silent.
    Stall(&'static [u8]),
    /// A token every 20 ms until a write fails, then say so.
    Trickle(mpsc::UnboundedSender<()>),
    /// Answer with the request line it got.
    EchoRequestLine,
}

/// The request head (read up to its body's end).
async fn read_request(socket: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut bytes = [0u8; 8192];
    loop {
        let n = socket.read(&mut bytes).await.unwrap_or(0);
        if n == 0 {
            return String::new();
        }
        buf.extend_from_slice(&bytes[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .to_lowercase()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return head;
            }
        }
    }
}

async fn upstream(script: Script) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let script = script.clone();
            tokio::spawn(async move {
                let head = read_request(&mut socket).await;
                match script {
                    Script::Write(bytes) => {
                        let _ = socket.write_all(bytes).await;
                        let _ = socket.shutdown().await;
                    }
                    Script::ResetMidStream => {
                        let mut out = SSE_HEAD.to_vec();
                        out.extend(chunk(TOKEN));
                        out.extend(chunk(TOKEN));
                        let _ = socket.write_all(&out).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let std = socket.into_std().unwrap();
                        socket2::SockRef::from(&std)
                            .set_linger(Some(Duration::ZERO))
                            .unwrap();
                        drop(std);
                    }
                    Script::Stall(bytes) => {
                        let _ = socket.write_all(bytes).await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Script::Trickle(gone) => {
                        let _ = socket.write_all(SSE_HEAD).await;
                        for _ in 0..1500 {
                            if socket.write_all(&chunk(TOKEN)).await.is_err() {
                                let _ = gone.send(());
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    Script::EchoRequestLine => {
                        let line = head.lines().next().unwrap_or_default().to_string();
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{line}",
                            line.len()
                        );
                        let _ = socket.write_all(answer.as_bytes()).await;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

fn chat(proxy: &tracebench::proxy::Proxy) -> String {
    format!("{}/v1/chat/completions", proxy.url())
}

/// A streamed chat request of 4 tokens through `proxy`.
async fn stream_chat(proxy: &tracebench::proxy::Proxy) -> reqwest::Response {
    http()
        .post(chat(proxy))
        .json(&chat_body(true, 4))
        .send()
        .await
        .unwrap()
}

/// The one record a stopped proxy wrote.
async fn only_record(proxy: tracebench::proxy::Proxy) -> tracebench::record::RequestRecord {
    let outcome = proxy.shutdown().await.unwrap();
    let mut records = records(&outcome.dir);
    assert_eq!(records.len(), 1, "{records:?}");
    records.remove(0)
}

#[tokio::test]
async fn an_upstream_that_is_down_is_a_502_and_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let port = tracebench::testing::free_port().unwrap();
    let proxy = proxy_of(&format!("http://127.0.0.1:{port}"), dir.path(), |_| {}).await;
    let response = stream_chat(&proxy).await;
    assert_eq!(response.status(), 502);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "bad_gateway");
    assert_eq!(error["error"]["code"], 502);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("127.0.0.1:{port}")) && message.contains("cannot be reached"),
        "{message}"
    );
    let record = only_record(proxy).await;
    assert_eq!(record.error.unwrap().kind, ErrorKind::Connect);
    assert_eq!(record.status, None);
}

#[tokio::test]
async fn a_reset_mid_stream_cuts_the_answer_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_of(&upstream(Script::ResetMidStream).await, dir.path(), |_| {}).await;
    let mut response = stream_chat(&proxy).await;
    assert_eq!(response.status(), 200);
    let mut got = Vec::new();
    let broke = loop {
        match response.chunk().await {
            Ok(Some(bytes)) => got.extend_from_slice(&bytes),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(broke, "the client's answer is cut, not ended cleanly");
    assert_eq!(
        got,
        [TOKEN, TOKEN].concat(),
        "what came before the reset was relayed"
    );
    let record = only_record(proxy).await;
    let error = record.error.unwrap();
    assert_eq!(error.kind, ErrorKind::Stream, "{}", error.message);
    assert_eq!(record.chunks, 2);
    assert!(record.ttft_ms.is_some());
}

#[tokio::test]
async fn a_silent_upstream_is_a_504_before_the_answer_and_a_cut_after() {
    let dir = tempfile::tempdir().unwrap();
    let quick =
        |c: &mut tracebench::proxy::ProxyConfig| c.limits.idle_timeout = Duration::from_millis(300);
    let proxy = proxy_of(&upstream(Script::Stall(b"")).await, dir.path(), quick).await;
    let response = stream_chat(&proxy).await;
    assert_eq!(response.status(), 504);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "gateway_timeout");
    assert_eq!(
        only_record(proxy).await.error.unwrap().kind,
        ErrorKind::FirstByteTimeout
    );

    let head_and_token: &'static [u8] =
        Box::leak([SSE_HEAD, &chunk(TOKEN)].concat().into_boxed_slice());
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_of(
        &upstream(Script::Stall(head_and_token)).await,
        dir.path(),
        quick,
    )
    .await;
    let response = stream_chat(&proxy).await;
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err(), "the stalled answer is cut");
    let record = only_record(proxy).await;
    assert_eq!(record.error.unwrap().kind, ErrorKind::Timeout);
    assert_eq!(record.chunks, 1);
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_request() {
    let dir = tempfile::tempdir().unwrap();
    let (gone_tx, mut gone) = mpsc::unbounded_channel();
    let proxy = proxy_of(
        &upstream(Script::Trickle(gone_tx)).await,
        dir.path(),
        |_| {},
    )
    .await;
    let mut response = http()
        .post(chat(&proxy))
        .json(&chat_body(true, 1000))
        .send()
        .await
        .unwrap();
    assert!(response.chunk().await.unwrap().is_some());
    drop(response);
    tokio::time::timeout(Duration::from_secs(10), gone.recv())
        .await
        .expect("the upstream connection is closed once the client leaves")
        .unwrap();
    let record = only_record(proxy).await;
    let error = record.error.unwrap();
    assert_eq!(error.kind, ErrorKind::Cancelled);
    assert!(
        error.message.contains("client disconnected"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn other_paths_pass_through_byte_for_byte_and_only_to_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_of(&upstream(Script::Write(MODELS)).await, dir.path(), |_| {}).await;
    let response = http()
        .get(format!("{}/v1/models", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-upstream"], "scripted");
    let body = response.bytes().await.unwrap();
    let sent_body = &MODELS[MODELS.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    assert_eq!(&body[..], sent_body);
    proxy.shutdown().await.unwrap();

    // A request naming another host (absolute form) still goes to the upstream.
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_of(&upstream(Script::EchoRequestLine).await, dir.path(), |_| {}).await;
    let mut socket = TcpStream::connect(proxy.addr()).await.unwrap();
    socket
        .write_all(b"GET http://elsewhere.invalid/v1/models?x=1 HTTP/1.1\r\nhost: elsewhere.invalid\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("GET /v1/models?x=1 HTTP/1.1"), "{answer}");
    proxy.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_error_answer_passes_through_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_of(
        &upstream(Script::Write(BAD_REQUEST)).await,
        dir.path(),
        |_| {},
    )
    .await;
    let response = stream_chat(&proxy).await;
    assert_eq!(response.status(), 400);
    let body = response.bytes().await.unwrap();
    assert_eq!(&body[..], &BAD_REQUEST[BAD_REQUEST.len() - 61..]);
    let record = only_record(proxy).await;
    let error = record.error.unwrap();
    assert_eq!(
        (error.kind, error.status),
        (ErrorKind::HttpStatus, Some(400))
    );
    assert!(
        error.message.contains("max_tokens is too large"),
        "{}",
        error.message
    );
    assert_eq!(record.status, Some(400));
}

#[tokio::test]
async fn oversized_bodies_and_heads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_of(&upstream(Script::Write(MODELS)).await, dir.path(), |c| {
        c.limits.max_body = 1024;
        c.limits.max_headers = 20;
    })
    .await;
    let big = serde_json::json!({"model": "tiny", "prompt": "x".repeat(2000)});
    let response = http()
        .post(format!("{}/v1/completions", proxy.url()))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "request_too_large");
    // Without a length up front (chunked), the limit holds as the bytes come.
    let chunks = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 512])));
    let response = http()
        .post(format!("{}/v1/completions", proxy.url()))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let mut many = http().get(format!("{}/v1/models", proxy.url()));
    for i in 0..40 {
        many = many.header(format!("x-extra-{i}"), "1");
    }
    assert_eq!(many.send().await.unwrap().status(), 431);
    let fine = http()
        .get(format!("{}/v1/models", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200, "the proxy still serves");
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_of(&upstream(Script::Write(MODELS)).await, dir.path(), |c| {
        c.limits.max_connections = 32;
    })
    .await;
    let addr = proxy.addr();
    let clients: Vec<_> = (0..400)
        .map(|_| {
            tokio::spawn(async move {
                let mut socket = TcpStream::connect(addr).await.unwrap();
                socket
                    .write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let mut answer = Vec::new();
                socket.read_to_end(&mut answer).await.unwrap();
                answer.starts_with(b"HTTP/1.1 200")
            })
        })
        .collect();
    let mut served = 0;
    for client in clients {
        served += usize::from(client.await.unwrap());
    }
    assert_eq!(served, 400);
    let text = http()
        .get(format!("{}/tracebench/metrics", proxy.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("tracebench_proxy_requests_total{model=\"\",status=\"200\"} 400"),
        "{text}"
    );
    proxy.shutdown().await.unwrap();
}
