//! Append throughput and downsampling latency of both backends, printed as a markdown table.
//!
//! `cargo bench -p hub-store --bench append`. PostgreSQL is measured when reachable at
//! `HUB_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`), in a schema dropped afterwards.
//! `HUB_BENCH_ONLY=sqlite-full,sqlite-normal,postgres` picks backends (default: all three).

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use hub_model::{ResourcePath, Timestamp, Update};
use hub_store::{
    Aggregate, DownsampleQuery, Order, PostgresStore, SqliteOptions, SqliteStore, Store, Synchronous, WriteBatch,
};
use serde_json::json;

/// The bench only reports errors.
type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const UPDATES: usize = 1_000_000;
const BATCH: usize = 1_000;
const RESOURCES: usize = 1_000;
const BUCKETS: i64 = 1_000;
const DOWNSAMPLE_RUNS: usize = 5;
const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

struct Line {
    backend: String,
    what: String,
    result: String,
}

fn paths(prefix: &str, n: usize) -> Vec<ResourcePath> {
    (0..n).map(|i| format!("{prefix}.{}/env/r{}", i / 10, i % 10).parse().expect("valid path")).collect()
}

/// Batches of `BATCH` updates spread over `paths`, timestamps increasing by 1 s per round.
fn batches(paths: &[ResourcePath], total: usize) -> Vec<WriteBatch> {
    let mut out = Vec::with_capacity(total / BATCH);
    let mut n = 0usize;
    while n < total {
        let updates: Vec<Update> = (n..(n + BATCH).min(total))
            .map(|i| Update {
                path: paths[i % paths.len()].clone(),
                value: json!(((i * 7919) % 10_000) as f64 / 100.0),
                timestamp: Timestamp::from_micros((i / paths.len()) as i64 * 1_000_000),
            })
            .collect();
        n += updates.len();
        out.push(WriteBatch { declarations: Vec::new(), updates: updates.into(), records: Vec::new() });
    }
    out
}

/// Appends all batches with `appenders` concurrent tasks; returns updates per second.
async fn append_all(store: &Arc<dyn Store>, batches: Vec<WriteBatch>, appenders: usize) -> Result<f64> {
    let total: usize = batches.iter().map(|b| b.updates.len()).sum();
    let mut lanes: Vec<Vec<WriteBatch>> = (0..appenders).map(|_| Vec::new()).collect();
    for (i, b) in batches.into_iter().enumerate() {
        lanes[i % appenders].push(b);
    }
    let start = Instant::now();
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                for b in lane {
                    store.append(b).await?;
                }
                Ok::<(), hub_store::StoreError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

async fn downsample_latency(store: &Arc<dyn Store>, path: &ResourcePath, aggregate: Aggregate) -> Result<Duration> {
    let span = (UPDATES as i64) * 1_000_000;
    let query = DownsampleQuery {
        path: path.clone(),
        from: None,
        to: None,
        every_micros: span / BUCKETS,
        aggregate,
        limit: 10_000,
        order: Order::Asc,
    };
    let mut times = Vec::new();
    for _ in 0..DOWNSAMPLE_RUNS {
        let start = Instant::now();
        let buckets = store.downsample(query.clone()).await?;
        times.push(start.elapsed());
        if buckets.len() as i64 != BUCKETS {
            return Err(format!("expected {BUCKETS} buckets, got {}", buckets.len()).into());
        }
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn rate(updates_per_s: f64) -> String {
    format!("{:.0} updates/s", updates_per_s)
}

/// Runs every measurement against stores made by `open` (called once per scenario, on fresh storage).
async fn measure<F, Fut>(backend: &str, open: F, lines: &mut Vec<Line>) -> Result<()>
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = Result<Arc<dyn Store>>>,
{
    let line = |what: &str, result: String| Line { backend: backend.to_owned(), what: what.to_owned(), result };
    let spread = paths("site", RESOURCES);

    for (scenario, appenders) in [("seq", 1), ("conc", 4)] {
        let store = open(scenario).await?;
        let r = append_all(&store, batches(&spread, UPDATES), appenders).await?;
        let what = format!("append 1,000,000 updates over 1,000 resources, batches of 1,000, {appenders} appender(s)");
        println!("{backend}: {what}: {}", rate(r));
        lines.push(line(&what, rate(r)));
        store.close().await?;
    }

    let store = open("ds").await?;
    let one = paths("single", 1);
    let r = append_all(&store, batches(&one, UPDATES), 1).await?;
    let what = "append 1,000,000 updates to 1 resource, batches of 1,000, 1 appender";
    println!("{backend}: {what}: {}", rate(r));
    lines.push(line(what, rate(r)));
    for aggregate in [Aggregate::Avg, Aggregate::Max, Aggregate::Count, Aggregate::Last] {
        let latency = downsample_latency(&store, &one[0], aggregate).await?;
        let what =
            format!("downsample 1,000,000 points into 1,000 buckets ({aggregate:?}), median of {DOWNSAMPLE_RUNS}");
        println!("{backend}: {what}: {latency:.1?}");
        lines.push(line(&what, format!("{:.1} ms", latency.as_secs_f64() * 1e3)));
    }
    store.close().await?;
    Ok(())
}

async fn sqlite(dir: &Path, synchronous: Synchronous, lines: &mut Vec<Line>) -> Result<()> {
    let label = format!("SQLite (synchronous={synchronous:?})");
    measure(
        &label,
        |scenario| {
            let path = dir.join(format!("bench-{synchronous:?}-{scenario}.db"));
            async move {
                let options = SqliteOptions { synchronous, ..Default::default() };
                let store = tokio::task::spawn_blocking(move || SqliteStore::open_with(&path, options)).await??;
                Ok(Arc::new(store) as Arc<dyn Store>)
            }
        },
        lines,
    )
    .await
}

async fn postgres(lines: &mut Vec<Line>) -> Result<()> {
    let url = std::env::var("HUB_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
    let (admin, connection) = match tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(&url, tokio_postgres::NoTls),
    )
    .await
    {
        Ok(Ok(pair)) => pair,
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            println!("note: PostgreSQL not reachable at {url} ({why}); skipping its measurements");
            return Ok(());
        }
    };
    tokio::spawn(connection);
    let prefix = format!("hubbench_{}", std::process::id());
    let result = measure(
        "PostgreSQL",
        |scenario| {
            let (url, schema) = (url.clone(), format!("{prefix}_{scenario}"));
            async move { Ok(Arc::new(PostgresStore::connect(&url, Some(&schema)).await?) as Arc<dyn Store>) }
        },
        lines,
    )
    .await;
    for scenario in ["seq", "conc", "ds"] {
        admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {prefix}_{scenario} CASCADE")).await?;
    }
    result
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let mut lines = Vec::new();
        let only = std::env::var("HUB_BENCH_ONLY").unwrap_or_default();
        let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
        if wanted("sqlite-full") {
            sqlite(dir.path(), Synchronous::Full, &mut lines).await?;
        }
        if wanted("sqlite-normal") {
            sqlite(dir.path(), Synchronous::Normal, &mut lines).await?;
        }
        if wanted("postgres") {
            postgres(&mut lines).await?;
        }
        println!();
        println!("| backend | measurement | result |");
        println!("| --- | --- | --- |");
        for l in &lines {
            println!("| {} | {} | {} |", l.backend, l.what, l.result);
        }
        Ok(())
    })
}
