//! Object patterns: the `objMatch` function of the casbin model.

use casbin::rhai::Dynamic;

/// Whether `object` matches `pattern`.
///
/// `*` matches any run of characters, including none and including `/`; `?` matches exactly one character;
/// every other character (dots, colons, brackets, backslashes) matches only itself. The match is anchored at
/// both ends.
///
/// This is hand-written rather than built on a glob library because glob syntaxes give meaning to `[`, `{` and
/// `\`, and the policy language promises that only `*` and `?` are special. The algorithm is the classic
/// greedy match with one backtracking point: it allocates nothing, needs no compiled form (so there is nothing
/// to cache), and runs in O(len(pattern) × len(object)) in the worst case, which the length limits on both keep
/// small.
pub fn object_matches(pattern: &str, object: &str) -> bool {
    let pat = pattern.as_bytes();
    let obj = object.as_bytes();
    let (mut p, mut o) = (0usize, 0usize);
    // Where the last `*` was (pattern index just after it) and the object index it currently stands for.
    let mut backtrack: Option<(usize, usize)> = None;

    while o < obj.len() {
        match pat.get(p) {
            Some(b'*') => {
                p += 1;
                backtrack = Some((p, o));
                continue;
            }
            Some(b'?') => {
                p += 1;
                o += char_len_at(object, o);
                continue;
            }
            Some(&literal) if obj.get(o) == Some(&literal) => {
                p += 1;
                o += 1;
                continue;
            }
            _ => {}
        }
        // Mismatch: let the last `*` swallow one more character and retry from just after it.
        match backtrack {
            Some((after_star, swallowed_to)) => {
                let next = swallowed_to + char_len_at(object, swallowed_to);
                backtrack = Some((after_star, next));
                p = after_star;
                o = next;
            }
            None => return false,
        }
    }
    pat.get(p..).is_some_and(|rest| rest.iter().all(|&b| b == b'*'))
}

/// The UTF-8 length of the character starting at byte `at` (1 if `at` is not a character boundary, which the
/// matcher never produces, but a wrong guess must not panic).
fn char_len_at(s: &str, at: usize) -> usize {
    s.get(at..).and_then(|rest| rest.chars().next()).map_or(1, char::len_utf8)
}

/// Whether every object `inner` matches is also matched by `outer`: a pattern that stays within another (a
/// delegate's consent within the delegation it was given).
///
/// The answer errs on the side of "no": it is yes when `outer` can be laid over `inner` piece by piece, with
/// each `*` of `inner` under a `*` of `outer`, each `?` under a `?` or a `*`, and each other character under itself,
/// a `?` or a `*`. That is always sound, and exact for the patterns people write (`care-7/*` within `care-*`).
/// Dynamic programming over both patterns: O(len(inner) × len(outer)), which the length limits keep small.
pub fn pattern_within(inner: &str, outer: &str) -> bool {
    let inner: Vec<char> = inner.chars().collect();
    let outer: Vec<char> = outer.chars().collect();
    let width = outer.len() + 1;
    // covered[i * width + j]: whether inner[i..] lies within outer[j..]; filled from the ends backwards.
    let mut covered = vec![false; (inner.len() + 1) * width];
    covered[inner.len() * width + outer.len()] = true;
    for i in (0..=inner.len()).rev() {
        for j in (0..outer.len()).rev() {
            let at = |i: usize, j: usize| covered[i * width + j];
            let within = match (inner.get(i), outer[j]) {
                // A `*` of outer stands for nothing, or swallows the next piece of inner, whatever it is.
                (next, '*') => at(i, j + 1) || (next.is_some() && at(i + 1, j)),
                (None, _) | (Some('*'), _) => false,
                (Some(_), '?') => at(i + 1, j + 1),
                (Some(&c), o) => c != '?' && c == o && at(i + 1, j + 1),
            };
            covered[i * width + j] = within;
        }
    }
    covered[0]
}

