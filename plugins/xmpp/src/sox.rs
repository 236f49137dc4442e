//! SOX (Sensor over XMPP) payloads: a device's `<device>` meta item and its `<data>` items, read from XML.
//!
//! ```xml
//! <device name="truck-12" type="outdoor weather">
//!   <transducer name="speed" id="speed" units="km/h" minValue="0" maxValue="200" canActuate="false"/>
//!   <transducer name="lamp" id="lamp" canActuate="true"/>
//! </device>
//!
//! <data>
//!   <transducerValue id="speed" typedValue="41.5" rawValue="41.5" timestamp="2026-12-02T17:04:05.123+09:00"/>
//! </data>
//! ```
//!
//! Elements and attributes are matched by local name, whatever their namespace. Hostile input is bounded: the
//! payload size, the number of XML nodes (parsing stops early past it), the number of entries per item and the
//! length of ids; DTDs are refused. Structural errors refuse the item; a bad entry is skipped alone and counted
//! in [`Problems`].

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat};
use roxmltree::{Document, Node, ParsingOptions};
use serde_json::{Number, Value};

/// The largest payload read, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 512 * 1024;
/// The most entries (`transducer`, `transducerValue`, JSON keys) read from one item; more refuses the item.
pub const MAX_ENTRIES: usize = 1024;
/// The longest device name or transducer id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 1024;
/// The most XML nodes (elements, text, comments) parsed from one payload: room for [`MAX_ENTRIES`] indented
/// entries; parsing a larger document stops as soon as it passes this.
const MAX_XML_NODES: u32 = 4 * MAX_ENTRIES as u32 + 64;
/// The latest time accepted, in microseconds since the epoch (the start of the year 10000).
const MAX_MICROS: i64 = 253_402_300_800_000_000;

/// What went wrong with the entries of one item that were skipped (or kept with a fallback), for one warning.
#[derive(Debug, Default)]
pub struct Problems {
    /// How many there were.
    pub count: usize,
    /// The first one, described.
    pub first: Option<String>,
}

impl Problems {
    /// Counts one problem; describes it only when it is the first.
    pub fn add(&mut self, describe: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(describe());
        }
    }
}

/// Parses a payload as an XML document, within the limits above.
pub fn parse(payload: &[u8]) -> Result<Document<'_>, String> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(format!("payload of {} bytes is larger than the {MAX_PAYLOAD_BYTES} read", payload.len()));
    }
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8".to_owned())?;
    let options = ParsingOptions { allow_dtd: false, nodes_limit: MAX_XML_NODES, ..ParsingOptions::default() };
    Document::parse_with_options(text, options).map_err(|e| match e {
        roxmltree::Error::NodesLimitReached => {
            format!("more than {MAX_XML_NODES} XML nodes (at most {MAX_ENTRIES} entries are read from an item)")
        }
        e => format!("not well-formed XML: {e}"),
    })
}

/// The document's root element, which must be called `expected` (in any namespace).
pub fn root<'a, 'i>(doc: &'a Document<'i>, expected: &str) -> Result<Node<'a, 'i>, String> {
    let root = doc.root_element();
    let name = root.tag_name().name();
    if name != expected {
        return Err(format!("root element <{}> is not <{expected}>", crate::names::shown(name, 64)));
    }
    Ok(root)
}

/// The value of `node`'s attribute called `local` (in any namespace; an unqualified one first).
pub fn attribute<'a>(node: Node<'a, '_>, local: &str) -> Option<&'a str> {
    node.attribute(local).or_else(|| node.attributes().find(|a| a.name() == local).map(|a| a.value()))
}

fn elements<'a, 'i>(node: Node<'a, 'i>, local: &'static str) -> impl Iterator<Item = Node<'a, 'i>> + use<'a, 'i> {
    node.children().filter(move |n| n.is_element() && n.tag_name().name() == local)
}

/// Checks an id or name read from an item: present, not empty, not absurdly long.
fn id_text<'a>(what: &str, value: Option<&'a str>) -> Result<&'a str, String> {
    match value {
        None | Some("") => Err(format!("a {what} without an id")),
        Some(id) if id.len() > MAX_ID_BYTES => {
            Err(format!("a {what} id of {} bytes (at most {MAX_ID_BYTES})", id.len()))
        }
        Some(id) => Ok(id),
    }
}

/// One `<transducer>` of a device's meta item.
#[derive(Debug, Clone, PartialEq)]
pub struct Transducer<'a> {
    /// Its id, as the device wrote it.
    pub id: &'a str,
    /// Its human name.
    pub name: Option<&'a str>,
    /// The unit of its values.
    pub units: Option<&'a str>,
    /// The smallest value it reports.
    pub min_value: Option<&'a str>,
    /// The largest value it reports.
    pub max_value: Option<&'a str>,
    /// Whether it takes commands (`canActuate="true"`).
    pub can_actuate: bool,
}

/// A device's meta item.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta<'a> {
    /// The device's `type`.
    pub device_type: Option<&'a str>,
    /// Its transducers, in document order, each id once.
    pub transducers: Vec<Transducer<'a>>,
}

