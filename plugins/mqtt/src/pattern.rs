//! Topic patterns (`building/{floor}/+/env/#`), text templates (`room-{floor}-{room}`) and provider globs
//! (`room-*`), compiled once at init so that matching a message allocates nothing.

use crate::names::{is_name_byte, name_problem};

/// Placeholder names with a fixed meaning in ACT templates; a topic pattern cannot capture under them.
pub const RESERVED: [&str; 5] = ["id", "provider", "service", "resource", "params"];

/// One level of a [`TopicPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// Matches exactly this text.
    Literal(Box<str>),
    /// `{name}`: matches any one level and captures it.
    Capture,
    /// `+`: matches any one level.
    Any,
}

/// An MQTT topic filter whose single-level wildcards may be named captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    levels: Vec<Level>,
    /// Ends with `#`: any number of further levels (none included, as in MQTT).
    tail: bool,
    /// The capture names, in level order.
    names: Vec<Box<str>>,
}

impl TopicPattern {
    /// Parses a pattern: levels separated by `/`, each literal text, `+`, `{name}`, or (last only) `#`.
    pub fn parse(text: &str) -> Result<TopicPattern, String> {
        if text.is_empty() {
            return Err("a topic pattern cannot be empty".to_owned());
        }
        let mut pattern = TopicPattern { levels: Vec::new(), tail: false, names: Vec::new() };
        let count = text.split('/').count();
        for (i, level) in text.split('/').enumerate() {
            if level == "#" {
                if i + 1 != count {
                    return Err("`#` is only allowed as the last level".to_owned());
                }
                pattern.tail = true;
            } else if level == "+" {
                pattern.levels.push(Level::Any);
            } else if let Some(name) = level.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
                if !is_identifier(name) {
                    return Err(format!("{level:?}: a capture is {{name}} with a name of A-Z a-z 0-9 _"));
                }
                if RESERVED.contains(&name) {
                    return Err(format!("{level:?}: {name} is reserved (id, provider, service, resource, params)"));
                }
                if pattern.names.iter().any(|n| **n == *name) {
                    return Err(format!("{level:?}: the capture {name} appears twice"));
                }
                pattern.names.push(name.into());
                pattern.levels.push(Level::Capture);
            } else if level.contains(['+', '#', '{', '}']) {
                return Err(format!("{level:?}: `+`, `#` and {{name}} stand for a whole level"));
            } else {
                pattern.levels.push(Level::Literal(level.into()));
            }
        }
        Ok(pattern)
    }

    /// The capture names, in level order.
    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    /// The position of capture `name` in [`TopicPattern::names`].
    pub fn capture_index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| **n == *name)
    }

    /// Whether the topic split into `levels` matches; on a match `captures` holds the captured levels in
    /// order (it is cleared first either way). As in MQTT, wildcards at the first level do not match topics
    /// starting with `$`.
    pub fn matches<'t>(&self, levels: &[&'t str], captures: &mut Vec<&'t str>) -> bool {
        captures.clear();
        let fits = if self.tail { levels.len() >= self.levels.len() } else { levels.len() == self.levels.len() };
        if !fits {
            return false;
        }
        if levels.first().is_some_and(|l| l.starts_with('$')) && !matches!(self.levels.first(), Some(Level::Literal(_)))
        {
            return false;
        }
        for (level, pattern) in levels.iter().zip(&self.levels) {
            match pattern {
                Level::Literal(text) => {
                    if **text != **level {
                        return false;
                    }
                }
                Level::Capture => captures.push(level),
                Level::Any => {}
            }
        }
        true
    }
}

/// `A-Z a-z 0-9 _`, not empty, not starting with a digit.
fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// What a placeholder of a [`Template`] stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// A capture of the mapping's topic pattern, by position.
    Capture(usize),
    /// A capture by name (ACT templates, filled from the provider's remembered captures).
    Named(Box<str>),
    /// The ACT's request id.
    Id,
    /// The ACT's provider.
    Provider,
    /// The ACT's service.
    Service,
    /// The ACT's resource.
    Resource,
    /// All ACT parameters, as a JSON object.
    Params,
    /// One ACT parameter, as JSON.
    Param(Box<str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(Box<str>),
    Slot(Slot),
}

/// Text with `{name}` placeholders; `{{` is a literal `{`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`. `resolve` gives each placeholder name its slot; a name it does not know is an error
    /// (`unknown segment {name}`, followed by `hint`). In `strict` mode (names, topics) every `{` must open a
    /// placeholder; otherwise (payloads) a `{` that does not open `{name}` is plain text, so JSON needs no
    /// escaping.
    pub fn parse(
        text: &str,
        strict: bool,
        hint: &str,
        resolve: impl Fn(&str) -> Option<Slot>,
    ) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            if let Some(escaped) = after.strip_prefix('{') {
                literal.push('{');
                rest = escaped;
                continue;
            }
            let placeholder = after.find('}').map(|close| &after[..close]).filter(|name| is_placeholder(name));
            match placeholder {
                Some(name) => {
                    let slot = resolve(name).ok_or_else(|| format!("unknown segment {{{name}}}{hint}"))?;
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal).into()));
                    }
                    parts.push(Part::Slot(slot));
                    rest = &after[name.len() + 1..];
                }
                None if strict => {
                    return Err("`{` opens a placeholder such as {name}; write `{{` for a literal `{`".to_owned());
                }
                None => {
                    literal.push('{');
                    rest = after;
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal.into()));
        }
        Ok(Template { parts })
    }

    /// The slots, in order.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.parts.iter().filter_map(|p| match p {
            Part::Slot(s) => Some(s),
            Part::Text(_) => None,
        })
    }

    /// The literal pieces, in order.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Text(t) => Some(&**t),
            Part::Slot(_) => None,
        })
    }

    /// The whole text when the template has no placeholder.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// Appends the rendered text to `buf`; `fill` appends each slot's text and may refuse.
    pub fn render<E>(
        &self,
        buf: &mut String,
        mut fill: impl FnMut(&Slot, &mut String) -> Result<(), E>,
    ) -> Result<(), E> {
        for part in &self.parts {
            match part {
                Part::Text(t) => buf.push_str(t),
                Part::Slot(slot) => fill(slot, buf)?,
            }
        }
        Ok(())
    }

    /// Renders a template whose only slots are captures of one topic match.
    pub fn render_captures(&self, buf: &mut String, captures: &[&str]) {
        buf.clear();
        let _ = self.render(buf, |slot, buf| {
            if let Slot::Capture(i) = slot {
                buf.push_str(captures.get(*i).copied().unwrap_or_default());
            }
            Ok::<(), ()>(())
        });
    }
}

