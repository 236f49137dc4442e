//! The embedded backend: one SQLite file in WAL mode.
//!
//! Every write goes through one dedicated OS thread that owns the only writing connection and commits in groups:
//! it drains every batch waiting in its (bounded) queue into one transaction, commits once, then answers each
//! caller. New history rows are staged in a small table and moved to the big indexed one in bulk (see
//! [`DEFAULT_STAGED_ROWS`]). Reads run on a small pool of read-only connections on tokio's blocking threads, so
//! no async worker ever waits on the disk, and WAL lets them proceed while the writer commits.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use async_trait::async_trait;
use hub_model::{Name, Provider, Resource, ResourcePath, Timestamp, ValueType};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params, params_from_iter};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

use crate::{
    AuditQuery, AuditRow, Bucket, DownsampleQuery, HistoryPage, HistoryQuery, RecordWrite, RetentionOutcome, Rollup,
    Store, StoreError, TokenRecord, WriteBatch,
    common::{
        self, Ack, BucketRow, Command, EncodedDeclaration, GroupRows, MAX_GROUP, RESOURCE_COLUMNS, ResourceRow,
        SCHEMA_VERSION, SQLITE, Step, WriterHandle,
    },
};

/// How hard SQLite works to make a commit survive a power cut (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit is synced to disk before it returns: nothing acknowledged is ever lost.
    #[default]
    Full,
    /// The WAL is synced at checkpoints only: faster; a power cut (not a crash of the hub) may lose the last
    /// commits, but never corrupts the database.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// Tuning of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Durability of commits. Default: [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// How many read-only connections serve reads concurrently. Default: 4.
    pub readers: usize,
    /// How many write commands may wait for the writer before callers are held back. Default: 256.
    pub queue_capacity: usize,
    /// How long a connection waits for a lock held by another process before failing. Default: 5 s.
    pub busy_timeout: Duration,
    /// How many new history rows are staged in a small table before they move, in one transaction, to the
    /// indexed history (see [`DEFAULT_STAGED_ROWS`] for why). Default: 16,384.
    pub staged_rows: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            readers: 4,
            queue_capacity: 256,
            busy_timeout: Duration::from_secs(5),
            staged_rows: DEFAULT_STAGED_ROWS,
        }
    }
}

