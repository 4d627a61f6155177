//! TCP listener: 2-byte length framing (RFC 1035 §4.2.2). Queries of one
//! connection are handled concurrently and answered as they complete, so
//! answers may come out of order (RFC 7766 §6.2.1.1).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tracing::{debug, warn};

use super::{reap, Query};
use crate::handler::Handler;
use crate::upstream::Upstreams;
use crate::wire::HEADER_LEN;
use crate::Transport;

/// Open connections per listener; more are closed on accept.
pub(crate) const MAX_TCP_CONNECTIONS: usize = 512;
/// A connection with no complete query, no answer pending and nothing
/// written for this long is closed (also what a stalled writer gets).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Queries of one connection handled at once; beyond it reading pauses.
const MAX_CONNECTION_INFLIGHT: usize = 64;
/// Largest query accepted over TCP. Real queries are a few hundred bytes;
/// the bound keeps a junk length from making us buffer 64 KiB.
const MAX_TCP_QUERY: usize = 4096;

/// Why a connection's byte stream is not DNS.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FrameError {
    #[error("frame of {0} bytes cannot hold a DNS header")]
    TooShort(usize),
    #[error("frame of {0} bytes exceeds the {MAX_TCP_QUERY}-byte query limit")]
    TooLong(usize),
}

/// Accepts connections until dropped (shutdown drops it, and with it every
/// connection and in-flight query).
pub(crate) async fn serve(listener: TcpListener, handler: Arc<Handler>, upstreams: Rc<Upstreams>) {
    let mut connections = JoinSet::new();
    loop {
        while let Some(done) = connections.try_join_next() {
            reap(done);
        }
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically out of descriptors: pause rather than spin.
                warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if connections.len() >= MAX_TCP_CONNECTIONS {
            debug!(%peer, "too many TCP connections, closing the new one");
            continue;
        }
        connections.spawn_local(connection(stream, peer, handler.clone(), upstreams.clone()));
    }
}

/// Serves one connection until the client closes it, it idles, or it sends
/// something that is not a DNS frame.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<Handler>,
    upstreams: Rc<Upstreams>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let mut writer = BufWriter::new(writer);
    let mut buf = BytesMut::with_capacity(1024);
    let mut inflight: JoinSet<Option<Vec<u8>>> = JoinSet::new();
    let mut reading = true;
    // When the last read returned: every frame in `buf` had arrived by then.
    let mut read_at = std::time::Instant::now();
    let idle = tokio::time::sleep(IDLE_TIMEOUT);
    tokio::pin!(idle);

    loop {
        while reading && inflight.len() < MAX_CONNECTION_INFLIGHT {
            match next_frame(&mut buf) {
                Ok(Some(bytes)) => {
                    idle.as_mut().reset(Instant::now() + IDLE_TIMEOUT);
                    let handler = handler.clone();
                    let upstreams = upstreams.clone();
                    let query = Query {
                        bytes,
                        peer,
                        transport: Transport::Tcp,
                        received: read_at,
                    };
                    inflight.spawn_local(async move { handler.handle(query, &upstreams).await });
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(%peer, error = %e, "closing TCP connection");
                    return;
                }
            }
        }
        if !reading && inflight.is_empty() {
            break;
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(1024);
        }
        tokio::select! {
            Some(done) = inflight.join_next(), if !inflight.is_empty() => match done {
                Ok(Some(reply)) => {
                    if let Err(e) = write_frame(&mut writer, &reply).await {
                        debug!(%peer, error = %e, "TCP reply not sent, closing");
                        return;
                    }
                    idle.as_mut().reset(Instant::now() + IDLE_TIMEOUT);
                }
                Ok(None) => {}
                Err(e) => reap(Err(e)),
            },
            read = reader.read_buf(&mut buf), if reading && inflight.len() < MAX_CONNECTION_INFLIGHT => {
                match read {
                    // EOF (a half-close): answer what is in flight, then
                    // close; a partial frame left in `buf` is dropped.
                    Ok(0) => reading = false,
                    Ok(_) => read_at = std::time::Instant::now(),
                    Err(_) => return,
                }
            }
            () = &mut idle, if inflight.is_empty() => {
                debug!(%peer, "TCP connection idle, closing");
                break;
            }
        }
    }
    let _ = timeout(IDLE_TIMEOUT, writer.shutdown()).await;
}

/// Splits the next complete query off `buf`, if there is one.
fn next_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
    if len < HEADER_LEN {
        return Err(FrameError::TooShort(len));
    }
    if len > MAX_TCP_QUERY {
        return Err(FrameError::TooLong(len));
    }
    if buf.len() < 2 + len {
        buf.reserve(2 + len - buf.len());
        return Ok(None);
    }
    buf.advance(2);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Writes one length-prefixed reply; a client that does not read for
/// [`IDLE_TIMEOUT`] loses its connection.
async fn write_frame(writer: &mut BufWriter<OwnedWriteHalf>, reply: &[u8]) -> std::io::Result<()> {
    let Ok(len) = u16::try_from(reply.len()) else {
        // Cannot happen (answers are cut to 65535), and must not be framed.
        debug!(len = reply.len(), "reply too long for TCP, dropped");
        return Ok(());
    };
    let write = async {
        writer.write_all(&len.to_be_bytes()).await?;
        writer.write_all(reply).await?;
        writer.flush().await
    };
    timeout(IDLE_TIMEOUT, write)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let mut buf = BytesMut::from(&[0u8, 12, 1, 2, 3][..]);
        assert_eq!(next_frame(&mut buf), Ok(None));
        buf.extend_from_slice(&[0; 9]);
        buf.extend_from_slice(&[0]);
        let f = next_frame(&mut buf).unwrap().unwrap();
        assert_eq!(f.len(), 12);
        assert_eq!(&buf[..], &[0]);
        assert_eq!(next_frame(&mut buf), Ok(None));
        let mut bad = BytesMut::from(&[0u8, 3, 1, 2, 3][..]);
        assert_eq!(next_frame(&mut bad), Err(FrameError::TooShort(3)));
        let mut big = BytesMut::from(&[0xffu8, 0xff][..]);
        assert_eq!(next_frame(&mut big), Err(FrameError::TooLong(65535)));
    }
}
