//! The one fixed upstream, over two transports. Inference calls (the
//! measured ones) go over the client's own HTTP/1.1 exchange
//! ([`crate::client::http1`]): the task that answers the client writes and
//! reads the upstream's socket itself, so a streamed chunk costs one wake-up
//! and one read on its way through, and each read carries the instant its
//! bytes reached this machine. Every other method and path passes through
//! reqwest, which speaks whatever those need (`HEAD`, bodies of any framing).
//! Both answer with an [`UpstreamHead`] whose body is read chunk by chunk,
//! within the request's limits ([`BodyReader`]).

use crate::client::error_chain;
use crate::client::http1::{ConnectionStory, Http1Error, Http1Pool, Http1Response};
use crate::record::{ErrorKind, RequestError};
use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::StatusCode;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connection to the upstream may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer of an inference answer: a few dozen SSE events; a larger
/// head grows it. (Thousands of streams each hold one.)
const READ_BUFFER_BYTES: usize = 4096;

/// The upstream and its connections.
pub(crate) struct Upstream {
    /// `--upstream`, for messages and the pass-through URLs.
    base: String,
    /// The inference calls' keep-alive connections.
    pool: Arc<Http1Pool>,
    /// The upstream URL's path without its last `/`: what inference paths go under.
    prefix: String,
    /// Everything else: no proxy of its own, no redirects followed (the
    /// client sees them), no user agent added, Nagle off.
    http: reqwest::Client,
}

/// An answer whose head is in.
pub(crate) struct UpstreamHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// When the head reached this machine.
    pub arrived: Instant,
    pub body: UpstreamBody,
}

/// The body of an answer, read as it arrives.
pub(crate) enum UpstreamBody {
    Measured(Http1Response),
    Other(reqwest::Response),
}

impl UpstreamBody {
    /// The next bytes and the instant they reached this machine (over
    /// reqwest: when they were read); `None` at the end of the body.
    pub async fn chunk(&mut self) -> Result<Option<(Bytes, Instant)>, String> {
        match self {
            UpstreamBody::Measured(response) => match response.chunk().await {
                Ok(chunk) => Ok(chunk.map(|(bytes, at)| (Bytes::copy_from_slice(bytes), at))),
                Err(e) => Err(e.to_string()),
            },
            UpstreamBody::Other(response) => match response.chunk().await {
                Ok(chunk) => Ok(chunk.map(|bytes| (bytes, Instant::now()))),
                Err(e) => Err(error_chain(&e)),
            },
        }
    }
}

/// Why the upstream gave no answer: the record's error and the client's status.
pub(crate) type Failure = (RequestError, StatusCode);

impl Upstream {
    pub fn new(url: &reqwest::Url) -> anyhow::Result<Self> {
        let (pool, prefix) = crate::client::http1_pool(url.as_str(), [])?;
        crate::client::install_tls_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .pool_max_idle_per_host(usize::MAX)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Self {
            base: url.as_str().trim_end_matches('/').to_string(),
            pool: Arc::new(pool.with_limits(CONNECT_TIMEOUT, READ_BUFFER_BYTES)),
            prefix: prefix.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// Posts a measured inference call to `path` (with its query) on the
    /// HTTP/1.1 exchange; `story` says how it got its connection.
    pub async fn post(
        &self,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
        story: &mut ConnectionStory,
    ) -> Result<UpstreamHead, Failure> {
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        let path = format!("{}{path}", self.prefix);
        let response = self
            .pool
            .post(&path, &pairs, body, story)
            .await
            .map_err(|e| self.http1_failure(e, story))?;
        let mut headers = HeaderMap::new();
        response.each_header(|name, value| {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
        });
        Ok(UpstreamHead {
            status: StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY),
            headers,
            arrived: response.arrived(),
            body: UpstreamBody::Measured(response),
        })
    }

    /// Passes any other request through reqwest.
    pub async fn pass(
        &self,
        method: &hyper::Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamHead, Failure> {
        let invalid = |message: String| {
            let error = RequestError {
                kind: ErrorKind::InvalidResponse,
                message,
                status: None,
                body_excerpt: None,
            };
            (error, StatusCode::BAD_REQUEST)
        };
        let url = reqwest::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| invalid(format!("the path {path} cannot be passed on: {e}")))?;
        let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
            .map_err(|e| invalid(format!("unknown method: {e}")))?;
        let mut request = reqwest::Request::new(method, url);
        *request.headers_mut() = headers;
        *request.body_mut() = Some(reqwest::Body::from(body));
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| self.reqwest_failure(&e))?;
        Ok(UpstreamHead {
            status: response.status(),
            headers: response.headers().clone(),
            arrived: Instant::now(),
            body: UpstreamBody::Other(response),
        })
    }

