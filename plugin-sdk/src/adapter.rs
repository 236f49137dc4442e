//! The trait a plugin implements, and the context it is called with.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::abi::{ActRequest, CallRequest, InboundMessage, LogLevel, LogLine, Output};

/// A protocol adapter (or rule app): pure code that turns inbound messages into resource updates and ACT
/// requests into outbound messages.
///
/// Export an implementation with [`export_adapter!`](crate::export_adapter); unit-test it natively with
/// [`TestKit`](crate::testkit::TestKit).
///
/// Every method runs inside one host call with a deadline and a memory limit. A panic fails the call (the host
/// restarts the plugin with backoff); report bad input through [`Context::warn`] and carry on instead.
pub trait Adapter: Sized + 'static {
    /// Builds the adapter from its configuration (the manifest's `[config]` table, or what an admin set, as
    /// JSON). An error fails the start of the plugin.
    fn init(ctx: &mut Context<'_>, config: Value) -> Result<Self, String>;

    /// Handles one batch of inbound messages, oldest first.
    fn on_messages(&mut self, ctx: &mut Context<'_>, batch: &[InboundMessage]) -> Output;

    /// Carries out an ACT on a resource the plugin owns. `Ok` carries the action's result; the outbound
    /// messages in `out` carry the command to the device. The default refuses every action.
    fn on_act(&mut self, ctx: &mut Context<'_>, request: &ActRequest, out: &mut Output) -> Result<Value, String> {
        let _ = (ctx, out);
        Err(format!("{}/{}/{} is not an action of this plugin", request.provider, request.service, request.resource))
    }

    /// Called every `tick_ms` (manifest) to poll devices or expire state. The default does nothing.
    fn on_tick(&mut self, ctx: &mut Context<'_>) -> Output {
        let _ = ctx;
        Output::new()
    }

    /// Runs a rule's `call` action (rule apps, manifest kind `app`): logic the rule language cannot say. `Ok`
    /// carries a result recorded in the rule's firing history; `out` carries the effects (updates within the
    /// plugin's granted namespace, outbound messages, log lines), applied like any other output. The default
    /// refuses: adapters are not rule apps.
    fn on_call(&mut self, ctx: &mut Context<'_>, request: &CallRequest, out: &mut Output) -> Result<Value, String> {
        let _ = out;
        Err(format!("{} is not a rule app (called by rule {})", ctx.plugin_id(), request.rule))
    }
}

/// Where a plugin's key-value state lives: the host (in a plugin) or memory (in the [`TestKit`]).
///
/// The host keeps the state durable across restarts and upgrades. Writes made during a call that fails are
/// discarded.
///
/// [`TestKit`]: crate::testkit::TestKit
pub trait StateStore {
    /// The value of `key`, if any.
    fn get(&mut self, key: &str) -> Option<Vec<u8>>;
    /// Sets `key` to `value`.
    fn set(&mut self, key: &str, value: &[u8]);
    /// Removes `key`.
    fn delete(&mut self, key: &str);
}

/// What a call can reach besides its input: the plugin's id, the time, its state, and its log.
pub struct Context<'a> {
    plugin_id: &'a str,
    now_us: i64,
    state: &'a mut dyn StateStore,
    logs: Vec<LogLine>,
}

impl<'a> Context<'a> {
    /// A context over `state`. Plugins get theirs from the SDK's glue; tests from the [`TestKit`].
    ///
    /// [`TestKit`]: crate::testkit::TestKit
    pub fn new(plugin_id: &'a str, now_us: i64, state: &'a mut dyn StateStore) -> Self {
        Context { plugin_id, now_us, state, logs: Vec::new() }
    }

    /// The plugin's id, as installed.
    pub fn plugin_id(&self) -> &str {
        self.plugin_id
    }

    /// The current time of the call, in microseconds since the Unix epoch.
    pub fn now_us(&self) -> i64 {
        self.now_us
    }

