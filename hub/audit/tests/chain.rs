//! The audit log in SQLite and in PostgreSQL: what is recorded survives, verifies, and every kind of tampering
//! done directly in the database (an edited entry, a deleted one, a reordered pair, a truncated tail, a rewrite
//! that recomputes the chain) is found at the right entry.
//!
//! PostgreSQL is `postgres://postgres@127.0.0.1:5432/test` unless `HUB_TEST_POSTGRES_URL` says otherwise; the
//! tests fail, rather than skip, when it cannot be reached. Each test works in its own schema.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hub_audit::{AuditLog, AuditOptions, Checkpoint, Decision, Entry, ProblemKind, Report, SigningKey, verify};
use hub_store::{AuditQuery, PostgresStore, SqliteStore, Store};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where a test's log lives, and how the test reaches the raw database to tamper with it.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres { url: String, schema: String },
}

impl Backend {
    fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    async fn postgres() -> Backend {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let url = std::env::var("HUB_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let backend = Backend::Postgres { url, schema: format!("audittest_{}_{nanos}_{n}", std::process::id()) };
        backend.execute(&[]).await; // fail early, with instructions, when the server is down
        backend
    }

    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(dir) => Arc::new(SqliteStore::open(&dir.path().join("hub.db")).unwrap()),
            Backend::Postgres { url, schema } => Arc::new(PostgresStore::connect(url, Some(schema)).await.unwrap()),
        }
    }

    /// Runs SQL statements (`?` placeholders are not used: values are inlined by the tests).
    async fn execute(&self, statements: &[String]) {
        match self {
            Backend::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.path().join("hub.db")).unwrap();
                for statement in statements {
                    conn.execute_batch(statement).unwrap();
                }
            }
            Backend::Postgres { url, schema } => {
                let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
                let (client, connection) = match tokio::time::timeout(Duration::from_secs(10), connect).await {
                    Ok(Ok(pair)) => pair,
                    failed => panic!(
                        "PostgreSQL is not reachable at {url}: {}\nStart it with `pg_ctlcluster \
                         --skip-systemctl-redirect $(ls /etc/postgresql) main start`, or point \
                         HUB_TEST_POSTGRES_URL at a server.",
                        failed.map_or_else(
                            |_| "timed out after 10 s".to_owned(),
                            |r| r.err().map(|e| e.to_string()).unwrap_or_default()
                        )
                    ),
                };
                tokio::spawn(connection);
                client.batch_execute(&format!("SET search_path = {schema}")).await.unwrap();
                for statement in statements {
                    client.batch_execute(statement).await.unwrap();
                }
            }
        }
    }

    async fn cleanup(&self) {
        if let Backend::Postgres { schema, .. } = self {
            self.execute(&[format!("DROP SCHEMA IF EXISTS {schema} CASCADE")]).await;
        }
    }
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn entry(i: u64) -> Entry {
    Entry::new(
        format!("officer-{}", i % 3),
        vec!["officer".into()],
        "read",
        format!("care-{i}/vitals/pulse"),
        Decision::Allowed,
    )
    .owned_by(Some(format!("citizen-{}", i % 5)))
}

/// `n` more entries with a checkpoint every `every`; closed (a last checkpoint covers everything).
async fn write_log(backend: &Backend, n: u64, every: u64) {
    let store = backend.open().await;
    let options = AuditOptions { checkpoint_every: every, max_batch: 7, ..AuditOptions::default() };
    let log = AuditLog::open(Arc::clone(&store), key(), options).await.unwrap();
    let head = log.head();
    for i in 1..=n {
        log.record(entry(i));
    }
    assert_eq!(log.flush().await.unwrap(), head + n);
    log.close().await;
    store.close().await.unwrap();
}

async fn check(backend: &Backend, published: &[Checkpoint]) -> Report {
    let store = backend.open().await;
    let report = verify(&*store, &key().verifying_key(), published).await.unwrap();
    store.close().await.unwrap();
    report
}

fn problem(report: &Report) -> (ProblemKind, u64, String) {
    let problem = report.problem.as_ref().unwrap_or_else(|| panic!("a problem is found: {report:?}"));
    (problem.kind, problem.seq, problem.message.clone())
}

