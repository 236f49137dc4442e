//! The transport against a real XMPP server: Prosody with a publish-subscribe component, and slixmpp devices
//! (see `hub_e2e::prosody`). Needs Debian `prosody` and PyPI `slixmpp`; a missing one fails the test and says
//! how to install it.

use std::time::Duration;

use hub_e2e::prosody::{self, PUBSUB, Prosody, run_sox_device, run_sox_device_at};
use hub_plugin_sdk::abi::{InboundMessage, OutboundMessage, transport};
use hub_runtime::Outbound;
use hub_transport_xmpp::{ServerConfig, XmppConfig, XmppTransport};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

fn config(server: &Prosody) -> XmppConfig {
    let mut entry = ServerConfig::new("city", &format!("{}@{}/hub", prosody::HUB_USER, prosody::DOMAIN), PUBSUB);
    entry.password = Some(prosody::PASSWORD.to_owned());
    entry.address = Some(server.address());
    entry.ca_file = Some(server.ca_file());
    entry.discover_interval_ms = 200;
    XmppConfig { servers: vec![entry] }
}

async fn next(rx: &mut mpsc::Receiver<InboundMessage>, what: &str) -> InboundMessage {
    tokio::time::timeout(WAIT, rx.recv()).await.unwrap_or_else(|_| panic!("no {what} in time")).expect("channel open")
}

/// Waits for the next message on `node`, skipping others (the meta fetched at subscription, say).
async fn next_on(rx: &mut mpsc::Receiver<InboundMessage>, node: &str) -> InboundMessage {
    loop {
        let message = next(rx, node).await;
        if message.address == node {
            return message;
        }
    }
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn device(server: &Prosody, args: Vec<String>) -> tokio::task::JoinHandle<String> {
    let (address, ca) = (server.address(), server.ca_file());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_sox_device_at(&address, &ca, &args).unwrap()
    })
}

