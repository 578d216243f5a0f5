//! One connection of the HTTP/1.1 transport. Plain TCP is read with the
//! kernel's receive timestamps (`SO_TIMESTAMPNS` on Linux): every read says
//! when its bytes reached this machine, not only when a busy task got round to
//! reading them, so the client's own delays stay out of the instants it stamps.
//! Over TLS (rustls) a read's instant is the moment it returned.

use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// A receive timestamp older than this is not believed (the wall clock was
/// stepped between the kernel's stamp and the read).
const MAX_BELIEVED_AGE: Duration = Duration::from_secs(10);

/// An open connection, registered with the runtime.
#[derive(Debug)]
pub(crate) struct Connection {
    link: Link,
}

#[derive(Debug)]
enum Link {
    /// Plain TCP, non-blocking, read with `recvmsg` for the receive timestamps.
    Plain(AsyncFd<std::net::TcpStream>),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Where `https://` connections go: the TLS settings and the name the
/// server's certificate must carry.
#[derive(Clone)]
pub(crate) struct TlsTarget {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsTarget {
    /// TLS to `host` (a name or an IP address, IPv6 in brackets or not),
    /// trusting what the platform trusts (with `SSL_CERT_FILE` honoured),
    /// offering HTTP/1.1 only.
    pub fn new(host: &str) -> anyhow::Result<Self> {
        use rustls_platform_verifier::ConfigVerifierExt as _;
        super::install_tls_provider();
        let mut config = rustls::ClientConfig::with_platform_verifier()
            .map_err(|e| anyhow::anyhow!("cannot set up TLS: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(bare.to_string())
            .map_err(|e| anyhow::anyhow!("{host} is not a TLS server name: {e}"))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

impl Connection {
    /// Opens a TCP connection to `address` without Nagle's delay: the first
    /// step of every new connection, before [`Connection::plain`] or
    /// [`Connection::tls`].
    pub async fn connect_tcp(address: &str) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// A plain connection over `stream`, with receive timestamps on.
    pub fn plain(stream: TcpStream) -> io::Result<Self> {
        let stream = stream.into_std()?;
        enable_receive_timestamps(stream.as_raw_fd());
        // SAFETY: the stream owns its descriptor and hands it to the AsyncFd,
        // which owns the stream from now on: it stays open and the same until drop.
        let socket = unsafe { AsyncFd::register(stream) }.map_err(io::Error::from)?;
        Ok(Self {
            link: Link::Plain(socket),
        })
    }

    /// A TLS connection over `stream`, once the handshake is done.
    pub async fn tls(stream: TcpStream, target: &TlsTarget) -> io::Result<Self> {
        let stream = target
            .connector
            .connect(target.server_name.clone(), stream)
            .await?;
        Ok(Self {
            link: Link::Tls(Box::new(stream)),
        })
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.link {
            Link::Plain(socket) => write_plain(socket, bytes).await,
            Link::Tls(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
        }
    }

    /// Reads what has arrived into `buffer`: the byte count (0 at the end of
    /// the stream) and the instant the last of those bytes reached this
    /// machine (the read's own instant over TLS or where the kernel gave no
    /// timestamp).
    pub async fn read(&mut self, buffer: &mut [u8]) -> io::Result<(usize, Instant)> {
        match &mut self.link {
            Link::Plain(socket) => read_plain(socket, buffer).await,
            Link::Tls(stream) => {
                let read = stream.read(buffer).await?;
                Ok((read, Instant::now()))
            }
        }
    }

    /// True when the connection is open and nothing waits to be read on it:
    /// an idle keep-alive connection fit to carry the next request. (What a
    /// TLS server sends unasked after the handshake, such as session tickets,
    /// is taken in here and does not count.)
    pub fn is_quiet(&mut self) -> bool {
        match &mut self.link {
            Link::Plain(socket) => matches!(socket.get_ref().peek(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            Link::Tls(stream) => stream.read(&mut [0u8; 1]).now_or_never().is_none(),
        }
    }
}

async fn write_plain(socket: &AsyncFd<std::net::TcpStream>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let mut ready = socket.writable().await?;
        match ready.try_io(|socket| socket.get_ref().write(bytes)) {
            Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(Ok(written)) => bytes = &bytes[written..],
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

async fn read_plain(
    socket: &AsyncFd<std::net::TcpStream>,
    buffer: &mut [u8],
) -> io::Result<(usize, Instant)> {
    loop {
        let mut ready = socket.readable().await?;
        match receive(socket.as_raw_fd(), buffer) {
            Ok((read, stamp)) => {
                let now = Instant::now();
                let arrived =
                    stamp.and_then(|stamp| arrival(now, crate::units::unix_now_ns(), stamp));
                if read > 0 && read < buffer.len() {
                    // The socket is drained: wait for the next readiness
                    // event instead of trying a read that would block.
                    ready.clear_ready();
                }
                return Ok((read, arrived.unwrap_or(now)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Asks the kernel to stamp received bytes; without it reads carry no stamp.
fn enable_receive_timestamps(fd: RawFd) {
    #[cfg(target_os = "linux")]
    {
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the right size. A failure
        // only means reads come without a stamp.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

/// One `recvmsg`: the bytes read and the kernel's receive timestamp of the
/// last of them (Unix nanoseconds), when it sent one.
fn receive(fd: RawFd, buffer: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // Room for one timestamp control message, aligned as `cmsghdr` needs.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; its pointers are set just below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: the message points at `buffer` and `control`, both alive and
    // as long as the lengths say.
    let read = unsafe { libc::recvmsg(fd, &mut message, 0) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((read as usize, timestamp_of(&message)))
}

/// The `SCM_TIMESTAMPNS` control message of a received message, in Unix
/// nanoseconds, if any.
fn timestamp_of(message: &libc::msghdr) -> Option<u64> {
    #[cfg(target_os = "linux")]
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within
    // the length it set; the timestamp is read unaligned from inside it.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET
                && (*header).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let stamp: libc::timespec =
                    std::ptr::read_unaligned(libc::CMSG_DATA(header).cast());
                let seconds = u64::try_from(stamp.tv_sec).ok()?;
                let nanos = u64::try_from(stamp.tv_nsec).ok()?;
                return Some(seconds * 1_000_000_000 + nanos);
            }
            header = libc::CMSG_NXTHDR(message, header);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = message;
    None
}

/// The monotonic instant of a wall-clock receive `stamp_ns`, given the
/// monotonic and wall-clock (`now_unix_ns`) readings of one moment after it.
fn arrival(now: Instant, now_unix_ns: u64, stamp_ns: u64) -> Option<Instant> {
    let age = Duration::from_nanos(now_unix_ns.checked_sub(stamp_ns)?);
    if age > MAX_BELIEVED_AGE {
        return None;
    }
    now.checked_sub(age)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A listener on a free loopback port, and its address.
    async fn listen() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        (listener, address)
    }

    async fn connect(address: &str) -> Connection {
        let stream = Connection::connect_tcp(address).await.expect("connect");
        Connection::plain(stream).expect("register")
    }

    #[test]
    fn arrival_moves_back_by_the_stamps_age() {
        let now = Instant::now();
        let wall = crate::units::unix_now_ns();
        let ms = 1_000_000;
        let stamp = wall - 30 * ms;
        assert_eq!(
            arrival(now, wall, stamp),
            Some(now - Duration::from_millis(30))
        );
        // A stamp from the future or from long ago means the wall clock moved.
        assert_eq!(arrival(now, wall, wall + ms), None);
        assert_eq!(arrival(now, wall, wall - 60_000 * ms), None);
    }

    #[tokio::test]
    async fn bytes_read_late_keep_the_instant_they_arrived() {
        let (listener, address) = listen().await;
        let (written_tx, written_rx) = tokio::sync::oneshot::channel();
        let (stamping_tx, stamping_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            // As a server answers a request: once the client's socket stamps
            // what it receives (bytes queued before that carry no stamp).
            stamping_rx.await.expect("the client registered");
            socket.write_all(b"early").await.expect("write");
            let _ = written_tx.send(Instant::now());
            // Keep the connection open until the client has read.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let mut connection = connect(&address).await;
        // Linux turns receive stamping on for the first stamping socket of the
        // machine in deferred work: bytes that arrive before it ran carry no
        // stamp. A real response comes milliseconds after the connect.
        tokio::time::sleep(Duration::from_millis(20)).await;
        stamping_tx.send(()).expect("the server waits");
        let written = written_rx.await.expect("the server wrote");
        // A client busy elsewhere: the bytes wait in the socket for 200 ms.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut buffer = [0u8; 64];
        let (read, arrived) = connection.read(&mut buffer).await.expect("read");
        let read_at = Instant::now();
        server.abort();
        assert_eq!(&buffer[..read], b"early");
        // A stamp taken at the read would be 200 ms late: the checks split that
        // difference, so a busy machine's clock noise cannot decide them.
        assert!(
            read_at - arrived >= Duration::from_millis(100),
            "stamped only {:?} before the read",
            read_at - arrived
        );
        assert!(
            arrived <= written + Duration::from_millis(100),
            "stamped {:?} after the write returned",
            arrived - written
        );
    }

    #[tokio::test]
    async fn a_closed_connection_is_not_quiet() {
        let (listener, address) = listen().await;
        let mut connection = connect(&address).await;
        let (socket, _) = listener.accept().await.expect("accept");
        assert!(connection.is_quiet());
        drop(socket);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!connection.is_quiet());
    }
}
