//! Hostname patterns (`example.com`, `*.example.org`, `**.example.net`) and
//! the per-network index that matches a query name against all of them in
//! O(labels) lookups.

use std::collections::HashMap;
use std::fmt;

use foldhash::fast::RandomState;
use std::net::IpAddr;

use ipnet::IpNet;

use super::model::PortSet;

/// The longest name (without trailing dot) DNS can carry; nothing longer can
/// match a pattern, and it bounds the stack buffer used for lowercasing.
const MAX_NAME: usize = 253;

/// How a pattern matches names below its suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatternKind {
    /// `example.com`: that name only.
    Exact,
    /// `*.example.org`: exactly one label below the suffix, not the apex.
    OneLabel,
    /// `**.example.net`: one or more labels below the suffix, not the apex.
    AnyDepth,
}

/// A parsed hostname pattern; `suffix` is lowercase without trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    pub kind: PatternKind,
    pub suffix: String,
}

impl HostPattern {
    /// Parses `example.com`, `*.example.org` or `**.example.net` (any case,
    /// trailing dot ignored); the error says what is wrong, for the policy
    /// parser to place.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let name = text.strip_suffix('.').unwrap_or(text);
        if name.is_empty() {
            return Err("hostname is empty".into());
        }
        if name == "*" || name == "**" {
            return Err(format!(
                "`{text}` would allow every name; put a domain after it, e.g. `{name}.example.com`"
            ));
        }
        if looks_like_ip(name) {
            return Err(format!(
                "`{text}` is an IP address, not a hostname; use `ip: {text}`"
            ));
        }
        let (kind, suffix) = if let Some(rest) = name.strip_prefix("**.") {
            (PatternKind::AnyDepth, rest)
        } else if let Some(rest) = name.strip_prefix("*.") {
            (PatternKind::OneLabel, rest)
        } else {
            (PatternKind::Exact, name)
        };
        if suffix.contains('*') {
            return Err(format!(
                "`{text}`: `*` is only allowed as the whole first label, \
                 `*.` (one label) or `**.` (any depth)"
            ));
        }
        if !name.is_ascii() {
            return Err(format!(
                "`{text}` is not ASCII; write internationalized names in their xn-- form"
            ));
        }
        if name.len() > MAX_NAME {
            return Err(format!(
                "hostname is {} characters long; the limit is {MAX_NAME}",
                name.len()
            ));
        }
        for label in suffix.split('.') {
            if label.is_empty() {
                return Err(format!("`{text}` has an empty label"));
            }
            if label.len() > 63 {
                return Err(format!(
                    "label `{label}` is {} characters long; the limit is 63",
                    label.len()
                ));
            }
            if let Some(c) = label
                .chars()
                .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            {
                return Err(format!(
                    "`{text}` contains `{c}`; labels may only have letters, digits, `-` and `_`"
                ));
            }
        }
        Ok(HostPattern {
            kind,
            suffix: suffix.to_ascii_lowercase(),
        })
    }

    /// Whether `qname` (any case, trailing dot ignored) matches.
    pub fn matches(&self, qname: &str) -> bool {
        let q = qname.strip_suffix('.').unwrap_or(qname).as_bytes();
        let suffix = self.suffix.as_bytes();
        if self.kind == PatternKind::Exact {
            return q.eq_ignore_ascii_case(suffix);
        }
        // `prefix` + `.` + suffix, with a non-empty prefix.
        let Some(prefix_len) = q.len().checked_sub(suffix.len() + 1).filter(|&n| n > 0) else {
            return false;
        };
        let (prefix, rest) = q.split_at(prefix_len);
        if rest[0] != b'.' || !rest[1..].eq_ignore_ascii_case(suffix) {
            return false;
        }
        self.kind == PatternKind::AnyDepth || !prefix.contains(&b'.')
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wildcard = match self.kind {
            PatternKind::Exact => "",
            PatternKind::OneLabel => "*.",
            PatternKind::AnyDepth => "**.",
        };
        write!(f, "{wildcard}{}", self.suffix)
    }
}

