//! The adapter's configuration: the device registry and the network settings, validated in full at `init`.
//!
//! Errors name their key (`devices[2].app_key: must be 32 hex digits`) and never repeat a key's value.

use serde::Deserialize;
use serde_json::Value;

use crate::codec::Codec;
use crate::crypto::Key;

/// How a device reaches the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    /// Over-the-air activation: the device joins with its AppKey.
    Otaa {
        /// The JoinEUI (AppEUI) the device must present; any when absent.
        join_eui: Option<u64>,
        /// The root key.
        app_key: Key,
    },
    /// Activation by personalisation: address and session keys set in advance.
    Abp {
        /// The device address.
        dev_addr: u32,
        /// The network session key.
        nwk_s_key: Key,
        /// The application session key.
        app_s_key: Key,
    },
    /// The device belongs to another network server (ChirpStack, The Things Stack); only its codec and name
    /// are used.
    External,
}

/// One device of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The DevEUI.
    pub dev_eui: u64,
    /// A human name, for `admin/friendly_name`.
    pub name: Option<String>,
    /// The payload codec.
    pub codec: Codec,
    /// How it is activated.
    pub activation: Activation,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The registry.
    pub devices: Vec<DeviceConfig>,
    /// The codec of devices that are not in the registry (uplinks from another network server).
    pub default_codec: Codec,
    /// RX1 delay, seconds (1 to 15), announced in Join-Accepts.
    pub rx1_delay_s: u8,
    /// JOIN_ACCEPT_DELAY1, seconds.
    pub join_accept_delay_s: u8,
    /// RX1 data-rate offset (0 to 5), announced in Join-Accepts.
    pub rx1_dr_offset: u8,
    /// RX2 data rate (0 to 15), announced in Join-Accepts.
    pub rx2_dr: u8,
    /// The NetID, 24 bits (type 0: 0x000000 to 0x00003F).
    pub net_id: u32,
    /// Downlink TX power, dBm.
    pub tx_power_dbm: i32,
    /// How long a frame is remembered to recognise copies from other gateways, µs.
    pub dedup_window_us: i64,
    /// The extra channels announced in Join-Accepts (EU-style CFList), MHz.
    pub cf_list: Vec<f64>,
    /// The largest downlink payload accepted by ACT, bytes.
    pub max_downlink_bytes: usize,
    /// The most downlinks queued per device.
    pub downlink_queue: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    devices: Vec<RawDevice>,
    #[serde(default)]
    default_codec: Option<String>,
    #[serde(default)]
    rx1_delay_s: Option<u8>,
    #[serde(default)]
    join_accept_delay_s: Option<u8>,
    #[serde(default)]
    rx1_dr_offset: Option<u8>,
    #[serde(default)]
    rx2_dr: Option<u8>,
    #[serde(default)]
    net_id: Option<String>,
    #[serde(default)]
    tx_power_dbm: Option<i32>,
    #[serde(default)]
    dedup_window_ms: Option<u32>,
    #[serde(default)]
    cf_list: Vec<f64>,
    #[serde(default)]
    max_downlink_bytes: Option<usize>,
    #[serde(default)]
    downlink_queue: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    dev_eui: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    codec: Option<String>,
    #[serde(default)]
    join_eui: Option<String>,
    #[serde(default)]
    app_key: Option<String>,
    #[serde(default)]
    dev_addr: Option<String>,
    #[serde(default)]
    nwk_s_key: Option<String>,
    #[serde(default)]
    app_s_key: Option<String>,
}

const KEY_FIELDS: [&str; 3] = ["app_key", "nwk_s_key", "app_s_key"];

/// Parses 16 hex digits (an EUI).
pub fn parse_eui(text: &str) -> Option<u64> {
    (text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| u64::from_str_radix(text, 16).ok())?
}

