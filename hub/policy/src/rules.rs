//! Parsing and validating policy text.

use std::fmt::{self, Write as _};

use crate::{Action, DataClass, PolicyError, error::truncate_for_message, principal::validate_name};

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

/// A `g, member, role` or `g, member, role, domain` line, with both names split into name and domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grouping {
    pub(crate) member: String,
    pub(crate) role: String,
    /// The domain both belong to (the hub's own domain when the line names none).
    pub(crate) domain: String,
}

/// An `s, subject, department|clearance, value` line: an attribute of a subject or role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubjectAttribute {
    pub(crate) line: usize,
    pub(crate) subject: String,
    pub(crate) value: SubjectValue,
}

/// The value of a subject attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubjectValue {
    Department(String),
    Clearance(u8),
}

/// An `o, object-pattern, class|clearance|department|owner, value` line: a label for the objects it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectLabel {
    pub(crate) line: usize,
    pub(crate) pattern: String,
    pub(crate) value: LabelValue,
}

/// The value of an object label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LabelValue {
    Class(DataClass),
    Clearance(u8),
    Department(String),
    Owner(String),
}

/// A `c, owner, grantee, object-pattern` line: the owner of personal data lets the grantee (a subject or role)
/// read the owner's objects that match the pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Consent {
    pub(crate) line: usize,
    pub(crate) owner: String,
    pub(crate) grantee: String,
    pub(crate) object: String,
}

impl fmt::Display for Consent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c, {}, {}, {}", self.owner, self.grantee, self.object)
    }
}

/// A fully validated policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ParsedPolicy {
    pub(crate) permissions: Vec<Permission>,
    pub(crate) groupings: Vec<Grouping>,
    pub(crate) subject_attributes: Vec<SubjectAttribute>,
    pub(crate) object_labels: Vec<ObjectLabel>,
    pub(crate) consents: Vec<Consent>,
}

/// Splits a subject or role name into its name and domain: `alice@fujisawa` is `alice` in `fujisawa`; a name
/// without `@` is in the domain `local` (the hub's own).
pub(crate) fn split_domain<'a>(name: &'a str, local: &'a str) -> (&'a str, &'a str) {
    match name.rsplit_once('@') {
        Some((name, domain)) => (name, domain),
        None => (name, local),
    }
}

/// A name in its canonical spelling, for comparisons: without a suffix when it is in the hub's own domain
/// (`alice@santander` is `alice` on the Santander hub), with it otherwise.
pub(crate) fn canonical_name(name: &str, local: &str) -> String {
    match name.rsplit_once('@') {
        Some((bare, domain)) if domain == local => bare.to_owned(),
        _ => name.to_owned(),
    }
}

