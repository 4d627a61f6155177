//! Forwarding an allowed query to the configured upstream resolvers:
//! over UDP on a worker's pooled sockets ([`pool`]), over TCP when the UDP
//! answer is truncated, each upstream in turn until one answers.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tracing::debug;

use crate::message::{self, AnswerHead, Parsed};
use crate::wire::{self, HEADER_LEN};

mod icmp;
pub(crate) mod pool;

pub(crate) use pool::{Pool, Reply, Waiting};

/// Receive buffer for a UDP answer. Upstreams are told 1232 bytes; a
/// datagram filling this buffer may have been cut, so it is retried over
/// TCP like TC=1.
pub(crate) const MAX_UDP_ANSWER: usize = 4096;

/// What to ask upstream: the client's question, and the query as sent
/// (each try sets its own id).
#[derive(Debug)]
pub(crate) struct Request {
    pub question: Query,
    pub wire: Vec<u8>,
}

impl Request {
    /// The upstream query for the client's `query`, read as `parsed`.
    pub(crate) fn new(query: &[u8], parsed: &Parsed) -> Request {
        Request {
            question: parsed.question.clone(),
            wire: message::upstream_query(query, parsed),
        }
    }
}

/// Where a resolution goes on after a first UDP try that gave no answer to
/// relay (see [`Upstreams::first_reply`]).
#[derive(Debug, Default)]
pub(crate) struct Resume {
    /// The upstream to try next.
    server: usize,
    /// That upstream's UDP answer was truncated: ask it over TCP, by this
    /// deadline (the first try's), before moving on.
    tcp_by: Option<Instant>,
    last_rcode: Option<ResponseCode>,
}

/// An accepted upstream answer: the bytes as received, and its rcode.
#[derive(Debug)]
pub(crate) struct Answer {
    pub rcode: ResponseCode,
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
    pub(crate) async fn resolve(&self, req: &mut Request) -> Result<Answer, ResolveError> {
        self.resume(req, Resume::default()).await
    }

    /// [`Upstreams::resolve`], from where `resume` says.
    pub(crate) async fn resume(
        &self,
        req: &mut Request,
        resume: Resume,
    ) -> Result<Answer, ResolveError> {
        let Resume {
            server: first,
            tcp_by,
            mut last_rcode,
        } = resume;
        for (i, (server, pool)) in self.servers.iter().enumerate().skip(first) {
            let tried = match tcp_by {
                Some(deadline) if i == first => tcp_try(pool.server(), req, deadline).await,
                _ => try_server(pool, req, Instant::now() + self.timeout).await,
            };
            match tried {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    if let TryError::Rcode(rc) = e {
                        last_rcode = Some(rc);
                    }
                    try_failed(*server, &e);
                }
            }
        }
        Err(ResolveError::Exhausted { last_rcode })
    }

    /// The first upstream's pool and the deadline of a try started now:
    /// where a UDP query is sent with [`Pool::send_waiting`].
    pub(crate) fn first(&self) -> Option<(&Pool, Instant)> {
        let (_, pool) = self.servers.first()?;
        Some((pool, Instant::now() + self.timeout))
    }

    /// What the first UDP try at the first upstream (sent by [`first`],
    /// with `deadline`) came to: the answer to relay, or where to resume.
    ///
    /// [`first`]: Upstreams::first
    pub(crate) fn first_reply(&self, reply: Reply, deadline: Instant) -> Result<Answer, Resume> {
        let e = match reply {
            Reply::Truncated => {
                return Err(Resume {
                    server: 0,
                    tcp_by: Some(deadline),
                    last_rcode: None,
                })
            }
            Reply::Answer(answer) => match judge(answer) {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            },
            Reply::Failed(kind) => TryError::Io(kind.into()),
            Reply::TimedOut => TryError::Timeout,
        };
        if let Some((server, _)) = self.servers.first() {
            try_failed(*server, &e);
        }
        Err(Resume {
            server: 1,
            tcp_by: None,
            last_rcode: match e {
                TryError::Rcode(rc) => Some(rc),
                _ => None,
            },
        })
    }
}

/// The one place a failed try is reported (a counter belongs here).
fn try_failed(server: SocketAddr, e: &TryError) {
    debug!(%server, error = %e, "upstream try failed");
}

/// One upstream: UDP, then TCP if the UDP answer is truncated (so every
/// address gets learned), all before `deadline`. Sets the query's id.
async fn try_server(pool: &Pool, req: &mut Request, deadline: Instant) -> Result<Answer, TryError> {
    match exchange_udp(pool, &mut req.wire, deadline).await? {
        Some(answer) => judge(answer),
        None => tcp_try(pool.server(), req, deadline).await,
    }
}

/// One upstream over TCP, by `deadline`.
async fn tcp_try(
    server: SocketAddr,
    req: &mut Request,
    deadline: Instant,
) -> Result<Answer, TryError> {
    // A fresh id: the TCP connection is a new exchange.
    let id = rand::random::<u16>();
    wire::set_id(&mut req.wire, id);
    judge(exchange_tcp(server, &req.wire, id, deadline).await?)
}

/// SERVFAIL and REFUSED are failures of this upstream: the next one may do
/// better.
fn judge(answer: Answer) -> Result<Answer, TryError> {
    match answer.rcode {
        rc @ (ResponseCode::ServFail | ResponseCode::Refused) => Err(TryError::Rcode(rc)),
        _ => Ok(answer),
    }
}

/// What `buf` says if it answers `sent`, our query with `id`: a
/// well-formed response with our id and our question. Anything else (late
/// answers, spoofing attempts) is ignored.
fn accept(buf: &[u8], id: u16, sent: &[u8]) -> Option<AnswerHead> {
    if buf.len() < HEADER_LEN || wire::id(buf) != id || !wire::is_response(buf) {
        return None;
    }
    message::read_answer(buf, sent)
}

/// Sends over one of the pool's UDP sockets and waits for the matching
/// answer; `None` when it is truncated and must be fetched over TCP.
async fn exchange_udp(
    pool: &Pool,
    query: &mut [u8],
    deadline: Instant,
) -> Result<Option<Answer>, TryError> {
    let mut registration = pool.register(query)?;
    wire::set_id(query, registration.id());
    registration.send(query).await?;
    let reply = timeout_at(deadline, &mut registration.reply)
        .await
        .map_err(|_| TryError::Timeout)?;
    match reply {
        Ok(Reply::Answer(answer)) => Ok(Some(answer)),
        Ok(Reply::Truncated) => Ok(None),
        Ok(Reply::Failed(kind)) => Err(TryError::Io(kind.into())),
        // Only waiters without a registration get it; kept for completeness.
        Ok(Reply::TimedOut) => Err(TryError::Timeout),
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
            if let Some(head) = accept(&buf, id, query) {
                return Ok::<_, io::Error>(Answer {
                    rcode: head.rcode,
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
