//! Mock authoritative DNS server for the upstream namespace: UDP and TCP
//! on several addresses, A/AAAA/CNAME records with per-record TTLs,
//! wildcard owners (`*.wild.example.com`), per-name or global failure
//! modes and delays, records changeable at runtime, and a log of every
//! query received.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::dns_client::Transport;
use crate::netns::Netns;
use crate::runtime::NsRuntime;

/// One record the mock serves for a name (the owner is the map key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MockRecord {
    /// IPv4 address with TTL in seconds.
    A(Ipv4Addr, u32),
    /// IPv6 address with TTL in seconds.
    Aaaa(Ipv6Addr, u32),
    /// Alias to another name with TTL in seconds; followed by the mock
    /// (up to 8 hops) so the answer carries the whole chain.
    Cname(String, u32),
}

/// How the mock misbehaves for a name (or for every name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Failure {
    /// Answer normally.
    #[default]
    None,
    /// Never answer (the query is logged, then dropped).
    NoAnswer,
    /// Answer SERVFAIL.
    ServFail,
    /// Over UDP answer TC=1 with no records; the full answer only over TCP.
    TruncateUdp,
}

/// One query the mock received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryLogEntry {
    /// Query name, lowercase, without trailing dot.
    pub name: String,
    /// Query type.
    pub qtype: RecordType,
    /// UDP or TCP.
    pub transport: Transport,
    /// The mock's address the query arrived on.
    pub server: SocketAddr,
    /// Who sent it.
    pub client: SocketAddr,
}

#[derive(Debug, Default)]
struct State {
    zone: HashMap<String, Vec<MockRecord>>,
    failures: HashMap<String, Failure>,
    delays: HashMap<String, Duration>,
    global_failure: Failure,
    global_delay: Duration,
    log: Vec<QueryLogEntry>,
}

type Shared = Arc<Mutex<State>>;

/// A running mock DNS server; stops when dropped.
#[derive(Debug)]
pub struct DnsMock {
    state: Shared,
    addrs: Vec<SocketAddr>,
    _rt: NsRuntime,
}

impl DnsMock {
    /// Binds UDP and TCP on every address in `addrs` inside `ns` and
    /// starts serving an empty zone.
    pub fn start(ns: &Netns, addrs: &[SocketAddr]) -> Result<DnsMock> {
        let rt = NsRuntime::start(ns, "dns-mock");
        let state: Shared = Arc::default();
        for &addr in addrs {
            let (udp, tcp) = rt
                .block_on(async move {
                    let udp = UdpSocket::bind(addr).await?;
                    let tcp = TcpListener::bind(addr).await?;
                    Ok::<_, std::io::Error>((udp, tcp))
                })
                .with_context(|| format!("mock DNS cannot bind {addr}"))?;
            grow_receive_buffer(&udp);
            rt.spawn(serve_udp(Arc::new(udp), addr, state.clone()));
            rt.spawn(serve_tcp(tcp, addr, state.clone()));
        }
        Ok(DnsMock {
            state,
            addrs: addrs.to_vec(),
            _rt: rt,
        })
    }

    /// The addresses it serves on (UDP and TCP).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Replaces the records of `name` (may be a wildcard `*.suffix`).
    pub fn set_records(&self, name: &str, records: Vec<MockRecord>) {
        self.lock().zone.insert(key(name), records);
    }

    /// Adds one record to `name`.
    pub fn add_record(&self, name: &str, record: MockRecord) {
        self.lock().zone.entry(key(name)).or_default().push(record);
    }

    /// Removes `name` (it becomes NXDOMAIN unless a wildcard covers it).
    pub fn remove_name(&self, name: &str) {
        self.lock().zone.remove(&key(name));
    }

    /// Sets the failure mode of `name`, or of every name when `None`
    /// (a per-name mode other than [`Failure::None`] wins).
    pub fn set_failure(&self, name: Option<&str>, failure: Failure) {
        let mut st = self.lock();
        match name {
            Some(n) => {
                st.failures.insert(key(n), failure);
            }
            None => st.global_failure = failure,
        }
    }