impl ParsedPolicy {
    /// Parses policy text strictly. Every line is one of the line types below, a comment starting with `#`, or
    /// blank; anything else is an error naming the line. `local` is the hub's own domain.
    ///
    /// - `p, subject, object, action`
    /// - `g, member, role` and `g, member, role, domain`
    /// - `s, subject, department|clearance, value`
    /// - `o, object-pattern, class|clearance|department|owner, value`
    /// - `c, owner, grantee, object-pattern`
    pub(crate) fn parse(text: &str, local: &str) -> Result<Self, PolicyError> {
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
                    validate_principal_name("subject", subject).map_err(invalid)?;
                    validate_object_pattern(object).map_err(invalid)?;
                    let action = parse_action_pattern(action).map_err(invalid)?;
                    policy.permissions.push(Permission {
                        line,
                        subject: canonical_name(subject, local),
                        object: (*object).to_owned(),
                        action,
                    });
                }
                ["g", member, role] => {
                    policy.groupings.push(parse_grouping(member, role, None, local).map_err(invalid)?);
                }
                ["g", member, role, domain] => {
                    policy.groupings.push(parse_grouping(member, role, Some(domain), local).map_err(invalid)?);
                }
                ["s", subject, key, value] => {
                    validate_principal_name("subject", subject).map_err(invalid)?;
                    let value = match *key {
                        "department" => {
                            SubjectValue::Department(parse_label_name("department", value).map_err(invalid)?)
                        }
                        "clearance" => SubjectValue::Clearance(parse_clearance(value).map_err(invalid)?),
                        other => {
                            return Err(invalid(format!(
                                "unknown subject attribute {:?}: expected department or clearance",
                                truncate_for_message(other)
                            )));
                        }
                    };
                    policy.subject_attributes.push(SubjectAttribute {
                        line,
                        subject: canonical_name(subject, local),
                        value,
                    });
                }
                ["o", pattern, key, value] => {
                    validate_object_pattern(pattern).map_err(invalid)?;
                    let value = match *key {
                        "class" => LabelValue::Class(value.parse::<DataClass>().map_err(invalid)?),
                        "clearance" => LabelValue::Clearance(parse_clearance(value).map_err(invalid)?),
                        "department" => LabelValue::Department(parse_label_name("department", value).map_err(invalid)?),
                        "owner" => {
                            validate_principal_name("owner", value).map_err(invalid)?;
                            LabelValue::Owner(canonical_name(value, local))
                        }
                        other => {
                            return Err(invalid(format!(
                                "unknown object label {:?}: expected class, clearance, department or owner",
                                truncate_for_message(other)
                            )));
                        }
                    };
                    policy.object_labels.push(ObjectLabel { line, pattern: (*pattern).to_owned(), value });
                }
                ["c", owner, grantee, object] => {
                    validate_principal_name("owner", owner).map_err(invalid)?;
                    validate_principal_name("grantee", grantee).map_err(invalid)?;
                    validate_object_pattern(object).map_err(invalid)?;
                    policy.consents.push(Consent {
                        line,
                        owner: canonical_name(owner, local),
                        grantee: canonical_name(grantee, local),
                        object: (*object).to_owned(),
                    });
                }
                [kind @ ("p" | "g" | "s" | "o" | "c"), ..] => {
                    let shape = match *kind {
                        "p" => "a p line has 4 fields `p, subject, object, action`",
                        "g" => "a g line has 3 or 4 fields `g, subject, role[, domain]`",
                        "s" => "an s line has 4 fields `s, subject, department|clearance, value`",
                        "o" => "an o line has 4 fields `o, object, class|clearance|department|owner, value`",
                        _ => "a c line has 4 fields `c, owner, grantee, object`",
                    };
                    return Err(invalid(format!("{shape}, this one has {}", fields.len())));
                }
                [kind, ..] => {
                    return Err(invalid(format!(
                        "unknown line type {:?}: lines start with `p`, `g`, `s`, `o`, `c` or `#`",
                        truncate_for_message(kind)
                    )));
                }
                [] => return Err(invalid("empty line".to_owned())),
            }
        }
        Ok(policy)
    }

    /// The `p` and `g` lines in the plain CSV form casbin's string adapter reads, for the model with domains:
    /// `p, name, domain, object, action` and `g, member, role, domain`. Every field was validated to contain no
    /// comma, quote or whitespace, so no quoting is needed.
    pub(crate) fn to_casbin_csv(&self, local: &str) -> String {
        let mut csv = String::new();
        for p in &self.permissions {
            let (name, domain) = split_domain(&p.subject, local);
            // Writing to a String cannot fail.
            let _ = writeln!(csv, "p, {name}, {domain}, {}, {}", p.object, p.action.as_str());
        }
        for g in &self.groupings {
            let _ = writeln!(csv, "g, {}, {}, {}", g.member, g.role, g.domain);
        }
        csv
    }
}

