//! The client behind `neuwerk status` and `neuwerk monitor`: plain HTTP/1.1
//! to the management listener with hyper's client half (already built for
//! the server), run on a private current-thread runtime so the CLI stays
//! synchronous: call [`status`] and [`monitor`] outside any tokio runtime.

mod format;

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use neuwerk_core::config::{Config, ConfigError};
use neuwerk_core::encode::percent_encode;

pub use format::{format_event, format_status};

use crate::model::Status;
use crate::server::DEFAULT_KEEPALIVE;
use crate::wire::{EventFilter, EventLine};

/// Which events `neuwerk monitor` asks for (filtered by the server).
pub type MonitorFilter = EventFilter;

/// How long to wait for a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may take before the server counts as unresponsive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Silence on an event stream longer than this (three missed keepalives
/// plus slack) means the server or the path to it is gone.
const STREAM_IDLE: Duration = Duration::from_secs(DEFAULT_KEEPALIVE.as_secs() * 3 + 5);

/// Why a management request failed; each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon's config could not be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The URL is not `http://host:port[/prefix]`.
    #[error("invalid management URL `{url}`: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Nothing accepted the connection.
    #[error("cannot connect to neuwerk at {url}: {source} (is `neuwerk run` up, and is management.listen this address?)")]
    Connect {
        /// The base URL.
        url: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// HTTP 401.
    #[error("{url}: token required or wrong (HTTP 401)")]
    Unauthorized {
        /// The request URL.
        url: String,
    },
    /// Any other non-success status.
    #[error("{url}: HTTP {status}: {message}")]
    Http {
        /// The request URL.
        url: String,
        /// The status code.
        status: u16,
        /// The server's `error` message, or its body.
        message: String,
    },
    /// The server stopped answering.
    #[error("{url}: no answer from the server for {}s; giving up", .after.as_secs())]
    Timeout {
        /// The request URL.
        url: String,
        /// How long it was silent.
        after: Duration,
    },
    /// The event stream ended (the server shut down or restarted).
    #[error("{url}: the server closed the event stream")]
    Closed {
        /// The request URL.
        url: String,
    },
    /// The server spoke something else than the expected HTTP or JSON.
    #[error("{url}: {reason}")]
    Protocol {
        /// The request URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// Writing the output failed (e.g. the pipe to `head` closed).
    #[error("writing output: {0}")]
    Output(#[source] io::Error),
}

impl ClientError {
    /// Whether the output was closed by the reader (`neuwerk monitor | head`),
    /// which a CLI should treat as a normal end.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, ClientError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Where the management API is and how to authenticate to it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiTarget {
    /// `http://host:port`, no trailing slash (a path prefix is kept).
    pub base: String,
    /// Bearer token, if the daemon requires one.
    pub token: Option<String>,
}

/// Keeps the token out of debug output.
impl std::fmt::Debug for ApiTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTarget")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ApiTarget {
    /// The daemon's own listener, from its config file: `management.listen`
    /// (an unspecified address such as `0.0.0.0` means loopback) and
    /// `management.token`.
    pub fn from_config(path: &Path) -> Result<ApiTarget, ClientError> {
        let config = Config::load(path)?;
        Ok(ApiTarget::from_listen(
            config.management.listen,
            config.management.token.clone(),
        ))
    }

    /// A target for a listener address.
    pub fn from_listen(listen: SocketAddr, token: Option<String>) -> ApiTarget {
        let ip = match listen.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        ApiTarget {
            base: format!("http://{}", SocketAddr::new(ip, listen.port())),
            token,
        }
    }

    /// A target given as `http://host:port` (or `host:port`).
    pub fn from_url(url: &str, token: Option<String>) -> Result<ApiTarget, ClientError> {
        let bad = |reason: &str| ClientError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "scheme `{scheme}` is not supported; use http://"
                )))
            }
            None => url,
        };
        let rest = rest.trim_end_matches('/');
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']') && p.parse::<u16>().is_ok());
        if !has_port {
            return Err(bad("no port; expected e.g. http://127.0.0.1:3000"));
        }
        Ok(ApiTarget {
            base: format!("http://{rest}"),
            token,
        })
    }

    /// `host:port` of the base URL.
    fn authority(&self) -> &str {
        let rest = self.base.strip_prefix("http://").unwrap_or(&self.base);
        rest.split('/').next().unwrap_or(rest)
    }

    /// Path prefix of the base URL (empty or `/prefix`).
    fn prefix(&self) -> &str {
        let rest = self.base.strip_prefix("http://").unwrap_or(&self.base);
        rest.find('/').map_or("", |i| &rest[i..])
    }
}

