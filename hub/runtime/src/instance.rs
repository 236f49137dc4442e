//! One plugin module on extism: compiling it (once per version), creating instances, calling exports, and the
//! key-value state the host functions expose.
//!
//! Everything here blocks (compilation, wasm execution) and is called from blocking threads only.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, PoisonError},
    time::Duration,
};

use extism::{CompiledPlugin, CurrentPlugin, Function, PTR, PluginBuilder, UserData, Val};
use hub_plugin_sdk::abi::{InitReply, InitRequest, exports, imports, state_limits};
use serde::{Serialize, de::DeserializeOwned};

use crate::manifest::Manifest;

/// What kind of failure a call ended in (for counters and messages; the handling is the same for all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The call exceeded its deadline.
    Timeout,
    /// The module trapped: a panic, `unreachable`, an out-of-bounds access, or memory exhaustion.
    Trap,
    /// The output does not decode as the ABI type.
    Garbage,
    /// The instance could not be created or its `init` failed.
    Start,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Timeout => "call exceeded its deadline",
            FailureKind::Trap => "call trapped",
            FailureKind::Garbage => "call returned malformed output",
            FailureKind::Start => "instance failed to start",
        })
    }
}

/// A failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    /// What kind.
    pub kind: FailureKind,
    /// Details, for the log and `last_error`.
    pub message: String,
}

impl fmt::Display for CallFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// The longest error text kept from a plugin.
const MAX_ERROR_CHARS: usize = 512;

fn failure(kind: FailureKind, message: impl fmt::Display) -> CallFailure {
    let mut message = message.to_string();
    if message.len() > MAX_ERROR_CHARS {
        let mut cut = MAX_ERROR_CHARS;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    CallFailure { kind, message }
}

/// A plugin's key-value state: what is durable (`committed`) and what the current call wrote (`pending`).
/// Writes of a failed call are discarded, so state never reflects half a call.
#[derive(Debug, Default)]
pub struct StateCell {
    committed: BTreeMap<String, Vec<u8>>,
    pending: BTreeMap<String, Option<Vec<u8>>>,
}

impl StateCell {
    /// State loaded from the store.
    pub fn new(committed: BTreeMap<String, Vec<u8>>) -> Self {
        StateCell { committed, pending: BTreeMap::new() }
    }

    fn get(&self, key: &str) -> Option<&[u8]> {
        match self.pending.get(key) {
            Some(pending) => pending.as_deref(),
            None => self.committed.get(key).map(Vec::as_slice),
        }
    }

    fn set(&mut self, key: String, value: Option<Vec<u8>>) -> Result<(), String> {
        if key.len() > state_limits::MAX_KEY_BYTES {
            return Err(format!("state key longer than {} bytes", state_limits::MAX_KEY_BYTES));
        }
        if value.as_ref().is_some_and(|v| v.len() > state_limits::MAX_VALUE_BYTES) {
            return Err(format!("state value larger than {} bytes", state_limits::MAX_VALUE_BYTES));
        }
        let value = value.filter(|v| !v.is_empty());
        if value.is_some() && self.get(&key).is_none() {
            let live = self.committed.len() + self.pending.values().filter(|v| v.is_some()).count();
            if live >= state_limits::MAX_KEYS {
                return Err(format!("more than {} state keys", state_limits::MAX_KEYS));
            }
        }
        self.pending.insert(key, value);
        Ok(())
    }

    /// Makes the current call's writes durable in memory; returns them for the store.
    pub fn commit(&mut self) -> BTreeMap<String, Option<Vec<u8>>> {
        let pending = std::mem::take(&mut self.pending);
        for (key, value) in &pending {
            match value {
                Some(v) => {
                    self.committed.insert(key.clone(), v.clone());
                }
                None => {
                    self.committed.remove(key);
                }
            }
        }
        pending
    }

    /// Forgets the current call's writes.
    pub fn discard(&mut self) {
        self.pending.clear();
    }

    /// The committed entries.
    pub fn entries(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.committed
    }
}

/// The state shared between a plugin's host functions and its driver.
pub type SharedState = UserData<StateCell>;

/// Locks the state behind a [`SharedState`].
pub fn with_state<T>(state: &SharedState, f: impl FnOnce(&mut StateCell) -> T) -> Result<T, String> {
    let cell = state.get().map_err(|e| e.to_string())?;
    let mut guard = cell.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(f(&mut guard))
}

fn first_arg<'a>(inputs: &'a [Val], name: &str) -> Result<&'a Val, extism::Error> {
    inputs.first().ok_or_else(|| extism::Error::msg(format!("{name}: missing argument")))
}

fn read_string(plugin: &mut CurrentPlugin, val: &Val) -> Result<String, extism::Error> {
    let bytes: &[u8] = plugin.memory_get_val(val)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| extism::Error::msg("state key is not UTF-8"))
}

