//! Secrets in plugin configurations: keys, passwords and tokens never leave the hub through the API.
//!
//! A configuration field is secret when its name ends with `key`, `secret`, `password` or `token` (any case, so
//! `app_key`, `nwkSKey`, `client_secret`). Responses show such fields as [`REDACTED`]. A configuration sent back
//! with [`REDACTED`] in a secret field keeps the value the plugin already has there, so an admin can edit what
//! `GET` showed without retyping every key.

use serde_json::Value;

/// What a secret field reads as in API responses.
pub const REDACTED: &str = "<redacted>";

fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["key", "secret", "password", "token"].iter().any(|s| name.ends_with(s))
}

/// `config` with every non-empty secret field replaced by [`REDACTED`], at any depth.
pub fn redact(config: &Value) -> Value {
    match config {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let secret = is_secret(k) && !matches!(v, Value::Null) && v.as_str() != Some("");
                    (k.clone(), if secret && !v.is_object() { Value::String(REDACTED.into()) } else { redact(v) })
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// `new` with each [`REDACTED`] secret field replaced by the value at the same place in `current` (array elements
/// are matched by position). A [`REDACTED`] with nothing to restore is left as it is, for the plugin to refuse.
pub fn restore(new: &mut Value, current: &Value) {
    match (new, current) {
        (Value::Object(map), Value::Object(old)) => {
            for (k, v) in map.iter_mut() {
                match old.get(k) {
                    Some(previous) if is_secret(k) && v.as_str() == Some(REDACTED) => *v = previous.clone(),
                    Some(previous) => restore(v, previous),
                    None => {}
                }
            }
        }
        (Value::Array(items), Value::Array(old)) => {
            for (v, previous) in items.iter_mut().zip(old) {
                restore(v, previous);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_are_redacted_at_any_depth_and_restored_on_the_way_back() {
        let config = json!({"devices": [
            {"dev_eui": "0011", "app_key": "00112233445566778899aabbccddeeff", "name": "a"},
            {"dev_eui": "0022", "nwkSKey": "ff", "AppSKey": "ee", "codec": "raw"}
        ], "password": "p", "token": "", "monkey_business": 3, "keys": "not secret by name"});
        let shown = redact(&config);
        assert_eq!(shown["devices"][0]["app_key"], REDACTED);
        assert_eq!(shown["devices"][1]["nwkSKey"], REDACTED);
        assert_eq!(shown["devices"][1]["AppSKey"], REDACTED);
        assert_eq!(shown["devices"][0]["dev_eui"], "0011");
        assert_eq!(shown["password"], REDACTED);
        assert_eq!(shown["token"], "", "an empty secret says it is empty");
        assert_eq!(shown["monkey_business"], 3);
        assert!(!shown.to_string().contains("00112233"), "{shown}");

        // An admin edits one field of what GET showed and sends it back: the keys survive.
        let mut edited = shown.clone();
        edited["devices"][0]["name"] = json!("b");
        edited["devices"][1]["nwkSKey"] = json!("aa");
        restore(&mut edited, &config);
        assert_eq!(edited["devices"][0]["app_key"], config["devices"][0]["app_key"]);
        assert_eq!(edited["devices"][0]["name"], "b");
        assert_eq!(edited["devices"][1]["nwkSKey"], "aa", "a new value replaces the old one");
        assert_eq!(edited["devices"][1]["AppSKey"], "ee");
        assert_eq!(edited["password"], "p");
    }
}
