//! What both backends share: cursors, the SQL of history queries, bucket arithmetic, and how resources, values
//! and aggregates are encoded in rows. Keeping it here is what makes SQLite and PostgreSQL answer alike.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, OnceLock},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hub_model::{
    ADMIN_SERVICE, AdminResource, MetaEntry, Name, Provider, Resource, ResourceKind, ResourcePath, Timestamp, Update,
    ValueType,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::{Aggregate, Order, RetentionOutcome, Rollup, StoreError, TokenRecord, WriteBatch};

/// The schema version this crate writes and understands.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// How many rows one bulk statement carries at most.
pub(crate) const BULK_ROWS: usize = 20_000;

/// Where a write command sends its outcome.
pub(crate) type Ack<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write for the single writer of a backend. Writers take them in arrival order.
pub(crate) enum Command {
    Append(WriteBatch, Ack<()>),
    DeleteProvider(Name, Ack<bool>),
    Retain(Vec<ResourcePath>, Timestamp, Rollup, Ack<RetentionOutcome>),
    PutToken(TokenRecord, Ack<()>),
    DeleteToken(String, Ack<bool>),
    SavePolicy(String, Ack<()>),
    /// Record puts (`Some(body)`) and deletes (`None`) of one namespace, applied in one transaction.
    WriteRecords {
        namespace: String,
        changes: Vec<(String, Option<String>)>,
        ack: Ack<()>,
    },
    DeleteRecord {
        namespace: String,
        key: String,
        ack: Ack<bool>,
    },
    /// Audit rows, appended in one transaction.
    AppendAudit(Arc<[crate::AuditRow]>, Vec<crate::RecordWrite>, Ack<()>),
    /// Flush what came before, then stop.
    Close(Ack<()>),
}

/// What a writer does next with the commands it drained: runs of appends are committed together.
pub(crate) enum Step {
    /// Consecutive appends, committed in one transaction.
    Appends(Vec<(WriteBatch, Ack<()>)>),
    /// Any other command, alone.
    Other(Command),
}

/// Splits drained commands into steps, keeping their order.
pub(crate) fn steps(commands: Vec<Command>) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut appends = Vec::new();
    for command in commands {
        match command {
            Command::Append(batch, ack) => appends.push((batch, ack)),
            other => {
                if !appends.is_empty() {
                    steps.push(Step::Appends(std::mem::take(&mut appends)));
                }
                steps.push(Step::Other(other));
            }
        }
    }
    if !appends.is_empty() {
        steps.push(Step::Appends(appends));
    }
    steps
}

/// Answers every command still queued after a close with [`StoreError::Closed`].
pub(crate) fn refuse(command: Command) {
    // A dropped receiver means the caller gave up waiting; nothing to tell it.
    match command {
        Command::Append(_, ack)
        | Command::PutToken(_, ack)
        | Command::SavePolicy(_, ack)
        | Command::WriteRecords { ack, .. }
        | Command::AppendAudit(_, _, ack)
        | Command::Close(ack) => {
            let _ = ack.send(Err(StoreError::Closed));
        }
        Command::DeleteProvider(_, ack) | Command::DeleteToken(_, ack) | Command::DeleteRecord { ack, .. } => {
            let _ = ack.send(Err(StoreError::Closed));
        }
        Command::Retain(_, _, _, ack) => {
            let _ = ack.send(Err(StoreError::Closed));
        }
    }
}

/// The audit rows a query selects, for both backends (`?N` placeholders, rewritten to `$N` for PostgreSQL):
/// after `seq` 1, by subject 2, action 3 and owner 4 when given, in the time range 5..6, at most 7 rows.
pub(crate) const SELECT_AUDIT: &str = "SELECT seq, ts, subject, action, object, owner, body, hash FROM audit \
     WHERE seq > ?1 AND (CAST(?2 AS TEXT) IS NULL OR subject = ?2) AND (CAST(?3 AS TEXT) IS NULL OR action = ?3) \
     AND (CAST(?4 AS TEXT) IS NULL OR owner = ?4) AND (CAST(?5 AS BIGINT) IS NULL OR ts >= ?5) \
     AND (CAST(?6 AS BIGINT) IS NULL OR ts < ?6) ORDER BY seq LIMIT ?7";

