//! The conformance suite: the behaviour every [`Store`] backend must show, written once and run against each.
//!
//! A backend's integration test implements [`Harness`] (how to open its storage, and how to remove it) and
//! expands [`conformance_tests!`](crate::conformance_tests), which generates one `#[tokio::test]` per test
//! below. Each test gets fresh, empty storage; [`run`] removes it afterwards even when the test fails.
//!
//! This is test support: it asserts, and panics on failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::Arc,
};

use async_trait::async_trait;
use hub_model::{MetaEntry, Name, Provider, Resource, ResourceKind, ResourcePath, Timestamp, Update, ValueType};
use serde_json::{Value, json};

use crate::{
    Aggregate, AuditQuery, AuditRow, Bucket, DownsampleQuery, HistoryQuery, Order, Point, RecordWrite,
    RetentionOutcome, Rollup, Store, StoreError, TokenRecord, WriteBatch,
};

/// How the suite reaches one backend's storage.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// Opens the storage. Every call opens the same storage: after a `close`, a new `open` sees everything that
    /// was committed before.
    async fn open(&self) -> Result<Arc<dyn Store>, StoreError>;

    /// Removes the storage. Called once, after the test, whether it passed or not.
    async fn cleanup(&self) {}
}

/// Runs one test of the suite on `harness`, cleans up, then re-raises the test's panic if it failed.
pub async fn run<H, F, Fut>(harness: H, test: F)
where
    H: Harness,
    F: FnOnce(Arc<dyn Harness>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let harness: Arc<dyn Harness> = Arc::new(harness);
    let outcome = tokio::spawn(test(Arc::clone(&harness))).await;
    harness.cleanup().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("conformance test did not finish: {e}"),
        }
    }
}

/// Generates one `#[tokio::test]` per conformance test. The argument is an expression (evaluated inside each
/// async test, so it may `.await`) that yields a fresh [`Harness`].
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            append_and_load_round_trip,
            newest_timestamp_wins,
            history_paging_visits_every_point_once,
            history_bounds_and_limits,
            foreign_cursor_is_invalid_input,
            downsample_matches_computed_aggregates,
            downsample_of_non_numbers,
            retention_drops_old_points,
            retention_rolls_up_whole_buckets,
            delete_provider_removes_state_and_history,
            tokens_put_list_delete,
            policy_save_and_load,
            audit_rows_append_filter_and_survive,
            records_put_list_delete,
            records_written_together,
            records_commit_with_updates,
            concurrent_appends_are_durable,
            bad_batch_fails_alone,
            closed_store_refuses_writes,
            reopen_keeps_state_and_history,
        );
    };
    (@each $harness:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $crate::conformance::run($harness, $crate::conformance::$test).await;
            }
        )*
    };
}

fn path(s: &str) -> ResourcePath {
    s.parse().unwrap()
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn at(micros: i64) -> Timestamp {
    Timestamp::from_micros(micros)
}

fn update(p: &str, value: Value, micros: i64) -> Update {
    Update { path: path(p), value, timestamp: at(micros) }
}

fn updates(list: Vec<Update>) -> WriteBatch {
    WriteBatch { declarations: Vec::new(), updates: list.into(), records: Vec::new() }
}

fn declaration(p: &str, kind: ResourceKind, value_type: ValueType) -> (ResourcePath, Resource) {
    (path(p), Resource::new(kind, value_type))
}

async fn open(h: &Arc<dyn Harness>) -> Arc<dyn Store> {
    h.open().await.expect("the harness opens the store")
}

fn query(p: &str, order: Order, limit: usize) -> HistoryQuery {
    HistoryQuery { path: path(p), from: None, to: None, limit, order, cursor: None }
}

/// Every point of a query, following cursors page by page.
async fn page_all(store: &dyn Store, mut q: HistoryQuery) -> Vec<Point> {
    let mut points = Vec::new();
    for _ in 0..100_000 {
        let page = store.history(q.clone()).await.unwrap();
        assert!(page.points.len() <= q.limit, "a page holds at most `limit` points");
        points.extend(page.points);
        match page.next_cursor {
            Some(cursor) => q.cursor = Some(cursor),
            None => return points,
        }
    }
    panic!("paging did not end");
}

async fn all_history(store: &dyn Store, p: &str) -> Vec<Point> {
    page_all(store, query(p, Order::Asc, 1000)).await
}

fn values(points: &[Point]) -> Vec<Value> {
    points.iter().map(|p| p.value.clone()).collect()
}

fn provider<'a>(providers: &'a [Provider], n: &str) -> &'a Provider {
    providers.iter().find(|p| p.name.as_str() == n).unwrap_or_else(|| panic!("provider {n} was not loaded"))
}

fn current(providers: &[Provider], p: &str) -> (Option<Value>, Option<Timestamp>) {
    let rp = path(p);
    let r = provider(providers, rp.provider.as_str())
        .resource(rp.service.as_str(), rp.resource.as_str())
        .unwrap_or_else(|| panic!("resource {p} was not loaded"));
    (r.value.clone(), r.timestamp)
}

