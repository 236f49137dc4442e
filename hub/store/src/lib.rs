//! Durable state and history: the [`Store`] trait and its two backends.
//!
//! The store keeps three things: the declared model and current value of every resource (so the twin can be
//! rebuilt after a restart), the history of values (append-only, queried by time range with cursor paging and
//! downsampling, trimmed by retention), and the hub's own records (token hashes, the casbin policy text, the audit log).
//! SQLite (WAL, in the data directory) is the embedded default; PostgreSQL is selected by URL. Both pass the
//! same conformance suite in [`conformance`].

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use hub_model::{Name, Provider, Resource, ResourcePath, Timestamp, Update};
use serde::{Deserialize, Serialize};

mod common;
#[doc(hidden)]
pub mod conformance;
pub mod postgres;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};

/// Opens the store a URL names: `postgres://…` or `postgresql://…` for PostgreSQL, `sqlite://PATH` or a plain
/// file path for SQLite (`sqlite:///var/lib/hub/hub.db` is an absolute path).
pub async fn open_url(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::connect(url, None).await?));
    }
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    if path.is_empty() {
        return Err(StoreError::InvalidInput(format!("store url {url:?} names no database file")));
    }
    if path.contains("://") {
        return Err(StoreError::InvalidInput(format!(
            "store url {url:?}: use sqlite://PATH, a file path, or postgres://..."
        )));
    }
    let path = Path::new(path).to_path_buf();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
        .await
        .map_err(|e| StoreError::Unavailable(format!("opening the sqlite store failed: {e}")))??;
    Ok(Arc::new(store))
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused the operation; the caller may retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The caller asked for something malformed (e.g. a cursor that was not issued by this store).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The store is shutting down and accepts no more writes.
    #[error("storage is shutting down")]
    Closed,
}

/// One durable write: resource declarations and value updates, committed together.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    /// Resources to create or re-declare (kind, type, unit, metadata, parameters). Their `value` and
    /// `timestamp` fields are ignored: values travel in `updates`.
    pub declarations: Vec<(ResourcePath, Resource)>,
    /// New values. Each is appended to history; the current value of a resource becomes the update with the
    /// newest timestamp (ties: the later one in the batch).
    pub updates: Arc<[Update]>,
    /// Record changes committed in the same transaction as the updates (a plugin's state after the call that
    /// produced them), applied in order after them.
    pub records: Vec<RecordWrite>,
}

/// One record change inside a [`WriteBatch`]: `Some(body)` stores it, `None` deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordWrite {
    /// The record's namespace.
    pub namespace: String,
    /// Its key.
    pub key: String,
    /// The new body, or `None` to delete it.
    pub body: Option<String>,
}

/// Which way a history page runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Oldest first.
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// A page of raw history.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// The resource.
    pub path: ResourcePath,
    /// Inclusive lower bound.
    pub from: Option<Timestamp>,
    /// Exclusive upper bound.
    pub to: Option<Timestamp>,
    /// At most this many points (the API caps it).
    pub limit: usize,
    /// Direction.
    pub order: Order,
    /// Resume after this cursor (from a previous page of the same query).
    pub cursor: Option<String>,
}

/// One stored point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// When the value was measured.
    pub timestamp: Timestamp,
    /// The value.
    pub value: serde_json::Value,
}

/// A page of history and the cursor for the next one (`None` at the end).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The points, in the requested order.
    pub points: Vec<Point>,
    /// Opaque; pass it back as [`HistoryQuery::cursor`] to get the next page.
    pub next_cursor: Option<String>,
}

/// How values in one time bucket are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// Arithmetic mean (numeric resources only).
    Avg,
    /// Smallest value (numeric resources only).
    Min,
    /// Largest value (numeric resources only).
    Max,
    /// Sum (numeric resources only).
    Sum,
    /// Number of points (any type).
    Count,
    /// The newest value in the bucket (any type).
    Last,
}

impl Aggregate {
    /// Whether this aggregate needs numeric values.
    pub fn needs_numbers(self) -> bool {
        !matches!(self, Aggregate::Count | Aggregate::Last)
    }
}

/// A downsampling query: fixed buckets of `every` microseconds, aligned to the Unix epoch.
#[derive(Debug, Clone)]
pub struct DownsampleQuery {
    /// The resource.
    pub path: ResourcePath,
    /// Inclusive lower bound.
    pub from: Option<Timestamp>,
    /// Exclusive upper bound.
    pub to: Option<Timestamp>,
    /// Bucket width in microseconds (> 0).
    pub every_micros: i64,
    /// How to combine the values in a bucket.
    pub aggregate: Aggregate,
    /// At most this many buckets.
    pub limit: usize,
    /// Direction.
    pub order: Order,
}

/// One downsampled bucket. Empty buckets are not returned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// The bucket's start (aligned to the epoch).
    pub start: Timestamp,
    /// The aggregate value.
    pub value: serde_json::Value,
    /// How many points fell in the bucket.
    pub count: u64,
}

