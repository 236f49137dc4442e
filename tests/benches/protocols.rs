//! CoAP and LoRaWAN end to end against the real (release) hub binary, with its official adapters: what a city's
//! devices would see.
//!
//! - CoAP: `COAP_CLIENTS` clients (default 4), each keeping `COAP_WINDOW` (default 32) confirmable POSTs in
//!   flight to `/up/{provider}/power/watts`, `COAP_REQUESTS` (default 100,000) in all over 1,000 providers:
//!   requests/s answered 2.04, and requests/s until the adapter applied them all (each one durable in SQLite by
//!   then). Then requests paced at `COAP_RATE`/s (default 5,000) for 5 s: request → SSE event p50/p99 (the
//!   reading's value is its send time).
//! - LoRaWAN: `LORA_DEVICES` ABP devices (default 50), frames built by lora-packet (npm) with known keys, sent by
//!   one simulated gateway in PUSH_DATA datagrams of 8: frames/s until the adapter applied them all (MIC, frame
//!   counter, decrypt, Cayenne, de-duplication, state, durable updates). Then frames paced at `LORA_RATE`/s
//!   (default 2,000) for 5 s: PUSH_DATA → SSE event of the frame's `lorawan/fcnt` p50/p99.
//!
//! Run: `cargo bench -p hub-e2e --bench protocols` (needs `npm ci --prefix hub/transport-gwmp/tests/lora-packet`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use base64::Engine as _;
use coap_lite::{ContentFormat, MessageClass, MessageType, Packet, RequestType, ResponseType};
use hub_e2e::{
    HubProcess, Launch, client,
    stream::{latencies, now_us, summary},
};
use serde_json::{Value, json};
use tokio::{net::UdpSocket, sync::Semaphore};

const PROVIDERS: usize = 1_000;
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn coap_post(message_id: u16, provider: &str, value: i64) -> Vec<u8> {
    let mut packet = Packet::new();
    packet.header.set_type(MessageType::Confirmable);
    packet.header.code = MessageClass::Request(RequestType::Post);
    packet.header.message_id = message_id;
    packet.set_token(message_id.to_be_bytes().to_vec());
    for segment in ["up", provider, "power", "watts"] {
        packet.add_option(coap_lite::CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    packet.set_content_format(ContentFormat::ApplicationJSON);
    packet.payload = value.to_string().into_bytes();
    packet.to_bytes().expect("a small CoAP request encodes")
}

/// One client: `count` confirmable POSTs, at most `window` in flight; returns how many got 2.04.
async fn coap_client(hub: SocketAddr, client: usize, count: usize, window: usize) -> Result<usize> {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    socket.connect(hub).await?;
    let slots = Arc::new(Semaphore::new(window));
    let receiver = {
        let (socket, slots) = (socket.clone(), slots.clone());
        tokio::spawn(async move {
            let (mut changed, mut answered, mut buf) = (0usize, 0usize, vec![0u8; 1500]);
            while answered < count {
                let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf)).await else {
                    break;
                };
                if let Ok(packet) = Packet::from_bytes(&buf[..n]) {
                    answered += 1;
                    if packet.header.code == MessageClass::Response(ResponseType::Changed) {
                        changed += 1;
                    }
                    slots.add_permits(1);
                }
            }
            changed
        })
    };
    for i in 0..count {
        slots.acquire().await?.forget();
        let provider = format!("coap-bench-{}", (client * count + i) % PROVIDERS);
        socket.send(&coap_post((i % 65_536) as u16, &provider, i as i64)).await?;
    }
    Ok(receiver.await?)
}

