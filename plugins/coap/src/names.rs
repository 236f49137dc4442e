//! Hub names and the small text helpers the mapping needs.

/// Whether `name` is a valid hub name: 1–128 bytes of `A-Z a-z 0-9 . - _`, starting with a letter, a digit or
/// `_` (the hub's own rule; checked here so a bad name is skipped with a warning instead of failing a batch).
pub fn is_valid(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Splits a provider/service/resource name into its three parts, each valid.
pub fn triple(parts: &[&str]) -> Result<(String, String, String), String> {
    match parts {
        [p, s, r] => {
            for part in [p, s, r] {
                if !is_valid(part) {
                    return Err(format!("{part:?} is not a valid name (A-Z a-z 0-9 . - _, 1 to 128 bytes)"));
                }
            }
            Ok(((*p).to_owned(), (*s).to_owned(), (*r).to_owned()))
        }
        _ => Err(format!("{:?} is not provider/service/resource", parts.join("/"))),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for values put into a URI.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A device URI as the hub's CoAP transport addresses it and plugin grants name it: without the scheme,
/// `//host:port/path`. `coap://host/path` gets the default port 5683 so both spellings compare equal.
pub fn address_of(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("coap:").unwrap_or(uri).strip_prefix("//")?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
    Some(if has_port { format!("//{authority}{path}") } else { format!("//{authority}:5683{path}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "_x", "noise-12", "lamp.3", &"a".repeat(128)] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "é", &"a".repeat(129)] {
            assert!(!is_valid(bad), "{bad}");
        }
        assert!(triple(&["p", "s", "r"]).is_ok());
        assert!(triple(&["p", "s"]).is_err());
        assert!(triple(&["p", "s", "r!"]).is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(address_of("coap://10.0.0.7/t").as_deref(), Some("//10.0.0.7:5683/t"));
        assert_eq!(address_of("coap://10.0.0.7:6000/a/b?x=1").as_deref(), Some("//10.0.0.7:6000/a/b?x=1"));
        assert_eq!(address_of("//[::1]/t").as_deref(), Some("//[::1]:5683/t"));
        assert_eq!(address_of("//[::1]:7/t").as_deref(), Some("//[::1]:7/t"));
        assert_eq!(address_of("coap://h").as_deref(), Some("//h:5683/"));
        assert_eq!(address_of("/up/x"), None);
        assert_eq!(address_of("coap:///x"), None);
        assert_eq!(percent_encode("a b/ü"), "a%20b%2F%C3%BC");
    }
}