/// Declarations, values, metadata, units, parameters, admin values and dotted names all survive `load`, which
/// rebuilds exactly what the twin would hold after the same writes.
pub async fn append_and_load_round_trip(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    assert!(store.load().await.unwrap().is_empty(), "fresh storage is empty");

    let mut temp = Resource::new(ResourceKind::Sensor, ValueType::Number);
    temp.unit = Some(Arc::from("Cel"));
    temp.metadata.insert("source".into(), MetaEntry { value: json!({"vendor": "acme", "rev": 2}), timestamp: at(7) });
    temp.metadata.insert("calibrated".into(), MetaEntry { value: json!(true), timestamp: at(8) });
    let mut blink = Resource::new(ResourceKind::Action, ValueType::Object);
    blink.parameters.insert(name("times"), ValueType::Integer);
    blink.parameters.insert(name("colour"), ValueType::String);
    let declarations = vec![
        (path("site.a/env.v2/temp.c"), temp.clone()),
        declaration("site.a/light/on", ResourceKind::State, ValueType::Boolean),
        (path("site.a/light/blink"), blink.clone()),
        declaration("site.a/cfg/interval", ResourceKind::Property, ValueType::Integer),
        declaration("p-2/s_1/never", ResourceKind::Sensor, ValueType::String),
    ];
    let location = json!({"type": "Point", "coordinates": [-3.8, 43.46]});
    let first = vec![
        update("site.a/env.v2/temp.c", json!(21.5), 1_000),
        update("site.a/light/on", json!(true), 1_500),
        update("site.a/cfg/interval", json!(30), 900),
        update("site.a/admin/friendly_name", json!("Site A"), 1_100),
        update("site.a/admin/location", location.clone(), 1_200),
        update("site.a/admin/status", json!("online"), 1_300),
        update("site.a/extra/count", json!(5), 1_400),
        update("site.a/extra/label", json!("hello"), 1_450),
        update("site.a/extra/shape", json!([1, 2, {"x": null}]), 1_460),
    ];
    store
        .append(WriteBatch { declarations: declarations.clone(), updates: first.clone().into(), records: Vec::new() })
        .await
        .unwrap();
    let second = vec![
        update("site.a/env.v2/temp.c", json!(22), 2_000),
        // The hub maintains last_seen itself; a stored one would be ignored on load.
        update("site.a/admin/last_seen", json!("1970-01-01T00:00:00Z"), 9_999_999),
    ];
    let mut redeclared = temp.clone();
    redeclared.unit = Some(Arc::from("K"));
    redeclared.metadata.insert("note".into(), MetaEntry { value: json!("moved"), timestamp: at(9) });
    store
        .append(WriteBatch {
            declarations: vec![(path("site.a/env.v2/temp.c"), redeclared.clone())],
            updates: second.clone().into(),
            records: Vec::new(),
        })
        .await
        .unwrap();

    let mut expected_a = Provider::new(name("site.a"));
    let mut expected_b = Provider::new(name("p-2"));
    for (p, r) in declarations.iter().chain([(path("site.a/env.v2/temp.c"), redeclared)].iter()) {
        let target = if p.provider.as_str() == "site.a" { &mut expected_a } else { &mut expected_b };
        target.services.entry(p.service.clone()).or_default().resources.insert(p.resource.clone(), r.clone());
    }
    for u in first.iter().chain(second.iter().take(1)) {
        assert!(expected_a.apply(u), "the model accepts {u:?}");
    }
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(provider(&loaded, "site.a"), &expected_a);
    assert_eq!(provider(&loaded, "p-2"), &expected_b);
    let admin = provider(&loaded, "site.a").resource("admin", "friendly_name").unwrap();
    assert_eq!(admin.kind, ResourceKind::Property, "admin resources keep their fixed kind");
    assert_eq!(
        current(&loaded, "site.a/admin/last_seen"),
        (Some(json!(at(2_000).to_rfc3339())), Some(at(2_000))),
        "last_seen is the newest non-admin timestamp"
    );
    assert_eq!(values(&all_history(&*store, "site.a/env.v2/temp.c").await), vec![json!(21.5), json!(22)]);
    assert_eq!(values(&all_history(&*store, "site.a/admin/location").await), vec![location]);
    assert!(all_history(&*store, "site.a/admin/last_seen").await.is_empty(), "last_seen has no history");
    store.close().await.unwrap();
}

/// The current value is the one with the newest timestamp, whatever the arrival order; ties go to the later
/// write. History keeps every point.
pub async fn newest_timestamp_wins(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    let r = "p/s/r";
    store
        .append(updates(vec![update(r, json!(1), 100), update(r, json!(2), 300), update(r, json!(3), 200)]))
        .await
        .unwrap();
    assert_current(&*store, r, json!(2), 300).await;
    store.append(updates(vec![update(r, json!(4), 250)])).await.unwrap();
    assert_current(&*store, r, json!(2), 300).await;
    store.append(updates(vec![update(r, json!(5), 300)])).await.unwrap();
    assert_current(&*store, r, json!(5), 300).await;
    store.append(updates(vec![update(r, json!(6), 400), update(r, json!(7), 400)])).await.unwrap();
    assert_current(&*store, r, json!(7), 400).await;
    // Concurrent appends land in one group commit; the newest still wins.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.append(updates(vec![update(r, json!(100 + i), 1_000 + i)])).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_current(&*store, r, json!(107), 1_007).await;
    let history = all_history(&*store, r).await;
    assert_eq!(history.len(), 15);
    let ts: Vec<i64> = history.iter().map(|p| p.timestamp.as_micros()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "history is ordered by time");
    store.close().await.unwrap();
}

async fn assert_current(store: &dyn Store, p: &str, expected: Value, micros: i64) {
    let loaded = store.load().await.unwrap();
    assert_eq!(current(&loaded, p), (Some(expected), Some(at(micros))), "current value of {p}");
}

