//! CoAP requests per second through the endpoint: confirmable `POST /up/bench-N/s/r` with a JSON payload, each
//! parsed, de-duplicated, authorised, checked (JSON well-formedness), handed to a pump over the bounded
//! channel, dispatched (here: a pump that answers "delivered to one plugin" at once, so the number is the
//! transport's own ceiling) and answered 2.04 in a piggybacked ACK.
//!
//! The load generator is Rust on coap-lite: `COAP_BENCH_CLIENTS` UDP sockets, each keeping a window of
//! `COAP_BENCH_WINDOW` confirmable requests outstanding, `COAP_BENCH_REQUESTS` requests in all. A request with
//! no answer within a second counts as lost (UDP may drop under load) and frees its slot. Latency is from send
//! to ACK, per request.
//!
//! `cargo bench -p hub-transport-coap --bench requests`

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use coap_lite::{MessageClass, MessageType, Packet, RequestType, ResponseType};
use hub_runtime::DispatchOutcome;
use hub_transport_coap::wire::{self, format, option};
use hub_transport_coap::{CoapConfig, CoapTransport, Delivery, StaticDeviceAuth};
use tokio::net::UdpSocket;

/// How long a request may wait for its answer before it counts as lost.
const LOST_AFTER: Duration = Duration::from_secs(1);
/// The longest one run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Default)]
struct ClientResult {
    ok: usize,
    other: usize,
    lost: usize,
    latencies_us: Vec<u64>,
}

fn request_bytes(client: usize, mid: u16) -> Vec<u8> {
    let mut packet = Packet::new();
    packet.header.set_version(1);
    packet.header.set_type(MessageType::Confirmable);
    packet.header.code = MessageClass::Request(RequestType::Post);
    packet.header.message_id = mid;
    packet.set_token(mid.to_be_bytes().to_vec());
    for segment in ["up", &format!("bench-{client}"), "power", "w"] {
        wire::add(&mut packet, option::URI_PATH, segment.as_bytes().to_vec());
    }
    wire::add_uint(&mut packet, option::CONTENT_FORMAT, u64::from(format::JSON));
    packet.payload = br#"{"value": 230.5, "timestamp": 1700000000}"#.to_vec();
    wire::encode(&packet)
}

async fn client(server: SocketAddr, id: usize, requests: usize, window: usize) -> Result<ClientResult> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let mut result = ClientResult { latencies_us: Vec::with_capacity(requests), ..ClientResult::default() };
    let mut outstanding: HashMap<u16, Instant> = HashMap::with_capacity(window * 2);
    let mut next_mid: u16 = rand::random();
    let mut sent = 0usize;
    let mut buf = vec![0u8; 2048];
    while result.ok + result.other + result.lost < requests {
        while outstanding.len() < window && sent < requests {
            next_mid = next_mid.wrapping_add(1);
            socket.send_to(&request_bytes(id, next_mid), server).await?;
            outstanding.insert(next_mid, Instant::now());
            sent += 1;
        }
        match tokio::time::timeout(LOST_AFTER, socket.recv_from(&mut buf)).await {
            Ok(received) => {
                let (len, _) = received?;
                let Ok(packet) = wire::parse(&buf[..len]) else { continue };
                let Some(started) = outstanding.remove(&packet.header.message_id) else { continue };
                if packet.header.code == MessageClass::Response(ResponseType::Changed) {
                    result.ok += 1;
                    result.latencies_us.push(started.elapsed().as_micros() as u64);
                } else {
                    result.other += 1;
                }
            }
            Err(_) => {
                let now = Instant::now();
                let before = outstanding.len();
                outstanding.retain(|_, started| now.duration_since(*started) < LOST_AFTER);
                result.lost += before - outstanding.len();
            }
        }
    }
    Ok(result)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(requests: usize, clients: usize, window: usize) -> Result<()> {
    let config = CoapConfig { listen: "127.0.0.1:0".parse()?, max_inflight: 4096, ..CoapConfig::default() };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Delivery>(4096);
    let transport = CoapTransport::start(&config, Arc::new(StaticDeviceAuth::new()), tx).await?;
    let server = transport.local_addr().context("the endpoint runs")?;
    // The pump: what `hub serve` runs, with a dispatch that costs nothing.
    tokio::spawn(async move {
        while let Some(delivery) = rx.recv().await {
            let (_message, reply) = delivery.into_parts();
            reply.send(DispatchOutcome { delivered: 1, dropped: 0 });
        }
    });

    // Warm up (sockets, allocations), then measure.
    client(server, usize::MAX, 2_000.min(requests), window).await?;
    let started = Instant::now();
    let per_client = requests / clients;
    let tasks: Vec<_> = (0..clients).map(|id| tokio::spawn(client(server, id, per_client, window))).collect();
    let mut total = ClientResult::default();
    for task in tasks {
        let r = task.await??;
        total.ok += r.ok;
        total.other += r.other;
        total.lost += r.lost;
        total.latencies_us.extend(r.latencies_us);
    }
    let elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    let stats = transport.stats();
    println!(
        "coap requests: {} clients x window {window}: {} answered 2.04 in {:.2} s = {:.0} req/s; \
         latency p50 {} us, p99 {} us, max {} us; other codes {}, lost {}; server: requests_in {}, duplicates {}",
        clients,
        total.ok,
        elapsed.as_secs_f64(),
        total.ok as f64 / elapsed.as_secs_f64(),
        percentile(&total.latencies_us, 0.50),
        percentile(&total.latencies_us, 0.99),
        total.latencies_us.last().copied().unwrap_or(0),
        total.other,
        total.lost,
        stats.requests_in,
        stats.duplicates,
    );
    transport.shutdown();
    Ok(())
}

fn main() -> Result<()> {
    let requests = env_usize("COAP_BENCH_REQUESTS", 200_000);
    let clients = env_usize("COAP_BENCH_CLIENTS", 4).max(1);
    let window = env_usize("COAP_BENCH_WINDOW", 32).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        tokio::time::timeout(RUN_TIMEOUT, async {
            run(requests, clients, window).await?;
            // One client, one request at a time: the latency floor.
            run(requests / 20, 1, 1).await
        })
        .await
        .context("the benchmark took too long")?
    })
}