/// Reads a `<device>` meta item. A transducer without an id, with an absurd one, or with an id seen before in
/// the item is skipped (counted in `problems`); more than [`MAX_ENTRIES`] transducers refuse the item.
pub fn read_meta<'a>(root: Node<'a, '_>, problems: &mut Problems) -> Result<Meta<'a>, String> {
    let count = elements(root, "transducer").count();
    if count > MAX_ENTRIES {
        return Err(format!("{count} transducers (at most {MAX_ENTRIES} are read from an item)"));
    }
    let mut transducers = Vec::with_capacity(count);
    let mut seen = HashSet::with_capacity(count);
    for node in elements(root, "transducer") {
        let id = match id_text("transducer", attribute(node, "id")) {
            Ok(id) => id,
            Err(problem) => {
                problems.add(|| problem);
                continue;
            }
        };
        if !seen.insert(id) {
            problems.add(|| format!("transducer id {:?} appears twice", crate::names::shown(id, 64)));
            continue;
        }
        let non_empty = |local| attribute(node, local).map(str::trim).filter(|v| !v.is_empty());
        transducers.push(Transducer {
            id,
            name: non_empty("name"),
            units: non_empty("units"),
            min_value: non_empty("minValue"),
            max_value: non_empty("maxValue"),
            can_actuate: attribute(node, "canActuate").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        });
    }
    Ok(Meta { device_type: attribute(root, "type").map(str::trim).filter(|v| !v.is_empty()), transducers })
}

/// One `<transducerValue>` of a data item.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading<'a> {
    /// The transducer id, as the device wrote it.
    pub id: &'a str,
    /// The value (see [`typed_value`]).
    pub value: Value,
    /// When it was measured, in microseconds since the epoch (the receive time when the item says none).
    pub timestamp_us: i64,
}

/// Reads a `<data>` item's `transducerValue`s; `transducerSetValue`s (commands, not readings) and other
/// elements are ignored. An entry without an id or a value is skipped, one with a bad timestamp kept with
/// `received_us` (both counted in `problems`); more than [`MAX_ENTRIES`] entries refuse the item.
pub fn read_data<'a>(
    root: Node<'a, '_>,
    received_us: i64,
    problems: &mut Problems,
) -> Result<Vec<Reading<'a>>, String> {
    let count = elements(root, "transducerValue").count();
    if count > MAX_ENTRIES {
        return Err(format!("{count} transducerValues (at most {MAX_ENTRIES} are read from an item)"));
    }
    let mut readings = Vec::with_capacity(count);
    for node in elements(root, "transducerValue") {
        let id = match id_text("transducerValue", attribute(node, "id")) {
            Ok(id) => id,
            Err(problem) => {
                problems.add(|| problem);
                continue;
            }
        };
        let Some(text) = attribute(node, "typedValue").or_else(|| attribute(node, "rawValue")) else {
            problems.add(|| format!("transducerValue {:?} has neither typedValue nor rawValue", shown(id)));
            continue;
        };
        let timestamp_us = match attribute(node, "timestamp") {
            None => received_us,
            Some(t) => timestamp_us(t).unwrap_or_else(|| {
                problems.add(|| format!("transducerValue {:?}: timestamp {:?} is not RFC 3339", shown(id), shown(t)));
                received_us
            }),
        };
        readings.push(Reading { id, value: typed_value(text), timestamp_us });
    }
    Ok(readings)
}

fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    crate::names::shown(text, 64)
}

/// A SOX value as JSON: a number when the text is one (integers stay integers) and finite, `true`/`false`
/// (any case), else the text itself.
pub fn typed_value(text: &str) -> Value {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("true") {
        return Value::Bool(true);
    }
    if trimmed.eq_ignore_ascii_case("false") {
        return Value::Bool(false);
    }
    if let Some(number) = number(trimmed) {
        return Value::Number(number);
    }
    Value::String(text.to_owned())
}

/// `text` as a finite JSON number, if it is one (`41`, `-3.5`, `1e3`; not `inf`, `NaN`, hex or empty text).
pub fn number(text: &str) -> Option<Number> {
    // Rust's float syntax also takes `inf`, `nan` and `infinity`: only digits, signs, dots and exponents here.
    let first = text.bytes().next()?;
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return None;
    }
    if let Ok(n) = text.parse::<i64>() {
        return Some(Number::from(n));
    }
    text.parse::<f64>().ok().filter(|f| f.is_finite()).and_then(Number::from_f64)
}

/// An RFC 3339 timestamp (`Z` or an offset; an offset without its colon, `+0900`, is accepted too) in
/// microseconds since the epoch; `None` when it is not one or falls outside 1970–9999.
pub fn timestamp_us(text: &str) -> Option<i64> {
    let text = text.trim();
    let parsed =
        DateTime::parse_from_rfc3339(text).or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"));
    parsed.ok().map(|t| t.timestamp_micros()).filter(|us| (0..MAX_MICROS).contains(us))
}