/// The SQLite-backed [`Store`].
pub struct SqliteStore {
    writer: WriterHandle,
    thread: Mutex<Option<JoinHandle<()>>>,
    reads: Arc<ReadPool>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.reads.path).finish_non_exhaustive()
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    use rusqlite::{Error, ErrorCode};
    match &e {
        Error::SqliteFailure(err, _) if matches!(err.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            StoreError::Corrupt(e.to_string())
        }
        Error::FromSqlConversionFailure(..) | Error::InvalidColumnType(..) | Error::IntegralValueOutOfRange(..) => {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Unavailable(format!("sqlite: {e}")),
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    id INTEGER PRIMARY KEY,
    provider TEXT NOT NULL,
    service TEXT NOT NULL,
    resource TEXT NOT NULL,
    kind TEXT NOT NULL,
    type TEXT NOT NULL,
    unit TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    parameters TEXT NOT NULL DEFAULT '{}',
    value TEXT,
    ts INTEGER,
    UNIQUE (provider, service, resource)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    rid INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    num REAL,
    val TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_rid_ts_num ON history (rid, ts, num);
CREATE TABLE IF NOT EXISTS history_recent (
    id INTEGER PRIMARY KEY,
    rid INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    num REAL,
    val TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_recent_rid_ts ON history_recent (rid, ts);
CREATE VIEW IF NOT EXISTS history_all AS
    SELECT id, rid, ts, num, val FROM history UNION ALL SELECT id, rid, ts, num, val FROM history_recent;
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    roles TEXT NOT NULL,
    description TEXT,
    created INTEGER NOT NULL,
    expires INTEGER
);
CREATE TABLE IF NOT EXISTS policy (id INTEGER PRIMARY KEY CHECK (id = 1), text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    subject TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    owner TEXT,
    body TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_subject ON audit (subject, seq);
CREATE INDEX IF NOT EXISTS audit_owner ON audit (owner, seq) WHERE owner IS NOT NULL;
";

const UPSERT_DECLARATION: &str = "INSERT INTO resources (provider, service, resource, kind, type, unit, metadata, \
     parameters) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (provider, service, resource) DO UPDATE SET \
     kind = excluded.kind, type = excluded.type, unit = excluded.unit, metadata = excluded.metadata, \
     parameters = excluded.parameters RETURNING id";
const SELECT_RESOURCE: &str = "SELECT id, type FROM resources WHERE provider = ?1 AND service = ?2 AND resource = ?3";
const INSERT_RECENT: &str = "INSERT INTO history_recent (id, rid, ts, num, val) VALUES (?1, ?2, ?3, ?4, ?5)";
const INSERT_HISTORY: &str = "INSERT INTO history (id, rid, ts, num, val) VALUES (?1, ?2, ?3, ?4, ?5)";
const UPDATE_CURRENT: &str = "UPDATE resources SET value = ?1, ts = ?2 WHERE id = ?3 AND (ts IS NULL OR ts <= ?2)";

/// Default of [`SqliteOptions::staged_rows`].
///
/// Each commit of many resources would otherwise dirty one leaf of the large `(rid, ts)` index per resource, so
/// a commit of 1,000 resources rewrote about 1,000 pages into the WAL. The staging table's index stays small
/// (a few dozen pages), and moving its rows in bulk touches each resource's leaf of the big index once per move
/// instead of once per commit. Reads see both tables through the `history_all` view; ids are global, so
/// cursors survive the move, and every staged id is greater than every id in `history` (rows only enter
/// `history` by a move, or by retention right after one).
pub const DEFAULT_STAGED_ROWS: usize = 16_384;
/// Pages the WAL may hold before a commit checkpoints it (SQLite's default is 1,000: checkpointing that often
/// costs a third of the append throughput when many resources are written at once).
const WAL_AUTOCHECKPOINT: i64 = 8_192;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with default options: WAL, `synchronous = FULL`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if needed) the database at `path`, creates the schema and starts the writer thread.
    /// Blocks while it opens the file: call it from a blocking context (or at start-up).
    pub fn open_with(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let conn = open_writer(path, &options)?;
        let reads = Arc::new(ReadPool {
            path: path.to_path_buf(),
            busy_timeout: options.busy_timeout,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(options.readers.max(1))),
        });
        let first_reader = reads.open_reader()?;
        reads.give(first_reader);
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let writer = Writer::new(conn, options.staged_rows)?;
        let thread = std::thread::Builder::new()
            .name("hub-store-sqlite".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the sqlite writer thread: {e}")))?;
        Ok(SqliteStore { writer: WriterHandle::new(tx), thread: Mutex::new(Some(thread)), reads })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.reads.path
    }
}

fn open_writer(path: &Path, options: &SqliteOptions) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open sqlite database {}: {e}", path.display())))?;
    conn.busy_timeout(options.busy_timeout).map_err(db)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(db)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "sqlite database {} cannot use WAL (mode {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", options.synchronous.pragma()).map_err(db)?;
    // A large page cache keeps the history index in memory while many resources append at once.
    conn.pragma_update(None, "cache_size", -65_536).map_err(db)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT).map_err(db)?;
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(db)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(SCHEMA).map_err(db)?;
    let version: Option<i64> =
        conn.query_row("SELECT max(version) FROM schema_version", [], |row| row.get(0)).map_err(db)?;
    match version {
        None => {
            conn.execute("INSERT INTO schema_version (version) VALUES (?1)", [SCHEMA_VERSION]).map_err(db)?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::Corrupt(format!(
                "database schema version {v} is newer than this hub understands ({SCHEMA_VERSION})"
            )));
        }
        Some(_) => {}
    }
    Ok(conn)
}

/// Read-only connections, reused across reads, at most `permits` in use at once.
struct ReadPool {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    fn open_reader(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| {
            StoreError::Unavailable(format!("cannot open sqlite database {}: {e}", self.path.display()))
        })?;
        conn.busy_timeout(self.busy_timeout).map_err(db)?;
        conn.pragma_update(None, "cache_size", -16_384).map_err(db)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    fn take(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }

    fn give(&self, conn: Connection) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
    }

    /// Runs `read` on a pooled connection on a blocking thread.
    async fn run<T, F>(self: &Arc<Self>, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the sqlite reader pool is closed".into()))?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match pool.take() {
                Some(conn) => conn,
                None => pool.open_reader()?,
            };
            let result = read(&conn);
            pool.give(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("sqlite read task failed: {e}")))?
    }
}