/// A payload as text, with attribute quotes made single (the serializer picks its own).
fn text_of(message: &InboundMessage) -> String {
    String::from_utf8_lossy(&message.payload.0).replace('"', "'")
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_flow_in_over_starttls_and_plugins_publish_out() {
    let server = Prosody::start(true).unwrap();
    // The device's nodes exist before the hub connects: the hub finds them by listing the service, and fetches
    // the newest meta item it missed.
    run_sox_device(&server, &["meta", "--device", "truck-1", "--transducer", "speed,Speed,km/h,0,200"]).unwrap();

    let (tx, mut rx) = mpsc::channel(64);
    let xmpp = XmppTransport::start(&config(&server), tx).unwrap();
    xmpp.set_subscriptions(&strings(&["*_meta", "*_data"]));

    let meta = next_on(&mut rx, "truck-1_meta").await;
    assert_eq!(meta.transport, transport::XMPP);
    let text = text_of(&meta);
    assert!(text.starts_with("<device") && text.contains("id='speed'"), "{text}");
    assert_eq!(meta.metadata.get("server").map(String::as_str), Some("city"));
    assert_eq!(meta.metadata.get("service").map(String::as_str), Some(PUBSUB));
    wait_until("both nodes followed", || xmpp.links()[0].nodes == 2).await;
    assert!(xmpp.links()[0].connected);

    // A live item.
    run_sox_device(&server, &["data", "--device", "truck-1", "--value", "speed=41.5@2026-12-02T17:04:05+09:00"])
        .unwrap();
    let data = next_on(&mut rx, "truck-1_data").await;
    let text = text_of(&data);
    assert!(text.contains("typedValue='41.5'") && text.contains("2026-12-02T17:04:05+09:00"), "{text}");
    assert!(data.metadata.contains_key("item_id"), "{:?}", data.metadata);

    // A node created later is found by the next listing.
    run_sox_device(&server, &["meta", "--device", "truck-2", "--transducer", "pm25,PM2.5,ug/m3,0,1000"]).unwrap();
    next_on(&mut rx, "truck-2_meta").await;

    // A node that publishes under one item id again and again (the new item replaces the old): each is news.
    for level in ["10", "11"] {
        let xml = format!("<json xmlns='urn:xmpp:json:0'>{{\"level\": {level}}}</json>");
        run_sox_device(&server, &["raw", "--node", "truck-1_data", "--id", "current", "--xml", &xml]).unwrap();
        let item = next_on(&mut rx, "truck-1_data").await;
        // (text_of makes quotes single)
        assert!(text_of(&item).contains(&format!("'level': {level}")), "{}", text_of(&item));
        assert_eq!(item.metadata.get("item_id").map(String::as_str), Some("current"));
    }

    // A node no glob names is not followed.
    run_sox_device(&server, &["raw", "--node", "weather", "--xml", "<json xmlns='urn:xmpp:json:0'>{}</json>"]).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(xmpp.links()[0].nodes, 4, "truck-1 and truck-2, meta and data: {:?}", xmpp.links());

    // A forged event (not from the service) is dropped and counted.
    let hub_jid = format!("{}@{}", prosody::HUB_USER, prosody::DOMAIN);
    run_sox_device(&server, &["forge", "--to", &hub_jid, "--node", "truck-1_data", "--xml", "<data/>"]).unwrap();
    wait_until("the forgery is counted", || xmpp.stats().dropped_foreign == 1).await;

    // A plugin's publish reaches a subscriber of the node.
    let listener = device(&server, strings(&["listen", "--node", "truck-1_data", "--count", "1"]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let command = "<data><transducerSetValue id='speed' typedValue='30'/></data>";
    xmpp.send("xmpp", OutboundMessage::new(transport::XMPP, "truck-1_data", command.as_bytes().to_vec()))
        .await
        .unwrap();
    let heard = listener.await.unwrap();
    assert!(heard.contains("transducerSetValue") && heard.replace("\\\"", "'").contains("typedValue='30'"), "{heard}");
    wait_until("the publish is confirmed", || xmpp.stats().published == 1).await;
    // The hub hears its own publish too (it follows the node): the adapter ignores commands.
    let echo = next_on(&mut rx, "truck-1_data").await;
    assert!(text_of(&echo).contains("transducerSetValue"));

    // A malformed payload is refused at publish time and counted, and the link stays up.
    xmpp.send("xmpp", OutboundMessage::new(transport::XMPP, "truck-1_data", b"<a><b></a>".to_vec())).await.unwrap();
    wait_until("the bad publish is counted", || xmpp.stats().publish_errors == 1).await;
    assert!(xmpp.links()[0].connected);
    xmpp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_reconnected_and_its_nodes_followed_again() {
    let mut server = Prosody::start(true).unwrap();
    run_sox_device(&server, &["meta", "--device", "bus-7", "--transducer", "co2,CO2,ppm,0,5000"]).unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let xmpp = XmppTransport::start(&config(&server), tx).unwrap();
    xmpp.set_subscriptions(&strings(&["*_meta", "*_data"]));
    next_on(&mut rx, "bus-7_meta").await;

    // The server goes away (its nodes and subscriptions are in memory: they are gone too) and comes back.
    server.stop();
    wait_until("the loss is seen", || !xmpp.links()[0].connected).await;
    server.restart().unwrap();
    run_sox_device(&server, &["meta", "--device", "bus-7", "--transducer", "co2,CO2,ppm,0,5000"]).unwrap();
    wait_until("reconnected", || xmpp.links()[0].connected && xmpp.links()[0].nodes == 2).await;
    run_sox_device(&server, &["data", "--device", "bus-7", "--value", "co2=612"]).unwrap();
    let data = next_on(&mut rx, "bus-7_data").await;
    assert!(text_of(&data).contains("typedValue='612'"));
    let stats = xmpp.stats();
    assert!(stats.sessions >= 2 && stats.disconnects >= 1, "{stats:?}");
    xmpp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_published_while_the_link_is_down_are_caught_up_once() {
    let mut server = Prosody::start_persistent(true).unwrap();
    run_sox_device(&server, &["meta", "--device", "tram-3", "--transducer", "load,Load,%,0,100"]).unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let xmpp = XmppTransport::start(&config(&server), tx).unwrap();
    xmpp.set_subscriptions(&strings(&["*_data"]));
    wait_until("the data node followed", || xmpp.links()[0].nodes == 1).await;
    run_sox_device(&server, &["data", "--device", "tram-3", "--value", "load=1"]).unwrap();
    assert!(text_of(&next_on(&mut rx, "tram-3_data").await).contains("typedValue='1'"));

    // The server goes away; the link retries with a growing backoff. After the fourth failed attempt the next
    // one is 8 s away: the server comes back and two items are published while the hub is still away.
    server.stop();
    wait_until("four failed attempts", || xmpp.stats().connect_errors >= 4).await;
    server.restart().unwrap();
    run_sox_device(&server, &["data", "--device", "tram-3", "--value", "load=2"]).unwrap();
    run_sox_device(&server, &["data", "--device", "tram-3", "--value", "load=3"]).unwrap();
    // The link's next attempt is up to 16 s away (the backoff doubles up to 30 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while xmpp.stats().caught_up < 2 {
        assert!(tokio::time::Instant::now() < deadline, "not caught up: {:?} {:?}", xmpp.stats(), xmpp.links());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(text_of(&next_on(&mut rx, "tram-3_data").await).contains("typedValue='2'"));
    assert!(text_of(&next_on(&mut rx, "tram-3_data").await).contains("typedValue='3'"));
    let stats = xmpp.stats();
    assert_eq!((stats.caught_up, stats.catch_up_gaps), (2, 0), "{stats:?}");

    // Nothing is delivered twice, and live items flow again.
    run_sox_device(&server, &["data", "--device", "tram-3", "--value", "load=4"]).unwrap();
    assert!(text_of(&next_on(&mut rx, "tram-3_data").await).contains("typedValue='4'"));
    assert!(rx.try_recv().is_err(), "no item twice");
    xmpp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_published_before_a_new_node_is_found_are_not_lost() {
    let server = Prosody::start(true).unwrap();
    let mut config = config(&server);
    // The first listing finds nothing; the next is 15 s away, long after the device below is done.
    config.servers[0].discover_interval_ms = 15_000;
    let (tx, mut rx) = mpsc::channel(256);
    let xmpp = XmppTransport::start(&config, tx).unwrap();
    xmpp.set_subscriptions(&strings(&["*_data"]));
    wait_until("the session is up", || xmpp.links()[0].connected).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A truck appears and publishes 15 items before the hub knows its node exists (Prosody keeps the last 20 items
    // of a node by default: what a catch-up can recover).
    let out =
        run_sox_device(&server, &["load", "--prefix", "van-", "--devices", "1", "--rate", "15", "--seconds", "1"])
            .unwrap();
    let sent = out
        .lines()
        .last()
        .and_then(|line| line.split("\"sent\": ").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse::<u64>().ok()));
    let sent = sent.unwrap_or_else(|| panic!("no count in {out}"));
    assert!((10..=20).contains(&sent), "{out}");
    let mut speeds = Vec::new();
    while (speeds.len() as u64) < sent {
        let message = tokio::time::timeout(WAIT, rx.recv()).await.ok().flatten();
        let message = message.unwrap_or_else(|| panic!("{} of {sent}: {speeds:?}; {:?}", speeds.len(), xmpp.stats()));
        let text = text_of(&message);
        let speed = text
            .split("<transducerValue")
            .find(|element| element.contains("id='speed'"))
            .and_then(|element| element.split("typedValue='").nth(1))
            .and_then(|rest| rest.split('\'').next());
        speeds.push(speed.unwrap_or_else(|| panic!("{text}")).parse::<u64>().unwrap());
    }
    // Every item, once, in the order published.
    assert_eq!(speeds, (0..sent).collect::<Vec<_>>());
    let stats = xmpp.stats();
    assert_eq!((stats.caught_up, stats.catch_up_gaps, stats.duplicates), (sent, 0, 0), "{stats:?}");

    // Live items follow, and none comes twice.
    run_sox_device(&server, &["data", "--device", "van-0", "--value", "speed=77"]).unwrap();
    assert!(text_of(&next_on(&mut rx, "van-0_data").await).contains("typedValue='77'"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "no item twice");
    xmpp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_and_reported() {
    let server = Prosody::start(true).unwrap();
    let mut config = config(&server);
    // The system roots do not know the test CA.
    config.servers[0].ca_file = None;
    let (tx, _rx) = mpsc::channel(64);
    let xmpp = XmppTransport::start(&config, tx).unwrap();
    wait_until("the failure is reported", || xmpp.links()[0].last_error.is_some()).await;
    let link = &xmpp.links()[0];
    assert!(!link.connected);
    let error = link.last_error.clone().unwrap();
    assert!(error.contains("certificate") || error.contains("Certificate"), "{error}");
    assert_eq!(xmpp.stats().sessions, 0);
    xmpp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_starttls_is_refused() {
    let server = Prosody::start(false).unwrap();
    let mut config = config(&server);
    config.servers[0].ca_file = Some(std::path::PathBuf::from("/nonexistent/ca.pem"));
    let (tx, _rx) = mpsc::channel(64);
    let err = XmppTransport::start(&config, tx).err().expect("a missing ca_file stops the start");
    assert!(err.to_string().starts_with("xmpp.servers[0].ca_file"), "{err}");
    // Plaintext is allowed to a loopback server when the config says so.
    let mut config = self::config(&server);
    config.servers[0].tls = hub_transport_xmpp::TlsMode::None;
    config.servers[0].ca_file = None;
    let (tx, mut rx) = mpsc::channel(64);
    let xmpp = XmppTransport::start(&config, tx).unwrap();
    xmpp.set_subscriptions(&strings(&["*"]));
    run_sox_device(&server, &["raw", "--node", "plain-node", "--xml", "<x xmlns='urn:test'/>"]).unwrap();
    wait_until("connected in the clear", || xmpp.links()[0].connected).await;
    run_sox_device(&server, &["raw", "--node", "plain-node", "--xml", "<y xmlns='urn:test'/>"]).unwrap();
    let message = next_on(&mut rx, "plain-node").await;
    assert!(String::from_utf8_lossy(&message.payload.0).starts_with("<"));
    xmpp.shutdown().await;
}
