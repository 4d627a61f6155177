//! Traffic helpers that run inside one namespace: TCP connects, HTTP GETs,
//! UDP echo, DNS queries, and probe listeners for unsolicited traffic.
//! [`crate::topology::Topology::client`] gives the client side,
//! [`crate::topology::Topology::upstream`] the upstream side.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::io::AsyncWriteExt;

use crate::dns_client::{self, DnsOpts};
use crate::http_mock::find;
use crate::netns::Netns;
use crate::runtime::NsRuntime;

/// Timeout for checks that are expected to fail (traffic blocked).
pub const BLOCKED: Duration = Duration::from_secs(1);
/// Timeout for checks that are expected to succeed.
pub const ALLOWED: Duration = Duration::from_secs(3);
/// Timeout shorter than the first TCP SYN retransmission (1 s): a connect
/// that succeeds within it proved its first packet was not dropped.
pub const FIRST_PACKET: Duration = Duration::from_millis(900);

/// One namespace seen as a host that originates traffic.
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    ns: &'a Netns,
}

impl<'a> Host<'a> {
    /// The helpers for `ns`.
    pub fn new(ns: &'a Netns) -> Host<'a> {
        Host { ns }
    }

    /// The namespace.
    pub fn ns(&self) -> &'a Netns {
        self.ns
    }

    /// Runs async code inside the namespace (a fresh current-thread
    /// runtime) and returns its output.
    pub fn block_on<T, Fut, F>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = T>,
        T: Send,
    {
        self.ns.block_on(f)
    }

    /// Opens a TCP connection from the namespace.
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.ns
            .run(|| TcpStream::connect_timeout(&addr, timeout))
            .with_context(|| format!("TCP connect to {addr}"))
    }

    /// Whether a TCP connection to `addr` completes within `timeout`.
    pub fn can_connect(&self, addr: SocketAddr, timeout: Duration) -> bool {
        self.tcp_connect(addr, timeout).is_ok()
    }

    /// `GET /` with `Connection: close`; returns the body of a 200 answer.
    pub fn http_get(&self, addr: SocketAddr, timeout: Duration) -> Result<String> {
        let mut conn = self.http_connect(addr, timeout)?;
        conn.request(timeout, true)
    }

    /// Opens a keep-alive HTTP connection for several requests.
    pub fn http_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<HttpConn> {
        let stream = self.tcp_connect(addr, timeout)?;
        Ok(HttpConn { stream, addr })
    }

    /// Sends `payload` to a UDP echo server and returns the reply.
    pub fn udp_echo(&self, addr: SocketAddr, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.ns
            .run(|| -> Result<Vec<u8>> {
                let sock = UdpSocket::bind(dns_client::unspecified(addr))?;
                sock.connect(addr)?;
                sock.set_read_timeout(Some(timeout))?;
                sock.send(payload)?;
                let mut buf = vec![0u8; 65535];
                let n = sock.recv(&mut buf).map_err(|e| anyhow!("no echo: {e}"))?;
                Ok(buf[..n].to_vec())
            })
            .with_context(|| format!("UDP echo via {addr}"))
    }

    /// `count` sequential UDP echo round trips on one socket; an error if
    /// any reply is missing or wrong.
    pub fn udp_echo_rtts(
        &self,
        addr: SocketAddr,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Duration>> {
        self.ns.run(|| {
            let sock = UdpSocket::bind(dns_client::unspecified(addr))?;
            sock.connect(addr)?;
            sock.set_read_timeout(Some(timeout))?;
            let mut buf = [0u8; 64];
            let mut rtts = Vec::with_capacity(count);
            for i in 0..count {
                let payload = (i as u64).to_be_bytes();
                let start = Instant::now();
                sock.send(&payload)?;
                loop {
                    let n = sock
                        .recv(&mut buf)
                        .with_context(|| format!("echo {i} to {addr}"))?;
                    if buf[..n] == payload {
                        break;
                    }
                }
                rtts.push(start.elapsed());
            }
            Ok(rtts)
        })
    }

    /// One DNS query from the namespace; any rcode is `Ok`.
    pub fn dns_query(
        &self,
        server: SocketAddr,
        name: &str,
        rtype: RecordType,
        opts: DnsOpts,
    ) -> Result<Message> {
        self.ns
            .block_on(|| dns_client::query(server, name, rtype, opts))
    }

    /// The addresses of `name`'s A (or AAAA) answer; an error unless the
    /// rcode is NOERROR with at least one address.
    pub fn resolve_with(
        &self,
        server: SocketAddr,
        name: &str,
        rtype: RecordType,
        opts: DnsOpts,
    ) -> Result<Vec<IpAddr>> {
        let msg = self.dns_query(server, name, rtype, opts)?;
        dns_client::expect_addresses(&msg).with_context(|| format!("resolving {name} {rtype}"))
    }

    /// A addresses of `name` over UDP.
    pub fn resolve(&self, server: SocketAddr, name: &str) -> Result<Vec<IpAddr>> {
        self.resolve_with(server, name, RecordType::A, DnsOpts::udp())
    }

    /// AAAA addresses of `name` over UDP.
    pub fn resolve_aaaa(&self, server: SocketAddr, name: &str) -> Result<Vec<IpAddr>> {
        self.resolve_with(server, name, RecordType::AAAA, DnsOpts::udp())
    }

    /// Sends raw bytes to a UDP port; the reply if one comes within `wait`.
    pub fn send_raw_udp(
        &self,
        addr: SocketAddr,
        payload: &[u8],
        wait: Duration,
    ) -> Result<Option<Vec<u8>>> {
        self.ns
            .block_on(|| dns_client::send_raw_udp(addr, payload, wait))
    }

    /// Connects, writes raw bytes, waits `linger`, closes (TCP garbage).
    pub fn send_raw_tcp(&self, addr: SocketAddr, payload: &[u8], linger: Duration) -> Result<()> {
        self.ns.block_on(|| async move {
            let mut s = tokio::time::timeout(ALLOWED, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| anyhow!("connect to {addr} timed out"))??;
            s.write_all(payload).await?;
            tokio::time::sleep(linger).await;
            Ok(())
        })
    }

    /// Starts listeners in this namespace: on each address a TCP server
    /// that writes `hello\n` and closes, and a UDP echo server.
    pub fn start_probe_server(&self, addrs: &[SocketAddr]) -> Result<ProbeServer> {
        let rt = NsRuntime::start(self.ns, "probe");
        let tcp_accepted = Arc::new(AtomicU64::new(0));
        let udp_received = Arc::new(AtomicU64::new(0));
        for &addr in addrs {
            let (tcp, udp) = rt
                .block_on(async move {
                    let tcp = tokio::net::TcpListener::bind(addr).await?;
                    let udp = tokio::net::UdpSocket::bind(addr).await?;
                    Ok::<_, std::io::Error>((tcp, udp))
                })
                .with_context(|| format!("probe server cannot bind {addr}"))?;
            let count = tcp_accepted.clone();
            rt.spawn(async move {
                while let Ok((mut s, _)) = tcp.accept().await {
                    count.fetch_add(1, Ordering::Relaxed);
                    let _ = s.write_all(b"hello\n").await;
                }
            });
            let count = udp_received.clone();
            rt.spawn(async move {
                let mut buf = vec![0u8; 65535];
                while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                    count.fetch_add(1, Ordering::Relaxed);
                    let _ = udp.send_to(&buf[..n], peer).await;
                }
            });
        }
        Ok(ProbeServer {
            tcp_accepted,
            udp_received,
            _rt: rt,
        })
    }
}