fn lookup(conn: &Connection, path: &ResourcePath) -> Result<Option<(i64, ValueType)>, StoreError> {
    let row = conn
        .prepare_cached(SELECT_RESOURCE)
        .map_err(db)?
        .query_row(params![path.provider.as_str(), path.service.as_str(), path.resource.as_str()], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })
        .optional()
        .map_err(db)?;
    row.map(|(id, ty)| Ok((id, common::parse_value_type(&ty)?))).transpose()
}

/// The writer thread's state: the only writing connection and the path → row id cache.
struct Writer {
    conn: Connection,
    cache: HashMap<ResourcePath, i64>,
    /// The id of the next history row (ids are global across `history` and `history_recent`).
    next_id: i64,
    /// Rows in `history_recent`.
    staged: usize,
    /// Move staged rows once there are this many.
    staged_limit: usize,
}

impl Writer {
    fn new(conn: Connection, staged_limit: usize) -> Result<Self, StoreError> {
        let last_id: Option<i64> =
            conn.query_row("SELECT max(id) FROM history_all", [], |row| row.get(0)).map_err(db)?;
        let staged: i64 = conn.query_row("SELECT count(*) FROM history_recent", [], |row| row.get(0)).map_err(db)?;
        Ok(Writer {
            conn,
            cache: HashMap::new(),
            next_id: last_id.unwrap_or(0).saturating_add(1),
            staged: usize::try_from(staged).unwrap_or(0),
            staged_limit,
        })
    }

