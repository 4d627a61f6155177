//! The standard test zone the mock DNS serves and the policy fixtures
//! (`fixtures/*.yaml`) are written against. Addresses are those the
//! upstream namespace hosts (see [`crate::topology`]).

use std::net::{IpAddr, Ipv4Addr};

use crate::dns_mock::{DnsMock, Failure, MockRecord};
use crate::topology::{DEST2_V4, DEST_V4, DEST_V6};

/// TTL of ordinary records (seconds): long enough never to expire in a test.
pub const LONG_TTL: u32 = 300;
/// TTL of `short.example.com` (seconds).
pub const SHORT_TTL: u32 = 2;
/// TTL of `medium.example.com` (seconds): long enough that the kernel map
/// entry it writes already allows another name on its address (over the
/// store's 5 s refresh margin), short enough to wait for in a test.
pub const MEDIUM_TTL: u32 = 8;
/// How many A records `big.example.com` has.
pub const BIG_RECORDS: u8 = 100;
/// Address of `new.example.com` (only allowed by `policy-updated.yaml`).
pub const NEW_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);

/// The i-th address (1-based) of `big.example.com`: 198.51.100.i.
pub fn big_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, i)
}

/// All addresses of `big.example.com`, in answer order.
pub fn big_addrs() -> Vec<IpAddr> {
    (1..=BIG_RECORDS).map(|i| IpAddr::V4(big_addr(i))).collect()
}

/// The standard records: `(owner, records)`.
///
/// | name | answer | used for |
/// |---|---|---|
/// | example.com | A 192.0.2.100 | exact rule |
/// | www.example.com, denied.example.com | A 192.0.2.101 | denied names (served, so a refusal is neuwerk's) |
/// | a.example.org, b.a.example.org, example.org | A 192.0.2.100 | `*.example.org` (one label / two labels / apex) |
/// | one.example.net, deep.x.y.example.net, example.net | A 192.0.2.101 | `**.example.net` |
/// | v6.example.com | AAAA 2001:db8::100 | IPv6 |
/// | dual.example.com | A 192.0.2.100, AAAA 2001:db8::100 | both families |
/// | alias.example.com | CNAME mid.cdn.test -> CNAME edge.cdn.test -> A 192.0.2.101 | CNAME chain (cdn.test is not allowed) |
/// | tcp.example.com | A 192.0.2.101 | DNS over TCP |
/// | echo.example.com | A 192.0.2.101 | UDP echo port 5353 |
/// | big.example.com | 100 x A 198.51.100.1-100, UDP truncated | truncation + TCP retry |
/// | short.example.com | A 192.0.2.101, TTL 2 | grant expiry |
/// | medium.example.com | A 192.0.2.101, TTL 8 | a map entry that lags the store |
/// | old.example.com | A 192.0.2.101 | removed by policy-updated |
/// | new.example.com | A 198.51.100.200 | added by policy-updated |
/// | fail.example.com | SERVFAIL | upstream failure |
/// | timeout.example.com | no answer | upstream timeout |
/// | *.wild.example.com | A 192.0.2.100 | mock wildcard owner |
pub fn standard_records() -> Vec<(&'static str, Vec<MockRecord>)> {
    let a = |ip: Ipv4Addr| vec![MockRecord::A(ip, LONG_TTL)];
    vec![
        ("example.com", a(DEST_V4)),
        ("www.example.com", a(DEST2_V4)),
        ("denied.example.com", a(DEST2_V4)),
        ("a.example.org", a(DEST_V4)),
        ("b.a.example.org", a(DEST_V4)),
        ("example.org", a(DEST_V4)),
        ("one.example.net", a(DEST2_V4)),
        ("deep.x.y.example.net", a(DEST2_V4)),
        ("example.net", a(DEST2_V4)),
        ("v6.example.com", vec![MockRecord::Aaaa(DEST_V6, LONG_TTL)]),
        (
            "dual.example.com",
            vec![
                MockRecord::A(DEST_V4, LONG_TTL),
                MockRecord::Aaaa(DEST_V6, LONG_TTL),
            ],
        ),
        (
            "alias.example.com",
            vec![MockRecord::Cname("mid.cdn.test".into(), LONG_TTL)],
        ),
        (
            "mid.cdn.test",
            vec![MockRecord::Cname("edge.cdn.test".into(), LONG_TTL)],
        ),
        ("edge.cdn.test", a(DEST2_V4)),
        ("tcp.example.com", a(DEST2_V4)),
        ("echo.example.com", a(DEST2_V4)),
        (
            "big.example.com",
            (1..=BIG_RECORDS)
                .map(|i| MockRecord::A(big_addr(i), LONG_TTL))
                .collect(),
        ),
        (
            "short.example.com",
            vec![MockRecord::A(DEST2_V4, SHORT_TTL)],
        ),
        (
            "medium.example.com",
            vec![MockRecord::A(DEST2_V4, MEDIUM_TTL)],
        ),
        ("old.example.com", a(DEST2_V4)),
        ("new.example.com", a(NEW_V4)),
        ("fail.example.com", a(DEST_V4)),
        ("timeout.example.com", a(DEST_V4)),
        ("*.wild.example.com", a(DEST_V4)),
    ]
}

/// Loads [`standard_records`] and the standard failure modes
/// (`big.example.com` truncated over UDP, `fail.example.com` SERVFAIL,
/// `timeout.example.com` never answered).
pub fn load_standard_zone(dns: &DnsMock) {
    for (name, records) in standard_records() {
        dns.set_records(name, records);
    }
    dns.set_failure(Some("big.example.com"), Failure::TruncateUdp);
    dns.set_failure(Some("fail.example.com"), Failure::ServFail);
    dns.set_failure(Some("timeout.example.com"), Failure::NoAnswer);
}