/// The `objMatch(r.obj, p.obj)` function registered with casbin. Non-string arguments never match.
pub(crate) fn obj_match_function(object: Dynamic, pattern: Dynamic) -> Dynamic {
    match (object.into_immutable_string(), pattern.into_immutable_string()) {
        (Ok(object), Ok(pattern)) => Dynamic::from_bool(object_matches(&pattern, &object)),
        _ => Dynamic::from_bool(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (pattern, object, expected)
    const TABLE: &[(&str, &str, bool)] = &[
        // `*` alone matches everything, including the empty string and paths.
        ("*", "", true),
        ("*", "policy", true),
        ("*", "noise-1/env/temperature", true),
        // A provider family: the provider itself and everything under it.
        ("noise-*", "noise-1", true),
        ("noise-*", "noise-1/env/temperature", true),
        ("noise-*", "noise-", true),
        ("noise-*", "noise", false),
        ("noise-*", "xnoise-1", false),
        ("noise-*", "traffic-1/noise-2/level", false),
        // `*` crosses `/`.
        ("*/*/temperature", "noise-1/env/temperature", true),
        ("*/*/temperature", "a/b/c/temperature", true),
        ("*/*/temperature", "noise-1/env/temperature.max", false),
        ("*/temperature", "noise-1/env/temperature", true),
        ("noise-1/*", "noise-1/env/level", true),
        ("noise-1/*", "noise-1", false),
        // Dots are literal.
        ("building.3/*", "building.3/env/t", true),
        ("building.3/*", "buildingX3/env/t", false),
        ("a.b", "a.b", true),
        ("a.b", "axb", false),
        ("*.json", "x.json", true),
        ("*.json", "xjson", false),
        // `?` is exactly one character.
        ("sensor-?", "sensor-1", true),
        ("sensor-?", "sensor-", false),
        ("sensor-?", "sensor-12", false),
        ("sensor-??", "sensor-12", true),
        ("?", "é", true),
        ("??", "é", false),
        ("a?c", "a/c", true),
        // Named system objects.
        ("system:*", "system:health", true),
        ("system:*", "systemhealth", false),
        ("system:health", "system:health", true),
        ("system:health", "system:metrics", false),
        ("plugin:*", "plugin:mqtt-adapter", true),
        ("rule:*", "plugin:x", false),
        // Everything else is literal, including glob syntax from other dialects.
        ("[ab]", "a", false),
        ("[ab]", "[ab]", true),
        ("{a,b}", "a", false),
        ("a\\*", "a\\xyz", true),
        ("a\\*", "a*", false),
        // Anchoring and backtracking.
        ("", "", true),
        ("", "a", false),
        ("a", "", false),
        ("**", "", true),
        ("*a*b", "xxaxxbxb", true),
        ("*a*b", "xxaxxbxc", false),
        ("*ab", "aab", true),
        ("a*b*c", "abbbbc", true),
        ("a*b*c", "acb", false),
        ("*?", "", false),
        ("*?", "x", true),
        ("ü*", "über/alles", true),
    ];

    #[test]
    fn glob_semantics_table() {
        for &(pattern, object, expected) in TABLE {
            assert_eq!(object_matches(pattern, object), expected, "pattern {pattern:?} vs object {object:?}");
        }
    }

    #[test]
    fn long_inputs_do_not_explode() {
        let object = "a".repeat(512);
        let pattern = "*a".repeat(100) + "b";
        assert!(!object_matches(&pattern, &object));
        assert!(object_matches(&"*a".repeat(100), &object));
    }

    #[test]
    fn patterns_within_patterns() {
        for (inner, outer, expected) in [
            ("care-7/*", "care-*", true),
            ("care-7/*", "care-7/*", true),
            ("care-7/vitals/pulse", "care-7/*", true),
            ("care-7/*/pulse", "care-7/*", true),
            ("care-?/*", "care-*", true),
            ("care-?/x", "care-?/x", true),
            ("*", "*", true),
            ("", "*", true),
            ("care-*", "care-7/*", false),
            ("care-*/x", "care-?/x", false),
            ("care-7", "care-7/*", false),
            ("care-8/*", "care-7/*", false),
            ("*", "care-*", false),
            ("a?c", "abc", false),
            ("abc", "a?c", true),
        ] {
            assert_eq!(pattern_within(inner, outer), expected, "{inner:?} within {outer:?}");
        }
        // Sound: whatever the inner pattern matches, the outer one does.
        let objects = ["care-7/vitals/pulse", "care-7", "care-12/x", "care-/x", "x"];
        for (inner, outer) in [("care-7/*", "care-*"), ("care-?/*", "care-*"), ("care-7/*/pulse", "care-7/*")] {
            for object in objects {
                assert!(!object_matches(inner, object) || object_matches(outer, object), "{inner} {outer} {object}");
            }
        }
    }

    #[test]
    fn the_casbin_function_refuses_non_strings() {
        assert!(
            obj_match_function(Dynamic::from(String::from("x")), Dynamic::from(String::from("*"))).as_bool().unwrap()
        );
        assert!(!obj_match_function(Dynamic::from(1_i32), Dynamic::from(String::from("*"))).as_bool().unwrap());
    }
}
