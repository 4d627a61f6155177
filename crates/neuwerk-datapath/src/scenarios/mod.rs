//! Datapath scenarios, in the manner of Cilium's `bpf/tests`: the object's
//! real programs run through BPF_PROG_TEST_RUN against real maps. Each file
//! is one scenario group: set up the maps (a policy, grants, tracked
//! connections), run a crafted frame ([`frame`]) through `nw_from_client`,
//! `nw_from_upstream` or `nw_to_client`, then check the verdict, the reason counted and
//! the maps.
//!
//! The dataplane is opened as a daemon opens it ([`crate::Dataplane::open`], maps
//! pinned under a directory of the harness's own in /sys/fs/bpf, removed on
//! drop) and given its policy as a reload would, but nothing is attached:
//! no interface or namespace is needed. Forwarding is `kernel`, so a passed
//! packet is TC_ACT_OK and no FIB lookup runs. These tests need root;
//! without it they fail, saying so.

mod flows;
mod frame;
mod harness;
mod wire;

mod dns_intercept;
mod fragments;
mod grant_expired;
mod icmp_kinds;
mod icmp_ping_errors;
mod icmp_rate;
mod icmp_related_error;
mod icmp_size;
mod icmp_tunnel;
mod ipv6_ext_headers;
mod malformed;
mod tracked_flow;
mod untracked_flow;

pub(crate) use harness::{ct_key, ip, now_ns, tcp_port, Harness, Run};

/// The node's DNS listeners in every scenario: traffic to them passes as
/// local DNS, and [`Harness::intercepting`] sends other DNS to them.
pub(crate) const DNS_LISTEN: [&str; 2] = ["10.100.1.10:53", "[fd00:100:1::10]:53"];

/// The TC action of a passed packet.
pub(crate) const TC_ACT_OK: u32 = 0;
/// The TC action of a dropped packet.
pub(crate) const TC_ACT_SHOT: u32 = 2;

/// The policy the scenarios run under: one client network, static rules
/// for a TCP service, a UDP service and a host that may be pinged; the
/// addresses are those of [`flows`].
pub(crate) const POLICY: &str = r#"
networks:
  - name: clients
    cidrs: [10.100.1.0/24, "fd00:100:1::/64"]
    policies:
      - ip: 203.0.113.10
        ports: [443]
        protocol: tcp
      - ip: 203.0.113.5
        ports: [53000]
        protocol: udp
      - ip: "2001:db8::100"
        ports: [443]
        protocol: tcp
      - ip: "2001:db8::100"
        ports: [53000]
        protocol: udp
      - ip: 192.0.2.1
      - ip: "2001:db8::1"
"#;
