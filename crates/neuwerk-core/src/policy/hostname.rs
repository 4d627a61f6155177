//! Hostname patterns (`example.com`, `*.example.org`, `**.example.net`) and
//! the per-network index that matches a query name against all of them in
//! O(labels) lookups.

use std::collections::HashMap;

use super::model::PortSet;

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

/// Index over a network's hostname rules: per pattern kind, suffix -> the
/// union of the ports of the rules with that pattern.
#[derive(Debug, Clone, Default)]
pub struct HostIndex {
    exact: HashMap<String, PortSet>,
    one_label: HashMap<String, PortSet>,
    any_depth: HashMap<String, PortSet>,
}

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

    /// The union of the ports of every pattern matching `qname`.
    pub fn ports_for(&self, _qname: &str) -> Option<PortSet> {
        unimplemented!("hostname matching")
    }
}
