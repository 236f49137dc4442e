//! The model the golden and property tests check rules against.

use hub_model::{Name, Provider, ProviderDoc, Timestamp};
use serde_json::json;

fn provider(name: &str, services: serde_json::Value) -> Provider {
    let mut p = Provider::new(Name::new(name).unwrap());
    let doc: ProviderDoc = serde_json::from_value(json!({ "services": services })).unwrap();
    p.merge_doc(&doc, Timestamp::from_micros(0)).unwrap();
    p
}

/// The model every golden file is checked against.
pub fn model() -> Vec<Provider> {
    let noise = |name| {
        provider(
            name,
            json!({
                "sound": {"resources": {"level": {"kind": "sensor", "type": "number", "unit": "dB"}}},
                "sign": {"resources": {
                    "display": {"kind": "state", "type": "string"},
                    "on": {"kind": "state", "type": "boolean"}
                }}
            }),
        )
    };
    let home = |name| {
        provider(
            name,
            json!({
                "fall": {"resources": {"detected": {"kind": "sensor", "type": "boolean"}}},
                "alarm": {"resources": {"siren": {"kind": "action", "type": "object", "parameters": {"seconds": "integer"}}}}
            }),
        )
    };
    let truck = |name| {
        provider(
            name,
            json!({
                "gps": {"resources": {"position": {"kind": "sensor", "type": "object"}}},
                "garbage": {"resources": {"weight": {"kind": "sensor", "type": "number", "unit": "kg"}}},
                "engine": {"resources": {"status": {"kind": "sensor", "type": "string"}}}
            }),
        )
    };
    vec![
        noise("noise-12"),
        noise("noise-13"),
        provider(
            "city-hall",
            json!({
                "alerts": {"resources": {"notify": {"kind": "action", "type": "object", "parameters": {"message": "string"}}}},
                "reports": {"resources": {"daily": {"kind": "action", "type": "object"}}}
            }),
        ),
        home("home-1"),
        home("home-2"),
        provider("site.a", json!({"env.v2": {"resources": {"temp.c": {"kind": "sensor", "type": "number"}}}})),
        provider(
            "parking-3",
            json!({"lot": {"resources": {
                "free": {"kind": "sensor", "type": "integer"},
                "capacity": {"kind": "property", "type": "integer"},
                "sign": {"kind": "state", "type": "string"}
            }}}),
        ),
        truck("truck-7"),
        truck("truck-8"),
        provider(
            "lamp-1",
            json!({"light": {"resources": {
                "on": {"kind": "state", "type": "boolean"},
                "mode": {"kind": "property", "type": "string"},
                "blink": {"kind": "action", "type": "object", "parameters": {"times": "integer"}}
            }}}),
        ),
    ]
}
