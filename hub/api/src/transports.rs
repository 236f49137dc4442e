//! The host transports the binary started (CoAP, LoRa gateways, ...), as the API shows them: where each one
//! listens, its counters (also exported at `/metrics`), and the LoRa gateways it knows.
//!
//! The API does not depend on the transport crates: the binary hands it each transport behind
//! [`HostTransport`].

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use axum::{Json, extract::State};
use hub_policy::{Action, objects::SYSTEM_TRANSPORTS};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{ApiError, AppState, Caller, auth::authorize};

/// A host transport the binary runs, seen from the API.
pub trait HostTransport: Send + Sync + 'static {
    /// The runtime's name for it: `coap`, `udp`, `xmpp`, ...
    fn name(&self) -> &str;
    /// The address it listens on, if it listens.
    fn listen(&self) -> Option<SocketAddr>;
    /// Its counters by name (`requests_in`, `dropped_malformed`, ...), each monotonic.
    fn counters(&self) -> BTreeMap<String, u64>;
    /// The LoRa gateways it talks to, for a gateway transport.
    fn gateways(&self) -> Option<Vec<Value>> {
        None
    }
    /// Its connections to servers (name, connected, last error, ...), for a client transport.
    fn links(&self) -> Option<Vec<Value>> {
        None
    }
}

/// The counters of a transport's statistics struct: every unsigned integer field of its JSON form.
pub fn counters_of(stats: &impl Serialize) -> BTreeMap<String, u64> {
    match serde_json::to_value(stats) {
        Ok(Value::Object(fields)) => fields.into_iter().filter_map(|(k, v)| v.as_u64().map(|n| (k, n))).collect(),
        _ => BTreeMap::new(),
    }
}

/// The transports the binary started, in start order.
pub type HostTransports = Arc<Vec<Arc<dyn HostTransport>>>;

/// The host transports, where they listen and their counters.
#[utoipa::path(get, path = "/api/v1/transports", tag = "system",
    responses((status = 200, description = "Each transport: name, listen address, counters, and for client transports (XMPP) its server links"), (status = 401), (status = 403)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    authorize(&state, &caller, SYSTEM_TRANSPORTS, Action::Read)?;
    let list: Vec<Value> = state
        .transports
        .iter()
        .map(|t| {
            let mut entry = json!({ "name": t.name(), "listen": t.listen(), "counters": t.counters() });
            if let Some(links) = t.links() {
                entry["links"] = Value::Array(links);
            }
            entry
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// The LoRa gateways the GWMP listener knows: addresses, last contact, packet and downlink counters, last
/// `stat` report.
#[utoipa::path(get, path = "/api/v1/gateways", tag = "system",
    responses((status = 200, description = "The gateways (empty when the GWMP listener is off)"), (status = 401), (status = 403)))]
pub async fn gateways(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    authorize(&state, &caller, SYSTEM_TRANSPORTS, Action::Read)?;
    let gateways: Vec<Value> = state.transports.iter().filter_map(|t| t.gateways()).flatten().collect();
    Ok(Json(Value::Array(gateways)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Stats {
        datagrams: u64,
        dropped: u64,
        label: &'static str,
        ratio: f64,
    }

    #[test]
    fn counters_are_the_unsigned_fields() {
        let c = counters_of(&Stats { datagrams: 7, dropped: 0, label: "x", ratio: 0.5 });
        assert_eq!(c.into_iter().collect::<Vec<_>>(), [("datagrams".to_owned(), 7), ("dropped".to_owned(), 0)]);
        assert!(counters_of(&3u64).is_empty());
    }
}
