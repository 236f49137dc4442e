//! Unit-test a plugin natively, without the hub and without wasm.
//!
//! The [`TestKit`] drives an [`Adapter`] exactly as the host does: every input and output goes through the
//! ABI's JSON encoding, state lives in memory, and state written by a call that panics is discarded.
//!
//! ```
//! use hub_plugin_sdk::prelude::*;
//! use hub_plugin_sdk::testkit::TestKit;
//!
//! struct Counter;
//!
//! impl Adapter for Counter {
//!     fn init(_ctx: &mut Context<'_>, _config: Value) -> Result<Self, String> {
//!         Ok(Counter)
//!     }
//!
//!     fn on_messages(&mut self, ctx: &mut Context<'_>, batch: &[InboundMessage]) -> Output {
//!         let seen = ctx.state_get_json::<u64>("seen").unwrap_or(0) + batch.len() as u64;
//!         ctx.state_set_json("seen", &seen);
//!         let mut out = Output::new();
//!         out.update("counter-1", "stats", "seen", seen);
//!         out
//!     }
//! }
//!
//! let mut kit = TestKit::<Counter>::new(json!({})).unwrap();
//! let out = kit.messages(vec![InboundMessage::mqtt("a", "x", 0), InboundMessage::mqtt("a", "y", 0)]);
//! assert_eq!(out.updates[0].value, json!(2));
//! assert_eq!(kit.state_json::<u64>("seen"), Some(2));
//! ```

// ACT and call answers carry the plugin's whole `Output` on both sides, for the test to inspect; this runs
// natively in tests, where the size of a `Result` does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{
    abi::{
        ABI_VERSION, ActRequest, ActResponse, CallRequest, InboundMessage, InitRequest, LogLine, MessageBatch, Output,
        TickRequest,
    },
    adapter::{Adapter, StateStore, dispatch},
};

/// Key-value state in memory, with the host's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryState {
    /// The entries.
    pub entries: BTreeMap<String, Vec<u8>>,
}

