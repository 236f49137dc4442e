//! Parsing and validating policy text.

use std::fmt::{self, Write as _};

use crate::{Action, PolicyError, error::truncate_for_message, principal::validate_name};

/// The longest object pattern in a policy line, and the longest object a check accepts, in bytes.
pub const MAX_OBJECT_LEN: usize = 512;

/// The action column of a `p` line: one action or `*` for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActionPattern {
    Any,
    One(Action),
}

impl ActionPattern {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ActionPattern::Any => "*",
            ActionPattern::One(action) => action.as_str(),
        }
    }

    pub(crate) fn allows(self, action: Action) -> bool {
        match self {
            ActionPattern::Any => true,
            ActionPattern::One(allowed) => allowed == action,
        }
    }
}

/// A `p, subject, object, action` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Permission {
    /// 1-based line number in the source text.
    pub(crate) line: usize,
    pub(crate) subject: String,
    pub(crate) object: String,
    pub(crate) action: ActionPattern,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p, {}, {}, {}", self.subject, self.object, self.action.as_str())
    }
}

/// A `g, member, role` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grouping {
    pub(crate) member: String,
    pub(crate) role: String,
}

/// A fully validated policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ParsedPolicy {
    pub(crate) permissions: Vec<Permission>,
    pub(crate) groupings: Vec<Grouping>,
}

impl ParsedPolicy {
    /// Parses policy text strictly. Every line is `p, subject, object, action`, `g, member, role`, a comment
    /// starting with `#`, or blank; anything else is an error naming the line.
    pub(crate) fn parse(text: &str) -> Result<Self, PolicyError> {
        let mut policy = ParsedPolicy::default();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed.split(',').map(str::trim).collect();
            let invalid = |message: String| PolicyError::InvalidPolicy { line, message };
            match fields.as_slice() {
                ["p", subject, object, action] => {
                    validate_name("subject", subject).map_err(|e| invalid(e.to_string()))?;
                    validate_object_pattern(object).map_err(invalid)?;
                    let action = parse_action_pattern(action).map_err(invalid)?;
                    policy.permissions.push(Permission {
                        line,
                        subject: (*subject).to_owned(),
                        object: (*object).to_owned(),
                        action,
                    });
                }
                ["g", member, role] => {
                    validate_name("subject", member).map_err(|e| invalid(e.to_string()))?;
                    validate_name("role", role).map_err(|e| invalid(e.to_string()))?;
                    policy.groupings.push(Grouping { member: (*member).to_owned(), role: (*role).to_owned() });
                }
                ["p", ..] => {
                    return Err(invalid(format!(
                        "a p line has 4 fields `p, subject, object, action`, this one has {}",
                        fields.len()
                    )));
                }
                ["g", ..] => {
                    return Err(invalid(format!(
                        "a g line has 3 fields `g, subject, role`, this one has {}",
                        fields.len()
                    )));
                }
                [kind, ..] => {
                    return Err(invalid(format!(
                        "unknown line type {:?}: lines start with `p`, `g` or `#`",
                        truncate_for_message(kind)
                    )));
                }
                [] => return Err(invalid("empty line".to_owned())),
            }
        }
        Ok(policy)
    }

    /// The policy in the plain CSV form casbin's string adapter reads. Every field was validated to contain no
    /// comma, quote or whitespace, so no quoting is needed.
    pub(crate) fn to_casbin_csv(&self) -> String {
        let mut csv = String::new();
        for p in &self.permissions {
            // Writing to a String cannot fail.
            let _ = writeln!(csv, "{p}");
        }
        for g in &self.groupings {
            let _ = writeln!(csv, "g, {}, {}", g.member, g.role);
        }
        csv
    }
}

fn parse_action_pattern(action: &str) -> Result<ActionPattern, String> {
    if action == "*" {
        return Ok(ActionPattern::Any);
    }
    action.parse::<Action>().map(ActionPattern::One).map_err(|_| {
        format!("unknown action {:?}: expected read, write, act, admin or *", truncate_for_message(action))
    })
}

