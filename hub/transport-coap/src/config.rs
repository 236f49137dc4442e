//! The `[coap]` configuration: the endpoint devices send to, the client that observes devices and carries
//! ACT, and the observed resources.
//!
//! Every struct rejects unknown keys, and [`CoapConfig::validate`] names the key of every error (`coap.listen`,
//! `coap.client.ack_timeout_ms`, `coap.observe[1].uri`, ...).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::CoapError;
use crate::wire::{DeviceUri, format};

/// The default listen address of the endpoint.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5683);

/// The largest payload the endpoint can be configured to take (Block1 reassembly bound).
pub const MAX_PAYLOAD_LIMIT: usize = 16 * 1024 * 1024;

/// The whole `[coap]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoapConfig {
    /// Whether to run the endpoint devices send to. The client (observations, ACT) runs either way.
    pub enabled: bool,
    /// The UDP address devices send to (`hub serve --coap-listen` overrides it).
    pub listen: SocketAddr,
    /// Whether requests without a token are accepted. Unset means: only while `listen` is a loopback address;
    /// any other address then requires a token.
    pub allow_anonymous: Option<bool>,
    /// The largest request payload, in bytes, whole or reassembled from Block1 blocks (4.13 beyond it).
    pub max_payload_bytes: usize,
    /// The block size the endpoint prefers for Block1 and Block2, in bytes: a power of two from 16 to 1024.
    pub block_size: usize,
    /// The Content-Formats accepted on requests (4.15 for others); a request without one is always accepted.
    pub content_formats: Vec<u16>,
    /// The most requests handed to the runtime and not yet answered; at the limit the endpoint stops reading
    /// its socket until one is answered.
    pub max_inflight: usize,
    /// The most Block1 uploads being reassembled at once (5.03 beyond it).
    pub max_block_transfers: usize,
    /// How long an unfinished Block1 upload is kept after its last block, in milliseconds.
    pub block_timeout_ms: u64,
    /// How many answered requests are remembered to recognise retransmissions (each for EXCHANGE_LIFETIME,
    /// 247 s, or until the oldest is pushed out).
    pub dedup_capacity: usize,
    /// How long a request may wait for the runtime's answer before it gets 5.03, in milliseconds.
    pub dispatch_timeout_ms: u64,
    /// `[coap.client]`: requests the hub makes to devices.
    pub client: ClientConfig,
    /// `[[coap.observe]]`: device resources the hub observes.
    pub observe: Vec<ObserveConfig>,
}

impl Default for CoapConfig {
    fn default() -> Self {
        CoapConfig {
            enabled: true,
            listen: DEFAULT_LISTEN,
            allow_anonymous: None,
            max_payload_bytes: 64 * 1024,
            block_size: 1024,
            content_formats: vec![
                format::TEXT,
                format::OCTET_STREAM,
                format::JSON,
                format::CBOR,
                format::SENML_JSON,
                format::SENML_CBOR,
            ],
            max_inflight: 1024,
            max_block_transfers: 64,
            block_timeout_ms: 30_000,
            dedup_capacity: 8192,
            dispatch_timeout_ms: 10_000,
            client: ClientConfig::default(),
            observe: Vec::new(),
        }
    }
}

/// `[coap.client]`: how the hub talks to devices (observations and ACT requests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// The local address of the client socket (port 0 picks one).
    pub bind: SocketAddr,
    /// ACK_TIMEOUT (RFC 7252 §4.8), in milliseconds: the first wait before a confirmable message is sent again;
    /// each retry doubles it (with the standard random factor 1.5).
    pub ack_timeout_ms: u64,
    /// MAX_RETRANSMIT: how many times a confirmable message is sent again before the exchange fails.
    pub max_retransmit: u32,
    /// How long to wait for a separate response after an empty ACK, in milliseconds.
    pub response_timeout_ms: u64,
    /// The most outbound requests in flight at once; more wait (which slows the plugin that sends them).
    pub max_pending: usize,
    /// How many outbound messages may wait for a free slot before `send` waits.
    pub queue: usize,
    /// The largest response or notification body reassembled from Block2 blocks, in bytes.
    pub max_body_bytes: usize,
    /// Added to a notification's Max-Age before an observation counts as lapsed and is registered again, in
    /// milliseconds.
    pub observe_margin_ms: u64,
    /// The first delay before a failed observation is registered again, in milliseconds; it doubles on each
    /// failure up to `reregister_max_ms`.
    pub reregister_min_ms: u64,
    /// The longest delay between registration attempts, in milliseconds.
    pub reregister_max_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            ack_timeout_ms: 2_000,
            max_retransmit: 4,
            response_timeout_ms: 30_000,
            max_pending: 256,
            queue: 1024,
            max_body_bytes: 64 * 1024,
            observe_margin_ms: 5_000,
            reregister_min_ms: 1_000,
            reregister_max_ms: 60_000,
        }
    }
}

