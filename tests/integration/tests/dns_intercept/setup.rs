//! Set-up of the interception tests: addresses, queries over raw sockets,
//! and what the node logged and counted.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use neuwerk_integration::client::ALLOWED;
use neuwerk_integration::dns_client::{build_query, rcode};
use neuwerk_integration::mgmt::Mgmt;
use neuwerk_integration::neuwerk::fixture;
use neuwerk_integration::topology::*;
use neuwerk_integration::{DnsOpts, Host, Neuwerk, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Neuwerk's management listener (the harness default, inside the
/// firewall namespace).
pub(crate) const MGMT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3000);

/// Port 53 of an address local to the upstream namespace where nothing
/// listens on it: no resolver at all.
pub(crate) const NO_RESOLVER_V4: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 53);

/// Port 53 of an address nothing routes to beyond the node (TEST-NET-3:
/// the upstream namespace has no route for it).
pub(crate) const UNROUTED_V4: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 53)), 53);

/// Port 53 of an IPv6 address in the upstream network with no resolver.
pub(crate) const NO_RESOLVER_V6: SocketAddr = SocketAddr::new(IpAddr::V6(DEST2_V6), 53);

pub(crate) fn dns_only(topo: &Topology) -> Neuwerk<'_> {
    Neuwerk::start(topo, &fixture("policy-dns-only.yaml"))
}

pub(crate) fn mgmt(topo: &Topology) -> Mgmt<'_> {
    Mgmt::new(topo.firewall_ns(), MGMT, None)
}

/// The first line of neuwerk's log holding every one of `needles`, from
/// `needles[0]` on (without the timestamp and level), waited for up to 5 s.
pub(crate) fn log_line(nw: &Neuwerk<'_>, needles: &[&str]) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = nw.logs();
        let hit = logs
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .and_then(|l| Some(l[l.find(needles[0])?..].to_string()));
        if hit.is_some() || Instant::now() > deadline {
            return hit;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that `name` (`rtype`) asked of `server` over UDP and TCP
/// resolves to exactly `expected`.
#[track_caller]
pub(crate) fn assert_answered(
    c: Host<'_>,
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    expected: IpAddr,
) {
    for opts in [DnsOpts::udp(), DnsOpts::tcp()] {
        let got = c
            .resolve_with(server, name, rtype, opts)
            .unwrap_or_else(|e| panic!("{name} via {server} over {:?}: {e:#}", opts.transport));
        assert_eq!(
            got,
            vec![expected],
            "{name} via {server} over {:?}",
            opts.transport
        );
    }
}

/// Asserts that `name` asked of `server` over UDP and TCP is refused.
#[track_caller]
pub(crate) fn assert_refused(c: Host<'_>, server: SocketAddr, name: &str) {
    for opts in [DnsOpts::udp(), DnsOpts::tcp()] {
        let m = c
            .dns_query(server, name, RecordType::A, opts)
            .unwrap_or_else(|e| panic!("{name} via {server} over {:?}: {e:#}", opts.transport));
        assert_eq!(
            rcode(&m),
            ResponseCode::Refused,
            "{name} via {server} over {:?}: {m:?}",
            opts.transport
        );
    }
}

/// What [`udp_query`] got.
pub(crate) struct UdpAnswer {
    pub(crate) answer: Message,
    /// The sender as the client's socket saw it.
    pub(crate) from: SocketAddr,
    /// The client socket's port.
    pub(crate) port: u16,
}

/// One UDP query from a plain socket in the client namespace, bound to
/// `local` (port 0: any). A socket `connect()`ed to `server` only accepts
/// datagrams whose source is `server`; an unconnected one accepts any and
/// reports the sender.
pub(crate) fn udp_query(
    c: Host<'_>,
    local: SocketAddr,
    server: SocketAddr,
    connected: bool,
    name: &str,
) -> Result<UdpAnswer> {
    let query = build_query(name, RecordType::A, None)?;
    let bytes = query.to_vec()?;
    let id = query.metadata.id;
    c.ns()
        .run(|| -> Result<UdpAnswer> {
            let sock = UdpSocket::bind(local)?;
            sock.set_read_timeout(Some(ALLOWED))?;
            if connected {
                sock.connect(server)?;
                sock.send(&bytes)?;
            } else {
                sock.send_to(&bytes, server)?;
            }
            let mut buf = vec![0u8; 65535];
            loop {
                let (n, from) = sock.recv_from(&mut buf).context("no answer")?;
                let answer = Message::from_vec(&buf[..n])?;
                if answer.metadata.id == id {
                    let port = sock.local_addr()?.port();
                    return Ok(UdpAnswer { answer, from, port });
                }
            }
        })
        .with_context(|| {
            let how = if connected {
                "connected"
            } else {
                "unconnected"
            };
            format!("{name} via {server} from {local} ({how} UDP socket)")
        })
}

/// One DNS query over TCP from the client namespace, from local port
/// `port` (0: any); returns the answer and the port used. SO_REUSEADDR
/// lets a port whose last connection is in TIME_WAIT be bound again.
pub(crate) fn tcp_query(
    c: Host<'_>,
    port: u16,
    server: SocketAddr,
    name: &str,
) -> Result<(Message, u16)> {
    let query = build_query(name, RecordType::A, None)?;
    let bytes = query.to_vec()?;
    let id = query.metadata.id;
    c.block_on(|| async move {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.set_reuseaddr(true)?;
        sock.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))?;
        let exchange = async {
            let mut stream = sock.connect(server).await?;
            let port = stream.local_addr()?.port();
            let mut framed = u16::try_from(bytes.len())?.to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            stream.write_all(&framed).await?;
            loop {
                let mut body = vec![0u8; stream.read_u16().await? as usize];
                stream.read_exact(&mut body).await?;
                let answer = Message::from_vec(&body)?;
                if answer.metadata.id == id {
                    return Ok::<_, anyhow::Error>((answer, port));
                }
            }
        };
        tokio::time::timeout(ALLOWED, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {ALLOWED:?}"))?
    })
    .with_context(|| format!("{name} via {server} over TCP from port {port}"))
}

/// Connects to a probe server at `addr` and reads its greeting: once it
/// arrives, the probe has counted the connection.
pub(crate) fn probe_hello(c: Host<'_>, addr: SocketAddr) -> Result<()> {
    let mut stream = c.tcp_connect(addr, ALLOWED)?;
    stream.set_read_timeout(Some(ALLOWED))?;
    let mut hello = [0u8; 6];
    stream
        .read_exact(&mut hello)
        .with_context(|| format!("no greeting from {addr}"))?;
    anyhow::ensure!(&hello == b"hello\n", "greeting {hello:?} from {addr}");
    Ok(())
}
