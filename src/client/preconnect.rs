//! Opening a run's connections before its first request, so that no measured
//! request pays for a TCP connect or a TLS handshake inside its TTFT, and a
//! server is not hit by one connection per request all at once.

use super::Client;
use futures::StreamExt as _;
use std::time::{Duration, Instant};

/// Connections opened at once: a server's accept queue is often 128 deep,
/// and a burst above it drops SYNs, each of which costs a second.
pub const PRECONNECT_PARALLEL: usize = 32;

/// What [`Client::preconnect`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Preconnected {
    /// Connections asked for.
    pub requested: usize,
    /// Connections opened and left idle in the pool.
    pub opened: usize,
    /// How long opening them all took.
    pub elapsed: Duration,
    /// Why the first connection that could not be opened failed.
    pub first_error: Option<String>,
}

impl std::fmt::Display for Preconnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "preconnect: {}/{} connections opened in {:.1} ms ({} at a time)",
            self.opened,
            self.requested,
            self.elapsed.as_secs_f64() * 1e3,
            PRECONNECT_PARALLEL
        )?;
        if let Some(error) = &self.first_error {
            let failed = self.requested - self.opened;
            write!(f, "; {failed} failed, the first: {error}")?;
        }
        Ok(())
    }
}

impl Client {
    /// Opens `connections` new connections (TCP, and TLS for `https://`) into
    /// the pool, [`PRECONNECT_PARALLEL`] at a time, for the requests that
    /// follow to reuse. Fails only when not one of them could be opened.
    pub async fn preconnect(&self, connections: usize) -> anyhow::Result<Preconnected> {
        let started = Instant::now();
        let mut opened = 0;
        let mut first_error = None;
        let mut attempts = futures::stream::iter(0..connections)
            .map(|_| self.pool.open_idle())
            .buffer_unordered(PRECONNECT_PARALLEL);
        while let Some(attempt) = attempts.next().await {
            match attempt {
                Ok(()) => opened += 1,
                Err(e) => {
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        if let (0, Some(error)) = (opened, &first_error) {
            anyhow::bail!("no connection opened ({connections} asked for): {error}");
        }
        Ok(Preconnected {
            requested: connections,
            opened,
            elapsed: started.elapsed(),
            first_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientOptions;
    use crate::clock::RunClock;
    use crate::record::Endpoint;
    use tokio::net::TcpListener;

    fn client(url: &str) -> Client {
        let options = ClientOptions::new(url, Endpoint::Chat, "m", "r");
        Client::new(options, RunClock::start()).expect("a client")
    }

    #[tokio::test]
    async fn preconnect_opens_every_connection_asked_for() {
        // 70 fit in the listener's accept queue, so nothing needs to accept yet.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let outcome = client(&url).preconnect(70).await.unwrap();
        assert_eq!((outcome.requested, outcome.opened), (70, 70));
        assert_eq!(outcome.first_error, None);
        assert!(
            outcome.to_string().contains("70/70 connections opened"),
            "{outcome}"
        );
        let mut sockets = Vec::new();
        for _ in 0..70 {
            sockets.push(listener.accept().await.expect("a waiting connection"));
        }
        let more = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(more.is_err(), "a 71st connection was opened");
    }

    #[tokio::test]
    async fn preconnect_fails_when_nothing_listens() {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let error = client(&format!("http://127.0.0.1:{port}"))
            .preconnect(3)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("no connection opened (3 asked for)"),
            "{error}"
        );
        let nothing = client(&format!("http://127.0.0.1:{port}"))
            .preconnect(0)
            .await
            .unwrap();
        assert_eq!(nothing.opened, 0);
    }
}