/// Paging through a history with many equal timestamps, in both orders and at every page size, visits every
/// point exactly once, in (time, insertion) order.
pub async fn history_paging_visits_every_point_once(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    let r = "pager/s/r";
    // 40 points; timestamps repeat in runs of four and arrive out of order across batches.
    let all: Vec<(i64, i64)> = (0..40).map(|i| (((i * 7) % 40) / 4 * 10 - 50, i)).collect();
    for chunk in all.chunks(13) {
        store.append(updates(chunk.iter().map(|&(t, i)| update(r, json!(i), t)).collect())).await.unwrap();
    }
    let mut asc = all.clone();
    asc.sort_by_key(|&(t, i)| (t, i)); // within a timestamp, insertion order is the value order here
    let asc: Vec<Value> = asc.iter().map(|&(_, i)| json!(i)).collect();
    let mut desc = asc.clone();
    desc.reverse();
    for limit in [1, 3, 4, 7, 39, 40, 41, 1000] {
        assert_eq!(values(&page_all(&*store, query(r, Order::Asc, limit)).await), asc, "asc, limit {limit}");
        assert_eq!(values(&page_all(&*store, query(r, Order::Desc, limit)).await), desc, "desc, limit {limit}");
    }
    let page = store.history(query(r, Order::Asc, 40)).await.unwrap();
    assert_eq!(page.points.len(), 40);
    assert_eq!(page.next_cursor, None, "no cursor when nothing follows");
    let page = store.history(query(r, Order::Asc, 39)).await.unwrap();
    assert!(page.next_cursor.is_some(), "a cursor when more follows");
    store.close().await.unwrap();
}

/// `from` is inclusive, `to` exclusive, in both orders; unknown resources have no history; a zero limit is
/// refused.
pub async fn history_bounds_and_limits(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    let r = "bounds/s/r";
    store.append(updates((-5..10).map(|i| update(r, json!(i), i * 10)).collect())).await.unwrap();
    let bounded = |from: Option<i64>, to: Option<i64>, order: Order, limit: usize| HistoryQuery {
        from: from.map(at),
        to: to.map(at),
        ..query(r, order, limit)
    };
    let ts = |points: Vec<Point>| points.iter().map(|p| p.timestamp.as_micros()).collect::<Vec<_>>();
    assert_eq!(ts(page_all(&*store, bounded(Some(20), Some(50), Order::Asc, 2)).await), vec![20, 30, 40]);
    assert_eq!(ts(page_all(&*store, bounded(Some(20), Some(50), Order::Desc, 2)).await), vec![40, 30, 20]);
    assert_eq!(ts(page_all(&*store, bounded(Some(-15), Some(11), Order::Asc, 100)).await), vec![-10, 0, 10]);
    assert_eq!(ts(page_all(&*store, bounded(Some(80), None, Order::Asc, 100)).await), vec![80, 90]);
    assert_eq!(ts(page_all(&*store, bounded(None, Some(-30), Order::Desc, 1)).await), vec![-40, -50]);
    assert!(page_all(&*store, bounded(Some(50), Some(50), Order::Asc, 10)).await.is_empty());
    let page = store.history(bounded(None, None, Order::Desc, 3)).await.unwrap();
    assert_eq!(ts(page.points), vec![90, 80, 70]);
    assert!(store.history(query("bounds/s/unknown", Order::Asc, 10)).await.unwrap().points.is_empty());
    assert!(store.history(query("nobody/s/r", Order::Asc, 10)).await.unwrap().next_cursor.is_none());
    assert!(matches!(store.history(query(r, Order::Asc, 0)).await, Err(StoreError::InvalidInput(_))));
    store.close().await.unwrap();
}

/// A cursor the store did not issue (or issued for the other direction) is refused as invalid input.
pub async fn foreign_cursor_is_invalid_input(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    let r = "cur/s/r";
    store.append(updates((0..5).map(|i| update(r, json!(i), i)).collect())).await.unwrap();
    let asc_cursor = store.history(query(r, Order::Asc, 2)).await.unwrap().next_cursor.unwrap();
    for bad in ["garbage", "", "MTox", "%%%", "aDE6YToxOjI6Mw", "aDE6YTp4OjI"] {
        let q = HistoryQuery { cursor: Some(bad.to_owned()), ..query(r, Order::Asc, 2) };
        assert!(matches!(store.history(q).await, Err(StoreError::InvalidInput(_))), "cursor {bad:?}");
    }
    let q = HistoryQuery { cursor: Some(asc_cursor.clone()), ..query(r, Order::Desc, 2) };
    assert!(matches!(store.history(q).await, Err(StoreError::InvalidInput(_))), "asc cursor on a desc query");
    let q = HistoryQuery { cursor: Some(asc_cursor), ..query(r, Order::Asc, 10) };
    assert_eq!(values(&store.history(q).await.unwrap().points), vec![json!(2), json!(3), json!(4)]);
    store.close().await.unwrap();
}

/// What a bucket should hold, computed here from the raw points: `(count, avg, min, max, sum, last)`.
fn expected_buckets(points: &[(i64, f64)], every: i64) -> BTreeMap<i64, (u64, f64, f64, f64, f64, f64)> {
    let mut buckets: BTreeMap<i64, Vec<(i64, usize, f64)>> = BTreeMap::new();
    for (i, &(t, v)) in points.iter().enumerate() {
        buckets.entry(t.div_euclid(every) * every).or_default().push((t, i, v));
    }
    buckets
        .into_iter()
        .map(|(start, mut pts)| {
            let n = pts.len();
            let sum: f64 = pts.iter().map(|p| p.2).sum();
            let min = pts.iter().map(|p| p.2).fold(f64::INFINITY, f64::min);
            let max = pts.iter().map(|p| p.2).fold(f64::NEG_INFINITY, f64::max);
            pts.sort_by_key(|p| (p.0, p.1));
            let last = pts.last().unwrap().2;
            (start, (n as u64, sum / n as f64, min, max, sum, last))
        })
        .collect()
}