fn state_functions(state: &SharedState) -> Vec<Function> {
    let get = Function::new(
        imports::STATE_GET,
        [PTR],
        [PTR],
        state.clone(),
        |plugin: &mut CurrentPlugin, inputs: &[Val], outputs: &mut [Val], state: SharedState| {
            let key = read_string(plugin, first_arg(inputs, imports::STATE_GET)?)?;
            let value = with_state(&state, |s| s.get(&key).map(<[u8]>::to_vec)).map_err(extism::Error::msg)?;
            let offset = match value {
                Some(bytes) => {
                    let handle = plugin.memory_new(bytes)?;
                    plugin.memory_to_val(handle)
                }
                None => Val::I64(0),
            };
            if let Some(slot) = outputs.first_mut() {
                *slot = offset;
            }
            Ok(())
        },
    );
    let set = Function::new(
        imports::STATE_SET,
        [PTR, PTR],
        [],
        state.clone(),
        |plugin: &mut CurrentPlugin, inputs: &[Val], _outputs: &mut [Val], state: SharedState| {
            let key = read_string(plugin, first_arg(inputs, imports::STATE_SET)?)?;
            let value_arg = inputs.get(1).ok_or_else(|| extism::Error::msg("hub_state_set: missing value"))?;
            let value: Vec<u8> = plugin.memory_get_val::<&[u8]>(value_arg)?.to_vec();
            with_state(&state, |s| s.set(key, Some(value))).map_err(extism::Error::msg)?.map_err(extism::Error::msg)
        },
    );
    let delete = Function::new(
        imports::STATE_DELETE,
        [PTR],
        [],
        state.clone(),
        |plugin: &mut CurrentPlugin, inputs: &[Val], _outputs: &mut [Val], state: SharedState| {
            let key = read_string(plugin, first_arg(inputs, imports::STATE_DELETE)?)?;
            with_state(&state, |s| s.set(key, None)).map_err(extism::Error::msg)?.map_err(extism::Error::msg)
        },
    );
    vec![get, set, delete]
}

/// A compiled module: compiled once per installed version, instantiated on every (re)start.
#[derive(Clone)]
pub struct Module {
    compiled: Arc<CompiledPlugin>,
}

impl Module {
    /// Compiles `wasm` under the manifest's limits, linked to the state functions over `state`. No WASI, no
    /// HTTP, no files: a module that imports anything else fails to link here.
    pub fn compile(wasm: &[u8], manifest: &Manifest, state: &SharedState) -> Result<Module, String> {
        let pages = manifest.limits.memory_mib.saturating_mul(16); // 64 KiB pages
        let mut extism_manifest = extism::Manifest::new([extism::Wasm::data(wasm.to_vec())])
            .with_memory_max(pages)
            .with_timeout(Duration::from_millis(manifest.limits.timeout_ms))
            .disallow_all_hosts();
        // Plugin state goes through the hub's state functions (durable, limited), not extism's volatile vars.
        extism_manifest.memory.max_var_bytes = Some(0);
        let builder = PluginBuilder::new(extism_manifest)
            .with_wasi(false)
            .with_cache_disabled()
            .with_functions(state_functions(state));
        let compiled = CompiledPlugin::new(builder).map_err(|e| format!("{e:#}"))?;
        // Linking happens at instantiation; try once so a bad module fails at install, not at first use.
        extism::Plugin::new_from_compiled(&compiled).map_err(|e| format!("{e:#}"))?;
        Ok(Module { compiled: Arc::new(compiled) })
    }

    /// Creates an instance and runs `hub_init`.
    pub fn start(&self, request: &InitRequest) -> Result<Instance, CallFailure> {
        let plugin = extism::Plugin::new_from_compiled(&self.compiled)
            .map_err(|e| failure(FailureKind::Start, format!("{e:#}")))?;
        let mut instance = Instance { plugin };
        let reply: InitReply = instance
            .call(exports::INIT, request)
            .map_err(|f| CallFailure { kind: FailureKind::Start, message: format!("init: {}", f.message) })?;
        if reply.abi_version != request.abi_version {
            return Err(failure(
                FailureKind::Start,
                format!(
                    "the module speaks ABI version {}, the manifest says {}",
                    reply.abi_version, request.abi_version
                ),
            ));
        }
        Ok(instance)
    }
}

/// A live instance. Calls block; run them on a blocking thread.
pub struct Instance {
    plugin: extism::Plugin,
}

impl Instance {
    /// A handle that cancels a running call from another thread.
    pub fn cancel_handle(&self) -> extism::CancelHandle {
        self.plugin.cancel_handle()
    }

    /// Calls `export` with `input` as JSON and decodes its JSON output.
    pub fn call<I: Serialize, O: DeserializeOwned>(&mut self, export: &str, input: &I) -> Result<O, CallFailure> {
        let bytes =
            serde_json::to_vec(input).map_err(|e| failure(FailureKind::Garbage, format!("encoding input: {e}")))?;
        let output: &[u8] = self.plugin.call(export, bytes).map_err(|e| {
            let text = format!("{e:#}");
            let kind = if text.contains("timeout") { FailureKind::Timeout } else { FailureKind::Trap };
            failure(kind, text)
        })?;
        serde_json::from_slice(output).map_err(|e| failure(FailureKind::Garbage, e))
    }
}
