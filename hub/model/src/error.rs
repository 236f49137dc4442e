use crate::{ResourceKind, ValueType};

/// Why the model refused something. Variants are stable: callers branch on them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A provider, service or resource name breaks the naming rules.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A value does not have the resource's declared type.
    #[error("{path}: expected a value of type {expected}, got {got}")]
    TypeMismatch { path: String, expected: ValueType, got: &'static str },
    /// A value is well-typed but outside what the resource accepts (e.g. a malformed GeoJSON point).
    #[error("{path}: {reason}")]
    InvalidValue { path: String, reason: String },
    /// The operation does not fit the resource's kind (SET on a sensor, ACT on a state, ...).
    #[error("{path}: a {kind} resource cannot be {operation}")]
    WrongKind { path: String, kind: ResourceKind, operation: &'static str },
    /// A model document redeclares an existing resource with another kind or type.
    #[error("{path}: already declared as {existing}, cannot redeclare as {requested}")]
    Redeclared { path: String, existing: String, requested: String },
    /// The thing asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A timestamp cannot be represented.
    #[error("invalid timestamp: {0}")]
    InvalidTimestamp(String),
}