/// What retention does to points older than the cutoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rollup {
    /// Delete them.
    Drop,
    /// Replace them by one point per bucket of `every_micros` (at the bucket start), combined with `aggregate`.
    /// Non-numeric resources keep the last value of each bucket whatever the aggregate.
    Downsample {
        /// Bucket width in microseconds.
        every_micros: i64,
        /// How values are combined.
        aggregate: Aggregate,
    },
}

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Raw points removed.
    pub removed: u64,
    /// Aggregated points written in their place.
    pub written: u64,
}

/// A stored API token: only the hash of the secret is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// Who the token authenticates.
    pub subject: String,
    /// Roles the token carries.
    pub roles: Vec<String>,
    /// A note from whoever created it.
    pub description: Option<String>,
    /// Creation time.
    pub created: Timestamp,
    /// Expiry, if any.
    pub expires: Option<Timestamp>,
}

/// One entry of the audit log as stored: its place in the chain, the columns queries filter on, the entry's
/// canonical text and its chain hash. The store keeps the rows in `seq` order and never changes one; what they
/// mean (and how the chain is verified) is the audit log's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When the entry was recorded.
    pub time: Timestamp,
    /// Who acted.
    pub subject: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub object: String,
    /// Whose data the entry is about (personal data), for "who looked at my data?".
    pub owner: Option<String>,
    /// The entry's canonical text, hashed into the chain.
    pub body: String,
    /// The chain hash after this entry (hex).
    pub hash: String,
}

/// Which audit rows to read: ascending `seq` after `after`, at most `limit`, filtered by the given columns.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only rows with a larger `seq`.
    pub after: u64,
    /// At most this many rows.
    pub limit: usize,
    /// Only rows of this subject.
    pub subject: Option<String>,
    /// Only rows of this action.
    pub action: Option<String>,
    /// Only rows about this owner's data.
    pub owner: Option<String>,
    /// Only rows recorded at or after this time.
    pub from: Option<Timestamp>,
    /// Only rows recorded before this time.
    pub to: Option<Timestamp>,
}

/// The storage seam. Every method is safe to call concurrently; writes are durable when they return.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every provider with its declared resources and current values, for rebuilding the twin at start.
    /// `admin/last_seen` is not stored; the twin recomputes it.
    async fn load(&self) -> Result<Vec<Provider>, StoreError>;

    /// Commits a batch durably (history rows, current values, declarations) in one transaction. Concurrent
    /// calls are grouped into one commit (group commit); each returns only once its batch is on disk.
    async fn append(&self, batch: WriteBatch) -> Result<(), StoreError>;

    /// Deletes a provider with all its resources and history. Returns whether it existed.
    async fn delete_provider(&self, provider: &Name) -> Result<bool, StoreError>;

    /// A page of raw history.
    async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError>;

    /// Downsampled history.
    async fn downsample(&self, query: DownsampleQuery) -> Result<Vec<Bucket>, StoreError>;

    /// Applies retention to the given resources: points strictly older than `cutoff` are dropped or rolled up.
    async fn retain(
        &self,
        resources: &[ResourcePath],
        cutoff: Timestamp,
        rollup: Rollup,
    ) -> Result<RetentionOutcome, StoreError>;

    /// Stores a new token record.
    async fn put_token(&self, token: TokenRecord) -> Result<(), StoreError>;

    /// Every token record.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Deletes a token by hash. Returns whether it existed.
    async fn delete_token(&self, hash: &str) -> Result<bool, StoreError>;

    /// The saved policy text, if one was ever saved.
    async fn policy(&self) -> Result<Option<String>, StoreError>;

    /// Saves the policy text (replacing the previous one).
    async fn save_policy(&self, text: &str) -> Result<(), StoreError>;

    /// Stores a small named document under `namespace` and `key`, replacing any previous one. Other parts of the
    /// hub keep their durable records here (deployed rules, installed plugins, plugin state).
    async fn put_record(&self, namespace: &str, key: &str, body: &str) -> Result<(), StoreError> {
        self.write_records(namespace, vec![(key.to_owned(), Some(body.to_owned()))]).await
    }

    /// Applies several changes to the records of `namespace` in one durable transaction, in order: `Some(body)`
    /// stores the record under its key, `None` deletes it. All of them or none are applied (a plugin's state
    /// changes of one call, for example).
    async fn write_records(&self, namespace: &str, changes: Vec<(String, Option<String>)>) -> Result<(), StoreError>;

    /// Every record of a namespace as `(key, body)`, ordered by key.
    async fn records(&self, namespace: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// Deletes one record. Returns whether it existed.
    async fn delete_record(&self, namespace: &str, key: &str) -> Result<bool, StoreError>;

    /// Appends audit rows durably, in one transaction with `records` (the log's checkpoints). Rows must continue
    /// the log: a `seq` already stored fails the whole append. Shared, so that a writer can retry the same rows.
    async fn append_audit(&self, rows: Arc<[AuditRow]>, records: Vec<RecordWrite>) -> Result<(), StoreError>;

    /// Audit rows in ascending `seq`, as the query selects.
    async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditRow>, StoreError>;

    /// The audit row with the largest `seq`, if any.
    async fn audit_head(&self) -> Result<Option<AuditRow>, StoreError>;

    /// Flushes pending writes and stops accepting new ones. Later writes fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;
}
