//! The wire format of the Semtech packet-forwarder protocol (GWMP), versions 1 and 2, without I/O.
//!
//! Every datagram starts with a protocol version byte, a two-byte token and an identifier:
//!
//! | identifier | direction | rest |
//! |---|---|---|
//! | `PUSH_DATA` (0) | gateway → hub | gateway EUI (8 bytes), JSON `{"rxpk": [...], "stat": {...}}` |
//! | `PUSH_ACK` (1) | hub → gateway | nothing |
//! | `PULL_DATA` (2) | gateway → hub | gateway EUI (8 bytes) |
//! | `PULL_RESP` (3) | hub → gateway | JSON `{"txpk": {...}}` |
//! | `PULL_ACK` (4) | hub → gateway | nothing |
//! | `TX_ACK` (5, v2) | gateway → hub | gateway EUI (8 bytes), optional JSON `{"txpk_ack": {"error": ...}}` |
//!
//! Parsing never panics: anything short, unknown or malformed is a [`ParseError`].

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::GatewayEui;

/// Gateway → hub: received packets and status.
pub const PUSH_DATA: u8 = 0;
/// Hub → gateway: PUSH_DATA received.
pub const PUSH_ACK: u8 = 1;
/// Gateway → hub: keep-alive that opens the downlink path.
pub const PULL_DATA: u8 = 2;
/// Hub → gateway: a packet to transmit.
pub const PULL_RESP: u8 = 3;
/// Hub → gateway: PULL_DATA received.
pub const PULL_ACK: u8 = 4;
/// Gateway → hub: whether a PULL_RESP was accepted for transmission (protocol version 2).
pub const TX_ACK: u8 = 5;

/// The protocol versions the hub speaks; it answers in the version the gateway used.
pub const SUPPORTED_VERSIONS: [u8; 2] = [1, 2];

/// The largest LoRa PHYPayload a concentrator sends.
pub const MAX_PHY_PAYLOAD: usize = 255;

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than its header, or an identifier the hub does not take.
    Malformed(&'static str),
    /// A protocol version other than 1 or 2.
    Version(u8),
    /// The JSON part does not parse.
    Json(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Malformed(what) => write!(f, "malformed datagram: {what}"),
            ParseError::Version(v) => write!(f, "unsupported protocol version {v}"),
            ParseError::Json(e) => write!(f, "bad JSON: {e}"),
        }
    }
}

/// A datagram from a gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    /// PUSH_DATA: received packets and status.
    PushData {
        /// The protocol version.
        version: u8,
        /// The token to echo in PUSH_ACK.
        token: [u8; 2],
        /// The gateway.
        gateway: GatewayEui,
        /// The JSON object.
        body: PushBody,
    },
    /// PULL_DATA: keep-alive; the sender's address is where PULL_RESP goes.
    PullData {
        /// The protocol version.
        version: u8,
        /// The token to echo in PULL_ACK.
        token: [u8; 2],
        /// The gateway.
        gateway: GatewayEui,
    },
    /// TX_ACK: the fate of a PULL_RESP.
    TxAck {
        /// The protocol version.
        version: u8,
        /// The PULL_RESP's token.
        token: [u8; 2],
        /// The gateway.
        gateway: GatewayEui,
        /// The error the gateway reported (`None` for `NONE`, a warning or no JSON at all).
        error: Option<String>,
    },
}

/// The JSON object of a PUSH_DATA. Each `rxpk` entry is kept as JSON so one bad entry is dropped alone.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PushBody {
    /// Received packets.
    #[serde(default)]
    pub rxpk: Vec<Value>,
    /// Gateway status.
    #[serde(default)]
    pub stat: Option<GatewayStat>,
}

/// A gateway's status report (the `stat` object), as the gateway sent it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayStat {
    /// The gateway's UTC time (`"2024-01-01 10:00:00 GMT"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Latitude, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lati: Option<f64>,
    /// Longitude, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long: Option<f64>,
    /// Altitude, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alti: Option<f64>,
    /// Packets received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rxnb: Option<u64>,
    /// Packets received with a valid CRC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rxok: Option<u64>,
    /// Packets forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rxfw: Option<u64>,
    /// Percentage of upstream datagrams acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ackr: Option<f64>,
    /// Downlink datagrams received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwnb: Option<u64>,
    /// Packets emitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txnb: Option<u64>,
}

