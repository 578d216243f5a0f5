//! The HTTP/1.1 transport of benchmark requests, over plain TCP or TLS. Each
//! request has a keep-alive connection to itself; the response head is parsed
//! with `httparse` and the body's framing (chunked, `Content-Length` or until
//! close) is undone here, on the task that stamps the instants, so a streamed
//! chunk costs one wake-up and one read, and each read carries the instant its
//! bytes reached this machine. Every request says how it got its connection
//! (a [`ConnectionStory`]), and idle connections can be opened ahead of the
//! requests ([`Http1Pool::open_idle`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::connection::{Connection, TlsTarget};
use super::framing::{BodyDecoder, ParsedHead};

/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Read buffer size unless the pool says otherwise; a streamed chunk is far smaller.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// How one request got its connection, filled in as it happens: a request
/// that fails or times out halfway keeps what was known by then.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConnectionStory {
    /// An idle kept-alive connection carried the request.
    pub reused: bool,
    /// A new connection's TCP connect, from the connect call until the
    /// connection was established.
    pub connect: Option<Duration>,
    /// A new `https://` connection's TLS handshake, after the connect.
    pub tls: Option<Duration>,
    /// When the request's last byte was handed to the kernel (to TLS and
    /// then the kernel, over `https://`).
    pub written: Option<Instant>,
}

impl ConnectionStory {
    /// True once a connection was in hand: reused, or connected.
    pub fn has_connection(&self) -> bool {
        self.reused || self.connect.is_some()
    }
}

/// Where the requests go and the idle keep-alive connections to it.
#[derive(Debug)]
pub struct Http1Pool {
    /// `host:port` to connect to.
    address: String,
    /// TLS settings for `https://`; `None` speaks plain TCP.
    tls: Option<TlsTarget>,
    /// The headers every request shares, after the request line:
    /// `host: ...\r\n...`.
    shared_headers: Vec<u8>,
    /// Longest TCP connect; without one, the caller's own timeouts bound it.
    connect_timeout: Option<Duration>,
    /// Each response's read buffer (it grows for a larger head).
    read_buffer: usize,
    idle: Mutex<Vec<Connection>>,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum Http1Error {
    /// No connection, or it broke before the response head was complete.
    Send(String),
    /// The response head or body framing is not HTTP/1.1.
    Protocol(String),
}

impl std::fmt::Display for Http1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Http1Error::Send(message) | Http1Error::Protocol(message) => f.write_str(message),
        }
    }
}