impl ClientConfig {
    /// The first and the longest re-registration delay.
    pub fn backoff(&self) -> (Duration, Duration) {
        (Duration::from_millis(self.reregister_min_ms), Duration::from_millis(self.reregister_max_ms))
    }
}

/// `[[coap.observe]]`: one device resource the hub observes (RFC 7641).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObserveConfig {
    /// The resource: `coap://host[:port]/path[?query]`.
    pub uri: String,
    /// A provider name for the adapter (passed as the `provider` metadata of each notification).
    #[serde(default)]
    pub provider: Option<String>,
    /// How often to poll the resource, in seconds, when the device answers without Observe (the resource is
    /// not observable).
    #[serde(default = "default_interval")]
    pub interval_s: u64,
}

fn default_interval() -> u64 {
    60
}

/// The most observations one hub keeps.
pub const MAX_OBSERVATIONS: usize = 1024;

impl CoapConfig {
    /// Whether requests without a token are accepted (see [`CoapConfig::allow_anonymous`]).
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or_else(|| self.listen.ip().is_loopback())
    }

    /// The block size exponent of [`CoapConfig::block_size`].
    pub fn block_szx(&self) -> u8 {
        crate::wire::Block::szx_of(self.block_size)
    }

    /// Checks every value, naming the key of the first one that is wrong.
    pub fn validate(&self) -> Result<(), CoapError> {
        let positive = [
            ("max_payload_bytes", self.max_payload_bytes as u64),
            ("max_inflight", self.max_inflight as u64),
            ("max_block_transfers", self.max_block_transfers as u64),
            ("block_timeout_ms", self.block_timeout_ms),
            ("dedup_capacity", self.dedup_capacity as u64),
            ("dispatch_timeout_ms", self.dispatch_timeout_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(CoapError::invalid(format!("coap.{name}"), "must be greater than 0"));
            }
        }
        if self.max_payload_bytes > MAX_PAYLOAD_LIMIT {
            return Err(CoapError::invalid("coap.max_payload_bytes", format!("must be at most {MAX_PAYLOAD_LIMIT}")));
        }
        if !(16..=1024).contains(&self.block_size) || !self.block_size.is_power_of_two() {
            return Err(CoapError::invalid("coap.block_size", "must be a power of two from 16 to 1024"));
        }
        self.client.validate("coap.client")?;
        if self.observe.len() > MAX_OBSERVATIONS {
            return Err(CoapError::invalid("coap.observe", format!("at most {MAX_OBSERVATIONS} entries")));
        }
        for (i, entry) in self.observe.iter().enumerate() {
            let key = format!("coap.observe[{i}]");
            DeviceUri::parse(&entry.uri).map_err(|reason| CoapError::invalid(format!("{key}.uri"), reason))?;
            if let Some(provider) = &entry.provider {
                hub_model::Name::new(provider)
                    .map_err(|e| CoapError::invalid(format!("{key}.provider"), e.to_string()))?;
            }
            if entry.interval_s == 0 {
                return Err(CoapError::invalid(format!("{key}.interval_s"), "must be at least 1 second"));
            }
            if self.observe[..i].iter().any(|other| other.uri == entry.uri) {
                return Err(CoapError::invalid(format!("{key}.uri"), format!("{:?} is observed twice", entry.uri)));
            }
        }
        Ok(())
    }
}

impl ClientConfig {
    pub(crate) fn validate(&self, key: &str) -> Result<(), CoapError> {
        let positive = [
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("response_timeout_ms", self.response_timeout_ms),
            ("max_pending", self.max_pending as u64),
            ("queue", self.queue as u64),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("reregister_min_ms", self.reregister_min_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(CoapError::invalid(format!("{key}.{name}"), "must be greater than 0"));
            }
        }
        if self.max_retransmit > 20 {
            return Err(CoapError::invalid(format!("{key}.max_retransmit"), "must be at most 20"));
        }
        if self.max_body_bytes > MAX_PAYLOAD_LIMIT {
            return Err(CoapError::invalid(
                format!("{key}.max_body_bytes"),
                format!("must be at most {MAX_PAYLOAD_LIMIT}"),
            ));
        }
        if self.reregister_max_ms < self.reregister_min_ms {
            return Err(CoapError::invalid(format!("{key}.reregister_max_ms"), "must be at least reregister_min_ms"));
        }
        Ok(())
    }
}
