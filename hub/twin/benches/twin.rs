//! In-process benchmarks of the twin, without storage:
//! 1. updates/s through validation (model) + apply + bus publish, with one stream subscriber draining the bus;
//! 2. resident memory per resource with 1,000,000 resources loaded.
//!
//! Run: `cargo bench -p hub-twin --bench twin`

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use hub_bus::{Bus, Change, Received};
use hub_model::{ResourcePath, Timestamp, Update};
use hub_store::SqliteStore;
use hub_twin::Twin;
use serde_json::json;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db")).unwrap());
        let bus = Bus::new(4096);
        let twin = Arc::new(Twin::open(store, bus.clone()).await.unwrap());

        // A subscriber that counts every update it receives, as a stream would.
        let received = Arc::new(AtomicU64::new(0));
        let mut sub = bus.subscribe();
        let counter = received.clone();
        let drain = tokio::spawn(async move {
            loop {
                match sub.recv().await {
                    Received::Event(e) => {
                        if let Change::Updates(u) = &e.change {
                            counter.fetch_add(u.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Received::Lagged(_) => {}
                    Received::Closed => return,
                }
            }
        });

        // 1,000 providers x 10 resources, batches of 1,000 updates.
        let paths: Vec<ResourcePath> = (0..1000)
            .flat_map(|p| (0..10).map(move |r| format!("noise-{p}/sound/level{r}").parse().unwrap()))
            .collect();
        let batches: Vec<Vec<Update>> = (0..2_000)
            .map(|b| {
                (0..1000)
                    .map(|i| {
                        let n = b * 1000 + i;
                        Update {
                            path: paths[n % paths.len()].clone(),
                            value: json!(n as f64 * 0.5),
                            timestamp: Timestamp::from_micros(1_700_000_000_000_000 + n as i64),
                        }
                    })
                    .collect()
            })
            .collect();
        let total: usize = batches.iter().map(Vec::len).sum();
        let start = Instant::now();
        for batch in batches {
            let prepared = twin.prepare(batch).unwrap();
            twin.apply(prepared);
            tokio::task::yield_now().await;
        }
        let elapsed = start.elapsed();
        println!("| model + bus (no storage), batches of 1,000 | {:.0} updates/s | {total} updates in {elapsed:.2?} |", total as f64 / elapsed.as_secs_f64());
        // Let the subscriber catch up before reporting what it saw.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        println!("|   subscriber received | {} updates | drops are counted, never block ingest: {} |", received.load(Ordering::Relaxed), bus.stats().dropped.load(Ordering::Relaxed));
        drop(bus);
        drain.abort();

        // Memory: 1,000,000 resources (100,000 providers x 10 number sensors, each with a value).
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("mem.db")).unwrap());
        let twin = Twin::open(store, Bus::new(16)).await.unwrap();
        let before = rss_bytes();
        for p in 0..100_000 {
            let updates: Vec<Update> = (0..10)
                .map(|r| Update {
                    path: format!("meter-{p}/power/phase{r}").parse().unwrap(),
                    value: json!(230.0 + r as f64),
                    timestamp: Timestamp::from_micros(1_700_000_000_000_000),
                })
                .collect();
            let prepared = twin.prepare(updates).unwrap();
            twin.apply(prepared);
        }
        let after = rss_bytes();
        let (providers, resources) = twin.counts();
        println!(
            "| memory, {resources} resources in {providers} providers (incl. 5 admin resources each) | {:.0} bytes/resource | RSS +{:.1} MiB |",
            (after - before) as f64 / resources as f64,
            (after - before) as f64 / (1024.0 * 1024.0)
        );
    });
}
