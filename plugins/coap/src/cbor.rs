//! CBOR (RFC 8949) to JSON values and back, on minicbor. Hostile input is bounded: nesting is limited to
//! [`MAX_DEPTH`], declared lengths never preallocate more than the input can hold, and every error is a value,
//! never a panic.

use base64::Engine as _;
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};
use serde_json::{Map, Number, Value};

/// The deepest nesting of arrays, maps and tags accepted.
pub const MAX_DEPTH: usize = 32;

/// Decodes exactly one CBOR data item into a JSON value.
///
/// Integers become JSON integers (beyond ±2^64 is an error), floats must be finite, byte strings become
/// unpadded base64url text, tags are dropped (their content is kept), `undefined` becomes `null`, and map keys
/// must be text or integers (integers become their decimal text).
pub fn decode(bytes: &[u8]) -> Result<Value, String> {
    let mut decoder = Decoder::new(bytes);
    let value = item(&mut decoder, 0)?;
    if decoder.position() != bytes.len() {
        return Err(format!("{} bytes after the CBOR data item", bytes.len() - decoder.position()));
    }
    Ok(value)
}

fn err(e: minicbor::decode::Error) -> String {
    format!("not well-formed CBOR: {e}")
}

fn item(d: &mut Decoder<'_>, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("CBOR nested deeper than {MAX_DEPTH} levels"));
    }
    let remaining = d.input().len().saturating_sub(d.position());
    match d.datatype().map_err(err)? {
        Type::Bool => d.bool().map(Value::Bool).map_err(err),
        Type::Null => d.null().map(|_| Value::Null).map_err(err),
        Type::Undefined => d.undefined().map(|_| Value::Null).map_err(err),
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => d.u64().map(Value::from).map_err(err),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            let n = i128::from(d.int().map_err(err)?);
            if let Ok(n) = i64::try_from(n) {
                Ok(Value::from(n))
            } else if let Ok(n) = u64::try_from(n) {
                Ok(Value::from(n))
            } else {
                Err("a CBOR integer below -2^63 does not fit a JSON number".to_owned())
            }
        }
        Type::F16 | Type::F32 => float(f64::from(d.f32().map_err(err)?)),
        Type::F64 => float(d.f64().map_err(err)?),
        Type::Bytes => d.bytes().map(|b| Value::String(b64(b))).map_err(err),
        Type::BytesIndef => {
            let mut all = Vec::new();
            for chunk in d.bytes_iter().map_err(err)? {
                all.extend_from_slice(chunk.map_err(err)?);
            }
            Ok(Value::String(b64(&all)))
        }
        Type::String => d.str().map(|s| Value::String(s.to_owned())).map_err(err),
        Type::StringIndef => {
            let mut all = String::new();
            for chunk in d.str_iter().map_err(err)? {
                all.push_str(chunk.map_err(err)?);
            }
            Ok(Value::String(all))
        }
        Type::Array | Type::ArrayIndef => {
            let len = d.array().map_err(err)?;
            // Each item takes at least one byte, so the input bounds any honest length.
            let mut out = Vec::with_capacity(len.unwrap_or(0).min(remaining as u64) as usize);
            match len {
                Some(n) => {
                    for _ in 0..n {
                        out.push(item(d, depth + 1)?);
                    }
                }
                None => {
                    while !at_break(d)? {
                        out.push(item(d, depth + 1)?);
                    }
                }
            }
            Ok(Value::Array(out))
        }
        Type::Map | Type::MapIndef => {
            let len = d.map().map_err(err)?;
            let mut out = Map::new();
            let mut entry = |d: &mut Decoder<'_>| -> Result<(), String> {
                let key = key(d)?;
                let value = item(d, depth + 1)?;
                out.insert(key, value);
                Ok(())
            };
            match len {
                Some(n) => {
                    for _ in 0..n {
                        entry(d)?;
                    }
                }
                None => {
                    while !at_break(d)? {
                        entry(d)?;
                    }
                }
            }
            Ok(Value::Object(out))
        }
        Type::Tag => {
            d.tag().map_err(err)?;
            item(d, depth + 1)
        }
        Type::Simple => Err("a CBOR simple value has no JSON equivalent".to_owned()),
        Type::Break => Err("a CBOR break outside an indefinite-length item".to_owned()),
        Type::Unknown(b) => Err(format!("not well-formed CBOR: reserved initial byte 0x{b:02x}")),
    }
}

/// Consumes the break that ends an indefinite-length item, if it is next.
fn at_break(d: &mut Decoder<'_>) -> Result<bool, String> {
    if d.datatype().map_err(err)? == Type::Break {
        d.set_position(d.position() + 1);
        return Ok(true);
    }
    Ok(false)
}

