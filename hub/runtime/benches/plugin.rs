//! Plugin runtime benchmarks (a report, not assertions):
//! - per-call overhead: the echo fixture driven with batches of 1 and of 256 messages;
//! - a healthy plugin's rate alone, and next to a neighbour that loops until its deadline on every batch.
//!
//! Run: `cargo bench -p hub-runtime --bench plugin` (builds the wasm fixtures first).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use hub_plugin_sdk::abi::InboundMessage;
use serde_json::json;

fn msg(topic: &str, i: usize) -> InboundMessage {
    InboundMessage::mqtt(topic, i.to_string(), hub_model::Timestamp::now().as_micros())
}

async fn hub(max_batch: usize) -> anyhow::Result<Hub> {
    let dir = tempfile::tempdir()?;
    let mut config = host_config(dir.path());
    config.max_batch = max_batch;
    config.linger = Duration::from_millis(if max_batch == 1 { 0 } else { 2 });
    config.queue_capacity = 8192;
    // Keep a hostile neighbour restarting (not quarantined) so its cost is measured throughout.
    config.restart.max_failures = 1_000;
    let hub = Hub::open_with(dir, config).await?;
    let wasm = wasm("echo");
    hub.host.install(&manifest("echo", "0.1.0", &wasm, ECHO_CAPS), wasm, grant(ECHO_GRANT), None).await?;
    Ok(hub)
}

/// Sends `n` messages to echo and returns messages per second until all were counted, plus the p50/p99 call
/// latency.
async fn run(hub: &Hub, n: usize, offset: usize) -> (f64, u64, u64) {
    let start = Instant::now();
    for i in 0..n {
        hub.host.deliver("echo", msg("echo/bench", i)).await.expect("deliver");
    }
    let want = json!(offset + n);
    wait_for("bench messages", Duration::from_secs(600), || hub.value("echo-stats/data/count") == Some(want.clone()))
        .await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let stats = hub.host.get("echo").expect("echo").stats;
    (rate, stats.latency_p50_us, stats.latency_p99_us)
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        wasm_dir();
        println!("plugin runtime benchmarks (echo fixture; each call also ingests its updates into the twin/SQLite)");
        for batch in [1usize, 256] {
            let hub = hub(batch).await?;
            let n = if batch == 1 { 2_000 } else { 20_000 };
            let (rate, p50, p99) = run(&hub, n, 0).await;
            println!(
                "batch {batch:>3}: {rate:>10.0} msg/s end to end, call latency p50 {p50} µs p99 {p99} µs, {:.2} µs/msg in calls",
                p50 as f64 / batch as f64
            );
            hub.close().await;
        }

        // Long enough runs that the neighbour's 200 ms deadline is hit many times during the measurement.
        let n = 200_000;
        let hub = hub(256).await?;
        // A first run warms the model (its providers and resources exist afterwards), so both measured runs
        // start from the same state.
        run(&hub, n, 0).await;
        let (alone, _, _) = run(&hub, n, n).await;
        let looper = wasm("loop");
        let caps = "[capabilities.mqtt]\nsubscribe = [\"bad/#\"]\n[limits]\ntimeout_ms = 200\n";
        hub.host.install(&manifest("looper", "0.1.0", &looper, caps), looper, grant("[mqtt]\nsubscribe = [\"bad/#\"]"), None).await?;
        let host = hub.host.clone();
        let feeder = tokio::spawn(async move {
            // Keep the neighbour busy: a message every 10 ms, so a batch waits whenever it is back from a restart.
            for i in 0.. {
                host.deliver("looper", msg("bad/x", i)).await.expect("the neighbour stays accepting (not quarantined)");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        // Measure only once the neighbour is failing.
        wait_for("the neighbour's first failure", Duration::from_secs(30), || {
            hub.host.get("looper").is_some_and(|p| p.stats.errors > 0)
        })
        .await;
        let errors_before = hub.host.get("looper").expect("looper").stats.errors;
        let (with_looper, _, _) = run(&hub, n, 2 * n).await;
        let looper_stats = hub.host.get("looper").expect("looper");
        feeder.abort();
        println!(
            "healthy rate alone {alone:.0} msg/s; next to a looping neighbour {with_looper:.0} msg/s ({:+.1} %); the neighbour failed {} calls (deadline) during the run and is {}",
            (with_looper / alone - 1.0) * 100.0,
            looper_stats.stats.errors - errors_before,
            looper_stats.state,
        );
        hub.close().await;
        Ok(())
    })
}
