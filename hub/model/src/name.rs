use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ModelError;

/// The longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// A validated provider, service or resource name.
///
/// Names use the characters `A–Z a–z 0–9 . - _`, are 1 to 128 bytes long, start with a letter, a digit or `_`,
/// and are never `.` or `..`. Dots are ordinary characters everywhere (paths use `/` as the separator), so
/// `building.3` is a name like any other in URLs, streams, filters and history queries. Names are cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    /// Validates `s` and wraps it.
    pub fn new(s: &str) -> Result<Self, ModelError> {
        validate(s)?;
        Ok(Name(Arc::from(s)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(s: &str) -> Result<(), ModelError> {
    let fail = |reason| Err(ModelError::InvalidName { name: s.chars().take(MAX_NAME_LEN + 8).collect(), reason });
    if s.is_empty() {
        return fail("a name cannot be empty");
    }
    if s.len() > MAX_NAME_LEN {
        return fail("a name is at most 128 bytes long");
    }
    let first = s.as_bytes()[0];
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return fail("a name starts with a letter, a digit or '_'");
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
        return fail("a name uses only A-Z, a-z, 0-9, '.', '-' and '_'");
    }
    Ok(())
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::new(s)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Name::new(&s).map_err(serde::de::Error::custom)
    }
}

/// The address of one resource: `provider/service/resource`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourcePath {
    /// The provider (device or thing).
    pub provider: Name,
    /// The service inside the provider.
    pub service: Name,
    /// The resource inside the service.
    pub resource: Name,
}

impl ResourcePath {
    /// Builds a path from three already validated names.
    pub fn new(provider: Name, service: Name, resource: Name) -> Self {
        ResourcePath { provider, service, resource }
    }

    /// Validates three strings and builds a path.
    pub fn parse_parts(provider: &str, service: &str, resource: &str) -> Result<Self, ModelError> {
        Ok(ResourcePath::new(Name::new(provider)?, Name::new(service)?, Name::new(resource)?))
    }
}

impl FromStr for ResourcePath {
    type Err = ModelError;
    /// Parses `provider/service/resource`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(p), Some(sv), Some(r), None) => ResourcePath::parse_parts(p, sv, r),
            _ => Err(ModelError::InvalidName {
                name: s.chars().take(3 * MAX_NAME_LEN + 2).collect(),
                reason: "a resource path has the form provider/service/resource",
            }),
        }
    }
}

impl fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.provider, self.service, self.resource)
    }
}

impl fmt::Debug for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for ResourcePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_character_set() {
        for ok in ["a", "noise-12", "building.3", "_x", "9lives", "a.b.c-d_e", &"x".repeat(128)] {
            assert!(Name::new(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn rejects_everything_else_with_a_reason() {
        for bad in ["", ".", "..", ".hidden", "-x", "a/b", "a b", "é", "a%2F", "a*", &"x".repeat(129)] {
            let err = Name::new(bad).unwrap_err();
            assert!(matches!(err, ModelError::InvalidName { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn paths_with_dots_round_trip() {
        let p: ResourcePath = "site.a/env.v2/temp.c".parse().unwrap();
        assert_eq!(p.provider.as_str(), "site.a");
        assert_eq!(p.service.as_str(), "env.v2");
        assert_eq!(p.to_string(), "site.a/env.v2/temp.c");
        assert!("a/b".parse::<ResourcePath>().is_err());
        assert!("a/b/c/d".parse::<ResourcePath>().is_err());
    }
}
