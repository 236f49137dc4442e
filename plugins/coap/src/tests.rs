//! The adapter driven as the host drives it (TestKit): every content format, SenML packs, observations, ACT,
//! hostile input, and a deterministic fuzz loop.

use hub_plugin_sdk::testkit::TestKit;

use super::*;

const NOW: i64 = 1_700_000_000_000_000;

fn kit(config: Value) -> TestKit<CoapAdapter> {
    let mut kit = TestKit::<CoapAdapter>::new(config).unwrap();
    kit.set_now(NOW);
    kit
}

fn coap(address: &str, content_format: Option<u16>, payload: impl Into<Payload>) -> InboundMessage {
    let mut message = InboundMessage::new("coap", address, payload, NOW);
    if let Some(cf) = content_format {
        message.metadata.insert("content_format".into(), cf.to_string());
    }
    message.metadata.insert("method".into(), "POST".into());
    message
}

fn triples(out: &Output) -> Vec<(String, Value)> {
    out.updates.iter().map(|u| (format!("{}/{}/{}", u.provider, u.service, u.resource), u.value.clone())).collect()
}

fn warnings(out: &Output) -> usize {
    out.logs.iter().filter(|l| l.level == LogLevel::Warn).count()
}

#[test]
fn readings_in_every_content_format() {
    let mut kit = kit(json!({}));
    let out = kit.messages(vec![
        coap("/up/p/s/json", Some(50), "21.5"),
        coap("/up/p/s/obj", Some(50), r#"{"value": true, "timestamp": "2024-01-01T00:00:00Z"}"#),
        coap("/up/p/s/cbor", Some(60), vec![0xf9, 0x3c, 0x00]),
        coap(
            "/up/p/s/cbor-obj",
            Some(60),
            vec![
                0xa2, 0x65, b'v', b'a', b'l', b'u', b'e', 0x07, 0x69, b't', b'i', b'm', b'e', b's', b't', b'a', b'm',
                b'p', 0x1a, 0x65, 0x53, 0xf1, 0x00,
            ],
        ),
        coap("/up/p/s/text", Some(0), "open"),
        coap("/up/p/s/none", None, "42"),
    ]);
    assert_eq!(warnings(&out), 0, "{:?}", out.logs);
    assert_eq!(
        triples(&out),
        vec![
            ("p/s/json".to_owned(), json!(21.5)),
            ("p/s/obj".to_owned(), json!(true)),
            ("p/s/cbor".to_owned(), json!(1.0)),
            ("p/s/cbor-obj".to_owned(), json!(7)),
            ("p/s/text".to_owned(), json!("open")),
            ("p/s/none".to_owned(), json!(42)),
        ]
    );
    assert_eq!(out.updates[0].timestamp_us, Some(NOW));
    assert_eq!(out.updates[1].timestamp_us, Some(1_704_067_200_000_000));
    assert_eq!(out.updates[3].timestamp_us, Some(1_700_000_000_000), "envelope timestamps are milliseconds");
}

#[test]
fn senml_packs_at_every_depth() {
    let mut kit = kit(json!({}));
    let json_pack =
        r#"[{"bn": "env/", "bt": 1.7e9, "n": "temp", "v": 21.5, "u": "Cel"}, {"n": "hum", "v": 40, "t": 1}]"#;
    // [{-2: "s/", 0: "r", 2: 3}, {0: "on", 4: true}]
    let cbor_pack = vec![
        0x82, 0xa3, 0x21, 0x62, b's', b'/', 0x00, 0x61, b'r', 0x02, 0x03, 0xa2, 0x00, 0x62, b'o', b'n', 0x04, 0xf5,
    ];
    let out = kit.messages(vec![
        coap("/up/dev-1", Some(110), json_pack),
        coap("/up", Some(110), r#"[{"n": "dev-2/s/r", "vs": "x"}]"#),
        coap("/up/dev-3", Some(112), cbor_pack),
        coap("/up/dev-4/s/r", Some(110), r#"[{"v": 5}]"#),
    ]);
    assert_eq!(warnings(&out), 0, "{:?}", out.logs);
    assert_eq!(
        triples(&out),
        vec![
            ("dev-1/env/temp".to_owned(), json!(21.5)),
            ("dev-1/env/hum".to_owned(), json!(40.0)),
            ("dev-2/s/r".to_owned(), json!("x")),
            ("dev-3/s/r".to_owned(), json!(3.0)),
            ("dev-3/s/on".to_owned(), json!(true)),
            ("dev-4/s/r".to_owned(), json!(5.0)),
        ]
    );
    assert_eq!(out.updates[1].timestamp_us, Some(1_700_000_001_000_000));
}

#[test]
fn observed_resources_map_through_config_or_the_provider_hint() {
    let mut kit = kit(json!({
        "observe": [
            { "uri": "coap://10.0.0.7/sensors/temp", "provider": "greenhouse-7", "service": "climate", "resource": "temperature" },
            { "uri": "coap://10.0.0.8:5684/pack", "provider": "meter-8", "content": "senml-json" },
            { "uri": "coap://10.0.0.9/raw", "provider": "raw-9", "content": "text" }
        ]
    }));
    let notify = |address: &str, cf: Option<u16>, payload: &str, meta: &[(&str, &str)]| {
        let mut m = coap(address, cf, payload);
        m.metadata.remove("method");
        m.metadata.insert("observe".into(), "12".into());
        for (k, v) in meta {
            m.metadata.insert((*k).into(), (*v).into());
        }
        m
    };
    let out = kit.messages(vec![
        notify("//10.0.0.7:5683/sensors/temp", Some(50), "19.5", &[]),
        notify("//10.0.0.8:5684/pack", None, r#"[{"n": "power/w", "v": 230}]"#, &[]),
        notify("//10.0.0.9:5683/raw", Some(42), "7", &[]),
        notify(
            "//10.0.0.10:5683/time",
            Some(0),
            "Nov 22 08:19:54",
            &[("provider", "clock-1"), ("uri", "coap://10.0.0.10/time")],
        ),
        notify("//10.0.0.11:5683/x", Some(50), "1", &[]),
    ]);
    assert_eq!(
        triples(&out),
        vec![
            ("greenhouse-7/climate/temperature".to_owned(), json!(19.5)),
            ("meter-8/power/w".to_owned(), json!(230.0)),
            ("raw-9/coap/raw".to_owned(), json!(7)),
            ("clock-1/coap/time".to_owned(), json!("Nov 22 08:19:54")),
        ]
    );
    assert_eq!(warnings(&out), 1, "the unknown URI without a hint: {:?}", out.logs);
}

#[test]
fn act_sends_a_request_to_the_device() {
    let mut kit = kit(json!({
        "devices": [
            { "provider": "valve-3", "uri": "coap://10.0.0.8/actuators/{resource}?level={level}", "method": "put",
              "actions": { "valve/open": { "level": "integer" } } },
            { "provider": "lamp-1", "uri": "//10.0.0.9:6000/light", "content_format": 60, "confirmable": false },
            { "provider": "buzzer", "uri": "coap://10.0.0.10/beep", "content_format": 0 }
        ]
    }));
    let (result, out) = kit.act("valve-3", "valve", "open", json!({ "level": 3 })).unwrap();
    assert_eq!(result, json!({ "sent": { "uri": "coap://10.0.0.8/actuators/open?level=3", "method": "PUT" } }));
    let message = &out.outbound[0];
    assert_eq!(
        (message.transport.as_str(), message.address.as_str()),
        ("coap", "//10.0.0.8:5683/actuators/open?level=3")
    );
    assert_eq!(message.payload.as_str(), Some(r#"{"level":3}"#));
    assert_eq!(message.metadata.get("method").map(String::as_str), Some("PUT"));
    assert_eq!(message.metadata.get("content_format").map(String::as_str), Some("50"));
    assert_eq!(message.metadata.get("confirmable").map(String::as_str), Some("true"));

    let (_, out) = kit.act("lamp-1", "light", "set", json!({ "on": true })).unwrap();
    assert_eq!(out.outbound[0].address, "//10.0.0.9:6000/light");
    assert_eq!(cbor::decode(out.outbound[0].payload.as_bytes()).unwrap(), json!({ "on": true }));
    assert_eq!(out.outbound[0].metadata.get("confirmable").map(String::as_str), Some("false"));

    let (_, out) = kit.act("buzzer", "sound", "beep", json!({ "tone": "high" })).unwrap();
    assert_eq!(out.outbound[0].payload.as_str(), Some("high"));

    for (provider, service, resource, params) in [
        ("nobody", "valve", "open", json!({ "level": 1 })),
        ("valve-3", "valve", "close", json!({ "level": 1 })),
        ("valve-3", "valve", "open", json!({})),
        ("valve-3", "valve", "open", json!({ "level": [1] })),
    ] {
        let refused = kit.act(provider, service, resource, params.clone());
        assert!(refused.is_err(), "{provider}/{service}/{resource} {params}");
    }
}

#[test]
fn device_actions_are_declared_once() {
    let config = json!({
        "devices": [{ "provider": "valve-3", "uri": "coap://h/v", "actions": { "valve/open": { "level": "integer" } } }]
    });
    let mut kit = kit(config.clone());
    let out = kit.tick();
    assert_eq!(out.models.len(), 1);
    assert_eq!(out.models[0].provider, "valve-3");
    assert_eq!(out.models[0].model["services"]["valve"]["resources"]["open"]["kind"], "action");
    assert!(kit.tick().models.is_empty());
    assert!(kit.messages(vec![coap("/up/p/s/r", Some(50), "1")]).models.is_empty());
    // A restart keeps the knowledge (state), a changed configuration declares again.
    let state = kit.into_state();
    let mut again = TestKit::<CoapAdapter>::with_state("coap", config, state.clone()).unwrap();
    assert!(again.tick().models.is_empty());
    let changed = json!({
        "devices": [{ "provider": "valve-3", "uri": "coap://h/v", "actions": { "valve/open": { "level": "number" } } }]
    });
    let mut changed = TestKit::<CoapAdapter>::with_state("coap", changed, state).unwrap();
    assert_eq!(changed.tick().models.len(), 1);
}

#[test]
fn hostile_input_is_skipped_and_the_rest_of_the_batch_applies() {
    let mut kit = kit(json!({}));
    let deep_json = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let table: Vec<(&str, Option<u16>, Vec<u8>)> = vec![
        ("/up/p/s/r", Some(50), b"{not json".to_vec()),
        ("/up/p/s/r", Some(50), b"null".to_vec()),
        ("/up/p/s/r", Some(50), br#"{"value": null}"#.to_vec()),
        ("/up/p/s/r", Some(50), br#"{"value": 1, "timestamp": "soon"}"#.to_vec()),
        ("/up/p/s/r", Some(50), deep_json.into_bytes()),
        ("/up/p/s/r", Some(60), vec![0x82, 0x01]),
        ("/up/p/s/r", Some(60), [vec![0x81; 100], vec![0x00]].concat()),
        ("/up/p/s/r", Some(60), vec![0xf9, 0x7c, 0x00]),
        ("/up/p/s/r", Some(42), vec![1, 2, 3]),
        ("/up/p/s/r", Some(41), b"<x/>".to_vec()),
        ("/up/p/s/r", None, vec![0xff, 0xfe]),
        ("/up/p/s/r", None, Vec::new()),
        ("/up/p/s", Some(50), b"1".to_vec()),
        ("/up/p/s/r/extra", Some(50), b"1".to_vec()),
        ("/up/bad name/s/r", Some(50), b"1".to_vec()),
        ("/up//s/r", Some(50), b"1".to_vec()),
        ("/up/-p/s/r", Some(50), b"1".to_vec()),
        ("/upper/p/s/r", Some(50), b"1".to_vec()),
        ("/elsewhere", Some(50), b"1".to_vec()),
        ("/up/p", Some(110), br#"{"n": "s/r", "v": 1}"#.to_vec()),
        ("/up/p", Some(110), br#"[{"n": "s/r", "v": 1, "x_": 1}]"#.to_vec()),
        ("/up/p", Some(112), vec![0xa1, 0x00, 0x01]),
        ("/up/p", Some(112), vec![0x81, 0xa1, 0x02]),
        ("//10.0.0.1:5683/x", Some(50), b"1".to_vec()),
    ];
    let mut batch: Vec<InboundMessage> = table.iter().map(|(a, cf, p)| coap(a, *cf, p.clone())).collect();
    let mut bad_cf = coap("/up/p/s/r", None, "1");
    bad_cf.metadata.insert("content_format".into(), "fifty".into());
    batch.push(bad_cf);
    batch.push(InboundMessage::mqtt("up/p/s/r", "1", NOW));
    let count = batch.len();
    // Good messages around the bad ones still apply.
    batch.insert(0, coap("/up/p/s/first", Some(50), "1"));
    batch.push(coap(
        "/up/p",
        Some(110),
        r#"[{"n": "s/a", "v": 1}, {"n": "s/bad name", "v": 2}, {"n": "s/b", "vb": false}]"#,
    ));
    let out = kit.messages(batch);
    assert_eq!(
        triples(&out),
        vec![("p/s/first".to_owned(), json!(1)), ("p/s/a".to_owned(), json!(1.0)), ("p/s/b".to_owned(), json!(false))]
    );
    assert_eq!(warnings(&out), count + 1, "one warning per bad message and per bad record: {:#?}", out.logs);
}

/// A deterministic fuzz loop: random and mutated payloads through every decoder, in host-sized batches; the
/// adapter must never panic (a panic fails the test) and never emit an update with an invalid name.
#[test]
fn fuzzed_payloads_never_panic() {
    let mut kit = kit(json!({ "observe": [{ "uri": "coap://h/x", "provider": "p", "content": "senml-cbor" }] }));
    let mut seed = 0xdead_beef_cafe_f00du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let seeds: Vec<Vec<u8>> = vec![
        cbor::encode(&json!([{"bn": "p/s/", "n": "r", "v": 1.5, "t": -1}, {"n": "q", "vs": "x"}])),
        cbor::encode(&json!({"value": 1, "timestamp": 1.7e12})),
        br#"[{"bn":"p/s/","n":"r","v":1},{"n":"q","vb":true,"t":3}]"#.to_vec(),
        br#"{"value": [1, {"a": null}], "timestamp": "2024-01-01T00:00:00Z"}"#.to_vec(),
    ];
    for round in 0..300 {
        let mut batch = Vec::with_capacity(64);
        for i in 0..64 {
            let payload: Vec<u8> = if i % 2 == 0 {
                let len = (next() % 80) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut p = seeds[(next() % seeds.len() as u64) as usize].clone();
                for _ in 0..(1 + next() % 3) {
                    let at = (next() as usize) % p.len();
                    p[at] = next() as u8;
                }
                p
            };
            let cf = [Some(50), Some(60), Some(110), Some(112), Some(0), None][(round + i) % 6];
            let address = ["/up/p/s/r", "/up/p", "/up", "//h:5683/x"][i % 4];
            batch.push(coap(address, cf, payload));
        }
        let out = kit.messages(batch);
        for update in &out.updates {
            for name in [&update.provider, &update.service, &update.resource] {
                assert!(names::is_valid(name), "{name:?}");
            }
            assert!(!update.value.is_null());
        }
    }
}

#[test]
fn bad_configurations_fail_init_naming_the_entry() {
    let table = [
        (json!({ "colour": 1 }), "unknown field"),
        (json!({ "up_path": "up" }), "config.up_path"),
        (json!({ "max_records": 0 }), "config.max_records"),
        (json!({ "observe": [{ "uri": "/x", "provider": "p" }] }), "config.observe[0].uri"),
        (json!({ "observe": [{ "uri": "coap://h/x", "provider": "bad name" }] }), "config.observe[0].provider"),
        (json!({ "observe": [{ "uri": "coap://h/x", "provider": "p", "content": "xml" }] }), "unknown variant"),
        (json!({ "devices": [{ "provider": "p", "uri": "http://h/x" }] }), "config.devices[0].uri"),
        (json!({ "devices": [{ "provider": "p", "uri": "coap://h/{x" }] }), "config.devices[0].uri"),
        (
            json!({ "devices": [{ "provider": "p", "uri": "coap://h/x", "method": "PATCH" }] }),
            "config.devices[0].method",
        ),
        (json!({ "devices": [{ "provider": "p", "uri": "coap://h/x", "content_format": 42 }] }), "content_format"),
        (json!({ "devices": [{ "provider": "p", "uri": "coap://h/x", "actions": { "open": {} } }] }), "actions"),
        (
            json!({ "devices": [{ "provider": "p", "uri": "coap://h/x" }, { "provider": "p", "uri": "coap://h/y" }] }),
            "config.devices[1].provider",
        ),
    ];
    for (config, expected) in table {
        let error = TestKit::<CoapAdapter>::new(config.clone()).err().unwrap_or_default();
        assert!(error.contains(expected), "{config}: expected {expected:?} in {error:?}");
    }
    assert!(TestKit::<CoapAdapter>::new(Value::Null).is_ok(), "no configuration is the default one");
}
