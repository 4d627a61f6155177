//! Test fixtures: a scriptable upstream DNS server, a recording grant sink,
//! a test policy, a proxy on loopback and small DNS clients.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use neuwerk_core::config::{DenyResponse, DnsConfig};
use neuwerk_core::events::{DnsEvent, DnsObserver, DnsQueryView, FilteredEvent, FilteredView};
use neuwerk_core::grants::{Grant, GrantError, GrantSink};
use neuwerk_core::policy::hostname::PatternKind;
use neuwerk_core::policy::{
    HostIndex, HostPattern, Network, NetworkMode, ParsedPolicy, Policy, PortRange, PortSet, Proto,
};
use neuwerk_dns::{DnsServer, ProxyContext, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for any single reply.
pub const CLIENT_WAIT: Duration = Duration::from_secs(3);

pub fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

pub fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(A(ip.into())))
}

pub fn aaaa(owner: &str, ttl: u32, ip: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::AAAA(AAAA(ip.parse().unwrap())))
}

pub fn cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
}

// ---------------------------------------------------------------- upstream

/// How the fake upstream behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers from its zone; NXDOMAIN for unknown names; TC=1 over UDP
    /// when the answer exceeds the query's payload size.
    Normal,
    /// Every UDP answer is TC=1 without records; the full answer over TCP.
    Truncate,
    ServFail,
    Refused,
    /// Never answers.
    Silent,
    /// Over UDP, first sends a wrong-id answer and a wrong-question answer
    /// (both with 6.6.6.6), then the real one.
    Spoof,
}

/// One zone entry: what a (name, type) query gets.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
    pub delay: Duration,
}

/// A query the upstream received.
#[derive(Debug, Clone)]
pub struct Logged {
    pub name: String,
    pub qtype: RecordType,
    pub transport: Transport,
    pub edns_payload: Option<u16>,
}

#[derive(Default)]
struct State {
    zone: Mutex<HashMap<(String, RecordType), Entry>>,
    mode: Mutex<Option<Mode>>,
    log: Mutex<Vec<Logged>>,
}

/// A scriptable DNS server on 127.0.0.1, UDP and TCP on one port.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn key(n: &Name, t: RecordType) -> (String, RecordType) {
    (n.to_ascii().trim_end_matches('.').to_ascii_lowercase(), t)
}

impl Upstream {
    pub async fn start(mode: Mode) -> Upstream {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            // Room for a burst of hundreds of queries.
            let _ = socket2::SockRef::from(&udp).set_recv_buffer_size(4 << 20);
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let state = Arc::new(State::default());
        *state.mode.lock().unwrap() = Some(mode);
        let udp = Arc::new(udp);
        let st = state.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                let (st, udp, bytes) = (st.clone(), udp.clone(), buf[..n].to_vec());
                tokio::spawn(async move {
                    for reply in st.respond(&bytes, Transport::Udp).await {
                        let _ = udp.send_to(&reply, peer).await;
                    }
                });
            }
        });
        let st = state.clone();
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tcp.accept().await else {
                    continue;
                };
                tokio::spawn(serve_tcp(stream, st.clone()));
            }
        });
        Upstream {
            addr,
            state,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// Sets what `owner` answers for the type of its first answer record.
    pub fn set(&self, owner: &str, qtype: RecordType, entry: Entry) {
        let k = key(&name(owner), qtype);
        self.state.zone.lock().unwrap().insert(k, entry);
    }

    /// Shorthand: answers only.
    pub fn answer(&self, owner: &str, qtype: RecordType, answers: Vec<Record>) {
        let entry = Entry {
            answers,
            ..Entry::default()
        };
        self.set(owner, qtype, entry);
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }
}

