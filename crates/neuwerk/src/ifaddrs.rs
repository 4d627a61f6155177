//! The node's own addresses, as its interfaces have them at start: an
//! answer naming one of them must not open the node to a client network.

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPv4 and IPv6 addresses of the interfaces called `names`, sorted,
/// each once. An interface without addresses, or absent, adds none.
pub fn interface_addrs(names: &[&str]) -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below, once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut node = head;
    while !node.is_null() {
        // SAFETY: `node` is an entry of the list, which lives until freed.
        let ifa = unsafe { &*node };
        node = ifa.ifa_next;
        if ifa.ifa_name.is_null() || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: a non-null `ifa_name` is a NUL-terminated string of the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_bytes();
        if !names.iter().any(|n| n.as_bytes() == name) {
            continue;
        }
        // SAFETY: a non-null `ifa_addr` is a sockaddr of the list, typed
        // by its family.
        if let Some(ip) = unsafe { ip_of(ifa.ifa_addr) } {
            out.push(ip);
        }
    }
    // SAFETY: `head` came from getifaddrs and is not used after this.
    unsafe { libc::freeifaddrs(head) };
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The address in `sa`, if it is IPv4 or IPv6.
///
/// # Safety
/// `sa` points to a valid sockaddr whose family matches its real type.
unsafe fn ip_of(sa: *const libc::sockaddr) -> Option<IpAddr> {
    // SAFETY: the caller guarantees `sa` is valid, and the family says
    // which larger struct it is.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = &*sa.cast::<libc::sockaddr_in>();
                Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into())
            }
            libc::AF_INET6 => {
                let sin6 = &*sa.cast::<libc::sockaddr_in6>();
                Some(Ipv6Addr::from(sin6.sin6_addr.s6_addr).into())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_its_address_and_unknown_interfaces_none() {
        let lo = interface_addrs(&["lo"]).unwrap();
        assert!(lo.contains(&IpAddr::from([127, 0, 0, 1])), "{lo:?}");
        assert!(lo.iter().all(IpAddr::is_loopback), "{lo:?}");
        assert!(interface_addrs(&["no-such-if0"]).unwrap().is_empty());
    }
}