fn close_to(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() <= 1e-9 * b.abs().max(1.0))
}

/// Every aggregate, in both orders, with bounds and limits, matches values computed from the raw points;
/// buckets are aligned to the epoch (also for negative times) and empty ones are omitted.
pub async fn downsample_matches_computed_aggregates(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    let r = "ds/s/x";
    let mut points: Vec<(i64, f64)> = Vec::new();
    for i in 0..300i64 {
        let t = -2_500 + i * 17;
        if (900..2_000).contains(&t) {
            continue; // an empty bucket that must not be reported
        }
        points.push((t, ((i * 37) % 101) as f64 / 4.0 - 10.0));
        if i % 9 == 0 {
            points.push((t, (i % 7) as f64)); // equal timestamps: the later one is the bucket's last
        }
    }
    for chunk in points.chunks(64) {
        store.append(updates(chunk.iter().map(|&(t, v)| update(r, json!(v), t)).collect())).await.unwrap();
    }
    let every = 1_000;
    let expected = expected_buckets(&points, every);
    assert!(!expected.contains_key(&1_000));
    let ds = |aggregate, order, from: Option<i64>, to: Option<i64>, limit| DownsampleQuery {
        path: path(r),
        from: from.map(at),
        to: to.map(at),
        every_micros: every,
        aggregate,
        limit,
        order,
    };
    for aggregate in [Aggregate::Avg, Aggregate::Min, Aggregate::Max, Aggregate::Sum, Aggregate::Count, Aggregate::Last]
    {
        for order in [Order::Asc, Order::Desc] {
            let buckets = store.downsample(ds(aggregate, order, None, None, 100)).await.unwrap();
            let mut want: Vec<_> = expected.iter().collect();
            if order == Order::Desc {
                want.reverse();
            }
            assert_eq!(buckets.len(), want.len(), "{aggregate:?} {order:?}: bucket count");
            for (got, (start, e)) in buckets.iter().zip(want) {
                assert_eq!(got.start.as_micros(), *start, "{aggregate:?} {order:?}: bucket start");
                assert_eq!(got.count, e.0, "{aggregate:?} bucket {start}: count");
                let ok = match aggregate {
                    Aggregate::Avg => close_to(&got.value, e.1),
                    Aggregate::Min => close_to(&got.value, e.2),
                    Aggregate::Max => close_to(&got.value, e.3),
                    Aggregate::Sum => close_to(&got.value, e.4),
                    Aggregate::Count => got.value == json!(e.0),
                    Aggregate::Last => got.value == json!(e.5),
                };
                assert!(ok, "{aggregate:?} bucket {start}: got {}, expected {e:?}", got.value);
            }
        }
    }
    // Bounds cut inside buckets; limit caps buckets in the requested order.
    let (from, to) = (-1_234, 2_345);
    let inside: Vec<(i64, f64)> = points.iter().copied().filter(|&(t, _)| t >= from && t < to).collect();
    let expected = expected_buckets(&inside, every);
    let got = store.downsample(ds(Aggregate::Sum, Order::Asc, Some(from), Some(to), 100)).await.unwrap();
    let got: Vec<(i64, u64)> = got.iter().map(|b| (b.start.as_micros(), b.count)).collect();
    let want: Vec<(i64, u64)> = expected.iter().map(|(s, e)| (*s, e.0)).collect();
    assert_eq!(got, want);
    let got = store.downsample(ds(Aggregate::Last, Order::Desc, Some(from), Some(to), 2)).await.unwrap();
    let want: Vec<Bucket> =
        expected.iter().rev().take(2).map(|(s, e)| Bucket { start: at(*s), value: json!(e.5), count: e.0 }).collect();
    assert_eq!(got, want);
    let got = store.downsample(ds(Aggregate::Count, Order::Asc, None, None, 3)).await.unwrap();
    assert_eq!(got.iter().map(|b| b.start.as_micros()).collect::<Vec<_>>(), vec![-3_000, -2_000, -1_000]);

    // Integer resources report integral extremes as integers.
    let n = "ds/s/n";
    store
        .append(WriteBatch {
            declarations: vec![declaration(n, ResourceKind::Sensor, ValueType::Integer)],
            updates: vec![update(n, json!(3), 1), update(n, json!(-4), 2), update(n, json!(10), 3)].into(),
            records: Vec::new(),
        })
        .await
        .unwrap();
    let q = |aggregate| DownsampleQuery { path: path(n), ..ds(aggregate, Order::Asc, None, None, 10) };
    assert_eq!(store.downsample(q(Aggregate::Min)).await.unwrap()[0].value, json!(-4));
    assert_eq!(store.downsample(q(Aggregate::Max)).await.unwrap()[0].value, json!(10));
    assert!(close_to(&store.downsample(q(Aggregate::Avg)).await.unwrap()[0].value, 3.0));
    assert!(
        store.downsample(DownsampleQuery { path: path("ds/s/none"), ..q(Aggregate::Avg) }).await.unwrap().is_empty()
    );
    store.close().await.unwrap();
}