/// A keep-alive HTTP/1.1 connection created in a namespace (usable from
/// any thread: the socket stays in its namespace).
#[derive(Debug)]
pub struct HttpConn {
    stream: TcpStream,
    addr: SocketAddr,
}

impl HttpConn {
    /// Sends `GET /` on the open connection and returns the body.
    pub fn get(&mut self, timeout: Duration) -> Result<String> {
        self.request(timeout, false)
    }

    /// The server address.
    pub fn peer(&self) -> SocketAddr {
        self.addr
    }

    fn request(&mut self, timeout: Duration, close: bool) -> Result<String> {
        let addr = self.addr;
        self.exchange(timeout, close)
            .with_context(|| format!("HTTP GET http://{addr}/"))
    }

    fn exchange(&mut self, timeout: Duration, close: bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        self.stream.set_write_timeout(Some(timeout))?;
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\n{}\r\n",
            self.addr,
            if close { "Connection: close\r\n" } else { "" }
        );
        self.stream.write_all(req.as_bytes())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            self.read_some(&mut buf, &mut chunk, deadline)?;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head.lines().next().unwrap_or_default();
        if !status.contains(" 200 ") {
            bail!("unexpected status line {status:?}");
        }
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| anyhow!("no Content-Length in {head:?}"))?;
        while buf.len() < head_end + 4 + len {
            self.read_some(&mut buf, &mut chunk, deadline)?;
        }
        Ok(String::from_utf8_lossy(&buf[head_end + 4..head_end + 4 + len]).into_owned())
    }

    fn read_some(&mut self, buf: &mut Vec<u8>, chunk: &mut [u8], deadline: Instant) -> Result<()> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("timed out"))?;
        self.stream.set_read_timeout(Some(left))?;
        match self.stream.read(chunk)? {
            0 => bail!("connection closed by peer"),
            n => buf.extend_from_slice(&chunk[..n]),
        }
        Ok(())
    }
}

/// Listeners started by [`Host::start_probe_server`]; stop when dropped.
#[derive(Debug)]
pub struct ProbeServer {
    tcp_accepted: Arc<AtomicU64>,
    udp_received: Arc<AtomicU64>,
    _rt: NsRuntime,
}

impl ProbeServer {
    /// TCP connections accepted so far.
    pub fn tcp_accepted(&self) -> u64 {
        self.tcp_accepted.load(Ordering::Relaxed)
    }

    /// UDP datagrams received so far.
    pub fn udp_received(&self) -> u64 {
        self.udp_received.load(Ordering::Relaxed)
    }
}
