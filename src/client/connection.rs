//! One TCP connection of the plain-HTTP transport, read with the kernel's
//! receive timestamps (`SO_TIMESTAMPNS` on Linux): every read says when its
//! bytes reached this machine, not only when a busy task got round to reading
//! them, so the client's own delays stay out of the instants it stamps.

use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

/// A receive timestamp older than this is not believed (the wall clock was
/// stepped between the kernel's stamp and the read).
const MAX_BELIEVED_AGE: Duration = Duration::from_secs(10);

/// A connected, non-blocking TCP socket registered with the runtime.
#[derive(Debug)]
pub(crate) struct Connection {
    socket: AsyncFd<std::net::TcpStream>,
}

impl Connection {
    /// Connects without Nagle's delay and with receive timestamps on.
    pub async fn connect(address: &str) -> io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let stream = stream.into_std()?;
        enable_receive_timestamps(stream.as_raw_fd());
        // SAFETY: the stream owns its descriptor and hands it to the AsyncFd,
        // which owns the stream from now on: it stays open and the same until drop.
        let socket = unsafe { AsyncFd::register(stream) }.map_err(io::Error::from)?;
        Ok(Self { socket })
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut ready = self.socket.writable().await?;
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

    /// Reads what has arrived into `buffer`: the byte count (0 at the end of
    /// the stream) and the instant the last of those bytes reached this
    /// machine (the read's own instant where the kernel gave no timestamp).
    pub async fn read(&self, buffer: &mut [u8]) -> io::Result<(usize, Instant)> {
        loop {
            let mut ready = self.socket.readable().await?;
            match receive(self.socket.as_raw_fd(), buffer) {
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

    /// True when the connection is open and nothing waits to be read on it:
    /// an idle keep-alive connection fit to carry the next request.
    pub fn is_quiet(&self) -> bool {
        matches!(self.socket.get_ref().peek(&mut [0u8; 1]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock)
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
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            socket.write_all(b"early").await.expect("write");
            let _ = written_tx.send(Instant::now());
            // Keep the connection open until the client has read.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let connection = Connection::connect(&address).await.expect("connect");
        let written = written_rx.await.expect("the server wrote");
        // A client busy elsewhere: the bytes wait in the socket for 200 ms.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut buffer = [0u8; 64];
        let (read, arrived) = connection.read(&mut buffer).await.expect("read");
        let read_at = Instant::now();
        server.abort();
        assert_eq!(&buffer[..read], b"early");
        assert!(
            read_at - arrived >= Duration::from_millis(200),
            "stamped only {:?} before the read",
            read_at - arrived
        );
        assert!(
            arrived <= written + Duration::from_millis(5),
            "stamped {:?} after the write returned",
            arrived - written
        );
    }

    #[tokio::test]
    async fn a_closed_connection_is_not_quiet() {
        let (listener, address) = listen().await;
        let connection = Connection::connect(&address).await.expect("connect");
        let (socket, _) = listener.accept().await.expect("accept");
        assert!(connection.is_quiet());
        drop(socket);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!connection.is_quiet());
    }
}
