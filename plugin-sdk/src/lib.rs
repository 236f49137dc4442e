//! The SDK for hub plugins, and the plugin ABI the hub shares with them.
//!
//! A hub plugin is a WebAssembly module, built for `wasm32-unknown-unknown`, that the hub runs in a sandbox. It
//! owns no sockets and no files: the hub's transports receive messages and hand them to the plugin in batches;
//! the plugin returns resource updates, model documents, outbound messages and log lines, which the hub checks
//! against the capabilities an admin granted and then applies. ACT requests on resources the plugin owns come
//! back to it; a tick lets it poll or expire state; a small key-value store survives restarts and upgrades.
//!
//! - [`abi`] holds the wire types and names, shared with the host (this crate compiles natively too).
//! - [`Adapter`] is the trait a plugin implements; [`export_adapter!`] turns it into the module's exports.
//! - [`testkit::TestKit`] runs an adapter natively in unit tests, without the hub.
//!
//! A complete adapter, mapping JSON readings on MQTT topics `city/<device>/<resource>` to resources and
//! turning ACT `switch` into a publish:
//!
//! ```
//! use hub_plugin_sdk::prelude::*;
//!
//! /// Maps `city/<device>/<resource>` JSON numbers to `<prefix><device>/sensors/<resource>`.
//! pub struct CityMapper {
//!     prefix: String,
//! }
//!
//! impl Adapter for CityMapper {
//!     fn init(_ctx: &mut Context<'_>, config: Value) -> Result<Self, String> {
//!         let prefix = config.get("prefix").and_then(Value::as_str).unwrap_or("city-").to_owned();
//!         Ok(CityMapper { prefix })
//!     }
//!
//!     fn on_messages(&mut self, ctx: &mut Context<'_>, batch: &[InboundMessage]) -> Output {
//!         let mut out = Output::new();
//!         for message in batch {
//!             let mut parts = message.address.split('/');
//!             let (Some("city"), Some(device), Some(resource), None) =
//!                 (parts.next(), parts.next(), parts.next(), parts.next())
//!             else {
//!                 ctx.warn(format!("ignored topic {}", message.address));
//!                 continue;
//!             };
//!             match message.payload.json::<Value>() {
//!                 Ok(value) => {
//!                     let provider = format!("{}{device}", self.prefix);
//!                     out.update_at(&provider, "sensors", resource, value, message.received_us);
//!                 }
//!                 Err(e) => ctx.warn(format!("{}: not JSON: {e}", message.address)),
//!             }
//!         }
//!         out
//!     }
//!
//!     fn on_act(&mut self, _ctx: &mut Context<'_>, request: &ActRequest, out: &mut Output) -> Result<Value, String> {
//!         let device = request.provider.strip_prefix(&self.prefix).ok_or("not one of my devices")?;
//!         let on = request.params.get("on").and_then(Value::as_bool).ok_or("`on` must be a boolean")?;
//!         out.send(OutboundMessage::mqtt(&format!("city/{device}/cmd"), json!({ "on": on }).to_string()));
//!         Ok(json!({ "sent": true }))
//!     }
//! }
//!
//! export_adapter!(CityMapper);
//!
//! // Natively, the same adapter runs in the test kit:
//! let mut kit = testkit::TestKit::<CityMapper>::new(json!({ "prefix": "c-" })).unwrap();
//! let out = kit.messages(vec![InboundMessage::mqtt("city/7/temp", "21.5", 1_000)]);
//! assert_eq!(out.updates[0].provider, "c-7");
//! assert_eq!(out.updates[0].value, json!(21.5));
//! let (result, out) = kit.act("c-7", "switch", "set", json!({ "on": true })).unwrap();
//! assert_eq!(result, json!({ "sent": true }));
//! assert_eq!(out.outbound[0].address, "city/7/cmd");
//! ```
//!
//! See `docs/plugins.md` in the hub's repository for the manifest, building and installing.

#![deny(missing_docs)]

pub mod abi;
mod adapter;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod guest;
pub mod testkit;

pub use adapter::{Adapter, Context, StateStore};

/// Everything a plugin usually needs, in one import.
pub mod prelude {
    pub use crate::abi::{
        ActRequest, AppCall, CallRequest, CallTrigger, InboundMessage, LogLevel, OutboundMessage, Output, Payload,
        ResourceUpdate, transport,
    };
    pub use crate::testkit;
    pub use crate::{Adapter, Context, StateStore, export_adapter};
    pub use serde_json::{Value, json};
}

/// Exports an [`Adapter`] as the plugin's ABI functions (`hub_init`, `hub_on_messages`, `hub_on_act`,
/// `hub_on_tick`, `hub_on_call`). Use it once, in the plugin crate's `lib.rs`; the crate must be a `cdylib`. On targets other
/// than `wasm32` it expands to nothing, so the crate still builds and tests natively.
#[macro_export]
macro_rules! export_adapter {
    ($adapter:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static SLOT: ::core::cell::RefCell<$crate::guest::Slot<$adapter>> =
                    const { ::core::cell::RefCell::new($crate::guest::Slot::new()) };
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hub_init() -> i32 {
                $crate::guest::init::<$adapter>(&SLOT)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hub_on_messages() -> i32 {
                $crate::guest::on_messages::<$adapter>(&SLOT)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hub_on_act() -> i32 {
                $crate::guest::on_act::<$adapter>(&SLOT)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hub_on_tick() -> i32 {
                $crate::guest::on_tick::<$adapter>(&SLOT)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn hub_on_call() -> i32 {
                $crate::guest::on_call::<$adapter>(&SLOT)
            }
        };
    };
}