    /// Moves every staged row into `history`, in one transaction.
    fn move_staged(&mut self) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        move_staged(&tx)?;
        tx.commit().map_err(db)?;
        self.staged = 0;
        Ok(())
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut drained = vec![first];
            while drained.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(command) => drained.push(command),
                    Err(_) => break,
                }
            }
            let mut steps = common::steps(drained).into_iter();
            while let Some(step) = steps.next() {
                match step {
                    Step::Appends(group) => {
                        self.appends(group);
                        if self.staged >= self.staged_limit {
                            // Callers already have their answer; a failure here only delays the move.
                            if let Err(e) = self.move_staged() {
                                tracing::warn!(error = %e, "moving staged history rows failed; will retry");
                            }
                        }
                    }
                    Step::Other(Command::Close(ack)) => {
                        for step in steps {
                            match step {
                                Step::Appends(group) => group.into_iter().for_each(|(_, ack)| {
                                    let _ = ack.send(Err(StoreError::Closed));
                                }),
                                Step::Other(command) => common::refuse(command),
                            }
                        }
                        rx.close();
                        while let Ok(command) = rx.try_recv() {
                            common::refuse(command);
                        }
                        if self.staged > 0
                            && let Err(e) = self.move_staged()
                        {
                            tracing::warn!(error = %e, "moving staged history rows at close failed");
                        }
                        let result = self.conn.close().map_err(|(_, e)| db(e));
                        let _ = ack.send(result);
                        return;
                    }
                    Step::Other(command) => self.other(command),
                }
            }
        }
    }

    fn appends(&mut self, group: Vec<(WriteBatch, Ack<()>)>) {
        let batches: Vec<&WriteBatch> = group.iter().map(|(batch, _)| batch).collect();
        let result = self.commit(&batches);
        match result {
            Ok(()) => group.into_iter().for_each(|(_, ack)| {
                let _ = ack.send(Ok(()));
            }),
            Err(e) if group.len() == 1 => {
                if let Some((_, ack)) = group.into_iter().next() {
                    let _ = ack.send(Err(e));
                }
            }
            Err(e) => {
                // One bad batch must not fail its neighbours: retry them one by one.
                tracing::warn!(error = %e, batches = group.len(), "group commit failed, retrying batch by batch");
                for (batch, ack) in group {
                    let _ = ack.send(self.commit(&[&batch]));
                }
            }
        }
    }

    fn commit(&mut self, batches: &[&WriteBatch]) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        let mut fresh: HashMap<ResourcePath, i64> = HashMap::new();
        let mut rows = GroupRows::default();
        for batch in batches {
            for (path, resource) in common::stored_declarations(batch) {
                let rid = declare(&tx, path, resource)?;
                fresh.insert(path.clone(), rid);
            }
            for update in common::stored_updates(batch) {
                let rid = match fresh.get(&update.path).or_else(|| self.cache.get(&update.path)) {
                    Some(&rid) => rid,
                    None => {
                        let rid = resolve(&tx, &update.path, &update.value)?;
                        fresh.insert(update.path.clone(), rid);
                        rid
                    }
                };
                rows.push(rid, update)?;
            }
        }
        let mut next_id = self.next_id;
        {
            let mut insert = tx.prepare_cached(INSERT_RECENT).map_err(db)?;
            for row in &rows.history {
                insert.execute(params![next_id, row.rid, row.ts, row.num, row.val]).map_err(db)?;
                next_id += 1;
            }
            let mut current = tx.prepare_cached(UPDATE_CURRENT).map_err(db)?;
            for (rid, ts, val) in rows.current() {
                current.execute(params![val, ts, rid]).map_err(db)?;
            }
        }
        for record in batches.iter().flat_map(|b| &b.records) {
            write_record(&tx, &record.namespace, &record.key, record.body.as_deref())?;
        }
        tx.commit().map_err(db)?;
        self.cache.extend(fresh);
        self.next_id = next_id;
        self.staged += rows.history.len();
        Ok(())
    }

    fn other(&mut self, command: Command) {
        match command {
            Command::DeleteProvider(name, ack) => {
                let _ = ack.send(self.delete_provider(&name));
            }
            Command::Retain(paths, cutoff, rollup, ack) => {
                let _ = ack.send(self.retain(&paths, cutoff, rollup));
            }
            Command::PutToken(token, ack) => {
                let _ = ack.send(self.put_token(&token));
            }
            Command::DeleteToken(hash, ack) => {
                let _ = ack
                    .send(self.conn.execute("DELETE FROM tokens WHERE hash = ?1", [hash]).map(|n| n > 0).map_err(db));
            }
            Command::SavePolicy(text, ack) => {
                let result = self.conn.execute(
                    "INSERT INTO policy (id, text) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET text = excluded.text",
                    [text],
                );
                let _ = ack.send(result.map(|_| ()).map_err(db));
            }
            Command::WriteRecords { namespace, changes, ack } => {
                let _ = ack.send(self.write_records(&namespace, changes));
            }
            Command::DeleteRecord { namespace, key, ack } => {
                let result =
                    self.conn.execute("DELETE FROM records WHERE namespace = ?1 AND key = ?2", [namespace, key]);
                let _ = ack.send(result.map(|n| n > 0).map_err(db));
            }
            Command::AppendAudit(rows, records, ack) => {
                let _ = ack.send(self.append_audit(&rows, &records));
            }
            // Appends and Close never reach here (see `run`); answer rather than drop them.
            command @ (Command::Append(..) | Command::Close(_)) => common::refuse(command),
        }
    }

    fn append_audit(&mut self, rows: &[AuditRow], records: &[RecordWrite]) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO audit (seq, ts, subject, action, object, owner, body, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(db)?;
            for row in rows {
                insert
                    .execute(params![
                        common::audit_seq(row.seq)?,
                        row.time.as_micros(),
                        row.subject,
                        row.action,
                        row.object,
                        row.owner,
                        row.body,
                        row.hash
                    ])
                    .map_err(db)?;
            }
        }
        for record in records {
            write_record(&tx, &record.namespace, &record.key, record.body.as_deref())?;
        }
        tx.commit().map_err(db)
    }

    fn write_records(&mut self, namespace: &str, changes: Vec<(String, Option<String>)>) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        for (key, body) in &changes {
            write_record(&tx, namespace, key, body.as_deref())?;
        }
        tx.commit().map_err(db)
    }

    fn delete_provider(&mut self, provider: &Name) -> Result<bool, StoreError> {
        self.cache.retain(|path, _| path.provider != *provider);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        tx.execute(
            "DELETE FROM history WHERE rid IN (SELECT id FROM resources WHERE provider = ?1)",
            [provider.as_str()],
        )
        .map_err(db)?;
        let unstaged = tx
            .execute(
                "DELETE FROM history_recent WHERE rid IN (SELECT id FROM resources WHERE provider = ?1)",
                [provider.as_str()],
            )
            .map_err(db)?;
        let deleted = tx.execute("DELETE FROM resources WHERE provider = ?1", [provider.as_str()]).map_err(db)?;
        tx.commit().map_err(db)?;
        self.staged = self.staged.saturating_sub(unstaged);
        Ok(deleted > 0)
    }

    fn retain(
        &mut self,
        paths: &[ResourcePath],
        cutoff: Timestamp,
        rollup: Rollup,
    ) -> Result<RetentionOutcome, StoreError> {
        if let Rollup::Downsample { every_micros, .. } = rollup {
            common::check_every(every_micros)?;
        }
        let cutoff = cutoff.as_micros();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        // With every point in `history`, retention deletes and inserts in one table.
        move_staged(&tx)?;
        let mut next_id = self.next_id;
        let mut outcome = RetentionOutcome::default();
        for path in paths {
            let Some((rid, value_type)) = lookup(&tx, path)? else { continue };
            match rollup {
                Rollup::Drop => {
                    let removed =
                        tx.execute("DELETE FROM history WHERE rid = ?1 AND ts < ?2", [rid, cutoff]).map_err(db)?;
                    outcome.removed += removed as u64;
                }
                Rollup::Downsample { every_micros, aggregate } => {
                    let cutoff = common::rollup_cutoff(cutoff, every_micros);
                    let sql = common::rollup_sql(SQLITE, rid, cutoff, every_micros, aggregate);
                    let buckets = {
                        let mut stmt = tx.prepare_cached(&sql.text).map_err(db)?;
                        let rows = stmt
                            .query_map(params_from_iter(sql.params.iter()), |row| {
                                Ok((
                                    BucketRow {
                                        start: row.get(0)?,
                                        aggregate: row.get(1)?,
                                        count: row.get(2)?,
                                        last: row.get(4)?,
                                    },
                                    row.get::<_, i64>(3)?,
                                ))
                            })
                            .map_err(db)?;
                        rows.collect::<Result<Vec<_>, _>>().map_err(db)?
                    };
                    let plan = common::plan_rollup(rid, &buckets, every_micros, aggregate, value_type)?;
                    let Some((from, to)) = plan.range else { continue };
                    let deleted = tx
                        .execute("DELETE FROM history WHERE rid = ?1 AND ts >= ?2 AND ts < ?3", [rid, from, to])
                        .map_err(db)?;
                    let mut insert = tx.prepare_cached(INSERT_HISTORY).map_err(db)?;
                    for row in &plan.points {
                        insert.execute(params![next_id, row.rid, row.ts, row.num, row.val]).map_err(db)?;
                        next_id += 1;
                    }
                    let kept = plan.points.len() as u64 - plan.written;
                    outcome.removed += (deleted as u64).saturating_sub(kept);
                    outcome.written += plan.written;
                }
            }
        }
        tx.commit().map_err(db)?;
        self.staged = 0;
        self.next_id = next_id;
        Ok(outcome)
    }

    fn put_token(&mut self, token: &TokenRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO tokens (hash, subject, roles, description, created, expires) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (hash) DO UPDATE SET subject = excluded.subject, \
                 roles = excluded.roles, description = excluded.description, created = excluded.created, \
                 expires = excluded.expires",
                params![
                    token.hash,
                    token.subject,
                    common::to_json(&token.roles)?,
                    token.description,
                    token.created.as_micros(),
                    token.expires.map(Timestamp::as_micros),
                ],
            )
            .map_err(db)?;
        Ok(())
    }
}

