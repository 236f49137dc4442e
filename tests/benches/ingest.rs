//! `/ingest` over HTTP against the real (release) hub binary: batches of 1,000 updates, durable before the
//! answer, from several concurrent clients; SQLite (the embedded default) and PostgreSQL.
//!
//! Run: `cargo bench -p hub-e2e --bench ingest` (PostgreSQL at HUB_TEST_POSTGRES_URL or the local default).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hub_e2e::{HubProcess, Launch, client, postgres_config};
use serde_json::{Value, json};

const BATCH: usize = 1_000;
const CLIENTS: usize = 4;
const RUN: Duration = Duration::from_secs(10);

async fn run(label: &str, hub: &HubProcess) {
    // Bodies are serialised up front so the client spends its CPU on sending, not on JSON.
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..64)
            .map(|b| {
                let updates: Vec<Value> = (0..BATCH)
                    .map(|i| {
                        json!({"provider": format!("meter-{}", (b * BATCH + i) % 1000), "service": "power",
                               "resource": "watts", "value": (b * BATCH + i) as f64})
                    })
                    .collect();
                serde_json::to_vec(&json!({"updates": updates})).unwrap()
            })
            .collect(),
    );
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (bodies, done, stop, base, admin) =
            (bodies.clone(), done.clone(), stop.clone(), hub.base.clone(), hub.admin.clone());
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut lat = Vec::new();
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let res = http
                    .post(format!("{base}/api/v1/ingest"))
                    .bearer_auth(&admin)
                    .header("content-type", "application/json")
                    .body(bodies[i % bodies.len()].clone())
                    .send()
                    .await
                    .expect("request");
                assert!(res.status().is_success(), "{}", res.text().await.unwrap_or_default());
                lat.push(t.elapsed());
                done.fetch_add(BATCH as u64, Ordering::Relaxed);
                i += CLIENTS;
            }
            lat
        }));
    }
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "| /ingest, {label}, batches of {BATCH}, {CLIENTS} clients | {:.0} updates/s | batch latency p50 {:.1?}, p99 {:.1?} |",
        done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        p(0.5),
        p(0.99)
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.expect("starting the hub (SQLite)");
    run("SQLite (synchronous=full)", &hub).await;
    hub.stop().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (config, _schema) = postgres_config(dir.path());
    let launch = Launch { args: vec!["--config".into(), config.display().to_string()], ..Launch::new(dir.path()) };
    match HubProcess::start(launch).await {
        Ok(hub) => {
            run("PostgreSQL", &hub).await;
            hub.stop().unwrap();
        }
        Err(e) => println!("| /ingest, PostgreSQL | not measured: {e} |"),
    }
}
