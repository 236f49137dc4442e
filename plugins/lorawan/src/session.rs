//! What the adapter remembers per device across restarts, and the frame counter rules (32-bit reconstruction
//! from the 16 bits on the air, replays and gaps).
//!
//! Two kinds of state keys:
//! - `dev/<deveui>`: the session (address, keys), the DevNonces already used, the join nonce, the downlink queue;
//!   written when one of those changes (a join, an ACT, a downlink sent);
//! - `fcnt/<n>` ([`COUNTER_BUCKETS`] of them): the frame counters of every device whose DevEUI falls in bucket
//!   `n`, written after every accepted uplink. Grouping them bounds the state writes of a call (the host makes
//!   each durable) to a few keys however many devices spoke. Counters apply to a session only when its DevAddr
//!   and join nonce match, so a bucket written before a join never resurrects old counters.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::crypto::Key;

/// The largest forward jump of the uplink counter accepted (LoRaWAN 1.0.x MAX_FCNT_GAP).
pub const MAX_FCNT_GAP: u32 = 16_384;
/// How many DevNonces of a device are remembered to refuse a replayed Join-Request (the oldest are forgotten).
pub const MAX_DEV_NONCES: usize = 1_024;

/// The state key of a device.
pub fn state_key(dev_eui: u64) -> String {
    format!("dev/{dev_eui:016x}")
}

/// How many state keys hold the frame counters (at 4,096 devices, about 24 KiB each).
pub const COUNTER_BUCKETS: u64 = 8;

/// The counter bucket of a device.
pub fn counter_bucket(dev_eui: u64) -> u64 {
    dev_eui % COUNTER_BUCKETS
}

/// The state key of a counter bucket.
pub fn counters_key(bucket: u64) -> String {
    format!("fcnt/{bucket}")
}

/// One device's counters in a bucket: DevEUI (hex) → counters.
pub type CounterBucket = BTreeMap<String, Counters>;

/// The frame counters of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// The session's DevAddr.
    pub dev_addr: u32,
    /// The device's join nonce when the session began (0 for ABP).
    pub join_nonce: u32,
    /// The last uplink counter accepted.
    #[serde(default)]
    pub up: Option<u32>,
    /// The next downlink counter.
    #[serde(default)]
    pub down: u32,
}

/// One device's persistent state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// The current session, once the device joined (OTAA) or from the registry (ABP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
    /// DevNonces of accepted Join-Requests, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dev_nonces: Vec<u16>,
    /// The last AppNonce (JoinNonce) sent; each Join-Accept uses the next.
    #[serde(default)]
    pub join_nonce: u32,
    /// Downlinks waiting for the device's next uplink.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub queue: VecDeque<QueuedDownlink>,
}

/// A LoRaWAN session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The device address.
    pub dev_addr: u32,
    /// The network session key (MIC, FPort 0).
    pub nwk_s_key: Key,
    /// The application session key (FRMPayload).
    pub app_s_key: Key,
    /// The last uplink counter accepted; `None` before the first uplink.
    #[serde(default)]
    pub fcnt_up: Option<u32>,
    /// The next downlink counter.
    #[serde(default)]
    pub fcnt_down: u32,
}

impl Session {
    /// A fresh session: counters at their start.
    pub fn new(dev_addr: u32, nwk_s_key: Key, app_s_key: Key) -> Session {
        Session { dev_addr, nwk_s_key, app_s_key, fcnt_up: None, fcnt_down: 0 }
    }
}

/// A downlink queued by ACT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedDownlink {
    /// FPort, 1 to 223.
    pub port: u8,
    /// The plain payload, hex.
    pub hex: String,
    /// Whether the device must acknowledge it.
    #[serde(default)]
    pub confirmed: bool,
}

/// One reading of a 16-bit counter as a 32-bit one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fcnt {
    /// Newer than the last, within the gap: acceptable if the MIC verifies.
    Next(u32),
    /// Not newer than the last: a replay or an old frame.
    Old(u32),
    /// Newer by more than [`MAX_FCNT_GAP`].
    TooFar(u32),
}

