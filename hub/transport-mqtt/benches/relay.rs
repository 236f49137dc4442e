//! The brokers' own relay rate, publisher → broker → subscriber with no hub in the path: the ceiling any MQTT
//! intake of the hub can reach. Measured for the embedded broker (rumqttd, on a free loopback port) and for the
//! system Mosquitto on 127.0.0.1:1883, with rumqttc clients at QoS 0.
//!
//! `cargo bench -p hub-transport-mqtt --bench relay` (`RELAY_MESSAGES` and `RELAY_PAYLOAD` override the counts).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hub_transport_mqtt::{BrokerConfig, EmbeddedBroker, StaticDeviceAuth};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

/// The longest one run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Outcome {
    sent: usize,
    received: usize,
    elapsed: Duration,
}

async fn relay(addr: SocketAddr, messages: usize, payload_bytes: usize, tag: &str) -> Result<Outcome> {
    let topic = format!("bench/relay/{tag}/{}", std::process::id());
    let client_options = |role: &str| {
        let mut options =
            MqttOptions::new(format!("bench-{role}-{tag}-{}", std::process::id()), addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(1 << 20, 1 << 20);
        options
    };

    let (sub, mut sub_loop) = AsyncClient::new(client_options("sub"), 1024);
    sub.subscribe(&topic, QoS::AtMostOnce).await?;
    // Wait for the SUBACK so no message is published before the subscription exists.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub_loop.poll()).await.context("SUBACK timeout")?? {
            Event::Incoming(Incoming::SubAck(_)) => break,
            _ => continue,
        }
    }
    let receiver = tokio::spawn(async move {
        let mut received = 0usize;
        let mut last = Instant::now();
        let idle = Duration::from_secs(3);
        while received < messages {
            match tokio::time::timeout(idle, sub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::Publish(_)))) => {
                    received += 1;
                    last = Instant::now();
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("subscriber connection error: {e}");
                    break;
                }
                // Nothing for a while: what was lost is lost.
                Err(_) => break,
            }
        }
        (received, last)
    });

    let (publisher, mut pub_loop) = AsyncClient::new(client_options("pub"), 1024);
    let driver = tokio::spawn(async move {
        loop {
            if pub_loop.poll().await.is_err() {
                break;
            }
        }
    });
    let payload = vec![0x5a_u8; payload_bytes];
    let start = Instant::now();
    for _ in 0..messages {
        publisher.publish(&topic, QoS::AtMostOnce, false, payload.clone()).await?;
    }
    let (received, last) = tokio::time::timeout(RUN_TIMEOUT, receiver).await.context("run timeout")??;
    driver.abort();
    Ok(Outcome { sent: messages, received, elapsed: last.saturating_duration_since(start) })
}

fn report(name: &str, outcome: &Outcome, payload_bytes: usize) {
    let secs = outcome.elapsed.as_secs_f64().max(1e-9);
    println!(
        "{name:<28} sent {:>8}  received {:>8} ({:>5.1}%)  {:>8.2} s  {:>10.0} msgs/s  {:>7.1} MB/s",
        outcome.sent,
        outcome.received,
        100.0 * outcome.received as f64 / outcome.sent.max(1) as f64,
        secs,
        outcome.received as f64 / secs,
        (outcome.received * payload_bytes) as f64 / secs / 1e6,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // `cargo test --benches` runs this binary with `--bench`-less arguments; keep that quick.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return Ok(());
    }
    let messages = env_usize("RELAY_MESSAGES", 200_000);
    let payload_bytes = env_usize("RELAY_PAYLOAD", 64);
    println!("relay: {messages} messages of {payload_bytes} bytes, QoS 0, one publisher and one subscriber");

    // The hub's own link subscribes to a filter nobody publishes on, so it costs the broker nothing.
    let config = BrokerConfig {
        listen: "127.0.0.1:0".parse()?,
        subscribe: vec!["bench/hub-idle".to_owned()],
        ..BrokerConfig::default()
    };
    let (tx, _rx) = mpsc::channel(1);
    let broker = EmbeddedBroker::start(&config, Arc::new(StaticDeviceAuth::new()), tx).await?;
    let embedded = relay(broker.local_addr(), messages, payload_bytes, "embedded").await?;
    report("embedded broker (rumqttd)", &embedded, payload_bytes);

    let mosquitto: SocketAddr = "127.0.0.1:1883".parse()?;
    if std::net::TcpStream::connect_timeout(&mosquitto, Duration::from_secs(1)).is_err() {
        bail!("Mosquitto is not listening on {mosquitto}: `apt-get install -y mosquitto` and start it");
    }
    let outcome = relay(mosquitto, messages, payload_bytes, "mosquitto").await?;
    report("mosquitto (system)", &outcome, payload_bytes);
    Ok(())
}
