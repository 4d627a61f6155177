//! Assertions shared by the suites, with messages that say what was
//! expected and what happened.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::client::{Host, HttpConn, ALLOWED, BLOCKED};
use crate::dns_client::{rcode, DnsOpts};

/// `SocketAddr` from an address of either family and a port.
pub fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// Asserts that `GET http://addr/` from `host` answers `ok <port>`.
#[track_caller]
pub fn assert_http_ok(host: Host<'_>, addr: SocketAddr) {
    match host.http_get(addr, ALLOWED) {
        Ok(body) => assert_eq!(body, format!("ok {}", addr.port()), "GET {addr}"),
        Err(e) => panic!(
            "expected {addr} to be reachable from {}: {e:#}",
            host.ns().name()
        ),
    }
}

/// Asserts that a TCP connection from `host` to `addr` does not complete
/// within [`BLOCKED`].
#[track_caller]
pub fn assert_tcp_blocked(host: Host<'_>, addr: SocketAddr) {
    if host.tcp_connect(addr, BLOCKED).is_ok() {
        panic!("expected TCP to {addr} to be blocked, but it connected");
    }
}

/// `GET /` on the open keep-alive connection `conn`; asserts that the
/// mock answers `ok <port>`, saying `what` otherwise.
#[track_caller]
pub fn assert_exchange(conn: &mut HttpConn, what: &str) {
    let port = conn.peer().port();
    match conn.get(ALLOWED) {
        Ok(body) => assert_eq!(body, format!("ok {port}"), "{what}"),
        Err(e) => panic!(
            "{what}: the open connection to {} failed: {e:#}",
            conn.peer()
        ),
    }
}

/// Asserts that `GET /` on the open connection `conn` gets no answer
/// within [`BLOCKED`] (the firewall cut it), saying `what` otherwise. The
/// connection is of no further use.
#[track_caller]
pub fn assert_exchange_fails(conn: &mut HttpConn, what: &str) {
    if let Ok(body) = conn.get(BLOCKED) {
        panic!(
            "{what}: the open connection to {} still exchanges data (got {body:?})",
            conn.peer()
        );
    }
}

/// Asserts that the UDP echo server at `addr` answers `host`.
#[track_caller]
pub fn assert_udp_ok(host: Host<'_>, addr: SocketAddr) {
    match host.udp_echo(addr, b"neuwerk-echo", ALLOWED) {
        Ok(reply) => assert_eq!(reply, b"neuwerk-echo", "echo from {addr}"),
        Err(e) => panic!("expected UDP to {addr} to pass: {e:#}"),
    }
}

/// Asserts that no UDP echo from `addr` reaches `host` within [`BLOCKED`].
#[track_caller]
pub fn assert_udp_blocked(host: Host<'_>, addr: SocketAddr) {
    if let Ok(reply) = host.udp_echo(addr, b"neuwerk-echo", BLOCKED) {
        panic!(
            "expected UDP to {addr} to be blocked, got {} bytes back",
            reply.len()
        );
    }
}

/// Queries `name` (type `rtype`) at `server` and asserts the rcode.
#[track_caller]
pub fn assert_rcode(
    host: Host<'_>,
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    expected: ResponseCode,
) -> Message {
    let msg = host
        .dns_query(server, name, rtype, DnsOpts::udp())
        .unwrap_or_else(|e| panic!("no DNS answer for {name}: {e:#}"));
    assert_eq!(
        rcode(&msg),
        expected,
        "rcode for {name} {rtype} via {server}: {msg:?}"
    );
    msg
}

/// Asserts that `name` resolves (A) via `server` to exactly `expected`.
#[track_caller]
pub fn assert_resolves(host: Host<'_>, server: SocketAddr, name: &str, expected: &[IpAddr]) {
    let got = host
        .resolve(server, name)
        .unwrap_or_else(|e| panic!("{name} via {server}: {e:#}"));
    assert_eq!(got, expected, "addresses of {name}");
}

/// Whether `text` contains `<file>:<line>:<column>` (column any number;
/// line any number when `line` is `None`).
pub fn has_location(text: &str, file: &str, line: Option<usize>) -> bool {
    let prefix = format!("{file}:");
    text.match_indices(&prefix).any(|(i, _)| {
        let rest = &text[i + prefix.len()..];
        let mut parts = rest.splitn(3, ':');
        let (Some(l), Some(c)) = (parts.next(), parts.next()) else {
            return false;
        };
        let col_digits = c.chars().take_while(char::is_ascii_digit).count();
        let line_ok = match line {
            Some(n) => l == n.to_string(),
            None => !l.is_empty() && l.chars().all(|ch| ch.is_ascii_digit()),
        };
        line_ok && col_digits > 0
    })
}

#[cfg(test)]
mod tests {
    use super::has_location;

    #[test]
    fn location_matching() {
        let t = "error: /tmp/p.yaml:8:13: bad address";
        assert!(has_location(t, "/tmp/p.yaml", Some(8)));
        assert!(has_location(t, "/tmp/p.yaml", None));
        assert!(!has_location(t, "/tmp/p.yaml", Some(9)));
        assert!(!has_location(
            "/tmp/p.yaml: no such file",
            "/tmp/p.yaml",
            None
        ));
    }
}
