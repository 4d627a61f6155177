//! The YAML front end shared by the config and policy parsers.
//!
//! Text becomes a small tree whose every node knows its line and column, so
//! each later check (unknown key, bad value, a duplicate across items) can
//! say where it is. serde-based YAML crates report positions only for errors
//! they raise themselves, never for values that parsed fine (a rule's
//! location, the first of two duplicate names).

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, ScanError, Span, StrInput, Tag};

use crate::policy::model::Location;

/// Nesting deeper than this is refused: neither file needs more than a
/// handful of levels, and the tree is built and dropped recursively.
const MAX_DEPTH: usize = 64;

/// How many nodes aliases may add beyond those written out, so that a few
/// lines of nested aliases ("billion laughs") cannot exhaust memory.
const ALIAS_ALLOWANCE: usize = 100_000;

/// A problem at a position; the caller adds the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error {
    pub loc: Location,
    pub msg: String,
}

impl Error {
    pub fn new(loc: Location, msg: impl Into<String>) -> Self {
        Error {
            loc,
            msg: msg.into(),
        }
    }
}

/// A YAML value with the position of its first character.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub loc: Location,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// An absent value (`key:`), `~` or `null`, unquoted.
    Null,
    /// Any other scalar, as written (numbers and booleans too: every value
    /// in these files is interpreted from its text).
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` pair of a mapping.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    pub key_loc: Location,
    pub value: Node,
}

/// Parses a single-document YAML text; an empty text is a `Null` at 1:1.
pub(crate) fn parse(text: &str) -> Result<Node, Error> {
    let mut b = Builder {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        nodes: 0,
        expanded: 0,
    };
    let start = Location { line: 1, column: 1 };
    b.next()?; // StreamStart
    let (ev, _) = b.next()?;
    if !matches!(ev, Event::DocumentStart(_)) {
        return Ok(Node {
            loc: start,
            value: Value::Null,
        });
    }
    let (ev, span) = b.next()?;
    let root = b.node(ev, span, 0)?;
    loop {
        let (ev, span) = b.next()?;
        match ev {
            Event::DocumentEnd => {}
            Event::StreamEnd => return Ok(root),
            _ => {
                return Err(Error::new(
                    loc(span.start),
                    "expected a single YAML document, found a second one",
                ))
            }
        }
    }
}

struct Builder<'a> {
    parser: Parser<'a, StrInput<'a>>,
    /// Anchored nodes and how many nodes each holds, for aliases.
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes written out so far.
    nodes: usize,
    /// Nodes added by aliases so far.
    expanded: usize,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), Error> {
        match self.parser.next_event() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => Err(scan_error(&e)),
            None => Err(Error::new(
                Location { line: 1, column: 1 },
                "unexpected end of YAML",
            )),
        }
    }

    fn node(&mut self, ev: Event<'a>, span: Span, depth: usize) -> Result<Node, Error> {
        let at = loc(span.start);
        if depth > MAX_DEPTH {
            return Err(Error::new(at, "nesting is too deep"));
        }
        let before = self.nodes + self.expanded;
        self.nodes += 1;
        let (anchor, node) = match ev {
            Event::Alias(id) => return self.alias(id, at),
            Event::Scalar(text, style, anchor, tag) => {
                check_tag(tag.as_deref(), at)?;
                let value = if style == ScalarStyle::Plain && tag.is_none() && is_null(&text) {
                    Value::Null
                } else {
                    Value::Scalar(text.into_owned())
                };
                (anchor, Node { loc: at, value })
            }
            Event::SequenceStart(anchor, tag) => {
                check_tag(tag.as_deref(), at)?;
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, span, depth + 1)?);
                }
                let value = Value::Seq(items);
                (anchor, Node { loc: at, value })
            }
            Event::MappingStart(anchor, tag) => {
                check_tag(tag.as_deref(), at)?;
                let value = Value::Map(self.mapping(depth)?);
                (anchor, Node { loc: at, value })
            }
            _ => return Err(Error::new(at, "unexpected YAML event")),
        };
        if anchor != 0 {
            // Its size counts what aliases inside it added, so that nesting
            // aliases of aliases is charged in full.
            let size = self.nodes + self.expanded - before;
            self.anchors.insert(anchor, (node.clone(), size));
        }
        Ok(node)
    }

    fn mapping(&mut self, depth: usize) -> Result<Vec<Entry>, Error> {
        let mut entries: Vec<Entry> = Vec::new();
        // Maps are tiny except by accident; a set only once they are not, so
        // duplicate-key checks stay linear overall.
        let mut seen: Option<HashSet<String>> = None;
        loop {
            let (ev, span) = self.next()?;
            if matches!(ev, Event::MappingEnd) {
                return Ok(entries);
            }
            let key_node = self.node(ev, span, depth + 1)?;
            let key = match key_node.value {
                Value::Scalar(s) => s,
                Value::Null => String::from("null"),
                _ => {
                    return Err(Error::new(
                        key_node.loc,
                        "mapping keys must be plain strings",
                    ))
                }
            };
            let dup = match &mut seen {
                Some(set) => !set.insert(key.clone()),
                None => entries.iter().any(|e| e.key == key),
            };
            if dup {
                return Err(Error::new(key_node.loc, format!("duplicate key `{key}`")));
            }
            if seen.is_none() && entries.len() >= 16 {
                seen = Some(
                    entries
                        .iter()
                        .map(|e| e.key.clone())
                        .chain([key.clone()])
                        .collect(),
                );
            }
            let (ev, span) = self.next()?;
            // An absent value (`key:`) has an empty span wherever the next
            // token is, often a later line; the key is the better place.
            let absent = span.start.index() == span.end.index();
            let mut value = self.node(ev, span, depth + 1)?;
            if absent && matches!(value.value, Value::Null) {
                value.loc = key_node.loc;
            }
            entries.push(Entry {
                key,
                key_loc: key_node.loc,
                value,
            });
        }
    }

    fn alias(&mut self, id: usize, at: Location) -> Result<Node, Error> {
        let Some((node, size)) = self.anchors.get(&id) else {
            return Err(Error::new(at, "alias to an unknown anchor"));
        };
        self.expanded += size;
        if self.expanded > self.nodes + ALIAS_ALLOWANCE {
            return Err(Error::new(at, "aliases expand to too many values"));
        }
        Ok(node.clone())
    }
}

fn loc(m: Marker) -> Location {
    // saphyr's columns are 0-based; editors and compilers count from 1.
    Location {
        line: m.line(),
        column: m.col() + 1,
    }
}

fn scan_error(e: &ScanError) -> Error {
    Error::new(loc(*e.marker()), format!("YAML syntax error: {}", e.info()))
}

/// Core-schema tags (`!!str` ...) change nothing here; others mean something
/// this parser would silently ignore, so they are refused.
fn check_tag(tag: Option<&Tag>, at: Location) -> Result<(), Error> {
    match tag {
        Some(t) if !t.is_yaml_core_schema() => {
            Err(Error::new(at, format!("unsupported YAML tag `{t}`")))
        }
        _ => Ok(()),
    }
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// The keys of a mapping node, checked against the keys a section allows.
pub(crate) struct Fields<'a> {
    pub loc: Location,
    entries: &'a [Entry],
}

impl<'a> Fields<'a> {
    /// The entry for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// The entry for `key`, or an error at the mapping naming `what` it is.
    pub fn required(&self, key: &str, what: &str) -> Result<&'a Entry, Error> {
        self.get(key)
            .ok_or_else(|| Error::new(self.loc, format!("{what} needs `{key}`")))
    }
}

impl Node {
    /// What this node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "nothing".into(),
            Value::Scalar(s) => format!("`{s}`"),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }

    /// An error at this node: "expected {what}, found ...".
    pub fn expected(&self, what: &str) -> Error {
        Error::new(
            self.loc,
            format!("expected {what}, found {}", self.describe()),
        )
    }

    /// The mapping's entries, with unknown keys refused; `Null` is an empty
    /// mapping so that an empty section means "all defaults".
    pub fn fields(&self, what: &str, allowed: &[&str]) -> Result<Fields<'_>, Error> {
        let entries: &[Entry] = match &self.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            _ => return Err(self.expected(what)),
        };
        for e in entries {
            if !allowed.contains(&e.key.as_str()) {
                return Err(Error::new(e.key_loc, unknown_key(&e.key, what, allowed)));
            }
        }
        Ok(Fields {
            loc: self.loc,
            entries,
        })
    }

    /// A scalar's text.
    pub fn str(&self, what: &str) -> Result<&str, Error> {
        match &self.value {
            Value::Scalar(s) => Ok(s),
            _ => Err(self.expected(what)),
        }
    }

    /// A scalar's text passed through `parse`; its error gets this position.
    pub fn parse_with<T>(
        &self,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, Error> {
        parse(self.str(what)?).map_err(|msg| Error::new(self.loc, msg))
    }

    /// A list's items.
    pub fn seq(&self, what: &str) -> Result<&[Node], Error> {
        match &self.value {
            Value::Seq(items) => Ok(items),
            _ => Err(self.expected(what)),
        }
    }
}

fn unknown_key(key: &str, what: &str, allowed: &[&str]) -> String {
    let list = allowed
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let close = allowed
        .iter()
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min();
    match close {
        Some((_, k)) => format!("unknown key `{key}` in {what}; did you mean `{k}`?"),
        None => format!("unknown key `{key}` in {what}; expected one of {list}"),
    }
}

/// Levenshtein distance, for "did you mean" on misspelt keys (short strings).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Location {
        Location { line, column }
    }

    #[test]
    fn positions_are_one_based_and_point_at_values() {
        let root = parse("a: 1\nlist:\n  - x: \"q\"\n    y: [3, 4]\n").unwrap();
        let f = root.fields("root", &["a", "list"]).unwrap();
        assert_eq!(f.get("a").unwrap().key_loc, at(1, 1));
        assert_eq!(f.get("a").unwrap().value.loc, at(1, 4));
        let items = f.get("list").unwrap().value.seq("list").unwrap();
        assert_eq!(items[0].loc, at(3, 5));
        let g = items[0].fields("item", &["x", "y"]).unwrap();
        assert_eq!(g.get("x").unwrap().value.loc, at(3, 8));
        let ys = g.get("y").unwrap().value.seq("y").unwrap();
        assert_eq!((ys[0].loc, ys[1].loc), (at(4, 9), at(4, 12)));
    }

    #[test]
    fn nulls_and_quoted_nulls() {
        let root = parse("a:\nb: ~\nc: \"null\"\nd: ''\n").unwrap();
        let f = root.fields("root", &["a", "b", "c", "d"]).unwrap();
        assert!(matches!(f.get("a").unwrap().value.value, Value::Null));
        assert!(matches!(f.get("b").unwrap().value.value, Value::Null));
        assert_eq!(f.get("c").unwrap().value.str("c").unwrap(), "null");
        assert_eq!(f.get("d").unwrap().value.str("d").unwrap(), "");
        assert!(matches!(parse("").unwrap().value, Value::Null));
        assert!(matches!(
            parse("# only a comment\n").unwrap().value,
            Value::Null
        ));
    }

    #[test]
    fn structural_errors() {
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!((e.loc, e.msg.as_str()), (at(2, 1), "duplicate key `a`"));
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.loc, at(2, 1));
        let e = parse("a: [1, 2\n").unwrap_err();
        assert!(e.msg.starts_with("YAML syntax error"), "{e:?}");
        let e = parse("a: !custom x\n").unwrap_err();
        assert_eq!(
            (e.loc, e.msg.as_str()),
            (at(1, 4), "unsupported YAML tag `!custom`")
        );
        let e = parse("[1]: x\n").unwrap_err();
        assert_eq!(e.msg, "mapping keys must be plain strings");
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(parse(&deep).unwrap_err().msg, "nesting is too deep");
    }

    #[test]
    fn aliases_expand_within_limits() {
        let root = parse("a: &p [80, 443]\nb: *p\n").unwrap();
        let f = root.fields("root", &["a", "b"]).unwrap();
        assert_eq!(f.get("b").unwrap().value.seq("b").unwrap().len(), 2);
        let mut laughs = String::from("a: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            laughs += &format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n");
        }
        assert_eq!(
            parse(&laughs).unwrap_err().msg,
            "aliases expand to too many values"
        );
    }

    #[test]
    fn unknown_keys_suggest_close_ones() {
        let root = parse("port: 1\n").unwrap();
        let e = root.fields("a rule", &["ports", "protocol"]).err().unwrap();
        assert_eq!(e.msg, "unknown key `port` in a rule; did you mean `ports`?");
        let root = parse("zzz: 1\n").unwrap();
        let e = root.fields("a rule", &["ports", "ip"]).err().unwrap();
        assert_eq!(
            e.msg,
            "unknown key `zzz` in a rule; expected one of `ports`, `ip`"
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