    /// Reads a state value.
    pub fn state_get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.state.get(key)
    }

    /// Writes a state value (at most [`MAX_VALUE_BYTES`](crate::abi::state_limits::MAX_VALUE_BYTES); larger
    /// values fail the call).
    pub fn state_set(&mut self, key: &str, value: &[u8]) {
        self.state.set(key, value);
    }

    /// Deletes a state value.
    pub fn state_delete(&mut self, key: &str) {
        self.state.delete(key);
    }

    /// Reads a state value stored with [`Context::state_set_json`]; `None` when absent or not decodable.
    pub fn state_get_json<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        self.state.get(key).and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }

    /// Writes a state value as JSON.
    pub fn state_set_json<T: Serialize>(&mut self, key: &str, value: &T) {
        if let Ok(bytes) = serde_json::to_vec(value) {
            self.state.set(key, &bytes);
        }
    }

    /// Adds a log line at `level`.
    pub fn log(&mut self, level: LogLevel, message: impl Into<String>) {
        self.logs.push(LogLine { level, message: message.into() });
    }

    /// Adds a debug line.
    pub fn debug(&mut self, message: impl Into<String>) {
        self.log(LogLevel::Debug, message);
    }

    /// Adds an info line.
    pub fn info(&mut self, message: impl Into<String>) {
        self.log(LogLevel::Info, message);
    }

    /// Adds a warning (e.g. a malformed payload that was skipped).
    pub fn warn(&mut self, message: impl Into<String>) {
        self.log(LogLevel::Warn, message);
    }

    /// Adds an error line.
    pub fn error(&mut self, message: impl Into<String>) {
        self.log(LogLevel::Error, message);
    }

    /// Takes the log lines written so far.
    pub fn take_logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.logs)
    }
}

/// Runs one ABI call natively: shared by the wasm glue and the test kit so both behave the same.
pub(crate) mod dispatch {
    use super::*;
    use crate::abi::{ABI_VERSION, ActResponse, InitReply, InitRequest, MessageBatch, TickRequest};

    pub(crate) fn init<A: Adapter>(
        state: &mut dyn StateStore,
        request: InitRequest,
    ) -> Result<(A, InitReply, Vec<LogLine>), String> {
        let mut ctx = Context::new(&request.plugin_id, request.now_us, state);
        let adapter = A::init(&mut ctx, request.config)?;
        let logs = ctx.take_logs();
        Ok((adapter, InitReply { abi_version: ABI_VERSION }, logs))
    }

    pub(crate) fn messages<A: Adapter>(
        adapter: &mut A,
        plugin_id: &str,
        state: &mut dyn StateStore,
        batch: MessageBatch,
    ) -> Output {
        let mut ctx = Context::new(plugin_id, batch.now_us, state);
        let mut out = adapter.on_messages(&mut ctx, &batch.messages);
        out.logs.extend(ctx.take_logs());
        out
    }

    pub(crate) fn act<A: Adapter>(
        adapter: &mut A,
        plugin_id: &str,
        state: &mut dyn StateStore,
        request: ActRequest,
    ) -> ActResponse {
        respond(plugin_id, request.now_us, state, |ctx, out| adapter.on_act(ctx, &request, out))
    }

    pub(crate) fn call<A: Adapter>(
        adapter: &mut A,
        plugin_id: &str,
        state: &mut dyn StateStore,
        request: CallRequest,
    ) -> ActResponse {
        respond(plugin_id, request.now_us, state, |ctx, out| adapter.on_call(ctx, &request, out))
    }

    /// Runs a request that answers with a result and effects (`on_act`, `on_call`).
    fn respond(
        plugin_id: &str,
        now_us: i64,
        state: &mut dyn StateStore,
        handle: impl FnOnce(&mut Context<'_>, &mut Output) -> Result<Value, String>,
    ) -> ActResponse {
        let mut ctx = Context::new(plugin_id, now_us, state);
        let mut output = Output::new();
        let answer = handle(&mut ctx, &mut output);
        output.logs.extend(ctx.take_logs());
        match answer {
            Ok(result) => ActResponse::Done { result, output },
            Err(reason) => ActResponse::Refused { reason, output },
        }
    }

    pub(crate) fn tick<A: Adapter>(
        adapter: &mut A,
        plugin_id: &str,
        state: &mut dyn StateStore,
        request: TickRequest,
    ) -> Output {
        let mut ctx = Context::new(plugin_id, request.now_us, state);
        let mut out = adapter.on_tick(&mut ctx);
        out.logs.extend(ctx.take_logs());
        out
    }
}
