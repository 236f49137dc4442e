//! Value types and their coercions, ACT parameter types, and timestamps.

use serde::Deserialize;
use serde_json::{Number, Value};

/// The latest timestamp accepted: 9999-12-31T23:59:59.999999Z, in microseconds.
const MAX_TIMESTAMP_US: i64 = 253_402_300_799_999_999;

/// The `type` of a mapped resource: what the payload value is turned into.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueKind {
    /// A number (`"21.5"` text becomes `21.5`).
    Float,
    /// A whole number (`"7"` and `7.0` become `7`).
    Int,
    /// Text (numbers and booleans become their JSON text).
    String,
    /// A boolean (`"on"`, `"true"`, `1` become `true`).
    Bool,
    /// Any JSON value, as is; the hub infers the type on first sight.
    #[default]
    Json,
}

impl ValueKind {
    /// The hub type to declare, if any.
    pub fn model_type(self) -> Option<&'static str> {
        match self {
            ValueKind::Float => Some("number"),
            ValueKind::Int => Some("integer"),
            ValueKind::String => Some("string"),
            ValueKind::Bool => Some("boolean"),
            ValueKind::Json => None,
        }
    }

    /// Converts `value` to this type, or says why it cannot.
    pub fn coerce(self, value: &Value) -> Result<Value, &'static str> {
        if value.is_null() {
            return Err("null is not a value");
        }
        match self {
            ValueKind::Json => Ok(value.clone()),
            ValueKind::Float => match value {
                Value::Number(_) => Some(value.clone()),
                Value::String(text) => parse_float(text).and_then(Number::from_f64).map(Value::Number),
                _ => None,
            }
            .ok_or("expected a number"),
            ValueKind::Int => match value {
                Value::Number(n) if n.is_i64() || n.is_u64() => Some(value.clone()),
                Value::Number(n) => n.as_f64().and_then(whole),
                Value::String(text) => {
                    let text = text.trim();
                    text.parse::<i64>()
                        .map(Value::from)
                        .or_else(|_| text.parse::<u64>().map(Value::from))
                        .ok()
                        .or_else(|| parse_float(text).and_then(whole))
                }
                _ => None,
            }
            .ok_or("expected a whole number"),
            ValueKind::String => match value {
                Value::String(_) => Ok(value.clone()),
                Value::Number(n) => Ok(Value::String(n.to_string())),
                Value::Bool(b) => Ok(Value::String(b.to_string())),
                _ => Err("expected text, a number or a boolean"),
            },
            ValueKind::Bool => match value {
                Value::Bool(_) => Some(value.clone()),
                Value::Number(n) => match n.as_f64() {
                    Some(0.0) => Some(Value::Bool(false)),
                    Some(1.0) => Some(Value::Bool(true)),
                    _ => None,
                },
                Value::String(text) => parse_bool(text.trim()).map(Value::Bool),
                _ => None,
            }
            .ok_or("expected a boolean (true/false, on/off, yes/no, 1/0)"),
        }
    }
}

/// A finite number from text; `inf` and `NaN` are not numbers here.
fn parse_float(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|f| f.is_finite())
}

/// `f` as an integer value when it has no fraction and fits in 64 bits.
fn whole(f: f64) -> Option<Value> {
    // i64::MAX as f64 rounds up to 2^63, which does not fit: the bound is exclusive.
    (f.fract() == 0.0 && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f))
        .then(|| Value::from(f as i64))
}

fn parse_bool(text: &str) -> Option<bool> {
    const TRUE: [&str; 4] = ["true", "on", "yes", "1"];
    const FALSE: [&str; 4] = ["false", "off", "no", "0"];
    if TRUE.iter().any(|t| t.eq_ignore_ascii_case(text)) {
        Some(true)
    } else if FALSE.iter().any(|t| t.eq_ignore_ascii_case(text)) {
        Some(false)
    } else {
        None
    }
}

/// The type of an ACT parameter, declared in the model so the hub checks calls before they reach the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A number.
    Float,
    /// A whole number.
    Int,
    /// Text.
    String,
    /// A boolean.
    Bool,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
}

impl ParamType {
    /// The hub type name.
    pub fn model_type(self) -> &'static str {
        match self {
            ParamType::Float => "number",
            ParamType::Int => "integer",
            ParamType::String => "string",
            ParamType::Bool => "boolean",
            ParamType::Object => "object",
            ParamType::Array => "array",
        }
    }
}

/// How a mapping's timestamp is written in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Seconds since the Unix epoch (a number or numeric text; fractions allowed).
    UnixS,
    /// Milliseconds since the Unix epoch.
    UnixMs,
    /// Microseconds since the Unix epoch.
    UnixUs,
    /// RFC 3339 text with an offset (`2026-05-01T10:00:00Z`, `...+02:00`).
    Rfc3339,
}

