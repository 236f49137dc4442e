//! XMPP (SOX) end to end against the real (release) hub binary: a real Prosody (STARTTLS, the publish-subscribe
//! component keeping items in memory) and slixmpp trucks publishing SOX data items, followed by `hub serve` as
//! a client and mapped by the official `xmpp` adapter. This is Fujisawa's load: `XMPP_TRUCKS` trucks (default
//! 100), each publishing `XMPP_RATE` items a second (default 100) for `XMPP_SECONDS` seconds (default 10); each
//! item carries three readings (speed, PM2.5, and its send time in µs).
//!
//! The trucks are slixmpp clients split over `XMPP_PROCESSES` Python processes (default 2).
//!
//! Reports: items the trucks sent and the server confirmed, items the hub received, items/s until the adapter
//! applied them all (durable in SQLite by then), send → SSE event latency p50/p99 of every `sent_us` reading,
//! and the adapter's counters.
//!
//! Run: `cargo bench -p hub-e2e --bench xmpp` (needs Debian `prosody` and PyPI `slixmpp`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hub_e2e::{
    HubProcess, Launch,
    prosody::{Prosody, hub_server_entry, run_sox_device_at},
    stream::{latencies, summary},
};
use serde_json::{Value, json};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn xmpp_counters(hub: &HubProcess) -> Result<Value> {
    let (_, transports) = hub.get("/api/v1/transports").await?;
    transports
        .as_array()
        .and_then(|list| list.iter().find(|t| t["name"] == "xmpp"))
        .map(|t| t["counters"].clone())
        .context("no xmpp transport")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // `cargo test --benches` runs this binary without `--bench`; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let (trucks, rate, seconds) = (env_u64("XMPP_TRUCKS", 100), env_u64("XMPP_RATE", 100), env_u64("XMPP_SECONDS", 10));
    let server = Prosody::start(true)?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, hub_server_entry(&server, "fujisawa", 500))?;
    let mut launch = Launch::new(dir.path());
    launch.args = vec!["--config".into(), config.display().to_string()];
    let hub = HubProcess::start(launch).await?;

    let expected = trucks * rate * seconds;
    let processes = env_u64("XMPP_PROCESSES", 2).clamp(1, trucks);
    // The trucks connect first and start publishing together, about 2 s + 50 ms per truck after launch
    // (`sox_device.py load`); the stream opens just before that, so that its idle timeout only ends it after
    // the load.
    let start_delay = Duration::from_millis(1_000 + trucks.div_ceil(processes) * 50);
    let (events_hub, idle) = (hub.base.clone(), Duration::from_secs(10));
    let admin = hub.admin.clone();
    let reader = tokio::spawn(async move {
        tokio::time::sleep(start_delay).await;
        let events = hub_e2e::client()
            .get(format!("{events_hub}/api/v1/events?provider=truck-*&resource=sent_us"))
            .bearer_auth(admin)
            .send()
            .await
            .expect("the event stream");
        latencies(events, expected as usize, idle, |event, received| {
            event["value"].as_i64().map(|sent| received - sent)
        })
        .await
    });
    let before = hub.plugin_stat("xmpp", "updates").await?;
    println!(
        "xmpp: {trucks} trucks × {rate} items/s × {seconds} s = {expected} items (3 readings each), published by \
         {processes} slixmpp processes"
    );
    let started = Instant::now();
    let mut loads = Vec::new();
    for p in 0..processes {
        let share = trucks / processes + u64::from(p < trucks % processes);
        let args = [
            "load".to_owned(),
            "--prefix".to_owned(),
            format!("truck-{p}-"),
            "--devices".to_owned(),
            share.to_string(),
            "--rate".to_owned(),
            rate.to_string(),
            "--seconds".to_owned(),
            seconds.to_string(),
        ];
        let (address, ca) = (server.address(), server.ca_file());
        loads.push(tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_sox_device_at(&address, &ca, &args)
        }));
    }
    let mut report = json!({"sent": 0, "acked": 0, "errors": 0, "seconds": 0.0});
    for load in loads {
        let out = load.await??;
        let one: Value = serde_json::from_str(out.lines().last().context("no report from the trucks")?)?;
        for key in ["sent", "acked", "errors"] {
            report[key] = json!(report[key].as_u64().unwrap_or(0) + one[key].as_u64().unwrap_or(0));
        }
        let longest = report["seconds"].as_f64().unwrap_or(0.0).max(one["seconds"].as_f64().unwrap_or(0.0));
        report["seconds"] = json!(longest);
    }
    let sent = report["sent"].as_u64().context("sent")?;
    println!(
        "xmpp: trucks sent {sent} items in {} s ({:.0} items/s offered), server confirmed {}, errors {}",
        report["seconds"],
        sent as f64 / report["seconds"].as_f64().unwrap_or(1.0),
        report["acked"],
        report["errors"]
    );

    // Every item is applied once its three readings are (each truck's meta adds no updates: sensors are
    // declared with their first values).
    let want = sent * 3;
    let (applied, done_at) = hub.wait_applied("xmpp", before, want, Duration::from_secs(10)).await?;
    let elapsed = done_at.duration_since(started).as_secs_f64();
    let counters = xmpp_counters(&hub).await?;
    println!(
        "xmpp: hub received {} items, applied {} of {want} readings; {:.0} items/s from the first publish to the \
         last commit",
        counters["items_in"],
        applied,
        applied as f64 / 3.0 / elapsed
    );
    let measured = reader.await?;
    println!("xmpp: publish → SSE event ({} readings): {}", measured.len(), summary(&measured));
    hub.print_plugin("xmpp").await?;
    println!("xmpp: transport counters {counters}");
    hub.stop()?;
    drop(server);
    Ok(())
}