/// Numeric aggregates of a non-numeric resource are refused; count and last work on anything; bucket width and
/// limit are checked.
pub async fn downsample_of_non_numbers(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    let r = "words/s/w";
    store
        .append(updates(vec![
            update(r, json!("a"), -1),
            update(r, json!("b"), 5),
            update(r, json!("c"), 5),
            update(r, json!("d"), 12),
        ]))
        .await
        .unwrap();
    let q = |aggregate, every_micros, limit| DownsampleQuery {
        path: path(r),
        from: None,
        to: None,
        every_micros,
        aggregate,
        limit,
        order: Order::Asc,
    };
    for aggregate in [Aggregate::Avg, Aggregate::Min, Aggregate::Max, Aggregate::Sum] {
        assert!(
            matches!(store.downsample(q(aggregate, 10, 10)).await, Err(StoreError::InvalidInput(_))),
            "{aggregate:?}"
        );
    }
    let last = store.downsample(q(Aggregate::Last, 10, 10)).await.unwrap();
    assert_eq!(
        last,
        vec![
            Bucket { start: at(-10), value: json!("a"), count: 1 },
            Bucket { start: at(0), value: json!("c"), count: 2 },
            Bucket { start: at(10), value: json!("d"), count: 1 },
        ]
    );
    let count = store.downsample(q(Aggregate::Count, 100, 10)).await.unwrap();
    assert_eq!(
        count,
        vec![Bucket { start: at(-100), value: json!(1), count: 1 }, Bucket { start: at(0), value: json!(3), count: 3 }]
    );
    assert!(matches!(store.downsample(q(Aggregate::Count, 0, 10)).await, Err(StoreError::InvalidInput(_))));
    assert!(matches!(store.downsample(q(Aggregate::Count, -5, 10)).await, Err(StoreError::InvalidInput(_))));
    assert!(matches!(store.downsample(q(Aggregate::Count, 10, 0)).await, Err(StoreError::InvalidInput(_))));
    store.close().await.unwrap();
}

/// `Rollup::Drop` deletes the points older than the cutoff of the named resources only, and leaves current
/// values alone.
pub async fn retention_drops_old_points(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    let (a, b) = ("ret/s/a", "ret/s/b");
    let mut list: Vec<Update> = (0..10).map(|i| update(a, json!(i), i * 10)).collect();
    list.extend((0..10).map(|i| update(b, json!(i), i * 10)));
    store.append(updates(list)).await.unwrap();
    let outcome = store.retain(&[path(a), path("ret/s/unknown")], at(50), Rollup::Drop).await.unwrap();
    assert_eq!(outcome, RetentionOutcome { removed: 5, written: 0 });
    let ts: Vec<i64> = all_history(&*store, a).await.iter().map(|p| p.timestamp.as_micros()).collect();
    assert_eq!(ts, vec![50, 60, 70, 80, 90]);
    assert_eq!(all_history(&*store, b).await.len(), 10);
    assert_eq!(current(&store.load().await.unwrap(), a), (Some(json!(9)), Some(at(90))));
    let again = store.retain(&[path(a)], at(50), Rollup::Drop).await.unwrap();
    assert_eq!(again, RetentionOutcome::default());
    let everything = store.retain(&[path(a), path(b)], at(i64::MAX), Rollup::Drop).await.unwrap();
    assert_eq!(everything.removed, 15);
    assert!(all_history(&*store, a).await.is_empty());
    store.close().await.unwrap();
}

/// `Rollup::Downsample` replaces whole buckets older than the cutoff by one aggregated point at the bucket
/// start (non-numeric resources keep each bucket's last value); a repeated pass changes nothing.
pub async fn retention_rolls_up_whole_buckets(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    let (num, word, counted) = ("roll/s/num", "roll/s/word", "roll/s/counted");
    let mut list: Vec<Update> = (0..100).map(|i| update(num, json!(i), i)).collect();
    list.extend((0..100).map(|i| update(word, json!(format!("w{i}")), i)));
    list.extend((0..100).map(|i| update(counted, json!(i), i - 50)));
    store.append(updates(list)).await.unwrap();

    let avg = Rollup::Downsample { every_micros: 10, aggregate: Aggregate::Avg };
    let outcome = store.retain(&[path(num), path(word)], at(55), avg).await.unwrap();
    // Cutoff 55 covers whole buckets [0, 50) only: 5 buckets of 10 points per resource.
    assert_eq!(outcome, RetentionOutcome { removed: 100, written: 10 });
    let history = all_history(&*store, num).await;
    assert_eq!(history.len(), 55);
    for (i, p) in history.iter().take(5).enumerate() {
        assert_eq!(p.timestamp.as_micros(), i as i64 * 10);
        assert!(close_to(&p.value, i as f64 * 10.0 + 4.5), "bucket {i}: {}", p.value);
    }
    assert_eq!(history[5], Point { timestamp: at(50), value: json!(50) });
    let words = all_history(&*store, word).await;
    assert_eq!(
        values(&words[..6]),
        vec![json!("w9"), json!("w19"), json!("w29"), json!("w39"), json!("w49"), json!("w50")]
    );

    assert_eq!(store.retain(&[path(num), path(word)], at(55), avg).await.unwrap(), RetentionOutcome::default());
    let later = store.retain(&[path(num)], at(70), avg).await.unwrap();
    assert_eq!(later, RetentionOutcome { removed: 20, written: 2 });
    let history = all_history(&*store, num).await;
    assert_eq!(history.len(), 37);
    assert!(close_to(&history[0].value, 4.5), "earlier rollups are left alone");
    assert!(close_to(&history[6].value, 64.5));

    let count = Rollup::Downsample { every_micros: 25, aggregate: Aggregate::Count };
    let outcome = store.retain(&[path(counted)], at(0), count).await.unwrap();
    assert_eq!(outcome, RetentionOutcome { removed: 50, written: 2 });
    let counts = all_history(&*store, counted).await;
    assert_eq!(counts[0], Point { timestamp: at(-50), value: json!(25) });
    assert_eq!(counts[1], Point { timestamp: at(-25), value: json!(25) });
    assert_eq!(store.retain(&[path(counted)], at(0), count).await.unwrap(), RetentionOutcome::default());
    assert_eq!(all_history(&*store, counted).await[0].value, json!(25), "a second pass does not recount");
    assert_eq!(current(&store.load().await.unwrap(), num), (Some(json!(99)), Some(at(99))));
    let bad = Rollup::Downsample { every_micros: 0, aggregate: Aggregate::Avg };
    assert!(matches!(store.retain(&[path(num)], at(10), bad).await, Err(StoreError::InvalidInput(_))));
    store.close().await.unwrap();
}

