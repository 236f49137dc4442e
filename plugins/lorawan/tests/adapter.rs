//! The adapter driven natively through the SDK's test kit, on frames built by lora-packet (an independent
//! implementation; `tests/fixtures/lora-packet.json`, written by `hub/transport-gwmp/tests/lora-packet/vectors.js`)
//! and on frames a simulated device builds with this crate's own code.

use std::collections::BTreeMap;

use hub_adapter_lorawan::LoRaWan;
use hub_adapter_lorawan::crypto::{self, Key};
use hub_adapter_lorawan::frame;
use hub_adapter_lorawan::session::{
    CounterBucket, Counters, DeviceState, Session, counter_bucket, counters_key, state_key,
};
use hub_plugin_sdk::abi::{InboundMessage, LogLevel, Output};
use hub_plugin_sdk::testkit::{MemoryState, TestKit};
use serde_json::{Value, json};

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/lora-packet.json")).unwrap()
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn key(text: &str) -> Key {
    Key::from_hex(text).unwrap()
}

fn config() -> Value {
    let f = fixture();
    json!({
        "devices": [
            {"dev_eui": f["otaa"]["dev_eui"], "join_eui": f["otaa"]["join_eui"], "app_key": f["otaa"]["app_key"],
             "codec": "cayenne", "name": "Bench sensor"},
            {"dev_eui": f["abp"]["dev_eui"], "dev_addr": f["abp"]["dev_addr"], "nwk_s_key": f["abp"]["nwk_s_key"],
             "app_s_key": f["abp"]["app_s_key"], "codec": "cayenne"},
            {"dev_eui": "00000000000000e1", "codec": "raw", "name": "Elsewhere"}
        ],
        "net_id": "000013",
        "rx1_delay_s": 1,
        "dedup_window_ms": 200
    })
}

fn kit() -> TestKit<LoRaWan> {
    TestKit::new(config()).unwrap()
}

const ABP: &str = "lora-0004a30b001c0531";
const OTAA: &str = "lora-0004a30b001c0530";

/// One gateway's copy of a frame, as the GWMP transport delivers it.
fn heard(phy: &[u8], gateway: &str, rssi: f64, snr: f64, tmst: u32, at_us: i64) -> InboundMessage {
    let mut m = InboundMessage::new("udp", "1700", phy.to_vec(), at_us);
    for (k, v) in [
        ("gateway_eui", gateway.to_owned()),
        ("rssi", rssi.to_string()),
        ("lsnr", snr.to_string()),
        ("tmst", tmst.to_string()),
        ("freq", "868.1".to_owned()),
        ("datr", "SF7BW125".to_owned()),
        ("codr", "4/5".to_owned()),
    ] {
        m.metadata.insert(k.to_owned(), v);
    }
    m
}

fn uplink(i: usize) -> Vec<u8> {
    hex(fixture()["uplinks"][i]["phy"].as_str().unwrap())
}

/// A device's counters as the state keeps them.
fn counters(state: &MemoryState, eui: u64) -> Counters {
    let bucket: CounterBucket = serde_json::from_slice(&state.entries[&counters_key(counter_bucket(eui))]).unwrap();
    bucket[&format!("{eui:016x}")]
}

fn values(out: &Output) -> BTreeMap<String, Value> {
    out.updates.iter().map(|u| (format!("{}/{}/{}", u.provider, u.service, u.resource), u.value.clone())).collect()
}

fn warnings(out: &Output) -> Vec<&str> {
    out.logs.iter().filter(|l| l.level == LogLevel::Warn).map(|l| l.message.as_str()).collect()
}

#[test]
fn an_abp_uplink_becomes_resources_with_units() {
    let mut kit = kit();
    let out = kit.messages(vec![heard(&uplink(0), "aa555a0000000101", -57.0, 9.5, 1_000, 42)]);
    let v = values(&out);
    assert_eq!(v[&format!("{ABP}/uplink/temperature_1")], json!(21.5));
    assert_eq!(v[&format!("{ABP}/uplink/humidity_2")], json!(40.5));
    assert_eq!(v[&format!("{ABP}/radio/rssi")], json!(-57.0));
    assert_eq!(v[&format!("{ABP}/radio/snr")], json!(9.5));
    assert_eq!(v[&format!("{ABP}/radio/gateways")], json!(["aa555a0000000101"]));
    assert_eq!(v[&format!("{ABP}/lorawan/fcnt")], json!(0));
    assert_eq!(v[&format!("{ABP}/lorawan/port")], json!(2));
    assert!(out.updates.iter().all(|u| u.timestamp_us == Some(42)));
    assert!(out.outbound.is_empty(), "an unconfirmed uplink with nothing queued gets no downlink");
    let model = &out.models.iter().find(|m| m.provider == ABP).unwrap().model;
    assert_eq!(
        model["services"]["uplink"]["resources"]["temperature_1"],
        json!({"kind": "sensor", "type": "number", "unit": "Cel"})
    );
    assert_eq!(model["services"]["uplink"]["resources"]["humidity_2"]["unit"], json!("%RH"));
    assert_eq!(model["services"]["radio"]["resources"]["rssi"]["unit"], json!("dBm"));
    assert_eq!(
        model["services"]["downlink"]["resources"]["hex"]["parameters"],
        json!({"port": "integer", "hex": "string"})
    );
    assert!(warnings(&out).is_empty(), "{:?}", out.logs);
    assert_eq!(counters(kit.state(), 0x0004a30b001c0531).up, Some(0));

    // The next frame declares nothing new.
    let out = kit.messages(vec![heard(&uplink(1), "aa555a0000000101", -57.0, 9.5, 2_000, 43)]);
    assert!(out.models.is_empty());
    assert_eq!(values(&out)[&format!("{ABP}/uplink/temperature_1")], json!(22.5));
}

