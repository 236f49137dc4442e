//! The twin over a real SQLite store: rebuild after reopening, retention, ACT routing, concurrent batches.

use std::sync::Arc;

use async_trait::async_trait;
use hub_bus::{Bus, Change, Received};
use hub_model::{Glob, ProviderDoc, ResourcePath, Timestamp, Update};
use hub_store::{Aggregate, HistoryQuery, Order, Rollup, SqliteStore};
use hub_twin::{ActError, ActHandler, RetentionPolicy, Twin, TwinError, apply_retention};
use serde_json::{Value, json};

fn update(path: &str, value: Value, micros: i64) -> Update {
    Update { path: path.parse().unwrap(), value, timestamp: Timestamp::from_micros(micros) }
}

async fn open(dir: &std::path::Path) -> Twin {
    let store = Arc::new(SqliteStore::open(&dir.join("hub.db")).unwrap());
    Twin::open(store, Bus::new(256)).await.unwrap()
}

async fn history(twin: &Twin, path: &str) -> Vec<(i64, Value)> {
    let page = twin
        .store()
        .history(HistoryQuery {
            path: path.parse().unwrap(),
            from: None,
            to: None,
            limit: 10_000,
            order: Order::Asc,
            cursor: None,
        })
        .await
        .unwrap();
    page.points.into_iter().map(|p| (p.timestamp.as_micros(), p.value)).collect()
}

#[tokio::test]
async fn reopening_rebuilds_the_same_twin() {
    let dir = tempfile::tempdir().unwrap();
    let twin = open(dir.path()).await;
    twin.ingest(vec![update("bus.7/gps/speed", json!(31.5), 10), update("bus.7/gps/route", json!("L1"), 11)])
        .await
        .unwrap();
    let doc: ProviderDoc = serde_json::from_value(json!({"services": {"door": {"resources": {
        "open": {"kind": "state", "type": "boolean", "value": false, "metadata": {"side": "left"}},
        "unlock": {"kind": "action", "type": "object", "parameters": {"code": "string"}}}}}}))
    .unwrap();
    twin.put_provider("bus.7".parse().unwrap(), &doc).await.unwrap();
    let before = twin.provider("bus.7").unwrap();
    twin.store().close().await.unwrap();
    drop(twin);
    let twin = open(dir.path()).await;
    let after = twin.provider("bus.7").unwrap();
    assert_eq!(before.services["gps"], after.services["gps"]);
    assert_eq!(
        before.services["door"].resources["unlock"].parameters,
        after.services["door"].resources["unlock"].parameters
    );
    assert_eq!(before.services["door"].resources["open"].metadata, after.services["door"].resources["open"].metadata);
    assert_eq!(after.last_seen(), before.last_seen(), "last_seen is recomputed from the newest value");
    assert!(after.last_seen().is_some());
}

#[tokio::test]
async fn retention_drops_or_rolls_up_by_first_matching_rule() {
    let dir = tempfile::tempdir().unwrap();
    let twin = open(dir.path()).await;
    let minute = 60_000_000i64;
    let mut updates = Vec::new();
    for i in 0..120i64 {
        updates.push(update("noise-1/sound/level", json!(i as f64), i * minute / 4));
        updates.push(update("park-1/spot/free", json!(i % 2 == 0), i * minute / 4));
    }
    twin.ingest(updates).await.unwrap();
    let rules = [
        RetentionPolicy {
            resources: Glob::new("noise-*"),
            keep_raw_micros: 10 * minute,
            rollup: Rollup::Downsample { every_micros: 5 * minute, aggregate: Aggregate::Max },
        },
        RetentionPolicy { resources: Glob::new("*"), keep_raw_micros: 20 * minute, rollup: Rollup::Drop },
    ];
    // "Now" is minute 30: noise keeps raw points from minute 20 on, parking from minute 10 on.
    let outcome = apply_retention(&twin, &rules, Timestamp::from_micros(30 * minute)).await.unwrap();
    assert!(outcome.removed > 0 && outcome.written > 0, "{outcome:?}");
    let noise = history(&twin, "noise-1/sound/level").await;
    let rolled: Vec<&(i64, Value)> = noise.iter().filter(|(t, _)| *t < 20 * minute).collect();
    assert_eq!(rolled.len(), 4, "four 5-minute buckets before minute 20: {rolled:?}");
    assert_eq!(*rolled[0], (0, json!(19.0)), "max of the first bucket (points 0..=19)");
    assert_eq!(noise.iter().filter(|(t, _)| *t >= 20 * minute).count(), 40, "raw points after the cutoff kept");
    let park = history(&twin, "park-1/spot/free").await;
    assert!(park.iter().all(|(t, _)| *t >= 10 * minute));
    assert_eq!(park.len(), 80);
    // Current values are untouched by retention.
    assert_eq!(twin.resource(&"noise-1/sound/level".parse().unwrap()).unwrap().value, Some(json!(119.0)));
}