/// Addresses, CIDRs and names whose last label is all digits (`10.1.2`)
/// belong in `ip:`; no top-level domain is numeric.
fn looks_like_ip(name: &str) -> bool {
    name.parse::<IpAddr>().is_ok()
        || name.parse::<IpNet>().is_ok()
        || name
            .rsplit('.')
            .next()
            .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
}

/// Index over a network's hostname rules: per pattern kind, suffix -> the
/// union of the ports of the rules with that pattern.
///
/// Seeded foldhash rather than SipHash: every query is hashed once per
/// label, and the keys are the policy's, so a client choosing names can't
/// grow a bucket.
#[derive(Debug, Clone, Default)]
pub struct HostIndex {
    exact: Suffixes,
    one_label: Suffixes,
    any_depth: Suffixes,
}

type Suffixes = HashMap<String, PortSet, RandomState>;

impl HostIndex {
    /// Adds a pattern with its ports (union with ports already there).
    pub fn insert(&mut self, pattern: &HostPattern, ports: &PortSet) {
        let map = match pattern.kind {
            PatternKind::Exact => &mut self.exact,
            PatternKind::OneLabel => &mut self.one_label,
            PatternKind::AnyDepth => &mut self.any_depth,
        };
        map.entry(pattern.suffix.clone())
            .and_modify(|p| *p = p.union(ports))
            .or_insert_with(|| ports.clone());
    }

    /// The union of the ports of every pattern matching `qname` (any case,
    /// trailing dot ignored), `None` if none does. One hash lookup per label;
    /// allocates only for the result, and unions only when several match.
    pub fn ports_for(&self, qname: &str) -> Option<PortSet> {
        let q = qname.strip_suffix('.').unwrap_or(qname);
        if q.is_empty() || q.len() > MAX_NAME {
            return None;
        }
        let mut buf = [0u8; MAX_NAME];
        let name = if q.bytes().any(|b| b.is_ascii_uppercase()) {
            let lower = &mut buf[..q.len()];
            lower.copy_from_slice(q.as_bytes());
            lower.make_ascii_lowercase();
            // ASCII lowercasing keeps UTF-8 valid, so this cannot fail.
            std::str::from_utf8(lower).ok()?
        } else {
            q
        };
        self.lookup(name)
    }

    /// `ports_for` on a name already lowercase without trailing dot.
    fn lookup(&self, name: &str) -> Option<PortSet> {
        let mut found = Found::default();
        if let Some(p) = self.exact.get(name) {
            found.add(p);
        }
        if self.one_label.is_empty() && self.any_depth.is_empty() {
            return found.finish();
        }
        // Each dot (but a leading one: the part below the suffix must not be
        // empty) splits the name into `below.suffix`; only the first dot
        // leaves exactly one label below.
        if let Some(i) = name.find('.').filter(|&i| i > 0) {
            if let Some(p) = self.one_label.get(&name[i + 1..]) {
                found.add(p);
            }
        }
        if !self.any_depth.is_empty() {
            for (i, _) in name.match_indices('.').filter(|&(i, _)| i > 0) {
                if let Some(p) = self.any_depth.get(&name[i + 1..]) {
                    found.add(p);
                }
            }
        }
        found.finish()
    }
}

/// Ports of the patterns matched so far: borrowed while only one matched.
#[derive(Default)]
struct Found<'a> {
    first: Option<&'a PortSet>,
    merged: Option<PortSet>,
}

impl<'a> Found<'a> {
    fn add(&mut self, ports: &'a PortSet) {
        match (&mut self.merged, self.first) {
            (Some(merged), _) => *merged = merged.union(ports),
            (None, Some(first)) => self.merged = Some(first.union(ports)),
            (None, None) => self.first = Some(ports),
        }
    }

    fn finish(self) -> Option<PortSet> {
        self.merged.or_else(|| self.first.cloned())
    }
}

#[cfg(test)]
mod tests;
