//! The conformance suite against PostgreSQL, each test in its own schema (dropped at the end).
//!
//! The server is `postgres://postgres@127.0.0.1:5432/test` unless `HUB_TEST_POSTGRES_URL` says otherwise. These
//! tests fail, rather than skip, when it cannot be reached.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use hub_store::{PostgresStore, Store, StoreError, conformance::Harness};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn url() -> String {
    std::env::var("HUB_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

async fn admin_client() -> tokio_postgres::Client {
    let url = url();
    let connect = tokio_postgres::connect(&url, tokio_postgres::NoTls);
    let (client, connection) = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => panic!("{}", unreachable_message(&url, &e.to_string())),
        Err(_) => panic!("{}", unreachable_message(&url, "timed out after 10 s")),
    };
    tokio::spawn(connection);
    client
}

fn unreachable_message(url: &str, error: &str) -> String {
    format!(
        "PostgreSQL is not reachable at {url}: {error}\n\
         Start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` (and create the \
         database with `createdb -h 127.0.0.1 -U postgres test`), or point HUB_TEST_POSTGRES_URL at a server."
    )
}

struct PgHarness {
    url: String,
    schema: String,
}

impl PgHarness {
    async fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        admin_client().await; // fail early, with instructions, when the server is down
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        PgHarness { url: url(), schema: format!("hubtest_{}_{nanos}_{n}", std::process::id()) }
    }
}

#[async_trait]
impl Harness for PgHarness {
    async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(Arc::new(PostgresStore::connect(&self.url, Some(&self.schema)).await?))
    }

    async fn cleanup(&self) {
        let client = admin_client().await;
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema)).await.unwrap();
    }
}

hub_store::conformance_tests!(PgHarness::new().await);

#[tokio::test]
async fn bad_urls_and_schemas_are_invalid_input() {
    let err = PostgresStore::connect("postgres://127.0.0.1:5432/x?bogus=1", None).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    let err = PostgresStore::connect(&url(), Some("Robert'); DROP TABLE x;--")).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    // Port 1 on loopback: nothing listens there.
    let err = PostgresStore::connect("postgres://postgres@127.0.0.1:1/test", None).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
}
