//! Payload codecs: Cayenne LPP, raw bytes, and an integrator's decoder that is itself a plugin (an app). A codec
//! turns an application payload into readings, all or nothing: a payload that does not decode in full yields an
//! error and no reading.

use serde_json::{Value, json};

/// How a device's application payload is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codec {
    /// Cayenne Low Power Payload: `channel | type | value` records.
    Cayenne,
    /// The bytes as a lowercase hex string in resource `raw`.
    Raw,
    /// `app:<id>`: the plugin `<id>` (of kind `app`) decodes the payload; the host calls it with the payload
    /// and writes the object it returns as resources of the `uplink` service (see [`Codec::app_call`]).
    App(String),
}

impl Codec {
    /// The codec called `name` (`cayenne`, `raw` or `app:<plugin id>`).
    pub fn by_name(name: &str) -> Option<Codec> {
        match name {
            "cayenne" | "cayenne_lpp" => Some(Codec::Cayenne),
            "raw" => Some(Codec::Raw),
            _ => {
                let id = name.strip_prefix("app:")?;
                let valid = (1..=64).contains(&id.len())
                    && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
                valid.then(|| Codec::App(id.to_owned()))
            }
        }
    }

    /// Decodes `payload` into readings here; `None` for a codec the host runs (an app).
    pub fn decode(&self, payload: &[u8]) -> Option<Result<Vec<Reading>, String>> {
        match self {
            Codec::Cayenne => Some(cayenne(payload)),
            Codec::Raw => Some(Ok(vec![Reading {
                resource: "raw".to_owned(),
                value: json!(crate::hex_encode(payload)),
                unit: None,
            }])),
            Codec::App(_) => None,
        }
    }

    /// For an app codec: the call the host makes with the uplink's payload, whose result becomes resources
    /// `{provider}/uplink/{key}` measured at `at_us`. The app gets `payload_hex`, `port`, `dev_eui` and `fcnt`.
    pub fn app_call(
        &self,
        provider: &str,
        dev_eui: u64,
        port: u8,
        fcnt: Option<u32>,
        payload: &[u8],
        at_us: i64,
    ) -> Option<hub_plugin_sdk::abi::AppCall> {
        let Codec::App(app) = self else {
            return None;
        };
        let mut params = serde_json::Map::new();
        params.insert("payload_hex".to_owned(), json!(crate::hex_encode(payload)));
        params.insert("port".to_owned(), json!(port));
        params.insert("dev_eui".to_owned(), json!(format!("{dev_eui:016x}")));
        params.insert("fcnt".to_owned(), json!(fcnt));
        Some(hub_plugin_sdk::abi::AppCall {
            app: app.clone(),
            params,
            provider: provider.to_owned(),
            service: "uplink".to_owned(),
            timestamp_us: Some(at_us),
        })
    }
}

/// One decoded value: a resource of the `uplink` service.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The resource name (`temperature_1`, `gps_3_latitude`, `raw`).
    pub resource: String,
    /// The value.
    pub value: Value,
    /// Its unit, when it has one.
    pub unit: Option<&'static str>,
}

/// Cayenne LPP data types: (type id, name, value size in bytes).
const TYPES: &[(u8, &str, usize)] = &[
    (0, "digital_input", 1),
    (1, "digital_output", 1),
    (2, "analog_input", 2),
    (3, "analog_output", 2),
    (101, "illuminance", 2),
    (102, "presence", 1),
    (103, "temperature", 2),
    (104, "humidity", 1),
    (113, "accelerometer", 6),
    (115, "barometer", 2),
    (134, "gyrometer", 6),
    (136, "gps", 9),
];

fn i16_at(b: &[u8], at: usize) -> Option<f64> {
    Some(f64::from(i16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?])))
}

fn u16_at(b: &[u8], at: usize) -> Option<f64> {
    Some(f64::from(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?])))
}

fn i24_at(b: &[u8], at: usize) -> Option<f64> {
    let raw = i32::from_be_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, 0]) >> 8;
    Some(f64::from(raw))
}

