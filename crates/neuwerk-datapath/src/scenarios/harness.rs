//! The harness of the scenarios: a dataplane opened as a daemon opens it,
//! never attached, and small helpers to set up its maps, run frames
//! through its programs and read what they counted.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use aya::maps::{HashMap, Map, MapData, MapError};
use aya::programs::{TestRun, TestRunOptions};
use neuwerk_abi::{self as abi, Reason};
use neuwerk_core::config::{ConntrackConfig, Forwarding};
use neuwerk_core::grants::{GrantBackend, GrantEntry};
use neuwerk_core::policy::{PortRange, PortSet, Proto};

use crate::addr::addr_bytes;
use crate::loader::{self, EventLimits};
use crate::{Dataplane, DataplaneConfig, NetStats};

use super::{DNS_LISTEN, POLICY};

/// A pin directory of one harness, removed on drop.
struct TempPins(PathBuf);

impl TempPins {
    fn new() -> TempPins {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(crate::pins::BPFFS_ROOT)
            .join(format!("nwscenario-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempPins(dir)
    }
}

impl Drop for TempPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one run of a program did.
#[derive(Debug)]
pub(crate) struct Run {
    /// The TC action returned.
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Reasons whose counters moved during the run, and by how much.
    pub moved: Vec<(Reason, u64)>,
}

impl Run {
    /// The one reason the packet was counted under; panics unless exactly
    /// one counter moved, by one.
    pub fn reason(&self) -> Reason {
        match self.moved.as_slice() {
            [(r, 1)] => *r,
            other => panic!("expected one reason counted once, got {other:?}"),
        }
    }

    /// Asserts the action and the reason counted.
    #[track_caller]
    pub fn check(&self, action: u32, reason: Reason) -> &Run {
        assert_eq!(
            (self.action, self.reason()),
            (action, reason),
            "verdict and reason (counters moved: {:?})",
            self.moved
        );
        self
    }
}

/// A dataplane loaded for scenarios, with the default [`POLICY`] or another.
pub(crate) struct Harness {
    dp: Dataplane,
    conntrack: HashMap<MapData, abi::CtKey, abi::CtValue>,
    /// Last, so the pins go after every handle on them.
    _pins: TempPins,
}

impl Harness {
    /// A dataplane under [`POLICY`].
    pub fn new() -> Harness {
        Harness::with_policy(POLICY)
    }

    /// A dataplane under [`POLICY`] that intercepts DNS (`dns.intercept`)
    /// to the listeners [`DNS_LISTEN`].
    pub fn intercepting() -> Harness {
        Harness::open(POLICY, true)
    }

    /// A dataplane under the policy of YAML text `policy`.
    pub fn with_policy(policy: &str) -> Harness {
        Harness::open(policy, false)
    }

    fn open(policy: &str, intercept: bool) -> Harness {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("the datapath scenarios need root (bpffs pins, BPF_PROG_TEST_RUN)");
        }
        let policy = neuwerk_core::policy::parse_policy(policy, "scenario policy")
            .unwrap_or_else(|e| panic!("{e}"));
        let pins = TempPins::new();
        let cfg = DataplaneConfig {
            // Only looked up: nothing is attached.
            ingress: "lo".into(),
            egress: "lo".into(),
            dns_listen: DNS_LISTEN.iter().map(|a| a.parse().unwrap()).collect(),
            dns_intercept: intercept,
            conntrack: ConntrackConfig::default(),
            forwarding: Forwarding::Kernel,
            pin_dir: pins.0.clone(),
        };
        let dp = Dataplane::open(&cfg, &EventLimits::default())
            .unwrap_or_else(|e| panic!("opening the dataplane: {e}"))
            .into_unattached();
        dp.apply_policy(&policy)
            .unwrap_or_else(|e| panic!("applying the policy: {e}"));
        let layout = crate::pins::layout_fingerprint(loader::object()).unwrap();
        let ct = MapData::from_pin(dp.pins().maps(layout).join("nw_conntrack"))
            .unwrap_or_else(|e| panic!("opening the pinned nw_conntrack: {e}"));
        let conntrack = HashMap::try_from(Map::LruHashMap(ct)).unwrap();
        Harness {
            dp,
            conntrack,
            _pins: pins,
        }
    }

    /// Runs `frame` through `nw_from_client`.
    pub fn client(&self, frame: &[u8]) -> Run {
        self.run(loader::PROG_FROM_CLIENT, frame)
    }

    /// Runs `frame` through `nw_from_upstream`.
    pub fn upstream(&self, frame: &[u8]) -> Run {
        self.run(loader::PROG_FROM_UPSTREAM, frame)
    }

    /// Runs `frame` through `nw_to_client` (what the node sends to clients).
    pub fn to_client(&self, frame: &[u8]) -> Run {
        self.run(loader::PROG_TO_CLIENT, frame)
    }

    fn run(&self, prog: &str, frame: &[u8]) -> Run {
        let before = self.dp.counters();
        // Room to spare: the kernel refuses an output buffer that is too small.
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .dp
            .classifier(prog)
            .unwrap_or_else(|| panic!("program {prog} not loaded"))
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap_or_else(|e| {
                let why = std::error::Error::source(&e).map(ToString::to_string);
                panic!(
                    "BPF_PROG_TEST_RUN of {prog} with a frame of {} bytes: {e} ({})",
                    frame.len(),
                    why.unwrap_or_default()
                )
            });
        out.truncate(result.data_size_out as usize);
        let moved = self
            .dp
            .counters()
            .into_iter()
            .zip(before)
            .filter(|((_, a), (_, b))| a != b)
            .map(|((r, a), (_, b))| (r, a - b))
            .collect();
        Run {
            action: result.return_value,
            frame: out,
            moved,
        }
    }

    /// Packets counted under `reason`, summed over CPUs.
    pub fn counter(&self, reason: Reason) -> u64 {
        let all = self.dp.counters();
        all.iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// The per-network counters of `network` (`None`: no network) and
    /// protocol class ("tcp", "udp", "icmp", "other").
    pub fn net_stats(&self, network: Option<&str>, proto: &str) -> NetStats {
        self.dp
            .net_stats()
            .into_iter()
            .find(|s| s.network.as_deref() == network && s.proto == proto)
            .unwrap_or_else(|| panic!("no counters for {network:?}/{proto}"))
    }

    /// The id of network `name`.
    pub fn net_id(&self, name: &str) -> u32 {
        let names = self.dp.net_names();
        (1..=names.max_id())
            .find(|&id| names.name(id).as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no network {name}"))
    }

    /// Grants `network` the ports `ports` of `addr` until `expires_ns`
    /// (CLOCK_MONOTONIC), written as the grant store writes it.
    pub fn grant(&self, network: &str, addr: &str, ports: &PortSet, expires_ns: u64) {
        let entry = GrantEntry {
            ports,
            expires_ns,
            hostname: "scenario.example",
        };
        self.dp
            .write(network, ip(addr), &[entry])
            .unwrap_or_else(|e| panic!("writing a grant: {e}"));
    }

    /// The tracked connection of `key`, if any.
    pub fn tracked(&self, key: &abi::CtKey) -> Option<abi::CtValue> {
        match self.conntrack.get(key, 0) {
            Ok(v) => Some(v),
            Err(MapError::KeyNotFound) => None,
            Err(e) => panic!("reading nw_conntrack: {e}"),
        }
    }

    /// Writes a tracked connection as the programs would have.
    pub fn track(&mut self, key: abi::CtKey, value: abi::CtValue) {
        self.conntrack
            .insert(key, value, 0)
            .unwrap_or_else(|e| panic!("writing nw_conntrack: {e}"));
    }

    /// How many connections are tracked.
    pub fn tracked_count(&self) -> usize {
        self.conntrack.keys().filter(Result::is_ok).count()
    }
}

/// The address of `text`.
pub(crate) fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|_| panic!("not an address: {text}"))
}

/// The conntrack key of a connection in its original direction.
pub(crate) fn ct_key(proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> abi::CtKey {
    abi::CtKey {
        saddr: addr_bytes(ip(src)),
        daddr: addr_bytes(ip(dst)),
        sport,
        dport,
        proto,
        reserved: [0; 3],
    }
}

/// TCP port `port`.
pub(crate) fn tcp_port(port: u16) -> PortSet {
    PortSet::new(vec![PortRange {
        proto: Proto::Tcp,
        lo: port,
        hi: port,
    }])
}

/// CLOCK_MONOTONIC now, the clock of grant deadlines and conntrack stamps.
pub(crate) fn now_ns() -> u64 {
    neuwerk_core::time::monotonic_ns()
}
