use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use hub_model::{Glob, ResourcePath};
use serde_json::Value;

/// Why an owner could not carry out an action.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// The owner refused the parameters.
    #[error("the owner refused the action: {0}")]
    Refused(String),
    /// The owner did not answer in time.
    #[error("the owner did not answer in time")]
    Timeout,
    /// The owner failed.
    #[error("the owner failed: {0}")]
    Failed(String),
}

/// Carries out ACT requests for the providers it owns (a protocol adapter, a rule app).
#[async_trait]
pub trait ActHandler: Send + Sync + 'static {
    /// Performs the action; the returned value is the action's result.
    async fn act(&self, path: &ResourcePath, params: serde_json::Map<String, Value>) -> Result<Value, ActError>;
}

/// Which handler owns which providers. Lookups are lock-free; registration swaps the whole table.
#[derive(Default)]
pub struct ActRegistry {
    owners: ArcSwap<Vec<(Glob, Arc<dyn ActHandler>)>>,
}

impl ActRegistry {
    /// Registers `handler` for providers matching `providers` (a glob). When several globs match a provider, the
    /// most specific (most literal characters) owns it, so `lora-*` beats `*` whatever the order; among equally
    /// specific ones the latest registration wins.
    pub fn register(&self, providers: Glob, handler: Arc<dyn ActHandler>) {
        self.owners.rcu(|current| {
            let mut next = Vec::with_capacity(current.len() + 1);
            next.push((providers.clone(), handler.clone()));
            next.extend(current.iter().cloned());
            // Stable: equally specific globs keep latest-first order.
            next.sort_by_key(|(g, _)| std::cmp::Reverse(g.specificity()));
            next
        });
    }

    /// Removes every registration of `handler` (compared by identity), whatever its globs.
    pub fn unregister(&self, handler: &Arc<dyn ActHandler>) {
        self.owners
            .rcu(|current| current.iter().filter(|(_, h)| !Arc::ptr_eq(h, handler)).cloned().collect::<Vec<_>>());
    }

    /// The handler for a resource's provider, if any.
    pub fn owner(&self, path: &ResourcePath) -> Option<Arc<dyn ActHandler>> {
        self.owners.load().iter().find(|(g, _)| g.matches(path.provider.as_str())).map(|(_, h)| h.clone())
    }
}
