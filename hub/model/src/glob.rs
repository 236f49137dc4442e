use std::fmt;

/// A name or path pattern: `*` matches any run of characters (including `/`), `?` matches one character, every
/// other character (dots included) matches itself. Matching is linear in the input.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Glob {
    pattern: Box<str>,
    literal: bool,
}

impl Glob {
    /// Wraps a pattern. Every string is a valid pattern.
    pub fn new(pattern: &str) -> Glob {
        Glob { pattern: pattern.into(), literal: !pattern.contains(['*', '?']) }
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern matches the whole of `text`.
    pub fn matches(&self, text: &str) -> bool {
        if self.literal {
            return *self.pattern == *text;
        }
        let (p, t) = (self.pattern.as_bytes(), text.as_bytes());
        let (mut pi, mut ti) = (0usize, 0usize);
        // Position of the last `*` seen in the pattern and where in the text it started matching.
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(b'*') => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(&c) if c == b'?' || c == t[ti] => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn glob_table() {
        let table: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "a/b/c", true),
            ("noise-*", "noise-12", true),
            ("noise-*", "noise-12/sound/level", true),
            ("noise-*", "nois", false),
            ("*/*/temp", "a/b/temp", true),
            ("*/*/temp", "a/b/temp2", false),
            ("site.a", "site.a", true),
            ("site.a", "siteXa", false),
            ("p?", "p1", true),
            ("p?", "p12", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("**", "x", true),
        ];
        for (pattern, text, want) in table {
            assert_eq!(Glob::new(pattern).matches(text), *want, "{pattern} vs {text}");
        }
    }
}
