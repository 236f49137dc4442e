//! The adapter driven as the host drives it (TestKit): SOX meta and data, name-safe device names, JSON nodes,
//! ACT across a restart, state writes, hostile input, a deterministic fuzz loop, and configuration errors.

use std::collections::BTreeMap;

use hub_plugin_sdk::abi::LogLine;
use hub_plugin_sdk::testkit::{MemoryState, TestKit};
use hub_plugin_sdk::{Context, StateStore};

use super::*;

/// 2026-12-02T00:00:00Z.
const NOW: i64 = 1_796_169_600_000_000;
/// 2026-12-02T08:04:05.123Z, i.e. 17:04:05.123 in Japan.
const AT_17_04_05_123_JST: i64 = 1_796_198_645_123_000;

fn kit(config: Value) -> TestKit<XmppAdapter> {
    let mut kit = TestKit::<XmppAdapter>::with_state("xmpp", config, MemoryState::default()).unwrap();
    kit.set_now(NOW);
    kit
}

/// An item as the transport delivers it, from connection `fujisawa`.
fn item(node: &str, payload: impl Into<Payload>) -> InboundMessage {
    item_from("fujisawa", node, payload)
}

fn item_from(server: &str, node: &str, payload: impl Into<Payload>) -> InboundMessage {
    let mut message = InboundMessage::new("xmpp", node, payload, NOW);
    message.metadata.insert("server".into(), server.into());
    message.metadata.insert("service".into(), "pubsub.localhost".into());
    message.metadata.insert("item_id".into(), "5f1c2e".into());
    message.metadata.insert("publisher".into(), "truck@localhost/sox".into());
    message
}

fn triples(out: &Output) -> Vec<(String, Value)> {
    out.updates.iter().map(|u| (format!("{}/{}/{}", u.provider, u.service, u.resource), u.value.clone())).collect()
}

fn warnings(out: &Output) -> Vec<&str> {
    out.logs.iter().filter(|l| l.level == LogLevel::Warn).map(|l| l.message.as_str()).collect()
}

const TRUCK_META: &str = r#"<device xmlns="http://jabber.org/protocol/sox" name="truck-12" type="garbage truck">
  <transducer name="Speed" id="speed" units="km/h" minValue="0" maxValue="200" canActuate="false"/>
  <transducer name="PM2.5" id="pm25" units="ug/m3"/>
  <transducer name="Lamp" id="lamp" minValue="0" maxValue="1" canActuate="true"/>
  <transducer name="Display" id="display" canActuate="true"/>
</device>"#;

const TRUCK_DATA: &str = r#"<data xmlns="http://jabber.org/protocol/sox">
  <transducerValue id="speed" typedValue="41.5" rawValue="41.5" timestamp="2026-12-02T17:04:05.123+09:00"/>
  <transducerValue id="pm25" rawValue="12" timestamp="2026-12-02T08:04:05.123Z"/>
  <transducerValue id="lamp" typedValue="true" timestamp="2026-12-02T17:04:05.123+0900"/>
  <transducerValue id="display" typedValue="満車" rawValue="FULL"/>
  <transducerSetValue id="lamp" typedValue="false" timestamp="2026-12-02T17:04:05.123+09:00"/>
</data>"#;