/// One received packet (`rxpk`), the fields the hub uses. Unknown fields are ignored: forwarders add their own.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Rxpk {
    /// UTC time of reception (ISO 8601), when the gateway has GPS or NTP time.
    #[serde(default)]
    pub time: Option<String>,
    /// GPS time of reception, milliseconds since the GPS epoch.
    #[serde(default)]
    pub tmms: Option<u64>,
    /// The concentrator's microsecond counter at reception (wraps at 2^32).
    #[serde(default)]
    pub tmst: Option<u32>,
    /// Centre frequency, MHz.
    #[serde(default)]
    pub freq: Option<f64>,
    /// Concentrator IF channel.
    #[serde(default)]
    pub chan: Option<u32>,
    /// Concentrator RF chain.
    #[serde(default)]
    pub rfch: Option<u32>,
    /// CRC status: 1 OK, -1 failed, 0 no CRC.
    #[serde(default)]
    pub stat: Option<i32>,
    /// `LORA` or `FSK`.
    #[serde(default)]
    pub modu: Option<String>,
    /// Data rate: `SF7BW125` (LoRa) or bits per second (FSK).
    #[serde(default)]
    pub datr: Option<Value>,
    /// Coding rate (`4/5`), LoRa only.
    #[serde(default)]
    pub codr: Option<String>,
    /// RSSI, dBm.
    #[serde(default)]
    pub rssi: Option<f64>,
    /// SNR, dB (LoRa only).
    #[serde(default)]
    pub lsnr: Option<f64>,
    /// Payload size, bytes.
    #[serde(default)]
    pub size: Option<usize>,
    /// The PHYPayload, base64.
    #[serde(default)]
    pub data: Option<String>,
    /// Per-antenna signal details of multi-antenna gateways (used when `rssi`/`lsnr` are absent).
    #[serde(default)]
    pub rsig: Option<Vec<Rsig>>,
}

/// One antenna's signal details in an `rxpk`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Rsig {
    /// Channel RSSI, dBm.
    #[serde(default)]
    pub rssic: Option<f64>,
    /// SNR, dB.
    #[serde(default)]
    pub lsnr: Option<f64>,
}

/// Why one `rxpk` was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxpkError {
    /// Its CRC failed or was absent.
    Crc,
    /// Its fields do not parse.
    Invalid(String),
    /// Its `data` is not base64.
    Base64,
}

impl Rxpk {
    /// Reads one `rxpk` entry and decodes its payload; only packets whose CRC is OK pass.
    pub fn decode(value: Value) -> Result<(Rxpk, Vec<u8>), RxpkError> {
        let rxpk: Rxpk = serde_json::from_value(value).map_err(|e| RxpkError::Invalid(e.to_string()))?;
        if rxpk.stat != Some(1) {
            return Err(RxpkError::Crc);
        }
        let data = rxpk.data.as_deref().ok_or_else(|| RxpkError::Invalid("no `data`".to_owned()))?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(data).map_err(|_| RxpkError::Base64)?;
        if bytes.is_empty() || bytes.len() > MAX_PHY_PAYLOAD {
            return Err(RxpkError::Invalid(format!("payload of {} bytes", bytes.len())));
        }
        if rxpk.size.is_some_and(|size| size != bytes.len()) {
            return Err(RxpkError::Invalid("`size` does not match `data`".to_owned()));
        }
        Ok((rxpk, bytes))
    }

    /// The metadata of an inbound message: the radio details as text, under their GWMP names.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let mut meta = BTreeMap::new();
        let mut put = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                meta.insert(key.to_owned(), value);
            }
        };
        let first = self.rsig.as_ref().and_then(|r| r.first());
        put("rssi", self.rssi.or_else(|| first.and_then(|r| r.rssic)).map(number));
        put("lsnr", self.lsnr.or_else(|| first.and_then(|r| r.lsnr)).map(number));
        put("freq", self.freq.map(number));
        put("datr", self.datr.as_ref().map(|d| d.as_str().map(str::to_owned).unwrap_or_else(|| d.to_string())));
        put("codr", self.codr.clone());
        put("modu", self.modu.clone());
        put("tmst", self.tmst.map(|t| t.to_string()));
        put("tmms", self.tmms.map(|t| t.to_string()));
        put("chan", self.chan.map(|c| c.to_string()));
        put("rfch", self.rfch.map(|c| c.to_string()));
        put("time", self.time.clone());
        meta
    }
}

/// A number as the shortest text that reads back the same (`868.1`, `-57`).
fn number(value: f64) -> String {
    value.to_string()
}