/// The newest audit row, for both backends.
pub(crate) const SELECT_AUDIT_HEAD: &str =
    "SELECT seq, ts, subject, action, object, owner, body, hash FROM audit ORDER BY seq DESC LIMIT 1";

/// A `seq` as the databases store it (a signed 64-bit integer).
pub(crate) fn audit_seq(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::InvalidInput(format!("audit sequence number {seq} is out of range")))
}

/// The most commands one writer round drains (and so the most batches in one group commit).
pub(crate) const MAX_GROUP: usize = 256;

/// The async side of a writer: sends commands and waits for their outcome.
pub(crate) struct WriterHandle {
    tx: mpsc::Sender<Command>,
    closed: std::sync::atomic::AtomicBool,
}

impl WriterHandle {
    pub(crate) fn new(tx: mpsc::Sender<Command>) -> Self {
        WriterHandle { tx, closed: std::sync::atomic::AtomicBool::new(false) }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    fn stopped(&self) -> StoreError {
        if self.is_closed() {
            StoreError::Closed
        } else {
            StoreError::Unavailable("the storage writer stopped unexpectedly".into())
        }
    }

    /// Sends a command (waiting while the queue is full) and waits for its outcome.
    pub(crate) async fn call<T>(&self, command: impl FnOnce(Ack<T>) -> Command) -> Result<T, StoreError> {
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        let (ack, outcome) = oneshot::channel();
        self.tx.send(command(ack)).await.map_err(|_| self.stopped())?;
        outcome.await.map_err(|_| self.stopped())?
    }

    /// Marks the writer closed and asks it to flush and stop. Returns `None` when it was already closed.
    pub(crate) async fn close(&self) -> Option<Result<(), StoreError>> {
        if self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return None;
        }
        let (ack, outcome) = oneshot::channel();
        if self.tx.send(Command::Close(ack)).await.is_err() {
            return Some(Ok(()));
        }
        Some(outcome.await.unwrap_or(Ok(())))
    }
}

/// Whether `path` is `admin/last_seen`, which is never stored (the twin recomputes it).
pub(crate) fn is_last_seen(path: &ResourcePath) -> bool {
    path.service.as_str() == ADMIN_SERVICE && path.resource.as_str() == AdminResource::LastSeen.name()
}

/// The resource an update creates when its path has no row yet: an admin resource with its fixed kind and type,
/// otherwise a sensor whose type is inferred from the value.
pub(crate) fn first_sight(path: &ResourcePath, value: &Value) -> Result<Resource, StoreError> {
    if path.service.as_str() == ADMIN_SERVICE
        && let Some(admin) = admin_template().resource(ADMIN_SERVICE, path.resource.as_str())
    {
        return Ok(admin.clone());
    }
    let value_type = ValueType::infer(value).ok_or_else(|| {
        StoreError::InvalidInput(format!("{path}: a null value cannot create a resource (declare it first)"))
    })?;
    Ok(Resource::new(ResourceKind::Sensor, value_type))
}

fn admin_template() -> &'static Provider {
    static TEMPLATE: OnceLock<Provider> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let name = Name::new("template").unwrap_or_else(|_| unreachable!("'template' is a valid name"));
        Provider::new(name)
    })
}

/// `num` column of a history row: the value as a float when it is a number.
pub(crate) fn history_num(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// JSON text of a value.
pub(crate) fn to_json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::InvalidInput(format!("value cannot be encoded: {e}")))
}

/// Parses stored JSON text.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// A declaration as the columns of a `resources` row.
pub(crate) struct EncodedDeclaration {
    pub(crate) kind: &'static str,
    pub(crate) value_type: &'static str,
    pub(crate) unit: Option<String>,
    pub(crate) metadata: String,
    pub(crate) parameters: String,
}