/// Moves the staged rows into `history`, keeping their ids.
fn move_staged(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "INSERT INTO history (id, rid, ts, num, val) SELECT id, rid, ts, num, val FROM history_recent ORDER BY id; \
         DELETE FROM history_recent;",
    )
    .map_err(db)
}

/// Stores (`Some`) or deletes (`None`) one record inside `tx`.
fn write_record(tx: &Connection, namespace: &str, key: &str, body: Option<&str>) -> Result<(), StoreError> {
    match body {
        Some(body) => tx
            .prepare_cached(
                "INSERT INTO records (namespace, key, body) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (namespace, key) DO UPDATE SET body = excluded.body",
            )
            .and_then(|mut put| put.execute([namespace, key, body]))
            .map_err(db)?,
        None => tx
            .prepare_cached("DELETE FROM records WHERE namespace = ?1 AND key = ?2")
            .and_then(|mut delete| delete.execute([namespace, key]))
            .map_err(db)?,
    };
    Ok(())
}

fn declare(conn: &Connection, path: &ResourcePath, resource: &Resource) -> Result<i64, StoreError> {
    let d = EncodedDeclaration::new(resource)?;
    conn.prepare_cached(UPSERT_DECLARATION)
        .map_err(db)?
        .query_row(
            params![
                path.provider.as_str(),
                path.service.as_str(),
                path.resource.as_str(),
                d.kind,
                d.value_type,
                d.unit,
                d.metadata,
                d.parameters
            ],
            |row| row.get(0),
        )
        .map_err(db)
}

