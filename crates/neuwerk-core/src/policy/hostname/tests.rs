use super::*;
use crate::policy::model::{PortRange, Proto};

fn ports(list: &[u16]) -> PortSet {
    PortSet::new(
        list.iter()
            .map(|&p| PortRange {
                proto: Proto::Any,
                lo: p,
                hi: p,
            })
            .collect(),
    )
}

fn pat(text: &str) -> HostPattern {
    HostPattern::parse(text).unwrap()
}

#[test]
fn parse_kinds_case_and_trailing_dot() {
    let cases = [
        ("example.com", PatternKind::Exact, "example.com"),
        ("Example.COM.", PatternKind::Exact, "example.com"),
        ("*.example.org", PatternKind::OneLabel, "example.org"),
        ("**.Example.net.", PatternKind::AnyDepth, "example.net"),
        (
            "_srv._tcp.example.com",
            PatternKind::Exact,
            "_srv._tcp.example.com",
        ),
        ("xn--bcher-kva.de", PatternKind::Exact, "xn--bcher-kva.de"),
        ("*.com", PatternKind::OneLabel, "com"),
        ("localhost", PatternKind::Exact, "localhost"),
        ("1.example.com", PatternKind::Exact, "1.example.com"),
    ];
    for (text, kind, suffix) in cases {
        let p = pat(text);
        assert_eq!((p.kind, p.suffix.as_str()), (kind, suffix), "{text}");
    }
    assert_eq!(pat("**.Example.net").to_string(), "**.example.net");
    assert_eq!(pat("*.a.b").to_string(), "*.a.b");
    assert_eq!(pat("a.b.").to_string(), "a.b");
}

#[test]
fn parse_errors() {
    let long_label = "a".repeat(64);
    let long_name = format!("{}.com", vec!["a".repeat(60); 5].join("."));
    let cases: Vec<(String, String)> = vec![
        ("".into(), "hostname is empty".into()),
        (".".into(), "hostname is empty".into()),
        ("*".into(), "`*` would allow every name; put a domain after it, e.g. `*.example.com`".into()),
        ("**.".into(), "`**.` would allow every name; put a domain after it, e.g. `**.example.com`".into()),
        ("192.0.2.1".into(), "`192.0.2.1` is an IP address, not a hostname; use `ip: 192.0.2.1`".into()),
        ("2001:db8::1".into(), "`2001:db8::1` is an IP address, not a hostname; use `ip: 2001:db8::1`".into()),
        ("10.0.0.0/8".into(), "`10.0.0.0/8` is an IP address, not a hostname; use `ip: 10.0.0.0/8`".into()),
        ("10.1.2".into(), "`10.1.2` is an IP address, not a hostname; use `ip: 10.1.2`".into()),
        ("a.*.example.com".into(), "`a.*.example.com`: `*` is only allowed as the whole first label, `*.` (one label) or `**.` (any depth)".into()),
        ("*foo.example.com".into(), "`*foo.example.com`: `*` is only allowed as the whole first label, `*.` (one label) or `**.` (any depth)".into()),
        ("***.example.com".into(), "`***.example.com`: `*` is only allowed as the whole first label, `*.` (one label) or `**.` (any depth)".into()),
        ("*.*.example.com".into(), "`*.*.example.com`: `*` is only allowed as the whole first label, `*.` (one label) or `**.` (any depth)".into()),
        ("a..example.com".into(), "`a..example.com` has an empty label".into()),
        (".example.com".into(), "`.example.com` has an empty label".into()),
        ("exa mple.com".into(), "`exa mple.com` contains ` `; labels may only have letters, digits, `-` and `_`".into()),
        ("exa/mple.com".into(), "`exa/mple.com` contains `/`; labels may only have letters, digits, `-` and `_`".into()),
        ("bücher.de".into(), "`bücher.de` is not ASCII; write internationalized names in their xn-- form".into()),
        (format!("{long_label}.com"), format!("label `{long_label}` is 64 characters long; the limit is 63")),
        (long_name.clone(), format!("hostname is {} characters long; the limit is 253", long_name.len())),
    ];
    for (text, want) in cases {
        assert_eq!(HostPattern::parse(&text), Err(want), "{text}");
    }
    // 253 characters exactly is fine.
    let max = format!("{}.{}", "a".repeat(63), vec!["b".repeat(63); 3].join("."));
    assert_eq!(max.len(), 255);
    assert!(HostPattern::parse(&max[2..]).is_ok());
}

