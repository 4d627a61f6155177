//! What the loader needs to know about the node's links: whether an
//! interface is a veth whose other end lives in another network namespace.
//! A packet routed out of such an interface can be handed to that end
//! directly (`bpf_redirect_peer`), skipping a transmit and a backlog queue;
//! the kernel drops it instead if the other end is in this namespace, so
//! the programs only do it for interfaces this check has cleared.

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::DataplaneError;

/// Whether interface `ifindex` is a veth whose peer is in another network
/// namespace (the link carries a peer namespace id only then).
pub fn has_foreign_veth_peer(ifindex: u32) -> Result<bool, DataplaneError> {
    let io = |source| DataplaneError::Io {
        what: "querying the interface over rtnetlink",
        source,
    };
    let link = get_link(ifindex).map_err(io)?;
    let mut veth = false;
    let mut foreign = false;
    for attr in &link.attributes {
        match attr {
            LinkAttribute::LinkInfo(infos) => {
                veth = infos.contains(&LinkInfo::Kind(InfoKind::Veth));
            }
            LinkAttribute::LinkNetNsId(_) => foreign = true,
            _ => {}
        }
    }
    Ok(veth && foreign)
}

/// One RTM_GETLINK request and its answer.
fn get_link(ifindex: u32) -> std::io::Result<LinkMessage> {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(msg)),
    );
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    let (answer, _) = socket.recv_from_full()?;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer)
        .map_err(|e| bad(e.to_string()))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Ok(link),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        other => Err(bad(format!("unexpected rtnetlink answer {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback is not a veth: never handed to a peer.
    #[test]
    fn loopback_has_no_peer() {
        assert!(!has_foreign_veth_peer(1).expect("lo exists"));
    }

    #[test]
    fn unknown_interface_is_an_error() {
        assert!(has_foreign_veth_peer(u32::MAX - 7).is_err());
    }

    /// A namespace made with `ip netns add`, deleted on drop.
    struct Ns(String);

    impl Ns {
        fn new(tag: &str) -> Ns {
            let name = format!("nwlink-{tag}-{}", std::process::id());
            ip(&["netns", "add", &name]);
            Ns(name)
        }

        /// Whether `iface`, seen from inside this namespace, has a peer
        /// elsewhere.
        fn probe(&self, iface: &str) -> bool {
            let path = format!("/var/run/netns/{}", self.0);
            let iface = std::ffi::CString::new(iface).unwrap();
            std::thread::spawn(move || {
                use std::os::fd::AsRawFd;
                let ns = std::fs::File::open(path).expect("namespace file");
                // SAFETY: a valid namespace fd; only this thread moves.
                assert_eq!(
                    unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                    0
                );
                // SAFETY: a valid NUL-terminated string.
                let index = unsafe { libc::if_nametoindex(iface.as_ptr()) };
                assert_ne!(index, 0, "interface missing");
                has_foreign_veth_peer(index).expect("rtnetlink query")
            })
            .join()
            .unwrap()
        }
    }

    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    fn ip(args: &[&str]) {
        let status = std::process::Command::new("ip").args(args).status();
        assert!(status.is_ok_and(|s| s.success()), "ip {args:?} failed");
    }

    /// Root only: a veth pair is handed off only once its ends are in
    /// different namespaces.
    #[test]
    fn a_veth_counts_only_with_its_peer_in_another_namespace() {
        // SAFETY: no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(root, "this test creates network namespaces: run it as root");
        let (a, b) = (Ns::new("a"), Ns::new("b"));
        ip(&[
            "-n", &a.0, "link", "add", "nwlp0", "type", "veth", "peer", "name", "nwlp1",
        ]);
        assert!(!a.probe("nwlp0"), "both ends in one namespace");
        ip(&["-n", &a.0, "link", "set", "nwlp1", "netns", &b.0]);
        assert!(a.probe("nwlp0"));
        assert!(b.probe("nwlp1"));
    }
}