/// The row id of `path`, creating the row on first sight.
fn resolve(conn: &Connection, path: &ResourcePath, value: &Value) -> Result<i64, StoreError> {
    if let Some((rid, _)) = lookup(conn, path)? {
        return Ok(rid);
    }
    declare(conn, path, &common::first_sight(path, value)?)
}

fn audit_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    let seq: i64 = row.get(0)?;
    Ok(AuditRow {
        seq: u64::try_from(seq).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, seq))?,
        time: Timestamp::from_micros(row.get(1)?),
        subject: row.get(2)?,
        action: row.get(3)?,
        object: row.get(4)?,
        owner: row.get(5)?,
        body: row.get(6)?,
        hash: row.get(7)?,
    })
}

fn read_tokens(conn: &Connection) -> Result<Vec<TokenRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT hash, subject, roles, description, created, expires FROM tokens ORDER BY created, hash")
        .map_err(db)?;
    let rows = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, Option<i64>>(5)?,
            ))
        })
        .map_err(db)?;
    let mut tokens = Vec::new();
    for row in rows {
        let (hash, subject, roles, description, created, expires) = row.map_err(db)?;
        tokens.push(TokenRecord {
            roles: common::from_json(&roles, &format!("roles of token {hash}"))?,
            hash,
            subject,
            description,
            created: Timestamp::from_micros(created),
            expires: expires.map(Timestamp::from_micros),
        });
    }
    Ok(tokens)
}