/// Microseconds since the epoch as RFC 3339 in UTC with milliseconds (`2026-12-02T08:04:05.123Z`).
pub fn rfc3339_utc(us: i64) -> Option<String> {
    DateTime::from_timestamp_micros(us).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values() {
        assert_eq!(typed_value("41.5"), json!(41.5));
        assert_eq!(typed_value("41"), json!(41));
        assert_eq!(typed_value(" -3 "), json!(-3));
        assert_eq!(typed_value("1e3"), json!(1000.0));
        assert_eq!(typed_value("TRUE"), json!(true));
        assert_eq!(typed_value("false"), json!(false));
        for text in ["inf", "-inf", "NaN", "infinity", "1e400", "0x10", "", " ", "41.5 km/h", "東京", "1_000"] {
            assert_eq!(typed_value(text), json!(text), "{text:?}");
        }
    }

    #[test]
    fn timestamps() {
        let utc = 1_796_198_645_123_000; // 2026-12-02T08:04:05.123Z
        assert_eq!(timestamp_us("2026-12-02T17:04:05.123+09:00"), Some(utc));
        assert_eq!(timestamp_us("2026-12-02T08:04:05.123Z"), Some(utc));
        assert_eq!(timestamp_us("2026-12-02T17:04:05.123+0900"), Some(utc));
        assert_eq!(timestamp_us("2026-12-02T17:04:05+09:00"), Some(utc - 123_000));
        for bad in
            ["", "yesterday", "2026-12-02", "2026-12-02T17:04:05", "1969-12-31T23:59:59Z", "+10000-01-01T00:00:00Z"]
        {
            assert_eq!(timestamp_us(bad), None, "{bad}");
        }
        assert_eq!(rfc3339_utc(utc).as_deref(), Some("2026-12-02T08:04:05.123Z"));
    }

    #[test]
    fn meta_items() {
        let xml = r#"<device xmlns="http://jabber.org/protocol/sox" name="t" type=" truck ">
            <transducer name="Speed" id="speed" units="km/h" minValue="0" maxValue="200" canActuate="false"/>
            <transducer id="lamp" canActuate="TRUE" units=""/>
            <transducer name="no id"/>
            <transducer id="speed"/>
            <other id="x"/>
        </device>"#;
        let doc = parse(xml.as_bytes()).unwrap();
        let mut problems = Problems::default();
        let meta = read_meta(root(&doc, "device").unwrap(), &mut problems).unwrap();
        assert_eq!(meta.device_type, Some("truck"));
        assert_eq!(meta.transducers.len(), 2);
        let speed = &meta.transducers[0];
        assert_eq!((speed.id, speed.name, speed.units), ("speed", Some("Speed"), Some("km/h")));
        assert_eq!((speed.min_value, speed.max_value, speed.can_actuate), (Some("0"), Some("200"), false));
        assert_eq!((meta.transducers[1].units, meta.transducers[1].can_actuate), (None, true));
        assert_eq!(problems.count, 2);
        assert!(root(&doc, "data").is_err());
    }

    #[test]
    fn data_items() {
        let xml = r#"<s:data xmlns:s="urn:sox"><s:transducerValue s:id="a" typedValue="1" timestamp="bad"/>
            <transducerValue id="b" rawValue="on"/><transducerSetValue id="c" typedValue="2"/>
            <transducerValue typedValue="3"/><transducerValue id="d"/></s:data>"#;
        let doc = parse(xml.as_bytes()).unwrap();
        let mut problems = Problems::default();
        let readings = read_data(root(&doc, "data").unwrap(), 7, &mut problems).unwrap();
        assert_eq!(
            readings,
            vec![
                Reading { id: "a", value: json!(1), timestamp_us: 7 },
                Reading { id: "b", value: json!("on"), timestamp_us: 7 }
            ]
        );
        assert_eq!(problems.count, 3);
        assert!(problems.first.unwrap().contains("timestamp"));
    }

    #[test]
    fn hostile_documents_are_refused() {
        let many = format!("<data>{}</data>", "<transducerValue id=\"x\" typedValue=\"1\"/>".repeat(MAX_ENTRIES + 1));
        let doc = parse(many.as_bytes()).unwrap();
        assert!(read_data(root(&doc, "data").unwrap(), 0, &mut Problems::default()).is_err());
        let huge = format!("<data>{}</data>", "<transducerValue id=\"x\"/>".repeat(10_000));
        assert!(parse(huge.as_bytes()).unwrap_err().contains("XML nodes"));
        let laughs = r#"<!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><data>&b;</data>"#;
        assert!(parse(laughs.as_bytes()).is_err());
        for bad in [&b"<data>"[..], b"", b"<data></datum>", b"\xff\xfe", b"just text", b"<a/><b/>"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&vec![b' '; MAX_PAYLOAD_BYTES + 1]).is_err());
        let long_id =
            format!("<data><transducerValue id=\"{}\" typedValue=\"1\"/></data>", "i".repeat(MAX_ID_BYTES + 1));
        let doc = parse(long_id.as_bytes()).unwrap();
        let mut problems = Problems::default();
        assert!(read_data(root(&doc, "data").unwrap(), 0, &mut problems).unwrap().is_empty());
        assert_eq!(problems.count, 1);
    }
}
