//! LoRaWAN frames per second through the real hub path (a report, not assertions): the lorawan adapter built
//! for wasm32 and run by the plugin runtime (MIC, counters, decrypt, Cayenne LPP, de-duplication, state), its
//! updates ingested by the twin into SQLite. Frames are built by lora-packet (npm) with known keys.
//!
//! 1. `PluginHost::deliver` straight into the adapter's queue (plugin + twin);
//! 2. the same through UDP: a fake gateway sends PUSH_DATA (8 packets each) to the GWMP transport, whose
//!    messages the pump hands to `PluginHost::dispatch`.
//!
//! `cargo bench -p hub-transport-gwmp --bench lorawan` (needs `npm ci` in `tests/lora-packet`;
//! `LORAWAN_FRAMES` and `LORAWAN_DEVICES` override the counts).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::lorawan::*;
use common::{Gateway, rxpk};
use hub_plugin_sdk::abi::InboundMessage;
use serde_json::{Value, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn keys(d: usize) -> (String, String) {
    (format!("{:016x}{:016x}", d, 0x1111_1111_1111_1111u64), format!("{:016x}{:016x}", d, 0x2222_2222_2222_2222u64))
}

fn dev_addr(d: usize) -> String {
    format!("{:08x}", 0x2600_0000u32 | d as u32)
}

fn provider(d: usize) -> String {
    format!("lora-{:016x}", 0x70b3_d500_0000_0000u64 | d as u64)
}

/// `per_device` frames for each device, counters `first..first + per_device`, interleaved by device.
fn frames(devices: usize, first: u32, per_device: u32) -> Result<Vec<Vec<u8>>> {
    let mut requests = Vec::new();
    for n in first..first + per_device {
        for d in 0..devices {
            let (nwk, app) = keys(d);
            requests.push(json!({"op": "uplink", "dev_addr": dev_addr(d), "fcnt": n, "fport": 2,
                                 "payload": "016700d7026851", "confirmed": false, "nwk_s_key": nwk, "app_s_key": app}));
        }
    }
    lora_packet(&Value::Array(requests))?
        .iter()
        .map(|a| hex::decode(a["phy"].as_str().context("phy")?).context("hex"))
        .collect()
}

async fn wait_all(hub: &LoraHub, devices: usize, fcnt: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    for d in 0..devices {
        let path = format!("{}/lorawan/fcnt", provider(d));
        while hub.value(&path) != Some(json!(fcnt)) {
            anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {path} = {fcnt}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let devices = env_usize("LORAWAN_DEVICES", 100).clamp(1, 4000);
        let per_device = (env_usize("LORAWAN_FRAMES", 20_000) / devices).max(1) as u32;
        let total = devices * per_device as usize;
        let registry: Vec<Value> = (0..devices)
            .map(|d| {
                let (nwk, app) = keys(d);
                json!({"dev_eui": format!("{:016x}", 0x70b3_d500_0000_0000u64 | d as u64), "dev_addr": dev_addr(d),
                       "nwk_s_key": nwk, "app_s_key": app, "codec": "cayenne"})
            })
            .collect();
        let hub = LoraHub::start(json!({ "devices": registry }), |c| c.queue_capacity = 8192).await?;
        println!("LoRaWAN through the hub: {total} frames from {devices} ABP devices per run (wasm adapter + twin/SQLite)");

        let direct = frames(devices, 0, per_device)?;
        let start = Instant::now();
        for phy in &direct {
            let mut m = InboundMessage::new("udp", hub.gwmp.address(), phy.clone(), hub_model::Timestamp::now().as_micros());
            for (k, v) in [("gateway_eui", "aa555a0000000101"), ("rssi", "-57"), ("lsnr", "9.5"), ("tmst", "1000"),
                           ("freq", "868.1"), ("datr", "SF7BW125")] {
                m.metadata.insert(k.to_owned(), v.to_owned());
            }
            hub.host.deliver("lorawan", m).await?;
        }
        wait_all(&hub, devices, per_device - 1).await?;
        let rate = total as f64 / start.elapsed().as_secs_f64();
        let stats = hub.host.get("lorawan").context("plugin")?.stats;
        println!(
            "delivered to the plugin: {rate:>8.0} frames/s end to end ({} calls, call latency p50 {} µs p99 {} µs, {} errors)",
            stats.calls, stats.latency_p50_us, stats.latency_p99_us, stats.errors
        );

        // Where the time goes: one call's worth of updates (256 frames × 7 resources) ingested by the twin alone.
        let resources = ["uplink/temperature_1", "uplink/humidity_2", "radio/rssi", "radio/snr", "lorawan/fcnt",
                         "lorawan/port", "radio/gateways"];
        let mut took = Vec::new();
        for rep in 0..5 {
            let now = hub_model::Timestamp::now().as_micros();
            let updates: Vec<hub_model::Update> = (0..256)
                .flat_map(|f| {
                    resources.iter().map(move |r| hub_model::Update {
                        path: format!("{}/{r}", provider(f % devices)).parse().expect("path"),
                        value: if r.ends_with("gateways") { json!(["aa555a0000000101"]) } else { json!(rep * 1000 + f) },
                        timestamp: hub_model::Timestamp::from_micros(now + f as i64),
                    })
                })
                .collect();
            let start = Instant::now();
            hub.twin.ingest(updates).await?;
            took.push(start.elapsed());
        }
        took.sort();
        println!("twin ingest of one call's updates (1,792): median {:?}", took[2]);

        let udp = frames(devices, per_device, per_device)?;
        let mut gw = Gateway::new(0xAA55_5A00_0000_0101, hub.gwmp.local_addr()).await?;
        gw.connect().await?;
        let start = Instant::now();
        for chunk in udp.chunks(8) {
            let rxpks: Vec<Value> = chunk.iter().map(|phy| rxpk(phy, -57, 9.5, 1000)).collect();
            gw.push(&json!({ "rxpk": rxpks })).await?;
            gw.recv().await?; // PUSH_ACK: the transport took the datagram
        }
        wait_all(&hub, devices, 2 * per_device - 1).await?;
        let rate = total as f64 / start.elapsed().as_secs_f64();
        println!(
            "through UDP (GWMP, 8 packets per PUSH_DATA): {rate:>8.0} frames/s end to end; transport {:?}",
            hub.gwmp.stats()
        );
        hub.close().await;
        Ok(())
    })
}