impl Http1Pool {
    /// A pool for `POST`s to `host:port`, over TLS when `tls` is given, with
    /// `headers` (name, value) sent on every request.
    pub(crate) fn new<'a>(
        host: &str,
        port: u16,
        tls: Option<TlsTarget>,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Self {
        let address = format!("{host}:{port}");
        let mut shared_headers = format!("host: {address}\r\n").into_bytes();
        for (name, value) in headers {
            shared_headers.extend_from_slice(name.as_bytes());
            shared_headers.extend_from_slice(b": ");
            shared_headers.extend_from_slice(value);
            shared_headers.extend_from_slice(b"\r\n");
        }
        Self {
            address,
            tls,
            shared_headers,
            connect_timeout: None,
            read_buffer: READ_BUFFER_BYTES,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The same pool with TCP connects given up after `limit` and reads of
    /// `read_buffer` bytes at most (a relay holding thousands of streams
    /// wants small buffers).
    pub(crate) fn with_limits(self, limit: Duration, read_buffer: usize) -> Self {
        Self {
            connect_timeout: Some(limit),
            read_buffer,
            ..self
        }
    }

    /// Sends one `POST` to `path` (with its query) with `extra_headers` and
    /// `body`; returns once the response head is in, with `story` saying how
    /// the request got its connection. A kept-alive connection the server
    /// closed while it was idle is replaced by a new one, once.
    pub async fn post(
        self: &Arc<Self>,
        path: &str,
        extra_headers: &[(&str, &[u8])],
        body: &[u8],
        story: &mut ConnectionStory,
    ) -> Result<Http1Response, Http1Error> {
        let request = self.request(path, extra_headers, body)?;
        if let Some(connection) = self.take_idle() {
            *story = ConnectionStory {
                reused: true,
                ..ConnectionStory::default()
            };
            match self.exchange(connection, &request, story).await {
                Err(Exchange::NothingBack(_)) => {}
                other => return other.map_err(Exchange::into_error),
            }
        }
        *story = ConnectionStory::default();
        let connection = self.open(story).await?;
        self.exchange(connection, &request, story)
            .await
            .map_err(Exchange::into_error)
    }

    /// Opens a new connection and leaves it idle in the pool for a later request.
    pub async fn open_idle(&self) -> Result<(), Http1Error> {
        let connection = self.open(&mut ConnectionStory::default()).await?;
        self.put_idle(connection);
        Ok(())
    }

    /// Opens a new connection: TCP, then TLS for `https://`, each step timed into `story`.
    async fn open(&self, story: &mut ConnectionStory) -> Result<Connection, Http1Error> {
        let started = Instant::now();
        let connect = Connection::connect_tcp(&self.address);
        let connected = match self.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connect)
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {}", humantime::format_duration(limit)),
                    ))
                }),
            None => connect.await,
        };
        let stream = connected
            .map_err(|e| Http1Error::Send(format!("could not connect to {}: {e}", self.address)))?;
        story.connect = Some(started.elapsed());
        let Some(tls) = &self.tls else {
            return Connection::plain(stream)
                .map_err(|e| Http1Error::Send(format!("could not register the connection: {e}")));
        };
        let started = Instant::now();
        let connection = Connection::tls(stream, tls).await.map_err(|e| {
            Http1Error::Send(format!(
                "the TLS handshake with {} failed: {e}",
                self.address
            ))
        })?;
        story.tls = Some(started.elapsed());
        Ok(connection)
    }

    /// The bytes of one request: the request line, the shared headers,
    /// `extra_headers`, `body`.
    fn request(
        &self,
        path: &str,
        extra_headers: &[(&str, &[u8])],
        body: &[u8],
    ) -> Result<Vec<u8>, Http1Error> {
        use std::io::Write as _;
        let mut request = Vec::with_capacity(self.shared_headers.len() + 512 + body.len());
        let _ = write!(request, "POST {path} HTTP/1.1\r\n");
        request.extend_from_slice(&self.shared_headers);
        for (name, value) in extra_headers {
            // A line break in a value would split the head: refuse it here, for every caller.
            if value.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
                return Err(Http1Error::Send(format!(
                    "the {name} header has a control character in {:?}",
                    String::from_utf8_lossy(value)
                )));
            }
            request.extend_from_slice(name.as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(value);
            request.extend_from_slice(b"\r\n");
        }
        let _ = write!(request, "content-length: {}\r\n\r\n", body.len());
        request.extend_from_slice(body);
        Ok(request)
    }

    /// An idle connection that still looks open.
    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("the pool lock is never poisoned");
        while let Some(mut connection) = idle.pop() {
            if connection.is_quiet() {
                return Some(connection);
            }
        }
        None
    }

    fn put_idle(&self, connection: Connection) {
        self.idle
            .lock()
            .expect("the pool lock is never poisoned")
            .push(connection);
    }

    async fn exchange(
        self: &Arc<Self>,
        mut connection: Connection,
        request: &[u8],
        story: &mut ConnectionStory,
    ) -> Result<Http1Response, Exchange> {
        connection.write_all(request).await.map_err(|e| {
            Exchange::NothingBack(format!("the connection broke while sending: {e}"))
        })?;
        story.written = Some(Instant::now());
        let mut buffer = vec![0u8; self.read_buffer];
        let mut filled = 0;
        let mut arrived = Instant::now();
        loop {
            if filled > 0 {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut head = httparse::Response::new(&mut headers);
                match head.parse(&buffer[..filled]) {
                    Ok(httparse::Status::Partial) => {}
                    Ok(httparse::Status::Complete(head_len)) => {
                        let status = head.code.unwrap_or(0);
                        if (100..200).contains(&status) {
                            // An interim answer (103 Early Hints): the real head follows.
                            buffer.copy_within(head_len..filled, 0);
                            filled -= head_len;
                            continue;
                        }
                        let parsed = ParsedHead::read(&head, status).map_err(Exchange::Failed)?;
                        return Ok(Http1Response {
                            status,
                            head_len: Some(head_len),
                            content_type: parsed.content_type,
                            arrived,
                            connection: Some(connection),
                            pool: Arc::clone(self),
                            buffer,
                            start: head_len,
                            end: filled,
                            body: parsed.body,
                            keep_alive: parsed.keep_alive,
                            decoded: Vec::new(),
                        });
                    }
                    Err(e) => {
                        return Err(Exchange::Failed(Http1Error::Protocol(format!(
                            "the response is not HTTP/1.1: {e}"
                        ))))
                    }
                }
            }
            if filled == buffer.len() {
                if buffer.len() >= MAX_HEAD_BYTES {
                    return Err(Exchange::Failed(Http1Error::Protocol(format!(
                        "the response head is larger than {} KiB",
                        MAX_HEAD_BYTES / 1024
                    ))));
                }
                buffer.resize(buffer.len() * 2, 0);
            }
            match connection.read(&mut buffer[filled..]).await {
                Ok((0, _)) if filled == 0 => {
                    return Err(Exchange::NothingBack(
                        "the server closed the connection without answering".into(),
                    ))
                }
                Ok((0, _)) => {
                    return Err(Exchange::Failed(Http1Error::Send(
                        "the server closed the connection in the middle of the response head"
                            .into(),
                    )))
                }
                Ok((n, at)) => {
                    filled += n;
                    arrived = at;
                }
                Err(e) if filled == 0 => {
                    return Err(Exchange::NothingBack(format!(
                        "the connection broke before the response: {e}"
                    )))
                }
                Err(e) => {
                    return Err(Exchange::Failed(Http1Error::Send(format!(
                        "the connection broke in the middle of the response head: {e}"
                    ))))
                }
            }
        }
    }
}