#[test]
fn replayed_and_old_counters_are_refused_and_roll_over_works() {
    let mut kit = kit();
    kit.messages(vec![heard(&uplink(0), "g1", -50.0, 5.0, 1, 1_000_000)]);
    kit.messages(vec![heard(&uplink(1), "g1", -50.0, 5.0, 2, 2_000_000)]);
    // The same frame again after the de-duplication window: a replay.
    let out = kit.messages(vec![heard(&uplink(1), "g1", -50.0, 5.0, 3, 9_000_000)]);
    assert!(out.updates.is_empty(), "{:?}", out.updates);
    assert!(warnings(&out)[0].contains("replayed or old frame counter 1"), "{:?}", out.logs);
    // An older frame.
    let out = kit.messages(vec![heard(&uplink(0), "g1", -50.0, 5.0, 4, 10_000_000)]);
    assert!(out.updates.is_empty());
    // fcnt 65535 is more than MAX_FCNT_GAP ahead of 1.
    let out = kit.messages(vec![heard(&uplink(4), "g1", -50.0, 5.0, 5, 11_000_000)]);
    assert!(out.updates.is_empty());
    assert!(warnings(&out)[0].contains("jumps more than 16384"), "{:?}", out.logs);

    // From a state where the device is at 65530, 65535 then 65537 (16 bits on the air: 1) are accepted.
    let mut state = kit.into_state();
    let key = counters_key(counter_bucket(0x0004a30b001c0531));
    let mut bucket: CounterBucket = serde_json::from_slice(&state.entries[&key]).unwrap();
    bucket.get_mut("0004a30b001c0531").unwrap().up = Some(65_530);
    state.entries.insert(key, serde_json::to_vec(&bucket).unwrap());
    let mut kit = TestKit::<LoRaWan>::with_state("lorawan", config(), state).unwrap();
    let out = kit.messages(vec![heard(&uplink(4), "g1", -50.0, 5.0, 6, 12_000_000)]);
    assert_eq!(values(&out)[&format!("{ABP}/lorawan/fcnt")], json!(65_535));
    let out = kit.messages(vec![heard(&uplink(5), "g1", -50.0, 5.0, 7, 13_000_000)]);
    assert_eq!(values(&out)[&format!("{ABP}/lorawan/fcnt")], json!(65_537));
    assert_eq!(values(&out)[&format!("{ABP}/uplink/temperature_1")], json!(20.1));
}

#[test]
fn port_zero_and_undecodable_payloads_update_only_the_metadata() {
    let mut kit = kit();
    for i in 0..3 {
        kit.messages(vec![heard(&uplink(i), "g1", -50.0, 5.0, 1, i as i64 * 1_000_000)]);
    }
    let out = kit.messages(vec![heard(&uplink(3), "g1", -50.0, 5.0, 1, 4_000_000)]);
    let v = values(&out);
    assert_eq!(v[&format!("{ABP}/lorawan/fcnt")], json!(3));
    assert_eq!(v[&format!("{ABP}/lorawan/port")], json!(0));
    assert!(!v.keys().any(|k| k.contains("/uplink/")));
    // fcnt 4 carries a truncated GPS record: authentic, but no partial reading.
    let out = kit.messages(vec![heard(&uplink(6), "g1", -50.0, 5.0, 1, 5_000_000)]);
    let v = values(&out);
    assert_eq!(v[&format!("{ABP}/lorawan/fcnt")], json!(4));
    assert!(!v.keys().any(|k| k.contains("/uplink/")), "{v:?}");
    assert!(warnings(&out)[0].contains("not decoded"), "{:?}", out.logs);
}