/// Placeholder names: an identifier, or `params.` and a parameter name (`params.set-point`).
fn is_placeholder(s: &str) -> bool {
    match s.strip_prefix("params.") {
        Some(param) => name_problem(param).is_none(),
        None => is_identifier(s),
    }
}

/// A provider-name pattern: `*` matches any run of characters, `?` one character, anything else itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Box<str>);

impl Glob {
    /// Checks the pattern: name characters, `*` and `?` only.
    pub fn parse(text: &str) -> Result<Glob, String> {
        if text.is_empty() {
            return Err("a provider pattern cannot be empty".to_owned());
        }
        if !text.bytes().all(|b| is_name_byte(b) || b == b'*' || b == b'?') {
            return Err(format!("{text:?}: use name characters (A-Z a-z 0-9 . - _), `*` and `?`"));
        }
        Ok(Glob(text.into()))
    }

    /// Whether the pattern matches all of `text`. Linear in practice: a mismatch after a `*` retries from the
    /// latest `*` only.
    pub fn matches(&self, text: &str) -> bool {
        let (p, t) = (self.0.as_bytes(), text.as_bytes());
        let (mut pi, mut ti) = (0usize, 0usize);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn split(topic: &str) -> Vec<&str> {
        topic.split('/').collect()
    }

    #[test]
    fn patterns_capture_levels() {
        let p = TopicPattern::parse("building/{floor}/+/{room}/#").unwrap();
        assert_eq!(p.names(), ["floor".into(), "room".into()]);
        let mut caps = Vec::new();
        assert!(p.matches(&split("building/3/x/12"), &mut caps));
        assert_eq!(caps, ["3", "12"]);
        assert!(p.matches(&split("building/3/x/12/a/b"), &mut caps));
        assert!(!p.matches(&split("building/3/x"), &mut caps));
        assert!(caps.is_empty());
        assert!(!p.matches(&split("house/3/x/12"), &mut caps));

        let exact = TopicPattern::parse("a/{b}").unwrap();
        assert!(!exact.matches(&split("a/b/c"), &mut caps));
        assert!(exact.matches(&split("a/"), &mut caps), "an empty level is a level");
        let all = TopicPattern::parse("#").unwrap();
        assert!(all.matches(&split("x/y"), &mut caps));
        assert!(!all.matches(&split("$SYS/x"), &mut caps));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("a/#/b", "last level"),
            ("a/b+", "whole level"),
            ("a/{b c}", "capture"),
            ("a/{id}", "reserved"),
            ("{x}/{x}", "twice"),
            ("a/x{y}", "whole level"),
        ] {
            let err = TopicPattern::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn templates_render_and_refuse_unknown_names() {
        let pattern = TopicPattern::parse("b/{floor}/{room}").unwrap();
        let resolve = |n: &str| pattern.capture_index(n).map(Slot::Capture);
        let t = Template::parse("room-{floor}-{room}", true, "", resolve).unwrap();
        let mut buf = String::new();
        t.render_captures(&mut buf, &["3", "12"]);
        assert_eq!(buf, "room-3-12");
        assert_eq!(
            Template::parse("x-{flor}", true, " (known: floor)", resolve).unwrap_err(),
            "unknown segment {flor} (known: floor)"
        );
        assert!(Template::parse("x-{ floor}", true, "", resolve).is_err());
        assert_eq!(Template::parse("plain", true, "", resolve).unwrap().literal(), Some("plain"));

        let payload = Template::parse(r#"{"sp": {params.value}, "lit": "{{x}"}"#, false, "", |n| {
            n.strip_prefix("params.").map(|p| Slot::Param(p.into()))
        })
        .unwrap();
        let mut out = String::new();
        payload
            .render(&mut out, |slot, buf| {
                if let Slot::Param(p) = slot {
                    buf.push_str(if &**p == "value" { "21.5" } else { "?" });
                }
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(out, r#"{"sp": 21.5, "lit": "{x}"}"#);
    }

    #[test]
    fn globs() {
        let g = Glob::parse("room-*").unwrap();
        assert!(g.matches("room-3-12"));
        assert!(g.matches("room-"));
        assert!(!g.matches("rooms"));
        assert!(Glob::parse("*").unwrap().matches("anything"));
        assert!(Glob::parse("a?c*d").unwrap().matches("abcxxd"));
        assert!(!Glob::parse("a?c*d").unwrap().matches("abcxxe"));
        assert!(Glob::parse("a/b").is_err());
    }
}
