//! The conformance suite against SQLite, in a fresh temporary directory per test.

use std::sync::Arc;

use async_trait::async_trait;
use hub_store::{SqliteOptions, SqliteStore, Store, StoreError, conformance::Harness};

struct SqliteHarness {
    dir: tempfile::TempDir,
    options: SqliteOptions,
}

impl SqliteHarness {
    fn new(options: SqliteOptions) -> Self {
        SqliteHarness { dir: tempfile::tempdir().unwrap(), options }
    }
}

#[async_trait]
impl Harness for SqliteHarness {
    async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        let path = self.dir.path().join("hub.db");
        let options = self.options.clone();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open_with(&path, options)).await.unwrap()?;
        Ok(Arc::new(store))
    }
}

hub_store::conformance_tests!(SqliteHarness::new(SqliteOptions::default()));

/// The same suite with staged history rows moving to the indexed table after nearly every commit, so reads
/// always span both tables and cursors cross the move.
mod staged_moves {
    use super::*;

    hub_store::conformance_tests!(SqliteHarness::new(SqliteOptions { staged_rows: 7, ..Default::default() }));
}

#[tokio::test]
async fn open_url_accepts_sqlite_urls_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.db");
    let store = hub_store::open_url(&format!("sqlite://{}", file.display())).await.unwrap();
    store.save_policy("x").await.unwrap();
    store.close().await.unwrap();
    assert!(file.exists());
    let plain = dir.path().join("b.db");
    let store = hub_store::open_url(plain.to_str().unwrap()).await.unwrap();
    store.close().await.unwrap();
    assert!(plain.exists());
    assert!(matches!(hub_store::open_url("sqlite://").await, Err(StoreError::InvalidInput(_))));
    assert!(matches!(hub_store::open_url("mysql://x/y").await, Err(StoreError::InvalidInput(_))));
}

#[tokio::test]
async fn synchronous_normal_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let options = hub_store::SqliteOptions { synchronous: hub_store::Synchronous::Normal, ..Default::default() };
    let store = SqliteStore::open_with(&dir.path().join("n.db"), options).unwrap();
    store.save_policy("x").await.unwrap();
    assert_eq!(store.policy().await.unwrap().as_deref(), Some("x"));
    store.close().await.unwrap();
}

#[test]
fn a_missing_directory_is_reported() {
    let err = SqliteStore::open(std::path::Path::new("/nonexistent/dir/hub.db")).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
}