fn parse_grouping(member: &str, role: &str, domain: Option<&str>, local: &str) -> Result<Grouping, String> {
    validate_principal_name("subject", member)?;
    validate_principal_name("role", role)?;
    let (member_name, member_domain) = split_domain(member, local);
    let (role_name, role_domain) = split_domain(role, local);
    let domain = match domain {
        Some(domain) => {
            validate_domain(domain)?;
            for (what, name, its) in [("subject", member, member_domain), ("role", role, role_domain)] {
                if name.contains('@') && its != domain {
                    return Err(format!("the {what} {name:?} is not in the line's domain {domain:?}"));
                }
            }
            domain
        }
        None if member_domain != role_domain => {
            return Err(format!(
                "roles are per domain: {member:?} is in the domain {member_domain:?}, {role:?} in {role_domain:?}"
            ));
        }
        None => member_domain,
    };
    Ok(Grouping { member: member_name.to_owned(), role: role_name.to_owned(), domain: domain.to_owned() })
}

/// A subject, role, owner or grantee: a name (see [`validate_name`]) whose optional `@domain` suffix is
/// non-empty and follows the same rules.
fn validate_principal_name(field: &'static str, value: &str) -> Result<(), String> {
    validate_name(field, value).map_err(|e| e.to_string())?;
    if let Some((name, domain)) = value.rsplit_once('@') {
        if name.is_empty() {
            return Err(format!("the {field} {value:?} has no name before `@`"));
        }
        validate_domain(domain).map_err(|e| format!("the {field} {value:?}: {e}"))?;
    }
    Ok(())
}

pub(crate) fn validate_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() || domain.contains('@') {
        return Err(format!("the domain {:?} must be a name without `@`", truncate_for_message(domain)));
    }
    validate_name("domain", domain).map_err(|e| e.to_string())
}

fn parse_label_name(field: &'static str, value: &str) -> Result<String, String> {
    validate_name(field, value).map_err(|e| e.to_string())?;
    if value.contains('@') {
        return Err(format!("the {field} {value:?} must not contain `@`"));
    }
    Ok(value.to_owned())
}

fn parse_clearance(value: &str) -> Result<u8, String> {
    value
        .parse::<u8>()
        .map_err(|_| format!("the clearance {:?} is not a whole number from 0 to 255", truncate_for_message(value)))
}

fn parse_action_pattern(action: &str) -> Result<ActionPattern, String> {
    if action == "*" {
        return Ok(ActionPattern::Any);
    }
    action.parse::<Action>().map(ActionPattern::One).map_err(|_| {
        format!("unknown action {:?}: expected read, write, act, admin or *", truncate_for_message(action))
    })
}

