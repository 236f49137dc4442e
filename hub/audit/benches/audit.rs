//! Audit log throughput: entries recorded and made durable per second (checkpoints signed every 1,000
//! entries, as by default), and how fast a log of 1,000,000 entries verifies. Printed as a markdown table.
//!
//! `cargo bench -p hub-audit --bench audit`. PostgreSQL is measured when reachable at `HUB_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`), in a schema dropped afterwards.
//! `AUDIT_ENTRIES` changes the count (default 1,000,000).

use std::{sync::Arc, time::Instant};

use hub_audit::{AuditLog, AuditOptions, Decision, Entry, SigningKey, verify};
use hub_store::{PostgresStore, SqliteStore, Store};

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn entry(i: u64) -> Entry {
    Entry::new(
        format!("officer-{}@santander", i % 50),
        vec!["officer".into(), "care".into()],
        "read",
        format!("care-{}/vitals/pulse", i % 2_000),
        if i.is_multiple_of(10) { Decision::Denied } else { Decision::Allowed },
    )
    .owned_by(Some(format!("citizen-{}", i % 2_000)))
    .with_detail("personal data")
}

/// Records `n` entries as fast as the log takes them, then waits until they are durable.
async fn record(store: Arc<dyn Store>, n: u64) -> f64 {
    let log = AuditLog::open(store, SigningKey::from_bytes(&[3; 32]), AuditOptions::default()).await.unwrap();
    let started = Instant::now();
    // In rounds that fit the writer's queue, so that no entry waits in a task of its own (the overflow path).
    for round in (0..n).step_by(50_000) {
        for i in round..(round + 50_000).min(n) {
            log.record(entry(i));
        }
        log.flush().await.unwrap();
    }
    assert_eq!(log.flush().await.unwrap(), n);
    let rate = n as f64 / started.elapsed().as_secs_f64();
    log.close().await;
    rate
}

async fn verify_rate(store: &dyn Store, n: u64) -> (f64, usize) {
    let started = Instant::now();
    let report = verify(store, &SigningKey::from_bytes(&[3; 32]).verifying_key(), &[]).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.entries, n);
    (n as f64 / started.elapsed().as_secs_f64(), report.checkpoints)
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("AUDIT_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    println!("| backend | entries | recorded and durable | verified | checkpoints verified |");
    println!("|---|---|---|---|---|");

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("hub.db")).unwrap());
    let recorded = record(Arc::clone(&store), n).await;
    let (verified, checkpoints) = verify_rate(&*store, n).await;
    store.close().await.unwrap();
    println!("| SQLite (synchronous = full) | {n} | {recorded:.0}/s | {verified:.0}/s | {checkpoints} |");

    let url = std::env::var("HUB_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
    let schema = format!("auditbench_{}", std::process::id());
    match PostgresStore::connect(&url, Some(&schema)).await {
        Ok(pg) => {
            let store: Arc<dyn Store> = Arc::new(pg);
            let recorded = record(Arc::clone(&store), n).await;
            let (verified, checkpoints) = verify_rate(&*store, n).await;
            store.close().await.unwrap();
            println!("| PostgreSQL 15 (loopback) | {n} | {recorded:.0}/s | {verified:.0}/s | {checkpoints} |");
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(connection);
            client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
        }
        Err(e) => println!("| PostgreSQL | not measured: {e} | | | |"),
    }
}
