//! The wasm glue: host-function imports and the bodies of the exports [`export_adapter!`] declares.
//!
//! Only compiled for `wasm32`. Plugin authors use [`export_adapter!`]; nothing here is meant to be called
//! directly.
//!
//! [`export_adapter!`]: crate::export_adapter

use std::{cell::RefCell, thread::LocalKey};

use extism_pdk::Memory;
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    abi::{ActRequest, CallRequest, InitRequest, MessageBatch, TickRequest},
    adapter::{Adapter, StateStore, dispatch},
};

#[link(wasm_import_module = "extism:host/user")]
unsafe extern "C" {
    fn hub_state_get(key: u64) -> u64;
    fn hub_state_set(key: u64, value: u64);
    fn hub_state_delete(key: u64);
}

/// The state as the host keeps it (see [`crate::abi::imports`]).
struct HostState;

impl StateStore for HostState {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let key = Memory::from_bytes(key).ok()?;
        // SAFETY: a host import taking an extism memory offset we own; it returns 0 or an offset it allocated.
        let found = unsafe { hub_state_get(key.offset()) };
        key.free();
        let value = Memory::find(found)?;
        let bytes = value.to_vec();
        value.free();
        Some(bytes)
    }

    fn set(&mut self, key: &str, value: &[u8]) {
        // The host reads an empty value as absent; deleting says so explicitly.
        if value.is_empty() {
            return self.delete(key);
        }
        let (Ok(key), Ok(value)) = (Memory::from_bytes(key), Memory::from_bytes(value)) else {
            return;
        };
        // SAFETY: both offsets are live extism memory blocks we allocated.
        unsafe { hub_state_set(key.offset(), value.offset()) };
        key.free();
        value.free();
    }

    fn delete(&mut self, key: &str) {
        let Ok(key) = Memory::from_bytes(key) else {
            return;
        };
        // SAFETY: the offset is a live extism memory block we allocated.
        unsafe { hub_state_delete(key.offset()) };
        key.free();
    }
}

/// One adapter instance per wasm instance, with the id it was started as.
pub struct Slot<A> {
    adapter: Option<A>,
    plugin_id: String,
}

impl<A> Slot<A> {
    /// An empty slot, for the `thread_local!` the macro declares.
    pub const fn new() -> Self {
        Slot { adapter: None, plugin_id: String::new() }
    }
}

impl<A> Default for Slot<A> {
    fn default() -> Self {
        Slot::new()
    }
}

type SlotKey<A> = LocalKey<RefCell<Slot<A>>>;

/// Body of `hub_init`.
pub fn init<A: Adapter>(slot: &'static SlotKey<A>) -> i32 {
    run(|request: InitRequest| {
        let id = request.plugin_id.clone();
        let (adapter, reply, _logs) = dispatch::init::<A>(&mut HostState, request)?;
        slot.with(|s| {
            let mut s = s.borrow_mut();
            s.adapter = Some(adapter);
            s.plugin_id = id;
        });
        Ok(reply)
    })
}

/// Body of `hub_on_messages`.
pub fn on_messages<A: Adapter>(slot: &'static SlotKey<A>) -> i32 {
    run(|batch: MessageBatch| with_adapter(slot, |adapter, id| dispatch::messages(adapter, id, &mut HostState, batch)))
}

/// Body of `hub_on_act`.
pub fn on_act<A: Adapter>(slot: &'static SlotKey<A>) -> i32 {
    run(|request: ActRequest| with_adapter(slot, |adapter, id| dispatch::act(adapter, id, &mut HostState, request)))
}

/// Body of `hub_on_call`.
pub fn on_call<A: Adapter>(slot: &'static SlotKey<A>) -> i32 {
    run(|request: CallRequest| with_adapter(slot, |adapter, id| dispatch::call(adapter, id, &mut HostState, request)))
}

/// Body of `hub_on_tick`.
pub fn on_tick<A: Adapter>(slot: &'static SlotKey<A>) -> i32 {
    run(|request: TickRequest| with_adapter(slot, |adapter, id| dispatch::tick(adapter, id, &mut HostState, request)))
}

fn with_adapter<A: Adapter, T>(slot: &'static SlotKey<A>, f: impl FnOnce(&mut A, &str) -> T) -> Result<T, String> {
    slot.with(|s| {
        let mut s = s.borrow_mut();
        let Slot { adapter, plugin_id } = &mut *s;
        match adapter {
            Some(adapter) => Ok(f(adapter, plugin_id)),
            None => Err("the plugin was called before hub_init".to_owned()),
        }
    })
}

/// Decodes the input, runs `f`, encodes its output; an error becomes the call's extism error (return code 1).
fn run<I: DeserializeOwned, O: Serialize>(f: impl FnOnce(I) -> Result<O, String>) -> i32 {
    let input = extism_pdk::input_bytes();
    let result = serde_json::from_slice::<I>(&input)
        .map_err(|e| format!("the host sent input this plugin cannot decode: {e}"))
        .and_then(f)
        .and_then(|out| serde_json::to_vec(&out).map_err(|e| format!("encoding the output failed: {e}")));
    match result {
        Ok(bytes) => match Memory::from_bytes(&bytes) {
            Ok(memory) => {
                memory.set_output();
                0
            }
            Err(_) => 1,
        },
        Err(message) => {
            if let Ok(memory) = Memory::from_bytes(&message) {
                // SAFETY: the offset is a live extism memory block we allocated; the host reads it as the error.
                unsafe { extism_pdk::extism::error_set(memory.offset()) };
            }
            1
        }
    }
}