/// Parses a datagram from a gateway.
pub fn parse(datagram: &[u8]) -> Result<Upstream, ParseError> {
    let (&version, rest) = datagram.split_first().ok_or(ParseError::Malformed("empty"))?;
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(ParseError::Version(version));
    }
    let (token, rest) = rest.split_first_chunk::<2>().ok_or(ParseError::Malformed("no token"))?;
    let (&identifier, rest) = rest.split_first().ok_or(ParseError::Malformed("no identifier"))?;
    let token = *token;
    fn eui(rest: &[u8]) -> Result<(GatewayEui, &[u8]), ParseError> {
        let (eui, rest) = rest.split_first_chunk::<8>().ok_or(ParseError::Malformed("no gateway EUI"))?;
        Ok((GatewayEui(u64::from_be_bytes(*eui)), rest))
    }
    match identifier {
        PUSH_DATA => {
            let (gateway, rest) = eui(rest)?;
            let json = trim_json(rest);
            if json.is_empty() {
                return Err(ParseError::Malformed("PUSH_DATA without JSON"));
            }
            let body: PushBody = serde_json::from_slice(json).map_err(|e| ParseError::Json(e.to_string()))?;
            Ok(Upstream::PushData { version, token, gateway, body })
        }
        PULL_DATA => {
            let (gateway, rest) = eui(rest)?;
            if !rest.is_empty() {
                return Err(ParseError::Malformed("PULL_DATA longer than its header"));
            }
            Ok(Upstream::PullData { version, token, gateway })
        }
        TX_ACK => {
            let (gateway, rest) = eui(rest)?;
            let json = trim_json(rest);
            let error = if json.is_empty() {
                None
            } else {
                let body: TxAckBody = serde_json::from_slice(json).map_err(|e| ParseError::Json(e.to_string()))?;
                body.txpk_ack.and_then(|a| a.error).filter(|e| e != "NONE")
            };
            Ok(Upstream::TxAck { version, token, gateway, error })
        }
        PUSH_ACK | PULL_RESP | PULL_ACK => Err(ParseError::Malformed("a server-to-gateway identifier")),
        _ => Err(ParseError::Malformed("unknown identifier")),
    }
}

/// Some forwarders end the JSON with NUL bytes or whitespace.
fn trim_json(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|b| !matches!(b, 0 | b' ' | b'\n' | b'\r' | b'\t')).map_or(0, |i| i + 1);
    bytes.get(..end).unwrap_or_default()
}

#[derive(Deserialize)]
struct TxAckBody {
    #[serde(default)]
    txpk_ack: Option<TxAckInner>,
}

#[derive(Deserialize)]
struct TxAckInner {
    #[serde(default)]
    error: Option<String>,
}

/// PUSH_ACK or PULL_ACK for `token`, in `version`.
pub fn ack(version: u8, token: [u8; 2], identifier: u8) -> [u8; 4] {
    [version, token[0], token[1], identifier]
}

/// One packet to transmit (`txpk`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Txpk {
    /// Send immediately, ignoring `tmst`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub imme: bool,
    /// Send when the concentrator's counter reaches this value (µs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmst: Option<u32>,
    /// Send at this GPS time (ms since the GPS epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmms: Option<u64>,
    /// Centre frequency, MHz.
    pub freq: f64,
    /// RF chain.
    pub rfch: u32,
    /// TX power, dBm (the gateway's default when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub powe: Option<i32>,
    /// `LORA` or `FSK`.
    pub modu: String,
    /// `SF9BW125` (LoRa, a string) or bits per second (FSK, a number).
    pub datr: Value,
    /// Coding rate, LoRa only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codr: Option<String>,
    /// FSK frequency deviation, Hz.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fdev: Option<u32>,
    /// Inverted polarity (LoRa downlinks to devices: true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipol: Option<bool>,
    /// Preamble length, symbols.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prea: Option<u32>,
    /// Disable the physical-layer CRC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ncrc: Option<bool>,
    /// Payload size, bytes.
    pub size: usize,
    /// Payload, base64.
    pub data: String,
}

