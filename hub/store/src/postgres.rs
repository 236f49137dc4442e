//! The server backend: PostgreSQL, selected by a `postgres://` URL.
//!
//! Semantics match the SQLite backend exactly (both pass [`crate::conformance`]). Writes go through one writer
//! task that owns one connection and commits in groups: it drains every batch waiting in its bounded queue into
//! one transaction whose history rows are inserted with a single `unnest` statement. Reads use a small
//! connection pool. With a schema, every connection of the store works inside it (`search_path`), which lets
//! several hubs, or tests, share one database.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use hub_model::{Name, Provider, Resource, ResourcePath, Timestamp, Update, ValueType};
use tokio::sync::mpsc;
use tokio_postgres::{Client, Config, GenericClient, NoTls, Row, Statement, Transaction, types::ToSql};

use crate::{
    AuditQuery, AuditRow, Bucket, DownsampleQuery, HistoryPage, HistoryQuery, RecordWrite, RetentionOutcome, Rollup,
    Store, StoreError, TokenRecord, WriteBatch,
    common::{
        self, Ack, BULK_ROWS, BucketRow, Command, EncodedDeclaration, GroupRows, HistoryRow, MAX_GROUP, POSTGRES,
        RESOURCE_COLUMNS, ResourceRow, SCHEMA_VERSION, Step, WriterHandle,
    },
};

/// How long connecting may take, unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read waits for a pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// How long one read or one write command may take before it fails with [`StoreError::Unavailable`] (a write's
/// connection is then dropped and re-opened, since its state is unknown).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections in the read pool.
const POOL_SIZE: usize = 4;
/// Write commands that may wait for the writer before callers are held back.
const QUEUE_CAPACITY: usize = 256;
/// Serialises schema creation between hubs starting at the same time (`pg_advisory_xact_lock` key).
const SCHEMA_LOCK: i64 = 0x6875_625f_7374_6f72; // "hub_stor"

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    id BIGSERIAL PRIMARY KEY,
    provider TEXT NOT NULL,
    service TEXT NOT NULL,
    resource TEXT NOT NULL,
    kind TEXT NOT NULL,
    type TEXT NOT NULL,
    unit TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    parameters TEXT NOT NULL DEFAULT '{}',
    value TEXT,
    ts BIGINT,
    UNIQUE (provider, service, resource)
);
CREATE TABLE IF NOT EXISTS history (
    id BIGSERIAL,
    rid BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    num DOUBLE PRECISION,
    val TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_rid_ts_id ON history (rid, ts, id);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    roles TEXT NOT NULL,
    description TEXT,
    created BIGINT NOT NULL,
    expires BIGINT
);
CREATE TABLE IF NOT EXISTS policy (id INTEGER PRIMARY KEY CHECK (id = 1), text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT PRIMARY KEY,
    ts BIGINT NOT NULL,
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
     parameters) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (provider, service, resource) DO UPDATE SET \
     kind = excluded.kind, type = excluded.type, unit = excluded.unit, metadata = excluded.metadata, \
     parameters = excluded.parameters RETURNING id";
const SELECT_RESOURCE: &str = "SELECT id, type FROM resources WHERE provider = $1 AND service = $2 AND resource = $3";
const SELECT_RESOURCES: &str = "SELECT u.i, res.id FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY \
     AS u(p, s, r, i) JOIN resources res ON res.provider = u.p AND res.service = u.s AND res.resource = u.r";
const INSERT_HISTORY: &str = "INSERT INTO history (rid, ts, num, val) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::float8[], $4::text[])";
const UPDATE_CURRENT: &str = "UPDATE resources AS r SET value = u.val, ts = u.ts \
     FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS u(id, ts, val) \
     WHERE r.id = u.id AND (r.ts IS NULL OR r.ts <= u.ts)";

fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Unavailable(format!("postgres: {} ({})", db.message(), db.code().code())),
        None => StoreError::Unavailable(format!("postgres: {e}")),
    }
}

fn timed_out() -> StoreError {
    StoreError::Unavailable(format!("postgres: no answer within {OPERATION_TIMEOUT:?}"))
}

/// Runs a read with the deadline.
async fn within<T>(read: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(OPERATION_TIMEOUT, read).await.unwrap_or_else(|_| Err(timed_out()))
}

