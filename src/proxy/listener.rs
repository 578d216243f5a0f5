//! Accepting clients: at most `--max-connections` at once (more wait in the
//! kernel's backlog), HTTP/1.1 with keep-alive, request heads limited to
//! `--max-headers` lines and `--max-header-bytes` (431 beyond) and 30 s to
//! arrive. On stop, no new connection is taken, each open one finishes the
//! request it is answering, and after the grace period the rest are cut.

use super::forward::{handle, ProxyBody};
use super::Shared;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Longest wait for a request head once a connection has sent its first byte.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves connections until `stop`, then drains them for `grace`.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    grace: Duration,
) {
    let limits = shared.config.limits;
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (socket, _) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    eprintln!("note: the proxy could not accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move {
                    Ok::<hyper::Response<ProxyBody>, Infallible>(handle(shared, request).await)
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_headers(limits.max_headers)
                .max_buf_size(limits.max_header_bytes)
                .keep_alive(true)
                .serve_connection(TokioIo::new(socket), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}
