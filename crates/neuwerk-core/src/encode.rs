//! Small text encodings shared by the crates that build URLs.

/// `s` with everything but RFC 3986 unreserved characters percent-encoded
/// (query values, the password of a NATS route URL). Written here: a few
/// lines, where a URL crate would be a dependency for one call.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_unreserved_characters_stay() {
        assert_eq!(
            super::percent_encode("a-Z_0.~ /%@\"é"),
            "a-Z_0.~%20%2F%25%40%22%C3%A9"
        );
    }
}