fn key(d: &mut Decoder<'_>) -> Result<String, String> {
    match d.datatype().map_err(err)? {
        Type::String => d.str().map(str::to_owned).map_err(err),
        Type::U8 | Type::U16 | Type::U32 | Type::U64 | Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            Ok(i128::from(d.int().map_err(err)?).to_string())
        }
        other => Err(format!("a CBOR map key of type {other} (only text and integers)")),
    }
}

fn float(f: f64) -> Result<Value, String> {
    Number::from_f64(f).map(Value::Number).ok_or_else(|| "NaN and infinities are not values".to_owned())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Encodes a JSON value as CBOR (for ACT payloads to devices that speak CBOR).
pub fn encode(value: &Value) -> Vec<u8> {
    let mut encoder = Encoder::new(Vec::new());
    write(&mut encoder, value);
    encoder.into_writer()
}

fn write(e: &mut Encoder<Vec<u8>>, value: &Value) {
    // Writing into a Vec cannot fail, so the results carry nothing to handle.
    let _ = match value {
        Value::Null => e.null().map(|_| ()),
        Value::Bool(b) => e.bool(*b).map(|_| ()),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => e.u64(u).map(|_| ()),
            (_, Some(i), _) => e.i64(i).map(|_| ()),
            (_, _, Some(f)) => e.f64(f).map(|_| ()),
            _ => e.null().map(|_| ()),
        },
        Value::String(s) => e.str(s).map(|_| ()),
        Value::Array(items) => {
            let _ = e.array(items.len() as u64);
            for item in items {
                write(e, item);
            }
            Ok(())
        }
        Value::Object(map) => {
            let _ = e.map(map.len() as u64);
            for (k, v) in map {
                let _ = e.str(k);
                write(e, v);
            }
            Ok(())
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_the_common_shapes() {
        let table: &[(&[u8], Value)] = &[
            (&[0x18, 0x2a], json!(42)),
            (&[0x38, 0x63], json!(-100)),
            (&[0xf9, 0x3c, 0x00], json!(1.0)),
            (&[0xfb, 0x40, 0x35, 0x80, 0, 0, 0, 0, 0], json!(21.5)),
            (&[0xf5], json!(true)),
            (&[0xf6], Value::Null),
            (&[0x63, b'a', b'b', b'c'], json!("abc")),
            (&[0x42, 0xff, 0x00], json!("_wA")),
            (&[0x9f, 0x01, 0x02, 0xff], json!([1, 2])),
            (&[0xbf, 0x61, b'v', 0x01, 0xff], json!({"v": 1})),
            (&[0xa1, 0x22, 0x61, b'x'], json!({"-3": "x"})),
            (&[0xc1, 0x1a, 0x65, 0x53, 0xf1, 0x00], json!(1_700_000_000u64)),
            (&[0x7f, 0x61, b'a', 0x61, b'b', 0xff], json!("ab")),
        ];
        for (bytes, want) in table {
            assert_eq!(decode(bytes).as_ref(), Ok(want), "{bytes:02x?}");
        }
    }

    #[test]
    fn refuses_hostile_and_broken_input() {
        let bad: &[&[u8]] = &[
            &[],
            &[0x18],
            &[0x82, 0x01],
            &[0x01, 0x02],
            &[0x9f, 0x01],
            &[0xff],
            &[0x1c],
            &[0xf9, 0x7e, 0x00],                                     // half NaN
            &[0xe0],                                                 // simple value 0
            &[0xa1, 0x81, 0x01, 0x01],                               // array key
            &[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // -2^64
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // 2^64-1 items declared
            &[0x62, 0xff, 0xfe],                                     // text that is not UTF-8
        ];
        for bytes in bad {
            assert!(decode(bytes).is_err(), "{bytes:02x?}");
        }
        let deep = [vec![0x81; 40], vec![0x00]].concat();
        assert!(decode(&deep).unwrap_err().contains("deeper"));
        let tags = [vec![0xc1; 40], vec![0x00]].concat();
        assert!(decode(&tags).is_err());
    }

    #[test]
    fn encode_round_trips() {
        let value = json!({"on": true, "level": 3, "t": -1.5, "name": "x", "list": [1, null]});
        assert_eq!(decode(&encode(&value)).unwrap(), value);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x0123_4567_89ab_cdefu64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..20_000usize {
            let len = round % 64;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode(&bytes);
            // Mutations of a valid document reach deeper paths than pure noise.
            let mut valid = encode(&serde_json::json!([{"n": "t", "v": 1.5}, {"bn": "p/", "bt": 1.7e9}]));
            let at = (next() as usize) % valid.len();
            valid[at] = next() as u8;
            let _ = decode(&valid);
        }
    }
}