impl EncodedDeclaration {
    pub(crate) fn new(resource: &Resource) -> Result<Self, StoreError> {
        Ok(EncodedDeclaration {
            kind: resource.kind.as_str(),
            value_type: resource.value_type.as_str(),
            unit: resource.unit.as_deref().map(str::to_owned),
            metadata: to_json(&resource.metadata)?,
            parameters: to_json(&resource.parameters)?,
        })
    }
}

fn parse_kind(s: &str) -> Result<ResourceKind, StoreError> {
    s.parse().map_err(StoreError::Corrupt)
}

/// Parses a stored value type name.
pub(crate) fn parse_value_type(s: &str) -> Result<ValueType, StoreError> {
    Ok(match s {
        "number" => ValueType::Number,
        "integer" => ValueType::Integer,
        "boolean" => ValueType::Boolean,
        "string" => ValueType::String,
        "object" => ValueType::Object,
        "array" => ValueType::Array,
        other => return Err(StoreError::Corrupt(format!("unknown value type {other:?}"))),
    })
}

/// One `resources` row as read back.
pub(crate) struct ResourceRow {
    pub(crate) provider: String,
    pub(crate) service: String,
    pub(crate) resource: String,
    pub(crate) kind: String,
    pub(crate) value_type: String,
    pub(crate) unit: Option<String>,
    pub(crate) metadata: String,
    pub(crate) parameters: String,
    pub(crate) value: Option<String>,
    pub(crate) ts: Option<i64>,
}

/// The columns [`ResourceRow`] is read from, in order.
pub(crate) const RESOURCE_COLUMNS: &str =
    "provider, service, resource, kind, type, unit, metadata, parameters, value, ts";

fn stored_name(s: &str) -> Result<Name, StoreError> {
    Name::new(s).map_err(|e| StoreError::Corrupt(format!("stored name: {e}")))
}

/// Rebuilds the providers from their rows, recomputing `admin/last_seen`.
pub(crate) fn build_providers(rows: Vec<ResourceRow>) -> Result<Vec<Provider>, StoreError> {
    let mut providers: BTreeMap<Name, Provider> = BTreeMap::new();
    for row in rows {
        let provider = stored_name(&row.provider)?;
        let service = stored_name(&row.service)?;
        let name = stored_name(&row.resource)?;
        let path = ResourcePath::new(provider.clone(), service.clone(), name.clone());
        if is_last_seen(&path) {
            continue;
        }
        let resource = Resource {
            kind: parse_kind(&row.kind)?,
            value_type: parse_value_type(&row.value_type)?,
            unit: row.unit.map(Arc::from),
            value: row.value.as_deref().map(|v| from_json(v, &format!("value of {path}"))).transpose()?,
            timestamp: row.ts.map(Timestamp::from_micros),
            metadata: from_json::<BTreeMap<String, MetaEntry>>(&row.metadata, &format!("metadata of {path}"))?,
            parameters: from_json(&row.parameters, &format!("parameters of {path}"))?,
        };
        let entry = providers.entry(provider.clone()).or_insert_with(|| Provider::new(provider));
        entry.services.entry(service).or_default().resources.insert(name, resource);
    }
    let mut out: Vec<Provider> = providers.into_values().collect();
    for provider in &mut out {
        let newest = provider
            .services
            .iter()
            .filter(|(s, _)| s.as_str() != ADMIN_SERVICE)
            .flat_map(|(_, svc)| svc.resources.values())
            .filter_map(|r| r.timestamp)
            .max();
        let last_seen = provider
            .services
            .get_mut(ADMIN_SERVICE)
            .and_then(|admin| admin.resources.get_mut(AdminResource::LastSeen.name()));
        if let (Some(at), Some(last_seen)) = (newest, last_seen) {
            last_seen.value = Some(Value::String(at.to_rfc3339()));
            last_seen.timestamp = Some(at);
        }
    }
    Ok(out)
}