/// Checks an object pattern as the policy's lines need it: not empty, at most [`MAX_OBJECT_LEN`] characters from
/// `A-Z a-z 0-9 . _ - : @ /` and the wildcards `*` `?`. The error says what is wrong.
pub fn validate_object_pattern(object: &str) -> Result<(), String> {
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
        match ParsedPolicy::parse(text, "local") {
            Err(PolicyError::InvalidPolicy { line, message }) => (line, message),
            other => panic!("expected InvalidPolicy for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn parses_permissions_groupings_comments_and_blanks() {
        let text = "# header\n\np, admin, *, *\r\n  p ,alice,noise-*,read  \ng, bob, operators\n# end";
        let policy = ParsedPolicy::parse(text, "local").unwrap();
        assert_eq!(policy.permissions.len(), 2);
        assert_eq!(policy.permissions[0].line, 3);
        assert_eq!(policy.permissions[0].action, ActionPattern::Any);
        assert_eq!(policy.permissions[1].to_string(), "p, alice, noise-*, read");
        assert_eq!(policy.permissions[1].line, 4);
        assert_eq!(
            policy.groupings,
            vec![Grouping { member: "bob".into(), role: "operators".into(), domain: "local".into() }]
        );
        assert_eq!(
            policy.to_casbin_csv("local"),
            "p, admin, local, *, *\np, alice, local, noise-*, read\ng, bob, operators, local\n"
        );
    }

    #[test]
    fn parses_domains_attributes_labels_and_consents() {
        let text = "\
g, alice, officer, fujisawa
g, bob@fujisawa, officer@fujisawa
g, carol@santander, staff
p, officer@fujisawa, air-*, read
p, dave@santander, x, read
s, officer@fujisawa, clearance, 2
s, staff, department, environment
o, police-*, class, confidential
o, police-*, clearance, 3
o, care-*, owner, erin@santander
c, erin, nurse@fujisawa, care-*
";
        let policy = ParsedPolicy::parse(text, "santander").unwrap();
        let groupings: Vec<_> =
            policy.groupings.iter().map(|g| format!("{} {} {}", g.member, g.role, g.domain)).collect();
        assert_eq!(groupings, ["alice officer fujisawa", "bob officer fujisawa", "carol staff santander"]);
        assert_eq!(policy.permissions[0].subject, "officer@fujisawa");
        // The hub's own domain is spelled without a suffix.
        assert_eq!(policy.permissions[1].subject, "dave");
        assert_eq!(policy.subject_attributes[0].value, SubjectValue::Clearance(2));
        assert_eq!(policy.subject_attributes[1].value, SubjectValue::Department("environment".into()));
        assert_eq!(policy.object_labels[0].value, LabelValue::Class(DataClass::Confidential));
        assert_eq!(policy.object_labels[1].value, LabelValue::Clearance(3));
        assert_eq!(policy.object_labels[2].value, LabelValue::Owner("erin".into()));
        assert_eq!(policy.consents[0].to_string(), "c, erin, nurse@fujisawa, care-*");
        assert_eq!(
            policy.to_casbin_csv("santander"),
            "p, officer, fujisawa, air-*, read\np, dave, santander, x, read\n\
             g, alice, officer, fujisawa\ng, bob, officer, fujisawa\ng, carol, staff, santander\n"
        );
    }

    #[test]
    fn empty_text_is_an_empty_policy() {
        assert_eq!(ParsedPolicy::parse("", "local").unwrap(), ParsedPolicy::default());
        assert_eq!(ParsedPolicy::parse("# nothing\n\n", "local").unwrap(), ParsedPolicy::default());
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
        ("g, alice", 1, "3 or 4 fields"),
        ("g, alice, ops, fujisawa, extra", 1, "3 or 4 fields"),
        ("g, alice, *", 1, "role"),
        ("g, alice@fujisawa, officer", 1, "roles are per domain"),
        ("g, alice@fujisawa, officer@santander", 1, "roles are per domain"),
        ("g, alice@santander, officer, fujisawa", 1, "not in the line's domain"),
        ("g, alice, officer, fuji@sawa", 1, "domain"),
        ("p, @fujisawa, *, read", 1, "no name before"),
        ("p, officer@, *, read", 1, "domain"),
        ("s, alice, rank, 3", 1, "unknown subject attribute \"rank\""),
        ("s, alice, clearance, high", 1, "not a whole number"),
        ("s, alice, clearance, 256", 1, "not a whole number"),
        ("s, alice, department, a@b", 1, "must not contain"),
        ("s, alice, department", 1, "an s line has 4 fields"),
        ("o, air-*, class, secret", 1, "unknown data class \"secret\""),
        ("o, air-*, colour, red", 1, "unknown object label \"colour\""),
        ("o, air *, class, open", 1, "contains ' '"),
        ("o, air-*, clearance, -1", 1, "not a whole number"),
        ("c, alice, bob", 1, "a c line has 4 fields"),
        ("c, alice, bob, care-*, read", 1, "a c line has 4 fields"),
        ("c, alice, b b, care-*", 1, "grantee"),
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
        let err = ParsedPolicy::parse("p, admin, *, *\np, x, y, z", "local").unwrap_err();
        assert_eq!(err.to_string(), "policy line 2: unknown action \"z\": expected read, write, act, admin or *");
    }
}