async fn serve_tcp(mut stream: TcpStream, st: Arc<State>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut buf = vec![0u8; len as usize];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        for reply in st.respond(&buf, Transport::Tcp).await {
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}

impl State {
    /// The messages to send back, in order.
    async fn respond(&self, bytes: &[u8], transport: Transport) -> Vec<Vec<u8>> {
        let Ok(query) = Message::from_vec(bytes) else {
            return vec![];
        };
        let Some(q) = query.queries.first().cloned() else {
            return vec![];
        };
        let payload = query.edns.as_ref().map(|e| e.max_payload());
        self.log.lock().unwrap().push(Logged {
            name: key(q.name(), q.query_type()).0,
            qtype: q.query_type(),
            transport,
            edns_payload: payload,
        });
        let mode = self.mode.lock().unwrap().unwrap();
        let entry = self
            .zone
            .lock()
            .unwrap()
            .get(&key(q.name(), q.query_type()))
            .cloned();
        if let Some(e) = &entry {
            tokio::time::sleep(e.delay).await;
        }
        let mut reply = Message::new(query.id, MessageType::Response, OpCode::Query);
        reply.metadata.recursion_desired = query.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_query(q.clone());
        if query.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            reply.set_edns(edns);
        }
        match (mode, entry) {
            (Mode::Silent, _) => return vec![],
            (Mode::ServFail, _) => reply.metadata.response_code = ResponseCode::ServFail,
            (Mode::Refused, _) => reply.metadata.response_code = ResponseCode::Refused,
            (_, None) => reply.metadata.response_code = ResponseCode::NXDomain,
            (_, Some(e)) => {
                reply.add_answers(e.answers);
                reply.add_additionals(e.additionals);
            }
        }
        let full = reply.to_vec().unwrap();
        let limit = payload.unwrap_or(512).max(512) as usize;
        if transport == Transport::Udp && (mode == Mode::Truncate || full.len() > limit) {
            return vec![reply.truncate().to_vec().unwrap()];
        }
        if transport == Transport::Udp && mode == Mode::Spoof {
            let mut wrong_id = reply.clone();
            wrong_id.metadata.id = query.id.wrapping_add(1);
            wrong_id.add_answer(a(&q.name().to_ascii(), 60, [6, 6, 6, 6]));
            let mut wrong_q = reply.clone();
            wrong_q.queries[0] = Query::query(name("other.test."), q.query_type());
            wrong_q.add_answer(a("other.test.", 60, [6, 6, 6, 6]));
            return vec![wrong_id.to_vec().unwrap(), wrong_q.to_vec().unwrap(), full];
        }
        vec![full]
    }
}

// ---------------------------------------------------------------- grants

/// Records every batch given to `learn`, and when.
#[derive(Default)]
pub struct Sink {
    pub batches: Mutex<Vec<(Instant, Vec<Grant>)>>,
    pub fail: std::sync::atomic::AtomicBool,
    /// Batches with this address fail.
    pub fail_addr: Mutex<Option<IpAddr>>,
    /// Sizes of the `learn_many` calls.
    pub many: Mutex<Vec<usize>>,
}

impl GrantSink for Sink {
    fn learn_many(&self, batches: &[&[Grant]], now_ns: u64) -> Vec<Result<(), GrantError>> {
        self.many.lock().unwrap().push(batches.len());
        batches.iter().map(|b| self.learn(b, now_ns)).collect()
    }

    fn learn(&self, grants: &[Grant], _now_ns: u64) -> Result<(), GrantError> {
        let fail_addr = *self.fail_addr.lock().unwrap();
        if self.fail.load(std::sync::atomic::Ordering::SeqCst)
            || grants.iter().any(|g| Some(g.addr) == fail_addr)
        {
            return Err(GrantError::Backend {
                addr: grants[0].addr,
                reason: "map full".into(),
            });
        }
        self.batches
            .lock()
            .unwrap()
            .push((Instant::now(), grants.to_vec()));
        Ok(())
    }
}

impl Sink {
    /// Every grant learned so far.
    pub fn grants(&self) -> Vec<Grant> {
        let batches = self.batches.lock().unwrap();
        batches.iter().flat_map(|(_, b)| b.clone()).collect()
    }

    pub fn addrs(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.grants().iter().map(|g| g.addr).collect();
        v.sort();
        v
    }
}

// ---------------------------------------------------------------- observer

/// One query as the observer saw it.
#[derive(Debug, Clone)]
pub struct Observed {
    pub event: DnsEvent,
    pub total: Duration,
    pub upstream: Option<Duration>,
    pub grant_commit: Option<Duration>,
}

/// Records every query reported to the observer, and every special-use
/// address left out of an answer.
#[derive(Default)]
pub struct Recorder {
    pub seen: Mutex<Vec<Observed>>,
    pub filtered: Mutex<Vec<FilteredEvent>>,
}

impl DnsObserver for Recorder {
    fn filtered(&self, f: &FilteredView<'_>) {
        self.filtered.lock().unwrap().push(FilteredEvent::from(f));
    }

    fn query(&self, q: &DnsQueryView<'_>) {
        self.seen.lock().unwrap().push(Observed {
            event: DnsEvent::from(q),
            total: q.total,
            upstream: q.upstream,
            grant_commit: q.grant_commit,
        });
    }
}

