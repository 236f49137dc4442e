//! Uplinks from another network server, over MQTT: ChirpStack v4 integration events and The Things Stack v3
//! uplink messages. The network server has already checked the MIC, the counters and decrypted the payload; the
//! adapter only maps the JSON onto the same resources as its own devices.

use base64::Engine as _;
use serde::Deserialize;

/// An uplink as another network server reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalUplink {
    /// The DevEUI.
    pub dev_eui: u64,
    /// FPort, absent for MAC-only frames.
    pub fport: Option<u8>,
    /// The decrypted application payload.
    pub payload: Vec<u8>,
    /// The uplink frame counter.
    pub fcnt: Option<u32>,
    /// When the network server received it, µs since the Unix epoch.
    pub time_us: Option<i64>,
    /// What each gateway heard: (gateway id, RSSI, SNR).
    pub receptions: Vec<(String, Option<f64>, Option<f64>)>,
}

/// Which network server a topic belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `application/{id}/device/{devEui}/event/up`
    ChirpStack,
    /// `v3/{app}@{tenant}/devices/{dev}/up`
    TheThingsStack,
}

impl Source {
    /// The network server of an MQTT topic, if it is an uplink topic this adapter maps.
    pub fn of_topic(topic: &str) -> Option<Source> {
        let levels: Vec<&str> = topic.split('/').collect();
        match levels.as_slice() {
            ["application", _, "device", _, "event", "up"] => Some(Source::ChirpStack),
            ["v3", _, "devices", _, "up"] => Some(Source::TheThingsStack),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChirpStackUp {
    #[serde(default)]
    time: Option<String>,
    device_info: ChirpStackDevice,
    #[serde(default)]
    f_cnt: Option<u32>,
    #[serde(default)]
    f_port: Option<u8>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    rx_info: Vec<ChirpStackRx>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChirpStackDevice {
    dev_eui: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChirpStackRx {
    #[serde(default)]
    gateway_id: Option<String>,
    #[serde(default)]
    rssi: Option<f64>,
    #[serde(default)]
    snr: Option<f64>,
}

#[derive(Deserialize)]
struct TtsUp {
    end_device_ids: TtsIds,
    #[serde(default)]
    received_at: Option<String>,
    uplink_message: TtsMessage,
}

#[derive(Deserialize)]
struct TtsIds {
    #[serde(default)]
    dev_eui: Option<String>,
}

#[derive(Deserialize)]
struct TtsMessage {
    #[serde(default)]
    f_port: Option<u8>,
    #[serde(default)]
    f_cnt: Option<u32>,
    #[serde(default)]
    frm_payload: Option<String>,
    #[serde(default)]
    rx_metadata: Vec<TtsRx>,
    #[serde(default)]
    received_at: Option<String>,
}

#[derive(Deserialize)]
struct TtsRx {
    #[serde(default)]
    gateway_ids: Option<TtsGateway>,
    #[serde(default)]
    rssi: Option<f64>,
    #[serde(default)]
    channel_rssi: Option<f64>,
    #[serde(default)]
    snr: Option<f64>,
}

#[derive(Deserialize)]
struct TtsGateway {
    #[serde(default)]
    gateway_id: Option<String>,
    #[serde(default)]
    eui: Option<String>,
}

fn base64(text: Option<&str>) -> Result<Vec<u8>, String> {
    match text {
        None => Ok(Vec::new()),
        Some(text) => {
            base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| "the payload is not base64".to_owned())
        }
    }
}

fn eui(text: &str) -> Result<u64, String> {
    crate::config::parse_eui(text).ok_or_else(|| format!("DevEUI {text:?} is not 16 hex digits"))
}

/// An RFC 3339 time as µs since the Unix epoch.
pub fn rfc3339_us(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros())
}

/// Reads an uplink event of `source`.
pub fn parse(source: Source, payload: &[u8]) -> Result<ExternalUplink, String> {
    match source {
        Source::ChirpStack => {
            let up: ChirpStackUp =
                serde_json::from_slice(payload).map_err(|e| format!("not a ChirpStack uplink: {e}"))?;
            Ok(ExternalUplink {
                dev_eui: eui(&up.device_info.dev_eui)?,
                fport: up.f_port,
                payload: base64(up.data.as_deref())?,
                fcnt: up.f_cnt,
                time_us: up.time.as_deref().and_then(rfc3339_us),
                receptions: up.rx_info.into_iter().map(|r| (r.gateway_id.unwrap_or_default(), r.rssi, r.snr)).collect(),
            })
        }
        Source::TheThingsStack => {
            let up: TtsUp =
                serde_json::from_slice(payload).map_err(|e| format!("not a The Things Stack uplink: {e}"))?;
            let dev_eui = up.end_device_ids.dev_eui.as_deref().ok_or("the uplink has no end_device_ids.dev_eui")?;
            let message = up.uplink_message;
            let time = message.received_at.as_deref().or(up.received_at.as_deref());
            Ok(ExternalUplink {
                dev_eui: eui(dev_eui)?,
                fport: message.f_port,
                payload: base64(message.frm_payload.as_deref())?,
                fcnt: message.f_cnt,
                time_us: time.and_then(rfc3339_us),
                receptions: message
                    .rx_metadata
                    .into_iter()
                    .map(|r| {
                        let id = r.gateway_ids.and_then(|g| g.eui.map(|e| e.to_lowercase()).or(g.gateway_id));
                        (id.unwrap_or_default(), r.rssi.or(r.channel_rssi), r.snr)
                    })
                    .collect(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert_eq!(Source::of_topic("application/0b1c/device/0004a30b001c0530/event/up"), Some(Source::ChirpStack));
        assert_eq!(Source::of_topic("v3/app1@ttn/devices/dev1/up"), Some(Source::TheThingsStack));
        assert_eq!(Source::of_topic("application/0b1c/device/0004a30b001c0530/event/join"), None);
        assert_eq!(Source::of_topic("v3/app1@ttn/devices/dev1/join"), None);
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339_us("1970-01-01T00:00:01.5Z"), Some(1_500_000));
        assert_eq!(rfc3339_us("2024-05-01T12:00:00+02:00"), Some(1_714_557_600_000_000));
        assert_eq!(rfc3339_us("yesterday"), None);
    }
}