    /// Delays answers for `name`, or for every name when `None` (the
    /// larger of the two applies).
    pub fn set_delay(&self, name: Option<&str>, delay: Duration) {
        let mut st = self.lock();
        match name {
            Some(n) => {
                st.delays.insert(key(n), delay);
            }
            None => st.global_delay = delay,
        }
    }

    /// Every query received so far, oldest first.
    pub fn queries(&self) -> Vec<QueryLogEntry> {
        self.lock().log.clone()
    }

    /// The queries for `name` (any case, trailing dot ignored).
    pub fn queries_for(&self, name: &str) -> Vec<QueryLogEntry> {
        let k = key(name);
        self.lock()
            .log
            .iter()
            .filter(|q| q.name == k)
            .cloned()
            .collect()
    }

    /// How many queries for `name` came from one of `sources`.
    pub fn queries_from(&self, name: &str, sources: &[IpAddr]) -> usize {
        let k = key(name);
        self.lock()
            .log
            .iter()
            .filter(|q| q.name == k && sources.contains(&q.client.ip()))
            .count()
    }

    /// Forgets the query log.
    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Raises a UDP socket's receive buffer to 8 MiB (SO_RCVBUFFORCE, as
/// root) so bursts of hundreds of queries are not dropped by the kernel.
pub(crate) fn grow_receive_buffer(sock: &impl std::os::fd::AsRawFd) {
    let size: libc::c_int = 8 << 20;
    if let Err(e) = crate::sockopt::set_int(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size) {
        eprintln!("warning: SO_RCVBUFFORCE: {e}");
    }
}

/// Lowercase, no trailing dot: the zone and log key of a name.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn serve_udp(sock: Arc<UdpSocket>, local: SocketAddr, state: Shared) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Some((reply, delay)) = handle(&state, &buf[..n], Transport::Udp, local, peer) else {
            continue;
        };
        let sock = sock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = sock.send_to(&reply, peer).await;
        });
    }
}

async fn serve_tcp(listener: TcpListener, local: SocketAddr, state: Shared) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_tcp_conn(stream, local, peer, state.clone()));
    }
}

async fn serve_tcp_conn(mut stream: TcpStream, local: SocketAddr, peer: SocketAddr, state: Shared) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut body = vec![0u8; len as usize];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let Some((reply, delay)) = handle(&state, &body, Transport::Tcp, local, peer) else {
            continue;
        };
        tokio::time::sleep(delay).await;
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Decodes a query, logs it and builds the encoded reply and its delay;
/// `None` means no reply (undecodable query or [`Failure::NoAnswer`]).
fn handle(
    state: &Shared,
    bytes: &[u8],
    transport: Transport,
    server: SocketAddr,
    client: SocketAddr,
) -> Option<(Vec<u8>, Duration)> {
    let req = Message::from_vec(bytes).ok()?;
    let query = req.queries.first()?.clone();
    let qkey = key(&query.name().to_ascii());
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    st.log.push(QueryLogEntry {
        name: qkey.clone(),
        qtype: query.query_type(),
        transport,
        server,
        client,
    });
    let failure = match st.failures.get(&qkey).copied().unwrap_or_default() {
        Failure::None => st.global_failure,
        f => f,
    };
    let delay = st
        .delays
        .get(&qkey)
        .copied()
        .unwrap_or_default()
        .max(st.global_delay);

    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    resp.add_query(query.clone());
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        resp.set_edns(edns);
    }
    match failure {
        Failure::NoAnswer => return None,
        Failure::ServFail => resp.metadata.response_code = ResponseCode::ServFail,
        Failure::TruncateUdp if transport == Transport::Udp => resp.metadata.truncation = true,
        Failure::None | Failure::TruncateUdp => {
            let (code, answers) = resolve(&st.zone, query.name(), query.query_type());
            resp.metadata.response_code = code;
            resp.insert_answers(answers);
        }
    }
    drop(st);

    let mut out = resp.to_vec().ok()?;
    let limit = req.edns.as_ref().map_or(512, |e| e.max_payload().max(512)) as usize;
    if transport == Transport::Udp && out.len() > limit {
        resp.answers.clear();
        resp.metadata.truncation = true;
        out = resp.to_vec().ok()?;
    }
    Some((out, delay))
}

