//! MQTT end to end against the real (release) hub binary: a load generator publishes readings over MQTT →
//! broker → the official MQTT adapter (sandboxed WASM) → model → durable history, with the embedded broker and
//! with the system Mosquitto (bridged), and in the same run each broker's own relay rate (publisher → broker →
//! subscriber, no hub) as the ceiling.
//!
//! For each broker it reports:
//! - relay: messages/s through the broker alone;
//! - throughput: `MQTT_MESSAGES` readings (default 200,000) published as fast as one client can, over 1,000
//!   providers; messages/s until the adapter's `updates` counter has them all (each one is in SQLite by then);
//! - latency: readings paced at `MQTT_RATE` per second (default 10,000) for 5 s; publish → SSE event p50/p99
//!   (the reading's value is its send time, so the stream side needs no bookkeeping).
//!
//! Run: `cargo bench -p hub-e2e --bench mqtt` (needs Mosquitto on 127.0.0.1:1883).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hub_e2e::{
    HubProcess, Launch,
    stream::{latencies, now_us, summary},
};
use hub_transport_mqtt::{BrokerConfig, EmbeddedBroker, StaticDeviceAuth};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

const RUN_TIMEOUT: Duration = Duration::from_secs(180);
const PROVIDERS: usize = 1_000;
const MOSQUITTO: &str = "127.0.0.1:1883";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn options(addr: SocketAddr, role: &str) -> MqttOptions {
    let mut options =
        MqttOptions::new(format!("bench-{role}-{}", std::process::id()), addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(1 << 20, 1 << 20);
    options
}

/// A publisher whose event loop runs in its own task.
async fn publisher(addr: SocketAddr, role: &str) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let (client, mut event_loop) = AsyncClient::new(options(addr, role), 4096);
    // Like the MQTT clients devices use, send each publish at once: with Nagle's algorithm a small publish waits
    // for the broker's (delayed) ACK of the previous one, which puts tens of milliseconds into the latencies.
    event_loop.network_options.set_tcp_nodelay(true);
    let driver = tokio::spawn(async move { while event_loop.poll().await.is_ok() {} });
    (client, driver)
}

/// Publisher → broker → subscriber on one topic, QoS 0: messages/s received.
async fn relay(addr: SocketAddr, messages: usize, tag: &str) -> Result<(usize, f64)> {
    let topic = format!("bench/relay/{tag}/{}", std::process::id());
    let (sub, mut sub_loop) = AsyncClient::new(options(addr, &format!("relay-sub-{tag}")), 1024);
    sub.subscribe(&topic, QoS::AtMostOnce).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub_loop.poll()).await.context("SUBACK timeout")?? {
            Event::Incoming(Incoming::SubAck(_)) => break,
            _ => continue,
        }
    }
    let receiver = tokio::spawn(async move {
        let (mut received, mut last) = (0usize, Instant::now());
        while received < messages {
            match tokio::time::timeout(Duration::from_secs(3), sub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::Publish(_)))) => {
                    received += 1;
                    last = Instant::now();
                }
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        (received, last)
    });
    let (client, driver) = publisher(addr, &format!("relay-pub-{tag}")).await;
    let payload = vec![0x5a_u8; 64];
    let start = Instant::now();
    for _ in 0..messages {
        client.publish(&topic, QoS::AtMostOnce, false, payload.clone()).await?;
    }
    let (received, last) = tokio::time::timeout(RUN_TIMEOUT, receiver).await.context("relay timeout")??;
    driver.abort();
    Ok((received, received as f64 / last.saturating_duration_since(start).as_secs_f64().max(1e-9)))
}

/// Publishes `messages` readings as fast as one client can; messages/s until the adapter has applied them.
async fn throughput(hub: &HubProcess, addr: SocketAddr, messages: usize, tag: &str) -> Result<(u64, f64)> {
    let before = hub.plugin_stat("mqtt", "updates").await?;
    let (client, driver) = publisher(addr, &format!("load-{tag}")).await;
    let topics: Vec<String> = (0..PROVIDERS).map(|p| format!("hub/up/bench-{tag}-{p}/power/watts")).collect();
    let start = Instant::now();
    for i in 0..messages {
        client.publish(&topics[i % PROVIDERS], QoS::AtMostOnce, false, i.to_string()).await?;
    }
    let published = start.elapsed();
    let (delivered, done_at) = hub.wait_applied("mqtt", before, messages as u64, Duration::from_secs(5)).await?;
    driver.abort();
    let secs = done_at.saturating_duration_since(start).as_secs_f64().max(1e-9);
    println!("    published in {:.2} s by the load generator", published.as_secs_f64());
    Ok((delivered, delivered as f64 / secs))
}

