//! Durability of the real binary: state and history survive a restart, and `kill -9` in the middle of a load
//! loses no update the hub acknowledged.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use hub_e2e::{HubProcess, Launch, client, free_port};
use serde_json::{Value, json};

async fn history_values(hub: &HubProcess, provider: &str) -> Vec<i64> {
    let points = hub.history(&format!("{provider}/load/seq")).await;
    points.iter().map(|p| p["value"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn restart_keeps_state_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let hub = HubProcess::start(Launch { port, ..Launch::new(dir.path()) }).await.unwrap();
    let updates: Vec<Value> = (0..50)
        .map(|i| {
            json!({"provider": "site.a", "service": "load", "resource": "seq", "value": i,
                        "timestamp": format!("2026-11-22T10:00:{:02}Z", i)})
        })
        .collect();
    let (s, v) = hub.post("/api/v1/ingest", &json!({"updates": updates})).await.unwrap();
    assert_eq!(s, 200, "{v}");
    let (s, _) = hub.post("/api/v1/tokens", &json!({"subject": "keeper", "roles": ["admin"]})).await.unwrap();
    assert_eq!(s, 201);
    let status = hub.stop().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let (s, r) = hub.get("/api/v1/providers/site.a/services/load/resources/seq").await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(r["value"], 49);
    assert_eq!(r["timestamp"], "2026-11-22T10:00:49Z");
    assert_eq!(history_values(&hub, "site.a").await, (0..50).collect::<Vec<_>>());
    let (_, p) = hub.get("/api/v1/providers/site.a").await.unwrap();
    assert_eq!(p["services"]["admin"]["resources"]["last_seen"]["value"], "2026-11-22T10:00:49Z");
    let (_, tokens) = hub.get("/api/v1/tokens").await.unwrap();
    assert!(tokens.to_string().contains("keeper"), "tokens survive restarts: {tokens}");
}

#[tokio::test]
async fn kill_9_under_load_loses_no_acknowledged_update() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let acked: Arc<Mutex<BTreeMap<String, Vec<i64>>>> = Arc::default();
    let base = hub.base.clone();
    let admin = hub.admin.clone();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (acked, base, admin) = (acked.clone(), base.clone(), admin.clone());
        writers.push(tokio::spawn(async move {
            let http = client();
            let provider = format!("load-{w}");
            for batch in 0..10_000i64 {
                let updates: Vec<Value> = (0..50)
                    .map(|i| json!({"provider": provider, "service": "load", "resource": "seq", "value": batch * 50 + i}))
                    .collect();
                let res = http.post(format!("{base}/api/v1/ingest")).bearer_auth(&admin).json(&json!({"updates": updates})).send().await;
                match res {
                    Ok(r) if r.status().is_success() => {
                        acked.lock().unwrap().entry(provider.clone()).or_default().extend((0..50).map(|i| batch * 50 + i));
                    }
                    _ => return, // the hub is gone
                }
            }
        }));
    }
    // Let the load run, then pull the plug.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hub.kill9().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(total > 0, "the load acknowledged nothing before the kill");

    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    for (provider, values) in &acked {
        let stored = history_values(&hub, provider).await;
        let stored_set: std::collections::HashSet<i64> = stored.iter().copied().collect();
        let missing: Vec<&i64> = values.iter().filter(|v| !stored_set.contains(v)).take(5).collect();
        assert!(
            missing.is_empty(),
            "{provider}: acknowledged but lost after kill -9: {missing:?} (of {})",
            values.len()
        );
        assert_eq!(stored_set.len(), stored.len(), "{provider}: duplicated points after restart");
    }
    eprintln!("kill -9 test: {total} acknowledged updates, all recovered");
}

#[tokio::test]
async fn postgres_backend_keeps_state_and_history_across_restart() {
    let url = hub_e2e::postgres_url();
    assert!(
        std::net::TcpStream::connect("127.0.0.1:5432").is_ok() || !url.contains("127.0.0.1:5432"),
        "PostgreSQL is not listening on 127.0.0.1:5432. Start it with \
         `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
         (Debian: apt-get install postgresql), or point HUB_TEST_POSTGRES_URL at a server with a `test` database."
    );
    let dir = tempfile::tempdir().unwrap();
    let (config, schema) = hub_e2e::postgres_config(dir.path());
    let launch = || Launch { args: vec!["--config".into(), config.display().to_string()], ..Launch::new(dir.path()) };
    let hub = HubProcess::start(launch()).await.unwrap();
    let updates: Vec<Value> = (0..20)
        .map(|i| {
            json!({"provider": "bus.12", "service": "load", "resource": "seq", "value": i,
                        "timestamp": format!("2026-11-22T11:00:{:02}Z", i)})
        })
        .collect();
    let (s, v) = hub.post("/api/v1/ingest", &json!({"updates": updates})).await.unwrap();
    assert_eq!(s, 200, "{v}");
    let status = hub.stop().unwrap();
    assert!(status.success(), "the hub's exit: {status}");
    assert!(!dir.path().join("hub.db").exists(), "PostgreSQL was used, not SQLite");

    let hub = HubProcess::start(launch()).await.unwrap();
    assert_eq!(history_values(&hub, "bus.12").await, (0..20).collect::<Vec<_>>());
    let (_, r) = hub.get("/api/v1/providers/bus.12/services/load/resources/seq").await.unwrap();
    assert_eq!(r["value"], 19);
    let status = hub.stop().unwrap();
    assert!(status.success(), "the hub's exit: {status}");
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    pg.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
}
