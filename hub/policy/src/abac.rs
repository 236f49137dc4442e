//! Attributes: the data class and labels of objects, and how a data class bounds who may read.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::truncate_for_message;

/// How sensitive an object's data is. A class bounds who may **read** it; the other actions are decided by the
/// permissions alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataClass {
    /// Open data: everyone may read it, citizens and anonymous requests included.
    Open,
    /// Inside City Hall: readable by the staff of the hub's own city (subjects with a department), and by the
    /// staff of other cities that a permission names.
    Closed,
    /// Like closed, and the reader also needs a clearance of at least the object's level (1 unless labelled)
    /// and, when the object names a department, to work in it.
    Confidential,
    /// Personal data: only its owner, and whom the owner granted (`c` lines), may read it.
    Personal,
}

impl DataClass {
    /// The policy and metadata spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            DataClass::Open => "open",
            DataClass::Closed => "closed",
            DataClass::Confidential => "confidential",
            DataClass::Personal => "personal",
        }
    }
}

impl fmt::Display for DataClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(DataClass::Open),
            "closed" => Ok(DataClass::Closed),
            "confidential" => Ok(DataClass::Confidential),
            "personal" => Ok(DataClass::Personal),
            other => Err(format!(
                "unknown data class {:?}: expected open, closed, confidential or personal",
                truncate_for_message(other)
            )),
        }
    }
}

/// The metadata keys an object's own labels are read from.
pub mod metadata_keys {
    /// `open`, `closed`, `confidential` or `personal`.
    pub const CLASS: &str = "data_class";
    /// The clearance level confidential data needs (a whole number 0–255).
    pub const CLEARANCE: &str = "clearance";
    /// The department the data belongs to.
    pub const DEPARTMENT: &str = "department";
    /// The subject personal data belongs to.
    pub const OWNER: &str = "owner";
}

/// Labels of one object: set by `o` lines of the policy or by the object's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Labels {
    /// The data class; unclassified objects are decided by the permissions alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<DataClass>,
    /// The clearance confidential data needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clearance: Option<u8>,
    /// The department the data belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    /// The owner of personal data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl Labels {
    /// Labels from metadata values (`None` where a key is absent).
    ///
    /// A value that is present but invalid fails closed: an unknown class, or a clearance that is not a whole
    /// number from 0 to 255, makes the object personal data without an owner, which nobody may read, rather
    /// than leaving it less protected than its writer meant.
    pub fn from_metadata(
        class: Option<&str>,
        clearance: Option<Result<u8, ()>>,
        department: Option<&str>,
        owner: Option<&str>,
    ) -> Labels {
        let class = class.map(|c| c.parse::<DataClass>());
        if matches!(class, Some(Err(_))) || matches!(clearance, Some(Err(()))) {
            return Labels { class: Some(DataClass::Personal), ..Labels::default() };
        }
        Labels {
            class: class.and_then(Result::ok),
            clearance: clearance.and_then(Result::ok),
            department: department.map(str::to_owned),
            owner: owner.map(str::to_owned),
        }
    }

    /// Whether no label is set.
    pub fn is_empty(&self) -> bool {
        *self == Labels::default()
    }
}

/// Where the labels an object carries in its own metadata come from: the hub's live model.
///
/// The engine asks it on checks when the policy alone leaves an object's class unset; it must be cheap (a
/// lookup, no I/O) and must not call back into the engine.
pub trait LabelSource: Send + Sync + 'static {
    /// The labels the object's metadata sets; [`Labels::default`] when it sets none or is not a resource.
    fn labels(&self, object: &str) -> Labels;
}

/// Where one label of a resolved object came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelOrigin {
    /// An `o` line of the policy, by its 1-based line number.
    Policy(usize),
    /// The object's metadata.
    Metadata,
}

/// One label with its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Labelled<T> {
    /// The value.
    pub value: T,
    /// Where it was set.
    pub origin: LabelOrigin,
}

/// The labels in force for an object: the policy's `o` lines first (the first matching line per label), its
/// metadata for the labels they leave unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ResolvedLabels {
    /// The data class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<Labelled<DataClass>>,
    /// The clearance needed for confidential data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clearance: Option<Labelled<u8>>,
    /// The department.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department: Option<Labelled<String>>,
    /// The owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Labelled<String>>,
}

impl ResolvedLabels {
    /// Fills the labels still unset from metadata.
    pub(crate) fn fill_from(&mut self, metadata: Labels) {
        fn fill<T>(slot: &mut Option<Labelled<T>>, value: Option<T>) {
            if slot.is_none()
                && let Some(value) = value
            {
                *slot = Some(Labelled { value, origin: LabelOrigin::Metadata });
            }
        }
        fill(&mut self.class, metadata.class);
        fill(&mut self.clearance, metadata.clearance);
        fill(&mut self.department, metadata.department);
        fill(&mut self.owner, metadata.owner);
    }

    /// Whether every label is set, so metadata can add nothing.
    pub(crate) fn is_complete(&self) -> bool {
        self.class.is_some() && self.clearance.is_some() && self.department.is_some() && self.owner.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_trip() {
        for class in [DataClass::Open, DataClass::Closed, DataClass::Confidential, DataClass::Personal] {
            assert_eq!(class.as_str().parse::<DataClass>().unwrap(), class);
            assert_eq!(serde_json::to_string(&class).unwrap(), format!("\"{class}\""));
        }
        assert!("secret".parse::<DataClass>().unwrap_err().contains("unknown data class \"secret\""));
    }

    #[test]
    fn invalid_metadata_fails_closed() {
        let bad_class = Labels::from_metadata(Some("secret"), None, Some("environment"), Some("alice"));
        assert_eq!(bad_class, Labels { class: Some(DataClass::Personal), ..Labels::default() });
        let bad_clearance = Labels::from_metadata(Some("open"), Some(Err(())), None, None);
        assert_eq!(bad_clearance.class, Some(DataClass::Personal));
        let good = Labels::from_metadata(Some("confidential"), Some(Ok(3)), Some("police"), None);
        assert_eq!(good.class, Some(DataClass::Confidential));
        assert_eq!(good.clearance, Some(3));
        assert_eq!(good.department.as_deref(), Some("police"));
    }
}