/// Prints the node's status: a summary for people, or with `json` the
/// server's JSON unchanged.
pub fn status(target: &ApiTarget, json: bool, out: &mut impl Write) -> Result<(), ClientError> {
    let body = runtime()?.block_on(async {
        let (url, resp) = request(target, Method::GET, "/api/v1/status").await?;
        let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                after: REQUEST_TIMEOUT,
            })?
            .map_err(|e| protocol(&url, e))?
            .to_bytes();
        Ok::<_, ClientError>((url, body))
    })?;
    let (url, body) = body;
    if json {
        out.write_all(&body).map_err(ClientError::Output)?;
        if !body.ends_with(b"\n") {
            out.write_all(b"\n").map_err(ClientError::Output)?;
        }
    } else {
        let status: Status = serde_json::from_slice(&body)
            .map_err(|e| protocol(&url, format!("unexpected status JSON: {e}")))?;
        out.write_all(format_status(&status).as_bytes())
            .map_err(ClientError::Output)?;
    }
    out.flush().map_err(ClientError::Output)
}

/// Follows the event stream, one line per event as it arrives (with
/// `json`, the server's JSON lines unchanged), until the server closes it,
/// goes silent, or writing to `out` fails.
pub fn monitor(
    target: &ApiTarget,
    filter: &MonitorFilter,
    json: bool,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let mut query = Vec::new();
    let params = [
        ("network", filter.network.clone()),
        ("verdict", filter.verdict.clone()),
        ("address", filter.address.map(|a| a.to_string())),
        ("kind", filter.kind.clone()),
    ];
    for (key, value) in params {
        if let Some(v) = value {
            query.push(format!("{key}={}", percent_encode(&v)));
        }
    }
    let path = if query.is_empty() {
        "/api/v1/events".to_string()
    } else {
        format!("/api/v1/events?{}", query.join("&"))
    };
    runtime()?.block_on(async {
        let (url, resp) = request(target, Method::GET, &path).await?;
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        loop {
            let frame = match tokio::time::timeout(STREAM_IDLE, body.frame()).await {
                Err(_) => {
                    return Err(ClientError::Timeout {
                        url,
                        after: STREAM_IDLE,
                    })
                }
                Ok(None) => return Err(ClientError::Closed { url }),
                Ok(Some(frame)) => frame.map_err(|e| protocol(&url, e))?,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(nl + 1);
                print_line(&line[..nl], json, out)?;
            }
            out.flush().map_err(ClientError::Output)?;
        }
    })
}

fn print_line(line: &[u8], json: bool, out: &mut impl Write) -> Result<(), ClientError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(()); // keepalive
    }
    let text = match serde_json::from_slice::<EventLine>(line) {
        Ok(ev) if !json => format_event(&ev),
        // JSON output, or a kind this client does not know: unchanged.
        _ => String::from_utf8_lossy(line).into_owned(),
    };
    writeln!(out, "{text}").map_err(ClientError::Output)
}

fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Output)
}

fn protocol(url: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

/// Sends one request; non-success statuses become errors. Returns the full
/// URL (for messages) and the response, whose body is still to be read.
async fn request(
    target: &ApiTarget,
    method: Method,
    path: &str,
) -> Result<(String, hyper::Response<Incoming>), ClientError> {
    let url = format!("{}{path}", target.base);
    let connect_err = |source| ClientError::Connect {
        url: target.base.clone(),
        source,
    };
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(target.authority()),
    )
    .await
    .map_err(|_| {
        connect_err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection timed out",
        ))
    })?
    .map_err(connect_err)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(&url, e))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", target.prefix()))
        .header(hyper::header::HOST, target.authority());
    if let Some(token) = &target.token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| protocol(&url, e))?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| ClientError::Timeout {
            url: url.clone(),
            after: REQUEST_TIMEOUT,
        })?
        .map_err(|e| protocol(&url, e))?;
    match resp.status() {
        s if s.is_success() => Ok((url, resp)),
        StatusCode::UNAUTHORIZED => Err(ClientError::Unauthorized { url }),
        s => {
            let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(body.chunk()).trim().to_string());
            Err(ClientError::Http {
                url,
                status: s.as_u16(),
                message,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = ApiTarget::from_url("http://127.0.0.1:3000/", None).unwrap();
        assert_eq!(t.base, "http://127.0.0.1:3000");
        assert_eq!((t.authority(), t.prefix()), ("127.0.0.1:3000", ""));
        let t = ApiTarget::from_url("[::1]:3000/nw", None).unwrap();
        assert_eq!((t.authority(), t.prefix()), ("[::1]:3000", "/nw"));
        assert!(ApiTarget::from_url("https://x:1", None).is_err());
        assert!(ApiTarget::from_url("http://[::1]", None).is_err());
        assert!(ApiTarget::from_url("http://", None).is_err());
        let t = ApiTarget::from_listen("0.0.0.0:3000".parse().unwrap(), None);
        assert_eq!(t.base, "http://127.0.0.1:3000");
        let t = ApiTarget::from_listen("[::]:3000".parse().unwrap(), None);
        assert_eq!(t.base, "http://[::1]:3000");
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(percent_encode("fd00::1"), "fd00%3A%3A1");
    }
}