/// Deleting a provider removes its resources and history (and nothing else); the provider can come back.
pub async fn delete_provider_removes_state_and_history(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    store
        .append(updates(vec![
            update("gone.1/s/a", json!(1), 1),
            update("gone.1/t/b", json!("x"), 2),
            update("stays/s/a", json!(3), 3),
        ]))
        .await
        .unwrap();
    assert!(store.delete_provider(&name("gone.1")).await.unwrap());
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["stays"]);
    assert!(all_history(&*store, "gone.1/s/a").await.is_empty());
    assert!(all_history(&*store, "gone.1/t/b").await.is_empty());
    assert_eq!(all_history(&*store, "stays/s/a").await.len(), 1);
    assert!(!store.delete_provider(&name("gone.1")).await.unwrap());
    // Appending again after the delete creates fresh rows (no stale cached row ids).
    store.append(updates(vec![update("gone.1/s/a", json!(10), 10)])).await.unwrap();
    assert_eq!(values(&all_history(&*store, "gone.1/s/a").await), vec![json!(10)]);
    assert_eq!(current(&store.load().await.unwrap(), "gone.1/s/a"), (Some(json!(10)), Some(at(10))));
    store.close().await.unwrap();
}

/// Token records are stored, listed, replaced by hash and deleted.
pub async fn tokens_put_list_delete(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    assert!(store.tokens().await.unwrap().is_empty());
    let one = TokenRecord {
        hash: "a".repeat(64),
        subject: "alice".into(),
        roles: vec!["admin".into(), "operator".into()],
        description: Some("laptop".into()),
        created: at(1_000),
        expires: Some(at(2_000_000)),
    };
    let two = TokenRecord {
        hash: "b".repeat(64),
        subject: "bot".into(),
        roles: Vec::new(),
        description: None,
        created: at(2_000),
        expires: None,
    };
    store.put_token(one.clone()).await.unwrap();
    store.put_token(two.clone()).await.unwrap();
    assert_eq!(store.tokens().await.unwrap(), vec![one.clone(), two.clone()]);
    let replaced = TokenRecord { roles: vec!["viewer".into()], ..one.clone() };
    store.put_token(replaced.clone()).await.unwrap();
    assert_eq!(store.tokens().await.unwrap(), vec![replaced, two.clone()]);
    assert!(store.delete_token(&one.hash).await.unwrap());
    assert!(!store.delete_token(&one.hash).await.unwrap());
    assert_eq!(store.tokens().await.unwrap(), vec![two]);
    store.close().await.unwrap();
}

/// The policy text is saved and replaced whole.
pub async fn policy_save_and_load(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    assert_eq!(store.policy().await.unwrap(), None);
    let text = "p, role:admin, /*, *\ng, alice, role:admin\n# ünïcode, 'quotes' and \"more\"\n";
    store.save_policy(text).await.unwrap();
    assert_eq!(store.policy().await.unwrap().as_deref(), Some(text));
    store.save_policy("").await.unwrap();
    assert_eq!(store.policy().await.unwrap().as_deref(), Some(""));
    store.close().await.unwrap();
    let store = open(&h).await;
    assert_eq!(store.policy().await.unwrap().as_deref(), Some(""));
    store.close().await.unwrap();
}

fn audit_row(seq: u64, subject: &str, action: &str, owner: Option<&str>) -> AuditRow {
    AuditRow {
        seq,
        time: at(seq as i64 * 1_000),
        subject: subject.into(),
        action: action.into(),
        object: format!("care-{seq}/vitals/pulse"),
        owner: owner.map(Into::into),
        body: format!("{{\"seq\":{seq},\"note\":\"ünïcode 'quoted'\"}}"),
        hash: format!("{seq:064x}"),
    }
}

