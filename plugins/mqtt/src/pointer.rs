//! RFC 6901 JSON pointers, split and unescaped once at init.

use serde_json::Value;

/// A compiled JSON pointer; `""` is the whole document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: Box<str>,
    tokens: Vec<Box<str>>,
}

impl Pointer {
    /// Parses `""` or `/token/token...`, where `~0` is `~` and `~1` is `/`.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer { text: "".into(), tokens: Vec::new() });
        }
        let Some(body) = text.strip_prefix('/') else {
            return Err(format!("{text:?}: a JSON pointer is \"\" or starts with `/` (RFC 6901)"));
        };
        let tokens = body.split('/').map(unescape).collect::<Option<Vec<_>>>();
        tokens
            .map(|tokens| Pointer { text: text.into(), tokens })
            .ok_or_else(|| format!("{text:?}: `~` is followed by 0 or 1 in a JSON pointer (RFC 6901)"))
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pointer is the whole document.
    pub fn is_root(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The value the pointer designates in `doc`.
    pub fn resolve<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        let mut at = doc;
        for token in &self.tokens {
            at = match at {
                Value::Object(map) => map.get(&**token)?,
                Value::Array(items) => items.get(array_index(token)?)?,
                _ => return None,
            };
        }
        Some(at)
    }
}

fn unescape(token: &str) -> Option<Box<str>> {
    if !token.contains('~') {
        return Some(token.into());
    }
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        match c {
            '~' => match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    Some(out.into())
}

/// RFC 6901 array indexes: `0`, or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resolves_like_rfc_6901() {
        let doc = json!({"a/b": 1, "m~n": 2, "list": [10, 20], "deep": {"x": {"y": true}}});
        let get = |p: &str| Pointer::parse(p).unwrap().resolve(&doc).cloned();
        assert_eq!(get(""), Some(doc.clone()));
        assert_eq!(get("/a~1b"), Some(json!(1)));
        assert_eq!(get("/m~0n"), Some(json!(2)));
        assert_eq!(get("/list/1"), Some(json!(20)));
        assert_eq!(get("/list/01"), None);
        assert_eq!(get("/list/-"), None);
        assert_eq!(get("/deep/x/y"), Some(json!(true)));
        assert_eq!(get("/deep/x/y/z"), None);
        assert!(Pointer::parse("a").is_err());
        assert!(Pointer::parse("/a~2").is_err());
        assert_eq!(doc, serde_json::from_value::<Value>(doc.clone()).unwrap());
        assert_eq!(doc.pointer("/a~1b"), get("/a~1b").as_ref(), "agrees with serde_json");
    }
}