#[test]
fn meta_declares_the_device_and_its_actuators_and_sensors_follow_with_their_first_value() {
    let mut kit = kit(json!({}));
    let out = kit.messages(vec![item("truck-12_meta", TRUCK_META)]);
    assert!(warnings(&out).is_empty(), "{:?}", out.logs);
    assert!(out.updates.is_empty(), "the model carries the friendly name: {:?}", out.updates);
    assert_eq!(out.models.len(), 1);
    assert_eq!(out.models[0].provider, "truck-12");
    let services = &out.models[0].model["services"];
    assert_eq!(services["admin"]["resources"]["friendly_name"], json!({ "value": "truck-12" }));
    assert!(services.get("sox").is_none(), "sensor types are unknown until a first value: {services}");
    let lamp = &services["sox-act"]["resources"]["lamp"];
    assert_eq!(lamp["kind"], "action");
    assert_eq!(lamp["type"], "object");
    assert_eq!(lamp["parameters"], json!({ "value": "number" }), "a numeric range makes a numeric parameter");
    assert_eq!(
        lamp["metadata"],
        json!({ "id": "lamp", "name": "Lamp", "minValue": 0, "maxValue": 1, "device_type": "garbage truck" })
    );
    assert_eq!(services["sox-act"]["resources"]["display"]["parameters"], json!({ "value": "string" }));
    assert!(services["sox-act"]["resources"].get("speed").is_none(), "canActuate=false");

    // The first values give the sensors their types; the declarations go out with them, once.
    let out = kit.messages(vec![item("truck-12_data", TRUCK_DATA)]);
    assert!(warnings(&out).is_empty(), "{:?}", out.logs);
    assert_eq!(out.models.len(), 1);
    let sensors = &out.models[0].model["services"]["sox"]["resources"];
    assert_eq!(
        sensors["speed"],
        json!({
            "kind": "sensor", "type": "number", "unit": "km/h",
            "metadata": { "id": "speed", "name": "Speed", "units": "km/h", "minValue": 0, "maxValue": 200,
                          "device_type": "garbage truck" }
        })
    );
    assert_eq!(sensors["pm25"]["unit"], "ug/m3");
    assert_eq!(sensors["pm25"]["type"], "number");
    assert_eq!(sensors["lamp"]["type"], "boolean");
    assert_eq!(sensors["display"]["type"], "string");
    assert!(sensors["display"].get("unit").is_none());
    assert_eq!(
        triples(&out),
        vec![
            ("truck-12/sox/speed".to_owned(), json!(41.5)),
            ("truck-12/sox/pm25".to_owned(), json!(12)),
            ("truck-12/sox/lamp".to_owned(), json!(true)),
            ("truck-12/sox/display".to_owned(), json!("満車")),
        ]
    );
    assert!(kit.messages(vec![item("truck-12_data", TRUCK_DATA)]).models.is_empty(), "declared once");

    // The same meta again declares nothing; a changed one declares again, sensors typed at once.
    assert!(kit.messages(vec![item("truck-12_meta", TRUCK_META)]).is_empty());
    let changed = TRUCK_META.replace("km/h", "m/s");
    let out = kit.messages(vec![item("truck-12_meta", changed)]);
    assert_eq!(out.models.len(), 1);
    let sensors = &out.models[0].model["services"]["sox"]["resources"];
    assert_eq!((&sensors["speed"]["type"], &sensors["speed"]["unit"]), (&json!("number"), &json!("m/s")));
}

