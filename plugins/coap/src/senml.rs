//! SenML packs (RFC 8428), JSON (110) and CBOR (112), resolved into updates.
//!
//! A record's full name is the base path it arrived under (the path segments after `/up`, or an observation's
//! configured parts) followed by `bn` + `n` split at `/`; it must come to exactly `provider/service/resource`.
//! A bad record (bad name, no value, wrong type) is skipped with a warning and the rest of the pack applies; a
//! pack the RFC says to refuse whole (not an array, a must-understand field, a newer version) is refused whole.

use serde_json::{Map, Value, json};

use crate::names;
use crate::values::seconds_to_us;

/// One resolved record.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// Provider name.
    pub provider: String,
    /// Service name.
    pub service: String,
    /// Resource name.
    pub resource: String,
    /// The value.
    pub value: Value,
    /// When, in microseconds since the epoch.
    pub timestamp_us: i64,
}

/// The highest SenML version understood.
const MAX_VERSION: f64 = 10.0;

/// The integer labels of SenML CBOR (RFC 8428 §6), as the CBOR decoder writes map keys.
fn cbor_label(key: &str) -> Option<&'static str> {
    Some(match key {
        "-1" => "bver",
        "-2" => "bn",
        "-3" => "bt",
        "-4" => "bu",
        "-5" => "bv",
        "-6" => "bs",
        "0" => "n",
        "1" => "u",
        "2" => "v",
        "3" => "vs",
        "4" => "vb",
        "5" => "s",
        "6" => "t",
        "7" => "ut",
        "8" => "vd",
        _ => return None,
    })
}

const BASE_FIELDS: &[&str] = &["bn", "bt", "bu", "bv", "bs", "bver"];

/// Resolves `pack` (decoded from JSON, or from CBOR when `cbor`), taking at most `max_records` records.
/// Warnings for skipped records go to `warn`.
pub fn resolve(
    pack: Value,
    cbor: bool,
    base: &[&str],
    received_us: i64,
    max_records: usize,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<Resolved>, String> {
    let Value::Array(records) = pack else {
        return Err("a SenML pack must be an array of records".to_owned());
    };
    let mut records: Vec<Map<String, Value>> = records
        .into_iter()
        .enumerate()
        .filter_map(|(i, record)| match record {
            Value::Object(map) if cbor => {
                Some(map.into_iter().map(|(k, v)| (cbor_label(&k).map(str::to_owned).unwrap_or(k), v)).collect())
            }
            Value::Object(map) => Some(map),
            other => {
                warn(format!("SenML record [{i}] is not an object but {}", kind(&other)));
                None
            }
        })
        .collect();
    // RFC 8428 §4.4: must-understand fields and newer versions refuse the whole pack.
    for record in &records {
        if let Some(key) = record.keys().find(|k| k.ends_with('_')) {
            return Err(format!("must-understand SenML field {key:?} is not supported"));
        }
        if let Some(bver) = record.get("bver")
            && bver.as_f64().is_none_or(|v| v > MAX_VERSION)
        {
            return Err(format!("SenML version {bver} is not supported"));
        }
    }
    if records.len() > max_records {
        warn(format!("SenML pack of {} records: only the first {max_records} are read", records.len()));
        records.truncate(max_records);
    }
    let mut base_name = String::new();
    let mut base_time = 0.0f64;
    let mut base_value: Option<f64> = None;
    let mut base_sum: Option<f64> = None;
    let mut out = Vec::with_capacity(records.len());
    for (i, record) in records.into_iter().enumerate() {
        // Base fields apply from their record on, even when that record itself is bad.
        match record.get("bn") {
            None => {}
            Some(Value::String(bn)) => base_name = bn.clone(),
            Some(other) => {
                warn(format!("SenML record [{i}]: bn must be text, not {}", kind(other)));
                continue;
            }
        }
        if let Some(bt) = record.get("bt") {
            match bt.as_f64() {
                Some(bt) => base_time = bt,
                None => {
                    warn(format!("SenML record [{i}]: bt must be a number"));
                    continue;
                }
            }
        }
        for (field, slot) in [("bv", &mut base_value), ("bs", &mut base_sum)] {
            if let Some(v) = record.get(field) {
                *slot = v.as_f64();
            }
        }
        match record_update(&record, &base_name, base_time, base_value, base_sum, base, received_us) {
            Ok(Some(update)) => out.push(update),
            Ok(None) => {}
            Err(reason) => warn(format!("SenML record [{i}] skipped: {reason}")),
        }
    }
    Ok(out)
}

fn record_update(
    record: &Map<String, Value>,
    base_name: &str,
    base_time: f64,
    base_value: Option<f64>,
    base_sum: Option<f64>,
    base: &[&str],
    received_us: i64,
) -> Result<Option<Resolved>, String> {
    let number = |field: &str| -> Result<Option<f64>, String> {
        match record.get(field) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| format!("{field} must be a number, not {}", kind(v))),
        }
    };
    let v = number("v")?;
    let s = number("s")?;
    let vs = match record.get("vs") {
        None => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(other) => return Err(format!("vs must be text, not {}", kind(other))),
    };
    let vb = match record.get("vb") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => return Err(format!("vb must be a boolean, not {}", kind(other))),
    };
    let vd = match record.get("vd") {
        None => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(other) => return Err(format!("vd must be base64 text, not {}", kind(other))),
    };
    let value = match (v, vs, vb, vd, s) {
        (Some(v), None, None, None, None) => finite(base_value.unwrap_or(0.0) + v)?,
        (None, Some(vs), None, None, None) => Value::String(vs),
        (None, None, Some(vb), None, None) => Value::Bool(vb),
        (None, None, None, Some(vd), None) => Value::String(vd),
        (None, None, None, None, Some(s)) => finite(base_sum.unwrap_or(0.0) + s)?,
        (None, None, None, None, None) => match base_value {
            Some(bv) if record.contains_key("n") || record.contains_key("bv") => finite(bv)?,
            _ if record.keys().all(|k| BASE_FIELDS.contains(&k.as_str())) => return Ok(None),
            _ => return Err("no value (v, vs, vb, vd or s)".to_owned()),
        },
        _ => return Err("more than one value field".to_owned()),
    };
    let n = match record.get("n") {
        None => "",
        Some(Value::String(n)) => n.as_str(),
        Some(other) => return Err(format!("n must be text, not {}", kind(other))),
    };
    let name = format!("{base_name}{n}");
    let mut parts: Vec<&str> = base.to_vec();
    if !name.is_empty() {
        parts.extend(name.split('/'));
    }
    let (provider, service, resource) = names::triple(&parts)?;
    let t = base_time + number("t")?.unwrap_or(0.0);
    let timestamp_us = seconds_to_us(t, received_us)?;
    Ok(Some(Resolved { provider, service, resource, value, timestamp_us }))
}

