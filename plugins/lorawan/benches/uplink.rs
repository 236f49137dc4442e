//! LoRaWAN uplinks per second, natively (a report, not assertions):
//! - the core: parse the PHYPayload, verify the MIC, decrypt the FRMPayload, decode Cayenne LPP;
//! - the whole adapter through the SDK's test kit, in batches of 256 as the host sends them (JSON in and out,
//!   counters, de-duplication, state writes, updates).
//!
//! `cargo bench --manifest-path plugins/Cargo.toml -p hub-adapter-lorawan --bench uplink`
//! (`LORAWAN_FRAMES` and `LORAWAN_DEVICES` override the counts).

use std::time::Instant;

use hub_adapter_lorawan::LoRaWan;
use hub_adapter_lorawan::codec::Codec;
use hub_adapter_lorawan::crypto::{self, Dir, Key};
use hub_adapter_lorawan::frame::{self, Uplink};
use hub_plugin_sdk::abi::InboundMessage;
use hub_plugin_sdk::testkit::TestKit;
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn device_key(i: usize, salt: u8) -> Key {
    let mut k = [salt; 16];
    k[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Key(k)
}

fn main() {
    let frames = env_usize("LORAWAN_FRAMES", 200_000);
    let devices = env_usize("LORAWAN_DEVICES", 1_000).clamp(1, 4_000);
    // Temperature and humidity, as most city sensors send.
    let payload = [0x01, 0x67, 0x00, 0xd7, 0x02, 0x68, 0x51];
    let addr = |i: usize| 0x2600_0000u32 | i as u32;
    let per_device = frames.div_ceil(devices);
    let mut phys = Vec::with_capacity(frames);
    for n in 0..per_device {
        for d in 0..devices {
            if phys.len() == frames {
                break;
            }
            let (nwk, app) = (device_key(d, 1), device_key(d, 2));
            phys.push(frame::build_data_up(false, addr(d), n as u32, Some((2, &payload)), &nwk, &app));
        }
    }
    println!("LoRaWAN uplinks, {frames} frames from {devices} ABP devices, Cayenne LPP temperature + humidity");

    // The core, one frame after another.
    let start = Instant::now();
    let mut readings = 0usize;
    for (i, phy) in phys.iter().enumerate() {
        let d = i % devices;
        let Ok(Uplink::Data(data)) = frame::parse_uplink(phy) else { panic!("bench frame does not parse") };
        let (nwk, app) = (device_key(d, 1), device_key(d, 2));
        let fcnt = u32::from(data.fcnt16);
        assert_eq!(crypto::data_mic(&nwk, Dir::Up, data.dev_addr, fcnt, data.msg), data.mic);
        let mut plain = data.frm_payload.to_vec();
        crypto::crypt_frm_payload(&app, Dir::Up, data.dev_addr, fcnt, &mut plain);
        readings += Codec::Cayenne.decode(&plain).and_then(Result::ok).map_or(0, |r| r.len());
    }
    let core = frames as f64 / start.elapsed().as_secs_f64();
    assert_eq!(readings, 2 * frames);
    println!("core (parse + MIC + decrypt + Cayenne): {core:>10.0} frames/s");

    // The whole adapter, as the host drives it.
    let registry: Vec<_> = (0..devices)
        .map(|d| {
            json!({"dev_eui": format!("{:016x}", 0x70b3_d500_0000_0000u64 | d as u64),
                   "dev_addr": format!("{:08x}", addr(d)),
                   "nwk_s_key": hex(&device_key(d, 1).0), "app_s_key": hex(&device_key(d, 2).0), "codec": "cayenne"})
        })
        .collect();
    let mut kit = TestKit::<LoRaWan>::new(json!({ "devices": registry })).expect("config");
    let messages: Vec<InboundMessage> = phys
        .iter()
        .enumerate()
        .map(|(i, phy)| {
            let mut m = InboundMessage::new("udp", "1700", phy.clone(), i as i64);
            for (k, v) in [
                ("gateway_eui", "aa555a0000000101"),
                ("rssi", "-57"),
                ("lsnr", "9.5"),
                ("tmst", "1000"),
                ("freq", "868.1"),
                ("datr", "SF7BW125"),
                ("codr", "4/5"),
            ] {
                m.metadata.insert(k.to_owned(), v.to_owned());
            }
            m
        })
        .collect();
    let start = Instant::now();
    let mut updates = 0usize;
    for batch in messages.chunks(256) {
        let out = kit.messages(batch.to_vec());
        updates += out.updates.len();
    }
    let whole = frames as f64 / start.elapsed().as_secs_f64();
    assert!(updates >= 7 * frames, "every frame decoded ({updates} updates)");
    println!("adapter via the test kit (batches of 256, JSON round trips): {whole:>10.0} frames/s");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