/// One history row about to be inserted.
#[derive(Debug)]
pub(crate) struct HistoryRow {
    pub(crate) rid: i64,
    pub(crate) ts: i64,
    pub(crate) num: Option<f64>,
    pub(crate) val: String,
}

/// The rows a group of batches adds, and the newest value of each resource among them.
#[derive(Default)]
pub(crate) struct GroupRows {
    /// Every history row, in arrival order.
    pub(crate) history: Vec<HistoryRow>,
    /// For each resource, the index in `history` of its newest row (ties: the later one).
    pub(crate) newest: HashMap<i64, usize>,
}

impl GroupRows {
    /// Adds one update of resource `rid`.
    pub(crate) fn push(&mut self, rid: i64, update: &Update) -> Result<(), StoreError> {
        let ts = update.timestamp.as_micros();
        let index = self.history.len();
        self.history.push(HistoryRow { rid, ts, num: history_num(&update.value), val: to_json(&update.value)? });
        let history = &self.history;
        self.newest
            .entry(rid)
            .and_modify(|current| {
                if history.get(*current).is_none_or(|row| row.ts <= ts) {
                    *current = index;
                }
            })
            .or_insert(index);
        Ok(())
    }

    /// The current-value rows: `(rid, ts, json)`, one per resource.
    pub(crate) fn current(&self) -> impl Iterator<Item = (i64, i64, &str)> {
        self.newest.iter().filter_map(|(&rid, &i)| self.history.get(i).map(|row| (rid, row.ts, row.val.as_str())))
    }
}

/// The updates of a batch that are stored (everything but `admin/last_seen`).
pub(crate) fn stored_updates(batch: &WriteBatch) -> impl Iterator<Item = &Update> {
    batch.updates.iter().filter(|u| !is_last_seen(&u.path))
}

/// The declarations of a batch that are stored (everything but `admin/last_seen`).
pub(crate) fn stored_declarations(batch: &WriteBatch) -> impl Iterator<Item = &(ResourcePath, Resource)> {
    batch.declarations.iter().filter(|(p, _)| !is_last_seen(p))
}

/// Where a history page resumes: after the point `(ts, id)` in the page's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) ts: i64,
    pub(crate) id: i64,
}

const CURSOR_VERSION: &str = "h1";

fn order_tag(order: Order) -> &'static str {
    match order {
        Order::Asc => "a",
        Order::Desc => "d",
    }
}

/// An opaque cursor for the point `(ts, id)`, valid for pages in `order`.
pub(crate) fn encode_cursor(order: Order, ts: i64, id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_VERSION}:{}:{ts}:{id}", order_tag(order)))
}

/// Reads a cursor issued by [`encode_cursor`] for the same order.
pub(crate) fn decode_cursor(order: Order, cursor: &str) -> Result<Cursor, StoreError> {
    let invalid = || StoreError::InvalidInput("cursor: not a cursor issued by this store for this query".into());
    let bytes = URL_SAFE_NO_PAD.decode(cursor.as_bytes()).map_err(|_| invalid())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid())?;
    let mut parts = text.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(CURSOR_VERSION), Some(tag), Some(ts), Some(id), None) if tag == order_tag(order) => {
            Ok(Cursor { ts: ts.parse().map_err(|_| invalid())?, id: id.parse().map_err(|_| invalid())? })
        }
        _ => Err(invalid()),
    }
}