/// Runs a writer operation with the deadline; on expiry the writer's connection is dropped, as a transaction
/// may still be open on it.
macro_rules! deadline {
    ($writer:ident, $operation:expr) => {
        match tokio::time::timeout(OPERATION_TIMEOUT, $operation).await {
            Ok(result) => result,
            Err(_) => {
                $writer.conn = None;
                Err(timed_out())
            }
        }
    };
}

fn column<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, StoreError> {
    row.try_get(index).map_err(|e| StoreError::Corrupt(format!("postgres column {index}: {e}")))
}

/// SQL shared with SQLite, with its `?N` placeholders written the PostgreSQL way (`$N`).
fn postgres_placeholders(sql: &str) -> String {
    sql.replace('?', "$")
}

fn audit_row(row: &Row) -> Result<AuditRow, StoreError> {
    let seq: i64 = column(row, 0)?;
    Ok(AuditRow {
        seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit sequence number {seq}")))?,
        time: Timestamp::from_micros(column(row, 1)?),
        subject: column(row, 2)?,
        action: column(row, 3)?,
        object: column(row, 4)?,
        owner: column(row, 5)?,
        body: column(row, 6)?,
        hash: column(row, 7)?,
    })
}

/// Checks a schema name: lower-case letters, digits and `_`, not starting with a digit, at most 63 bytes. That
/// keeps it a plain identifier that needs no quoting anywhere (SQL, `search_path`, connection options).
fn check_schema(schema: &str) -> Result<(), StoreError> {
    let mut bytes = schema.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if !first_ok || schema.len() > 63 || !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(StoreError::InvalidInput(format!(
            "postgres schema {schema:?}: use 1 to 63 of a-z, 0-9 and '_', not starting with a digit"
        )));
    }
    Ok(())
}

async fn open_client(config: &Config) -> Result<Client, StoreError> {
    let (client, connection) = config.connect(NoTls).await.map_err(pg)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection ended with an error");
        }
    });
    Ok(client)
}

/// The PostgreSQL-backed [`Store`].
pub struct PostgresStore {
    writer: WriterHandle,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pool: Pool,
    schema: Option<String>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (e.g. `postgres://hub@127.0.0.1:5432/hub`; plain TCP, no TLS), creates
    /// the schema `schema` if given (and works inside it), creates the tables, and starts the writer task.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<PostgresStore, StoreError> {
        let mut config: Config = url.parse().map_err(|e| StoreError::InvalidInput(format!("postgres url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("hub");
        }
        if let Some(schema) = schema {
            check_schema(schema)?;
            let mut client = open_client(&config).await?;
            let tx = client.transaction().await.map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).await.map_err(pg)?;
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await.map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            let options = match config.get_options() {
                Some(existing) if !existing.trim().is_empty() => format!("{existing} -csearch_path={schema}"),
                _ => format!("-csearch_path={schema}"),
            };
            config.options(options);
        }
        let mut client = open_client(&config).await?;
        create_schema(&mut client).await?;
        let statements = Statements::prepare(&client).await?;

        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("postgres pool: {e}")))?;

        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer { config, conn: Some(WriterConn { client, statements }), cache: HashMap::new() };
        let task = tokio::spawn(writer.run(rx));
        Ok(PostgresStore {
            writer: WriterHandle::new(tx),
            task: Mutex::new(Some(task)),
            pool,
            schema: schema.map(str::to_owned),
        })
    }

    /// The schema this store works in, if one was given.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    async fn reader(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Unavailable(format!("postgres pool: {e}")))
    }
}

async fn create_schema(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).await.map_err(pg)?;
    tx.batch_execute(SCHEMA).await.map_err(pg)?;
    let row = tx.query_one("SELECT max(version) FROM schema_version", &[]).await.map_err(pg)?;
    match column::<Option<i64>>(&row, 0)? {
        None => {
            tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&SCHEMA_VERSION]).await.map_err(pg)?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::Corrupt(format!(
                "database schema version {v} is newer than this hub understands ({SCHEMA_VERSION})"
            )));
        }
        Some(_) => {}
    }
    tx.commit().await.map_err(pg)
}