impl TimeFormat {
    /// The time `value` stands for, in microseconds since the Unix epoch.
    pub fn read(self, value: &Value) -> Result<i64, &'static str> {
        let us = match self {
            TimeFormat::UnixS => scaled(value, 1_000_000),
            TimeFormat::UnixMs => scaled(value, 1_000),
            TimeFormat::UnixUs => scaled(value, 1),
            TimeFormat::Rfc3339 => value.as_str().and_then(rfc3339_us),
        };
        us.and_then(in_range).ok_or(match self {
            TimeFormat::Rfc3339 => "expected RFC 3339 text with an offset, between 1970 and 9999",
            _ => "expected a number of the configured unit since 1970, before the year 10000",
        })
    }
}

/// A count of `us_per_unit`-microsecond units, as a number or numeric text, in microseconds.
fn scaled(value: &Value, us_per_unit: i64) -> Option<i64> {
    let from_f64 = |f: f64| {
        let us = (f * us_per_unit as f64).round();
        (us.is_finite() && us.abs() < 9.0e18).then_some(us as i64)
    };
    match value {
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.checked_mul(us_per_unit),
            None => n.as_f64().and_then(from_f64),
        },
        Value::String(text) => {
            let text = text.trim();
            match text.parse::<i64>() {
                Ok(i) => i.checked_mul(us_per_unit),
                Err(_) => parse_float(text).and_then(from_f64),
            }
        }
        _ => None,
    }
}

/// RFC 3339 text (with `Z` or a numeric offset) in microseconds since the Unix epoch.
pub fn rfc3339_us(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros())
}

/// Seconds (SenML) in microseconds.
pub fn seconds_us(seconds: f64) -> Option<i64> {
    let us = (seconds * 1e6).round();
    (us.is_finite() && us.abs() < 9.0e18).then_some(us as i64).and_then(in_range)
}

/// `us` when it lies between 1970 and the end of year 9999.
pub fn in_range(us: i64) -> Option<i64> {
    (0..=MAX_TIMESTAMP_US).contains(&us).then_some(us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn coercions() {
        let ok = |k: ValueKind, v: Value| k.coerce(&v).unwrap();
        assert_eq!(ok(ValueKind::Float, json!("21.5")), json!(21.5));
        assert_eq!(ok(ValueKind::Float, json!(" 7 ")), json!(7.0));
        assert_eq!(ok(ValueKind::Float, json!(3)), json!(3));
        assert_eq!(ok(ValueKind::Int, json!("42")), json!(42));
        assert_eq!(ok(ValueKind::Int, json!(42.0)), json!(42));
        assert_eq!(ok(ValueKind::Int, json!(u64::MAX)), json!(u64::MAX));
        assert_eq!(ok(ValueKind::String, json!(1.5)), json!("1.5"));
        assert_eq!(ok(ValueKind::String, json!(false)), json!("false"));
        assert_eq!(ok(ValueKind::Bool, json!("ON")), json!(true));
        assert_eq!(ok(ValueKind::Bool, json!(0)), json!(false));
        assert_eq!(ok(ValueKind::Json, json!({"a": [1]})), json!({"a": [1]}));
        for (kind, bad) in [
            (ValueKind::Float, json!("abc")),
            (ValueKind::Float, json!("inf")),
            (ValueKind::Float, json!("NaN")),
            (ValueKind::Float, json!("1e999")),
            (ValueKind::Float, json!(true)),
            (ValueKind::Int, json!(1.5)),
            (ValueKind::Int, json!("99999999999999999999999")),
            (ValueKind::Int, json!(1e300)),
            (ValueKind::String, json!({"a": 1})),
            (ValueKind::Bool, json!("maybe")),
            (ValueKind::Bool, json!(2)),
            (ValueKind::Json, json!(null)),
        ] {
            assert!(kind.coerce(&bad).is_err(), "{kind:?} {bad}");
        }
    }

    #[test]
    fn timestamps() {
        const T: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
        assert_eq!(TimeFormat::UnixS.read(&json!(1_767_225_600)), Ok(T));
        assert_eq!(TimeFormat::UnixS.read(&json!(1_767_225_600.25)), Ok(T + 250_000));
        assert_eq!(TimeFormat::UnixMs.read(&json!(1_767_225_600_000i64)), Ok(T));
        assert_eq!(TimeFormat::UnixMs.read(&json!("1767225600000")), Ok(T));
        assert_eq!(TimeFormat::UnixUs.read(&json!(T)), Ok(T));
        assert_eq!(TimeFormat::Rfc3339.read(&json!("2026-01-01T01:00:00+01:00")), Ok(T));
        assert!(TimeFormat::Rfc3339.read(&json!("2026-01-01T00:00:00")).is_err(), "an offset is required");
        assert!(TimeFormat::Rfc3339.read(&json!(5)).is_err());
        assert!(TimeFormat::UnixS.read(&json!(i64::MAX)).is_err());
        assert!(TimeFormat::UnixMs.read(&json!(-5)).is_err());
        assert!(TimeFormat::UnixMs.read(&json!("soon")).is_err());
        assert!(TimeFormat::UnixUs.read(&json!(1e300)).is_err());
        assert_eq!(seconds_us(1.5), Some(1_500_000));
        assert_eq!(seconds_us(f64::NAN), None);
    }
}
