//! Parsers for the scalar values of a policy: CIDRs, ports, protocols. Each
//! returns a message without position; the caller knows where the value is.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use crate::policy::model::Proto;

/// Parses `10.0.0.0/8`, `fd00::/64` or a bare address (a /32 or /128).
/// Host bits must be zero (the error suggests the network), and IPv4-mapped
/// IPv6 CIDRs become IPv4 ones, as addresses are matched after
/// [`crate::policy::model::canonical`].
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let (addr_text, len_text) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| match len_text {
        Some(_) => format!("invalid CIDR `{text}`: `{addr_text}` is not an IP address"),
        None => format!("`{text}` is not an IP address or CIDR"),
    })?;
    let (max, family) = match addr {
        IpAddr::V4(_) => (32, "IPv4"),
        IpAddr::V6(_) => (128, "IPv6"),
    };
    let len = match len_text {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max && l.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(format!(
                    "invalid CIDR `{text}`: prefix length `{l}` is not 0-{max} as {family} needs"
                ))
            }
        },
    };
    // Cannot fail: the length was checked against the family above.
    let net = IpNet::new(addr, len).map_err(|e| e.to_string())?;
    if net.network() != addr {
        return Err(format!(
            "`{text}` has host bits set; did you mean `{}`?",
            net.trunc()
        ));
    }
    Ok(unmap(net))
}

/// `::ffff:a.b.c.d/n` (n >= 96) -> `a.b.c.d/(n-96)`.
fn unmap(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (Some(v4), Some(len)) = (
            v6.network().to_ipv4_mapped(),
            v6.prefix_len().checked_sub(96),
        ) {
            if let Ok(v4net) = Ipv4Net::new(v4, len) {
                return IpNet::V4(v4net);
            }
        }
    }
    net
}

/// Parses a port entry, `443` or `8000-8100` (inclusive), into (lo, hi).
/// Port 0 is refused: it is no real destination, and 0..=65535 in the
/// model means "ports omitted".
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let Some((lo, hi)) = text.split_once('-') else {
        let p = port(text, text)?;
        return Ok((p, p));
    };
    let (lo, hi) = (port(lo.trim(), text)?, port(hi.trim(), text)?);
    if lo > hi {
        return Err(format!("port range `{text}` is reversed; write {hi}-{lo}"));
    }
    Ok((lo, hi))
}

fn port(text: &str, entry: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{entry}` is not a port; expected a number 1-65535 or a range like 8000-8100"
        ));
    }
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ if text == entry => Err(format!("port {text} is out of range; ports are 1-65535")),
        _ => Err(format!(
            "port {text} in `{entry}` is out of range; ports are 1-65535"
        )),
    }
}

/// Parses `tcp`, `udp` or `any` (any case).
pub fn parse_proto(text: &str) -> Result<Proto, String> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        "any" => Ok(Proto::Any),
        _ => Err(format!(
            "unknown protocol `{text}`; expected `tcp`, `udp` or `any`"
        )),
    }
}