/// The writer's prepared statements (per connection).
struct Statements {
    declare: Statement,
    select_resources: Statement,
    insert_history: Statement,
    update_current: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, StoreError> {
        Ok(Statements {
            declare: client.prepare(UPSERT_DECLARATION).await.map_err(pg)?,
            select_resources: client.prepare(SELECT_RESOURCES).await.map_err(pg)?,
            insert_history: client.prepare(INSERT_HISTORY).await.map_err(pg)?,
            update_current: client.prepare(UPDATE_CURRENT).await.map_err(pg)?,
        })
    }
}

struct WriterConn {
    client: Client,
    statements: Statements,
}

/// The writer task's state: its connection (re-opened after a failure) and the path → row id cache.
struct Writer {
    config: Config,
    conn: Option<WriterConn>,
    cache: HashMap<ResourcePath, i64>,
}

/// The writer's connection, re-opened if it was lost.
async fn connection<'a>(slot: &'a mut Option<WriterConn>, config: &Config) -> Result<&'a mut WriterConn, StoreError> {
    if slot.as_ref().is_some_and(|c| c.client.is_closed()) {
        *slot = None;
    }
    if slot.is_none() {
        let client = open_client(config).await?;
        let statements = Statements::prepare(&client).await?;
        *slot = Some(WriterConn { client, statements });
    }
    slot.as_mut().ok_or_else(|| StoreError::Unavailable("postgres writer has no connection".into()))
}

async fn lookup(client: &impl GenericClient, path: &ResourcePath) -> Result<Option<(i64, ValueType)>, StoreError> {
    let row = client
        .query_opt(SELECT_RESOURCE, &[&path.provider.as_str(), &path.service.as_str(), &path.resource.as_str()])
        .await
        .map_err(pg)?;
    match row {
        Some(row) => Ok(Some((column(&row, 0)?, common::parse_value_type(&column::<String>(&row, 1)?)?))),
        None => Ok(None),
    }
}

/// Stores (`Some`) or deletes (`None`) one record inside `tx`.
async fn write_record(
    tx: &tokio_postgres::Transaction<'_>,
    namespace: &str,
    key: &str,
    body: Option<&str>,
) -> Result<(), StoreError> {
    match body {
        Some(body) => tx
            .execute(
                "INSERT INTO records (namespace, key, body) VALUES ($1, $2, $3) \
                 ON CONFLICT (namespace, key) DO UPDATE SET body = excluded.body",
                &[&namespace, &key, &body],
            )
            .await
            .map_err(pg)?,
        None => tx
            .execute("DELETE FROM records WHERE namespace = $1 AND key = $2", &[&namespace, &key])
            .await
            .map_err(pg)?,
    };
    Ok(())
}

async fn declare(
    tx: &Transaction<'_>,
    statement: &Statement,
    path: &ResourcePath,
    resource: &Resource,
) -> Result<i64, StoreError> {
    let d = EncodedDeclaration::new(resource)?;
    let row = tx
        .query_one(
            statement,
            &[
                &path.provider.as_str(),
                &path.service.as_str(),
                &path.resource.as_str(),
                &d.kind,
                &d.value_type,
                &d.unit,
                &d.metadata,
                &d.parameters,
            ],
        )
        .await
        .map_err(pg)?;
    column(&row, 0)
}

