//! Hub names made from XMPP names, node globs, and the text helpers the mapping needs.
//!
//! SOX device names and transducer ids are free text (spaces, Japanese, `/`, ...); hub names are 1–128 bytes of
//! `A-Z a-z 0-9 . - _` starting with a letter, a digit or `_`. [`safe`] keeps a valid name as it is and turns
//! any other into a valid one that still tells distinct originals apart.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The longest hub name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// The bytes [`safe`] appends to a name it changed: `-` and 8 hex digits.
const SUFFIX_BYTES: usize = 9;

/// Whether `name` is a valid hub name: 1–128 bytes of `A-Z a-z 0-9 . - _`, starting with a letter, a digit or
/// `_` (the hub's own rule; checked here so a bad name is skipped with a warning instead of failing a batch).
pub fn is_valid(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && name.bytes().all(is_name_byte)
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

/// `original` as a hub name.
///
/// A valid name is kept as it is (borrowed, no allocation). Otherwise the safe ASCII characters are kept, each
/// run of other characters becomes one `_` (as does a leading `.` or `-`), the result is cut to leave room,
/// and `-` plus the 8 hex digits of the FNV-1a 32-bit hash of the original's bytes is appended: so
/// `藤沢 truck/12` becomes `_truck_12-xxxxxxxx`, and two originals that differ only in what was replaced or
/// cut still get distinct names.
pub fn safe(original: &str) -> Cow<'_, str> {
    if is_valid(original) {
        return Cow::Borrowed(original);
    }
    let room = MAX_NAME_BYTES - SUFFIX_BYTES;
    let mut name = String::with_capacity(original.len().min(room) + SUFFIX_BYTES);
    let mut replacing = false;
    for c in original.chars() {
        if name.len() >= room {
            break;
        }
        let keep = c.is_ascii() && is_name_byte(c as u8) && !(name.is_empty() && matches!(c, '.' | '-'));
        if keep {
            name.push(c);
            replacing = false;
        } else if !replacing {
            name.push('_');
            replacing = true;
        }
    }
    if name.is_empty() {
        name.push('_');
    }
    let _ = write!(name, "-{:08x}", fnv1a32(original.as_bytes()));
    Cow::Owned(name)
}

/// The FNV-1a 32-bit hash: small, stable across builds and platforms, good enough to tell names apart.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, &b| (hash ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The FNV-1a 64-bit hash, for fingerprints of payloads already handled.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters (none included) and every
/// other character for itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently assumed to end at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// `text` cut to at most `max` bytes (at a character boundary), with `…` when cut: for log lines about names
/// that may be absurdly long.
pub fn shown(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// `text` escaped for an XML attribute value in double quotes. Tabs and line breaks are written as character
/// references so attribute-value normalisation keeps them; other control characters cannot appear in XML 1.0
/// at all and are refused.
pub fn xml_attribute(text: &str) -> Result<Cow<'_, str>, String> {
    let special = |c: char| matches!(c, '&' | '<' | '>' | '"' | '\'') || c.is_control();
    if !text.contains(special) {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {
                return Err(format!("U+{:04X} cannot appear in XML", c as u32));
            }
            c => out.push(c),
        }
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for ok in ["a", "_x", "truck-12", "lamp.3", "9", &"a".repeat(128)] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "é", "藤沢", &"a".repeat(129)] {
            assert!(!is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn safe_names_keep_valid_ones_and_tell_the_others_apart() {
        assert!(matches!(safe("truck-12"), Cow::Borrowed("truck-12")));
        let hash = |s: &str| format!("{:08x}", fnv1a32(s.as_bytes()));
        assert_eq!(safe("Fujisawa truck 12"), format!("Fujisawa_truck_12-{}", hash("Fujisawa truck 12")));
        assert_eq!(safe("藤沢市 ゴミ収集車/12"), format!("_12-{}", hash("藤沢市 ゴミ収集車/12")));
        assert_eq!(safe("-x"), format!("_x-{}", hash("-x")));
        assert_eq!(safe(""), format!("_-{}", hash("")));
        assert_eq!(safe("a//b"), format!("a_b-{}", hash("a//b")));
        let long = "x".repeat(500);
        assert_eq!(safe(&long).len(), 128);
        assert!(safe(&long).starts_with(&"x".repeat(119)));
        let cases =
            ["藤沢 1", "藤沢 2", "a b", "a/b", "a_b", "a  b", "ゴミ収集車", "収集車ゴミ", &long, &"x".repeat(501)];
        let made: Vec<String> = cases.iter().map(|c| safe(c).into_owned()).collect();
        for (i, name) in made.iter().enumerate() {
            assert!(is_valid(name), "{name}");
            assert_eq!(made.iter().filter(|m| *m == name).count(), 1, "{} collides", cases[i]);
            assert_eq!(safe(cases[i]), *name, "stable");
        }
    }

    #[test]
    fn fnv_reference_values() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn globs() {
        for (pattern, text) in [
            ("*", ""),
            ("*", "anything"),
            ("*_data", "truck_12_data"),
            ("weather/*", "weather/fujisawa"),
            ("a*b*c", "aXbYc"),
            ("a*b*c", "abbbc"),
            ("exact", "exact"),
            ("**", "x"),
        ] {
            assert!(glob_matches(pattern, text), "{pattern} {text}");
        }
        for (pattern, text) in [("*_data", "truck_meta"), ("a*b", "a"), ("exact", "exact2"), ("", "x"), ("a*c", "ab")] {
            assert!(!glob_matches(pattern, text), "{pattern} {text}");
        }
    }

    #[test]
    fn escaping() {
        assert!(matches!(xml_attribute("41.5"), Ok(Cow::Borrowed("41.5"))));
        assert_eq!(
            xml_attribute("a<b & \"c\" 'd'>\t\n").unwrap(),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;&#9;&#10;"
        );
        assert!(xml_attribute("bell\u{7}").is_err());
        assert_eq!(shown("abcdef", 3), "abc…");
        assert_eq!(shown("藤沢", 4), "藤…");
        assert_eq!(shown("abc", 3), "abc");
    }
}
