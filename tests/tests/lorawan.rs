//! LoRaWAN through the real binary: `hub serve` listens for GWMP gateways and installs the official LoRaWAN
//! adapter granted exactly that UDP port. Frames are built by lora-packet (npm, an independent LoRaWAN
//! implementation) and sent by a gateway simulated over UDP; downlinks come back as PULL_RESP. A restart on
//! another port keeps the device's frame counter, so a replayed frame stays refused.

use std::time::Duration;

use base64::Engine as _;
use hub_e2e::{HubProcess, Launch, build_plugin, client, lora_packet, sse_until};
use serde_json::{Value, json};
use tokio::net::UdpSocket;

const NWK_S_KEY: &str = "44024241ed4ce9a68c6a8bc055233fd3";
const APP_S_KEY: &str = "ec925802ae430ca77fd3dd73cb2cc588";
const DEVICE: &str = "lora-0004a30b001c0531";

fn uplink(fcnt: u32, payload: &str, confirmed: bool) -> Vec<u8> {
    let answer = lora_packet(&json!([{"op": "uplink", "dev_addr": "26011bda", "fcnt": fcnt, "fport": 2,
        "payload": payload, "confirmed": confirmed, "nwk_s_key": NWK_S_KEY, "app_s_key": APP_S_KEY}]));
    hex::decode(answer[0]["phy"].as_str().unwrap()).unwrap()
}

/// A packet forwarder speaking GWMP v2 from its own UDP socket.
struct Gateway {
    eui: [u8; 8],
    socket: UdpSocket,
    hub: std::net::SocketAddr,
    token: u16,
}

impl Gateway {
    async fn connect(eui: u64, port: u16) -> Gateway {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut gw = Gateway { eui: eui.to_be_bytes(), socket, hub: ([127, 0, 0, 1], port).into(), token: 7 };
        gw.send(2, b"").await;
        assert_eq!(gw.recv().await[3], 4, "PULL_ACK");
        gw
    }

    async fn send(&mut self, identifier: u8, body: &[u8]) {
        self.token = self.token.wrapping_add(1);
        let [a, b] = self.token.to_be_bytes();
        let mut datagram = vec![2, a, b, identifier];
        datagram.extend_from_slice(&self.eui);
        datagram.extend_from_slice(body);
        self.socket.send_to(&datagram, self.hub).await.unwrap();
    }

    /// PUSH_DATA with one received frame; waits for the PUSH_ACK.
    async fn push(&mut self, phy: &[u8], tmst: u32) {
        let rxpk = json!({"rxpk": [{
            "time": "2026-11-22T10:00:00.000000Z", "tmst": tmst, "chan": 2, "rfch": 0, "freq": 868.5, "stat": 1,
            "modu": "LORA", "datr": "SF7BW125", "codr": "4/5", "rssi": -70, "lsnr": 6.5, "size": phy.len(),
            "data": base64::engine::general_purpose::STANDARD.encode(phy)}]});
        self.send(0, rxpk.to_string().as_bytes()).await;
        assert_eq!(self.recv().await[3], 1, "PUSH_ACK");
    }

    async fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 65_536];
        let (n, _) = tokio::time::timeout(Duration::from_secs(15), self.socket.recv_from(&mut buf))
            .await
            .expect("no datagram from the hub")
            .unwrap();
        buf.truncate(n);
        buf
    }
}

fn registry() -> Value {
    json!({"devices": [{"dev_eui": "0004A30B001C0531", "dev_addr": "26011BDA", "nwk_s_key": NWK_S_KEY,
                        "app_s_key": APP_S_KEY, "codec": "cayenne", "name": "Quay 3 weather"}]})
}

async fn configure(hub: &HubProcess) {
    let res = client()
        .put(format!("{}/api/v1/plugins/lorawan/config", hub.base))
        .bearer_auth(&hub.admin)
        .json(&json!({"config": registry()}))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains(NWK_S_KEY), "keys never appear in API answers: {body}");
}