/// (pattern, qname, matches)
const TABLE: &[(&str, &str, bool)] = &[
    ("example.com", "example.com", true),
    ("example.com", "EXAMPLE.com.", true),
    ("example.com", "www.example.com", false),
    ("example.com", "example.co", false),
    ("example.com", "xexample.com", false),
    ("*.example.org", "a.example.org", true),
    ("*.example.org", "A.Example.ORG.", true),
    ("*.example.org", "example.org", false),
    ("*.example.org", "a.b.example.org", false),
    ("*.example.org", ".example.org", false),
    ("*.example.org", "aexample.org", false),
    ("*.example.org", "a.example.org.evil", false),
    ("**.example.net", "a.example.net", true),
    ("**.example.net", "a.b.example.net", true),
    ("**.example.net", "x.y.z.EXAMPLE.NET.", true),
    ("**.example.net", "example.net", false),
    ("**.example.net", "example.net.", false),
    ("**.example.net", "badexample.net", false),
    ("**.example.net", ".example.net", false),
    ("**.example.net", "", false),
    ("*.com", "a.com", true),
    ("*.com", "a.b.com", false),
];

#[test]
fn matching_table() {
    for &(p, q, want) in TABLE {
        assert_eq!(pat(p).matches(q), want, "{p} vs {q}");
        let mut idx = HostIndex::default();
        idx.insert(&pat(p), &ports(&[443]));
        assert_eq!(
            idx.ports_for(q),
            want.then(|| ports(&[443])),
            "index {p} vs {q}"
        );
    }
}

#[test]
fn index_agrees_with_matches_on_odd_names() {
    let patterns = [
        "example.com",
        "*.example.com",
        "**.example.com",
        "*.b.example.com",
    ];
    let names = [
        "example.com",
        "a.example.com",
        "a.b.example.com",
        "b.example.com",
        "x.b.example.com",
        "..example.com",
        "a..example.com",
        ".a.example.com",
        "a.example.com..",
        ".",
        "..",
        "ünï.example.com",
        "A.B.EXAMPLE.COM",
        "example.com.example.com",
    ];
    for p in patterns {
        let mut idx = HostIndex::default();
        idx.insert(&pat(p), &ports(&[1]));
        for n in names {
            assert_eq!(
                idx.ports_for(n).is_some(),
                pat(p).matches(n),
                "{p} vs {n:?}"
            );
        }
    }
}

#[test]
fn union_of_every_matching_pattern() {
    let mut idx = HostIndex::default();
    idx.insert(&pat("api.example.com"), &ports(&[443]));
    idx.insert(&pat("API.example.com."), &ports(&[8443]));
    idx.insert(&pat("*.example.com"), &ports(&[80]));
    idx.insert(&pat("**.example.com"), &ports(&[22]));
    idx.insert(&pat("**.com"), &ports(&[53]));
    assert_eq!(
        idx.ports_for("Api.Example.Com."),
        Some(ports(&[22, 53, 80, 443, 8443]))
    );
    assert_eq!(idx.ports_for("www.example.com"), Some(ports(&[22, 53, 80])));
    assert_eq!(idx.ports_for("a.b.example.com"), Some(ports(&[22, 53])));
    assert_eq!(idx.ports_for("example.com"), Some(ports(&[53])));
    assert_eq!(idx.ports_for("example.org"), None);
    assert_eq!(idx.ports_for("com"), None);
}

#[test]
fn overlong_names_match_nothing() {
    let mut idx = HostIndex::default();
    idx.insert(&pat("**.com"), &PortSet::all());
    let long = format!("{}.com", "a".repeat(250));
    assert_eq!(long.len(), 254);
    assert_eq!(idx.ports_for(&long), None);
    assert_eq!(idx.ports_for(&long[1..]), Some(PortSet::all()));
    assert_eq!(
        idx.ports_for(&long[1..].to_ascii_uppercase()),
        Some(PortSet::all())
    );
}
