//! Forwarding a TCP connection both ways with splice(2): bytes move from one socket to the
//! other through a pipe inside the kernel, never copied into tidegate's memory (the L4 path
//! does no per-byte work when no filter asks for the data).
//!
//! Each direction passes its end of stream on as a half-close (FIN), so a client that shuts
//! down its sending side still gets the whole answer. A connection with no byte either way
//! for the idle timeout is closed, as Envoy's TCP proxy does (kube-proxy has no such limit, but
//! conntrack forgets an idle established connection after five days).

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// At most this many bytes per splice call at first (the default pipe capacity).
const CHUNK: usize = 64 * 1024;
/// A direction that has moved this much is a bulk transfer: its pipe grows to
/// [`BULK_CHUNK`], which halves the syscalls and wake-ups per byte (iperf3 through the
/// capture: 0.76× → 0.85× of the uncaptured throughput on the benchmark machine). Small
/// exchanges keep the small pipe.
const BULK_AFTER: u64 = 1 << 20;
const BULK_CHUNK: usize = 1 << 20;

/// How the forwarding ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both directions finished with a FIN: (bytes client→upstream, bytes upstream→client).
    Closed(u64, u64),
    /// No byte moved either way for the idle timeout.
    Idle,
}

/// Forwards between `client` and `upstream` until both directions have ended, one fails (the
/// error is returned; the caller resets both), or the connection idles for `idle`.
pub async fn forward(client: &TcpStream, upstream: &TcpStream, idle: Duration) -> io::Result<Ended> {
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved, shared by both directions.
    let last_activity = AtomicU64::new(0);
    let both = async {
        tokio::try_join!(
            pump(client, upstream, &last_activity, start),
            pump(upstream, client, &last_activity, start)
        )
    };
    tokio::pin!(both);
    loop {
        let since = Duration::from_millis(last_activity.load(Ordering::Relaxed));
        let deadline = start + since + idle;
        tokio::select! {
            result = &mut both => {
                let (up, down) = result?;
                return Ok(Ended::Closed(up, down));
            }
            _ = tokio::time::sleep_until(deadline) => {
                let since = Duration::from_millis(last_activity.load(Ordering::Relaxed));
                if start + since + idle <= Instant::now() {
                    return Ok(Ended::Idle);
                }
            }
        }
    }
}

/// One direction: `from` → pipe → `to`, until `from` ends (then `to` is half-closed).
async fn pump(from: &TcpStream, to: &TcpStream, last_activity: &AtomicU64, start: Instant) -> io::Result<u64> {
    let pipe = Pipe::new()?;
    let mut total = 0u64;
    let mut chunk = CHUNK;
    loop {
        if chunk == CHUNK && total >= BULK_AFTER && pipe.grow(BULK_CHUNK) {
            chunk = BULK_CHUNK;
        }
        let filled = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), chunk)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            // End of stream: pass the FIN on (the other direction may still be sending).
            let _ = SockRef::from(to).shutdown(Shutdown::Write);
            return Ok(total);
        }
        let mut in_pipe = filled;
        while in_pipe > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), in_pipe)
            }) {
                Ok(n) => in_pipe -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += filled as u64;
        last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// A non-blocking pipe, closed on drop.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        Ok(unsafe {
            Self {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

impl Pipe {
    /// Asks for a capacity of `bytes` (F_SETPIPE_SZ); false when refused (the system's
    /// pipe-max-size, or the user's pipe buffer limits), and the pipe keeps its size.
    fn grow(&self, bytes: usize) -> bool {
        // SAFETY: fcntl on a pipe descriptor this struct owns.
        let rc = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_SETPIPE_SZ, bytes as libc::c_int) };
        rc >= bytes as libc::c_int
    }
}

/// splice(2) without blocking: at most `len` bytes from `from` to `to` (one is a pipe).
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors and null offsets (neither end is seekable).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of sockets on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn moves_bytes_both_ways_and_passes_half_closes_on() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let proxy = tokio::spawn(async move { forward(&client_side, &upstream_side, Duration::from_secs(30)).await });
        // 3 MiB up (many chunks), then the client half-closes and still reads the answer.
        let payload: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let mut received = Vec::new();
        upstream.read_to_end(&mut received).await.unwrap();
        assert_eq!(received.len(), payload.len());
        assert!(received == payload, "bytes changed on the way");
        upstream.write_all(b"answer after the client's FIN").await.unwrap();
        upstream.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"answer after the client's FIN");
        assert_eq!(proxy.await.unwrap().unwrap(), Ended::Closed(payload.len() as u64, 29));
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_timeout() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let proxy =
            tokio::spawn(async move { forward(&client_side, &upstream_side, Duration::from_millis(300)).await });
        // Activity keeps it open past the timeout...
        for _ in 0..4 {
            client.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            upstream.read_exact(&mut byte).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(!proxy.is_finished(), "closed while bytes were moving");
        // ...silence ends it.
        let ended = tokio::time::timeout(Duration::from_secs(5), proxy)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ended.unwrap(), Ended::Idle);
    }
}