fn validate_object_pattern(object: &str) -> Result<(), String> {
    if object.is_empty() {
        return Err("the object must not be empty (use `*` for every object)".to_owned());
    }
    if object.len() > MAX_OBJECT_LEN {
        return Err(format!("the object is longer than {MAX_OBJECT_LEN} characters"));
    }
    if let Some(bad) = object.chars().find(|&c| !is_object_char(c)) {
        return Err(format!(
            "the object {:?} contains {bad:?}; objects use A-Z a-z 0-9 . _ - : @ / and the wildcards * ?",
            truncate_for_message(object)
        ));
    }
    Ok(())
}

fn is_object_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '/' | '*' | '?')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_line(text: &str) -> (usize, String) {
        match ParsedPolicy::parse(text) {
            Err(PolicyError::InvalidPolicy { line, message }) => (line, message),
            other => panic!("expected InvalidPolicy for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn parses_permissions_groupings_comments_and_blanks() {
        let text = "# header\n\np, admin, *, *\r\n  p ,alice,noise-*,read  \ng, bob, operators\n# end";
        let policy = ParsedPolicy::parse(text).unwrap();
        assert_eq!(policy.permissions.len(), 2);
        assert_eq!(policy.permissions[0].line, 3);
        assert_eq!(policy.permissions[0].action, ActionPattern::Any);
        assert_eq!(policy.permissions[1].to_string(), "p, alice, noise-*, read");
        assert_eq!(policy.permissions[1].line, 4);
        assert_eq!(policy.groupings, vec![Grouping { member: "bob".into(), role: "operators".into() }]);
        assert_eq!(policy.to_casbin_csv(), "p, admin, *, *\np, alice, noise-*, read\ng, bob, operators\n");
    }

    #[test]
    fn empty_text_is_an_empty_policy() {
        assert_eq!(ParsedPolicy::parse("").unwrap(), ParsedPolicy::default());
        assert_eq!(ParsedPolicy::parse("# nothing\n\n").unwrap(), ParsedPolicy::default());
    }

    /// Golden table: (text, line, fragment of the message).
    const INVALID: &[(&str, usize, &str)] = &[
        ("p, admin, *", 1, "4 fields"),
        ("p, admin, *, *, extra", 1, "4 fields"),
        ("\n\np, admin, *, delete", 3, "unknown action \"delete\""),
        ("p, admin, *, READ", 1, "unknown action"),
        ("p, admin, *, ", 1, "unknown action \"\""),
        ("p, , *, read", 1, "subject"),
        ("p, bad name, *, read", 1, "subject"),
        ("p, admin, , read", 1, "must not be empty"),
        ("p, admin, a b, read", 1, "contains ' '"),
        ("p, admin, [ab], read", 1, "contains '['"),
        ("p, \"admin\", *, read", 1, "subject"),
        ("p, admin, *, read # trailing comment", 1, "unknown action"),
        ("g, alice", 1, "3 fields"),
        ("g, alice, ops, extra", 1, "3 fields"),
        ("g, alice, *", 1, "role"),
        ("# ok\nx, alice, ops", 2, "unknown line type \"x\""),
        ("P, admin, *, *", 1, "unknown line type \"P\""),
        ("p admin * *", 1, "unknown line type"),
        ("p, admin, *, *\n,", 2, "unknown line type \"\""),
    ];

    #[test]
    fn invalid_lines_are_reported_with_their_number() {
        for &(text, line, fragment) in INVALID {
            let (got_line, message) = error_line(text);
            assert_eq!(got_line, line, "{text:?}: {message}");
            assert!(message.contains(fragment), "{text:?}: {message:?} should mention {fragment:?}");
        }
        let long = format!("p, admin, {}, read", "a".repeat(MAX_OBJECT_LEN + 1));
        assert!(error_line(&long).1.contains("longer than"));
    }

    #[test]
    fn the_error_display_names_the_line() {
        let err = ParsedPolicy::parse("p, admin, *, *\np, x, y, z").unwrap_err();
        assert_eq!(err.to_string(), "policy line 2: unknown action \"z\": expected read, write, act, admin or *");
    }
}
