//! The echo backend's WebSocket echo on `/ws` (as the conformance echo server has one): the
//! RFC 6455 opening handshake, then every data frame comes back as it was sent (unmasked, as a
//! server sends), pings are answered with pongs, and a close is returned before the
//! connection ends.

use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The GUID RFC 6455 §1.3 appends to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Frames larger than this end the connection (the echo holds a frame in memory).
const MAX_FRAME: u64 = 16 << 20;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// Answers a WebSocket opening handshake: a 101, with the echo started on the connection once
/// it is sent; or a 400 for a request that is not a valid handshake.
pub fn answer(req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    let bad = |message: &str| {
        let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        response
    };
    let Some(key) = req.headers().get("sec-websocket-key").map(|k| k.as_bytes().to_vec()) else {
        return bad("a WebSocket handshake needs Sec-WebSocket-Key");
    };
    if req.headers().get("sec-websocket-version").map(|v| v.as_bytes()) != Some(b"13") {
        return bad("only WebSocket version 13 is spoken");
    }
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, "websocket")
        .header("sec-websocket-accept", accept_key(&key))
        .body(Full::new(Bytes::new()));
    match response {
        Ok(response) => {
            tokio::spawn(serve(hyper::upgrade::on(&mut *req)));
            response
        }
        Err(_) => bad("cannot build the handshake response"),
    }
}

/// Serves the echo on the upgraded connection until it closes.
async fn serve(upgrade: OnUpgrade) {
    match upgrade.await {
        Ok(upgraded) => {
            if let Err(e) = echo_frames(TokioIo::new(upgraded)).await {
                tracing::debug!(error = %e, "websocket echo ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
    }
}

/// Reads frames and answers each: data frames echoed, pings ponged, a close returned.
pub async fn echo_frames<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; 2];
        if let Err(e) = stream.read_exact(&mut head).await {
            return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e)
            };
        }
        let (fin_and_opcode, masked) = (head[0], head[1] & 0x80 != 0);
        let length = match head[1] & 0x7f {
            126 => u64::from(stream.read_u16().await?),
            127 => stream.read_u64().await?,
            n => u64::from(n),
        };
        if length > MAX_FRAME {
            return Err(std::io::Error::other(format!("a {length}-byte frame is too large")));
        }
        let mut mask = [0u8; 4];
        if masked {
            stream.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; length as usize];
        stream.read_exact(&mut payload).await?;
        if masked {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
        }
        let opcode = fin_and_opcode & 0x0f;
        let reply = match opcode {
            0x9 => (fin_and_opcode & 0xf0) | 0xA,
            0xA => continue,
            _ => fin_and_opcode,
        };
        stream.write_all(&frame(reply, &payload)).await?;
        if opcode == 0x8 {
            return stream.shutdown().await;
        }
    }
}

/// An unmasked frame: `first` is the FIN bit and opcode byte.
pub fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[tokio::test]
    async fn frames_are_echoed_unmasked_pings_ponged_and_close_returned() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let served = tokio::spawn(echo_frames(server));
        // A masked text frame "Hello" (RFC 6455 §5.7), a ping, a 300-byte binary
        // frame, then a close.
        client
            .write_all(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58])
            .await
            .unwrap();
        client.write_all(&[0x89, 0x02, b'h', b'i']).await.unwrap();
        let big = vec![7u8; 300];
        let mut masked_big = vec![0x82, 0xfe, 0x01, 0x2c, 0, 0, 0, 0];
        masked_big.extend_from_slice(&big);
        client.write_all(&masked_big).await.unwrap();
        client.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]).await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let mut expected = frame(0x81, b"Hello");
        expected.extend(frame(0x8A, b"hi"));
        expected.extend(frame(0x82, &big));
        expected.extend(frame(0x88, &[0x03, 0xe8]));
        assert_eq!(got, expected);
        served.await.unwrap().unwrap();
    }
}