impl StateStore for MemoryState {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.entries.get(key).cloned()
    }

    fn set(&mut self, key: &str, value: &[u8]) {
        use crate::abi::state_limits::*;
        assert!(
            key.len() <= MAX_KEY_BYTES,
            "state key longer than {MAX_KEY_BYTES} bytes: the host would fail this call"
        );
        assert!(
            value.len() <= MAX_VALUE_BYTES,
            "state value larger than {MAX_VALUE_BYTES} bytes: the host would fail this call"
        );
        self.entries.insert(key.to_owned(), value.to_vec());
        assert!(self.entries.len() <= MAX_KEYS, "more than {MAX_KEYS} state keys: the host would fail this call");
    }

    fn delete(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

/// Drives one adapter instance like the host would.
pub struct TestKit<A: Adapter> {
    adapter: A,
    plugin_id: String,
    now_us: i64,
    state: MemoryState,
    init_logs: Vec<LogLine>,
}

impl<A: Adapter> TestKit<A> {
    /// Starts the adapter with `config`, as plugin `test-plugin` with empty state, at time 0.
    pub fn new(config: Value) -> Result<Self, String> {
        Self::with_state("test-plugin", config, MemoryState::default())
    }

    /// Starts the adapter with `config` and existing state (e.g. from a previous kit, to test a restart).
    pub fn with_state(plugin_id: &str, config: Value, state: MemoryState) -> Result<Self, String> {
        let mut state = state;
        let request = InitRequest { plugin_id: plugin_id.to_owned(), abi_version: ABI_VERSION, config, now_us: 0 };
        let (adapter, _reply, init_logs) = dispatch::init::<A>(&mut state, round_trip(&request)?)?;
        Ok(TestKit { adapter, plugin_id: plugin_id.to_owned(), now_us: 0, state, init_logs })
    }

    /// Sets the time the next calls see, in microseconds since the Unix epoch.
    pub fn set_now(&mut self, now_us: i64) {
        self.now_us = now_us;
    }

    /// Calls `on_messages` with one batch; returns the output as the host would decode it.
    pub fn messages(&mut self, messages: Vec<InboundMessage>) -> Output {
        let batch = MessageBatch { now_us: self.now_us, messages };
        let (adapter, id) = (&mut self.adapter, self.plugin_id.clone());
        transactional(&mut self.state, |state| {
            round_trip(&dispatch::messages(adapter, &id, state, round_trip(&batch)?))
        })
        .unwrap_or_else(|e| panic!("on_messages failed: {e}"))
    }

    /// Calls `on_act`; `Ok((result, output))` when the plugin carried out the action, `Err((reason, output))`
    /// when it refused.
    pub fn act(
        &mut self,
        provider: &str,
        service: &str,
        resource: &str,
        params: Value,
    ) -> Result<(Value, Output), (String, Output)> {
        let request = ActRequest {
            provider: provider.to_owned(),
            service: service.to_owned(),
            resource: resource.to_owned(),
            params: object(params, "ACT parameters"),
            now_us: self.now_us,
        };
        let (adapter, id) = (&mut self.adapter, self.plugin_id.clone());
        answer(
            transactional(&mut self.state, |state| {
                round_trip(&dispatch::act(adapter, &id, state, round_trip(&request)?))
            })
            .unwrap_or_else(|e| panic!("on_act failed: {e}")),
        )
    }

    /// Calls `on_call` as rule `rule` would, with `params` (a JSON object) and no trigger.
    pub fn call(&mut self, rule: &str, params: Value) -> Result<(Value, Output), (String, Output)> {
        let request = CallRequest {
            rule: rule.to_owned(),
            plugin: None,
            params: object(params, "call parameters"),
            bindings: Default::default(),
            trigger: None,
            now_us: self.now_us,
        };
        let (adapter, id) = (&mut self.adapter, self.plugin_id.clone());
        answer(
            transactional(&mut self.state, |state| {
                round_trip(&dispatch::call(adapter, &id, state, round_trip(&request)?))
            })
            .unwrap_or_else(|e| panic!("on_call failed: {e}")),
        )
    }

    /// Calls `on_tick`.
    pub fn tick(&mut self) -> Output {
        let request = TickRequest { now_us: self.now_us };
        let (adapter, id) = (&mut self.adapter, self.plugin_id.clone());
        transactional(&mut self.state, |state| round_trip(&dispatch::tick(adapter, &id, state, round_trip(&request)?)))
            .unwrap_or_else(|e| panic!("on_tick failed: {e}"))
    }

    /// The log lines `init` wrote.
    pub fn init_logs(&self) -> &[LogLine] {
        &self.init_logs
    }

    /// The adapter.
    pub fn adapter(&self) -> &A {
        &self.adapter
    }

    /// The state.
    pub fn state(&self) -> &MemoryState {
        &self.state
    }

    /// One state value decoded as JSON.
    pub fn state_json<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.state.entries.get(key).and_then(|bytes| serde_json::from_slice(bytes).ok())
    }

    /// Ends the instance and hands back its state, as a restart or upgrade would keep it.
    pub fn into_state(self) -> MemoryState {
        self.state
    }
}

/// Runs `f` on a copy of the state and keeps the copy only if `f` succeeds, as the host does.
/// Parameters as a JSON object (`null` is none); anything else is a mistake in the test.
fn object(params: Value, what: &str) -> serde_json::Map<String, Value> {
    match params {
        Value::Object(map) => map,
        Value::Null => serde_json::Map::new(),
        other => panic!("{what} must be a JSON object, got {other}"),
    }
}

/// An ACT or call response as the test sees it.
fn answer(response: ActResponse) -> Result<(Value, Output), (String, Output)> {
    match response {
        ActResponse::Done { result, output } => Ok((result, output)),
        ActResponse::Refused { reason, output } => Err((reason, output)),
    }
}

fn transactional<T>(
    state: &mut MemoryState,
    f: impl FnOnce(&mut MemoryState) -> Result<T, String>,
) -> Result<T, String> {
    let mut scratch = state.clone();
    let out = f(&mut scratch)?;
    *state = scratch;
    Ok(out)
}

/// Encodes and decodes through JSON, as the sandbox boundary does.
fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> Result<T, String> {
    let bytes = serde_json::to_vec(value).map_err(|e| format!("encoding failed: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("decoding failed: {e}"))
}
