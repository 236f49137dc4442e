//! What the checker needs to know about the live model, as a trait the hub implements over its twin.

use std::collections::BTreeMap;

use hub_model::{Name, Provider, ResourceKind, ResourcePath, ValueType};
use serde::Serialize;

use crate::ast::PathPattern;

/// What the checker knows about one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceInfo {
    /// Sensor, state, property or action.
    pub kind: ResourceKind,
    /// The declared value type.
    pub value_type: ValueType,
    /// For actions: the parameters ACT takes, with their types.
    pub parameters: BTreeMap<Name, ValueType>,
}

/// A read-only view of the model the rules are checked against. The hub implements it over its twin; the
/// crate implements it for a slice of [`Provider`]s (tests, the studio's offline mode).
pub trait ModelView {
    /// The resource at `path`, if the model has it.
    fn resource(&self, path: &ResourcePath) -> Option<ResourceInfo>;

    /// Up to `limit` resource paths that `pattern` matches (its variables matching any name their glob
    /// accepts), in any order.
    fn matching(&self, pattern: &PathPattern, limit: usize) -> Vec<ResourcePath>;
}

impl ModelView for [Provider] {
    fn resource(&self, path: &ResourcePath) -> Option<ResourceInfo> {
        let provider = self.iter().find(|p| p.name == path.provider)?;
        let r = provider.resource(path.service.as_str(), path.resource.as_str())?;
        Some(ResourceInfo { kind: r.kind, value_type: r.value_type, parameters: r.parameters.clone() })
    }

    fn matching(&self, pattern: &PathPattern, limit: usize) -> Vec<ResourcePath> {
        let [p, ..] = &pattern.segments;
        self.iter()
            .filter(|provider| p.accepts(provider.name.as_str()))
            .flat_map(|provider| provider.resources().map(|(path, _)| path))
            .filter(|path| pattern.matches(path).is_some())
            .take(limit)
            .collect()
    }
}

impl ModelView for Vec<Provider> {
    fn resource(&self, path: &ResourcePath) -> Option<ResourceInfo> {
        self.as_slice().resource(path)
    }

    fn matching(&self, pattern: &PathPattern, limit: usize) -> Vec<ResourcePath> {
        self.as_slice().matching(pattern, limit)
    }
}
