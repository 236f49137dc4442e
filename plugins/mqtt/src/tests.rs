//! The adapter driven through the SDK's test kit, as the host drives it.

use hub_plugin_sdk::{
    abi::{LogLevel, ProviderModel, ResourceUpdate},
    testkit::TestKit,
};

use super::*;
use crate::report::WARNINGS_PER_CALL;

const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z, in µs

fn kit(config: Value) -> TestKit<MqttAdapter> {
    let mut kit = TestKit::new(config).unwrap();
    kit.set_now(T0);
    kit
}

fn msg(topic: &str, payload: impl Into<Payload>) -> InboundMessage {
    InboundMessage::mqtt(topic, payload, T0)
}

fn warnings(out: &Output) -> Vec<&str> {
    out.logs.iter().filter(|l| l.level == LogLevel::Warn).map(|l| l.message.as_str()).collect()
}

fn paths(out: &Output) -> Vec<String> {
    out.updates.iter().map(|u| format!("{}/{}/{}", u.provider, u.service, u.resource)).collect()
}

fn only(out: &Output) -> &ResourceUpdate {
    assert_eq!(out.updates.len(), 1, "{out:#?}");
    &out.updates[0]
}

/// The mappings of the reference: a room sensor with a millisecond timestamp, and plain-text sensors.
fn building() -> Value {
    json!({
        "mappings": [
            {
                "topic": "building/{floor}/{room}/env",
                "provider": "room-{floor}-{room}",
                "service": "env",
                "timestamp": {"pointer": "/ts", "format": "unix_ms"},
                "resources": [
                    {"name": "temperature", "pointer": "/temp", "type": "float", "unit": "°C"},
                    {"name": "humidity", "pointer": "/hum", "type": "float", "unit": "%", "service": "air"},
                    {"name": "raw", "pointer": ""}
                ]
            },
            {
                "topic": "sensors/{site}/{sensor}/state",
                "provider": "site-{site}",
                "service": "sensors",
                "resources": [{"name": "{sensor}", "type": "string"}]
            }
        ],
        "acts": [{
            "provider": "room-*", "service": "hvac", "resource": "setpoint",
            "params": {"value": "float"},
            "topic": "building/{floor}/{room}/cmd",
            "payload": "{\"sp\": {params.value}, \"req\": \"{id}\"}",
            "qos": 1
        }]
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Default scheme

#[test]
fn up_takes_any_json_value_at_the_receive_time() {
    let mut kit = kit(Value::Null);
    let payloads =
        [("21.5", json!(21.5)), ("\"on\"", json!("on")), ("true", json!(true)), (r#"{"a":1}"#, json!({"a": 1}))];
    for (payload, value) in payloads {
        let out = kit.messages(vec![msg("hub/up/dev-1/env/temp", payload)]);
        let u = only(&out);
        assert_eq!((u.provider.as_str(), u.service.as_str(), u.resource.as_str()), ("dev-1", "env", "temp"));
        assert_eq!(u.value, value);
        assert_eq!(u.timestamp_us, Some(T0));
        assert!(out.models.is_empty() && out.logs.is_empty(), "{out:#?}");
    }
}

#[test]
fn up_envelopes_carry_a_timestamp() {
    let mut kit = kit(Value::Null);
    let out = kit.messages(vec![
        msg("hub/up/d/s/a", r#"{"value": 1.5, "timestamp": 1767225600123}"#),
        msg("hub/up/d/s/b", r#"{"value": "x", "timestamp": "2026-01-01T01:00:00.5+01:00"}"#),
        msg("hub/up/d/s/c", r#"{"value": {"nested": true}}"#),
        msg("hub/up/d/s/d", r#"{"value": 1, "unit": "K"}"#),
        msg("hub/up/d/s/e", r#"{"value": 2, "timestamp": "yesterday"}"#),
    ]);
    let at = |i: usize| (out.updates[i].value.clone(), out.updates[i].timestamp_us);
    assert_eq!(at(0), (json!(1.5), Some(T0 + 123_000)), "a number is milliseconds");
    assert_eq!(at(1), (json!("x"), Some(T0 + 500_000)), "text is RFC 3339 with an offset");
    assert_eq!(at(2), (json!({"nested": true}), Some(T0)));
    assert_eq!(at(3), (json!({"value": 1, "unit": "K"}), Some(T0)), "other keys: the object is the value");
    assert_eq!(at(4), (json!(2), Some(T0)), "a bad timestamp falls back to the receive time");
    let w = warnings(&out);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("hub/up/d/s/e") && w[0].contains("receive time"), "{w:?}");
}

#[test]
fn senml_packs_resolve_names_and_times() {
    let mut kit = kit(Value::Null);
    let pack = json!([
        {"bn": "meter-7/", "bt": 1.7e9, "n": "power/active", "v": 230, "u": "W"},
        {"n": "power/factor", "v": 0.97, "t": 1},
        {"n": "relay/on", "vb": true, "t": -5, "bt": 0},
        {"n": "info/label", "vs": "north"},
        {"bn": "", "n": "info/blob", "vd": "aGk="},
        {"bn": "meter-7/counter/", "bv": 100, "n": "total", "v": 5},
        {"n": "sum", "s": 42}
    ]);
    let out = kit.messages(vec![msg("hub/senml/meter-7", pack.to_string())]);
    assert_eq!(
        paths(&out),
        [
            "meter-7/power/active",
            "meter-7/power/factor",
            "meter-7/relay/on",
            "meter-7/info/label",
            "meter-7/info/blob",
            "meter-7/counter/total",
            "meter-7/counter/sum"
        ]
    );
    let u = &out.updates;
    assert_eq!((u[0].value.clone(), u[0].timestamp_us), (json!(230), Some(1_700_000_000_000_000)));
    assert_eq!(u[1].timestamp_us, Some(1_700_000_001_000_000));
    assert_eq!(u[2].timestamp_us, Some(T0 - 5_000_000), "t below 2^28 is relative to the receive time");
    assert_eq!(u[3].timestamp_us, Some(T0));
    assert_eq!(u[4].value, json!("aGk="));
    assert_eq!(u[5].value, json!(105.0), "bv + v");
    assert_eq!(u[6].value, json!(42.0));
    assert_eq!(
        out.models,
        [ProviderModel {
            provider: "meter-7".into(),
            model: json!({"services": {"power": {"resources": {"active": {"type": "number", "unit": "W"}}}}})
        }],
        "a unit is declared once"
    );
    assert!(out.logs.is_empty(), "{:?}", out.logs);
    let again = kit.messages(vec![msg("hub/senml/meter-7", pack.to_string())]);
    assert!(again.models.is_empty());
}

#[test]
fn senml_skips_bad_records_and_keeps_the_rest() {
    let mut kit = kit(Value::Null);
    let pack = json!([
        {"n": "s/ok1", "v": 1},
        {"n": "other/s/r", "v": 1},
        {"n": "s/bad name", "v": 1},
        {"n": "s/r", "v": "text"},
        {"n": "s/r", "v": 1, "vs": "x"},
        {"n": "s/r"},
        {"n": "s/r", "v": 1, "future_": 1},
        {"n": "a/b/c/d", "v": 1},
        "not a record",
        {"n": "s/r", "v": 1, "t": 1e300},
        {"n": "dev/s/ok2", "v": 2, "later": "ignored"},
        {"bn": 5, "n": "s/never", "v": 3},
        {"n": "s/never", "v": 3}
    ]);
    let out = kit.messages(vec![msg("hub/senml/dev", pack.to_string()), msg("hub/up/dev/s/after", "1")]);
    assert_eq!(paths(&out), ["dev/s/ok1", "dev/s/ok2", "dev/s/after"]);
    let w = warnings(&out);
    assert_eq!(w.len(), WARNINGS_PER_CALL + 1, "{w:#?}");
    assert!(w[0].contains("record 1") && w[0].contains("not the topic's"), "{}", w[0]);
    assert!(w.last().unwrap().starts_with("5 more skipped"), "{w:#?}");

    let out = kit.messages(vec![msg("hub/senml/dev", r#"{"n": "s/r", "v": 1}"#), msg("hub/senml/dev/x", "[]")]);
    assert!(out.updates.is_empty());
    assert!(warnings(&out)[0].contains("JSON array"));
    assert!(warnings(&out)[1].contains("hub/senml/{provider}"));
}

#[test]
fn model_documents_are_forwarded() {
    let mut kit = kit(Value::Null);
    let doc = json!({"services": {"light": {"resources": {
        "switch": {"kind": "action", "type": "object", "parameters": {"on": "boolean"}},
        "lux": {"type": "number", "unit": "lx"}
    }}}});
    let out = kit.messages(vec![
        msg("hub/model/lamp-1", doc.to_string()),
        msg("hub/model/lamp-2", r#"{"services": {"light": {"resources": {"x": {"kind": "gauge"}}}}}"#),
        msg("hub/model/bad name", doc.to_string()),
    ]);
    assert_eq!(out.models, [ProviderModel { provider: "lamp-1".into(), model: doc }]);
    let w = warnings(&out);
    assert!(w[0].contains("not a model document") && w[0].contains("gauge"), "{w:?}");
    assert!(w[1].contains("bad name"), "{w:?}");
}

#[test]
fn act_publishes_on_hub_down_with_unique_ids() {
    let mut kit = kit(Value::Null);
    let (result, out) = kit.act("lamp-1", "light", "switch", json!({"on": true})).unwrap();
    assert_eq!(result["topic"], json!("hub/down/lamp-1/light/switch"));
    let id = result["id"].as_str().unwrap().to_owned();
    let sent = &out.outbound[0];
    assert_eq!((sent.transport.as_str(), sent.address.as_str()), ("mqtt", "hub/down/lamp-1/light/switch"));
    assert!(sent.metadata.is_empty());
    let body: Value = sent.payload.json().unwrap();
    assert_eq!(body, json!({"id": id, "params": {"on": true}}));

    let mut ids = vec![id];
    for _ in 0..3 {
        ids.push(kit.act("lamp-1", "light", "switch", json!({"on": false})).unwrap().0["id"].as_str().unwrap().into());
    }
    // A restart whose clock went back still issues new ids.
    let mut restarted = TestKit::<MqttAdapter>::with_state("mqtt", Value::Null, kit.into_state()).unwrap();
    restarted.set_now(T0 - 3_600_000_000);
    for _ in 0..3 {
        ids.push(restarted.act("lamp-1", "light", "switch", json!({})).unwrap().0["id"].as_str().unwrap().into());
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}

#[test]
fn the_default_scheme_can_be_turned_off() {
    let mut config = building();
    config["default_scheme"] = json!(false);
    let mut kit = kit(config);
    let out = kit.messages(vec![msg("hub/up/d/s/r", "1"), msg("elsewhere/x", "1")]);
    assert!(out.updates.is_empty());
    assert!(warnings(&out).is_empty(), "unmatched topics are not warnings");
    let debug: Vec<_> = out.logs.iter().filter(|l| l.level == LogLevel::Debug).collect();
    assert_eq!(debug.len(), 1);
    assert!(debug[0].message.starts_with("2 messages matched no mapping"), "{debug:?}");
    let refused = kit.act("lamp-1", "light", "switch", json!({})).unwrap_err();
    assert!(refused.0.contains("default scheme is off"), "{refused:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// Mappings

#[test]
fn mappings_capture_point_coerce_and_declare_once() {
    let mut kit = kit(building());
    let payload = r#"{"temp": "21.5", "hum": 40, "ts": 1767225600250}"#;
    let out = kit.messages(vec![msg("building/3/12/env", payload), msg("building/3/12/env", payload)]);
    assert_eq!(
        paths(&out),
        [
            "room-3-12/env/temperature",
            "room-3-12/air/humidity",
            "room-3-12/env/raw",
            "room-3-12/env/temperature",
            "room-3-12/air/humidity",
            "room-3-12/env/raw"
        ]
    );
    assert_eq!(out.updates[0].value, json!(21.5), "text coerced to a number");
    assert_eq!(out.updates[1].value, json!(40));
    assert_eq!(out.updates[2].value, serde_json::from_str::<Value>(payload).unwrap(), "\"\" is the whole payload");
    assert!(out.updates.iter().all(|u| u.timestamp_us == Some(T0 + 250_000)));
    assert_eq!(
        out.models,
        [ProviderModel {
            provider: "room-3-12".into(),
            model: json!({"services": {
                "env": {"resources": {"temperature": {"type": "number", "unit": "°C"}}},
                "air": {"resources": {"humidity": {"type": "number", "unit": "%"}}},
                "hvac": {"resources": {"setpoint": {"kind": "action", "type": "object", "parameters": {"value": "number"}}}}
            }})
        }],
        "declared once per provider, with the matching ACT template's action"
    );
    assert!(out.logs.is_empty(), "{:?}", out.logs);

    let out =
        kit.messages(vec![msg("sensors/north/door-1/state", "open"), msg("sensors/north/door-2/state", "\"closed\"")]);
    assert_eq!(paths(&out), ["site-north/sensors/door-1", "site-north/sensors/door-2"]);
    assert_eq!(out.updates[0].value, json!("open"), "plain text is a string");
    assert_eq!(out.updates[1].value, json!("closed"));
    assert_eq!(out.models.len(), 2, "a name from a capture is declared per capture");
    assert_eq!(
        out.models[0].model,
        json!({"services": {"sensors": {"resources": {"door-1": {"type": "string"}}}}}),
        "no ACT template matches site-*"
    );
}

#[test]
fn mapping_timestamps_in_every_format() {
    let cases = [
        ("unix_s", json!(1_767_225_600.5), T0 + 500_000),
        ("unix_ms", json!(1_767_225_600_001i64), T0 + 1_000),
        ("unix_us", json!(T0 + 7), T0 + 7),
        ("unix_s", json!("1767225601"), T0 + 1_000_000),
        ("rfc3339", json!("2026-01-01T00:00:02Z"), T0 + 2_000_000),
    ];
    for (format, ts, expected) in cases {
        let mut kit = kit(json!({"mappings": [{
            "topic": "m/{n}", "provider": "m-{n}", "service": "s",
            "timestamp": {"pointer": "/at", "format": format},
            "resources": [{"name": "v", "pointer": "/v"}]
        }]}));
        let out = kit.messages(vec![msg("m/1", json!({"v": 1, "at": ts}).to_string())]);
        assert_eq!(only(&out).timestamp_us, Some(expected), "{format} {ts}");
        assert!(out.logs.is_empty());
        let out = kit.messages(vec![msg("m/1", json!({"v": 1, "at": [ts]}).to_string()), msg("m/1", r#"{"v": 2}"#)]);
        assert_eq!(out.updates.iter().map(|u| u.timestamp_us).collect::<Vec<_>>(), [Some(T0), Some(T0)]);
        let w = warnings(&out);
        assert!(w[0].contains("receive time") && w[1].contains("no timestamp at \"/at\""), "{w:?}");
    }
}

#[test]
fn act_templates_use_captures_kept_across_a_restart() {
    let mut kit = kit(building());
    kit.messages(vec![msg("building/3/12/env", r#"{"temp": 20}"#)]);
    assert_eq!(kit.state_json::<Value>("seg/room-3-12"), Some(json!({"floor": "3", "room": "12"})));

    let mut restarted = TestKit::<MqttAdapter>::with_state("mqtt", building(), kit.into_state()).unwrap();
    restarted.set_now(T0);
    let (result, out) = restarted.act("room-3-12", "hvac", "setpoint", json!({"value": 19.5})).unwrap();
    let sent = &out.outbound[0];
    assert_eq!(sent.address, "building/3/12/cmd");
    assert_eq!(result, json!({"id": result["id"], "topic": "building/3/12/cmd"}));
    let body: Value = sent.payload.json().unwrap();
    assert_eq!(body, json!({"sp": 19.5, "req": result["id"]}));
    assert_eq!(sent.metadata.get("qos").map(String::as_str), Some("1"));

    let unknown = restarted.act("room-9-9", "hvac", "setpoint", json!({"value": 1})).unwrap_err();
    assert!(unknown.0.contains("no topic captures are known for room-9-9"), "{unknown:?}");
    let missing = restarted.act("room-3-12", "hvac", "setpoint", json!({})).unwrap_err();
    assert!(missing.0.contains("missing parameter \"value\""), "{missing:?}");
    let (fallback, _) = restarted.act("room-3-12", "hvac", "other", json!({})).unwrap();
    assert_eq!(fallback["topic"], json!("hub/down/room-3-12/hvac/other"), "no template: the default scheme");
}

#[test]
fn commands_go_back_through_the_bridge_the_device_used() {
    let mut kit = kit(building());
    let mut m = msg("building/1/2/env", r#"{"temp": 20}"#);
    m.metadata.insert("broker".into(), "plant".into());
    let mut up = msg("hub/up/lamp-1/light/lux", "300");
    up.metadata.insert("broker".into(), "plant".into());
    kit.messages(vec![m, up]);
    let (_, out) = kit.act("room-1-2", "hvac", "setpoint", json!({"value": 18})).unwrap();
    assert_eq!(out.outbound[0].metadata.get("broker").map(String::as_str), Some("plant"));
    let (_, out) = kit.act("lamp-1", "light", "switch", json!({})).unwrap();
    assert_eq!(out.outbound[0].metadata.get("broker").map(String::as_str), Some("plant"));
    kit.messages(vec![msg("hub/up/lamp-1/light/lux", "300")]);
    let (_, out) = kit.act("lamp-1", "light", "switch", json!({})).unwrap();
    assert!(out.outbound[0].metadata.is_empty(), "back on the embedded broker");
}

#[test]
fn captures_in_payloads_are_json_escaped() {
    let config = json!({
        "mappings": [{"topic": "x/{dev}/{label}", "provider": "x-{dev}", "service": "s",
                      "resources": [{"name": "v"}]}],
        "acts": [{"provider": "x-*", "service": "s", "resource": "go", "topic": "x/{dev}/cmd",
                  "payload": "{\"label\": \"{label}\", \"who\": \"{provider}\", \"all\": {params}}"}]
    });
    let mut kit = kit(config);
    kit.messages(vec![msg("x/1/say \"hi\"", "1")]);
    let (_, out) = kit.act("x-1", "s", "go", json!({"n": 1})).unwrap();
    let body: Value = out.outbound[0].payload.json().unwrap();
    assert_eq!(body, json!({"label": "say \"hi\"", "who": "x-1", "all": {"n": 1}}));
}

#[test]
fn init_errors_name_the_config_key() {
    let mut config = building();
    config["mappings"][0]["provider"] = json!("room-{flor}-{room}");
    let err = TestKit::<MqttAdapter>::new(config).err().unwrap();
    assert_eq!(err, "mappings[0].provider: unknown segment {flor} (known: floor, room)");

    let mut config = building();
    config["acts"][0]["topic"] = json!("building/{floor}/{rom}/cmd");
    let err = TestKit::<MqttAdapter>::new(config).err().unwrap();
    assert!(err.starts_with("acts[0].topic: unknown segment {rom}"), "{err}");

    let mut config = building();
    config["mappings"][1]["resources"][0]["type"] = json!("text");
    let err = TestKit::<MqttAdapter>::new(config).err().unwrap();
    assert!(err.starts_with("mappings[1].resources[0].type: unknown variant `text`"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------------
// Hostile input

#[test]
fn hostile_messages_are_skipped_and_their_neighbours_applied() {
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    let huge_topic = format!("hub/up/{}/s/r", "p".repeat(70_000));
    let cases: Vec<(InboundMessage, &str)> = vec![
        (msg("hub/up/d/s/r", "{not json"), "not JSON"),
        (msg("hub/up/d/s/r", vec![0xff, 0xfe, 0x00]), "not UTF-8"),
        (msg("hub/up/d/s/r", ""), "not JSON"),
        (msg("hub/up/d/s/r", "null"), "null is not a value"),
        (msg("hub/up/d/s/r", "1e999"), "not JSON"),
        (msg("hub/up/d/s/r", deep.as_str()), "not JSON"),
        (msg("hub/up/d/s/r", deep_object.as_str()), "not JSON"),
        (msg("hub/up/bad name/s/r", "1"), "provider \"bad name\""),
        (msg("hub/up/d/.s/r", "1"), "service \".s\""),
        (msg("hub/up/d/s/", "1"), "resource \"\""),
        (msg("hub/up/d/s/r/extra", "1"), "expected hub/up/"),
        (msg("hub/up/d/s", "1"), "expected hub/up/"),
        (msg(&huge_topic, "1"), "a name is at most 128 bytes"),
        (msg("hub/up/d/admin/last_seen", "\"2026-01-01T00:00:00Z\""), "kept by the hub"),
        (msg("hub/up/d/admin/status", "\"up\""), "online"),
        (msg("hub/up/d/admin/location", r#"{"type": "Point", "coordinates": ["x", 1]}"#), "GeoJSON"),
        (msg("hub/up/d/s/r", "x".repeat(300_000)), "over the 262144-byte limit"),
        (msg("hub/senml/d", "[{\"n\": \"s/r\", \"v\": 1e999}]"), "not JSON"),
        (msg("hub/senml/d", "{}"), "JSON array"),
        (msg("hub/model/d", "[1, 2]"), "not a model document"),
        (msg("building/3/12/env", r#"{"temp": "warm"}"#), "expected a number"),
        (msg("building/3/12/env", r#"{"temp": [1]}"#), "expected a number"),
        (msg("building/3/12/env", r#"{"temp": null}"#), "null is not a value"),
        (msg("building/3/12/env", r#"{"temp": "1e999"}"#), "expected a number"),
        (msg("building/3/12/env", r#"{"hum": 1}"#), "nothing at \"/temp\""),
        (msg("building/3/12/env", "{\"temp\": \"\u{0}\"}"), "not JSON"),
        (msg("building/3/12/env", r#"{"temp": "\u0000"}"#), "expected a number"),
        (msg("building/3/12/env", "[[[["), "not JSON"),
        (msg("building/3/ro om/env", "{\"temp\": 1}"), "provider \"room-3-ro om\""),
        (msg("sensors/n/bad*name/state", "1"), "resource \"bad*name\""),
        (InboundMessage::new("coap", "/x", "1", T0), "not an MQTT message"),
    ];
    for (bad, expected) in cases {
        let topic = bad.address.clone();
        let mut kit = kit(building());
        let out = kit.messages(vec![msg("hub/up/ok-1/s/r", "1"), bad, msg("hub/up/ok-2/s/r", "2")]);
        let applied: Vec<_> = out.updates.iter().filter(|u| u.provider.starts_with("ok-")).collect();
        assert_eq!(applied.len(), 2, "{topic:.60}: the neighbours still apply: {out:#?}");
        let w = warnings(&out);
        assert!(!w.is_empty(), "{topic:.60}: a warning is expected");
        assert!(w.iter().any(|w| w.contains(expected)), "{topic:.60}: expected {expected:?} in {w:?}");
        assert!(w.iter().all(|w| w.len() < 600), "warnings stay short: {w:?}");
        for u in &out.updates {
            for name in [&u.provider, &u.service, &u.resource] {
                assert_eq!(names::name_problem(name), None, "{topic:.60}: emitted a bad name {name:?}");
            }
            assert!(!u.value.is_null());
        }
    }
}

#[test]
fn warnings_are_limited_per_batch() {
    let mut kit = kit(Value::Null);
    let mut batch: Vec<_> = (0..256).map(|i| msg(&format!("hub/up/d/s/r{i}"), "garbage")).collect();
    batch.push(msg("hub/up/d/s/good", "1"));
    let out = kit.messages(batch);
    assert_eq!(paths(&out), ["d/s/good"]);
    let w = warnings(&out);
    assert_eq!(w.len(), WARNINGS_PER_CALL + 1);
    assert_eq!(
        w[WARNINGS_PER_CALL],
        "251 more skipped messages, records or resources in this batch (warnings are limited to 5 per batch)"
    );
}

#[test]
fn a_full_batch_of_mixed_traffic() {
    let mut kit = kit(building());
    let batch: Vec<_> = (0..256)
        .map(|i| match i % 4 {
            0 => msg(&format!("hub/up/dev-{i}/env/temp"), format!("{}.5", i)),
            1 => msg(
                &format!("building/{}/{}/env", i % 7, i % 13),
                format!(r#"{{"temp": {i}, "hum": "50", "ts": 1767225600000}}"#),
            ),
            2 => msg(&format!("hub/senml/meter-{i}"), format!(r#"[{{"bn": "meter-{i}/", "n": "p/w", "v": {i}}}]"#)),
            _ => msg("noise/elsewhere", "x"),
        })
        .collect();
    let out = kit.messages(batch);
    assert_eq!(out.updates.len(), 64 + 64 * 3 + 64);
    assert!(warnings(&out).is_empty(), "{:?}", warnings(&out));
}

#[test]
fn restart_keeps_declarations_idempotent() {
    let mut kit = kit(building());
    assert_eq!(kit.messages(vec![msg("building/1/1/env", r#"{"temp": 1}"#)]).models.len(), 1);
    let state = kit.into_state();
    let mut restarted = TestKit::<MqttAdapter>::with_state("mqtt", building(), state.clone()).unwrap();
    let out = restarted.messages(vec![msg("building/1/1/env", r#"{"temp": 1}"#)]);
    assert_eq!(out.models.len(), 1, "a new instance declares again (the hub merges identical declarations)");
    assert_eq!(restarted.state(), &state, "unchanged captures are not written again");
}

#[test]
fn output_is_bounded_per_call() {
    let mut kit = kit(Value::Null);
    let record = r#"{"n": "s/r", "v": 1},"#;
    let pack = format!("[{}{{\"n\": \"s/r\", \"v\": 1}}]", record.repeat(9_999));
    let batch: Vec<_> = (0..4).map(|i| msg(&format!("hub/senml/d{i}"), pack.as_str())).collect();
    let out = kit.messages(batch);
    assert_eq!(out.updates.len(), report::MAX_UPDATES_PER_CALL);
    let w = warnings(&out);
    assert!(w[0].contains("hub/senml/d3") && w[0].contains("update budget is spent"), "{w:?}");
}

/// A small deterministic fuzz: random and truncated payloads on every kind of topic never panic, and whatever
/// comes out is valid for the hub.
#[test]
fn random_and_truncated_input_never_panics() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let topics = ["hub/up/d/s/r", "hub/senml/d", "hub/model/d", "building/1/2/env", "sensors/a/b/state"];
    let valid = [
        r#"{"value": 21.5, "timestamp": "2026-01-01T00:00:00Z"}"#,
        r#"[{"bn": "d/", "bt": 1.7e9, "n": "s/r", "v": 1, "u": "W"}, {"n": "s/q", "vs": "x", "t": -1}]"#,
        r#"{"services": {"s": {"resources": {"a": {"kind": "action", "type": "object", "parameters": {"x": "number"}}}}}}"#,
        r#"{"temp": "21.5", "hum": 40, "ts": 1767225600000}"#,
    ];
    const ALPHABET: &[u8] = b"{}[]\":,.-+eE0123456789 truefalsnl\\/u_~#";
    let mut kit = kit(building());
    for round in 0..400 {
        let mut batch = Vec::new();
        for i in 0..16 {
            let topic = topics[(next() % topics.len() as u64) as usize];
            let payload: Vec<u8> = match i % 3 {
                0 => {
                    let text = valid[(next() % valid.len() as u64) as usize].as_bytes();
                    text[..(next() % (text.len() as u64 + 1)) as usize].to_vec()
                }
                1 => (0..next() % 64).map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize]).collect(),
                _ => (0..next() % 64).map(|_| next() as u8).collect(),
            };
            batch.push(msg(topic, payload));
        }
        let out = kit.messages(batch);
        for u in &out.updates {
            for name in [&u.provider, &u.service, &u.resource] {
                assert_eq!(names::name_problem(name), None, "round {round}: {name:?}");
            }
            assert!(names::value_problem(&u.service, &u.resource, &u.value).is_none(), "round {round}: {u:?}");
        }
        for m in &out.models {
            assert_eq!(scheme::check_model(&m.model), Ok(()), "round {round}: {m:?}");
        }
        assert!(out.logs.len() <= WARNINGS_PER_CALL + 2, "round {round}: {:?}", out.logs);
    }
}