impl Txpk {
    /// Builds a `txpk` from an outbound message's metadata and payload. Keys (all text): `tmst` or `tmms` or
    /// `imme = true`, `freq` (MHz), `datr`; optional `rfch` (default 0), `powe`, `modu` (default `LORA`),
    /// `codr` (default `4/5` for LoRa), `ipol` (default `true` for LoRa), `fdev`, `prea`, `ncrc`.
    pub fn from_metadata(meta: &BTreeMap<String, String>, payload: &[u8]) -> Result<Txpk, String> {
        if payload.is_empty() || payload.len() > MAX_PHY_PAYLOAD {
            return Err(format!("the payload must be 1 to {MAX_PHY_PAYLOAD} bytes, not {}", payload.len()));
        }
        fn field<T: std::str::FromStr>(meta: &BTreeMap<String, String>, key: &str) -> Result<Option<T>, String> {
            meta.get(key)
                .map(|v| v.trim().parse::<T>().map_err(|_| format!("metadata {key}: {v:?} is not valid")))
                .transpose()
        }
        let imme = field::<bool>(meta, "imme")?.unwrap_or(false);
        let tmst = field::<u32>(meta, "tmst")?;
        let tmms = field::<u64>(meta, "tmms")?;
        if !imme && tmst.is_none() && tmms.is_none() {
            return Err("metadata needs tmst, tmms or imme = true".to_owned());
        }
        let freq = field::<f64>(meta, "freq")?.ok_or("metadata freq (MHz) is required")?;
        if !(freq.is_finite() && freq > 0.0 && freq < 10_000.0) {
            return Err("metadata freq must be a frequency in MHz".to_owned());
        }
        let modu = meta.get("modu").cloned().unwrap_or_else(|| "LORA".to_owned());
        let lora = match modu.as_str() {
            "LORA" => true,
            "FSK" => false,
            other => return Err(format!("metadata modu must be LORA or FSK, not {other:?}")),
        };
        let datr_text = meta.get("datr").ok_or("metadata datr is required")?;
        let datr = if lora {
            if !datr_text.starts_with("SF") || !datr_text.contains("BW") {
                return Err(format!("metadata datr {datr_text:?} is not a LoRa data rate such as SF9BW125"));
            }
            Value::String(datr_text.clone())
        } else {
            Value::from(field::<u32>(meta, "datr")?.ok_or("metadata datr is required")?)
        };
        Ok(Txpk {
            imme,
            tmst: if imme { None } else { tmst },
            tmms: if imme { None } else { tmms },
            freq,
            rfch: field::<u32>(meta, "rfch")?.unwrap_or(0),
            powe: field::<i32>(meta, "powe")?,
            codr: if lora { Some(meta.get("codr").cloned().unwrap_or_else(|| "4/5".to_owned())) } else { None },
            fdev: field::<u32>(meta, "fdev")?,
            ipol: Some(field::<bool>(meta, "ipol")?.unwrap_or(lora)),
            prea: field::<u32>(meta, "prea")?,
            ncrc: field::<bool>(meta, "ncrc")?,
            modu,
            datr,
            size: payload.len(),
            data: base64::engine::general_purpose::STANDARD.encode(payload),
        })
    }
}

