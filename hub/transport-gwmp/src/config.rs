//! The `[gwmp]` configuration: where the hub listens for LoRa gateways and which gateways it accepts.
//!
//! Every struct rejects unknown keys, and [`GwmpConfig::validate`] names the key of every error (`gwmp.listen`,
//! `gwmp.allowed_gateways[1]`, ...).

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{GatewayEui, GwmpError};

/// The default listen address: loopback, the packet forwarder's usual port.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 1700);

/// The whole `[gwmp]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GwmpConfig {
    /// Whether to listen for gateways at all.
    pub enabled: bool,
    /// The UDP address gateways send to (`hub serve --gwmp-listen` overrides it). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Whether any gateway may talk to the hub. GWMP has no authentication: a gateway is only an EUI in a
    /// datagram. Unset means: any gateway while `listen` is a loopback address; elsewhere only the gateways in
    /// `allowed_gateways`.
    pub allow_any_gateway: Option<bool>,
    /// Gateway EUIs (16 hex digits) accepted when `allow_any_gateway` is off. Datagrams from other gateways are
    /// dropped unanswered and counted. An EUI is easy to forge: restrict the UDP port with a firewall too.
    pub allowed_gateways: Vec<String>,
    /// The most gateways tracked at once; datagrams from further gateways are dropped and counted.
    pub max_gateways: usize,
    /// How long a gateway's last PULL_DATA address stays usable for downlinks, in milliseconds (forwarders send
    /// PULL_DATA every 5 to 30 seconds).
    pub pull_timeout_ms: u64,
    /// How long a PULL_RESP waits for its TX_ACK before it is forgotten, in milliseconds.
    pub tx_ack_timeout_ms: u64,
    /// The largest datagram read, in bytes; longer ones are dropped as malformed.
    pub max_datagram_bytes: usize,
}

impl Default for GwmpConfig {
    fn default() -> Self {
        GwmpConfig {
            enabled: true,
            listen: DEFAULT_LISTEN,
            allow_any_gateway: None,
            allowed_gateways: Vec::new(),
            max_gateways: 1024,
            pull_timeout_ms: 120_000,
            tx_ack_timeout_ms: 10_000,
            max_datagram_bytes: 65_507,
        }
    }
}

impl GwmpConfig {
    /// Whether gateways outside `allowed_gateways` are accepted (see [`GwmpConfig::allow_any_gateway`]).
    pub fn any_gateway_allowed(&self) -> bool {
        self.allow_any_gateway.unwrap_or_else(|| self.listen.ip().is_loopback())
    }

    /// The allow-list, parsed. Call [`GwmpConfig::validate`] first; entries that do not parse are left out.
    pub fn allowed(&self) -> Vec<GatewayEui> {
        self.allowed_gateways.iter().filter_map(|e| e.parse().ok()).collect()
    }

    /// Checks every value, naming the key of the first one that is wrong.
    pub fn validate(&self) -> Result<(), GwmpError> {
        for (i, eui) in self.allowed_gateways.iter().enumerate() {
            if eui.parse::<GatewayEui>().is_err() {
                return Err(GwmpError::invalid(
                    format!("gwmp.allowed_gateways[{i}]"),
                    "must be a gateway EUI of 16 hex digits",
                ));
            }
        }
        if self.enabled && !self.any_gateway_allowed() && self.allowed_gateways.is_empty() {
            return Err(GwmpError::invalid(
                "gwmp.allowed_gateways",
                format!(
                    "listening on the non-loopback address {} needs a list of gateway EUIs (GWMP has no \
                     authentication), or `allow_any_gateway = true` behind a firewall",
                    self.listen
                ),
            ));
        }
        let positive = [
            ("max_gateways", self.max_gateways as u64),
            ("pull_timeout_ms", self.pull_timeout_ms),
            ("tx_ack_timeout_ms", self.tx_ack_timeout_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(GwmpError::invalid(format!("gwmp.{name}"), "must be greater than 0"));
            }
        }
        if !(MIN_DATAGRAM..=MAX_DATAGRAM).contains(&self.max_datagram_bytes) {
            return Err(GwmpError::invalid(
                "gwmp.max_datagram_bytes",
                format!("must be {MIN_DATAGRAM} to {MAX_DATAGRAM}"),
            ));
        }
        Ok(())
    }
}

/// The smallest useful datagram limit: a PUSH_DATA header and a short JSON object.
const MIN_DATAGRAM: usize = 512;
/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;