impl Recorder {
    pub fn all(&self) -> Vec<Observed> {
        self.seen.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits up to `CLIENT_WAIT` for the `n`th report (1-based), for
    /// queries that get no reply.
    pub async fn nth(&self, n: usize) -> Observed {
        let start = Instant::now();
        loop {
            if let Some(o) = self.seen.lock().unwrap().get(n - 1) {
                return o.clone();
            }
            assert!(start.elapsed() < CLIENT_WAIT, "no report #{n}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

// ---------------------------------------------------------------- policy

pub fn https() -> PortSet {
    PortSet::new(vec![PortRange {
        proto: Proto::Tcp,
        lo: 443,
        hi: 443,
    }])
}

pub fn web() -> PortSet {
    PortSet::new(vec![
        PortRange {
            proto: Proto::Tcp,
            lo: 80,
            hi: 80,
        },
        PortRange {
            proto: Proto::Tcp,
            lo: 443,
            hi: 443,
        },
    ])
}

/// Network "lan" with the given CIDRs: `www.example.com` and
/// `v6.example.com` on 443/tcp, `**.example.org` on 80,443/tcp, and
/// `*.example.net` on every port.
pub fn policy(cidrs: &[&str]) -> Policy {
    let mut hosts = HostIndex::default();
    let pat = |kind, suffix: &str| HostPattern {
        kind,
        suffix: suffix.into(),
    };
    hosts.insert(&pat(PatternKind::Exact, "www.example.com"), &https());
    hosts.insert(&pat(PatternKind::Exact, "v6.example.com"), &https());
    hosts.insert(&pat(PatternKind::AnyDepth, "example.org"), &web());
    hosts.insert(&pat(PatternKind::OneLabel, "example.net"), &PortSet::all());
    Policy {
        networks: vec![Network {
            name: "lan".into(),
            cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            mode: NetworkMode::Enforce,
            rules: vec![],
            hosts,
        }],
    }
}

/// [`policy`], with the network in `mode`.
pub fn policy_in(cidrs: &[&str], mode: NetworkMode) -> Policy {
    let mut p = policy(cidrs);
    p.networks[0].mode = mode;
    p
}

/// The config the tests start from: one listener on 127.0.0.1:0, 200 ms
/// per upstream try, grants living 60 s to 600 s.
pub fn config(upstreams: &[SocketAddr]) -> DnsConfig {
    DnsConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        upstreams: upstreams.to_vec(),
        upstream_timeout: Duration::from_millis(200),
        min_ttl: Duration::from_secs(60),
        max_ttl: Duration::from_secs(600),
        deny_response: DenyResponse::Refused,
        workers: 2,
        intercept: true,
    }
}

// ---------------------------------------------------------------- proxy

/// A running proxy; stops when dropped.
pub struct Proxy {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub sink: Arc<Sink>,
    pub observed: Arc<Recorder>,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), neuwerk_dns::DnsError>>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Proxy {
    pub async fn start(config: DnsConfig, policy: impl Into<ParsedPolicy>) -> Proxy {
        Proxy::start_with(config, policy, Vec::new()).await
    }

    /// [`Proxy::start`], the node having the interface addresses `own`.
    pub async fn start_with(
        config: DnsConfig,
        policy: impl Into<ParsedPolicy>,
        own: Vec<IpAddr>,
    ) -> Proxy {
        let sink = Arc::new(Sink::default());
        let observed = Arc::new(Recorder::default());
        let server = DnsServer::bind(ProxyContext {
            config,
            policy: Arc::new(ArcSwap::from_pointee(policy.into())),
            own_addrs: own,
            grants: sink.clone(),
            observer: observed.clone(),
        })
        .await
        .unwrap();
        let addrs = server.local_addrs();
        let find = |t| addrs.iter().find(|(tr, _)| *tr == t).unwrap().1;
        let (udp, tcp) = (find(Transport::Udp), find(Transport::Tcp));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Proxy {
            udp,
            tcp,
            sink,
            observed,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), neuwerk_dns::DnsError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

// ---------------------------------------------------------------- clients

/// A query for `qname`/`qtype` with id 0x4242, RD set, optional EDNS size.
pub fn query(qname: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

/// Sends raw bytes over UDP; the reply's bytes, or `None` after `wait`.
pub async fn udp_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// One UDP exchange; panics if no reply comes.
pub async fn udp(server: SocketAddr, m: &Message) -> (Message, usize) {
    let reply = udp_raw(server, &m.to_vec().unwrap(), CLIENT_WAIT)
        .await
        .expect("no UDP reply");
    (Message::from_vec(&reply).unwrap(), reply.len())
}

/// One exchange over a fresh TCP connection.
pub async fn tcp(server: SocketAddr, m: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    write_tcp(&mut stream, &m.to_vec().unwrap()).await;
    read_tcp(&mut stream).await.expect("no TCP reply")
}

pub async fn write_tcp(stream: &mut TcpStream, bytes: &[u8]) {
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.unwrap();
}

/// The next framed message, or `None` if the connection ends first.
pub async fn read_tcp(stream: &mut TcpStream) -> Option<Message> {
    let read = async {
        let len = stream.read_u16().await.ok()?;
        let mut buf = vec![0u8; len as usize];
        stream.read_exact(&mut buf).await.ok()?;
        Some(Message::from_vec(&buf).unwrap())
    };
    tokio::time::timeout(CLIENT_WAIT, read)
        .await
        .expect("TCP read timed out")
}

/// Whether the server closed `stream` (EOF or reset) within `wait`.
pub async fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}
