use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a resource is for; decides which operations it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    /// A measured value. Devices push it; clients cannot SET it.
    Sensor,
    /// A state variable (a switch, a mode). May be SET.
    State,
    /// Configuration. May be SET.
    Property,
    /// An operation invoked with ACT and typed parameters; holds the last result, if any.
    Action,
}

impl ResourceKind {
    /// Whether clients may SET a value on a resource of this kind.
    pub fn is_settable(self) -> bool {
        matches!(self, ResourceKind::State | ResourceKind::Property)
    }

    /// The lower-case name used in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Sensor => "sensor",
            ResourceKind::State => "state",
            ResourceKind::Property => "property",
            ResourceKind::Action => "action",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sensor" => Ok(ResourceKind::Sensor),
            "state" => Ok(ResourceKind::State),
            "property" => Ok(ResourceKind::Property),
            "action" => Ok(ResourceKind::Action),
            other => Err(format!("unknown resource kind {other:?} (sensor, state, property, action)")),
        }
    }
}

/// The declared type of a resource's value. `integer` values are also valid `number`s, never the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// Any JSON number (stored as a 64-bit float when it has a fraction).
    Number,
    /// A JSON number without a fraction that fits in 64 bits.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A JSON string.
    String,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
}

impl ValueType {
    /// The type inferred on first sight of a value; `None` for `null`.
    ///
    /// Numbers infer `number` even when they have no fraction: a sensor that first reports `20` and later
    /// `20.5` is a number sensor. `integer` is only ever declared explicitly.
    pub fn infer(v: &Value) -> Option<ValueType> {
        match v {
            Value::Null => None,
            Value::Bool(_) => Some(ValueType::Boolean),
            Value::Number(_) => Some(ValueType::Number),
            Value::String(_) => Some(ValueType::String),
            Value::Array(_) => Some(ValueType::Array),
            Value::Object(_) => Some(ValueType::Object),
        }
    }

    /// Whether `v` is a value of this type. `null` is never accepted as a value.
    pub fn accepts(self, v: &Value) -> bool {
        match (self, v) {
            (ValueType::Number, Value::Number(_)) => true,
            (ValueType::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (ValueType::Boolean, Value::Bool(_)) => true,
            (ValueType::String, Value::String(_)) => true,
            (ValueType::Object, Value::Object(_)) => true,
            (ValueType::Array, Value::Array(_)) => true,
            _ => false,
        }
    }

    /// The lower-case name used in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::Number => "number",
            ValueType::Integer => "integer",
            ValueType::Boolean => "boolean",
            ValueType::String => "string",
            ValueType::Object => "object",
            ValueType::Array => "array",
        }
    }

    /// Whether values of this type can be aggregated numerically (avg, min, max, sum).
    pub fn is_numeric(self) -> bool {
        matches!(self, ValueType::Number | ValueType::Integer)
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON type name of a value, for error messages.
pub(crate) fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A GeoJSON point (`{"type": "Point", "coordinates": [lon, lat]}` or `[lon, lat, alt]`), the value type of
/// `admin/location`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    /// Longitude in degrees, -180 to 180.
    pub lon: f64,
    /// Latitude in degrees, -90 to 90.
    pub lat: f64,
}

impl GeoPoint {
    /// Reads a GeoJSON point, checking coordinate ranges.
    pub fn from_geojson(v: &Value) -> Result<GeoPoint, String> {
        let obj = v.as_object().ok_or("a location is a GeoJSON Point object")?;
        if obj.get("type").and_then(Value::as_str) != Some("Point") {
            return Err("a location has \"type\": \"Point\"".into());
        }
        let coords = obj
            .get("coordinates")
            .and_then(Value::as_array)
            .ok_or("a location has \"coordinates\": [longitude, latitude]")?;
        if !(2..=3).contains(&coords.len()) {
            return Err("coordinates are [longitude, latitude] or [longitude, latitude, altitude]".into());
        }
        let num = |i: usize| coords.get(i).and_then(Value::as_f64).ok_or("coordinates are numbers");
        let (lon, lat) = (num(0)?, num(1)?);
        if coords.len() == 3 {
            num(2)?;
        }
        if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
            return Err("longitude is within [-180, 180] and latitude within [-90, 90]".into());
        }
        Ok(GeoPoint { lon, lat })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inference_and_enforcement() {
        assert_eq!(ValueType::infer(&json!(20)), Some(ValueType::Number));
        assert_eq!(ValueType::infer(&json!("x")), Some(ValueType::String));
        assert_eq!(ValueType::infer(&json!(null)), None);
        assert!(ValueType::Number.accepts(&json!(20)));
        assert!(ValueType::Number.accepts(&json!(20.5)));
        assert!(ValueType::Integer.accepts(&json!(-3)));
        assert!(!ValueType::Integer.accepts(&json!(2.5)));
        assert!(!ValueType::Number.accepts(&json!("20")));
        assert!(!ValueType::String.accepts(&json!(null)));
    }

    #[test]
    fn geojson_points() {
        assert!(GeoPoint::from_geojson(&json!({"type": "Point", "coordinates": [-3.8, 43.46]})).is_ok());
        assert!(GeoPoint::from_geojson(&json!({"type": "Point", "coordinates": [139.4, 35.3, 12.0]})).is_ok());
        assert!(GeoPoint::from_geojson(&json!({"type": "Point", "coordinates": [200.0, 0.0]})).is_err());
        assert!(GeoPoint::from_geojson(&json!({"type": "Line", "coordinates": [0.0, 0.0]})).is_err());
        assert!(GeoPoint::from_geojson(&json!([0.0, 0.0])).is_err());
    }
}