async fn intact_log_verifies_and_goes_on_after_reopen(backend: Backend) {
    write_log(&backend, 25, 10).await;
    let report = check(&backend, &[]).await;
    assert!(report.ok, "{report:?}");
    assert_eq!((report.entries, report.covered), (25, 25));
    assert_eq!(report.checkpoints, 3, "at 10, 20 and the close at 25: {report:?}");

    // Reopened, the chain goes on from the stored head.
    let store = backend.open().await;
    let log = AuditLog::open(Arc::clone(&store), key(), AuditOptions::default()).await.unwrap();
    assert_eq!(log.head(), 25);
    log.record(entry(26).with_detail("after the reopen"));
    assert_eq!(log.flush().await.unwrap(), 26);
    let published = log.checkpoint().await.unwrap();
    assert_eq!(published.seq, 26);
    log.close().await;
    let rows = store.audit(AuditQuery { after: 25, limit: 10, ..AuditQuery::default() }).await.unwrap();
    assert_eq!(rows.len(), 1);
    let record = hub_audit::Record::from_row(&rows[0]).unwrap();
    assert_eq!(record.entry.detail.as_deref(), Some("after the reopen"));
    assert_eq!(record.entry.owner.as_deref(), Some("citizen-1"));
    store.close().await.unwrap();
    let report = check(&backend, &[published]).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.head.map(|h| h.0), Some(26));
    backend.cleanup().await;
}

async fn edited_entry_is_found(backend: Backend) {
    write_log(&backend, 30, 10).await;
    backend.execute(&["UPDATE audit SET body = replace(body, '\"read\"', '\"write\"') WHERE seq = 17".into()]).await;
    let (kind, seq, message) = problem(&check(&backend, &[]).await);
    assert_eq!((kind, seq), (ProblemKind::Altered, 17), "{message}");
    backend.cleanup().await;
}

async fn edited_column_is_found(backend: Backend) {
    write_log(&backend, 30, 10).await;
    backend.execute(&["UPDATE audit SET subject = 'somebody-else' WHERE seq = 12".into()]).await;
    let (kind, seq, message) = problem(&check(&backend, &[]).await);
    assert_eq!((kind, seq), (ProblemKind::Altered, 12), "{message}");
    assert!(message.contains("columns"), "{message}");
    backend.cleanup().await;
}

async fn deleted_entry_is_found(backend: Backend) {
    write_log(&backend, 30, 10).await;
    backend.execute(&["DELETE FROM audit WHERE seq = 17".into()]).await;
    let (kind, seq, message) = problem(&check(&backend, &[]).await);
    assert_eq!((kind, seq), (ProblemKind::Missing, 17), "{message}");
    assert!(message.contains("from entry 16 to entry 18"), "{message}");
    backend.cleanup().await;
}

async fn reordered_pair_is_found(backend: Backend) {
    write_log(&backend, 30, 10).await;
    backend
        .execute(&[
            "UPDATE audit SET seq = 1000000 WHERE seq = 17".into(),
            "UPDATE audit SET seq = 17 WHERE seq = 18".into(),
            "UPDATE audit SET seq = 18 WHERE seq = 1000000".into(),
        ])
        .await;
    let (kind, seq, message) = problem(&check(&backend, &[]).await);
    assert_eq!((kind, seq), (ProblemKind::Reordered, 17), "{message}");
    backend.cleanup().await;
}

async fn truncated_tail_is_found(backend: Backend) {
    write_log(&backend, 30, 10).await;
    backend.execute(&["DELETE FROM audit WHERE seq > 26".into()]).await;
    let (kind, seq, message) = problem(&check(&backend, &[]).await);
    assert_eq!((kind, seq), (ProblemKind::Truncated, 27), "{message}");
    assert!(message.contains("entries 27 to 30 were removed"), "{message}");
    backend.cleanup().await;
}

