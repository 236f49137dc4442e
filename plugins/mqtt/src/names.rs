//! The hub's naming and value rules, checked before an update leaves the plugin.
//!
//! The hub refuses a whole ingest batch for one bad update and then retries the rest, so every update this
//! adapter emits is checked here first: a bad message costs a warning, never its neighbours' latency.

use serde_json::Value;

/// The longest hub name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// The service the hub keeps for every provider.
const ADMIN_SERVICE: &str = "admin";

/// Whether `b` may appear in a hub name.
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

/// Why `s` is not a hub name (`A-Z a-z 0-9 . - _`, 1–128 bytes, starting with a letter, a digit or `_`), or
/// `None` when it is one.
pub fn name_problem(s: &str) -> Option<&'static str> {
    let bytes = s.as_bytes();
    let Some(&first) = bytes.first() else {
        return Some("a name cannot be empty");
    };
    if bytes.len() > MAX_NAME_LEN {
        return Some("a name is at most 128 bytes long");
    }
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return Some("a name starts with a letter, a digit or '_'");
    }
    if !bytes.iter().all(|&b| is_name_byte(b)) {
        return Some("a name uses only A-Z, a-z, 0-9, '.', '-' and '_'");
    }
    None
}

/// Why the hub would refuse `value` for `service/resource` whatever the resource's declared type: `null`, and
/// the fixed shapes of the `admin` service.
pub fn value_problem(service: &str, resource: &str, value: &Value) -> Option<&'static str> {
    if value.is_null() {
        return Some("null is not a value");
    }
    if service != ADMIN_SERVICE {
        return None;
    }
    match resource {
        "friendly_name" | "model" => (!value.is_string()).then_some("admin/friendly_name and admin/model are strings"),
        "status" => (!matches!(value.as_str(), Some("online" | "offline")))
            .then_some("admin/status is \"online\" or \"offline\""),
        "location" => geo_point_problem(value),
        "last_seen" => Some("admin/last_seen is kept by the hub"),
        _ => Some("the admin service has only friendly_name, location, model, status and last_seen"),
    }
}

/// The hub's location shape: a GeoJSON Point with `[longitude, latitude]` or `[longitude, latitude, altitude]`.
fn geo_point_problem(value: &Value) -> Option<&'static str> {
    const SHAPE: &str = "admin/location is a GeoJSON Point {\"type\": \"Point\", \"coordinates\": [lon, lat]}";
    let Some(object) = value.as_object() else {
        return Some(SHAPE);
    };
    if object.get("type").and_then(Value::as_str) != Some("Point") {
        return Some(SHAPE);
    }
    let Some(coordinates) = object.get("coordinates").and_then(Value::as_array) else {
        return Some(SHAPE);
    };
    if !(2..=3).contains(&coordinates.len()) || !coordinates.iter().all(Value::is_number) {
        return Some(SHAPE);
    }
    let lon = coordinates[0].as_f64().unwrap_or(f64::NAN);
    let lat = coordinates[1].as_f64().unwrap_or(f64::NAN);
    if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
        return Some("admin/location: longitude is within [-180, 180] and latitude within [-90, 90]");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_the_hub() {
        for ok in ["a", "noise-12", "building.3", "_x", "9lives", &"x".repeat(128)] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "-x", "a/b", "a b", "é", "a+", "a#", &"x".repeat(129)] {
            assert!(name_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn admin_values_have_fixed_shapes() {
        assert!(value_problem("env", "t", &json!(null)).is_some());
        assert!(value_problem("env", "t", &json!({"any": [1]})).is_none());
        assert!(value_problem("admin", "status", &json!("online")).is_none());
        assert!(value_problem("admin", "status", &json!("up")).is_some());
        assert!(value_problem("admin", "last_seen", &json!("2026-01-01T00:00:00Z")).is_some());
        assert!(value_problem("admin", "colour", &json!("red")).is_some());
        assert!(value_problem("admin", "location", &json!({"type": "Point", "coordinates": [2.35, 48.85]})).is_none());
        assert!(value_problem("admin", "location", &json!({"type": "Point", "coordinates": [200, 0]})).is_some());
        assert!(value_problem("admin", "location", &json!("Paris")).is_some());
    }
}
