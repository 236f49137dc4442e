//! The LoRa gateway host transport: a UDP listener speaking the Semtech packet-forwarder protocol (GWMP,
//! versions 1 and 2), and nothing else.
//!
//! Gateways send what they hear in PUSH_DATA and keep a downlink path open with PULL_DATA. The transport answers
//! both itself (PUSH_ACK, PULL_ACK), tracks each gateway (its last PULL_DATA address, when it was last seen, its
//! `stat` reports and counters), and turns every received packet whose CRC is OK into one
//! [`InboundMessage`](hub_plugin_sdk::abi::InboundMessage) on a bounded channel the caller owns: transport
//! `udp`, address the local port in decimal, payload the LoRaWAN PHYPayload bytes, metadata the radio details.
//! Outbound messages from plugins (transport `udp`, the same address) become PULL_RESP datagrams to the named
//! gateway; the TX_ACK that answers each is matched by its token and counted. LoRaWAN itself (MIC, counters,
//! keys, codecs) is plugin work: see `plugins/lorawan`.
//!
//! GWMP has no authentication. While the transport listens on loopback any gateway is accepted; elsewhere only
//! the gateway EUIs in [`GwmpConfig::allowed_gateways`] are, unless `allow_any_gateway` says otherwise. An EUI is
//! trivially forged, so a public listener also needs a firewall that admits only the gateways' addresses.
//!
//! # Metadata
//!
//! | key | inbound | outbound |
//! |---|---|---|
//! | `gateway_eui` | the gateway that heard the packet (16 lowercase hex digits) | the gateway that sends it (required) |
//! | `peer` | the gateway's UDP address | — |
//! | `tmst`, `tmms`, `time` | concentrator counter (µs), GPS time (ms), UTC time, when the gateway sent them | `tmst` or `tmms`: when to send; or `imme = true` |
//! | `freq`, `rfch`, `chan` | MHz, RF chain, IF channel | `freq` (required), `rfch` (default 0) |
//! | `modu`, `datr`, `codr` | `LORA`/`FSK`, `SF7BW125` or bit/s, `4/5` | the same (`modu` default `LORA`, `codr` default `4/5`; `datr` required) |
//! | `rssi`, `lsnr` | dBm, dB | — |
//! | `powe`, `ipol`, `fdev`, `prea`, `ncrc` | — | TX power (dBm), inverted polarity (default `true` for LoRa), FSK deviation, preamble, no CRC |

mod config;
pub mod protocol;
mod transport;

use std::fmt;
use std::str::FromStr;

pub use config::{DEFAULT_LISTEN, GwmpConfig};
pub use transport::{GatewayInfo, GwmpStats, GwmpTransport};

/// The metadata key naming the gateway (16 lowercase hex digits), inbound and outbound.
pub const META_GATEWAY: &str = "gateway_eui";
/// The metadata key of the gateway's UDP address, inbound.
pub const META_PEER: &str = "peer";

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum GwmpError {
    /// A configuration value is wrong; `key` names it (`gwmp.allowed_gateways[0]`).
    #[error("{key}: {reason}")]
    InvalidConfig {
        /// The configuration key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The listen address is already taken.
    #[error(
        "gwmp.listen: {addr} is already in use; choose another address with `gwmp.listen` in the config or \
         `hub serve --gwmp-listen ADDR`"
    )]
    AddressInUse {
        /// The address that was taken.
        addr: std::net::SocketAddr,
    },
    /// The socket could not be bound for another reason.
    #[error("gwmp.listen: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The transport runs its receive task on the caller's tokio runtime.
    #[error("the GWMP transport must be started inside a tokio runtime")]
    NoRuntime,
}

impl GwmpError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        GwmpError::InvalidConfig { key: key.into(), reason: reason.into() }
    }
}

/// A gateway's EUI-64. Written as 16 lowercase hex digits; parsed from 16 hex digits of either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayEui(pub u64);

impl fmt::Display for GatewayEui {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for GatewayEui {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a gateway EUI is 16 hex digits");
        }
        u64::from_str_radix(s, 16).map(GatewayEui).map_err(|_| "a gateway EUI is 16 hex digits")
    }
}

/// The current time in microseconds since the Unix epoch.
pub(crate) fn now_us() -> i64 {
    hub_model::Timestamp::now().as_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eui_text() {
        let eui: GatewayEui = "AA555A0000000101".parse().unwrap();
        assert_eq!(eui.to_string(), "aa555a0000000101");
        assert!("aa555a00000001".parse::<GatewayEui>().is_err());
        assert!("zz555a0000000101".parse::<GatewayEui>().is_err());
        assert!("+a555a0000000101".parse::<GatewayEui>().is_err());
    }
}
