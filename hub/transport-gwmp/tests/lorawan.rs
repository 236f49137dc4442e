//! End to end with a real peer: frames built by lora-packet (npm, an independent LoRaWAN implementation) with
//! known keys, sent by a fake gateway over UDP to the GWMP transport, decoded by the lorawan adapter (wasm, in
//! the real plugin runtime) into the twin; Join-Accepts and downlinks come back as PULL_RESP and are checked with
//! lora-packet. Fails (never skips) when node or lora-packet is missing, saying how to install them.

mod common;

use anyhow::{Context, Result};
use base64::Engine as _;
use common::lorawan::*;
use common::{Gateway, rxpk};
use serde_json::{Value, json};

const NWK_S_KEY: &str = "44024241ed4ce9a68c6a8bc055233fd3";
const APP_S_KEY: &str = "ec925802ae430ca77fd3dd73cb2cc588";
const APP_KEY: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const ABP: &str = "lora-0004a30b001c0531";
const OTAA: &str = "lora-0004a30b001c0530";

fn registry() -> Value {
    json!({
        "devices": [
            {"dev_eui": "0004A30B001C0530", "join_eui": "70B3D57ED0000000", "app_key": APP_KEY, "codec": "cayenne"},
            {"dev_eui": "0004A30B001C0531", "dev_addr": "26011BDA", "nwk_s_key": NWK_S_KEY, "app_s_key": APP_S_KEY,
             "codec": "cayenne", "name": "Quay 3 weather"}
        ],
        "net_id": "000013",
        "rx1_delay_s": 1
    })
}

fn uplink(dev_addr: &str, fcnt: u32, payload: &str, confirmed: bool, nwk: &str, app: &str) -> Value {
    json!({"op": "uplink", "dev_addr": dev_addr, "fcnt": fcnt, "fport": 2, "payload": payload,
           "confirmed": confirmed, "nwk_s_key": nwk, "app_s_key": app})
}

fn phy(answer: &Value) -> Vec<u8> {
    hex::decode(answer["phy"].as_str().expect("phy")).expect("hex")
}

