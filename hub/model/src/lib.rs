//! The hub's digital-twin model, with no I/O and no async runtime.
//!
//! A city is a set of **providers** (devices or logical things), each with **services** (functional groups),
//! each with **resources** (values). This crate owns the vocabulary every other crate speaks: validated
//! [`Name`]s and [`ResourcePath`]s, resource [`ResourceKind`]s and [`ValueType`]s, [`Timestamp`]s, the in-memory
//! [`Provider`] tree with its typing rules, and the [`Update`] that flows from a transport to the twin.

mod error;
mod glob;
mod name;
mod provider;
mod time;
mod value;

pub use error::ModelError;
pub use glob::Glob;
pub use name::{Name, ResourcePath};
pub use provider::{
    ADMIN_SERVICE, AdminResource, MetaEntry, Provider, ProviderDoc, Resource, ResourceDoc, Service, ServiceDoc,
};
pub use time::Timestamp;
pub use value::{GeoPoint, ResourceKind, ValueType};

/// One new value for one resource, as it arrives from a transport, a plugin or the HTTP API.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// Which resource the value is for.
    pub path: ResourcePath,
    /// The value itself.
    pub value: serde_json::Value,
    /// When the value was measured (or received, when the source does not say).
    pub timestamp: Timestamp,
}