/// Publishes at `rate` per second for 5 s; publish → SSE latencies in microseconds, sorted.
async fn latency(hub: &HubProcess, addr: SocketAddr, rate: usize, tag: &str) -> Result<Vec<i64>> {
    let provider = format!("lat-{tag}");
    let total = rate * 5;
    let response = hub.events(&format!("provider={provider}")).await;
    let reader = tokio::spawn(latencies(response, total, Duration::from_secs(5), |event, received| {
        event["value"].as_i64().map(|sent| received - sent)
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (client, driver) = publisher(addr, &format!("lat-{tag}")).await;
    // Ten resources so that consecutive readings are not on one resource.
    let topics: Vec<String> = (0..10).map(|r| format!("hub/up/{provider}/probe/r{r}")).collect();
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        client.publish(&topics[i % topics.len()], QoS::AtMostOnce, false, now_us().to_string()).await?;
    }
    let measured = tokio::time::timeout(RUN_TIMEOUT, reader).await.context("latency run timeout")??;
    driver.abort();
    Ok(measured)
}

async fn run(label: &str, hub: &HubProcess, addr: SocketAddr, relay_rate: f64) -> Result<()> {
    let messages = env_usize("MQTT_MESSAGES", 200_000);
    let rate = env_usize("MQTT_RATE", 10_000);
    let tag = label.split_whitespace().next().unwrap_or("x");
    let (delivered, per_s) = throughput(hub, addr, messages, tag).await?;
    println!(
        "{label:<26} end to end: {delivered}/{messages} applied, {per_s:>9.0} msgs/s ({:.0}% of the relay rate)",
        100.0 * per_s / relay_rate
    );
    let measured = latency(hub, addr, rate, tag).await?;
    println!(
        "{label:<26} at {rate}/s: {} of {} on the stream, publish → SSE {}",
        measured.len(),
        rate * 5,
        summary(&measured)
    );
    let (_, info) = hub.get("/api/v1/plugins/mqtt").await?;
    println!(
        "{label:<26} adapter: calls {}, errors {}, dropped {}, call p50 {} µs, p99 {} µs",
        info["stats"]["calls"],
        info["stats"]["errors"],
        info["stats"]["dropped"],
        info["stats"]["latency_p50_us"],
        info["stats"]["latency_p99_us"]
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // `cargo test --benches` runs this binary without `--bench`; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let mosquitto: SocketAddr = MOSQUITTO.parse()?;
    if std::net::TcpStream::connect_timeout(&mosquitto, Duration::from_secs(1)).is_err() {
        bail!("Mosquitto is not listening on {mosquitto}: `apt-get install -y mosquitto` and start it");
    }
    let relay_messages = env_usize("RELAY_MESSAGES", 200_000);

    // The brokers alone. The standalone embedded broker's hub link subscribes to a topic nobody uses.
    let config = BrokerConfig {
        listen: "127.0.0.1:0".parse()?,
        subscribe: vec!["bench/hub-idle".to_owned()],
        ..BrokerConfig::default()
    };
    let (tx, _rx) = mpsc::channel(1);
    let broker = EmbeddedBroker::start(&config, Arc::new(StaticDeviceAuth::new()), tx).await?;
    let (received, embedded_relay) = relay(broker.local_addr(), relay_messages, "embedded").await?;
    println!("embedded broker relay:     {received}/{relay_messages} received, {embedded_relay:>9.0} msgs/s");
    broker.shutdown();
    let (received, mosquitto_relay) = relay(mosquitto, relay_messages, "mosquitto").await?;
    println!("mosquitto relay:           {received}/{relay_messages} received, {mosquitto_relay:>9.0} msgs/s");

    // The hub with its embedded broker.
    let dir = tempfile::tempdir()?;
    let hub = HubProcess::start(Launch::new(dir.path())).await?;
    let addr: SocketAddr = format!("127.0.0.1:{}", hub.mqtt_port).parse()?;
    run("embedded broker", &hub, addr, embedded_relay).await?;
    hub.stop()?;

    // The hub bridged to Mosquitto at QoS 0.
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[[mqtt.bridges]]\nname = \"bench\"\nurl = \"mqtt://{MOSQUITTO}\"\nclient_id = \"hub-bench-{}\"\nqos = 0\n\
             subscribe = [\"hub/up/#\"]\n",
            std::process::id()
        ),
    )?;
    let mut launch = Launch::new(dir.path());
    launch.args = vec!["--config".into(), config.display().to_string()];
    let hub = HubProcess::start(launch).await?;
    // Let the bridge connect and subscribe.
    tokio::time::sleep(Duration::from_secs(2)).await;
    run("mosquitto (bridged)", &hub, mosquitto, mosquitto_relay).await?;
    hub.stop()?;
    Ok(())
}
