//! The runtime's error type.

use crate::{PluginState, manifest::ManifestError};

/// Why a runtime operation failed. Callers branch on the variant, never on the text.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The manifest is invalid; the error names each offending key.
    #[error("invalid manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// Something else the caller sent is invalid (grant, configuration, wasm digest, hub version); the message
    /// names the field.
    #[error("{0}")]
    InvalidInput(String),
    /// No plugin has this id.
    #[error("plugin {0:?} is not installed")]
    NotFound(String),
    /// A plugin with this id is already installed (use upgrade).
    #[error("plugin {0:?} is already installed")]
    AlreadyExists(String),
    /// The plugin is not in a state that accepts the operation.
    #[error("plugin {id:?} is {state}")]
    NotRunning {
        /// The plugin.
        id: String,
        /// Its state.
        state: PluginState,
    },
    /// The wasm module cannot be compiled or linked (invalid wasm, imports the host does not offer, WASI).
    #[error("plugin {id:?}: the module cannot be loaded: {reason}")]
    Load {
        /// The plugin.
        id: String,
        /// Why.
        reason: String,
    },
    /// A call into the plugin failed: trap, panic, deadline, memory limit, or output that does not decode.
    #[error("plugin {id:?}: {kind}: {message}")]
    PluginTrap {
        /// The plugin.
        id: String,
        /// What kind of failure.
        kind: crate::instance::FailureKind,
        /// Details.
        message: String,
    },
    /// The plugin's queue is full or it did not answer in time.
    #[error("plugin {0:?} is busy")]
    Busy(String),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] hub_store::StoreError),
    /// Reading or writing the plugin directory failed.
    #[error("plugin files: {0}")]
    Io(String),
    /// The runtime is shutting down.
    #[error("the plugin runtime is shutting down")]
    Closed,
}