#[test]
fn copies_from_several_gateways_become_one_frame_with_the_best_radio() {
    let mut kit = kit();
    let phy = uplink(0);
    let out = kit.messages(vec![
        heard(&phy, "0000000000000001", -110.0, -5.0, 100, 1_000),
        heard(&phy, "0000000000000002", -70.0, 7.5, 200, 1_500),
        heard(&phy, "0000000000000003", -60.0, 2.0, 300, 1_800),
    ]);
    let temps = out.updates.iter().filter(|u| u.resource == "temperature_1").count();
    assert_eq!(temps, 1, "one frame, one reading");
    let v = values(&out);
    assert_eq!(v[&format!("{ABP}/radio/snr")], json!(7.5));
    assert_eq!(v[&format!("{ABP}/radio/rssi")], json!(-70.0));
    assert_eq!(
        v[&format!("{ABP}/radio/gateways")],
        json!(["0000000000000001", "0000000000000002", "0000000000000003"])
    );

    // A late copy in the next batch, from a fourth gateway with a better SNR: only radio details change.
    let out = kit.messages(vec![heard(&phy, "0000000000000004", -65.0, 9.0, 400, 50_000)]);
    assert!(warnings(&out).is_empty(), "{:?}", out.logs);
    let v = values(&out);
    assert_eq!(v.len(), 3, "{v:?}");
    assert_eq!(v[&format!("{ABP}/radio/snr")], json!(9.0));
    assert_eq!(v[&format!("{ABP}/radio/gateways")].as_array().unwrap().len(), 4);
    assert!(out.updates.iter().all(|u| u.timestamp_us == Some(1_000)), "stamped with the frame's time");
    // A worse late copy from a known gateway changes nothing.
    let out = kit.messages(vec![heard(&phy, "0000000000000001", -120.0, -9.0, 100, 60_000)]);
    assert!(out.updates.is_empty() && out.logs.is_empty());

    // The tick forgets frames older than the window; a copy after that is a replay.
    kit.set_now(1_000 + 300_000);
    kit.tick();
    let out = kit.messages(vec![heard(&phy, "0000000000000005", -60.0, 9.0, 500, 301_000)]);
    assert!(out.updates.is_empty());
    assert_eq!(warnings(&out).len(), 1);
}

#[test]
fn a_confirmed_uplink_is_acknowledged_in_rx1_through_the_best_gateway() {
    let mut kit = kit();
    kit.messages(vec![heard(&uplink(0), "g1", -50.0, 5.0, 1, 1)]);
    kit.messages(vec![heard(&uplink(1), "g1", -50.0, 5.0, 1, 2)]);
    let confirmed = uplink(2);
    let out = kit.messages(vec![
        heard(&confirmed, "00000000000000b1", -90.0, 1.0, 4_294_000_000, 3),
        heard(&confirmed, "00000000000000b2", -80.0, 6.0, 10_000_000, 4),
    ]);
    assert_eq!(out.outbound.len(), 1);
    let down = &out.outbound[0];
    assert_eq!((down.transport.as_str(), down.address.as_str()), ("udp", "1700"));
    assert_eq!(down.metadata["gateway_eui"], "00000000000000b2");
    assert_eq!(down.metadata["tmst"], "11000000", "RX1: one second after the uplink, in that gateway's clock");
    assert_eq!(down.metadata["freq"], "868.1");
    assert_eq!(down.metadata["datr"], "SF7BW125");
    assert_eq!(down.metadata["ipol"], "true");
    // An empty frame with the ACK bit, FCntDown 0, MIC over the NwkSKey.
    let f = fixture();
    let nwk = key(f["abp"]["nwk_s_key"].as_str().unwrap());
    let phy = &down.payload.0;
    assert_eq!(&phy[..8], &[0x60, 0xda, 0x1b, 0x01, 0x26, 0x20, 0x00, 0x00]);
    assert_eq!(phy.len(), 12);
    assert_eq!(phy[8..], crypto::data_mic(&nwk, crypto::Dir::Down, 0x26011bda, 0, &phy[..8]));
    assert_eq!(values(&out)[&format!("{ABP}/lorawan/fcnt_down")], json!(0));
    assert_eq!(counters(kit.state(), 0x0004a30b001c0531).down, 1);

    // A wrapping gateway counter wraps the downlink time too.
    let mut kit2 = TestKit::<LoRaWan>::new(config()).unwrap();
    for i in 0..2 {
        kit2.messages(vec![heard(&uplink(i), "g1", -50.0, 5.0, 1, i as i64)]);
    }
    let out = kit2.messages(vec![heard(&confirmed, "g1", -90.0, 1.0, 4_294_000_000, 3)]);
    assert_eq!(out.outbound[0].metadata["tmst"], ((4_294_000_000u64 + 1_000_000) % (1 << 32)).to_string());
}

