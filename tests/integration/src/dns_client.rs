//! A minimal DNS stub client (UDP and TCP) over tokio sockets, built on
//! hickory-proto wire types. The functions are async and open their sockets
//! in whatever namespace the calling thread is in; [`crate::client::Host`]
//! wraps them for one namespace.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout, Instant};

/// How a DNS message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// One datagram each way.
    Udp,
    /// Two-byte length prefix on a stream (RFC 1035 4.2.2).
    Tcp,
}

/// Options of one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsOpts {
    /// UDP or TCP.
    pub transport: Transport,
    /// Adds an EDNS OPT record advertising this UDP payload size; `None`
    /// sends a plain query (so answers over 512 bytes get truncated).
    pub edns_payload: Option<u16>,
    /// Whole exchange, connect included.
    pub timeout: Duration,
}

impl Default for DnsOpts {
    fn default() -> Self {
        DnsOpts {
            transport: Transport::Udp,
            edns_payload: None,
            timeout: Duration::from_secs(2),
        }
    }
}

impl DnsOpts {
    /// Plain UDP query, 2 s timeout.
    pub fn udp() -> Self {
        DnsOpts::default()
    }

    /// TCP query, 2 s timeout.
    pub fn tcp() -> Self {
        DnsOpts {
            transport: Transport::Tcp,
            ..DnsOpts::default()
        }
    }

    /// The same options with another timeout.
    pub fn timeout(self, timeout: Duration) -> Self {
        DnsOpts { timeout, ..self }
    }

    /// The same options with an EDNS payload size.
    pub fn edns(self, payload: u16) -> Self {
        DnsOpts {
            edns_payload: Some(payload),
            ..self
        }
    }
}

/// Builds a recursive query for `name`/`rtype` with a random id.
pub fn build_query(name: &str, rtype: RecordType, edns_payload: Option<u16>) -> Result<Message> {
    let name = Name::from_ascii(name).with_context(|| format!("bad name {name:?}"))?;
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name, rtype));
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        msg.set_edns(edns);
    }
    Ok(msg)
}

/// Sends one query and returns the decoded answer (any rcode).
pub async fn query(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    opts: DnsOpts,
) -> Result<Message> {
    let msg = build_query(name, rtype, opts.edns_payload)?;
    exchange(server, &msg, opts)
        .await
        .with_context(|| format!("{name} {rtype} via {server} over {:?}", opts.transport))
}

/// Sends `msg` and returns the answer with the same id.
pub async fn exchange(server: SocketAddr, msg: &Message, opts: DnsOpts) -> Result<Message> {
    let bytes = msg.to_vec()?;
    let id = msg.metadata.id;
    let deadline = Instant::now() + opts.timeout;
    match opts.transport {
        Transport::Udp => {
            let sock = UdpSocket::bind(unspecified(server)).await?;
            sock.connect(server).await?;
            sock.send(&bytes).await?;
            let mut buf = vec![0u8; 65535];
            loop {
                let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
                    .await
                    .map_err(|_| anyhow!("no answer within {:?}", opts.timeout))??;
                let answer = Message::from_vec(&buf[..n])?;
                if answer.metadata.id == id {
                    return Ok(answer);
                }
            }
        }
        Transport::Tcp => {
            let answer = tokio::time::timeout_at(deadline, async {
                let mut stream = TcpStream::connect(server).await?;
                let mut framed = Vec::with_capacity(bytes.len() + 2);
                framed.extend_from_slice(&u16::try_from(bytes.len())?.to_be_bytes());
                framed.extend_from_slice(&bytes);
                stream.write_all(&framed).await?;
                loop {
                    let len = stream.read_u16().await? as usize;
                    let mut body = vec![0u8; len];
                    stream.read_exact(&mut body).await?;
                    let answer = Message::from_vec(&body)?;
                    if answer.metadata.id == id {
                        return Ok::<_, anyhow::Error>(answer);
                    }
                }
            })
            .await
            .map_err(|_| anyhow!("no answer within {:?}", opts.timeout))??;
            Ok(answer)
        }
    }
}

/// Sends raw bytes in one datagram; returns the reply if one arrives
/// within `wait` (for malformed-packet tests).
pub async fn send_raw_udp(
    server: SocketAddr,
    payload: &[u8],
    wait: Duration,
) -> Result<Option<Vec<u8>>> {
    let sock = UdpSocket::bind(unspecified(server)).await?;
    sock.connect(server).await?;
    sock.send(payload).await?;
    let mut buf = vec![0u8; 65535];
    match timeout(wait, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Ok(Some(buf[..n].to_vec())),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Ok(None),
    }
}

/// The A and AAAA addresses in the answer section (CNAMEs skipped).
pub fn addresses(msg: &Message) -> Vec<IpAddr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// The answer's response code.
pub fn rcode(msg: &Message) -> ResponseCode {
    msg.metadata.response_code
}

/// The addresses of a NOERROR answer; an error for any other rcode or an
/// empty answer.
pub fn expect_addresses(msg: &Message) -> Result<Vec<IpAddr>> {
    if rcode(msg) != ResponseCode::NoError {
        bail!("rcode {} (expected NOERROR)", rcode(msg));
    }
    let addrs = addresses(msg);
    if addrs.is_empty() {
        bail!("NOERROR without addresses: {msg:?}");
    }
    Ok(addrs)
}

/// `0.0.0.0:0` or `[::]:0`, matching the family of `peer`.
pub fn unspecified(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}
