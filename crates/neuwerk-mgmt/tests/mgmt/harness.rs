//! A fake daemon behind a real server on 127.0.0.1:0, and a tiny HTTP
//! client for the tests.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use neuwerk_core::grants::Grant;
use neuwerk_core::policy::{parse_policy, PortRange, PortSet, Proto};
use neuwerk_core::time::monotonic_ns;
use neuwerk_mgmt::model::InterfacesView;
use neuwerk_mgmt::{
    serve, Admin, EventBus, KernelStats, MapUsage, Metrics, NodeInfo, PacketCounter, PolicyStatus,
    PolicyView, Readiness, ReasonCounter, ReloadReport, Server, Verdict,
};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

pub const POLICY: &str = "\
networks:
  - name: clients
    cidrs: [10.100.1.0/24, \"fd00:100:1::/64\"]
    policies:
      - hostname: api.github.com
        ports: [443]
      - hostname: \"*.example.org\"
      - ip: 192.0.2.100
        ports: [443]
        protocol: tcp
  - name: lab
    cidr: 10.100.2.0/24
    mode: audit
    policies:
      - hostname: example.com
";

/// The daemon, faked: every answer is whatever the test put in.
pub struct Fake {
    pub grants: Mutex<Vec<Grant>>,
    pub kernel: Mutex<KernelStats>,
    pub ready: Mutex<Readiness>,
    pub reload: Mutex<Result<ReloadReport, String>>,
    pub reloads: AtomicU64,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            grants: Mutex::new(Vec::new()),
            kernel: Mutex::new(KernelStats::default()),
            ready: Mutex::new(Readiness {
                dataplane_attached: true,
                policy_loaded: true,
                dns_listening: true,
                forwarding: true,
                problems: Vec::new(),
            }),
            reload: Mutex::new(Ok(ReloadReport {
                generation: 8,
                summary: "2 networks".into(),
                grants_revoked: 3,
                connections_closed: 1,
            })),
            reloads: AtomicU64::new(0),
        }
    }
}

impl Admin for Fake {
    fn info(&self) -> NodeInfo {
        let policy = parse_policy(POLICY, "policy.yaml").expect("test policy");
        NodeInfo {
            version: "9.9.9".into(),
            uptime_s: 3723,
            interfaces: InterfacesView {
                ingress: "nwi0".into(),
                egress: "nwe0".into(),
            },
            policy: PolicyStatus::new(&policy, Path::new("/etc/neuwerk/policy.yaml"), 7),
        }
    }
    fn grants(&self) -> Vec<Grant> {
        self.grants.lock().unwrap().clone()
    }
    fn policy_text(&self) -> PolicyView {
        PolicyView {
            file: "/etc/neuwerk/policy.yaml".into(),
            generation: 7,
            text: POLICY.into(),
        }
    }
    fn reload(&self) -> Result<ReloadReport, String> {
        self.reloads.fetch_add(1, Ordering::SeqCst);
        self.reload.lock().unwrap().clone()
    }
    fn readiness(&self) -> Readiness {
        self.ready.lock().unwrap().clone()
    }
    fn kernel_stats(&self) -> KernelStats {
        self.kernel.lock().unwrap().clone()
    }
}

/// A grant of `network` to `addr` for `hostname` on tcp/443, expiring
/// `ttl_ms` from now (negative: already expired).
pub fn grant(network: &str, hostname: &str, addr: &str, ttl_ms: i64) -> Grant {
    let now = monotonic_ns() as i64;
    Grant {
        network: Arc::from(network),
        addr: addr.parse().unwrap(),
        hostname: Arc::from(hostname),
        ports: PortSet::new(vec![PortRange {
            proto: Proto::Tcp,
            lo: 443,
            hi: 443,
        }]),
        expires_ns: (now + ttl_ms * 1_000_000).max(0) as u64,
    }
}

/// Some kernel counters; `scale` multiplies every count.
pub fn kernel(scale: u64) -> KernelStats {
    let pc = |network: Option<&str>, protocol: &'static str, verdict, count| PacketCounter {
        network: network.map(Arc::from),
        protocol: Cow::Borrowed(protocol),
        verdict,
        count: count * scale,
    };
    KernelStats {
        packets: vec![
            pc(Some("clients"), "tcp", Verdict::Allowed, 100),
            pc(Some("clients"), "udp", Verdict::Allowed, 20),
            pc(Some("clients"), "tcp", Verdict::Dropped, 3),
            // Same labels again: summed.
            pc(Some("clients"), "tcp", Verdict::Dropped, 2),
            pc(None, "icmp", Verdict::Dropped, 7),
        ],
        reasons: vec![ReasonCounter {
            reason: "drop_policy".into(),
            count: 5 * scale,
        }],
        maps: vec![MapUsage {
            map: "grants".into(),
            entries: 12 * scale,
            capacity: 1 << 20,
        }],
        conntrack_entries: 34 * scale,
        events_lost: 2 * scale,
    }
}

/// A running server over a [`Fake`].
pub struct Harness {
    pub rt: Runtime,
    pub addr: SocketAddr,
    pub fake: Arc<Fake>,
    pub metrics: Arc<Metrics>,
    pub bus: EventBus,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Harness {
    /// A server without a token.
    pub fn start() -> Harness {
        Harness::with(None, Duration::from_secs(10), EventBus::default())
    }

    /// A server with `token`, event keepalive `keepalive`, and `bus`.
    pub fn with(token: Option<&str>, keepalive: Duration, bus: EventBus) -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Arc::new(Fake::new());
        let metrics = Arc::new(Metrics::new("9.9.9"));
        let mut server = Server::new(fake.clone(), metrics.clone(), bus.clone())
            .with_token(token.map(str::to_string));
        server.keepalive = keepalive;
        let (stop, stopped) = oneshot::channel::<()>();
        let done = rt.spawn(serve(listener, server, async move {
            let _ = stopped.await;
        }));
        Harness {
            rt,
            addr,
            fake,
            metrics,
            bus,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A request; returns the status and the whole body.
    pub fn call(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        self.rt.block_on(async {
            let resp = send(self.addr, method, path, token).await;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        })
    }

    /// `GET path` without a token.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.call("GET", path, None)
    }

    /// `GET path` as JSON, asserting 200.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let (code, body) = self.get(path);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until the bus has `n` subscribers.
    pub fn wait_subscribers(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.bus.subscribers() < n {
            assert!(std::time::Instant::now() < deadline, "no subscriber");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Signals shutdown and waits (bounded) for `serve` to return.
    pub fn shutdown(&mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        let done = self.done.take().unwrap();
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), done)
                .await
                .expect("serve returns after shutdown")
                .unwrap()
        })
    }
}

/// Sends one request with an empty body.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> hyper::Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap()
}

/// An IP address.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
