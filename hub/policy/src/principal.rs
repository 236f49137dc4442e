use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{PolicyError, error::truncate_for_message};

/// The longest subject or role name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// The subject of anonymous requests.
pub const ANONYMOUS: &str = "anonymous";

/// Who is asking: the subject a token (or the anonymous fallback) authenticates, the roles it carries, and the
/// attributes its issuer vouches for.
///
/// A name `alice@fujisawa` belongs to the domain `fujisawa`; a name without `@` belongs to the hub's own domain
/// (see [`PolicyEngine`](crate::PolicyEngine)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    /// The authenticated subject, e.g. `alice`, `gateway-7` or `alice@fujisawa`.
    pub subject: String,
    /// Roles carried by the token. Each is checked against the policy as if it were a subject.
    pub roles: Vec<String>,
    /// Attributes from the token (an OpenID provider's claims), merged with those the policy gives the subject
    /// and its roles (`s` lines).
    #[serde(default, skip_serializing_if = "Attributes::is_empty")]
    pub attributes: Attributes,
}

/// Subject attributes that decide who may read classified data: the departments the subject works in (City
/// Hall staff have at least one) and its clearance level (0 when none is given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attributes {
    /// Departments, e.g. `environment`, `disaster-prevention`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub departments: Vec<String>,
    /// Clearance level; confidential data needs at least its own level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clearance: Option<u8>,
}

impl Attributes {
    /// Whether no attribute is set.
    pub fn is_empty(&self) -> bool {
        self.departments.is_empty() && self.clearance.is_none()
    }

    /// Adds `other`'s departments and keeps the higher clearance.
    pub fn merge(&mut self, other: &Attributes) {
        for department in &other.departments {
            if !self.departments.contains(department) {
                self.departments.push(department.clone());
            }
        }
        self.clearance = self.clearance.max(other.clearance);
    }
}

impl Principal {
    /// A principal with a subject and roles. Names are not validated here: a name that breaks the naming rules
    /// can never match a policy line, so it is simply denied.
    pub fn new(subject: impl Into<String>, roles: Vec<String>) -> Self {
        Principal { subject: subject.into(), roles, attributes: Attributes::default() }
    }

    /// The same principal with these attributes.
    pub fn with_attributes(mut self, attributes: Attributes) -> Self {
        self.attributes = attributes;
        self
    }

    /// The principal of requests that carry no token: subject `anonymous`, no roles.
    pub fn anonymous() -> Self {
        Principal::new(ANONYMOUS, Vec::new())
    }

    /// Whether this is the anonymous principal (subject `anonymous` and no roles).
    pub fn is_anonymous(&self) -> bool {
        self.subject == ANONYMOUS && self.roles.is_empty()
    }
}

/// What a request wants to do to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Look at values, metadata, history, streams.
    Read,
    /// Change values or declarations.
    Write,
    /// Trigger an action resource (actuate).
    Act,
    /// Manage the object itself (delete providers, edit policy, mint tokens, manage plugins).
    Admin,
}

impl Action {
    /// Every action, in a fixed order.
    pub const ALL: [Action; 4] = [Action::Read, Action::Write, Action::Act, Action::Admin];

    /// The policy spelling: `read`, `write`, `act` or `admin`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Act => "act",
            Action::Admin => "admin",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = PolicyError;

    /// Parses the lowercase policy spelling; anything else (including `*`) is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Action::Read),
            "write" => Ok(Action::Write),
            "act" => Ok(Action::Act),
            "admin" => Ok(Action::Admin),
            other => Err(PolicyError::InvalidAction(truncate_for_message(other))),
        }
    }
}

/// Checks a subject or role name: 1 to 128 characters from `A-Z a-z 0-9 . _ : @ -`.
///
/// `field` names the field in the error (`subject`, `role`, ...).
pub fn validate_name(field: &'static str, value: &str) -> Result<(), PolicyError> {
    let fail = |reason| Err(PolicyError::InvalidName { field, value: truncate_for_message(value), reason });
    if value.is_empty() {
        return fail("must not be empty");
    }
    if value.len() > MAX_NAME_LEN {
        return fail("must be at most 128 characters long");
    }
    if !value.bytes().all(is_name_byte) {
        return fail("may only use the characters A-Z a-z 0-9 . _ : @ -");
    }
    Ok(())
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_through_strings() {
        for action in Action::ALL {
            assert_eq!(action.as_str().parse::<Action>().unwrap(), action);
            assert_eq!(action.to_string(), action.as_str());
        }
        assert!(matches!("READ".parse::<Action>(), Err(PolicyError::InvalidAction(_))));
        assert!("*".parse::<Action>().is_err());
        assert!("".parse::<Action>().is_err());
        // serde's renaming must agree with the policy spelling.
        assert_eq!(serde_json::to_string(&Action::Act).unwrap(), "\"act\"");
        assert_eq!(serde_json::from_str::<Action>("\"admin\"").unwrap(), Action::Admin);
    }

    #[test]
    fn names_follow_the_documented_rules() {
        for ok in ["alice", "gateway-7", "svc.metrics", "team:ops", "bob@example.org", "_x", &"a".repeat(128)] {
            assert!(validate_name("subject", ok).is_ok(), "{ok} should be valid");
        }
        for bad in ["", "a b", "a,b", "a/b", "a*", "é", "#x", &"a".repeat(129)] {
            let err = validate_name("role", bad).unwrap_err();
            assert!(matches!(err, PolicyError::InvalidName { field: "role", .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn anonymous_has_no_roles() {
        let anon = Principal::anonymous();
        assert_eq!(anon.subject, "anonymous");
        assert!(anon.roles.is_empty());
        assert!(anon.is_anonymous());
        assert!(!Principal::new("anonymous", vec!["x".into()]).is_anonymous());
    }
}
