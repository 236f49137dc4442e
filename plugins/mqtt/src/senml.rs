//! `hub/senml/{provider}`: SenML JSON packs (RFC 8428) whose names resolve to the topic's provider.
//!
//! Supported: `bn`, `bt`, `bu`, `bv`, `bver`, `n`, `u`, `v`, `vs`, `vb`, `vd`, `s`, `t`; other fields are
//! ignored, except those ending in `_` (must-understand), which skip their record. A name is `bn` + `n` and
//! resolves to `{provider}/{service}/{resource}` (the provider must be the topic's) or to
//! `{service}/{resource}` (the topic's provider is implied). A bad record is skipped with a warning and the rest
//! of the pack applies; a bad base field (`bn`, `bt`, `bu`, `bv`, `bver`) skips the rest of the pack, since the
//! records after it would resolve against the wrong base.

use hub_plugin_sdk::prelude::*;
use serde_json::{Map, Number};

use crate::{
    mapping::declare_resource,
    memory::{Memory, fingerprint},
    names::{name_problem, value_problem},
    report::{Quoted, Sink},
    scheme::{Short, payload_json},
    values::{in_range, seconds_us},
};

/// Times below 2^28 seconds are relative to the time of receipt (RFC 8428, section 4.5.3).
const RELATIVE_LIMIT: f64 = 268_435_456.0;
/// Longer units are not declared (the values still apply).
const MAX_UNIT_BYTES: usize = 64;
/// The newest SenML version understood.
const MAX_VERSION: u64 = 10;

/// One record's fields, found in a single pass over its keys.
#[derive(Default)]
struct Fields<'p> {
    bn: Option<&'p Value>,
    bt: Option<&'p Value>,
    bu: Option<&'p Value>,
    bv: Option<&'p Value>,
    bver: Option<&'p Value>,
    n: Option<&'p Value>,
    u: Option<&'p Value>,
    v: Option<&'p Value>,
    vs: Option<&'p Value>,
    vb: Option<&'p Value>,
    vd: Option<&'p Value>,
    s: Option<&'p Value>,
    t: Option<&'p Value>,
    /// The first field whose name ends with `_` (must-understand).
    must_understand: Option<&'p str>,
}

impl<'p> Fields<'p> {
    fn of(record: &'p Map<String, Value>) -> Fields<'p> {
        let mut f = Fields::default();
        for (key, value) in record {
            let slot = match key.as_str() {
                "bn" => &mut f.bn,
                "bt" => &mut f.bt,
                "bu" => &mut f.bu,
                "bv" => &mut f.bv,
                "bver" => &mut f.bver,
                "n" => &mut f.n,
                "u" => &mut f.u,
                "v" => &mut f.v,
                "vs" => &mut f.vs,
                "vb" => &mut f.vb,
                "vd" => &mut f.vd,
                "s" => &mut f.s,
                "t" => &mut f.t,
                other => {
                    if other.ends_with('_') && f.must_understand.is_none() {
                        f.must_understand = Some(other);
                    }
                    continue;
                }
            };
            *slot = Some(value);
        }
        f
    }
}

/// The base fields in force at one record.
#[derive(Default)]
struct Base<'p> {
    name: &'p str,
    time: f64,
    unit: Option<&'p str>,
    value: Option<f64>,
}

impl<'p> Base<'p> {
    /// Applies the record's base fields.
    fn update(&mut self, f: &Fields<'p>) -> Result<(), String> {
        if let Some(version) = f.bver
            && version.as_u64().is_none_or(|v| v > MAX_VERSION)
        {
            return Err(format!("bver {}: this adapter reads SenML up to version {MAX_VERSION}", Short(version)));
        }
        if let Some(bn) = f.bn {
            self.name = bn.as_str().ok_or("bn: expected text")?;
        }
        if let Some(bt) = f.bt {
            self.time = bt.as_f64().ok_or("bt: expected a number")?;
        }
        if let Some(bu) = f.bu {
            self.unit = Some(bu.as_str().ok_or("bu: expected text")?);
        }
        if let Some(bv) = f.bv {
            self.value = Some(bv.as_f64().ok_or("bv: expected a number")?);
        }
        Ok(())
    }
}

