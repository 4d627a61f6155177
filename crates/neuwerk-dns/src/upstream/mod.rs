//! Forwarding an allowed query to the configured upstream resolvers:
//! over UDP on a worker's pooled sockets ([`pool`]), over TCP when the UDP
//! answer is truncated, each upstream in turn until one answers.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::ProtoError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tracing::debug;

use crate::answer::EDNS_PAYLOAD;
use crate::wire::{self, HEADER_LEN};

pub(crate) mod pool;

use pool::{Pool, Reply};

/// Receive buffer for a UDP answer. Upstreams are told 1232 bytes; a
/// datagram filling this buffer may have been cut, so it is retried over
/// TCP like TC=1.
pub(crate) const MAX_UDP_ANSWER: usize = 4096;

/// What to ask upstream, taken from the client's query.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub question: &'a Query,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    pub authentic_data: bool,
    pub dnssec_ok: bool,
}

/// An accepted upstream answer: decoded, and the bytes as received.
#[derive(Debug)]
pub(crate) struct Answer {
    pub msg: Message,
    pub bytes: Vec<u8>,
    /// When the answer was read off the socket (for the grant-commit time).
    pub received: std::time::Instant,
}

/// Why one try at one upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TryError {
    #[error("no matching answer in time")]
    Timeout,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("answered {0}")]
    Rcode(ResponseCode),
}

/// Why no answer can be relayed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    #[error("cannot encode the upstream query: {0}")]
    Encode(#[from] ProtoError),
    #[error("no upstream answered")]
    Exhausted {
        /// The last SERVFAIL or REFUSED an upstream sent, relayed as is.
        last_rcode: Option<ResponseCode>,
    },
}

impl ResolveError {
    /// The rcode for the client.
    pub(crate) fn rcode(&self) -> ResponseCode {
        match self {
            ResolveError::Exhausted {
                last_rcode: Some(rc),
            } => *rc,
            _ => ResponseCode::ServFail,
        }
    }
}

/// The upstream resolvers, tried in order, as one worker thread reaches
/// them (the sockets belong to the worker).
pub(crate) struct Upstreams {
    servers: Vec<(SocketAddr, Pool)>,
    timeout: Duration,
}

impl Upstreams {
    /// `timeout` bounds each try (UDP and its TCP retry together), so a
    /// query takes at most `timeout` x number of servers.
    pub(crate) fn new(servers: &[SocketAddr], timeout: Duration) -> Self {
        let servers = servers.iter().map(|&s| (s, Pool::new(s))).collect();
        Upstreams { servers, timeout }
    }

    /// Asks each upstream in turn until one gives an answer other than
    /// SERVFAIL or REFUSED.
    pub(crate) async fn resolve(&self, req: &Request<'_>) -> Result<Answer, ResolveError> {
        let mut query = encode(req)?;
        let mut last_rcode = None;
        for (server, pool) in &self.servers {
            let server = *server;
            let deadline = Instant::now() + self.timeout;
            match try_server(pool, &mut query, req.question, deadline).await {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    if let TryError::Rcode(rc) = e {
                        last_rcode = Some(rc);
                    }
                    try_failed(server, &e);
                }
            }
        }
        Err(ResolveError::Exhausted { last_rcode })
    }
}

/// The one place a failed try is reported (a counter belongs here).
fn try_failed(server: SocketAddr, e: &TryError) {
    debug!(%server, error = %e, "upstream try failed");
}

/// The upstream query: the client's question and flags, EDNS with our
/// payload size and the client's DO bit. The client's other EDNS options
/// (client subnet, cookies) are not forwarded: they describe the client,
/// whom the upstream is not talking to. Id 0 until each try sets one.
fn encode(req: &Request<'_>) -> Result<Vec<u8>, ProtoError> {
    let mut m = Message::new(0, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = req.recursion_desired;
    m.metadata.checking_disabled = req.checking_disabled;
    m.metadata.authentic_data = req.authentic_data;
    m.add_query(req.question.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    edns.set_dnssec_ok(req.dnssec_ok);
    m.set_edns(edns);
    m.to_vec()
}

/// One upstream: UDP, then TCP if the UDP answer is truncated (so every
/// address gets learned), all before `deadline`. Sets the query's id.
async fn try_server(
    pool: &Pool,
    query: &mut [u8],
    question: &Query,
    deadline: Instant,
) -> Result<Answer, TryError> {
    let answer = match exchange_udp(pool, query, question, deadline).await? {
        Some(answer) => answer,
        None => {
            // A fresh id: the TCP connection is a new exchange.
            let id = rand::random::<u16>();
            wire::set_id(query, id);
            exchange_tcp(pool.server(), query, id, question, deadline).await?
        }
    };
    match answer.msg.response_code {
        rc @ (ResponseCode::ServFail | ResponseCode::Refused) => Err(TryError::Rcode(rc)),
        _ => Ok(answer),
    }
}

/// The answer to our query if `buf` is one: a response with our id and our
/// question. Anything else (late answers, spoofing attempts) is ignored.
fn accept(buf: &[u8], id: u16, question: &Query) -> Option<Message> {
    // Cheap checks before decoding.
    if buf.len() < HEADER_LEN || wire::id(buf) != id || !wire::is_response(buf) {
        return None;
    }
    let msg = Message::from_vec(buf).ok()?;
    (msg.message_type == MessageType::Response
        && msg.queries.len() == 1
        && msg.queries[0] == *question)
        .then_some(msg)
}

/// Sends over one of the pool's UDP sockets and waits for the matching
/// answer; `None` when it is truncated and must be fetched over TCP.
async fn exchange_udp(
    pool: &Pool,
    query: &mut [u8],
    question: &Query,
    deadline: Instant,
) -> Result<Option<Answer>, TryError> {
    let mut registration = pool.register(question)?;
    wire::set_id(query, registration.id());
    registration.send(query).await?;
    let reply = timeout_at(deadline, &mut registration.reply)
        .await
        .map_err(|_| TryError::Timeout)?;
    match reply {
        Ok(Reply::Answer(answer)) => Ok(Some(answer)),
        Ok(Reply::Truncated) => Ok(None),
        Ok(Reply::Failed(kind)) => Err(TryError::Io(kind.into())),
        // The pool is gone: the worker is shutting down.
        Err(_) => Err(TryError::Timeout),
    }
}

/// Sends over TCP (2-byte length framing) and reads answers until the
/// matching one.
async fn exchange_tcp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Query,
    deadline: Instant,
) -> Result<Answer, TryError> {
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        stream.set_nodelay(true)?;
        let mut framed = Vec::with_capacity(2 + query.len());
        framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        loop {
            let len = stream.read_u16().await? as usize;
            let mut buf = vec![0u8; len];
            stream.read_exact(&mut buf).await?;
            let received = std::time::Instant::now();
            if let Some(msg) = accept(&buf, id, question) {
                return Ok::<_, io::Error>(Answer {
                    msg,
                    bytes: buf,
                    received,
                });
            }
            debug!(%server, "ignoring a TCP message that does not answer our query");
        }
    };
    Ok(timeout_at(deadline, exchange)
        .await
        .map_err(|_| TryError::Timeout)??)
}