/// How an exchange on one connection ended.
enum Exchange {
    /// Not one byte came back: a reused connection may simply have been closed.
    NothingBack(String),
    Failed(Http1Error),
}

impl Exchange {
    fn into_error(self) -> Http1Error {
        match self {
            Exchange::NothingBack(message) => Http1Error::Send(message),
            Exchange::Failed(error) => error,
        }
    }
}

/// A response whose head is in; its body is read with [`Http1Response::chunk`].
pub struct Http1Response {
    pub status: u16,
    /// The length of the response head at the start of `buffer`, until the
    /// first read of the body writes over it ([`Http1Response::each_header`]).
    head_len: Option<usize>,
    pub content_type: Option<String>,
    /// When the bytes of the latest read reached this machine.
    arrived: Instant,
    connection: Option<Connection>,
    pool: Arc<Http1Pool>,
    buffer: Vec<u8>,
    /// Bytes `start..end` of `buffer` are read but not yet decoded.
    start: usize,
    end: usize,
    body: BodyDecoder,
    keep_alive: bool,
    decoded: Vec<u8>,
}

impl Http1Response {
    /// When the bytes of the latest read reached this machine: until the body
    /// is read, those that completed the response head.
    pub fn arrived(&self) -> Instant {
        self.arrived
    }