async fn coap(hub: &HubProcess) -> Result<()> {
    let addr: SocketAddr = format!("127.0.0.1:{}", hub.coap_port).parse()?;
    let (clients, window) = (env_usize("COAP_CLIENTS", 4), env_usize("COAP_WINDOW", 32));
    let per_client = env_usize("COAP_REQUESTS", 100_000) / clients;
    let total = per_client * clients;
    let before = hub.plugin_stat("coap", "updates").await?;
    let start = Instant::now();
    let tasks: Vec<_> =
        (0..clients).map(|c| tokio::spawn(coap_client(addr, c, per_client, window.min(60_000)))).collect();
    let mut changed = 0;
    for task in tasks {
        changed += task.await??;
    }
    let answered_in = start.elapsed().as_secs_f64();
    let (applied, done) = hub.wait_applied("coap", before, total as u64, Duration::from_secs(5)).await?;
    let applied_in = done.saturating_duration_since(start).as_secs_f64().max(1e-9);
    println!(
        "coap: {clients} clients × {window} in flight: {changed}/{total} answered 2.04 at {:.0} req/s; {applied} \
         applied at {:.0} req/s",
        changed as f64 / answered_in,
        applied as f64 / applied_in
    );

    // Paced requests, each reading's value its send time; one socket, answers read and dropped.
    let rate = env_usize("COAP_RATE", 5_000);
    let count = rate * 5;
    let response = hub.events("provider=coap-lat").await;
    let reader = tokio::spawn(latencies(response, count, Duration::from_secs(5), |event, received| {
        event["value"].as_i64().map(|sent| received - sent)
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    socket.connect(addr).await?;
    let drain = {
        let socket = socket.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while socket.recv(&mut buf).await.is_ok() {}
        })
    };
    let start = Instant::now();
    for i in 0..count {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        socket.send(&coap_post((i % 65_536) as u16, "coap-lat", now_us())).await?;
    }
    let measured = tokio::time::timeout(RUN_TIMEOUT, reader).await.context("latency run")??;
    drain.abort();
    println!(
        "coap: at {rate} req/s: {} of {count} on the stream, request → SSE {}",
        measured.len(),
        summary(&measured)
    );
    hub.print_plugin("coap").await
}

fn keys(d: usize) -> (String, String) {
    (format!("{:016x}{:016x}", d, 0x1111_1111_1111_1111u64), format!("{:016x}{:016x}", d, 0x2222_2222_2222_2222u64))
}

fn dev_addr(d: usize) -> String {
    format!("{:08x}", 0x2600_0000u32 | d as u32)
}

fn dev_eui(d: usize) -> String {
    format!("{:016x}", 0x70b3_d500_0000_0000u64 | d as u64)
}

/// Frames with counters `first..first + per_device` for each device, interleaved by device, built by
/// lora-packet.
fn frames(devices: usize, first: u32, per_device: u32) -> Result<Vec<(usize, u32, Vec<u8>)>> {
    let mut order = Vec::new();
    let mut requests = Vec::new();
    for n in first..first + per_device {
        for d in 0..devices {
            let (nwk, app) = keys(d);
            order.push((d, n));
            requests.push(json!({"op": "uplink", "dev_addr": dev_addr(d), "fcnt": n, "fport": 2,
                                 "payload": "016700d7026851", "confirmed": false, "nwk_s_key": nwk, "app_s_key": app}));
        }
    }
    let answers = hub_e2e::lora_packet(&Value::Array(requests));
    order
        .into_iter()
        .zip(answers)
        .map(|((d, n), a)| Ok((d, n, hex::decode(a["phy"].as_str().context("phy")?)?)))
        .collect()
}

fn push_data(token: u16, frames: &[&[u8]], tmst: u32) -> Vec<u8> {
    let rxpk: Vec<Value> = frames
        .iter()
        .map(|phy| {
            json!({"tmst": tmst, "chan": 2, "rfch": 0, "freq": 868.5, "stat": 1, "modu": "LORA",
                   "datr": "SF7BW125", "codr": "4/5", "rssi": -70, "lsnr": 6.5, "size": phy.len(),
                   "data": base64::engine::general_purpose::STANDARD.encode(phy)})
        })
        .collect();
    let [a, b] = token.to_be_bytes();
    let mut datagram = vec![2, a, b, 0, 0xaa, 0x55, 0x5a, 0, 0, 0, 0, 1];
    datagram.extend_from_slice(json!({ "rxpk": rxpk }).to_string().as_bytes());
    datagram
}

async fn lorawan(hub: &HubProcess) -> Result<()> {
    let devices = env_usize("LORA_DEVICES", 50).clamp(1, 1000);
    let per_device = (env_usize("LORA_FRAMES", 40_000) / devices).max(1) as u32;
    let rate = env_usize("LORA_RATE", 2_000);
    let paced_per_device = ((rate * 5) / devices).max(1) as u32;
    let registry: Vec<Value> = (0..devices)
        .map(|d| {
            let (nwk, app) = keys(d);
            json!({"dev_eui": dev_eui(d), "dev_addr": dev_addr(d), "nwk_s_key": nwk, "app_s_key": app,
                   "codec": "cayenne"})
        })
        .collect();
    let res = client()
        .put(format!("{}/api/v1/plugins/lorawan/config", hub.base))
        .bearer_auth(&hub.admin)
        .json(&json!({"config": {"devices": registry}}))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "configuring the LoRaWAN adapter: {}", res.text().await?);
    let bulk = frames(devices, 0, per_device)?;
    let paced = frames(devices, per_device, paced_per_device)?;
    let gateway = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    gateway.connect(("127.0.0.1", hub.gwmp_port)).await?;
    // A window of PUSH_DATA datagrams waiting for their PUSH_ACK keeps the load generator from overflowing the
    // hub's socket buffer (a real gateway does not wait, but it does not send this fast either).
    let window = Arc::new(Semaphore::new(16));
    let acks = Arc::new(AtomicUsize::new(0));
    let drain = {
        let (gateway, acks, window) = (gateway.clone(), acks.clone(), window.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64];
            while gateway.recv(&mut buf).await.is_ok() {
                acks.fetch_add(1, Ordering::Relaxed);
                window.add_permits(1);
            }
        })
    };

    // Throughput: datagrams of 8 frames, a few in flight (the transport acknowledges each PUSH_DATA).
    let before = hub.plugin_stat("lorawan", "updates").await?;
    let start = Instant::now();
    for (i, chunk) in bulk.chunks(8).enumerate() {
        let phys: Vec<&[u8]> = chunk.iter().map(|(_, _, phy)| phy.as_slice()).collect();
        window.acquire().await?.forget();
        gateway.send(&push_data(i as u16, &phys, i as u32)).await?;
    }
    let sent_in = start.elapsed().as_secs_f64();
    // Updates per frame: the Cayenne readings (2) plus radio and lorawan resources.
    let (probe, _) = hub.wait_applied("lorawan", before, 1, Duration::from_secs(5)).await?;
    anyhow::ensure!(probe > 0, "the LoRaWAN adapter applied nothing");
    let mut fcnts_done = 0;
    let deadline = Instant::now() + RUN_TIMEOUT;
    while fcnts_done < devices {
        anyhow::ensure!(Instant::now() < deadline, "frames not all applied within {RUN_TIMEOUT:?}");
        fcnts_done = 0;
        for d in 0..devices {
            let (_, v) =
                hub.get(&format!("/api/v1/providers/lora-{}/services/lorawan/resources/fcnt", dev_eui(d))).await?;
            if v["value"] == json!(per_device - 1) {
                fcnts_done += 1;
            }
        }
        if fcnts_done < devices {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let applied_in = start.elapsed().as_secs_f64();
    let acked = acks.load(Ordering::Relaxed);
    println!(
        "lorawan: {devices} devices, {} frames sent in {sent_in:.2} s ({acked} PUSH_ACKs), all applied at {:.0} \
         frames/s",
        bulk.len(),
        bulk.len() as f64 / applied_in
    );

    // Latency: frames paced at `rate`, one per datagram; the stream reports each device's frame counter.
    let sent_at: Arc<std::sync::Mutex<HashMap<(String, u32), i64>>> = Arc::default();
    let response = hub.events("provider=lora-*&service=lorawan&resource=fcnt").await;
    let seen = sent_at.clone();
    let reader = tokio::spawn(latencies(response, paced.len(), Duration::from_secs(5), move |event, received| {
        let key = (event["provider"].as_str()?.to_owned(), u32::try_from(event["value"].as_u64()?).ok()?);
        seen.lock().ok()?.get(&key).map(|sent| received - sent)
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    for (i, (d, n, phy)) in paced.iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        if let Ok(mut map) = sent_at.lock() {
            map.insert((format!("lora-{}", dev_eui(*d)), *n), now_us());
        }
        gateway.send(&push_data(i as u16, &[phy.as_slice()], 1_000_000 + i as u32)).await?;
    }
    let measured = tokio::time::timeout(RUN_TIMEOUT, reader).await.context("latency run")??;
    drain.abort();
    println!(
        "lorawan: at {rate} frames/s: {} of {} on the stream, PUSH_DATA → SSE {}",
        measured.len(),
        paced.len(),
        summary(&measured)
    );
    hub.print_plugin("lorawan").await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // `cargo test --benches` runs this binary without `--bench`; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let hub = HubProcess::start(Launch::new(dir.path())).await?;
    coap(&hub).await?;
    lorawan(&hub).await?;
    hub.stop()?;
    Ok(())
}