#[test]
fn data_becomes_typed_updates_measured_in_utc() {
    let mut kit = kit(json!({}));
    let out = kit.messages(vec![item("truck-12_data", TRUCK_DATA)]);
    assert!(warnings(&out).is_empty(), "{:?}", out.logs);
    assert!(out.models.is_empty(), "no meta, nothing to declare: the hub infers the types");
    assert_eq!(
        triples(&out),
        vec![
            ("truck-12/admin/friendly_name".to_owned(), json!("truck-12")),
            ("truck-12/sox/speed".to_owned(), json!(41.5)),
            ("truck-12/sox/pm25".to_owned(), json!(12)),
            ("truck-12/sox/lamp".to_owned(), json!(true)),
            ("truck-12/sox/display".to_owned(), json!("満車")),
        ],
        "transducerSetValue is a command, not a reading"
    );
    let times: Vec<Option<i64>> = out.updates.iter().map(|u| u.timestamp_us).collect();
    assert_eq!(
        times,
        vec![Some(NOW), Some(AT_17_04_05_123_JST), Some(AT_17_04_05_123_JST), Some(AT_17_04_05_123_JST), Some(NOW)]
    );

    // The friendly name is set once per device, and a batch that learns nothing leaves state alone.
    let state = kit.state().clone();
    let out = kit.messages(vec![item("truck-12_data", TRUCK_DATA)]);
    assert_eq!(out.updates.len(), 4);
    assert_eq!(kit.state(), &state);

    let odd = r#"<data>
        <transducerValue id="a" typedValue="1" timestamp="yesterday"/>
        <transducerValue id="b" typedValue="x" timestamp="2026-12-02T17:04:05"/>
        <transducerValue id="c" typedValue="" rawValue="2"/>
        <transducerValue id="d" typedValue="NaN"/>
        <transducerValue id="e" typedValue=" -7 "/>
        <transducerValue id="f" typedValue="False"/>
    </data>"#;
    let out = kit.messages(vec![item("truck-12_data", odd)]);
    assert_eq!(
        triples(&out),
        vec![
            ("truck-12/sox/a".to_owned(), json!(1)),
            ("truck-12/sox/b".to_owned(), json!("x")),
            ("truck-12/sox/c".to_owned(), json!("")),
            ("truck-12/sox/d".to_owned(), json!("NaN")),
            ("truck-12/sox/e".to_owned(), json!(-7)),
            ("truck-12/sox/f".to_owned(), json!(false)),
        ]
    );
    assert!(out.updates.iter().all(|u| u.timestamp_us == Some(NOW)));
    let warned = warnings(&out);
    assert_eq!(warned.len(), 1, "one warning per item: {warned:?}");
    assert!(warned[0].contains("yesterday") && warned[0].contains("1 more"), "{}", warned[0]);
}

#[test]
fn device_names_become_distinct_safe_providers_and_keep_their_friendly_names() {
    let mut kit = kit(json!({}));
    let names = ["藤沢市 ゴミ収集車 1", "藤沢市 ゴミ収集車 2", "truck/12", "truck 12", "truck_12", "truck-12"];
    let data = r#"<data><transducerValue id="速度 km/h" typedValue="3"/></data>"#;
    let out = kit.messages(names.iter().map(|name| item(&format!("{name}_data"), data)).collect());
    assert!(warnings(&out).is_empty(), "{:?}", out.logs);
    let mut providers = Vec::new();
    for name in names {
        let friendly: Vec<&ResourceUpdate> =
            out.updates.iter().filter(|u| u.resource == "friendly_name" && u.value == json!(name)).collect();
        assert_eq!(friendly.len(), 1, "{name}");
        let provider = friendly[0].provider.clone();
        assert!(names::is_valid(&provider), "{provider}");
        assert_eq!(provider, names::safe(name), "{name}");
        providers.push(provider);
    }
    assert_eq!(providers[4], "truck_12");
    assert_eq!(providers[5], "truck-12");
    assert!(providers[0].starts_with("_1-") && providers[1].starts_with("_2-"), "{providers:?}");
    assert!(providers[2].starts_with("truck_12-") && providers[3].starts_with("truck_12-"), "{providers:?}");
    let mut distinct = providers.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), names.len(), "{providers:?}");
    let resource = names::safe("速度 km/h").into_owned();
    assert!(resource.starts_with("_km_h-"), "{resource}");
    assert!(out.updates.iter().filter(|u| u.service == "sox").all(|u| u.resource == resource));

    // A device name too long for a hub name is cut and hashed; two that differ only past the cut stay apart.
    let long_a = format!("{}a", "x".repeat(300));
    let long_b = format!("{}b", "x".repeat(300));
    let out = kit.messages(vec![item(&format!("{long_a}_data"), data), item(&format!("{long_b}_data"), data)]);
    let providers: Vec<&str> = out.updates.iter().map(|u| u.provider.as_str()).collect();
    assert!(providers.iter().all(|p| p.len() == 128 && names::is_valid(p)));
    assert_ne!(providers[0], providers[2]);
}