/// Rewrites entries from `from` on with a recomputed chain (what someone with full database access would do),
/// and removes the stored checkpoints that would betray it.
async fn rewrite_from(backend: &Backend, from: u64) {
    let store = backend.open().await;
    let rows = store.audit(AuditQuery { after: 0, limit: 1_000, ..AuditQuery::default() }).await.unwrap();
    store.close().await.unwrap();
    let mut prev = rows[from as usize - 2].hash.clone();
    let mut statements = vec!["DELETE FROM records WHERE namespace = 'audit.checkpoints'".to_owned()];
    for row in &rows[from as usize - 1..] {
        let mut body: Value = serde_json::from_str(&row.body).unwrap();
        body["prev"] = Value::String(prev.clone());
        if row.seq == from {
            body["decision"] = Value::String("denied".into());
        }
        let text = body.to_string();
        let hash = hex::encode(Sha256::digest(text.as_bytes()));
        statements.push(format!(
            "UPDATE audit SET body = '{}', hash = '{hash}' WHERE seq = {}",
            text.replace('\'', "''"),
            row.seq
        ));
        prev = hash;
    }
    backend.execute(&statements).await;
}

async fn rewritten_chain_is_found_by_a_published_checkpoint(backend: Backend) {
    write_log(&backend, 30, 10).await;
    // A checkpoint published outside the hub before the rewrite.
    let store = backend.open().await;
    let stored = store.records(hub_audit::CHECKPOINTS).await.unwrap();
    store.close().await.unwrap();
    let published: Vec<Checkpoint> = stored.iter().map(|(_, body)| Checkpoint::from_json(body).unwrap()).collect();
    assert_eq!(published.iter().map(|c| c.seq).collect::<Vec<_>>(), [10, 20, 30]);

    rewrite_from(&backend, 14).await;
    let report = check(&backend, &[]).await;
    assert!(report.ok, "with the stored checkpoints gone, the recomputed chain is consistent: {report:?}");
    let (kind, seq, message) = problem(&check(&backend, &published[1..2]).await);
    assert_eq!((kind, seq), (ProblemKind::Altered, 1), "only the checkpoint of 20 is known: {message}");
    let (kind, seq, message) = problem(&check(&backend, &published).await);
    assert_eq!((kind, seq), (ProblemKind::Altered, 11), "the rewrite lies after the checkpoint of 10: {message}");
    assert!(message.contains("entries 11 to 20 were rewritten"), "{message}");
    backend.cleanup().await;
}

async fn entries_appended_after_a_truncation_do_not_hide_it(backend: Backend) {
    write_log(&backend, 30, 10).await;
    backend.execute(&["DELETE FROM audit WHERE seq > 26".into()]).await;
    // The hub starts again on the shortened log and goes on: new entries 27 to 36 take the removed numbers.
    write_log(&backend, 10, 10).await;
    let (kind, seq, message) = problem(&check(&backend, &[]).await);
    assert_eq!(
        (kind, seq),
        (ProblemKind::Altered, 21),
        "the checkpoint signed for the old entry 30 is still there: {message}"
    );
    backend.cleanup().await;
}

async fn forged_checkpoint_is_refused(backend: Backend) {
    write_log(&backend, 12, 10).await;
    let forger = SigningKey::from_bytes(&[1; 32]);
    let store = backend.open().await;
    let head = store.audit_head().await.unwrap().unwrap();
    store.close().await.unwrap();
    let forged = Checkpoint::sign(&forger, head.seq, &head.hash, hub_model::Timestamp::now());
    let (kind, _, message) = problem(&check(&backend, &[forged]).await);
    assert_eq!(kind, ProblemKind::BadCheckpoint, "{message}");
    backend.cleanup().await;
}

macro_rules! both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::postgres().await).await;
                }
            )*
        }
    };
}

both_backends!(
    intact_log_verifies_and_goes_on_after_reopen,
    edited_entry_is_found,
    edited_column_is_found,
    deleted_entry_is_found,
    reordered_pair_is_found,
    truncated_tail_is_found,
    rewritten_chain_is_found_by_a_published_checkpoint,
    entries_appended_after_a_truncation_do_not_hide_it,
    forged_checkpoint_is_refused,
);