/// Builds a page from rows `(row id, ts, json)` fetched with one row more than `limit`: the extra row only says
/// that another page follows.
pub(crate) fn history_page(
    mut rows: Vec<(i64, i64, String)>,
    limit: i64,
    order: Order,
) -> Result<crate::HistoryPage, StoreError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = match rows.last() {
        Some(&(id, ts, _)) if more => Some(encode_cursor(order, ts, id)),
        _ => None,
    };
    let points = rows
        .into_iter()
        .map(|(_, ts, val)| {
            Ok(crate::Point { timestamp: Timestamp::from_micros(ts), value: from_json(&val, "history value")? })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(crate::HistoryPage { points, next_cursor })
}

/// Turns downsampling rows into buckets.
pub(crate) fn buckets(
    rows: Vec<BucketRow>,
    aggregate: Aggregate,
    value_type: ValueType,
) -> Result<Vec<crate::Bucket>, StoreError> {
    let integer = value_type == ValueType::Integer;
    rows.into_iter()
        .map(|row| {
            Ok(crate::Bucket {
                start: Timestamp::from_micros(row.start),
                value: bucket_value(aggregate, &row, integer)?,
                count: u64::try_from(row.count).unwrap_or(0),
            })
        })
        .collect()
}

/// Checks a page or bucket limit and returns it as an SQL integer.
pub(crate) fn check_limit(limit: usize) -> Result<i64, StoreError> {
    if limit == 0 {
        return Err(StoreError::InvalidInput("limit: must be at least 1".into()));
    }
    Ok(i64::try_from(limit).unwrap_or(i64::MAX))
}

/// The widest bucket accepted: 1,000 years of 366 days, in microseconds. Wider buckets serve no purpose and
/// their arithmetic could overflow near the ends of the timestamp range.
pub(crate) const MAX_EVERY_MICROS: i64 = 1_000 * 366 * 86_400 * 1_000_000;

/// Checks a bucket width.
pub(crate) fn check_every(every_micros: i64) -> Result<(), StoreError> {
    if !(1..=MAX_EVERY_MICROS).contains(&every_micros) {
        return Err(StoreError::InvalidInput(format!(
            "every: the bucket width must be between 1 and {MAX_EVERY_MICROS} microseconds, got {every_micros}"
        )));
    }
    Ok(())
}

/// The start of the bucket of width `every` (> 0) holding `ts`, aligned to the epoch (floor division).
pub(crate) fn bucket_start(ts: i64, every: i64) -> i64 {
    ts.div_euclid(every).saturating_mul(every)
}

/// How an SQL dialect spells parameters, and where it reads history points from (a table or view with the
/// columns `id, rid, ts, num, val`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dialect {
    param: &'static str,
    /// Every point: a table, or a view over `tables`.
    points: &'static str,
    /// The tables behind `points`, the one with the newest ids first.
    tables: &'static [&'static str],
}

/// SQLite: `?1`; points come from a view over the staging table and the indexed history.
pub(crate) const SQLITE: Dialect =
    Dialect { param: "?", points: "history_all", tables: &["history_recent", "history"] };
/// PostgreSQL: `$1`; points come from the history table.
pub(crate) const POSTGRES: Dialect = Dialect { param: "$", points: "history", tables: &["history"] };

/// An SQL text with its integer parameters.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) text: String,
    pub(crate) params: Vec<i64>,
    dialect: Dialect,
}

impl Sql {
    fn new(dialect: Dialect) -> Self {
        Sql { text: String::new(), params: Vec::new(), dialect }
    }

    /// Adds a parameter and returns its placeholder.
    fn bind(&mut self, value: i64) -> String {
        self.params.push(value);
        format!("{}{}", self.dialect.param, self.params.len())
    }
}

fn direction(order: Order) -> &'static str {
    match order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    }
}

/// The bucket start of column `ts`, floor-aligned to multiples of the parameter `every` (exact for negatives).
fn bucket_expr(every: &str) -> String {
    format!("(ts - ts % {every} - CASE WHEN ts % {every} < 0 THEN {every} ELSE 0 END)")
}