/// A PULL_RESP carrying `txpk`.
pub fn pull_resp(version: u8, token: [u8; 2], txpk: &Txpk) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        txpk: &'a Txpk,
    }
    let mut datagram = vec![version, token[0], token[1], PULL_RESP];
    // Serialising plain numbers, strings and booleans cannot fail.
    if let Ok(json) = serde_json::to_vec(&Body { txpk }) {
        datagram.extend_from_slice(&json);
    }
    datagram
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn push(version: u8, json: &str) -> Vec<u8> {
        let mut d = vec![version, 0xAB, 0xCD, PUSH_DATA, 1, 2, 3, 4, 5, 6, 7, 8];
        d.extend_from_slice(json.as_bytes());
        d
    }

    #[test]
    fn push_data_parses() {
        let d = push(2, r#"{"rxpk":[{"stat":1,"data":"QAE="}],"stat":{"rxnb":3}}"#);
        let Upstream::PushData { version, token, gateway, body } = parse(&d).unwrap() else { panic!() };
        assert_eq!((version, token), (2, [0xAB, 0xCD]));
        assert_eq!(gateway.to_string(), "0102030405060708");
        assert_eq!(body.rxpk.len(), 1);
        assert_eq!(body.stat.unwrap().rxnb, Some(3));
        // Trailing NULs are tolerated.
        let mut d = push(1, r#"{"stat":{}}"#);
        d.extend_from_slice(&[0, 0]);
        assert!(parse(&d).is_ok());
    }

    #[test]
    fn bad_datagrams_are_errors() {
        assert_eq!(parse(&[]), Err(ParseError::Malformed("empty")));
        assert_eq!(parse(&[3, 0, 0, 0]), Err(ParseError::Version(3)));
        assert!(matches!(parse(&[2, 0]), Err(ParseError::Malformed(_))));
        assert!(matches!(parse(&[2, 0, 0, PUSH_DATA, 1, 2]), Err(ParseError::Malformed(_))));
        assert!(matches!(parse(&push(2, "")), Err(ParseError::Malformed(_))));
        assert!(matches!(parse(&push(2, "{nope")), Err(ParseError::Json(_))));
        assert!(matches!(parse(&push(2, r#"{"rxpk":7}"#)), Err(ParseError::Json(_))));
        assert!(matches!(parse(&[2, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8]), Err(ParseError::Malformed(_))));
        assert!(matches!(parse(&[2, 0, 0, PULL_ACK]), Err(ParseError::Malformed(_))));
        // Every prefix of a valid datagram parses or fails cleanly.
        let d = push(2, r#"{"rxpk":[{"stat":1,"data":"QAE="}]}"#);
        for n in 0..d.len() {
            let _ = parse(&d[..n]);
        }
    }

    #[test]
    fn tx_ack_errors() {
        let mut d = vec![2, 1, 2, TX_ACK, 0, 0, 0, 0, 0, 0, 0, 9];
        assert!(matches!(parse(&d), Ok(Upstream::TxAck { error: None, .. })));
        d.extend_from_slice(br#"{"txpk_ack":{"error":"TOO_LATE"}}"#);
        assert!(matches!(parse(&d), Ok(Upstream::TxAck { error: Some(e), .. }) if e == "TOO_LATE"));
        let mut ok = vec![2, 1, 2, TX_ACK, 0, 0, 0, 0, 0, 0, 0, 9];
        ok.extend_from_slice(br#"{"txpk_ack":{"error":"NONE"}}"#);
        assert!(matches!(parse(&ok), Ok(Upstream::TxAck { error: None, .. })));
    }

    #[test]
    fn rxpk_decoding() {
        let good = json!({"stat": 1, "data": "QAE=", "size": 2, "rssi": -57, "lsnr": 9.5, "freq": 868.1,
                          "datr": "SF7BW125", "tmst": 123, "time": "2024-01-01T00:00:00Z"});
        let (rxpk, bytes) = Rxpk::decode(good.clone()).unwrap();
        assert_eq!(bytes, vec![0x40, 0x01]);
        let meta = rxpk.metadata();
        assert_eq!(meta["rssi"], "-57");
        assert_eq!(meta["lsnr"], "9.5");
        assert_eq!(meta["freq"], "868.1");
        assert_eq!(meta["datr"], "SF7BW125");
        assert_eq!(meta["tmst"], "123");
        let mut crc = good.clone();
        crc["stat"] = json!(-1);
        assert_eq!(Rxpk::decode(crc).unwrap_err(), RxpkError::Crc);
        let mut b64 = good.clone();
        b64["data"] = json!("*not base64*");
        assert_eq!(Rxpk::decode(b64).unwrap_err(), RxpkError::Base64);
        let mut size = good.clone();
        size["size"] = json!(3);
        assert!(matches!(Rxpk::decode(size), Err(RxpkError::Invalid(_))));
        let mut fsk = good;
        fsk["datr"] = json!(50000);
        fsk.as_object_mut().unwrap().remove("rssi");
        fsk["rsig"] = json!([{"rssic": -80, "lsnr": 1.5}]);
        let meta = Rxpk::decode(fsk).unwrap().0.metadata();
        assert_eq!((meta["datr"].as_str(), meta["rssi"].as_str()), ("50000", "-80"));
    }

    #[test]
    fn txpk_from_metadata() {
        let meta: BTreeMap<String, String> =
            [("tmst", "1000000"), ("freq", "868.1"), ("datr", "SF7BW125"), ("powe", "14")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let txpk = Txpk::from_metadata(&meta, &[1, 2, 3]).unwrap();
        let json = serde_json::to_value(&txpk).unwrap();
        assert_eq!(
            json,
            json!({"tmst": 1000000, "freq": 868.1, "rfch": 0, "powe": 14, "modu": "LORA", "datr": "SF7BW125",
                   "codr": "4/5", "ipol": true, "size": 3, "data": "AQID"})
        );
        let datagram = pull_resp(2, [7, 8], &txpk);
        assert_eq!(&datagram[..4], &[2, 7, 8, PULL_RESP]);
        let mut bad = meta.clone();
        bad.remove("tmst");
        assert!(Txpk::from_metadata(&bad, &[1]).is_err());
        let mut imme = bad.clone();
        imme.insert("imme".into(), "true".into());
        assert!(Txpk::from_metadata(&imme, &[1]).unwrap().imme);
        assert!(Txpk::from_metadata(&meta, &[]).is_err());
        assert!(Txpk::from_metadata(&meta, &[0; 256]).is_err());
        let mut datr = meta;
        datr.insert("datr".into(), "fast".into());
        assert!(Txpk::from_metadata(&datr, &[1]).is_err());
    }
}