/// The txpk of a PULL_RESP and its PHYPayload.
fn pull_resp(datagram: &[u8]) -> Result<(Value, Vec<u8>)> {
    anyhow::ensure!(datagram.len() > 4 && datagram[3] == 3, "not a PULL_RESP: {datagram:?}");
    let body: Value = serde_json::from_slice(&datagram[4..])?;
    let data = body["txpk"]["data"].as_str().context("txpk.data")?;
    Ok((body["txpk"].clone(), base64::engine::general_purpose::STANDARD.decode(data)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_packet_frames_through_gateways_into_the_twin_and_back() -> Result<()> {
    require_lora_packet()?;
    let hub = LoraHub::start(registry(), |_| {}).await?;
    let mut gw1 = Gateway::new(0xAA55_5A00_0000_0001, hub.gwmp.local_addr()).await?;
    let mut gw2 = Gateway::new(0xAA55_5A00_0000_0002, hub.gwmp.local_addr()).await?;
    gw1.connect().await?;
    gw2.connect().await?;

    // ABP: temperature 21.5 °C and humidity 40.5 %RH (Cayenne LPP), heard by two gateways.
    let frames = lora_packet(&json!([
        uplink("26011bda", 0, "016700d7026851", false, NWK_S_KEY, APP_S_KEY),
        uplink("26011bda", 1, "016700e1", true, NWK_S_KEY, APP_S_KEY),
        {"op": "join_request", "app_eui": "70b3d57ed0000000", "dev_eui": "0004a30b001c0530", "dev_nonce": 513,
         "app_key": APP_KEY},
    ]))?;
    let first = phy(&frames[0]);
    gw1.push(&json!({"rxpk": [rxpk(&first, -95, -1.5, 1_000_000)]})).await?;
    gw2.push(&json!({"rxpk": [rxpk(&first, -70, 6.0, 2_000_000)]})).await?;
    gw1.recv().await?;
    gw2.recv().await?;
    hub.wait_value(&format!("{ABP}/uplink/temperature_1"), &json!(21.5)).await?;
    hub.wait_value(&format!("{ABP}/uplink/humidity_2"), &json!(40.5)).await?;
    hub.wait_value(&format!("{ABP}/radio/gateways"), &json!(["aa555a0000000001", "aa555a0000000002"])).await?;
    assert_eq!(hub.value(&format!("{ABP}/radio/snr")), Some(json!(6.0)));
    assert_eq!(hub.value(&format!("{ABP}/lorawan/fcnt")), Some(json!(0)));
    let unit = hub.twin.resource(&format!("{ABP}/uplink/temperature_1").parse()?).and_then(|r| r.unit);
    assert_eq!(unit.as_deref(), Some("Cel"), "{:?}", hub.host.get("lorawan").map(|p| p.stats));

    // ACT queues a downlink; the next (confirmed) uplink gets it in RX1 with the ACK bit, via the best gateway.
    let path = format!("{ABP}/downlink/hex").parse()?;
    let params = json!({"port": 10, "hex": "0102"}).as_object().cloned().unwrap_or_default();
    let result = hub.twin.act(path, params).await?;
    assert_eq!(result["queued"], json!(1));
    let second = phy(&frames[1]);
    gw2.push(&json!({"rxpk": [rxpk(&second, -60, 8.0, 5_000_000)]})).await?;
    gw2.recv().await?;
    let (txpk, down) = pull_resp(&gw2.recv().await?)?;
    assert_eq!(txpk["tmst"], json!(6_000_000), "RX1 = uplink + 1 s");
    assert_eq!((txpk["freq"].clone(), txpk["datr"].clone()), (json!(868.5), json!("SF7BW125")));
    assert_eq!(txpk["ipol"], json!(true));
    assert_eq!(txpk["powe"], json!(14));
    let decoded = lora_packet(&json!([{"op": "decode_downlink", "phy": hex::encode(&down),
                                       "nwk_s_key": NWK_S_KEY, "app_s_key": APP_S_KEY}]))?;
    let d = &decoded[0];
    assert_eq!(d["mtype"], json!("Unconfirmed Data Down"));
    assert_eq!(d["mic_ok"], json!(true), "lora-packet verifies the downlink MIC");
    assert_eq!(d["dev_addr"], json!("26011bda"));
    assert_eq!((d["fcnt"].clone(), d["fport"].clone()), (json!(0), json!(10)));
    assert_eq!(d["ack"], json!(true));
    assert_eq!(d["payload"], json!("0102"), "lora-packet decrypts the downlink");
    hub.wait_value(&format!("{ABP}/uplink/temperature_1"), &json!(22.5)).await?;
    gw2.tx_ack([0, 0], "NONE").await?; // a stray TX_ACK: counted as unmatched
    common::wait_for("the stray TX_ACK", || hub.gwmp.stats().tx_ack_unmatched == 1).await?;

    // OTAA: a Join-Request → a Join-Accept 5 s later, which lora-packet decrypts and verifies.
    let join = phy(&frames[2]);
    gw1.push(&json!({"rxpk": [rxpk(&join, -80, 3.0, 40_000_000)]})).await?;
    gw1.recv().await?;
    let datagram = gw1.recv().await?;
    let token = [datagram[1], datagram[2]];
    let (txpk, accept) = pull_resp(&datagram)?;
    assert_eq!(txpk["tmst"], json!(45_000_000), "JOIN_ACCEPT_DELAY1");
    gw1.tx_ack(token, "NONE").await?;
    let opened = lora_packet(&json!([{"op": "decode_join_accept", "phy": hex::encode(&accept), "app_key": APP_KEY,
                                      "dev_nonce": 513}]))?;
    let a = &opened[0];
    assert_eq!(a["mtype"], json!("Join Accept"));
    assert_eq!(a["mic_ok"], json!(true), "lora-packet verifies the Join-Accept MIC");
    assert_eq!(a["net_id"], json!("000013"));
    assert_eq!(a["rx_delay"], json!(1));
    let dev_addr = a["dev_addr"].as_str().context("dev_addr")?.to_owned();
    hub.wait_value(&format!("{OTAA}/lorawan/dev_addr"), &json!(dev_addr)).await?;

    // The device uses the keys lora-packet derived: the hub derived the same ones.
    let (nwk, app) = (a["nwk_s_key"].as_str().unwrap_or_default(), a["app_s_key"].as_str().unwrap_or_default());
    let up = lora_packet(&json!([uplink(&dev_addr, 0, "03670110", false, nwk, app)]))?;
    gw1.push(&json!({"rxpk": [rxpk(&phy(&up[0]), -80, 3.0, 60_000_000)]})).await?;
    gw1.recv().await?;
    hub.wait_value(&format!("{OTAA}/uplink/temperature_3"), &json!(27.2)).await?;

    common::wait_for("the join TX_ACK", || hub.gwmp.stats().tx_acked == 1).await?;
    let stats = hub.gwmp.stats();
    assert_eq!(stats.tx_sent, 2);
    let gateways = hub.gwmp.gateways();
    assert_eq!(gateways.iter().map(|g| g.tx_sent).sum::<u64>(), 2);
    let plugin = hub.host.get("lorawan").context("plugin")?;
    assert_eq!(plugin.stats.errors, 0, "{:?}", plugin.stats.last_error);
    hub.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_and_replayed_frames_change_nothing() -> Result<()> {
    require_lora_packet()?;
    let hub = LoraHub::start(registry(), |_| {}).await?;
    let mut gw = Gateway::new(0xAA55_5A00_0000_0003, hub.gwmp.local_addr()).await?;
    gw.connect().await?;
    let frames = lora_packet(&json!([
        uplink("26011bda", 7, "016700d7", false, NWK_S_KEY, APP_S_KEY),
        uplink("26011bda", 8, "0268aa", false, NWK_S_KEY, APP_S_KEY),
        uplink("26011bda", 9, "016700f0", false, "00000000000000000000000000000001", APP_S_KEY),
        uplink("26011bdb", 10, "016700f1", false, NWK_S_KEY, APP_S_KEY),
    ]))?;
    let good = phy(&frames[0]);
    gw.push(&json!({"rxpk": [rxpk(&good, -60, 5.0, 1)]})).await?;
    gw.recv().await?;
    hub.wait_value(&format!("{ABP}/uplink/temperature_1"), &json!(21.5)).await?;

    // Bit flips, a wrong NwkSKey (MIC), an unknown DevAddr, garbage, and after the window a replay.
    let mut bad: Vec<Vec<u8>> = (0..good.len() * 8)
        .step_by(3)
        .map(|bit| {
            let mut b = good.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            b
        })
        .collect();
    bad.push(phy(&frames[2]));
    bad.push(phy(&frames[3]));
    bad.push(vec![0x40, 1, 2, 3]);
    for chunk in bad.chunks(8) {
        let rxpks: Vec<Value> = chunk.iter().map(|b| rxpk(b, -60, 5.0, 2)).collect();
        gw.push(&json!({"rxpk": rxpks})).await?;
        gw.recv().await?;
    }
    // After the de-duplication window, the good frame again is a replay.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    gw.push(&json!({"rxpk": [rxpk(&good, -60, 5.0, 4)]})).await?;
    gw.recv().await?;
    // A later good frame is processed after everything above (one plugin queue, in order): once it shows, the
    // noise has been handled, and nothing it carried changed the twin.
    gw.push(&json!({"rxpk": [rxpk(&phy(&frames[1]), -60, 5.0, 5)]})).await?;
    gw.recv().await?;
    hub.wait_value(&format!("{ABP}/uplink/humidity_2"), &json!(85.0)).await?;
    assert_eq!(hub.value(&format!("{ABP}/uplink/temperature_1")), Some(json!(21.5)));
    assert_eq!(hub.value(&format!("{ABP}/lorawan/fcnt")), Some(json!(8)));
    let plugin = hub.host.get("lorawan").context("plugin")?;
    assert_eq!(plugin.stats.errors, 0, "{:?}", plugin.stats.last_error);
    assert_eq!(plugin.state.as_str(), "running");
    hub.close().await;
    Ok(())
}