    /// Calls `each` with every header of the response head, in order; to be
    /// asked before the body is read (the head's bytes are not kept after).
    pub fn each_header(&self, mut each: impl FnMut(&str, &[u8])) {
        let Some(head_len) = self.head_len else {
            debug_assert!(false, "each_header after the body was read");
            return;
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut head = httparse::Response::new(&mut headers);
        if head.parse(&self.buffer[..head_len]).is_ok() {
            for header in head.headers.iter() {
                each(header.name, header.value);
            }
        }
    }

    /// The body bytes that are in, as soon as there are any, with the instant
    /// they reached this machine; `None` at the end of the body (the
    /// connection then goes back to the pool).
    pub async fn chunk(&mut self) -> Result<Option<(&[u8], Instant)>, Http1Error> {
        loop {
            self.decoded.clear();
            self.start += self
                .body
                .decode(&self.buffer[self.start..self.end], &mut self.decoded)?;
            if !self.decoded.is_empty() {
                return Ok(Some((&self.decoded, self.arrived)));
            }
            if self.body.is_done() {
                self.release();
                return Ok(None);
            }
            self.fill().await?;
        }
    }

    /// Reads more of the body into the buffer.
    async fn fill(&mut self) -> Result<(), Http1Error> {
        self.head_len = None;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buffer.len() {
            self.buffer.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let connection = self
            .connection
            .as_mut()
            .expect("a response being read has its connection");
        match connection.read(&mut self.buffer[self.end..]).await {
            Ok((0, _)) => self.body.end_of_input(),
            Ok((n, arrived)) => {
                self.end += n;
                self.arrived = arrived;
                Ok(())
            }
            Err(e) => Err(Http1Error::Send(e.to_string())),
        }
    }

    /// Hands a cleanly finished keep-alive connection back to the pool.
    fn release(&mut self) {
        if let Some(connection) = self.connection.take() {
            if self.keep_alive && self.start == self.end {
                self.pool.put_idle(connection);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Reads one request (head and `content-length` body) from `socket`.
    async fn read_request(socket: &mut TcpStream) -> Option<String> {
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let n = socket.read(&mut buffer).await.ok()?;
            if n == 0 {
                return None;
            }
            request.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&request).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    return Some(text);
                }
            }
        }
    }

    /// A server whose i-th connection answers each request with `answers[i].0`,
    /// and closes after its first answer when `answers[i].1` says so.
    /// Returns its port and the requests it read, per connection.
    async fn server(answers: Vec<(&'static [u8], bool)>) -> (u16, Arc<Mutex<Vec<Vec<String>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            for (answer, close_after) in answers {
                let (mut socket, _) = listener.accept().await.unwrap();
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(Vec::new());
                    log.len() - 1
                };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    while let Some(request) = read_request(&mut socket).await {
                        log.lock().unwrap()[index].push(request);
                        socket.write_all(answer).await.unwrap();
                        if close_after {
                            return;
                        }
                    }
                });
            }
        });
        (port, seen)
    }

    const PATH: &str = "/v1/completions";

    fn pool(port: u16) -> Arc<Http1Pool> {
        Arc::new(Http1Pool::new(
            "127.0.0.1",
            port,
            None,
            [("authorization", b"Bearer k".as_slice())],
        ))
    }

    async fn body_of(response: &mut Http1Response) -> Vec<u8> {
        let mut body = Vec::new();
        while let Some((bytes, _)) = response.chunk().await.unwrap() {
            body.extend_from_slice(bytes);
        }
        body
    }

    const KEEP_ALIVE: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";

    #[tokio::test]
    async fn a_kept_alive_connection_serves_the_next_request() {
        let (port, seen) = server(vec![(KEEP_ALIVE, false)]).await;
        let pool = pool(port);
        let mut stories = Vec::new();
        for _ in 0..2 {
            let mut story = ConnectionStory::default();
            let mut response = pool
                .post(
                    PATH,
                    &[("x-request-id", b"r-1".as_slice())],
                    b"{\"a\":1}",
                    &mut story,
                )
                .await
                .unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(response.content_type.as_deref(), Some("text/event-stream"));
            assert_eq!(body_of(&mut response).await, b"hello");
            stories.push(story);
        }
        // The first request opened its connection, the second one reused it.
        assert!(!stories[0].reused);
        assert!(stories[0].connect.is_some());
        assert_eq!(stories[0].tls, None, "no TLS over http://");
        assert!(stories[1].reused);
        assert_eq!((stories[1].connect, stories[1].tls), (None, None));
        assert!(stories
            .iter()
            .all(|s| s.written.is_some() && s.has_connection()));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one connection for both requests");
        let request = &seen[0][0];
        assert!(
            request.starts_with("POST /v1/completions HTTP/1.1\r\n"),
            "{request}"
        );
        for line in [
            &format!("host: 127.0.0.1:{port}"),
            "authorization: Bearer k",
            "x-request-id: r-1",
            "content-length: 7",
        ] {
            assert!(
                request.contains(&format!("{line}\r\n")),
                "{line} in {request}"
            );
        }
        assert!(request.ends_with("\r\n\r\n{\"a\":1}"), "{request}");
    }

    #[tokio::test]
    async fn the_head_s_headers_are_given_before_the_body_is_read() {
        let (port, _) = server(vec![(KEEP_ALIVE, false)]).await;
        let mut response = pool(port)
            .post(PATH, &[], b"{}", &mut ConnectionStory::default())
            .await
            .unwrap();
        let mut headers = Vec::new();
        response.each_header(|name, value| headers.push((name.to_string(), value.to_vec())));
        assert_eq!(
            headers,
            vec![
                ("content-type".to_string(), b"text/event-stream".to_vec()),
                ("transfer-encoding".to_string(), b"chunked".to_vec()),
            ]
        );
        assert_eq!(body_of(&mut response).await, b"hello");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        // The first answer allows keep-alive, but the server closes right after it.
        let (port, seen) = server(vec![(OK, true), (OK, false)]).await;
        let pool = pool(port);
        let mut first = pool
            .post(PATH, &[], b"{}", &mut ConnectionStory::default())
            .await
            .unwrap();
        assert_eq!(body_of(&mut first).await, b"ok");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut story = ConnectionStory::default();
        let mut second = pool.post(PATH, &[], b"{}", &mut story).await.unwrap();
        assert_eq!(body_of(&mut second).await, b"ok");
        assert!(!story.reused && story.connect.is_some(), "{story:?}");
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "a new connection for the second"
        );
    }

    #[tokio::test]
    async fn connection_close_and_interim_answers() {
        const CLOSE: &[u8] = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 4\r\n\r\nbusy";
        let (port, seen) = server(vec![(CLOSE, false), (CLOSE, false)]).await;
        let pool = pool(port);
        for _ in 0..2 {
            let mut response = pool
                .post(PATH, &[], b"{}", &mut ConnectionStory::default())
                .await
                .unwrap();
            assert_eq!(response.status, 503);
            assert_eq!(body_of(&mut response).await, b"busy");
        }
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "connection: close is not reused"
        );
    }

    #[tokio::test]
    async fn a_header_value_cannot_split_the_head() {
        let Err(Http1Error::Send(message)) = pool(1)
            .post(
                PATH,
                &[("x-request-id", b"a\r\nx-evil: 1".as_slice())],
                b"{}",
                &mut ConnectionStory::default(),
            )
            .await
        else {
            panic!("a line break in a header value must be refused");
        };
        assert!(message.contains("x-request-id header"), "{message}");
    }

    #[tokio::test]
    async fn nothing_listening_is_a_send_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut story = ConnectionStory::default();
        let Err(Http1Error::Send(message)) = pool(port).post(PATH, &[], b"{}", &mut story).await
        else {
            panic!("connecting to a closed port must fail");
        };
        assert!(message.contains("could not connect"), "{message}");
        assert!(!story.has_connection(), "{story:?}");
        assert_eq!(story.written, None);
    }

    #[tokio::test]
    async fn connections_opened_ahead_carry_the_next_requests() {
        let (port, seen) = server(vec![(KEEP_ALIVE, false); 3]).await;
        let pool = pool(port);
        for _ in 0..3 {
            pool.open_idle().await.unwrap();
        }
        for _ in 0..3 {
            let mut story = ConnectionStory::default();
            let mut response = pool.post(PATH, &[], b"{}", &mut story).await.unwrap();
            assert_eq!(body_of(&mut response).await, b"hello");
            assert!(story.reused, "{story:?}");
        }
        assert_eq!(
            seen.lock().unwrap().len(),
            3,
            "no connection beyond the three"
        );
    }
}
