//! One reading: a payload decoded by its Content-Format, as a bare value or `{"value": .., "timestamp": ..}`.

use serde_json::Value;

use crate::cbor;

/// Content-Format numbers (RFC 7252 §12.3 and the CoRE registry).
pub mod cf {
    /// `text/plain; charset=utf-8`.
    pub const TEXT: u16 = 0;
    /// `application/octet-stream`.
    pub const OCTET_STREAM: u16 = 42;
    /// `application/json`.
    pub const JSON: u16 = 50;
    /// `application/cbor`.
    pub const CBOR: u16 = 60;
    /// `application/senml+json`.
    pub const SENML_JSON: u16 = 110;
    /// `application/senml+cbor`.
    pub const SENML_CBOR: u16 = 112;
}

/// The largest distance from the epoch a time may have, in microseconds (the year 9999).
const MAX_MICROS: f64 = 253_402_300_800_000_000.0;

/// SenML times below 2^28 seconds are relative to now (RFC 8428 §4.5.3).
pub const RELATIVE_LIMIT_S: f64 = 268_435_456.0;

/// A decoded reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The value (never null).
    pub value: Value,
    /// When it was measured, in microseconds since the Unix epoch; the receive time when the device said none.
    pub timestamp_us: i64,
}

/// Decodes a payload into a JSON value by its Content-Format (`None` when the request had none: JSON, then
/// UTF-8 text as a string).
pub fn decode(content_format: Option<u16>, payload: &[u8]) -> Result<Value, String> {
    match content_format {
        Some(cf::JSON) => serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}")),
        Some(cf::CBOR) => cbor::decode(payload),
        Some(cf::TEXT) | None => {
            let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8 text".to_owned())?;
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return Err("empty payload".to_owned());
            }
            Ok(serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(trimmed.to_owned())))
        }
        Some(cf::OCTET_STREAM) => Err("opaque bytes (42) carry no reading; send JSON, CBOR or SenML".to_owned()),
        Some(other) => Err(format!("Content-Format {other} is not one this adapter reads")),
    }
}

/// Turns a decoded value into a reading: the envelope `{"value": v}` or `{"value": v, "timestamp": t}` unwraps
/// (t is RFC 3339 text, or milliseconds since the epoch as in the MQTT adapter); anything else is the value
/// itself.
pub fn reading(value: Value, received_us: i64) -> Result<Reading, String> {
    let (value, timestamp_us) = match value {
        Value::Object(mut map) if map.contains_key("value") && map.keys().all(|k| k == "value" || k == "timestamp") => {
            let timestamp_us = match map.remove("timestamp") {
                None | Some(Value::Null) => received_us,
                Some(t) => timestamp(&t)?,
            };
            (map.remove("value").unwrap_or(Value::Null), timestamp_us)
        }
        other => (other, received_us),
    };
    if value.is_null() {
        return Err("null is not a value".to_owned());
    }
    Ok(Reading { value, timestamp_us })
}

/// An envelope timestamp: RFC 3339 text (`Z` or an offset), or milliseconds since the epoch.
pub fn timestamp(t: &Value) -> Result<i64, String> {
    match t {
        Value::Number(n) => {
            let millis = n.as_f64().ok_or("timestamp is not a number")?;
            if !millis.is_finite() || millis.abs() > MAX_MICROS / 1_000.0 {
                return Err(format!("timestamp {millis} ms is out of range"));
            }
            Ok((millis * 1_000.0) as i64)
        }
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|dt| dt.timestamp_micros())
            .map_err(|e| format!("timestamp {text:?} is not RFC 3339: {e}")),
        other => Err(format!("timestamp must be RFC 3339 text or milliseconds, not {other}")),
    }
}

/// Seconds (SenML style) to microseconds since the epoch.
pub fn seconds_to_us(seconds: f64, received_us: i64) -> Result<i64, String> {
    if !seconds.is_finite() {
        return Err("time is not finite".to_owned());
    }
    let micros = seconds * 1_000_000.0;
    if micros.abs() > MAX_MICROS {
        return Err(format!("time {seconds} is out of range"));
    }
    let micros = micros as i64;
    if seconds.abs() < RELATIVE_LIMIT_S { Ok(received_us.saturating_add(micros)) } else { Ok(micros) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_by_content_format() {
        assert_eq!(decode(Some(cf::JSON), b"21.5"), Ok(json!(21.5)));
        assert_eq!(decode(Some(cf::CBOR), &[0xf9, 0x3c, 0x00]), Ok(json!(1.0)));
        assert_eq!(decode(None, b" 42 "), Ok(json!(42)));
        assert_eq!(decode(None, b"on"), Ok(json!("on")));
        assert_eq!(decode(Some(cf::TEXT), b"true"), Ok(json!(true)));
        assert!(decode(Some(cf::JSON), b"{").is_err());
        assert!(decode(None, &[0xff]).is_err());
        assert!(decode(None, b"  ").is_err());
        assert!(decode(Some(cf::OCTET_STREAM), b"x").is_err());
        assert!(decode(Some(41), b"<x/>").is_err());
    }

    #[test]
    fn readings_and_timestamps() {
        let now = 1_700_000_000_000_000;
        assert_eq!(reading(json!(3), now), Ok(Reading { value: json!(3), timestamp_us: now }));
        let r = reading(json!({"value": 3, "timestamp": "2024-01-01T00:00:00+01:00"}), now).unwrap();
        assert_eq!(r.timestamp_us, 1_704_063_600_000_000);
        let r = reading(json!({"value": "x", "timestamp": 1_700_000_001_500u64}), now).unwrap();
        assert_eq!(r.timestamp_us, 1_700_000_001_500_000, "milliseconds, as in the MQTT adapter");
        // Other objects are values of their own.
        let r = reading(json!({"value": 1, "unit": "C"}), now).unwrap();
        assert_eq!(r.value, json!({"value": 1, "unit": "C"}));
        assert!(reading(Value::Null, now).is_err());
        assert!(reading(json!({"value": null}), now).is_err());
        assert!(reading(json!({"value": 1, "timestamp": "yesterday"}), now).is_err());
        assert!(reading(json!({"value": 1, "timestamp": [1]}), now).is_err());
        assert!(reading(json!({"value": 1, "timestamp": 1e300}), now).is_err());
        assert_eq!(seconds_to_us(-10.0, now), Ok(now - 10_000_000), "SenML: relative below 2^28 s");
        assert_eq!(seconds_to_us(1.7e9, now), Ok(1_700_000_000_000_000));
    }
}
