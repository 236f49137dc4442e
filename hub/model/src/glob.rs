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

    /// Whether every text `other` matches is also matched by `self` (for grants: a granted pattern must stay
    /// within a requested one). Conservative: a wildcard of `other` is covered only by a `*` of `self`, so a
    /// `false` may be returned for exotic pairs that are in fact covered, never a `true` that is not.
    pub fn covers(&self, other: &Glob) -> bool {
        // dp[i][j]: p[i..] covers t[j..]; filled from the ends, O(len(p) * len(t)).
        fn go(p: &[u8], t: &[u8]) -> bool {
            let (n, m) = (p.len(), t.len());
            let mut dp = vec![vec![false; m + 1]; n + 1];
            dp[n][m] = true;
            for i in (0..n).rev() {
                for j in (0..=m).rev() {
                    dp[i][j] = match (p[i], t.get(j)) {
                        (b'*', _) => dp[i + 1][j] || (j < m && dp[i][j + 1]),
                        (_, None) => false,
                        (b'?', Some(&c)) => c != b'*' && dp[i + 1][j + 1],
                        (a, Some(&b)) => a == b && b != b'*' && b != b'?' && dp[i + 1][j + 1],
                    };
                }
            }
            dp[0][0]
        }
        // Runs of `*` are one `*`; this keeps the search small.
        fn squeeze(s: &str) -> Vec<u8> {
            let mut out: Vec<u8> = Vec::with_capacity(s.len());
            for &c in s.as_bytes() {
                if !(c == b'*' && out.last() == Some(&b'*')) {
                    out.push(c);
                }
            }
            out
        }
        go(&squeeze(&self.pattern), &squeeze(&other.pattern))
    }

    /// How many literal characters the pattern has: of two patterns matching the same text, the one with more
    /// is the more specific.
    pub fn specificity(&self) -> usize {
        self.pattern.bytes().filter(|&c| c != b'*' && c != b'?').count()
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

    #[test]
    fn covers_table() {
        let table: &[(&str, &str, bool)] = &[
            ("*", "*", true),
            ("*", "lora-*", true),
            ("*", "anything", true),
            ("lora-*", "lora-*", true),
            ("lora-*", "lora-0a*", true),
            ("lora-*", "lora-0a", true),
            ("lora-*", "*", false),
            ("lora-*", "lor*", false),
            ("lora-*", "lora?", false),
            ("a?c", "a*c", false),
            ("a?c", "a?c", true),
            ("a*c", "a?c", true),
            ("site.a", "site.a", true),
            ("site.a", "site.b", false),
            ("*/*/temp", "p/s/temp", true),
            ("*/temp", "*/*/temp", true),
        ];
        for (outer, inner, want) in table {
            assert_eq!(Glob::new(outer).covers(&Glob::new(inner)), *want, "{outer} covers {inner}");
        }
        assert!(Glob::new("lora-*").specificity() > Glob::new("*").specificity());
    }
}