/// Handles one pack published on `hub/senml/{provider}`.
pub fn pack(
    sink: &mut Sink<'_, '_>,
    memory: &mut Memory,
    message: &InboundMessage,
    levels: &[&str],
    max_bytes: usize,
) -> Option<()> {
    let topic = message.address.as_str();
    let &[_, _, provider] = levels else {
        sink.skip(topic, format_args!("expected hub/senml/{{provider}}"));
        return None;
    };
    if let Some(problem) = name_problem(provider) {
        sink.skip(topic, format_args!("provider {}: {problem}", Quoted(provider)));
        return None;
    }
    let doc = payload_json(sink, message, max_bytes)?;
    let Some(records) = doc.as_array() else {
        sink.skip(topic, format_args!("a SenML pack is a JSON array of records"));
        return None;
    };
    let mut base = Base::default();
    let mut name = String::new();
    let mut units: Map<String, Value> = Map::new();
    for (i, record) in records.iter().enumerate() {
        if sink.full() {
            sink.skip(
                topic,
                format_args!("record {i}: the call's update budget is spent; the rest of the pack is skipped"),
            );
            break;
        }
        let Some(record) = record.as_object() else {
            sink.skip(topic, format_args!("record {i}: not an object"));
            continue;
        };
        let fields = Fields::of(record);
        if let Err(reason) = base.update(&fields) {
            sink.skip(topic, format_args!("record {i}: {reason}; the rest of the pack is skipped"));
            break;
        }
        match read_record(&fields, &base, provider, message.received_us, &mut name) {
            Ok(Record { service, resource, value, timestamp_us, unit }) => {
                if let Some(problem) = value_problem(service, resource, &value) {
                    sink.skip(topic, format_args!("record {i} ({service}/{resource}): {problem}"));
                    continue;
                }
                if let Some(unit) = unit.filter(|u| !u.is_empty() && u.len() <= MAX_UNIT_BYTES)
                    && memory.first_declaration(fingerprint(("senml-unit", provider, service, resource, unit)))
                {
                    let declaration = json!({ "type": model_type(&value), "unit": unit });
                    declare_resource(&mut units, service, resource, declaration);
                }
                sink.out.update_at(provider, service, resource, value, timestamp_us);
            }
            Err(reason) => sink.skip(topic, format_args!("record {i}: {reason}")),
        }
    }
    if !units.is_empty() {
        sink.out.model(provider, json!({ "services": units }));
    }
    Some(())
}

struct Record<'n, 'p> {
    service: &'n str,
    resource: &'n str,
    value: Value,
    timestamp_us: i64,
    unit: Option<&'p str>,
}

/// Resolves one record against the base; `name` is scratch space the returned names borrow from.
fn read_record<'n, 'p>(
    record: &Fields<'p>,
    base: &Base<'p>,
    provider: &str,
    received_us: i64,
    name: &'n mut String,
) -> Result<Record<'n, 'p>, String> {
    if let Some(key) = record.must_understand {
        return Err(format!("{} is a must-understand field this adapter does not support", Quoted(key)));
    }
    let n = match record.n {
        None => "",
        Some(n) => n.as_str().ok_or("n: expected text")?,
    };
    name.clear();
    name.push_str(base.name);
    name.push_str(n);
    let mut parts = name.split('/');
    let (service, resource) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(p), Some(s), Some(r), None) if p == provider => (s, r),
        (Some(p), Some(_), Some(_), None) => {
            return Err(format!("name {} is for provider {}, not the topic's {provider:?}", Quoted(name), Quoted(p)));
        }
        (Some(s), Some(r), None, None) => (s, r),
        _ => {
            return Err(format!(
                "name {} is not {{provider}}/{{service}}/{{resource}} or {{service}}/{{resource}}",
                Quoted(name)
            ));
        }
    };
    for (what, part) in [("service", service), ("resource", resource)] {
        if let Some(problem) = name_problem(part) {
            return Err(format!("{what} {}: {problem}", Quoted(part)));
        }
    }
    let value = read_value(record, base)?;
    let t = match record.t {
        None => base.time,
        Some(t) => base.time + t.as_f64().ok_or("t: expected a number")?,
    };
    let timestamp_us = if t < RELATIVE_LIMIT {
        seconds_us(t.abs())
            .and_then(|offset| if t < 0.0 { received_us.checked_sub(offset) } else { received_us.checked_add(offset) })
    } else {
        seconds_us(t)
    }
    .and_then(in_range)
    .ok_or_else(|| format!("time {t} is out of range"))?;
    let unit = match record.u {
        None => base.unit,
        Some(u) => Some(u.as_str().ok_or("u: expected text")?),
    };
    Ok(Record { service, resource, value, timestamp_us, unit })
}

/// The record's value: exactly one of `v` (plus `bv`), `vs`, `vb`, `vd`; else the sum `s`; else `bv` alone.
fn read_value(record: &Fields<'_>, base: &Base<'_>) -> Result<Value, String> {
    let given = [record.v, record.vs, record.vb, record.vd];
    if given.iter().flatten().count() > 1 {
        return Err("a record has at most one of v, vs, vb and vd".to_owned());
    }
    let number = |f: f64| Number::from_f64(f).map(Value::Number).ok_or_else(|| "numbers are finite".to_owned());
    match given {
        [Some(v), ..] => {
            let v_f64 = v.as_f64().ok_or("v: expected a number")?;
            match base.value {
                Some(bv) => number(bv + v_f64),
                None => Ok(v.clone()),
            }
        }
        [_, Some(Value::String(vs)), ..] => Ok(Value::String(vs.clone())),
        [_, Some(_), ..] => Err("vs: expected text".to_owned()),
        [_, _, Some(Value::Bool(vb)), _] => Ok(Value::Bool(*vb)),
        [_, _, Some(_), _] => Err("vb: expected a boolean".to_owned()),
        [_, _, _, Some(Value::String(vd))] => Ok(Value::String(vd.clone())),
        [_, _, _, Some(_)] => Err("vd: expected base64 text".to_owned()),
        [None, None, None, None] => match (record.s, base.value) {
            (Some(s), _) => number(s.as_f64().ok_or("s: expected a number")?),
            (None, Some(bv)) => number(bv),
            (None, None) => Err("a record needs one of v, vs, vb, vd or s".to_owned()),
        },
    }
}

fn model_type(value: &Value) -> &'static str {
    match value {
        Value::Bool(_) => "boolean",
        Value::String(_) => "string",
        _ => "number",
    }
}
