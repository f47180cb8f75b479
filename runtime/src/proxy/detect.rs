//! Protocol detection for captured connections to Service ports that do not declare what they
//! speak: the client's first bytes are peeked (not consumed), and an HTTP/1.x request line or
//! the HTTP/2 connection preface sends the connection through the HTTP chain; anything else,
//! or nothing within the deadline (a server-first protocol), takes the L4 path.
//!
//! Like Linkerd's detection it favours availability: at most [`PEEK_LIMIT`] bytes are looked
//! at, and a timeout falls back to TCP rather than failing the connection.

use std::time::Duration;

use tokio::net::TcpStream;

/// How many bytes detection looks at, at most (a request line longer than this is not HTTP as
/// far as the mesh is concerned: it is forwarded untouched).
pub const PEEK_LIMIT: usize = 1024;
/// The default of `--protocol-detect-timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait before looking again when the first bytes are not enough to decide.
const PARTIAL_RETRY: Duration = Duration::from_millis(5);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.x request or the HTTP/2 preface.
    Http,
    /// Something else.
    Other,
    /// The client sent nothing within the deadline.
    Timeout,
    /// The client closed (or the socket failed) before sending anything decisive.
    Closed,
}

/// Classifies the bytes received so far: `None` while they could still be either.
pub fn classify(bytes: &[u8]) -> Option<bool> {
    if bytes.is_empty() {
        return None;
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return (bytes.len() >= H2_PREFACE.len()).then_some(true);
    }
    // Zero header slots: a complete request line followed by a header is `TooManyHeaders`.
    // A CONNECT to a forward proxy behind the Service is a tunnel, not a request to route.
    if bytes.starts_with(b"CONNECT ") {
        return Some(false);
    }
    let mut request = httparse::Request::new(&mut []);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => Some(true),
        // A complete request line with no header yet is HTTP; a partial one needs more bytes.
        Ok(httparse::Status::Partial) if request.version.is_some() => Some(true),
        Ok(httparse::Status::Partial) if bytes.len() >= PEEK_LIMIT => Some(false),
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(false),
    }
}

/// Peeks at `stream` until its first bytes decide, or `timeout` passes.
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; PEEK_LIMIT];
    loop {
        let peeked = tokio::select! {
            peeked = stream.peek(&mut buf) => peeked,
            () = tokio::time::sleep_until(deadline) => return Detected::Timeout,
        };
        let n = match peeked {
            Ok(0) | Err(_) => return Detected::Closed,
            Ok(n) => n,
        };
        match classify(&buf[..n]) {
            Some(true) => return Detected::Http,
            Some(false) => return Detected::Other,
            None => {
                // Not enough yet, and peeking again at once would return the same bytes: wait
                // a little for the rest of the client's first segment(s).
                if tokio::time::Instant::now() + PARTIAL_RETRY > deadline {
                    return Detected::Timeout;
                }
                tokio::time::sleep(PARTIAL_RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines_are_http() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"), Some(true));
        assert_eq!(classify(b"POST /upload HTTP/1.0\r\nContent-Length: 3\r\n"), Some(true));
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\n"),
            Some(true),
            "a request line, no header yet"
        );
        assert_eq!(classify(b"OPTIONS * HTTP/1.1\r\n\r\n"), Some(true));
    }

    #[test]
    fn the_http2_preface_is_http_once_complete() {
        assert_eq!(classify(H2_PREFACE), Some(true));
        assert_eq!(classify(&H2_PREFACE[..10]), None, "a prefix needs more bytes");
        let mut with_settings = H2_PREFACE.to_vec();
        with_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(classify(&with_settings), Some(true));
    }

    #[test]
    fn partial_request_lines_wait_for_more() {
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET /some/pa"), None);
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn other_protocols_are_not_http() {
        // TLS ClientHello, an SSH banner, a Redis command, binary noise.
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Some(false));
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(false));
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Some(false));
        assert_eq!(classify(&[0, 0, 0, 0]), Some(false));
        assert_eq!(classify(b"hello world\n"), Some(false));
        assert_eq!(classify(b"GET / FTP/1.1\r\n"), Some(false));
        assert_eq!(
            classify(b"CONNECT example.com:443 HTTP/1.1\r\n"),
            Some(false),
            "a tunnel"
        );
    }

    #[test]
    fn a_request_line_longer_than_the_limit_is_not_http() {
        let mut long = b"GET /".to_vec();
        long.resize(PEEK_LIMIT, b'a');
        assert_eq!(classify(&long), Some(false));
    }

    #[tokio::test]
    async fn detection_over_a_socket_waits_for_the_rest_and_times_out() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Sent in two pieces: detection waits for the request line to complete.
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /x H").await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            c.write_all(b"TTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
            c
        });
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(detect(&server, Duration::from_secs(5)).await, Detected::Http);
        // Peeked, not consumed: the request is still there to read.
        let mut buf = [0u8; 4];
        server.peek(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET ");
        drop(client.await.unwrap());

        // A silent client (a server-first protocol) times out.
        let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(detect(&server, Duration::from_millis(50)).await, Detected::Timeout);
        drop(silent);
        assert_eq!(detect(&server, Duration::from_secs(5)).await, Detected::Closed);
    }
}