/// Looks a name up: exact owner first, else the closest `*.` wildcard.
fn lookup<'z>(zone: &'z HashMap<String, Vec<MockRecord>>, name: &str) -> Option<&'z [MockRecord]> {
    if let Some(r) = zone.get(name) {
        return Some(r);
    }
    let mut rest = name;
    while let Some((_, parent)) = rest.split_once('.') {
        if let Some(r) = zone.get(&format!("*.{parent}")) {
            return Some(r);
        }
        rest = parent;
    }
    None
}

/// The answer for `qname`/`qtype`: NXDOMAIN when the name is unknown,
/// else NOERROR with the CNAME chain and the final records of `qtype`.
fn resolve(
    zone: &HashMap<String, Vec<MockRecord>>,
    qname: &Name,
    qtype: RecordType,
) -> (ResponseCode, Vec<Record>) {
    let mut owner = qname.clone();
    let mut answers = Vec::new();
    for hop in 0..8 {
        let Some(records) = lookup(zone, &key(&owner.to_ascii())) else {
            let code = if hop == 0 {
                ResponseCode::NXDomain
            } else {
                ResponseCode::NoError
            };
            return (code, answers);
        };
        let cname = records.iter().find_map(|r| match r {
            MockRecord::Cname(t, ttl) if qtype != RecordType::CNAME => Some((t, *ttl)),
            _ => None,
        });
        if let Some((target, ttl)) = cname {
            let Ok(target) = Name::from_ascii(format!("{}.", key(target))) else {
                break;
            };
            let rdata = RData::CNAME(CNAME(target.clone()));
            answers.push(Record::from_rdata(owner.clone(), ttl, rdata));
            owner = target;
            continue;
        }
        for r in records {
            let rdata = match (r, qtype) {
                (MockRecord::A(a, ttl), RecordType::A) => Some((RData::A(A(*a)), *ttl)),
                (MockRecord::Aaaa(a, ttl), RecordType::AAAA) => Some((RData::AAAA(AAAA(*a)), *ttl)),
                (MockRecord::Cname(t, ttl), RecordType::CNAME) => {
                    Name::from_ascii(format!("{}.", key(t)))
                        .ok()
                        .map(|n| (RData::CNAME(CNAME(n)), *ttl))
                }
                _ => None,
            };
            if let Some((rdata, ttl)) = rdata {
                answers.push(Record::from_rdata(owner.clone(), ttl, rdata));
            }
        }
        break;
    }
    (ResponseCode::NoError, answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> HashMap<String, Vec<MockRecord>> {
        let mut z = HashMap::new();
        z.insert(
            "a.test".into(),
            vec![MockRecord::A(Ipv4Addr::new(192, 0, 2, 1), 5)],
        );
        z.insert("c.test".into(), vec![MockRecord::Cname("a.test".into(), 7)]);
        z.insert(
            "*.w.test".into(),
            vec![MockRecord::A(Ipv4Addr::new(192, 0, 2, 2), 9)],
        );
        z
    }

    #[test]
    fn resolves_exact_cname_wildcard_and_nxdomain() {
        let z = zone();
        let n = |s: &str| Name::from_ascii(s).unwrap();
        let (code, ans) = resolve(&z, &n("A.test."), RecordType::A);
        assert_eq!((code, ans.len()), (ResponseCode::NoError, 1));
        let (_, ans) = resolve(&z, &n("c.test."), RecordType::A);
        assert_eq!(ans.len(), 2);
        assert_eq!(ans[0].ttl, 7);
        assert_eq!(ans[1].data, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))));
        let (_, ans) = resolve(&z, &n("x.y.w.test."), RecordType::A);
        assert_eq!(ans[0].ttl, 9);
        let (code, _) = resolve(&z, &n("nope.test."), RecordType::A);
        assert_eq!(code, ResponseCode::NXDomain);
    }
}