/// A raw history page: selects `(row id, ts, val)`, at most `fetch` rows.
pub(crate) fn history_sql(
    dialect: Dialect,
    rid: i64,
    from: Option<i64>,
    to: Option<i64>,
    cursor: Option<Cursor>,
    order: Order,
    fetch: i64,
) -> Sql {
    let mut sql = Sql::new(dialect);
    let id = "id";
    let points = dialect.points;
    let rid = sql.bind(rid);
    let mut text = format!("SELECT id, ts, val FROM {points} WHERE rid = {rid}");
    if let Some(from) = from {
        text += &format!(" AND ts >= {}", sql.bind(from));
    }
    if let Some(to) = to {
        text += &format!(" AND ts < {}", sql.bind(to));
    }
    if let Some(c) = cursor {
        let (ts, row) = (sql.bind(c.ts), sql.bind(c.id));
        // The plain range on `ts` lets the planner seek the (rid, ts) index; the OR breaks ties on equal times.
        text += &match order {
            Order::Asc => format!(" AND ts >= {ts} AND (ts > {ts} OR {id} > {row})"),
            Order::Desc => format!(" AND ts <= {ts} AND (ts < {ts} OR {id} < {row})"),
        };
    }
    let dir = direction(order);
    text += &format!(" ORDER BY ts {dir}, {id} {dir} LIMIT {}", sql.bind(fetch));
    sql.text = text;
    sql
}

fn aggregate_expr(aggregate: Aggregate) -> &'static str {
    match aggregate {
        Aggregate::Avg => "avg(num)",
        Aggregate::Min => "min(num)",
        Aggregate::Max => "max(num)",
        Aggregate::Sum => "sum(num)",
        Aggregate::Count | Aggregate::Last => "CAST(NULL AS DOUBLE PRECISION)",
    }
}

/// The value of the newest row (greatest ts, then row id) of a bucket whose greatest ts is `g.mt`. Asked of
/// each table in turn (newest ids first) rather than of a view, so that every probe is one index seek.
fn last_expr(dialect: Dialect, rid: &str) -> String {
    let probes: Vec<String> = dialect
        .tables
        .iter()
        .map(|t| format!("(SELECT h.val FROM {t} h WHERE h.rid = {rid} AND h.ts = g.mt ORDER BY h.id DESC LIMIT 1)"))
        .collect();
    match probes.as_slice() {
        [one] => one.clone(),
        _ => format!("COALESCE({})", probes.join(", ")),
    }
}

/// A downsampling query: selects `(bucket start, aggregate, count, last value)` per non-empty bucket.
#[allow(clippy::too_many_arguments)]
pub(crate) fn downsample_sql(
    dialect: Dialect,
    rid: i64,
    from: Option<i64>,
    to: Option<i64>,
    every: i64,
    aggregate: Aggregate,
    order: Order,
    limit: i64,
) -> Sql {
    let mut sql = Sql::new(dialect);
    let rid = sql.bind(rid);
    let every = sql.bind(every);
    let mut filter = format!("rid = {rid}");
    if let Some(from) = from {
        filter += &format!(" AND ts >= {}", sql.bind(from));
    }
    if let Some(to) = to {
        filter += &format!(" AND ts < {}", sql.bind(to));
    }
    let dir = direction(order);
    let limit = sql.bind(limit);
    let last = if aggregate == Aggregate::Last { last_expr(dialect, &rid) } else { "CAST(NULL AS TEXT)".to_owned() };
    sql.text = format!(
        "WITH g AS (SELECT {bucket} AS b, {agg} AS a, count(*) AS c, max(ts) AS mt FROM {points} WHERE {filter} \
         GROUP BY 1 ORDER BY 1 {dir} LIMIT {limit}) SELECT b, a, c, {last} FROM g ORDER BY b {dir}",
        bucket = bucket_expr(&every),
        agg = aggregate_expr(aggregate),
        points = dialect.points,
    );
    sql
}