/// Decodes Cayenne LPP. Every record must be complete and of a known type.
pub fn cayenne(payload: &[u8]) -> Result<Vec<Reading>, String> {
    let mut readings = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let (&[channel, type_id], after) = rest.split_first_chunk::<2>().ok_or("a record is cut short")?;
        let &(_, name, size) =
            TYPES.iter().find(|(id, _, _)| *id == type_id).ok_or_else(|| format!("unknown Cayenne type {type_id}"))?;
        let (v, next) =
            after.split_at_checked(size).ok_or_else(|| format!("{name} on channel {channel} is cut short"))?;
        rest = next;
        let mut put = |suffix: &str, value: f64, unit: Option<&'static str>| {
            readings.push(Reading { resource: format!("{name}_{channel}{suffix}"), value: json!(value), unit });
        };
        let cut = || format!("{name} on channel {channel} is cut short");
        match type_id {
            0 | 1 | 102 => put("", f64::from(*v.first().ok_or_else(cut)?), None),
            2 | 3 => put("", i16_at(v, 0).ok_or_else(cut)? / 100.0, None),
            101 => put("", u16_at(v, 0).ok_or_else(cut)?, Some("lx")),
            103 => put("", i16_at(v, 0).ok_or_else(cut)? / 10.0, Some("Cel")),
            104 => put("", f64::from(*v.first().ok_or_else(cut)?) / 2.0, Some("%RH")),
            115 => put("", u16_at(v, 0).ok_or_else(cut)? / 10.0, Some("hPa")),
            113 | 134 => {
                let (scale, unit) = if type_id == 113 { (1000.0, "G") } else { (100.0, "deg/s") };
                for (i, axis) in ["_x", "_y", "_z"].into_iter().enumerate() {
                    put(axis, i16_at(v, 2 * i).ok_or_else(cut)? / scale, Some(unit));
                }
            }
            136 => {
                put("_latitude", i24_at(v, 0).ok_or_else(cut)? / 10_000.0, Some("lat"));
                put("_longitude", i24_at(v, 3).ok_or_else(cut)? / 10_000.0, Some("lon"));
                put("_altitude", i24_at(v, 6).ok_or_else(cut)? / 100.0, Some("m"));
            }
            _ => return Err(format!("unknown Cayenne type {type_id}")),
        }
    }
    Ok(readings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(payload: &str) -> Vec<(String, Value, Option<&'static str>)> {
        cayenne(&crate::hex_decode(payload).unwrap())
            .unwrap()
            .into_iter()
            .map(|r| (r.resource, r.value, r.unit))
            .collect()
    }

    #[test]
    fn decodes_the_reference_examples() {
        // The examples of the Cayenne LPP documentation.
        assert_eq!(
            values("03670110056700FF"),
            vec![
                ("temperature_3".into(), json!(27.2), Some("Cel")),
                ("temperature_5".into(), json!(25.5), Some("Cel")),
            ]
        );
        assert_eq!(
            values("067104D2FB2E0000"),
            vec![
                ("accelerometer_6_x".into(), json!(1.234), Some("G")),
                ("accelerometer_6_y".into(), json!(-1.234), Some("G")),
                ("accelerometer_6_z".into(), json!(0.0), Some("G")),
            ]
        );
        assert_eq!(
            values("018806765ff2960a0003e8"),
            vec![
                ("gps_1_latitude".into(), json!(42.3519), Some("lat")),
                ("gps_1_longitude".into(), json!(-87.9094), Some("lon")),
                ("gps_1_altitude".into(), json!(10.0), Some("m")),
            ]
        );
    }

    #[test]
    fn decodes_every_type() {
        let v = values("0000010101010202ff9c030303e80465012c05660106680a07732777088600640064ff9c");
        let names: Vec<&str> = v.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "digital_input_0",
                "digital_output_1",
                "analog_input_2",
                "analog_output_3",
                "illuminance_4",
                "presence_5",
                "humidity_6",
                "barometer_7",
                "gyrometer_8_x",
                "gyrometer_8_y",
                "gyrometer_8_z"
            ]
        );
        assert_eq!(v[0].1, json!(1.0));
        assert_eq!(v[2].1, json!(-1.0));
        assert_eq!(v[3].1, json!(10.0));
        assert_eq!(v[4].1, json!(300.0));
        assert_eq!(v[6].1, json!(5.0));
        assert_eq!(v[7].1, json!(1010.3));
        assert_eq!(v[8].1, json!(1.0));
        assert_eq!(v[10].1, json!(-1.0));
    }

    #[test]
    fn bad_payloads_decode_to_nothing() {
        for bad in ["03", "0367", "036701", "03ff0000", "0188067600", "03670110056700"] {
            assert!(cayenne(&crate::hex_decode(bad).unwrap()).is_err(), "{bad}");
        }
        assert_eq!(cayenne(&[]).unwrap(), vec![]);
        assert_eq!(
            Codec::Raw.decode(&[1, 0xAB]).unwrap().unwrap(),
            vec![Reading { resource: "raw".into(), value: json!("01ab"), unit: None }]
        );
    }

    #[test]
    fn app_codecs_are_named_and_run_by_the_host() {
        let codec = Codec::by_name("app:parking-codec").unwrap();
        assert_eq!(codec, Codec::App("parking-codec".to_owned()));
        assert!(codec.decode(&[1, 2]).is_none(), "an app codec is not run in the adapter");
        let call = codec.app_call("lora-0000000000000001", 1, 2, Some(7), &[1, 0xAB], 42).unwrap();
        assert_eq!(
            (call.app.as_str(), call.provider.as_str(), call.service.as_str()),
            ("parking-codec", "lora-0000000000000001", "uplink")
        );
        assert_eq!(call.timestamp_us, Some(42));
        assert_eq!(
            serde_json::Value::Object(call.params),
            json!({"payload_hex": "01ab", "port": 2, "dev_eui": "0000000000000001", "fcnt": 7})
        );
        assert!(Codec::Raw.app_call("p", 1, 2, None, &[], 0).is_none());
        for bad in ["app:", "app:Bad", "app:a b", "plugin:x", "json"] {
            assert!(Codec::by_name(bad).is_none(), "{bad}");
        }
    }
}