#[tokio::test]
async fn gateways_deliver_lora_packet_frames_to_hub_serve_and_downlinks_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let (status, info) = hub.get("/api/v1/plugins/lorawan").await.unwrap();
    assert_eq!(status, 200, "the official LoRaWAN adapter is installed by `hub serve`: {info}");
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["granted"]["udp"]["ports"], json!([hub.gwmp_port]), "granted the GWMP port: {info}");
    configure(&hub).await;

    let mut gateway = Gateway::connect(0xAA55_5A00_0000_0001, hub.gwmp_port).await;
    let sse = hub.events(&format!("provider={DEVICE}")).await;
    // Cayenne LPP: temperature 21.5 °C on channel 1, humidity 40.5 % on channel 2.
    gateway.push(&uplink(0, "016700d7026851", false), 1_000_000).await;
    let seen = sse_until(sse, "temperature_1").await;
    assert!(seen.contains("21.5"), "{seen}");
    hub.wait_for_value(&format!("{DEVICE}/services/uplink/resources/humidity_2"), &json!(40.5)).await;

    // The gateway is listed with its counters; the transport's counters reach the metrics.
    let (status, gateways) = hub.get("/api/v1/gateways").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(gateways[0]["eui"], "aa555a0000000001", "{gateways}");
    assert_eq!(gateways[0]["rx_ok"], 1, "{gateways}");
    assert_eq!(gateways[0]["downlink_ready"], true, "{gateways}");
    let metrics = hub.metrics().await;
    assert!(metrics.contains(r#"hub_transport_events_total{transport="udp",counter="delivered"} 1"#), "{metrics}");

    // ACT queues a downlink; the next confirmed uplink gets it in RX1, which lora-packet decrypts.
    let (status, result) = hub
        .post(
            &format!("/api/v1/providers/{DEVICE}/services/downlink/resources/hex/act"),
            &json!({"params": {"port": 10, "hex": "0102"}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{result}");
    gateway.push(&uplink(1, "016700e1", true), 5_000_000).await;
    let datagram = gateway.recv().await;
    assert_eq!(datagram[3], 3, "PULL_RESP");
    let body: Value = serde_json::from_slice(&datagram[4..]).unwrap();
    assert_eq!(body["txpk"]["tmst"], 6_000_000, "RX1 = uplink + 1 s: {body}");
    let phy = base64::engine::general_purpose::STANDARD.decode(body["txpk"]["data"].as_str().unwrap()).unwrap();
    let decoded = lora_packet(&json!([{"op": "decode_downlink", "phy": hex::encode(&phy),
                                       "nwk_s_key": NWK_S_KEY, "app_s_key": APP_S_KEY}]));
    assert_eq!(decoded[0]["mic_ok"], true, "{decoded:?}");
    assert_eq!(decoded[0]["ack"], true, "the confirmed uplink is acknowledged: {decoded:?}");
    assert_eq!(decoded[0]["payload"], "0102", "{decoded:?}");
    hub.wait_for_value(&format!("{DEVICE}/services/uplink/resources/temperature_1"), &json!(22.5)).await;

    // Garbage and a corrupted frame change nothing and are counted.
    gateway.send(0, b"{not json").await;
    let mut corrupted = uplink(2, "016700f0", false);
    let last = corrupted.len() - 1;
    corrupted[last] ^= 0xff;
    gateway.push(&corrupted, 9_000_000).await;
    let (_, plugin) = hub.get("/api/v1/plugins/lorawan").await.unwrap();
    assert_eq!(plugin["stats"]["errors"], 0, "{plugin}");
    let (_, temperature) =
        hub.get(&format!("/api/v1/providers/{DEVICE}/services/uplink/resources/temperature_1")).await.unwrap();
    assert_eq!(temperature["value"], json!(22.5));
}

#[tokio::test]
async fn after_a_restart_on_another_port_the_adapter_follows_and_replays_stay_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    configure(&hub).await;
    let mut gateway = Gateway::connect(0xAA55_5A00_0000_0002, hub.gwmp_port).await;
    let frame = uplink(40, "016700d7", false);
    gateway.push(&frame, 1_000_000).await;
    hub.wait_for_value(&format!("{DEVICE}/services/uplink/resources/temperature_1"), &json!(21.5)).await;
    assert!(hub.stop().unwrap().success());

    // `Launch` picks new free ports: the GWMP port changes, and with it the adapter's grant.
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let (_, info) = hub.get("/api/v1/plugins/lorawan").await.unwrap();
    assert_eq!(info["granted"]["udp"]["ports"], json!([hub.gwmp_port]), "{info}");
    assert_eq!(info["requested"]["udp"]["ports"], json!([hub.gwmp_port]), "{info}");
    let mut gateway = Gateway::connect(0xAA55_5A00_0000_0002, hub.gwmp_port).await;
    // The same frame again: its counter is not above the stored one.
    gateway.push(&frame, 2_000_000).await;
    // A fresh frame after it goes through, so the replay had its chance to be applied first.
    gateway.push(&uplink(41, "016700e6", false), 3_000_000).await;
    let fresh = hub.wait_for_value(&format!("{DEVICE}/services/uplink/resources/temperature_1"), &json!(23.0)).await;
    let (_, history) =
        hub.get(&format!("/api/v1/providers/{DEVICE}/services/uplink/resources/temperature_1/history")).await.unwrap();
    let values: Vec<&Value> =
        history["points"].as_array().map(|p| p.iter().map(|x| &x["value"]).collect()).unwrap_or_default();
    assert_eq!(values.len(), 2, "the replayed frame was not stored again: {history} (now {fresh})");
}

/// An integrator's decoder, installed as a plugin of kind `app`, decodes the payloads of the devices whose codec
/// names it; the adapter's other readings stand when it refuses a frame.
#[tokio::test]
async fn a_device_whose_codec_is_an_app_is_decoded_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let (manifest, wasm) = build_plugin("fixtures/parking-codec", "hub-codec-parking").unwrap();
    let wasm = base64::engine::general_purpose::STANDARD.encode(&wasm);
    let (status, body) =
        hub.post("/api/v1/plugins", &json!({"manifest": manifest, "wasm": wasm, "grant": {}})).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let mut registry = registry();
    registry["devices"][0]["codec"] = json!("app:parking-codec");
    let res = client()
        .put(format!("{}/api/v1/plugins/lorawan/config", hub.base))
        .bearer_auth(&hub.admin)
        .json(&json!({"config": registry}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut gateway = Gateway::connect(0xAA55_5A00_0000_0003, hub.gwmp_port).await;

    // Without `act` on the app the call is refused, and counted; the frame's other readings are stored.
    gateway.push(&uplink(0, "010e1d0007", false), 1_000_000).await;
    hub.wait_for_value(&format!("{DEVICE}/services/lorawan/resources/fcnt"), &json!(0)).await;
    let (_, plugin) = hub.get("/api/v1/plugins/lorawan").await.unwrap();
    assert!(plugin["stats"]["last_error"].as_str().unwrap_or("").contains("act on plugin:parking-codec"), "{plugin}");
    let (status, _) = hub.get(&format!("/api/v1/providers/{DEVICE}/services/uplink/resources/occupied")).await.unwrap();
    assert_eq!(status, 404, "nothing decoded without the policy's consent");

    let policy = "p, admin, *, *\np, plugin:lorawan, lora-*, write\np, plugin:lorawan, plugin:parking-codec, act\n";
    assert_eq!(hub.put_policy(policy).await.unwrap(), 204);
    gateway.push(&uplink(1, "010e1d0007", false), 2_000_000).await;
    hub.wait_for_value(&format!("{DEVICE}/services/uplink/resources/occupied"), &json!(true)).await;
    hub.wait_for_value(&format!("{DEVICE}/services/uplink/resources/battery"), &json!(3.613)).await;
    hub.wait_for_value(&format!("{DEVICE}/services/uplink/resources/cars"), &json!(7)).await;

    // A frame the codec refuses stores no decoded value; the counter and radio readings still move.
    gateway.push(&uplink(2, "01", false), 3_000_000).await;
    hub.wait_for_value(&format!("{DEVICE}/services/lorawan/resources/fcnt"), &json!(2)).await;
    let (_, plugin) = hub.get("/api/v1/plugins/lorawan").await.unwrap();
    assert!(plugin["stats"]["last_error"].as_str().unwrap_or("").contains("5 bytes"), "{plugin}");
    assert_eq!(hub.history(&format!("{DEVICE}/uplink/cars")).await.len(), 1);
    let (_, codec) = hub.get("/api/v1/plugins/parking-codec").await.unwrap();
    assert_eq!(codec["stats"]["errors"], json!(0), "a refused frame is the codec's answer, not its failure: {codec}");
}
