//! IP forwarding on the node: the programs forward what they pass only
//! through the kernel's FIB, and the packets they leave to the stack need
//! the stack to forward them, so both families' forwarding must be on.
//! With it off, DNS works and every allowed connection times out.

use std::path::Path;

use neuwerk_core::config::ForwardingSysctls;

/// The forwarding sysctls, by name and file. A family the kernel lacks
/// (IPv6 disabled) has no file and is skipped.
const SYSCTLS: [(&str, &str); 2] = [
    ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
    (
        "net.ipv6.conf.all.forwarding",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ),
];

/// The forwarding sysctls that are off (unreadable ones count as off).
pub fn forwarding_off() -> Vec<&'static str> {
    SYSCTLS
        .iter()
        .filter(|(_, file)| Path::new(file).exists())
        .filter(|(_, file)| std::fs::read_to_string(file).map_or(true, |v| v.trim() == "0"))
        .map(|&(name, _)| name)
        .collect()
}

/// At start: turns forwarding on where it is off (`set`), or refuses to
/// start naming the sysctl (`require`). Returns the sysctls it turned on.
pub fn ensure_forwarding(mode: ForwardingSysctls) -> Result<Vec<&'static str>, String> {
    let off = forwarding_off();
    if off.is_empty() {
        return Ok(off);
    }
    if mode == ForwardingSysctls::Require {
        return Err(format!(
            "IP forwarding is off ({} = 0) and dataplane.forwarding_sysctls is `require`: \
             turn it on (sysctl -w {}=1) or set forwarding_sysctls to `set`",
            off.join(", "),
            off[0]
        ));
    }
    for name in &off {
        let file = SYSCTLS
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| *f)
            .unwrap_or_default();
        std::fs::write(file, "1").map_err(|e| format!("cannot turn {name} on: {e}"))?;
    }
    Ok(off)
}