/// Audit rows are appended in order, read back by `seq` with every filter, survive a reopen, and a `seq` that
/// is already stored fails its whole append.
pub async fn audit_rows_append_filter_and_survive(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    assert_eq!(store.audit_head().await.unwrap(), None);
    let rows: Vec<AuditRow> = (1..=6)
        .map(|seq| {
            let subject = if seq % 2 == 0 { "alice" } else { "bob" };
            audit_row(seq, subject, if seq <= 3 { "read" } else { "write" }, (seq == 4).then_some("carol"))
        })
        .collect();
    store.append_audit(rows[..4].into(), Vec::new()).await.unwrap();
    let checkpoint =
        RecordWrite { namespace: "audit.checkpoints".into(), key: "6".into(), body: Some("signed".into()) };
    store.append_audit(rows[4..].into(), vec![checkpoint]).await.unwrap();
    assert_eq!(store.records("audit.checkpoints").await.unwrap(), [("6".to_owned(), "signed".to_owned())]);
    let all = |after| AuditQuery { after, limit: 100, ..AuditQuery::default() };
    assert_eq!(store.audit(all(0)).await.unwrap(), rows);
    assert_eq!(store.audit(all(4)).await.unwrap(), rows[4..]);
    assert_eq!(store.audit(AuditQuery { limit: 2, ..all(1) }).await.unwrap(), rows[1..3]);
    let seqs = |rows: Vec<AuditRow>| rows.iter().map(|r| r.seq).collect::<Vec<_>>();
    let alice = AuditQuery { subject: Some("alice".into()), ..all(0) };
    assert_eq!(seqs(store.audit(alice).await.unwrap()), [2, 4, 6]);
    let writes = AuditQuery { action: Some("write".into()), subject: Some("bob".into()), ..all(0) };
    assert_eq!(seqs(store.audit(writes).await.unwrap()), [5]);
    let carol = AuditQuery { owner: Some("carol".into()), ..all(0) };
    assert_eq!(seqs(store.audit(carol).await.unwrap()), [4]);
    let window = AuditQuery { from: Some(at(2_000)), to: Some(at(5_000)), ..all(0) };
    assert_eq!(seqs(store.audit(window).await.unwrap()), [2, 3, 4]);

    let clash = vec![audit_row(7, "eve", "read", None), audit_row(3, "eve", "read", None)];
    let late = RecordWrite { namespace: "audit.checkpoints".into(), key: "7".into(), body: Some("late".into()) };
    assert!(store.append_audit(clash.into(), vec![late]).await.is_err(), "a stored seq fails the append");
    assert_eq!(store.records("audit.checkpoints").await.unwrap().len(), 1, "nor its records");
    assert_eq!(store.audit_head().await.unwrap().as_ref(), rows.last(), "nothing of the failed append is kept");
    store.close().await.unwrap();

    let store = open(&h).await;
    assert_eq!(store.audit(all(0)).await.unwrap(), rows);
    assert_eq!(store.audit_head().await.unwrap().as_ref(), rows.last());
    store.close().await.unwrap();
}

/// Records are kept per namespace, replaced by key, listed in key order, deleted, and survive a reopen.
pub async fn records_put_list_delete(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    assert!(store.records("rules").await.unwrap().is_empty());
    store.put_record("rules", "b.noise", "rule b").await.unwrap();
    store.put_record("rules", "a.fall", "rule a").await.unwrap();
    store.put_record("plugins", "a.fall", "{\"other\": \"namespace\"}").await.unwrap();
    store.put_record("rules", "b.noise", "rule b, edited: ünïcode").await.unwrap();
    let rules = store.records("rules").await.unwrap();
    assert_eq!(
        rules,
        vec![
            ("a.fall".to_string(), "rule a".to_string()),
            ("b.noise".to_string(), "rule b, edited: ünïcode".to_string())
        ]
    );
    assert!(store.delete_record("rules", "a.fall").await.unwrap());
    assert!(!store.delete_record("rules", "a.fall").await.unwrap());
    store.close().await.unwrap();
    let store = open(&h).await;
    assert_eq!(store.records("rules").await.unwrap().len(), 1);
    assert_eq!(store.records("plugins").await.unwrap().len(), 1);
    store.close().await.unwrap();
}

/// Several record changes of one namespace apply in order, in one write, and survive a reopen.
pub async fn records_written_together(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    store.put_record("plugin-state:p", "gone", "x").await.unwrap();
    store.put_record("other", "k", "untouched").await.unwrap();
    let changes = vec![
        ("a".to_string(), Some("1".to_string())),
        ("b".to_string(), Some("2".to_string())),
        ("gone".to_string(), None),
        ("a".to_string(), Some("1, then 3".to_string())),
        ("never".to_string(), None),
    ];
    store.write_records("plugin-state:p", changes).await.unwrap();
    store.write_records("plugin-state:p", Vec::new()).await.unwrap();
    let want = vec![("a".to_string(), "1, then 3".to_string()), ("b".to_string(), "2".to_string())];
    assert_eq!(store.records("plugin-state:p").await.unwrap(), want);
    store.close().await.unwrap();
    let store = open(&h).await;
    assert_eq!(store.records("plugin-state:p").await.unwrap(), want);
    assert_eq!(store.records("other").await.unwrap(), vec![("k".to_string(), "untouched".to_string())]);
    store.close().await.unwrap();
}

/// Record changes carried by a batch are committed with its updates; a batch that fails writes neither.
pub async fn records_commit_with_updates(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    let state = |key: &str, body: Option<&str>| RecordWrite {
        namespace: "plugin-state:lora".into(),
        key: key.into(),
        body: body.map(str::to_owned),
    };
    store.put_record("plugin-state:lora", "old", "x").await.unwrap();
    let mut batch = updates(vec![update("lora-1/lorawan/fcnt", json!(41), 1)]);
    batch.records = vec![state("fcnt", Some("41")), state("old", None)];
    store.append(batch).await.unwrap();
    // A batch with an update that cannot be stored (no type to infer from null) fails whole.
    let mut bad =
        updates(vec![update("lora-1/lorawan/fcnt", json!(42), 2), update("lora-1/lorawan/x", Value::Null, 2)]);
    bad.records = vec![state("fcnt", Some("42"))];
    assert!(store.append(bad).await.is_err());
    store.close().await.unwrap();
    let store = open(&h).await;
    assert_eq!(store.records("plugin-state:lora").await.unwrap(), vec![("fcnt".to_string(), "41".to_string())]);
    let loaded = store.load().await.unwrap();
    let fcnt = provider(&loaded, "lora-1").resource("lorawan", "fcnt").and_then(|r| r.value.clone());
    assert_eq!(fcnt, Some(json!(41)));
    store.close().await.unwrap();
}