async fn insert_history(tx: &Transaction<'_>, statement: &Statement, rows: &[HistoryRow]) -> Result<(), StoreError> {
    for chunk in rows.chunks(BULK_ROWS) {
        let rids: Vec<i64> = chunk.iter().map(|r| r.rid).collect();
        let tss: Vec<i64> = chunk.iter().map(|r| r.ts).collect();
        let nums: Vec<Option<f64>> = chunk.iter().map(|r| r.num).collect();
        let vals: Vec<&str> = chunk.iter().map(|r| r.val.as_str()).collect();
        tx.execute(statement, &[&rids, &tss, &nums, &vals]).await.map_err(pg)?;
    }
    Ok(())
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.recv().await {
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
                    Step::Appends(group) => self.appends(group).await,
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
                        self.conn = None;
                        let _ = ack.send(Ok(()));
                        return;
                    }
                    Step::Other(command) => self.other(command).await,
                }
            }
        }
    }

    /// Drops the connection if it broke, so the next command reconnects.
    fn after<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_err() && self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        result
    }

    async fn appends(&mut self, group: Vec<(WriteBatch, Ack<()>)>) {
        let batches: Vec<&WriteBatch> = group.iter().map(|(batch, _)| batch).collect();
        let result = deadline!(self, self.commit(&batches));
        match self.after(result) {
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
                    let result = deadline!(self, self.commit(&[&batch]));
                    let _ = ack.send(self.after(result));
                }
            }
        }
    }

    async fn commit(&mut self, batches: &[&WriteBatch]) -> Result<(), StoreError> {
        let Writer { config, conn, cache } = self;
        let conn = connection(conn, config).await?;
        let statements = &conn.statements;
        let tx = conn.client.transaction().await.map_err(pg)?;
        let mut fresh: HashMap<ResourcePath, i64> = HashMap::new();
        let mut rows = GroupRows::default();
        for batch in batches {
            for (path, resource) in common::stored_declarations(batch) {
                let rid = declare(&tx, &statements.declare, path, resource).await?;
                fresh.insert(path.clone(), rid);
            }
            let mut seen = HashSet::new();
            let unknown: Vec<&Update> = common::stored_updates(batch)
                .filter(|u| !fresh.contains_key(&u.path) && !cache.contains_key(&u.path) && seen.insert(&u.path))
                .collect();
            if !unknown.is_empty() {
                let mut found: Vec<Option<i64>> = vec![None; unknown.len()];
                let providers: Vec<&str> = unknown.iter().map(|u| u.path.provider.as_str()).collect();
                let services: Vec<&str> = unknown.iter().map(|u| u.path.service.as_str()).collect();
                let resources: Vec<&str> = unknown.iter().map(|u| u.path.resource.as_str()).collect();
                let hits =
                    tx.query(&statements.select_resources, &[&providers, &services, &resources]).await.map_err(pg)?;
                for row in hits {
                    let ordinal: i64 = column(&row, 0)?;
                    let slot = usize::try_from(ordinal - 1).ok().and_then(|i| found.get_mut(i));
                    if let Some(slot) = slot {
                        *slot = Some(column(&row, 1)?);
                    }
                }
                for (update, rid) in unknown.iter().zip(found) {
                    let rid = match rid {
                        Some(rid) => rid,
                        None => {
                            let resource = common::first_sight(&update.path, &update.value)?;
                            declare(&tx, &statements.declare, &update.path, &resource).await?
                        }
                    };
                    fresh.insert(update.path.clone(), rid);
                }
            }
            for update in common::stored_updates(batch) {
                let rid = fresh.get(&update.path).or_else(|| cache.get(&update.path)).copied().ok_or_else(|| {
                    StoreError::Unavailable(format!("{}: resource row vanished during the commit", update.path))
                })?;
                rows.push(rid, update)?;
            }
        }
        insert_history(&tx, &statements.insert_history, &rows.history).await?;
        let mut rids = Vec::with_capacity(rows.newest.len());
        let mut tss = Vec::with_capacity(rows.newest.len());
        let mut vals = Vec::with_capacity(rows.newest.len());
        for (rid, ts, val) in rows.current() {
            rids.push(rid);
            tss.push(ts);
            vals.push(val);
        }
        if !rids.is_empty() {
            tx.execute(&statements.update_current, &[&rids, &tss, &vals]).await.map_err(pg)?;
        }
        for record in batches.iter().flat_map(|b| &b.records) {
            write_record(&tx, &record.namespace, &record.key, record.body.as_deref()).await?;
        }
        tx.commit().await.map_err(pg)?;
        cache.extend(fresh);
        Ok(())
    }

    async fn other(&mut self, command: Command) {
        match command {
            Command::DeleteProvider(name, ack) => {
                self.cache.retain(|path, _| path.provider != name);
                let result = deadline!(self, self.delete_provider(&name));
                let _ = ack.send(self.after(result));
            }
            Command::Retain(paths, cutoff, rollup, ack) => {
                let result = deadline!(self, self.retain(&paths, cutoff, rollup));
                let _ = ack.send(self.after(result));
            }
            Command::PutToken(token, ack) => {
                let result = deadline!(self, self.put_token(&token));
                let _ = ack.send(self.after(result));
            }
            Command::DeleteToken(hash, ack) => {
                let result = deadline!(self, self.delete_token(&hash));
                let _ = ack.send(self.after(result));
            }
            Command::SavePolicy(text, ack) => {
                let result = deadline!(self, self.save_policy(&text));
                let _ = ack.send(self.after(result));
            }
            Command::WriteRecords { namespace, changes, ack } => {
                let result = deadline!(self, self.write_records(&namespace, &changes));
                let _ = ack.send(self.after(result));
            }
            Command::DeleteRecord { namespace, key, ack } => {
                let result = deadline!(self, self.delete_record(&namespace, &key));
                let _ = ack.send(self.after(result));
            }
            Command::AppendAudit(rows, records, ack) => {
                let result = deadline!(self, self.append_audit(&rows, &records));
                let _ = ack.send(self.after(result));
            }
            // Appends and Close never reach here (see `run`); answer rather than drop them.
            command @ (Command::Append(..) | Command::Close(_)) => common::refuse(command),
        }
    }

    async fn client(&mut self) -> Result<&mut Client, StoreError> {
        Ok(&mut connection(&mut self.conn, &self.config).await?.client)
    }

    async fn delete_provider(&mut self, provider: &Name) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute(
            "DELETE FROM history WHERE rid IN (SELECT id FROM resources WHERE provider = $1)",
            &[&provider.as_str()],
        )
        .await
        .map_err(pg)?;
        let deleted =
            tx.execute("DELETE FROM resources WHERE provider = $1", &[&provider.as_str()]).await.map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(deleted > 0)
    }

    async fn retain(
        &mut self,
        paths: &[ResourcePath],
        cutoff: Timestamp,
        rollup: Rollup,
    ) -> Result<RetentionOutcome, StoreError> {
        if let Rollup::Downsample { every_micros, .. } = rollup {
            common::check_every(every_micros)?;
        }
        let cutoff = cutoff.as_micros();
        let Writer { config, conn, .. } = self;
        let conn = connection(conn, config).await?;
        let insert = &conn.statements.insert_history;
        let tx = conn.client.transaction().await.map_err(pg)?;
        let mut outcome = RetentionOutcome::default();
        for path in paths {
            let Some((rid, value_type)) = lookup(&tx, path).await? else { continue };
            match rollup {
                Rollup::Drop => {
                    let removed = tx
                        .execute("DELETE FROM history WHERE rid = $1 AND ts < $2", &[&rid, &cutoff])
                        .await
                        .map_err(pg)?;
                    outcome.removed += removed;
                }
                Rollup::Downsample { every_micros, aggregate } => {
                    let cutoff = common::rollup_cutoff(cutoff, every_micros);
                    let sql = common::rollup_sql(POSTGRES, rid, cutoff, every_micros, aggregate);
                    let rows = tx.query(&sql.text, &params(&sql.params)).await.map_err(pg)?;
                    let buckets = rows
                        .iter()
                        .map(|row| {
                            Ok((
                                BucketRow {
                                    start: column(row, 0)?,
                                    aggregate: column(row, 1)?,
                                    count: column(row, 2)?,
                                    last: column(row, 4)?,
                                },
                                column::<i64>(row, 3)?,
                            ))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    let plan = common::plan_rollup(rid, &buckets, every_micros, aggregate, value_type)?;
                    let Some((from, to)) = plan.range else { continue };
                    let deleted = tx
                        .execute("DELETE FROM history WHERE rid = $1 AND ts >= $2 AND ts < $3", &[&rid, &from, &to])
                        .await
                        .map_err(pg)?;
                    insert_history(&tx, insert, &plan.points).await?;
                    let kept = plan.points.len() as u64 - plan.written;
                    outcome.removed += deleted.saturating_sub(kept);
                    outcome.written += plan.written;
                }
            }
        }
        tx.commit().await.map_err(pg)?;
        Ok(outcome)
    }

    async fn put_token(&mut self, token: &TokenRecord) -> Result<(), StoreError> {
        let roles = common::to_json(&token.roles)?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO tokens (hash, subject, roles, description, created, expires) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (hash) DO UPDATE SET subject = excluded.subject, \
                 roles = excluded.roles, description = excluded.description, created = excluded.created, \
                 expires = excluded.expires",
                &[
                    &token.hash,
                    &token.subject,
                    &roles,
                    &token.description,
                    &token.created.as_micros(),
                    &token.expires.map(Timestamp::as_micros),
                ],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn delete_token(&mut self, hash: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let deleted = client.execute("DELETE FROM tokens WHERE hash = $1", &[&hash]).await.map_err(pg)?;
        Ok(deleted > 0)
    }

    async fn write_records(&mut self, namespace: &str, changes: &[(String, Option<String>)]) -> Result<(), StoreError> {
        let client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        for (key, body) in changes {
            write_record(&tx, namespace, key, body.as_deref()).await?;
        }
        tx.commit().await.map_err(pg)
    }

    async fn append_audit(&mut self, rows: &[AuditRow], records: &[RecordWrite]) -> Result<(), StoreError> {
        // One statement per chunk, the columns as arrays.
        let client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        for chunk in rows.chunks(BULK_ROWS) {
            let seq = chunk.iter().map(|r| common::audit_seq(r.seq)).collect::<Result<Vec<_>, _>>()?;
            let ts: Vec<i64> = chunk.iter().map(|r| r.time.as_micros()).collect();
            let text = |f: fn(&AuditRow) -> &str| chunk.iter().map(f).collect::<Vec<_>>();
            let owner: Vec<Option<&str>> = chunk.iter().map(|r| r.owner.as_deref()).collect();
            tx.execute(
                "INSERT INTO audit (seq, ts, subject, action, object, owner, body, hash) SELECT * FROM \
                 UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], \
                 $8::TEXT[])",
                &[
                    &seq,
                    &ts,
                    &text(|r| &r.subject),
                    &text(|r| &r.action),
                    &text(|r| &r.object),
                    &owner,
                    &text(|r| &r.body),
                    &text(|r| &r.hash),
                ],
            )
            .await
            .map_err(pg)?;
        }
        for record in records {
            write_record(&tx, &record.namespace, &record.key, record.body.as_deref()).await?;
        }
        tx.commit().await.map_err(pg)
    }

    async fn delete_record(&mut self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let deleted = client
            .execute("DELETE FROM records WHERE namespace = $1 AND key = $2", &[&namespace, &key])
            .await
            .map_err(pg)?;
        Ok(deleted > 0)
    }

    async fn save_policy(&mut self, text: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO policy (id, text) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET text = excluded.text",
                &[&text],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }
}

fn params(values: &[i64]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

#[async_trait]
impl Store for PostgresStore {
    async fn load(&self) -> Result<Vec<Provider>, StoreError> {
        within(async {
            let client = self.reader().await?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {RESOURCE_COLUMNS} FROM resources ORDER BY provider, service, resource"
                ))
                .await
                .map_err(pg)?;
            let rows = client.query(&stmt, &[]).await.map_err(pg)?;
            let rows = rows
                .iter()
                .map(|row| {
                    Ok(ResourceRow {
                        provider: column(row, 0)?,
                        service: column(row, 1)?,
                        resource: column(row, 2)?,
                        kind: column(row, 3)?,
                        value_type: column(row, 4)?,
                        unit: column(row, 5)?,
                        metadata: column(row, 6)?,
                        parameters: column(row, 7)?,
                        value: column(row, 8)?,
                        ts: column(row, 9)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            common::build_providers(rows)
        })
        .await
    }

    async fn append(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.writer.call(|ack| Command::Append(batch, ack)).await
    }

    async fn delete_provider(&self, provider: &Name) -> Result<bool, StoreError> {
        let provider = provider.clone();
        self.writer.call(|ack| Command::DeleteProvider(provider, ack)).await
    }

    async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        within(async {
            let limit = common::check_limit(query.limit)?;
            let cursor = query.cursor.as_deref().map(|c| common::decode_cursor(query.order, c)).transpose()?;
            let client = self.reader().await?;
            let Some((rid, _)) = lookup(&**client, &query.path).await? else {
                return Ok(HistoryPage { points: Vec::new(), next_cursor: None });
            };
            let from = query.from.map(Timestamp::as_micros);
            let to = query.to.map(Timestamp::as_micros);
            let sql = common::history_sql(POSTGRES, rid, from, to, cursor, query.order, limit.saturating_add(1));
            let stmt = client.prepare_cached(&sql.text).await.map_err(pg)?;
            let rows = client.query(&stmt, &params(&sql.params)).await.map_err(pg)?;
            let rows = rows
                .iter()
                .map(|row| Ok((column(row, 0)?, column(row, 1)?, column(row, 2)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            common::history_page(rows, limit, query.order)
        })
        .await
    }

    async fn downsample(&self, query: DownsampleQuery) -> Result<Vec<Bucket>, StoreError> {
        within(async {
            let limit = common::check_limit(query.limit)?;
            common::check_every(query.every_micros)?;
            let client = self.reader().await?;
            let Some((rid, value_type)) = lookup(&**client, &query.path).await? else { return Ok(Vec::new()) };
            common::check_aggregate(&query.path, query.aggregate, value_type)?;
            let sql = common::downsample_sql(
                POSTGRES,
                rid,
                query.from.map(Timestamp::as_micros),
                query.to.map(Timestamp::as_micros),
                query.every_micros,
                query.aggregate,
                query.order,
                limit,
            );
            let stmt = client.prepare_cached(&sql.text).await.map_err(pg)?;
            let rows = client.query(&stmt, &params(&sql.params)).await.map_err(pg)?;
            let rows = rows
                .iter()
                .map(|row| {
                    Ok(BucketRow {
                        start: column(row, 0)?,
                        aggregate: column(row, 1)?,
                        count: column(row, 2)?,
                        last: column(row, 3)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
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
        within(async {
            let client = self.reader().await?;
            let rows = client
                .query(
                    "SELECT hash, subject, roles, description, created, expires FROM tokens ORDER BY created, hash",
                    &[],
                )
                .await
                .map_err(pg)?;
            rows.iter()
                .map(|row| {
                    let hash: String = column(row, 0)?;
                    let roles: String = column(row, 2)?;
                    Ok(TokenRecord {
                        roles: common::from_json(&roles, &format!("roles of token {hash}"))?,
                        hash,
                        subject: column(row, 1)?,
                        description: column(row, 3)?,
                        created: Timestamp::from_micros(column(row, 4)?),
                        expires: column::<Option<i64>>(row, 5)?.map(Timestamp::from_micros),
                    })
                })
                .collect()
        })
        .await
    }

    async fn delete_token(&self, hash: &str) -> Result<bool, StoreError> {
        let hash = hash.to_owned();
        self.writer.call(|ack| Command::DeleteToken(hash, ack)).await
    }

    async fn policy(&self) -> Result<Option<String>, StoreError> {
        within(async {
            let client = self.reader().await?;
            let row = client.query_opt("SELECT text FROM policy WHERE id = 1", &[]).await.map_err(pg)?;
            row.map(|row| column(&row, 0)).transpose()
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
        within(async {
            let client = self.reader().await?;
            let rows = client
                .query("SELECT key, body FROM records WHERE namespace = $1 ORDER BY key", &[&namespace])
                .await
                .map_err(pg)?;
            rows.iter().map(|row| Ok((column(row, 0)?, column(row, 1)?))).collect()
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
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        within(async {
            let client = self.reader().await?;
            let rows = client
                .query(
                    &postgres_placeholders(common::SELECT_AUDIT),
                    &[
                        &after,
                        &query.subject,
                        &query.action,
                        &query.owner,
                        &query.from.map(Timestamp::as_micros),
                        &query.to.map(Timestamp::as_micros),
                        &limit,
                    ],
                )
                .await
                .map_err(pg)?;
            rows.iter().map(audit_row).collect()
        })
        .await
    }

    async fn audit_head(&self) -> Result<Option<AuditRow>, StoreError> {
        within(async {
            let client = self.reader().await?;
            let row = client.query_opt(common::SELECT_AUDIT_HEAD, &[]).await.map_err(pg)?;
            row.as_ref().map(audit_row).transpose()
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        let Some(result) = self.writer.close().await else { return Ok(()) };
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task {
            task.await.map_err(|e| StoreError::Unavailable(format!("the postgres writer task failed: {e}")))?;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["hub", "_x", "hubtest_123_456_7", &"a".repeat(63)] {
            assert!(check_schema(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1x", "Hub", "a-b", "a;drop", "a b", &"a".repeat(64)] {
            assert!(matches!(check_schema(bad), Err(StoreError::InvalidInput(_))), "{bad}");
        }
    }
}