#[test]
fn downlinks_match_lora_packet_byte_for_byte() {
    let f = fixture();
    let nwk = key(f["abp"]["nwk_s_key"].as_str().unwrap());
    let app = key(f["abp"]["app_s_key"].as_str().unwrap());
    for d in f["downlinks"].as_array().unwrap() {
        let payload = hex(d["payload"].as_str().unwrap());
        let built = frame::build_data_down(
            &frame::DataDown {
                confirmed: d["confirmed"].as_bool().unwrap(),
                dev_addr: 0x26011bda,
                ack: d["ack"].as_bool().unwrap(),
                fpending: d["fpending"].as_bool().unwrap_or(false),
                fcnt: d["fcnt"].as_u64().unwrap() as u32,
                port_payload: Some((d["fport"].as_u64().unwrap() as u8, &payload)),
            },
            &nwk,
            &app,
        );
        assert_eq!(hex_string(&built), d["phy"].as_str().unwrap(), "{d}");
    }
    // The uplinks lora-packet built are what a device built with this crate would send.
    for u in f["uplinks"].as_array().unwrap() {
        let payload = hex(u["payload"].as_str().unwrap());
        let built = frame::build_data_up(
            u["confirmed"].as_bool().unwrap(),
            0x26011bda,
            u["fcnt"].as_u64().unwrap() as u32,
            Some((u["fport"].as_u64().unwrap() as u8, &payload)),
            &nwk,
            &app,
        );
        assert_eq!(hex_string(&built), u["phy"].as_str().unwrap(), "{u}");
    }
    // lora-packet's README vector.
    let readme = hex("40f17dbe4900020001954378762b11ff0d");
    let nwk = key("44024241ed4ce9a68c6a8bc055233fd3");
    let app = key("ec925802ae430ca77fd3dd73cb2cc588");
    assert_eq!(readme[13..], crypto::data_mic(&nwk, crypto::Dir::Up, 0x49be7df1, 2, &readme[..13]));
    let mut text = readme[9..13].to_vec();
    crypto::crypt_frm_payload(&app, crypto::Dir::Up, 0x49be7df1, 2, &mut text);
    assert_eq!(text, b"test");
    // Session keys.
    let s = &f["session_keys"];
    let (n, a) = crypto::derive_session_keys(&key(s["app_key"].as_str().unwrap()), [1, 0, 0], [0x13, 0, 0], 0x1234);
    assert_eq!((n, a), (key(s["nwk_s_key"].as_str().unwrap()), key(s["app_s_key"].as_str().unwrap())));
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a Join-Accept as the device would: AES-encrypt the body, check the MIC, derive the keys.
fn open_join_accept(phy: &[u8], app_key: &Key, dev_nonce: u16) -> (u32, Key, Key, Vec<u8>) {
    let mut plain = vec![phy[0]];
    for block in phy[1..].chunks(16) {
        plain.extend_from_slice(&crypto::aes_encrypt(app_key, block.try_into().unwrap()));
    }
    let (body, mic) = plain.split_at(plain.len() - 4);
    assert_eq!(mic, crypto::join_mic(app_key, body), "Join-Accept MIC");
    let app_nonce = [body[1], body[2], body[3]];
    let net_id = [body[4], body[5], body[6]];
    let dev_addr = u32::from_le_bytes(body[7..11].try_into().unwrap());
    let (nwk, app) = crypto::derive_session_keys(app_key, app_nonce, net_id, dev_nonce);
    (dev_addr, nwk, app, body.to_vec())
}

#[test]
fn an_otaa_device_joins_and_its_session_survives_a_restart() {
    let f = fixture();
    let app_key = key(f["otaa"]["app_key"].as_str().unwrap());
    let join = hex(f["join_requests"][0]["phy"].as_str().unwrap());
    let mut kit = kit();
    let out = kit.messages(vec![
        heard(&join, "00000000000000c1", -100.0, -2.0, 7_000_000, 1_000),
        heard(&join, "00000000000000c2", -80.0, 4.0, 9_000_000, 1_100),
    ]);
    assert!(warnings(&out).is_empty(), "{:?}", out.logs);
    assert_eq!(out.outbound.len(), 1, "one Join-Accept for two copies");
    let accept = &out.outbound[0];
    assert_eq!(accept.metadata["gateway_eui"], "00000000000000c2");
    assert_eq!(accept.metadata["tmst"], "14000000", "JOIN_ACCEPT_DELAY1 = 5 s");
    let (dev_addr, nwk, app, body) = open_join_accept(&accept.payload.0, &app_key, 0x1234);
    assert_eq!(body[0], 0x20);
    assert_eq!(&body[1..4], &[1, 0, 0], "AppNonce 1");
    assert_eq!(&body[4..7], &[0x13, 0, 0], "NetID 000013");
    assert_eq!(dev_addr >> 25, 0x13, "NwkID from the NetID");
    assert_eq!((body[11], body[12]), (0x00, 1), "DLSettings, RxDelay");
    assert_eq!(body.len(), 13, "no CFList");
    let v = values(&out);
    assert_eq!(v[&format!("{OTAA}/lorawan/dev_addr")], json!(format!("{dev_addr:08x}")));
    assert_eq!(v[&format!("{OTAA}/admin/friendly_name")], json!("Bench sensor"));
    let logs = format!("{:?}", out.logs);
    assert!(logs.contains("joined"));
    for secret in [f["otaa"]["app_key"].as_str().unwrap().to_owned(), hex_string(&nwk.0), hex_string(&app.0)] {
        assert!(!logs.contains(&secret) && !format!("{:?}", out.updates).contains(&secret));
    }

    // The session keys are in the state, and the device's first uplink verifies with them.
    let state: DeviceState = kit.state_json(&state_key(0x0004a30b001c0530)).unwrap();
    let session = state.session.clone().unwrap();
    assert_eq!((session.dev_addr, session.nwk_s_key, session.app_s_key), (dev_addr, nwk, app));
    assert_eq!(state.dev_nonces, vec![0x1234]);
    let up = frame::build_data_up(false, dev_addr, 0, Some((1, &[0x03, 0x67, 0x01, 0x10])), &nwk, &app);
    let out = kit.messages(vec![heard(&up, "00000000000000c2", -80.0, 4.0, 20_000_000, 2_000_000)]);
    assert_eq!(values(&out)[&format!("{OTAA}/uplink/temperature_3")], json!(27.2));

    // A replayed Join-Request (same DevNonce) after the window is refused; the session stays.
    let out = kit.messages(vec![heard(&join, "00000000000000c2", -80.0, 4.0, 30_000_000, 9_000_000)]);
    assert!(out.outbound.is_empty());
    assert!(warnings(&out)[0].contains("reused DevNonce"), "{:?}", out.logs);

    // Restart: the session and counters come back from the state.
    let mut kit = TestKit::<LoRaWan>::with_state("lorawan", config(), kit.into_state()).unwrap();
    let up = frame::build_data_up(false, dev_addr, 1, Some((1, &[0x03, 0x67, 0x01, 0x11])), &nwk, &app);
    let out = kit.messages(vec![heard(&up, "g", -80.0, 4.0, 1, 10_000_000)]);
    assert_eq!(values(&out)[&format!("{OTAA}/uplink/temperature_3")], json!(27.3));
    let replay = frame::build_data_up(false, dev_addr, 0, Some((1, &[0x03, 0x67, 0x01, 0x10])), &nwk, &app);
    assert!(kit.messages(vec![heard(&replay, "g", -80.0, 4.0, 1, 11_000_000)]).updates.is_empty());

    // A new join with a fresh DevNonce gets a new session; the old keys stop working.
    let join2 = hex(f["join_requests"][1]["phy"].as_str().unwrap());
    let out = kit.messages(vec![heard(&join2, "g", -80.0, 4.0, 1, 12_000_000)]);
    let (addr2, nwk2, app2, body2) = open_join_accept(&out.outbound[0].payload.0, &app_key, 0x1235);
    assert_eq!(&body2[1..4], &[2, 0, 0], "AppNonce 2");
    assert_ne!(nwk2, nwk);
    let old = frame::build_data_up(false, dev_addr, 5, Some((1, &[0x03, 0x67, 0x01, 0x12])), &nwk, &app);
    assert!(kit.messages(vec![heard(&old, "g", -80.0, 4.0, 1, 13_000_000)]).updates.is_empty());
    let new = frame::build_data_up(false, addr2, 0, Some((1, &[0x03, 0x67, 0x01, 0x12])), &nwk2, &app2);
    assert_eq!(
        values(&kit.messages(vec![heard(&new, "g", -80.0, 4.0, 1, 14_000_000)]))
            [&format!("{OTAA}/uplink/temperature_3")],
        json!(27.4)
    );
}

#[test]
fn bad_join_requests_are_refused() {
    let f = fixture();
    let join = hex(f["join_requests"][0]["phy"].as_str().unwrap());
    // Wrong JoinEUI in the registry.
    let mut config = config();
    config["devices"][0]["join_eui"] = json!("70b3d57ed0000001");
    let mut kit = TestKit::<LoRaWan>::new(config).unwrap();
    let out = kit.messages(vec![heard(&join, "g", -80.0, 4.0, 1, 1)]);
    assert!(out.outbound.is_empty() && out.updates.is_empty());
    // Wrong AppKey (MIC mismatch).
    let mut config = self::config();
    config["devices"][0]["app_key"] = json!("00000000000000000000000000000001");
    let mut kit = TestKit::<LoRaWan>::new(config).unwrap();
    let out = kit.messages(vec![heard(&join, "g", -80.0, 4.0, 1, 1)]);
    assert!(out.outbound.is_empty() && warnings(&out)[0].contains("MIC mismatch"));
    // Unknown DevEUI.
    let mut kit = TestKit::<LoRaWan>::new(json!({})).unwrap();
    let out = kit.messages(vec![heard(&join, "g", -80.0, 4.0, 1, 1)]);
    assert!(out.outbound.is_empty() && warnings(&out)[0].contains("unknown DevEUI"));
    // No gateway timestamp: nothing can be scheduled, and the DevNonce stays unused.
    let mut kit = self::kit();
    let mut m = heard(&join, "g", -80.0, 4.0, 1, 1);
    m.metadata.remove("tmst");
    let out = kit.messages(vec![m]);
    assert!(out.outbound.is_empty());
    let state: Option<DeviceState> = kit.state_json(&state_key(0x0004a30b001c0530));
    assert!(state.is_none_or(|s| s.dev_nonces.is_empty()));
}

#[test]
fn act_queues_a_downlink_for_the_next_rx1_window() {
    let f = fixture();
    let nwk = key(f["abp"]["nwk_s_key"].as_str().unwrap());
    let app = key(f["abp"]["app_s_key"].as_str().unwrap());
    let mut kit = kit();
    let (result, _) = kit.act(ABP, "downlink", "hex", json!({"port": 10, "hex": "0102"})).unwrap();
    assert_eq!(result, json!({"queued": 1, "port": 10, "bytes": 2}));
    let (result, _) = kit.act(ABP, "downlink", "base64", json!({"port": 11, "base64": "AwQF"})).unwrap();
    assert_eq!(result["queued"], json!(2));

    // The next uplink carries the first; FPending says more is waiting.
    let out = kit.messages(vec![heard(&uplink(0), "00000000000000d1", -70.0, 3.0, 5_000_000, 1)]);
    assert_eq!(out.outbound.len(), 1);
    let down = &out.outbound[0];
    assert_eq!(down.metadata["tmst"], "6000000");
    assert_eq!(down.metadata["gateway_eui"], "00000000000000d1");
    let expected = frame::build_data_down(
        &frame::DataDown {
            confirmed: false,
            dev_addr: 0x26011bda,
            ack: false,
            fpending: true,
            fcnt: 0,
            port_payload: Some((10, &[1, 2])),
        },
        &nwk,
        &app,
    );
    assert_eq!(down.payload.0, expected);
    // Restart in between: the queue and FCntDown are in the state.
    let mut kit = TestKit::<LoRaWan>::with_state("lorawan", config(), kit.into_state()).unwrap();
    let out = kit.messages(vec![heard(&uplink(1), "00000000000000d1", -70.0, 3.0, 8_000_000, 2)]);
    let expected = frame::build_data_down(
        &frame::DataDown {
            confirmed: false,
            dev_addr: 0x26011bda,
            ack: false,
            fpending: false,
            fcnt: 1,
            port_payload: Some((11, &[3, 4, 5])),
        },
        &nwk,
        &app,
    );
    assert_eq!(out.outbound[0].payload.0, expected);
    let out = kit.messages(vec![heard(&uplink(6), "00000000000000d1", -70.0, 3.0, 9_000_000, 3)]);
    assert!(out.outbound.is_empty(), "the queue is empty");

    // Refusals.
    assert!(kit.act(ABP, "downlink", "hex", json!({"port": 0, "hex": "01"})).is_err());
    assert!(kit.act(ABP, "downlink", "hex", json!({"port": 224, "hex": "01"})).is_err());
    assert!(kit.act(ABP, "downlink", "hex", json!({"port": 1, "hex": "zz"})).is_err());
    assert!(kit.act(ABP, "downlink", "hex", json!({"port": 1, "hex": "00".repeat(52)})).is_err());
    assert!(kit.act(ABP, "downlink", "base64", json!({"port": 1, "base64": "%%"})).is_err());
    assert!(kit.act(ABP, "downlink", "reboot", json!({})).is_err());
    assert!(kit.act("lora-00000000000000e1", "downlink", "hex", json!({"port": 1, "hex": "01"})).is_err());
    assert!(kit.act("lora-00000000000000e9", "downlink", "hex", json!({"port": 1, "hex": "01"})).is_err());
    for _ in 0..8 {
        kit.act(ABP, "downlink", "hex", json!({"port": 1, "hex": "01"})).unwrap();
    }
    let (reason, _) = kit.act(ABP, "downlink", "hex", json!({"port": 1, "hex": "01"})).unwrap_err();
    assert!(reason.contains("already has 8"), "{reason}");
    let (result, _) = kit.act(ABP, "downlink", "clear", json!({})).unwrap();
    assert_eq!(result, json!({"cleared": 8}));
}

#[test]
fn the_first_tick_declares_the_registry() {
    let mut kit = kit();
    kit.set_now(1);
    let out = kit.tick();
    let providers: Vec<&str> = out.models.iter().map(|m| m.provider.as_str()).collect();
    assert_eq!(providers, [OTAA, ABP], "the external device has no downlink actions");
    let v = values(&out);
    assert_eq!(v[&format!("{OTAA}/admin/friendly_name")], json!("Bench sensor"));
    assert_eq!(v["lora-00000000000000e1/admin/friendly_name"], json!("Elsewhere"));
    assert!(kit.tick().is_empty(), "once per start");
}

#[test]
fn chirpstack_and_the_things_stack_uplinks_map_through_the_codec() {
    let mut kit = kit();
    let chirpstack = json!({
        "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        "time": "2024-05-01T10:00:00.123456Z",
        "deviceInfo": {"tenantId": "52f14cd4", "applicationId": "17c82e96", "applicationName": "park",
                       "deviceName": "bench-4", "devEui": "0004a30b001c0530", "tags": {}},
        "devAddr": "00189440", "adr": true, "dr": 5, "fCnt": 12, "fPort": 2, "confirmed": false,
        "data": "AWcA1wJoUQ==",
        "rxInfo": [{"gatewayId": "0016c001ff10a235", "uplinkId": 1, "rssi": -60, "snr": 8.5, "channel": 2},
                   {"gatewayId": "0016c001ff10a236", "uplinkId": 2, "rssi": -90, "snr": -1.0}],
        "txInfo": {"frequency": 868100000, "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7}}}
    });
    let tts = json!({
        "end_device_ids": {"device_id": "elsewhere", "application_ids": {"application_id": "city"},
                           "dev_eui": "00000000000000E1", "dev_addr": "260B1234"},
        "received_at": "2024-05-01T10:00:01Z",
        "uplink_message": {"f_port": 3, "f_cnt": 7, "frm_payload": "qrs=",
                           "rx_metadata": [{"gateway_ids": {"gateway_id": "gw-1", "eui": "B827EBFFFE000001"},
                                            "rssi": -101, "channel_rssi": -101, "snr": -3.25}],
                           "received_at": "2024-05-01T10:00:00.5Z"}
    });
    let unknown = json!({
        "end_device_ids": {"dev_eui": "00000000000000F7"},
        "uplink_message": {"f_port": 1, "frm_payload": "AWcA1w=="}
    });
    let out = kit.messages(vec![
        InboundMessage::mqtt("application/17c82e96/device/0004a30b001c0530/event/up", chirpstack.to_string(), 5),
        InboundMessage::mqtt("v3/city@ttn/devices/elsewhere/up", tts.to_string(), 6),
        InboundMessage::mqtt("v3/city@ttn/devices/stranger/up", unknown.to_string(), 7),
    ]);
    let v = values(&out);
    assert_eq!(v[&format!("{OTAA}/uplink/temperature_1")], json!(21.5));
    assert_eq!(v[&format!("{OTAA}/uplink/humidity_2")], json!(40.5));
    assert_eq!(v[&format!("{OTAA}/radio/rssi")], json!(-60.0));
    assert_eq!(v[&format!("{OTAA}/radio/gateways")], json!(["0016c001ff10a235", "0016c001ff10a236"]));
    assert_eq!(v[&format!("{OTAA}/lorawan/fcnt")], json!(12));
    let cs_time = out.updates.iter().find(|u| u.provider == OTAA && u.service == "uplink").unwrap().timestamp_us;
    assert_eq!(cs_time, Some(1_714_557_600_123_456));
    // Raw codec from the registry, radio from rx_metadata, time from uplink_message.received_at.
    assert_eq!(v["lora-00000000000000e1/uplink/raw"], json!("aabb"));
    assert_eq!(v["lora-00000000000000e1/radio/snr"], json!(-3.25));
    assert_eq!(v["lora-00000000000000e1/radio/gateways"], json!(["b827ebfffe000001"]));
    let tts_time = out.updates.iter().find(|u| u.provider == "lora-00000000000000e1" && u.service == "uplink").unwrap();
    assert_eq!(tts_time.timestamp_us, Some(1_714_557_600_500_000));
    // Not in the registry: default_codec (raw unless configured).
    assert_eq!(v["lora-00000000000000f7/uplink/raw"], json!("016700d7"));
    assert!(warnings(&out).is_empty(), "{:?}", out.logs);

    let mut cayenne_default = config();
    cayenne_default["default_codec"] = json!("cayenne");
    let mut kit = TestKit::<LoRaWan>::new(cayenne_default).unwrap();
    let out = kit.messages(vec![InboundMessage::mqtt("v3/city@ttn/devices/stranger/up", unknown.to_string(), 7)]);
    assert_eq!(values(&out)["lora-00000000000000f7/uplink/temperature_1"], json!(21.5));

    // Malformed events are skipped with a warning each.
    let out = kit.messages(vec![
        InboundMessage::mqtt("application/1/device/x/event/up", "{not json", 1),
        InboundMessage::mqtt(
            "application/1/device/x/event/up",
            json!({"deviceInfo": {"devEui": "xyz"}}).to_string(),
            1,
        ),
        InboundMessage::mqtt("v3/a/devices/b/up", json!({"end_device_ids": {}, "uplink_message": {}}).to_string(), 1),
        InboundMessage::mqtt(
            "v3/a/devices/b/up",
            json!({"end_device_ids": {"dev_eui": "00000000000000F7"},
            "uplink_message": {"f_port": 1, "frm_payload": "%%%"}})
            .to_string(),
            1,
        ),
        InboundMessage::mqtt("some/other/topic", "1", 1),
    ]);
    assert!(out.updates.is_empty());
    assert_eq!(warnings(&out).len(), 5, "{:?}", out.logs);
}

/// xorshift64: a small deterministic PRNG so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_and_corrupted_frames_never_panic_or_update() {
    let f = fixture();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut kit = kit();
    // Random byte strings, including ones that start like real frames.
    for round in 0..2_000 {
        let len = (rng.next() % 40) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if round % 3 == 0 && !bytes.is_empty() {
            bytes[0] = [0x00, 0x40, 0x80][(rng.next() % 3) as usize];
        }
        if round % 5 == 0 && bytes.len() > 5 {
            bytes[1..5].copy_from_slice(&0x26011bdau32.to_le_bytes());
        }
        let out = kit.messages(vec![heard(&bytes, "g", -50.0, 1.0, 1, round)]);
        assert!(out.updates.is_empty() && out.outbound.is_empty(), "{bytes:02x?}: {:?}", out.updates);
    }
    // Every single-bit flip of valid frames (uplinks and a Join-Request).
    let mut valid: Vec<Vec<u8>> = (0..7).map(uplink).collect();
    valid.push(hex(f["join_requests"][0]["phy"].as_str().unwrap()));
    let mut kit = self::kit();
    for (n, phy) in valid.iter().enumerate() {
        for bit in 0..phy.len() * 8 {
            let mut bad = phy.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let out = kit.messages(vec![heard(&bad, "g", -50.0, 1.0, 1, (n * 10_000 + bit) as i64)]);
            assert!(out.updates.is_empty() && out.outbound.is_empty(), "frame {n} bit {bit}: {:?}", out.updates);
            assert!(out.logs.len() <= hub_adapter_lorawan::MAX_WARNINGS + 1);
        }
    }
    // A batch of garbage logs at most MAX_WARNINGS lines and one summary.
    let batch: Vec<InboundMessage> = (0..50).map(|i| heard(&[0x40, i as u8, 1, 2], "g", -50.0, 1.0, 1, i)).collect();
    let out = kit.messages(batch);
    assert_eq!(out.logs.len(), hub_adapter_lorawan::MAX_WARNINGS + 1);
    assert!(out.logs.last().unwrap().message.contains("42 more frames"));
    // After all that noise the real frames still work, in order.
    let out = kit.messages(vec![heard(&valid[0], "g", -50.0, 1.0, 1, 100_000_000)]);
    assert_eq!(values(&out)[&format!("{ABP}/lorawan/fcnt")], json!(0));
}

#[test]
fn configuration_errors_name_the_key_and_never_the_key_material() {
    let mut config = config();
    config["devices"][1]["app_s_key"] = json!("ec925802ae430ca77fd3dd73cb2cc58");
    let err = TestKit::<LoRaWan>::new(config).err().unwrap();
    assert_eq!(err, "devices[1].app_s_key: must be 32 hex digits");
    let mut state = MemoryState::default();
    state.entries.insert("unrelated".into(), b"x".to_vec());
    assert!(TestKit::<LoRaWan>::with_state("lorawan", json!({"devices": []}), state).is_ok());
    // The manifest's defaults are a valid configuration.
    let manifest: toml::Table = toml::from_str(include_str!("../plugin.toml")).unwrap();
    let defaults = serde_json::to_value(&manifest["config"]).unwrap();
    assert!(TestKit::<LoRaWan>::new(defaults).is_ok());
    let _ = Session::new(0, Key([0; 16]), Key([0; 16]));
}
