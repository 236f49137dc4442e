//! The cheap syntactic check of a request payload against its declared Content-Format, so a device learns at
//! once (4.00) that it sent garbage. Only well-formedness is checked here; what the values mean (types, names)
//! is the adapter plugin's to judge.

use crate::wire::format;

/// Why a payload is not well-formed for its content format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

/// Checks `payload` against `content_format`. Formats this transport does not check pass.
pub fn well_formed(content_format: u16, payload: &[u8]) -> Result<(), Malformed> {
    match content_format {
        format::TEXT => std::str::from_utf8(payload)
            .map(|_| ())
            .map_err(|_| Malformed("text/plain payload is not UTF-8".to_owned())),
        format::JSON => json(payload).map(|_| ()),
        format::SENML_JSON => match json(payload)? {
            JsonTop::Array => Ok(()),
            JsonTop::Other => Err(Malformed("a SenML JSON pack must be a JSON array".to_owned())),
        },
        format::CBOR => cbor(payload).map(|_| ()),
        format::SENML_CBOR => {
            let first = cbor(payload)?;
            // Major type 4 (array), definite or indefinite.
            if first >> 5 == 4 { Ok(()) } else { Err(Malformed("a SenML CBOR pack must be a CBOR array".to_owned())) }
        }
        _ => Ok(()),
    }
}

enum JsonTop {
    Array,
    Other,
}

fn json(payload: &[u8]) -> Result<JsonTop, Malformed> {
    // Skipping into `IgnoredAny` walks the document without recursion, so deep nesting cannot exhaust the stack.
    serde_json::from_slice::<serde::de::IgnoredAny>(payload)
        .map_err(|e| Malformed(format!("payload is not well-formed JSON: {e}")))?;
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    Ok(if first == Some(&b'[') { JsonTop::Array } else { JsonTop::Other })
}

/// Checks that `payload` is exactly one well-formed CBOR data item; returns its initial byte.
fn cbor(payload: &[u8]) -> Result<u8, Malformed> {
    let first = *payload.first().ok_or_else(|| Malformed("an empty payload is not a CBOR data item".to_owned()))?;
    let mut decoder = minicbor::Decoder::new(payload);
    // minicbor's skip walks nested items with an explicit stack, not recursion.
    decoder.skip().map_err(|e| Malformed(format!("payload is not well-formed CBOR: {e}")))?;
    if decoder.position() != payload.len() {
        return Err(Malformed(format!(
            "payload has {} bytes after its CBOR data item",
            payload.len() - decoder.position()
        )));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(u16, &[u8], bool)] = &[
            (format::JSON, b"21.5", true),
            (format::JSON, b"{\"value\": 1}", true),
            (format::JSON, b"{\"value\": ", false),
            (format::JSON, b"", false),
            (format::JSON, b"1 2", false),
            (format::SENML_JSON, b"[{\"n\":\"t\",\"v\":1}]", true),
            (format::SENML_JSON, b" [] ", true),
            (format::SENML_JSON, b"{\"n\":\"t\"}", false),
            (format::CBOR, &[0xf9, 0x3c, 0x00], true), // half float 1.0
            (format::CBOR, &[0x82, 0x01], false),      // array of 2 with 1 item
            (format::CBOR, &[0x01, 0x02], false),      // trailing item
            (format::CBOR, &[0x9f, 0x01, 0xff], true), // indefinite array
            (format::CBOR, &[0x9f, 0x01], false),      // no break
            (format::CBOR, &[0x1c], false),            // reserved additional info
            (format::SENML_CBOR, &[0x81, 0xa1, 0x00, 0x61, 0x74], true),
            (format::SENML_CBOR, &[0xa1, 0x00, 0x01], false),
            (format::TEXT, b"hello", true),
            (format::TEXT, &[0xff, 0xfe], false),
            (format::OCTET_STREAM, &[0xff], true),
            (9999, b"anything", true),
        ];
        for (cf, payload, ok) in cases {
            assert_eq!(well_formed(*cf, payload).is_ok(), *ok, "{cf} {payload:02x?}");
        }
    }

    #[test]
    fn deep_nesting_is_no_danger() {
        let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        // serde_json skips an ignored value without recursing, so this is merely well-formed.
        assert!(well_formed(format::JSON, deep_json.as_bytes()).is_ok());
        assert!(well_formed(format::JSON, &deep_json.as_bytes()[1..]).is_err());
        let mut deep_cbor = vec![0x9f; 100_000];
        deep_cbor.extend(std::iter::repeat_n(0xff, 100_000));
        assert!(well_formed(format::CBOR, &deep_cbor).is_ok());
        let mut deep_definite = vec![0x81; 100_000];
        deep_definite.push(0x00);
        assert!(well_formed(format::SENML_CBOR, &deep_definite).is_ok());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..5000usize {
            let len = round % 97;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            for cf in [format::JSON, format::CBOR, format::SENML_JSON, format::SENML_CBOR, format::TEXT] {
                let _ = well_formed(cf, &bytes);
            }
        }
    }
}