fn finite(f: f64) -> Result<Value, String> {
    if f.is_finite() { Ok(json!(f)) } else { Err("the value is not finite".to_owned()) }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pack: Value, base: &[&str]) -> (Result<Vec<Resolved>, String>, Vec<String>) {
        let mut warnings = Vec::new();
        let out = resolve(pack, false, base, 1_000_000_000, 100, &mut |w| warnings.push(w));
        (out, warnings)
    }

    #[test]
    fn base_fields_names_and_times() {
        let (out, warnings) = run(
            json!([
                {"bn": "s/", "bt": 1.7e9, "n": "level", "v": 71.5, "u": "dB"},
                {"n": "peak", "v": 80, "t": 1},
                {"bn": "light/", "bt": 0, "n": "on", "vb": true, "t": -5},
                {"n": "label", "vs": "hall"},
                {"bv": 10, "n": "off", "v": 2},
                {"bs": 100, "n": "energy", "s": 5}
            ]),
            &["p"],
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let out = out.unwrap();
        assert_eq!(out.len(), 6);
        assert_eq!((out[0].service.as_str(), out[0].resource.as_str(), &out[0].value), ("s", "level", &json!(71.5)));
        assert_eq!(out[0].timestamp_us, 1_700_000_000_000_000);
        assert_eq!(out[1].timestamp_us, 1_700_000_001_000_000);
        assert_eq!(out[2].timestamp_us, 1_000_000_000 - 5_000_000, "relative to the receive time");
        assert_eq!(out[4].value, json!(12.0));
        assert_eq!(out[5].value, json!(105.0));
    }

    #[test]
    fn bad_records_are_skipped_and_the_rest_applies() {
        let (out, warnings) = run(
            json!([
                {"n": "s/ok", "v": 1},
                {"n": "s/bad name", "v": 1},
                {"n": "s/no-value"},
                {"n": "s/two", "v": 1, "vs": "x"},
                {"n": "s/typed", "v": "1"},
                {"n": "too/many/parts", "v": 1},
                "not a record",
                {"n": 5, "v": 1},
                {"bn": 7},
                {"n": "s/vb", "vb": "yes"},
                {"bt": 1.7e9},
                {"n": "s/late", "v": 2, "t": 1e300}
            ]),
            &["p"],
        );
        let out = out.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].resource, "ok");
        assert_eq!(warnings.len(), 10, "{warnings:#?}");
    }

    #[test]
    fn whole_pack_refusals() {
        assert!(run(json!({"n": "x"}), &[]).0.is_err());
        assert!(run(json!([{"n": "p/s/r", "v": 1, "xx_": 1}]), &[]).0.is_err());
        assert!(run(json!([{"bver": 11, "n": "p/s/r", "v": 1}]), &[]).0.is_err());
        assert!(run(json!([{"bver": 10, "n": "p/s/r", "v": 1}]), &[]).0.unwrap().len() == 1);
    }

    #[test]
    fn cbor_labels() {
        let mut warnings = Vec::new();
        let pack = json!([{"-2": "p/s/", "0": "r", "2": 3, "6": 0}]);
        let out = resolve(pack, true, &[], 5, 10, &mut |w| warnings.push(w)).unwrap();
        assert_eq!((out[0].provider.as_str(), out[0].resource.as_str(), &out[0].value), ("p", "r", &json!(3.0)));
    }

    #[test]
    fn max_records() {
        let pack = Value::Array((0..5).map(|i| json!({"n": format!("p/s/r{i}"), "v": i})).collect());
        let mut warnings = Vec::new();
        let out = resolve(pack, false, &[], 0, 3, &mut |w| warnings.push(w)).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(warnings.len(), 1);
    }
}