struct Recorder(tokio::sync::mpsc::Sender<(ResourcePath, Value)>);

#[async_trait]
impl ActHandler for Recorder {
    async fn act(&self, path: &ResourcePath, params: serde_json::Map<String, Value>) -> Result<Value, ActError> {
        if params.get("seconds").and_then(Value::as_i64).is_some_and(|s| s > 60) {
            return Err(ActError::Refused("at most 60 seconds".into()));
        }
        self.0.send((path.clone(), Value::Object(params))).await.map_err(|e| ActError::Failed(e.to_string()))?;
        Ok(json!("queued"))
    }
}

#[tokio::test]
async fn act_goes_to_the_registered_owner() {
    let dir = tempfile::tempdir().unwrap();
    let twin = open(dir.path()).await;
    let doc: ProviderDoc = serde_json::from_value(json!({"services": {"alarm": {"resources": {
        "siren": {"kind": "action", "type": "string", "parameters": {"seconds": "integer"}}}}}}))
    .unwrap();
    twin.put_provider("home-3".parse().unwrap(), &doc).await.unwrap();
    let path: ResourcePath = "home-3/alarm/siren".parse().unwrap();
    let params = |v: Value| v.as_object().unwrap().clone();
    assert!(matches!(twin.act(path.clone(), params(json!({"seconds": 5}))).await, Err(TwinError::NoOwner(_))));
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let (other_tx, mut other_rx) = tokio::sync::mpsc::channel(4);
    let owner: Arc<dyn ActHandler> = Arc::new(Recorder(tx));
    // The more specific glob owns the provider whatever the registration order.
    twin.act_registry().register(Glob::new("home-*"), owner.clone());
    let catch_all: Arc<dyn ActHandler> = Arc::new(Recorder(other_tx));
    twin.act_registry().register(Glob::new("*"), catch_all.clone());
    assert_eq!(twin.act(path.clone(), params(json!({"seconds": 5}))).await.unwrap(), json!("queued"));
    assert_eq!(rx.recv().await.unwrap(), (path.clone(), json!({"seconds": 5})));
    assert!(matches!(
        twin.act(path.clone(), params(json!({"seconds": 500}))).await,
        Err(TwinError::Act(ActError::Refused(_)))
    ));
    twin.act_registry().unregister(&owner);
    assert_eq!(twin.act(path.clone(), params(json!({"seconds": 6}))).await.unwrap(), json!("queued"));
    assert_eq!(other_rx.recv().await.unwrap(), (path.clone(), json!({"seconds": 6})));
    twin.act_registry().unregister(&catch_all);
    assert!(matches!(twin.act(path, params(json!({"seconds": 5}))).await, Err(TwinError::NoOwner(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_are_all_durable_applied_and_published_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let twin = Arc::new(open(dir.path()).await);
    let mut sub = twin.bus().subscribe();
    let mut tasks = Vec::new();
    for w in 0..8i64 {
        let twin = twin.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..25i64 {
                let batch = (0..20).map(|i| update(&format!("w{w}/s/r"), json!(b * 20 + i), b * 20 + i + 1)).collect();
                twin.ingest(batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for w in 0..8 {
        let h = history(&twin, &format!("w{w}/s/r")).await;
        assert_eq!(h.len(), 500);
        assert_eq!(twin.resource(&format!("w{w}/s/r").parse().unwrap()).unwrap().value, Some(json!(499)));
    }
    let mut last = 0;
    let mut seen = 0;
    while seen < 200 {
        match sub.recv().await {
            Received::Event(e) => {
                assert!(e.seq > last, "sequence numbers grow");
                last = e.seq;
                if matches!(e.change, Change::Updates(_)) {
                    seen += 1;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn identifying_values_are_pseudonymised_before_anything_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let twin = open(dir.path()).await;
    let pseudonyms = hub_twin::Pseudonymiser::open(
        vec![Glob::new("*/wifi/mac"), Glob::new("*/desk/badge")],
        std::time::Duration::from_secs(86_400),
        &dir.path().join("pseudonym.key"),
    )
    .unwrap();
    twin.set_pseudonymiser(Arc::new(pseudonyms));
    let mut events = twin.bus().subscribe();
    let now = Timestamp::now().as_micros();
    twin.ingest(vec![
        update("occ-1/wifi/mac", json!("a4:5e:60:e1:7f:02"), now),
        update("occ-1/wifi/count", json!(3), now),
        update("occ-2/wifi/mac", json!("a4:5e:60:e1:7f:02"), now),
    ])
    .await
    .unwrap();
    let stored = history(&twin, "occ-1/wifi/mac").await;
    let pseudonym = stored[0].1.as_str().unwrap().to_owned();
    assert!(pseudonym.starts_with(hub_twin::PSEUDONYM_PREFIX), "{pseudonym}");
    assert_eq!(history(&twin, "occ-2/wifi/mac").await[0].1, json!(pseudonym), "one phone, one pseudonym");
    assert_eq!(history(&twin, "occ-1/wifi/count").await[0].1, json!(3), "other resources are untouched");
    let path: ResourcePath = "occ-1/wifi/mac".parse().unwrap();
    assert_eq!(twin.resource(&path).unwrap().value, Some(json!(pseudonym)));
    // What streams and rules see is the pseudonym too.
    let Received::Event(event) = events.recv().await else { panic!("no event") };
    let Change::Updates(updates) = &event.change else { panic!("not updates") };
    assert!(updates.iter().filter(|u| u.path.resource.as_str() == "mac").all(|u| u.value == json!(pseudonym)));
    // A SET on an identifier state resource is pseudonymised as well.
    // So is a value in a model document.
    let doc: ProviderDoc = serde_json::from_value(json!({"services": {"desk": {"resources": {
        "badge": {"kind": "state", "type": "string", "value": "badge-0041"}}}}}))
    .unwrap();
    let office = twin.put_provider("office-1".parse().unwrap(), &doc).await.unwrap();
    let declared = office.resource("desk", "badge").unwrap().value.clone().unwrap();
    assert!(declared.as_str().unwrap().starts_with(hub_twin::PSEUDONYM_PREFIX), "{declared}");
    let set = twin.set("office-1/desk/badge".parse().unwrap(), json!("badge-0042")).await.unwrap();
    assert!(set.value.as_str().unwrap().starts_with(hub_twin::PSEUDONYM_PREFIX), "{}", set.value);
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        files += 1;
        for badge in [b"badge-0041", b"badge-0042"] {
            assert!(!bytes.windows(10).any(|w| w == badge), "{} holds a clear badge", entry.path().display());
        }
        assert!(
            !bytes.windows(17).any(|w| w == b"a4:5e:60:e1:7f:02"),
            "{} holds the clear MAC",
            entry.path().display()
        );
    }
    assert!(files >= 2, "the database and its write-ahead log");
}