impl Config {
    /// Reads and checks the configuration; `null` is the empty configuration.
    pub fn parse(value: Value) -> Result<Config, String> {
        let value = if value.is_null() { Value::Object(Default::default()) } else { value };
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            // serde's messages may quote the value; for a key field say only what is expected.
            if KEY_FIELDS.iter().any(|k| path.ends_with(k)) {
                format!("{path}: must be a string of 32 hex digits")
            } else {
                format!("{path}: {}", e.into_inner())
            }
        })?;
        let codec = |key: &str, name: &str| {
            Codec::by_name(name)
                .ok_or_else(|| format!("{key}: must be \"cayenne\", \"raw\" or \"app:<plugin id>\", not {name:?}"))
        };
        let mut devices: Vec<DeviceConfig> = Vec::with_capacity(raw.devices.len());
        for (i, d) in raw.devices.into_iter().enumerate() {
            let key = |field: &str| format!("devices[{i}].{field}");
            let dev_eui = parse_eui(&d.dev_eui).ok_or_else(|| format!("{}: must be 16 hex digits", key("dev_eui")))?;
            if devices.iter().any(|other| other.dev_eui == dev_eui) {
                return Err(format!("{}: {} is listed twice", key("dev_eui"), d.dev_eui.to_lowercase()));
            }
            let secret = |field: &str, value: &Option<String>| -> Result<Option<Key>, String> {
                match value {
                    None => Ok(None),
                    Some(text) => {
                        Key::from_hex(text).map(Some).ok_or_else(|| format!("{}: must be 32 hex digits", key(field)))
                    }
                }
            };
            let app_key = secret("app_key", &d.app_key)?;
            let nwk_s_key = secret("nwk_s_key", &d.nwk_s_key)?;
            let app_s_key = secret("app_s_key", &d.app_s_key)?;
            let join_eui = match &d.join_eui {
                None => None,
                Some(text) => {
                    Some(parse_eui(text).ok_or_else(|| format!("{}: must be 16 hex digits", key("join_eui")))?)
                }
            };
            let dev_addr = match &d.dev_addr {
                None => None,
                Some(text) if text.len() == 8 => Some(
                    crate::hex_decode(text)
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_be_bytes)
                        .ok_or_else(|| format!("{}: must be 8 hex digits", key("dev_addr")))?,
                ),
                Some(_) => return Err(format!("{}: must be 8 hex digits", key("dev_addr"))),
            };
            let abp = dev_addr.is_some() || nwk_s_key.is_some() || app_s_key.is_some();
            let activation = match (app_key, abp) {
                (Some(_), true) => {
                    return Err(format!(
                        "devices[{i}]: give either app_key (OTAA) or dev_addr, nwk_s_key and app_s_key (ABP), not both"
                    ));
                }
                (Some(app_key), false) => Activation::Otaa { join_eui, app_key },
                (None, true) => {
                    let missing = |field: &str| format!("{}: an ABP device needs it", key(field));
                    Activation::Abp {
                        dev_addr: dev_addr.ok_or_else(|| missing("dev_addr"))?,
                        nwk_s_key: nwk_s_key.ok_or_else(|| missing("nwk_s_key"))?,
                        app_s_key: app_s_key.ok_or_else(|| missing("app_s_key"))?,
                    }
                }
                (None, false) => Activation::External,
            };
            if join_eui.is_some() && !matches!(activation, Activation::Otaa { .. }) {
                return Err(format!("{}: only OTAA devices (with app_key) join", key("join_eui")));
            }
            if let Some(name) = &d.name
                && (name.is_empty() || name.len() > 128)
            {
                return Err(format!("{}: must be 1 to 128 characters", key("name")));
            }
            let codec = match &d.codec {
                Some(name) => codec(&key("codec"), name)?,
                None => Codec::Cayenne,
            };
            devices.push(DeviceConfig { dev_eui, name: d.name, codec, activation });
        }
        for (i, d) in devices.iter().enumerate() {
            if let Activation::Abp { dev_addr, .. } = d.activation
                && devices[..i]
                    .iter()
                    .any(|o| matches!(o.activation, Activation::Abp { dev_addr: a, .. } if a == dev_addr))
            {
                return Err(format!("devices[{i}].dev_addr: {dev_addr:08x} is used by another ABP device"));
            }
        }

        let default_codec = match &raw.default_codec {
            Some(name) => codec("default_codec", name)?,
            None => Codec::Raw,
        };
        let in_range = |key: &str, value: u8, lo: u8, hi: u8| {
            if (lo..=hi).contains(&value) { Ok(value) } else { Err(format!("{key}: must be {lo} to {hi}")) }
        };
        let rx1_delay_s = in_range("rx1_delay_s", raw.rx1_delay_s.unwrap_or(1), 1, 15)?;
        let join_accept_delay_s = in_range("join_accept_delay_s", raw.join_accept_delay_s.unwrap_or(5), 1, 15)?;
        let rx1_dr_offset = in_range("rx1_dr_offset", raw.rx1_dr_offset.unwrap_or(0), 0, 5)?;
        let rx2_dr = in_range("rx2_dr", raw.rx2_dr.unwrap_or(0), 0, 15)?;
        let net_id_text = raw.net_id.as_deref().unwrap_or("000000");
        let net_id = match crate::hex_decode(net_id_text) {
            Some(b) if b.len() == 3 => u32::from_be_bytes([0, b[0], b[1], b[2]]),
            _ => return Err("net_id: must be 6 hex digits".to_owned()),
        };
        if net_id > 0x3F {
            return Err("net_id: only type-0 NetIDs (000000 to 00003f) are supported".to_owned());
        }
        let tx_power_dbm = raw.tx_power_dbm.unwrap_or(14);
        if !(0..=36).contains(&tx_power_dbm) {
            return Err("tx_power_dbm: must be 0 to 36".to_owned());
        }
        let dedup_window_ms = raw.dedup_window_ms.unwrap_or(500);
        if !(1..=10_000).contains(&dedup_window_ms) {
            return Err("dedup_window_ms: must be 1 to 10000".to_owned());
        }
        if raw.cf_list.len() > 5 {
            return Err("cf_list: at most 5 frequencies".to_owned());
        }
        for (i, f) in raw.cf_list.iter().enumerate() {
            if !(100.0..=1000.0).contains(f) {
                return Err(format!("cf_list[{i}]: must be a frequency in MHz"));
            }
        }
        let max_downlink_bytes = raw.max_downlink_bytes.unwrap_or(51);
        if !(1..=222).contains(&max_downlink_bytes) {
            return Err("max_downlink_bytes: must be 1 to 222".to_owned());
        }
        let downlink_queue = raw.downlink_queue.unwrap_or(8);
        if !(1..=64).contains(&downlink_queue) {
            return Err("downlink_queue: must be 1 to 64".to_owned());
        }
        Ok(Config {
            devices,
            default_codec,
            rx1_delay_s,
            join_accept_delay_s,
            rx1_dr_offset,
            rx2_dr,
            net_id,
            tx_power_dbm,
            dedup_window_us: i64::from(dedup_window_ms) * 1_000,
            cf_list: raw.cf_list,
            max_downlink_bytes,
            downlink_queue,
        })
    }

    /// The CFList of the Join-Accept: five 24-bit frequencies in units of 100 Hz, then CFListType 0.
    pub fn cf_list_bytes(&self) -> Option<[u8; 16]> {
        if self.cf_list.is_empty() {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, mhz) in self.cf_list.iter().enumerate().take(5) {
            let units = (mhz * 10_000.0).round() as u32;
            out[3 * i..3 * i + 3].copy_from_slice(&units.to_le_bytes()[..3]);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "2b7e151628aed2a6abf7158809cf4f3c";

    #[test]
    fn a_full_registry_parses() {
        let config = Config::parse(json!({
            "devices": [
                {"dev_eui": "0004A30B001C0530", "join_eui": "70B3D57ED0000000", "app_key": KEY, "codec": "cayenne",
                 "name": "Park bench 4"},
                {"dev_eui": "0004a30b001c0531", "dev_addr": "26011BDA", "nwk_s_key": KEY, "app_s_key": KEY, "codec": "raw"},
                {"dev_eui": "0004a30b001c0532"}
            ],
            "rx1_delay_s": 1, "net_id": "000013", "default_codec": "cayenne", "cf_list": [867.1, 867.3]
        }))
        .unwrap();
        assert_eq!(config.devices.len(), 3);
        assert!(matches!(config.devices[0].activation, Activation::Otaa { join_eui: Some(0x70B3D57ED0000000), .. }));
        assert!(matches!(config.devices[1].activation, Activation::Abp { dev_addr: 0x26011BDA, .. }));
        assert_eq!(config.devices[2].activation, Activation::External);
        assert_eq!(config.default_codec, Codec::Cayenne);
        assert_eq!(config.net_id, 0x13);
        let cf = config.cf_list_bytes().unwrap();
        assert_eq!(&cf[..6], &[0x18, 0x4F, 0x84, 0xE8, 0x56, 0x84]);
        assert_eq!(Config::parse(Value::Null).unwrap().devices.len(), 0);
    }

    #[test]
    fn errors_name_the_key_and_never_the_secret() {
        let secret = "00112233445566778899AABBCCDDEEF";
        let cases = [
            (json!({"devices": [{"dev_eui": "01", "app_key": KEY}]}), "devices[0].dev_eui: must be 16 hex digits"),
            (
                json!({"devices": [{"dev_eui": "0000000000000001", "app_key": KEY}, {"dev_eui": "0000000000000002"},
                                   {"dev_eui": "0000000000000003", "app_key": secret}]}),
                "devices[2].app_key: must be 32 hex digits",
            ),
            (
                json!({"devices": [{"dev_eui": "0000000000000001", "app_key": 12345678}]}),
                "devices[0].app_key: must be a string of 32 hex digits",
            ),
            (
                json!({"devices": [{"dev_eui": "0000000000000001", "dev_addr": "01020304", "nwk_s_key": KEY}]}),
                "devices[0].app_s_key: an ABP device needs it",
            ),
            (
                json!({"devices": [{"dev_eui": "0000000000000001", "app_key": KEY, "nwk_s_key": KEY}]}),
                "devices[0]: give either",
            ),
            (json!({"devices": [{"dev_eui": "0000000000000001", "codec": "json"}]}), "devices[0].codec: must be"),
            (
                json!({"devices": [{"dev_eui": "0000000000000001", "colour": "red"}]}),
                "devices[0].colour: unknown field `colour`",
            ),
            (
                json!({"devices": [{"dev_eui": "0000000000000001"}, {"dev_eui": "0000000000000001"}]}),
                "devices[1].dev_eui: ",
            ),
            (
                json!({"devices": [{"dev_eui": "0000000000000001", "dev_addr": "0102030", "nwk_s_key": KEY, "app_s_key": KEY}]}),
                "devices[0].dev_addr: must be 8 hex digits",
            ),
            (json!({"rx1_delay_s": 0}), "rx1_delay_s: must be 1 to 15"),
            (json!({"net_id": "C00053"}), "net_id: only type-0"),
            (json!({"cf_list": [1, 2, 3, 4, 5, 6]}), "cf_list: at most 5"),
            (json!({"default_codec": "xml"}), "default_codec: must be"),
            (json!({"rx1_delay": 1}), "unknown field `rx1_delay`"),
        ];
        for (config, want) in cases {
            let err = Config::parse(config.clone()).unwrap_err();
            assert!(err.starts_with(want) || err.contains(want), "{config}: {err}");
            assert!(
                !err.to_lowercase().contains(&KEY[..12]) && !err.contains(&secret[..12]) && !err.contains("12345678"),
                "{err}"
            );
        }
    }
}
