//! Federation lag: a Fujisawa hub takes 10,000 updates/s over HTTP while a Santander hub mirrors them through a
//! federation link; the lag of each update is measured on Santander's own event stream, from the timestamp
//! Fujisawa gave it on arrival to the moment Santander's stream delivered the imported copy. Both hubs are the
//! real release binary on this machine, SQLite with `synchronous = full`.
//!
//! Run: `cargo bench -p hub-e2e --bench federation`. Prints the rate reached, the lag percentiles, and whether
//! every update arrived exactly once; asserts nothing about speed.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use hub_e2e::{
    HubProcess, Launch, client,
    stream::{latencies, summary},
};
use serde_json::{Value, json};

const RATE: usize = 10_000;
const BATCH: usize = 500;
const SECONDS: usize = 10;
const PROVIDERS: usize = 100;

#[tokio::main]
async fn main() {
    let fujisawa_dir = tempfile::tempdir().unwrap();
    let fujisawa = HubProcess::start(Launch::new(fujisawa_dir.path())).await.expect("starting the Fujisawa hub");
    // Declare the providers first, so the link's snapshot has them all.
    post(&fujisawa, batch(0, PROVIDERS)).await;

    let santander_dir = tempfile::tempdir().unwrap();
    let config = santander_dir.path().join("hub.toml");
    let text = format!(
        "[policy]\ndomain = \"santander\"\n\n[[federation.peers]]\nname = \"fujisawa\"\nurl = \"{}\"\nimport = [\"bench-*\"]\ntoken_env = \"FUJISAWA_TOKEN\"\nreconnect_max_secs = 1\n",
        fujisawa.base
    );
    std::fs::write(&config, text).unwrap();
    let mut launch = Launch::new(santander_dir.path());
    launch.args = vec!["--config".into(), config.display().to_string()];
    launch.admin = Some("hub_stdr-admin-token-0123456789abcdefghijklmno");
    launch.env = vec![("FUJISAWA_TOKEN".into(), fujisawa.admin.clone())];
    let santander = HubProcess::start(launch).await.expect("starting the Santander hub");
    for _ in 0..300 {
        let (_, peers) = santander.get("/api/v1/federation/peers").await.unwrap();
        if peers["peers"][0]["state"] == "connected" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stream = client()
        .get(format!("{}/api/v1/events?provider=fujisawa.bench-*", santander.base))
        .bearer_auth(&santander.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let total = RATE * SECONDS;
    let mut seen: HashSet<u64> = HashSet::with_capacity(total);
    let mut duplicates = 0usize;
    let reader = tokio::spawn(async move {
        let lags = latencies(stream, total, Duration::from_secs(10), |event, received| {
            let n = event.get("value")?.as_u64()?;
            if n < PROVIDERS as u64 {
                return None; // the declaration batch
            }
            if !seen.insert(n) {
                duplicates += 1;
            }
            let ts = hub_model_timestamp_us(event.get("timestamp")?.as_str()?)?;
            Some(received - ts)
        })
        .await;
        (lags, duplicates)
    });

    // The load: BATCH-update requests at RATE updates/s, values numbered from PROVIDERS on.
    let started = Instant::now();
    let per_second = RATE / BATCH;
    let mut next = PROVIDERS;
    for tick in 0..SECONDS * per_second {
        let due = started + Duration::from_secs_f64(tick as f64 / per_second as f64);
        tokio::time::sleep_until(due.into()).await;
        post(&fujisawa, batch(next, BATCH)).await;
        next += BATCH;
    }
    let sent_in = started.elapsed();
    let (lags, duplicates) = reader.await.unwrap();
    let (_, peers) = santander.get("/api/v1/federation/peers").await.unwrap();

    println!("federation lag, Fujisawa ingest -> Santander stream, {total} updates sent in {sent_in:.1?}");
    println!(
        "  offered {:.0} updates/s; received {} of {total}, {duplicates} duplicates",
        total as f64 / sent_in.as_secs_f64(),
        lags.len()
    );
    println!("  lag {}", summary(&lags));
    let link = &peers["peers"][0];
    println!(
        "  link: state {}, updates {}, skipped {}, lag over its last 4096: p50 {} ms, p99 {} ms",
        link["state"], link["updates"], link["duplicates_skipped"], link["lag_ms"]["p50"], link["lag_ms"]["p99"]
    );
    // A hub still busy with the load may take a while to stop; the numbers are printed already.
    if let Err(e) = santander.stop() {
        eprintln!("stopping the Santander hub: {e}");
    }
    if let Err(e) = fujisawa.stop() {
        eprintln!("stopping the Fujisawa hub: {e}");
    }
}

/// `count` updates numbered from `first`, spread over the bench providers.
fn batch(first: usize, count: usize) -> Value {
    let updates: Vec<Value> = (first..first + count)
        .map(|n| json!({"provider": format!("bench-{}", n % PROVIDERS), "service": "env", "resource": "level", "value": n}))
        .collect();
    json!({ "updates": updates })
}

async fn post(hub: &HubProcess, body: Value) {
    let res = client()
        .post(format!("{}/api/v1/ingest", hub.base))
        .bearer_auth(&hub.admin)
        .json(&body)
        .send()
        .await
        .expect("ingest");
    assert!(res.status().is_success(), "{}", res.text().await.unwrap_or_default());
}

/// µs since the epoch of an RFC 3339 timestamp.
fn hub_model_timestamp_us(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros())
}