fn read_resources(conn: &Connection) -> Result<Vec<ResourceRow>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {RESOURCE_COLUMNS} FROM resources ORDER BY provider, service, resource"))
        .map_err(db)?;
    let rows = stmt
        .query_map([], |row| {
            Ok(ResourceRow {
                provider: row.get(0)?,
                service: row.get(1)?,
                resource: row.get(2)?,
                kind: row.get(3)?,
                value_type: row.get(4)?,
                unit: row.get(5)?,
                metadata: row.get(6)?,
                parameters: row.get(7)?,
                value: row.get(8)?,
                ts: row.get(9)?,
            })
        })
        .map_err(db)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db)
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self) -> Result<Vec<Provider>, StoreError> {
        let rows = self.reads.run(read_resources).await?;
        common::build_providers(rows)
    }

    async fn append(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.writer.call(|ack| Command::Append(batch, ack)).await
    }

    async fn delete_provider(&self, provider: &Name) -> Result<bool, StoreError> {
        let provider = provider.clone();
        self.writer.call(|ack| Command::DeleteProvider(provider, ack)).await
    }

    async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        let limit = common::check_limit(query.limit)?;
        let cursor = query.cursor.as_deref().map(|c| common::decode_cursor(query.order, c)).transpose()?;
        self.reads
            .run(move |conn| {
                let Some((rid, _)) = lookup(conn, &query.path)? else {
                    return Ok(HistoryPage { points: Vec::new(), next_cursor: None });
                };
                let from = query.from.map(Timestamp::as_micros);
                let to = query.to.map(Timestamp::as_micros);
                let sql = common::history_sql(SQLITE, rid, from, to, cursor, query.order, limit.saturating_add(1));
                let mut stmt = conn.prepare_cached(&sql.text).map_err(db)?;
                let rows = stmt
                    .query_map(params_from_iter(sql.params.iter()), |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                    .map_err(db)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db)?;
                common::history_page(rows, limit, query.order)
            })
            .await
    }

    async fn downsample(&self, query: DownsampleQuery) -> Result<Vec<Bucket>, StoreError> {
        let limit = common::check_limit(query.limit)?;
        common::check_every(query.every_micros)?;
        self.reads
            .run(move |conn| {
                let Some((rid, value_type)) = lookup(conn, &query.path)? else { return Ok(Vec::new()) };
                common::check_aggregate(&query.path, query.aggregate, value_type)?;
                let sql = common::downsample_sql(
                    SQLITE,
                    rid,
                    query.from.map(Timestamp::as_micros),
                    query.to.map(Timestamp::as_micros),
                    query.every_micros,
                    query.aggregate,
                    query.order,
                    limit,
                );
                let mut stmt = conn.prepare_cached(&sql.text).map_err(db)?;
                let rows = stmt
                    .query_map(params_from_iter(sql.params.iter()), |row| {
                        Ok(BucketRow {
                            start: row.get(0)?,
                            aggregate: row.get(1)?,
                            count: row.get(2)?,
                            last: row.get(3)?,
                        })
                    })
                    .map_err(db)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db)?;
                common::buckets(rows, query.aggregate, value_type)
            })
            .await
    }

    async fn retain(
        &self,
        resources: &[ResourcePath],
        cutoff: Timestamp,
        rollup: Rollup,
    ) -> Result<RetentionOutcome, StoreError> {
        let resources = resources.to_vec();
        self.writer.call(|ack| Command::Retain(resources, cutoff, rollup, ack)).await
    }

    async fn put_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        self.writer.call(|ack| Command::PutToken(token, ack)).await
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.reads.run(read_tokens).await
    }

    async fn delete_token(&self, hash: &str) -> Result<bool, StoreError> {
        let hash = hash.to_owned();
        self.writer.call(|ack| Command::DeleteToken(hash, ack)).await
    }

    async fn policy(&self) -> Result<Option<String>, StoreError> {
        self.reads
            .run(|conn| {
                conn.query_row("SELECT text FROM policy WHERE id = 1", [], |row| row.get(0)).optional().map_err(db)
            })
            .await
    }

    async fn save_policy(&self, text: &str) -> Result<(), StoreError> {
        let text = text.to_owned();
        self.writer.call(|ack| Command::SavePolicy(text, ack)).await
    }

    async fn write_records(&self, namespace: &str, changes: Vec<(String, Option<String>)>) -> Result<(), StoreError> {
        let namespace = namespace.to_owned();
        self.writer.call(|ack| Command::WriteRecords { namespace, changes, ack }).await
    }

    async fn records(&self, namespace: &str) -> Result<Vec<(String, String)>, StoreError> {
        let namespace = namespace.to_owned();
        self.reads
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT key, body FROM records WHERE namespace = ?1 ORDER BY key")
                    .map_err(db)?;
                let rows = stmt.query_map([namespace], |row| Ok((row.get(0)?, row.get(1)?))).map_err(db)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db)
            })
            .await
    }

    async fn delete_record(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        self.writer.call(|ack| Command::DeleteRecord { namespace, key, ack }).await
    }

    async fn append_audit(&self, rows: Arc<[AuditRow]>, records: Vec<RecordWrite>) -> Result<(), StoreError> {
        self.writer.call(|ack| Command::AppendAudit(rows, records, ack)).await
    }

    async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        let after = common::audit_seq(query.after)?;
        self.reads
            .run(move |conn| {
                let mut stmt = conn.prepare_cached(common::SELECT_AUDIT).map_err(db)?;
                let rows = stmt
                    .query_map(
                        params![
                            after,
                            query.subject,
                            query.action,
                            query.owner,
                            query.from.map(Timestamp::as_micros),
                            query.to.map(Timestamp::as_micros),
                            i64::try_from(query.limit).unwrap_or(i64::MAX)
                        ],
                        audit_row,
                    )
                    .map_err(db)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db)
            })
            .await
    }

    async fn audit_head(&self) -> Result<Option<AuditRow>, StoreError> {
        self.reads
            .run(|conn| {
                conn.prepare_cached(common::SELECT_AUDIT_HEAD)
                    .and_then(|mut stmt| stmt.query_row([], audit_row).optional())
                    .map_err(db)
            })
            .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        let Some(result) = self.writer.close().await else { return Ok(()) };
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| StoreError::Unavailable(format!("cannot join the sqlite writer: {e}")))?
                .map_err(|_| StoreError::Unavailable("the sqlite writer thread panicked".into()))?;
        }
        result
    }
}