/// Many tasks appending at once all get their batches committed, and everything is there after a reopen.
pub async fn concurrent_appends_are_durable(h: Arc<dyn Harness>) {
    const TASKS: i64 = 16;
    const BATCHES: i64 = 20;
    const PER_BATCH: i64 = 25;
    let store = open(&h).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    let list = (0..PER_BATCH)
                        .map(|i| {
                            let n = b * PER_BATCH + i;
                            let own = format!("conc/t{task}/r{}", n % 5);
                            let p = if i % 5 == 0 { "conc/shared/r".to_owned() } else { own };
                            update(&p, json!(task * 100_000 + n), n * TASKS + task)
                        })
                        .collect();
                    store.append(updates(list)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    store.close().await.unwrap();
    let store = open(&h).await;
    let loaded = store.load().await.unwrap();
    let mut total = 0;
    let mut newest: HashMap<String, (i64, Value)> = HashMap::new();
    for task in 0..TASKS {
        for b in 0..BATCHES {
            for i in 0..PER_BATCH {
                let n = b * PER_BATCH + i;
                let p = if i % 5 == 0 { "conc/shared/r".to_owned() } else { format!("conc/t{task}/r{}", n % 5) };
                let t = n * TASKS + task;
                let e = newest.entry(p).or_insert((i64::MIN, Value::Null));
                if t >= e.0 {
                    *e = (t, json!(task * 100_000 + n));
                }
            }
        }
    }
    for (p, (t, v)) in &newest {
        total += all_history(&*store, p).await.len();
        assert_eq!(current(&loaded, p), (Some(v.clone()), Some(at(*t))), "{p}");
    }
    assert_eq!(total as i64, TASKS * BATCHES * PER_BATCH);
    store.close().await.unwrap();
}

/// A batch that cannot be stored fails on its own; batches committed in the same group are unaffected.
pub async fn bad_batch_fails_alone(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                // A null value cannot create a resource: there is no type to infer.
                let value = if i == 5 { Value::Null } else { json!(i) };
                store.append(updates(vec![update(&format!("bad/s/r{i}"), value, i)])).await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let result = t.await.unwrap();
        if i == 5 {
            assert!(matches!(result, Err(StoreError::InvalidInput(_))), "{result:?}");
        } else {
            assert!(result.is_ok(), "batch {i}: {result:?}");
        }
    }
    let loaded = store.load().await.unwrap();
    let bad = provider(&loaded, "bad");
    assert_eq!(bad.services["s"].resources.len(), 11);
    assert!(bad.resource("s", "r5").is_none());
    store.close().await.unwrap();
}

/// After `close`, writes fail with [`StoreError::Closed`]; closing twice is fine.
pub async fn closed_store_refuses_writes(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    store.append(updates(vec![update("c/s/r", json!(1), 1)])).await.unwrap();
    store.close().await.unwrap();
    let appended = store.append(updates(vec![update("c/s/r", json!(2), 2)])).await;
    assert!(matches!(appended, Err(StoreError::Closed)), "{appended:?}");
    assert!(matches!(store.save_policy("x").await, Err(StoreError::Closed)));
    assert!(matches!(store.delete_provider(&name("c")).await, Err(StoreError::Closed)));
    assert!(matches!(store.retain(&[path("c/s/r")], at(5), Rollup::Drop).await, Err(StoreError::Closed)));
    store.close().await.unwrap();
    let store = open(&h).await;
    assert_eq!(values(&all_history(&*store, "c/s/r").await), vec![json!(1)]);
    store.close().await.unwrap();
}

/// Reopening the storage gives back the same providers and history.
pub async fn reopen_keeps_state_and_history(h: Arc<dyn Harness>) {
    let store = open(&h).await;
    let mut unit = Resource::new(ResourceKind::Sensor, ValueType::Number);
    unit.unit = Some(Arc::from("dB"));
    store
        .append(WriteBatch {
            declarations: vec![(path("noise.12/sound/level"), unit)],
            updates: (0..50).map(|i| update("noise.12/sound/level", json!(40.0 + i as f64 / 2.0), i * 1_000)).collect(),
            records: Vec::new(),
        })
        .await
        .unwrap();
    store.append(updates(vec![update("noise.12/admin/status", json!("online"), 60_000)])).await.unwrap();
    store.save_policy("p").await.unwrap();
    let before = store.load().await.unwrap();
    let history = all_history(&*store, "noise.12/sound/level").await;
    store.close().await.unwrap();
    drop(store);

    let store = open(&h).await;
    assert_eq!(store.load().await.unwrap(), before);
    assert_eq!(all_history(&*store, "noise.12/sound/level").await, history);
    assert_eq!(history.len(), 50);
    store.append(updates(vec![update("noise.12/sound/level", json!(1), 100_000)])).await.unwrap();
    assert_eq!(all_history(&*store, "noise.12/sound/level").await.len(), 51);
    store.close().await.unwrap();
}