#[test]
fn json_nodes_map_every_top_level_key() {
    let config = json!({ "json_nodes": [
        { "node": "weather/*", "provider": "wx-{node}", "service": "weather" },
        { "node": "env_data" }
    ] });
    let mut kit = kit(config);
    let out = kit.messages(vec![
        item(
            "weather/fujisawa",
            r#"<json xmlns="urn:xmpp:json:0">{"temperature": 21.5, "wind": {"speed": 3, "dir": "N"}, "rain mm": 0, "note": null}</json>"#,
        ),
        item("env_data", r#"<json xmlns="urn:xmpp:json:0"><![CDATA[{"co2": 415}]]></json>"#),
        item("somewhere/else", "<json>{}</json>"),
    ]);
    let weather = format!("wx-{}", names::safe("weather/fujisawa"));
    assert_eq!(
        triples(&out),
        vec![
            (format!("{weather}/weather/{}", names::safe("rain mm")), json!(0)),
            (format!("{weather}/weather/temperature"), json!(21.5)),
            (format!("{weather}/weather/wind"), json!({ "speed": 3, "dir": "N" })),
            ("env_data/json/co2".to_owned(), json!(415)),
        ],
        "a json_nodes entry wins over the SOX suffix"
    );
    assert!(out.updates.iter().all(|u| u.timestamp_us == Some(NOW)));
    let warned = warnings(&out);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("\"note\" is null"), "{}", warned[0]);
    let debug: Vec<&LogLine> = out.logs.iter().filter(|l| l.level == LogLevel::Debug).collect();
    assert_eq!(debug.len(), 1);
    assert!(debug[0].message.contains("somewhere/else"), "{}", debug[0].message);
}