/// The buckets retention rolls up: selects `(bucket start, aggregate, count, min ts, last value)` for every
/// bucket of points older than `cutoff`, oldest first.
pub(crate) fn rollup_sql(dialect: Dialect, rid: i64, cutoff: i64, every: i64, aggregate: Aggregate) -> Sql {
    let mut sql = Sql::new(dialect);
    let rid = sql.bind(rid);
    let every = sql.bind(every);
    let cutoff = sql.bind(cutoff);
    sql.text = format!(
        "WITH g AS (SELECT {bucket} AS b, {agg} AS a, count(*) AS c, min(ts) AS lo, max(ts) AS mt FROM {points} \
         WHERE rid = {rid} AND ts < {cutoff} GROUP BY 1) SELECT b, a, c, lo, {last} FROM g ORDER BY b ASC",
        bucket = bucket_expr(&every),
        agg = aggregate_expr(aggregate),
        last = last_expr(dialect, &rid),
        points = dialect.points,
    );
    sql
}

/// A number as JSON: integral values of integer resources stay integers, anything else is a float.
fn number_json(x: f64, integer: bool) -> Value {
    const LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer up to here is exact in f64
    if integer && x.fract() == 0.0 && x.abs() <= LIMIT {
        return Value::from(x as i64);
    }
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// One aggregated bucket as read from [`downsample_sql`] or [`rollup_sql`].
pub(crate) struct BucketRow {
    pub(crate) start: i64,
    pub(crate) aggregate: Option<f64>,
    pub(crate) count: i64,
    pub(crate) last: Option<String>,
}

/// The JSON value of a bucket for `aggregate`. `integer` says whether the resource is declared `integer`.
pub(crate) fn bucket_value(aggregate: Aggregate, row: &BucketRow, integer: bool) -> Result<Value, StoreError> {
    Ok(match aggregate {
        Aggregate::Avg | Aggregate::Sum => row.aggregate.map_or(Value::Null, |x| number_json(x, false)),
        Aggregate::Min | Aggregate::Max => row.aggregate.map_or(Value::Null, |x| number_json(x, integer)),
        Aggregate::Count => Value::from(row.count),
        Aggregate::Last => match &row.last {
            Some(text) => from_json(text, "history value")?,
            None => Value::Null,
        },
    })
}

/// Checks that `aggregate` can be computed on a resource of type `value_type`.
pub(crate) fn check_aggregate(
    path: &ResourcePath,
    aggregate: Aggregate,
    value_type: ValueType,
) -> Result<(), StoreError> {
    if aggregate.needs_numbers() && !value_type.is_numeric() {
        return Err(StoreError::InvalidInput(format!(
            "aggregate: {aggregate:?} needs numbers but {path} holds {value_type} values"
        )));
    }
    Ok(())
}

/// What one retention pass does to one resource.
#[derive(Debug, Default)]
pub(crate) struct RollupPlan {
    /// The range of raw points to delete, `[from, to)`; `None` when there is nothing to do.
    pub(crate) range: Option<(i64, i64)>,
    /// The points written in their place (including single points re-inserted unchanged).
    pub(crate) points: Vec<HistoryRow>,
    /// How many of `points` are aggregates (the others were already rolled up and are put back as they were).
    pub(crate) written: u64,
}

/// The effective cutoff of a rollup: aligned down to a bucket boundary so that only whole buckets are rolled up
/// and a later pass never mixes raw points with an earlier rollup of the same bucket.
pub(crate) fn rollup_cutoff(cutoff: i64, every: i64) -> i64 {
    bucket_start(cutoff, every)
}

/// Plans the rollup of one resource from its buckets (oldest first). A bucket that holds a single point at its
/// start is taken as already rolled up and left alone, so repeated passes do nothing.
pub(crate) fn plan_rollup(
    rid: i64,
    buckets: &[(BucketRow, i64)],
    every: i64,
    aggregate: Aggregate,
    value_type: ValueType,
) -> Result<RollupPlan, StoreError> {
    let aggregate = if value_type.is_numeric() { aggregate } else { Aggregate::Last };
    let integer = value_type == ValueType::Integer;
    let done = |row: &BucketRow, lo: i64| row.count == 1 && lo == row.start;
    let first = buckets.iter().position(|(row, lo)| !done(row, *lo));
    let last = buckets.iter().rposition(|(row, lo)| !done(row, *lo));
    let (Some(first), Some(last)) = (first, last) else { return Ok(RollupPlan::default()) };
    let mut plan = RollupPlan::default();
    let mut end = i64::MIN;
    for (row, lo) in buckets.get(first..=last).unwrap_or_default() {
        let value = if done(row, *lo) {
            match &row.last {
                Some(text) => from_json(text, "history value")?,
                None => continue,
            }
        } else {
            plan.written += 1;
            bucket_value(aggregate, row, integer)?
        };
        end = row.start.saturating_add(every);
        plan.points.push(HistoryRow { rid, ts: row.start, num: history_num(&value), val: to_json(&value)? });
    }
    let start = buckets.get(first).map_or(end, |(row, _)| row.start);
    plan.range = Some((start, end));
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_floor_for_negative_times() {
        assert_eq!(bucket_start(0, 10), 0);
        assert_eq!(bucket_start(9, 10), 0);
        assert_eq!(bucket_start(10, 10), 10);
        assert_eq!(bucket_start(-1, 10), -10);
        assert_eq!(bucket_start(-10, 10), -10);
        assert_eq!(bucket_start(-11, 10), -20);
    }

    #[test]
    fn cursors_round_trip_and_reject_foreign_text() {
        let c = encode_cursor(Order::Desc, -5, 42);
        assert_eq!(decode_cursor(Order::Desc, &c).unwrap(), Cursor { ts: -5, id: 42 });
        assert!(matches!(decode_cursor(Order::Asc, &c), Err(StoreError::InvalidInput(_))));
        for bad in ["", "x", "!!!", &URL_SAFE_NO_PAD.encode("h1:a:1"), &URL_SAFE_NO_PAD.encode("h1:a:1:x")] {
            assert!(matches!(decode_cursor(Order::Asc, bad), Err(StoreError::InvalidInput(_))), "{bad}");
        }
    }

    #[test]
    fn integer_resources_keep_integral_extremes() {
        let row = BucketRow { start: 0, aggregate: Some(3.0), count: 2, last: Some("\"x\"".into()) };
        assert_eq!(bucket_value(Aggregate::Min, &row, true).unwrap(), serde_json::json!(3));
        assert_eq!(bucket_value(Aggregate::Min, &row, false).unwrap(), serde_json::json!(3.0));
        assert_eq!(bucket_value(Aggregate::Sum, &row, true).unwrap(), serde_json::json!(3.0));
        assert_eq!(bucket_value(Aggregate::Count, &row, true).unwrap(), serde_json::json!(2));
        assert_eq!(bucket_value(Aggregate::Last, &row, true).unwrap(), serde_json::json!("x"));
    }

    #[test]
    fn newest_update_wins_ties_go_to_the_later() {
        let path: ResourcePath = "p/s/r".parse().unwrap();
        let up =
            |v: i64, t: i64| Update { path: path.clone(), value: Value::from(v), timestamp: Timestamp::from_micros(t) };
        let mut rows = GroupRows::default();
        for u in [up(1, 10), up(2, 30), up(3, 20), up(4, 30)] {
            rows.push(7, &u).unwrap();
        }
        assert_eq!(rows.current().collect::<Vec<_>>(), vec![(7, 30, "4")]);
    }

    #[test]
    fn rollup_skips_buckets_already_rolled_up() {
        let row =
            |start, count, lo: i64| (BucketRow { start, aggregate: Some(1.0), count, last: Some("1".into()) }, lo);
        let plan = plan_rollup(1, &[row(0, 1, 0), row(10, 1, 10)], 10, Aggregate::Avg, ValueType::Number).unwrap();
        assert!(plan.range.is_none());
        let plan = plan_rollup(
            1,
            &[row(0, 1, 0), row(10, 3, 11), row(20, 1, 20), row(30, 2, 30)],
            10,
            Aggregate::Avg,
            ValueType::Number,
        )
        .unwrap();
        assert_eq!(plan.range, Some((10, 40)));
        assert_eq!(plan.written, 2);
        assert_eq!(plan.points.len(), 3);
    }
}