impl Fcnt {
    /// The 32-bit value.
    pub fn value(self) -> u32 {
        match self {
            Fcnt::Next(v) | Fcnt::Old(v) | Fcnt::TooFar(v) => v,
        }
    }
}

/// The readings of `fcnt16` to try, the acceptable one first. The MIC (computed over the full 32-bit counter)
/// tells which one the device used; only [`Fcnt::Next`] is accepted, the others name the reason for a refusal.
pub fn readings(last: Option<u32>, fcnt16: u16) -> Vec<Fcnt> {
    let Some(last) = last else {
        return vec![Fcnt::Next(u32::from(fcnt16))];
    };
    let last = u64::from(last);
    let same_epoch = (last & !0xFFFF) | u64::from(fcnt16);
    let mut out = Vec::with_capacity(2);
    let classify = |value: u64| -> Option<Fcnt> {
        let v = u32::try_from(value).ok()?;
        Some(if value <= last {
            Fcnt::Old(v)
        } else if value - last <= u64::from(MAX_FCNT_GAP) {
            Fcnt::Next(v)
        } else {
            Fcnt::TooFar(v)
        })
    };
    if same_epoch > last {
        out.extend(classify(same_epoch));
        if same_epoch >= 0x1_0000 {
            out.extend(classify(same_epoch - 0x1_0000));
        }
    } else {
        out.extend(classify(same_epoch + 0x1_0000));
        out.extend(classify(same_epoch));
    }
    out.sort_by_key(|f| match f {
        Fcnt::Next(_) => 0,
        Fcnt::Old(_) => 1,
        Fcnt::TooFar(_) => 2,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_reconstruction() {
        assert_eq!(readings(None, 7), vec![Fcnt::Next(7)]);
        assert_eq!(readings(Some(7), 8), vec![Fcnt::Next(8)]);
        assert_eq!(readings(Some(7), 7), vec![Fcnt::Old(7), Fcnt::TooFar(0x1_0007)]);
        assert_eq!(readings(Some(7), 3), vec![Fcnt::Old(3), Fcnt::TooFar(0x1_0003)]);
        // Roll-over of the 16 bits on the air.
        assert_eq!(readings(Some(0xFFFE), 2), vec![Fcnt::Next(0x1_0002), Fcnt::Old(2)]);
        assert_eq!(readings(Some(0x2_FFF0), 0x0005), vec![Fcnt::Next(0x3_0005), Fcnt::Old(0x2_0005)]);
        // A jump beyond MAX_FCNT_GAP.
        assert_eq!(readings(Some(10), 10 + 16_384), vec![Fcnt::Next(16_394)]);
        assert_eq!(readings(Some(10), 10 + 16_385), vec![Fcnt::TooFar(16_395)]);
        assert_eq!(readings(Some(0x1_0010), 0x8000), vec![Fcnt::Old(0x8000), Fcnt::TooFar(0x1_8000)]);
        // The 32-bit counter cannot wrap.
        assert_eq!(readings(Some(u32::MAX - 1), 0xFFFF), vec![Fcnt::Next(u32::MAX), Fcnt::Old(0xFFFE_FFFF)]);
        assert_eq!(readings(Some(u32::MAX), 0), vec![Fcnt::Old(0xFFFF_0000)]);
    }

    #[test]
    fn state_round_trips_without_showing_keys_in_debug() {
        let key = Key([7; 16]);
        let state = DeviceState {
            session: Some(Session::new(0x2601_1BDA, key, key)),
            dev_nonces: vec![1, 2],
            join_nonce: 3,
            queue: [QueuedDownlink { port: 10, hex: "0102".into(), confirmed: false }].into(),
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<DeviceState>(&json).unwrap(), state);
        assert!(!format!("{state:?}").contains("0707"));
    }
}