    fn http1_failure(&self, error: Http1Error, story: &ConnectionStory) -> Failure {
        let (kind, what) = match &error {
            Http1Error::Send(_) if !story.has_connection() => {
                (ErrorKind::Connect, "cannot be reached")
            }
            Http1Error::Send(_) => (ErrorKind::Stream, "broke off before answering"),
            Http1Error::Protocol(_) => (ErrorKind::InvalidResponse, "answered in broken HTTP/1.1"),
        };
        self.failure(kind, StatusCode::BAD_GATEWAY, what, &error.to_string())
    }

    fn reqwest_failure(&self, error: &reqwest::Error) -> Failure {
        let (kind, status, what) = if error.is_timeout() {
            (
                ErrorKind::FirstByteTimeout,
                StatusCode::GATEWAY_TIMEOUT,
                "did not answer in time",
            )
        } else if error.is_connect() {
            (
                ErrorKind::Connect,
                StatusCode::BAD_GATEWAY,
                "cannot be reached",
            )
        } else {
            (
                ErrorKind::Stream,
                StatusCode::BAD_GATEWAY,
                "broke off before answering",
            )
        };
        self.failure(kind, status, what, &error_chain(error))
    }

    fn failure(&self, kind: ErrorKind, status: StatusCode, what: &str, why: &str) -> Failure {
        let error = RequestError {
            kind,
            message: format!("the upstream {} {what}: {why}", self.base),
            status: None,
            body_excerpt: None,
        };
        (error, status)
    }
}

/// The upstream's body, read within `--idle-timeout` and the request's
/// deadline. One timer per answer, moved on only when it fires: a chunk
/// costs no timer.
pub(crate) struct BodyReader {
    body: UpstreamBody,
    idle: Duration,
    deadline: tokio::time::Instant,
    /// When the upstream last sent something.
    last: tokio::time::Instant,
    stall: Pin<Box<tokio::time::Sleep>>,
}

impl BodyReader {
    pub fn new(body: UpstreamBody, idle: Duration, deadline: tokio::time::Instant) -> Self {
        let last = tokio::time::Instant::now();
        let stall = Box::pin(tokio::time::sleep_until((last + idle).min(deadline)));
        Self {
            body,
            idle,
            deadline,
            last,
            stall,
        }
    }

    /// The next bytes and when they arrived; `None` at the end; the error
    /// kind and message when the upstream broke off or went silent.
    pub async fn next(&mut self) -> Result<Option<(Bytes, Instant)>, (ErrorKind, String)> {
        loop {
            let next = tokio::select! {
                biased;
                chunk = self.body.chunk() => Some(chunk),
                () = self.stall.as_mut() => None,
            };
            match next {
                Some(Ok(chunk)) => {
                    self.last = tokio::time::Instant::now();
                    return Ok(chunk);
                }
                Some(Err(e)) => {
                    return Err((
                        ErrorKind::Stream,
                        format!("the upstream's answer broke off: {e}"),
                    ))
                }
                None => {
                    let stall_at = (self.last + self.idle).min(self.deadline);
                    if stall_at > tokio::time::Instant::now() {
                        self.stall.as_mut().reset(stall_at);
                        continue;
                    }
                    let silent = Duration::from_millis(
                        self.last
                            .elapsed()
                            .as_millis()
                            .try_into()
                            .unwrap_or(u64::MAX),
                    );
                    return Err((
                        ErrorKind::Timeout,
                        format!(
                            "the upstream went silent for {} (--idle-timeout / --request-timeout)",
                            humantime::format_duration(silent)
                        ),
                    ));
                }
            }
        }
    }
}
