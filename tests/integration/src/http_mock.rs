//! Mock HTTP/1.1 server (no TLS) and UDP echo server for the upstream
//! namespace.
//!
//! HTTP listens on `[::]:<port>` (dual-stack), so it answers on every
//! address the namespace hosts, including those tests expect to be
//! blocked: a "blocked" check can only pass because of the firewall. Each
//! request gets `ok <port>`; connections are kept alive until the client
//! closes them or sends `Connection: close`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::netns::Netns;
use crate::runtime::NsRuntime;

/// TCP ports the HTTP mock listens on (5353 too, so that a UDP-only rule
/// can be shown not to pass TCP).
pub const HTTP_PORTS: [u16; 6] = [443, 80, 8080, 8443, 8050, 5353];
/// UDP port of the echo server.
pub const ECHO_PORT: u16 = 5353;
/// UDP ports the topology runs echo servers on: [`ECHO_PORT`], and 443 so
/// that tests can show a TCP-only rule does not pass UDP.
pub const ECHO_PORTS: [u16; 2] = [ECHO_PORT, 443];

#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    accepted: Mutex<Vec<(SocketAddr, SocketAddr)>>,
    datagrams: AtomicU64,
}

/// A running HTTP + UDP echo mock; stops when dropped.
#[derive(Debug)]
pub struct HttpMock {
    stats: Arc<Stats>,
    _rt: NsRuntime,
}

impl HttpMock {
    /// Listens on `[::]:<port>` for each of `tcp_ports` and runs a UDP
    /// echo server on each of `echo_addrs`, inside `ns`.
    pub fn start(ns: &Netns, tcp_ports: &[u16], echo_addrs: &[SocketAddr]) -> Result<HttpMock> {
        let rt = NsRuntime::start(ns, "http-mock");
        let stats: Arc<Stats> = Arc::default();
        for &port in tcp_ports {
            let addr = SocketAddr::from(([0u16; 8], port));
            let listener = rt
                .block_on(async move { TcpListener::bind(addr).await })
                .with_context(|| format!("mock HTTP cannot bind {addr}"))?;
            rt.spawn(serve_http(listener, stats.clone()));
        }
        for &addr in echo_addrs {
            let sock = rt
                .block_on(async move { UdpSocket::bind(addr).await })
                .with_context(|| format!("mock echo cannot bind {addr}"))?;
            crate::dns_mock::grow_receive_buffer(&sock);
            rt.spawn(serve_echo(sock, stats.clone()));
        }
        Ok(HttpMock { stats, _rt: rt })
    }

    /// HTTP requests answered so far.
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    /// Accepted TCP connections so far: `(local, peer)`; IPv4 peers and
    /// locals appear as IPv4 (not IPv4-mapped).
    pub fn accepted(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.stats
            .accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many accepted connections went to `local`.
    pub fn accepted_on(&self, local: SocketAddr) -> usize {
        self.accepted().iter().filter(|(l, _)| *l == local).count()
    }

    /// UDP datagrams echoed so far.
    pub fn datagrams(&self) -> u64 {
        self.stats.datagrams.load(Ordering::Relaxed)
    }
}

/// IPv4-mapped IPv6 socket addresses as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

async fn serve_http(listener: TcpListener, stats: Arc<Stats>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let local = stream.local_addr().map(canonical).unwrap_or(peer);
        stats
            .accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((local, canonical(peer)));
        tokio::spawn(serve_http_conn(stream, local.port(), stats.clone()));
    }
}

async fn serve_http_conn(mut stream: TcpStream, port: u16, stats: Arc<Stats>) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        // Serve every complete request head in the buffer.
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            let close = head.contains("connection: close");
            let body = format!("ok {port}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{}",
                body.len(),
                if close { "Connection: close\r\n" } else { "" },
                body
            );
            stats.requests.fetch_add(1, Ordering::Relaxed);
            if stream.write_all(resp.as_bytes()).await.is_err() || close {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
}

async fn serve_echo(sock: UdpSocket, stats: Arc<Stats>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        stats.datagrams.fetch_add(1, Ordering::Relaxed);
        let _ = sock.send_to(&buf[..n], peer).await;
    }
}

/// Position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