#[test]
fn act_publishes_a_set_value_on_the_original_data_node_after_a_restart() {
    let device = "藤沢 truck/1";
    let meta = r#"<device name="藤沢 truck/1" type="truck">
        <transducer name="ライト" id="ライト 1" minValue="0" maxValue="100" canActuate="true"/>
        <transducer name="Panel" id="panel" canActuate="true"/>
        <transducer name="Speed" id="speed"/>
    </device>"#;
    let mut kit = kit(json!({}));
    let out = kit.messages(vec![item(&format!("{device}_meta"), meta)]);
    let provider = names::safe(device).into_owned();
    assert_eq!(out.models[0].provider, provider);
    assert_eq!(out.models[0].model["services"]["admin"]["resources"]["friendly_name"]["value"], device);
    let light = names::safe("ライト 1").into_owned();
    assert!(out.models[0].model["services"]["sox-act"]["resources"].get(&light).is_some());

    // A restart: a new instance with the state the last one left.
    let state = kit.into_state();
    let mut kit = TestKit::<XmppAdapter>::with_state("xmpp", json!({}), state).unwrap();
    kit.set_now(AT_17_04_05_123_JST);
    let (result, out) = kit.act(&provider, "sox-act", &light, json!({ "value": 75 })).unwrap();
    assert_eq!(out.outbound.len(), 1);
    let message = &out.outbound[0];
    assert_eq!(message.transport, "xmpp");
    assert_eq!(message.address, format!("{device}_data"));
    assert_eq!(
        message.payload.as_str(),
        Some(
            r#"<data><transducerSetValue id="ライト 1" typedValue="75" timestamp="2026-12-02T08:04:05.123Z"/></data>"#
        )
    );
    assert_eq!(message.metadata, BTreeMap::from([("server".to_owned(), "fujisawa".to_owned())]));
    assert_eq!(result["sent"]["node"], format!("{device}_data"));
    assert_eq!(result["sent"]["id"], "ライト 1");

    // Text is escaped; the payload stays well-formed and reads back as the command.
    let (_, out) = kit.act(&provider, "sox-act", "panel", json!({ "value": "<full> & \"closed\"" })).unwrap();
    let payload = out.outbound[0].payload.as_str().unwrap().to_owned();
    let doc = roxmltree::Document::parse(&payload).unwrap();
    let set = doc.root_element().first_element_child().unwrap();
    assert_eq!(set.tag_name().name(), "transducerSetValue");
    assert_eq!(set.attribute("typedValue"), Some("<full> & \"closed\""));
    let (_, out) = kit.act(&provider, "sox-act", "panel", json!({ "value": true })).unwrap();
    assert!(out.outbound[0].payload.as_str().unwrap().contains(r#"typedValue="true""#));

    // The device's items now come through another connection: ACT follows them.
    let out = kit.messages(vec![item_from("tokyo", &format!("{device}_data"), "<data/>")]);
    assert!(out.updates.is_empty(), "known device: no friendly name again: {:?}", out.updates);
    let (_, out) = kit.act(&provider, "sox-act", &light, json!({ "value": 1.5 })).unwrap();
    assert_eq!(out.outbound[0].metadata.get("server").map(String::as_str), Some("tokyo"));

    for (provider, service, resource, params) in [
        ("nobody", "sox-act", "panel", json!({ "value": 1 })),
        (provider.as_str(), "sox-act", "speed", json!({ "value": 1 })),
        (provider.as_str(), "sox", "panel", json!({ "value": 1 })),
        (provider.as_str(), "sox-act", "panel", json!({})),
        (provider.as_str(), "sox-act", "panel", json!({ "value": [1] })),
        (provider.as_str(), "sox-act", "panel", json!({ "value": 1, "extra": 2 })),
        (provider.as_str(), "sox-act", "panel", json!({ "value": "bell\u{7}" })),
    ] {
        let refused = kit.act(provider, service, resource, params.clone());
        let (reason, out) = refused.expect_err(&format!("{provider}/{service}/{resource} {params}"));
        assert!(!reason.is_empty());
        assert!(out.outbound.is_empty());
    }

    // A meta that takes the actuator away takes ACT on it away too.
    let out = kit.messages(vec![item(
        &format!("{device}_meta"),
        meta.replace(r#"id="panel" canActuate="true""#, r#"id="panel""#),
    )]);
    assert_eq!(out.models.len(), 1);
    assert!(kit.act(&provider, "sox-act", "panel", json!({ "value": 1 })).is_err());
    assert!(kit.act(&provider, "sox-act", &light, json!({ "value": 1 })).is_ok());
}

/// A state store that counts reads and writes.
#[derive(Default)]
struct CountingState {
    inner: MemoryState,
    reads: usize,
    writes: usize,
}

impl StateStore for CountingState {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.reads += 1;
        self.inner.get(key)
    }

    fn set(&mut self, key: &str, value: &[u8]) {
        self.writes += 1;
        self.inner.set(key, value);
    }

    fn delete(&mut self, key: &str) {
        self.writes += 1;
        self.inner.delete(key);
    }
}

#[test]
fn state_is_read_once_per_device_and_written_only_when_something_is_learned() {
    let mut state = CountingState::default();
    let mut adapter = XmppAdapter::init(&mut Context::new("xmpp", NOW, &mut state), json!({})).unwrap();
    let batch: Vec<InboundMessage> = (0..256).map(|i| item(&format!("truck-{}_data", i % 16), TRUCK_DATA)).collect();
    let out = adapter.on_messages(&mut Context::new("xmpp", NOW, &mut state), &batch);
    assert_eq!(out.updates.len(), 16 + 256 * 4);
    // 16 new devices: one record each, and the key count once.
    assert_eq!(state.writes, 17);
    let reads = state.reads;
    assert_eq!(reads, 1 + 16, "the key count at init, then one record look-up per device");
    for _ in 0..3 {
        let out = adapter.on_messages(&mut Context::new("xmpp", NOW, &mut state), &batch);
        assert_eq!(out.updates.len(), 256 * 4);
    }
    assert_eq!((state.writes, state.reads), (17, reads), "nothing learned, nothing read or written");
    // A meta teaches actuators: one write for that device.
    adapter.on_messages(&mut Context::new("xmpp", NOW, &mut state), &[item("truck-3_meta", TRUCK_META)]);
    assert_eq!(state.writes, 18);
    adapter.on_messages(&mut Context::new("xmpp", NOW, &mut state), &[item("truck-3_meta", TRUCK_META)]);
    assert_eq!(state.writes, 18);
}

#[test]
fn hostile_items_are_skipped_with_warnings_and_the_rest_of_the_batch_maps() {
    let mut kit = kit(json!({ "json_nodes": [{ "node": "json/*" }] }));
    let good = r#"<data><transducerValue id="v" typedValue="1"/></data>"#;
    let many = |n: usize, element: &str| format!("<device>{}</device>", format!("<{element} id=\"x\"/>").repeat(n));
    let numbered = (0..10_000).map(|i| format!("<transducer id=\"t{i}\"/>")).collect::<String>();
    let hostile: Vec<(String, Vec<u8>)> = vec![
        ("a_data".into(), b"<data><transducerValue id=\"v\" typedValue=\"1\"/>".to_vec()),
        ("a_data".into(), b"<device/>".to_vec()),
        ("a_meta".into(), good.as_bytes().to_vec()),
        ("a_data".into(), b"not xml at all".to_vec()),
        ("a_data".into(), b"\xff\xfe<data/>".to_vec()),
        ("a_data".into(), Vec::new()),
        ("a_data".into(), br#"<!DOCTYPE data [<!ENTITY a "aaaaaaaa">]><data>&a;</data>"#.to_vec()),
        ("_data".into(), good.as_bytes().to_vec()),
        (format!("{}_data", "d".repeat(5_000)), good.as_bytes().to_vec()),
        ("a_meta".into(), format!("<device>{numbered}</device>").into_bytes()),
        ("a_meta".into(), many(sox::MAX_ENTRIES + 1, "transducer").into_bytes()),
        (
            "a_data".into(),
            format!("<data>{}</data>", "<transducerValue id=\"x\" typedValue=\"1\"/>".repeat(2_000)).into_bytes(),
        ),
        ("a_data".into(), vec![b' '; sox::MAX_PAYLOAD_BYTES + 1]),
        ("json/x".into(), b"<json>{not json</json>".to_vec()),
        ("json/x".into(), b"<json>[1, 2]</json>".to_vec()),
        ("json/x".into(), b"<json><nested/></json>".to_vec()),
        ("json/x".into(), b"<data/>".to_vec()),
        ("json/x".into(), format!("<json>{}1{}</json>", "[".repeat(500), "]".repeat(500)).into_bytes()),
    ];
    let count = hostile.len();
    let mut batch = vec![item("first_data", good)];
    batch.extend(hostile.into_iter().map(|(node, payload)| item(&node, payload)));
    batch.push(InboundMessage::mqtt("a_data", good, NOW));
    // Entries without ids, values or proper ids are skipped alone: one warning for the item.
    batch.push(item(
        "last_data",
        format!(
            r#"<data><transducerValue typedValue="1"/><transducerValue id="ok" typedValue="2"/><transducerValue id="{}" typedValue="3"/><transducerValue id="novalue"/></data>"#,
            "i".repeat(sox::MAX_ID_BYTES + 1)
        ),
    ));
    batch.push(item(
        "last_meta",
        r#"<device><transducer name="no id"/><transducer id="ok" canActuate="true"/><transducer id="ok"/></device>"#,
    ));
    let out = kit.messages(batch);
    assert_eq!(
        triples(&out),
        vec![
            ("first/admin/friendly_name".to_owned(), json!("first")),
            ("first/sox/v".to_owned(), json!(1)),
            ("last/admin/friendly_name".to_owned(), json!("last")),
            ("last/sox/ok".to_owned(), json!(2)),
        ]
    );
    let warned = warnings(&out);
    assert_eq!(warned.len(), count + 1 + 2, "one per bad item, one per item with bad entries: {warned:#?}");
    assert!(warned.iter().any(|w| w.contains("10000 transducers") || w.contains("XML nodes")), "{warned:#?}");
    assert!(warned.iter().any(|w| w.starts_with("last_data: entries skipped") && w.contains("2 more")), "{warned:#?}");
    assert!(warned.iter().all(|w| w.len() < 1_000), "log lines stay short: {warned:#?}");
    assert_eq!(out.models.len(), 1, "the good part of last_meta is declared");
    assert!(out.models[0].model["services"]["sox-act"]["resources"].get("ok").is_some());
}

/// A deterministic fuzz loop: random and mutated payloads in host-sized batches; the adapter must never panic
/// (a panic fails the test) and never emit an update with an invalid name.
#[test]
fn fuzzed_items_never_panic() {
    let mut kit = kit(json!({ "json_nodes": [{ "node": "j*" }] }));
    let mut seed = 0x5eed_0123_4567_89abu64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let seeds: Vec<&[u8]> = vec![
        TRUCK_META.as_bytes(),
        TRUCK_DATA.as_bytes(),
        br#"<json xmlns="urn:xmpp:json:0">{"a": 1, "b c": [true]}</json>"#,
        r#"<s:data xmlns:s="x"><s:transducerValue s:id="速度" rawValue="1e3" timestamp="2026-01-01T00:00:00+09:00"/></s:data>"#.as_bytes(),
    ];
    let nodes = ["t_meta", "t_data", "jx", "藤沢 1_data", "_meta", "x"];
    for round in 0..200 {
        let mut batch = Vec::with_capacity(64);
        for i in 0..64 {
            let payload: Vec<u8> = if i % 4 == 0 {
                let len = (next() % 120) as usize;
                (0..len).map(|_| b"<>/=\"' adtx_:&;#"[(next() % 16) as usize]).collect()
            } else {
                let mut p = seeds[(next() % seeds.len() as u64) as usize].to_vec();
                for _ in 0..(1 + next() % 4) {
                    let at = (next() as usize) % p.len();
                    p[at] = next() as u8;
                }
                p
            };
            batch.push(item(nodes[(round + i) % nodes.len()], payload));
        }
        let out = kit.messages(batch);
        for update in &out.updates {
            for name in [&update.provider, &update.service, &update.resource] {
                assert!(names::is_valid(name), "{name:?}");
            }
            assert!(!update.value.is_null());
        }
        for model in &out.models {
            assert!(names::is_valid(&model.provider));
        }
    }
}

#[test]
fn bad_configurations_fail_init_naming_the_key() {
    let table = [
        (json!({ "colour": 1 }), "unknown field `colour`"),
        (json!({ "json_nodes": {} }), "json_nodes: invalid type"),
        (json!({ "json_nodes": [{ "provider": "p" }] }), "json_nodes[0]: missing field `node`"),
        (json!({ "json_nodes": [{ "node": "a", "colour": 1 }] }), "json_nodes[0].colour: unknown field"),
        (json!({ "json_nodes": [{ "node": "" }] }), "json_nodes[0].node:"),
        (json!({ "json_nodes": [{ "node": "a\nb" }] }), "json_nodes[0].node:"),
        (json!({ "json_nodes": [{ "node": "a", "provider": "bad name" }] }), "json_nodes[0].provider:"),
        (json!({ "json_nodes": [{ "node": "a", "provider": "p-{device}" }] }), "json_nodes[0].provider:"),
        (json!({ "json_nodes": [{ "node": "a", "provider": "" }] }), "json_nodes[0].provider:"),
        (json!({ "json_nodes": [{ "node": "a" }, { "node": "b", "service": "a/b" }] }), "json_nodes[1].service:"),
        (json!({ "json_nodes": [{ "node": "a", "service": 7 }] }), "json_nodes[0].service"),
        (json!([]), "config: must be a table"),
    ];
    for (config, expected) in table {
        let error = TestKit::<XmppAdapter>::new(config.clone()).err().unwrap_or_default();
        assert!(error.contains(expected), "{config}: expected {expected:?} in {error:?}");
    }
    assert!(TestKit::<XmppAdapter>::new(Value::Null).is_ok(), "no configuration is the default one");
    assert!(TestKit::<XmppAdapter>::new(json!({ "json_nodes": [] })).is_ok(), "the manifest's default");
}

#[test]
fn the_manifest_matches_the_crate() {
    let manifest = include_str!("../plugin.toml");
    assert!(manifest.contains("id = \"xmpp\""));
    assert!(manifest.contains("[capabilities.xmpp]"));
    assert!(manifest.contains("json_nodes = []"));
}
