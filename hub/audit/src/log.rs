//! The writer: one task numbers, chains and stores entries in batches, and signs checkpoints.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hub_model::Timestamp;
use hub_store::{RecordWrite, Store};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    AuditError, CHECKPOINTS, Checkpoint, Entry, SigningKey, VerifyingKey,
    entry::{GENESIS, row},
};

/// How the log batches and checkpoints.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Sign a checkpoint once this many entries were appended since the last one. Default: 1,000.
    pub checkpoint_every: u64,
    /// Sign a checkpoint at least this often while entries arrive. Default: 60 s.
    pub checkpoint_interval: Duration,
    /// Entries waiting for the writer before [`AuditLog::record`] waits too. Default: 65,536.
    pub queue: usize,
    /// Most entries in one durable append. Default: 4,096.
    pub max_batch: usize,
    /// How long the writer lets entries gather after each append before it takes the next ones. While it
    /// lingers, recording an entry wakes no thread: on a busy hub one wake-up serves many entries instead of one
    /// each. Entries become durable this much later at most. Default: 2 ms.
    pub linger: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            checkpoint_every: 1_000,
            checkpoint_interval: Duration::from_secs(60),
            queue: 65_536,
            max_batch: 4_096,
            linger: Duration::from_millis(2),
        }
    }
}

enum Message {
    Entry(Timestamp, Entry),
    /// Answered with the newest `seq` once everything before is durable.
    Flush(oneshot::Sender<u64>),
    /// Answered with a fresh checkpoint of everything before.
    Checkpoint(oneshot::Sender<Result<Checkpoint, String>>),
    /// Store everything before, sign a last checkpoint, answer, and stop.
    Close(oneshot::Sender<()>),
}

/// The audit log of a hub. Cheap to clone; every clone appends to the same chain.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Message>,
    store: Arc<dyn Store>,
    key: VerifyingKey,
    /// The newest durable `seq`.
    head: Arc<AtomicU64>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("head", &self.head()).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log kept in `store`: the chain goes on from the stored head. Checkpoints are signed with `key`.
    pub async fn open(store: Arc<dyn Store>, key: SigningKey, options: AuditOptions) -> Result<AuditLog, AuditError> {
        let (seq, hash) = match store.audit_head().await? {
            Some(head) => (head.seq, head.hash),
            None => (0, GENESIS.to_owned()),
        };
        let mut checkpointed = latest(&*store).await?.map_or(0, |c| c.seq);
        if checkpointed > seq {
            // Entries a checkpoint signed are gone: `verify` reports it; the chain goes on from what is there.
            tracing::error!(target: "hub::audit", head = seq, checkpoint = checkpointed,
                "the audit log ends before its newest checkpoint: entries were removed; run hub audit verify");
            checkpointed = seq;
        }
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let head = Arc::new(AtomicU64::new(seq));
        let verifying = key.verifying_key();
        let writer =
            Writer { store: Arc::clone(&store), key, options, seq, hash, checkpointed, head: Arc::clone(&head) };
        let task = tokio::spawn(writer.run(rx));
        Ok(AuditLog { inner: Arc::new(Inner { tx, store, key: verifying, head, task: Mutex::new(Some(task)) }) })
    }

    /// Appends an entry, stamped now, without waiting: callers may hold locks. Entries are never dropped: when
    /// the writer is `queue` entries behind (a store outage), the entry waits in a task of its own.
    pub fn record(&self, entry: Entry) {
        match self.inner.tx.try_send(Message::Entry(Timestamp::now(), entry)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                let tx = self.inner.tx.clone();
                tokio::spawn(async move {
                    if tx.send(message).await.is_err() {
                        tracing::error!(target: "hub::audit", "an entry arrived after the audit log was closed");
                    }
                });
            }
            // Only after `close`, while the hub shuts down.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!(target: "hub::audit", "an entry arrived after the audit log was closed");
            }
        }
    }

    /// Waits until every entry recorded before is durable; returns the newest `seq`.
    pub async fn flush(&self) -> Result<u64, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.inner.tx.send(Message::Flush(tx)).await.map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)
    }

    /// Signs and stores a checkpoint of everything recorded before, and returns it (to be published).
    pub async fn checkpoint(&self) -> Result<Checkpoint, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.inner.tx.send(Message::Checkpoint(tx)).await.map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?.map_err(AuditError::Checkpoint)
    }

    /// The newest stored checkpoint.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        latest(&*self.inner.store).await
    }

    /// The key checkpoints verify with.
    pub fn public_key(&self) -> VerifyingKey {
        self.inner.key
    }

    /// The newest durable `seq` (0: empty).
    pub fn head(&self) -> u64 {
        self.inner.head.load(Ordering::Acquire)
    }

    /// Where the log is kept.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Stores everything recorded before, signs a last checkpoint and stops the writer. Later entries are refused
    /// (logged). Waits for the store: bound it with a timeout where shutdown has a deadline.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Message::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let task = self.inner.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// How a checkpoint is stored: under its zero-padded `seq` and signing time, so that records list in order and a
/// checkpoint never replaces another one (one signed before entries were removed stays evidence).
fn record(checkpoint: &Checkpoint) -> RecordWrite {
    // Serialising strings and numbers cannot fail.
    let body = serde_json::to_string(checkpoint).expect("a checkpoint serialises");
    let key = format!("{:020}.{:020}", checkpoint.seq, checkpoint.signed_at);
    RecordWrite { namespace: CHECKPOINTS.to_owned(), key, body: Some(body) }
}

/// The newest checkpoint in `store`.
pub(crate) async fn latest(store: &dyn Store) -> Result<Option<Checkpoint>, AuditError> {
    match store.records(CHECKPOINTS).await?.pop() {
        Some((_, body)) => Checkpoint::from_json(&body).map(Some),
        None => Ok(None),
    }
}

struct Writer {
    store: Arc<dyn Store>,
    key: SigningKey,
    options: AuditOptions,
    /// The newest numbered entry and its hash (durable once `persist` returns).
    seq: u64,
    hash: String,
    /// The entry the newest checkpoint covers.
    checkpointed: u64,
    head: Arc<AtomicU64>,
}

/// Merges identical reads that waited in the queue together (the same subject and roles reading the same object
/// with the same decision) into their first entry, whose detail then says how many there were and when the last
/// was: `personal data (×57, the last at 2026-12-08T01:20:00.123Z)`. Nothing is merged while the writer keeps up,
/// since entries then wait alone; when readers outpace it (a dashboard polling personal data), the log keeps who
/// read what, when and how often, at the cost of one row per burst instead of one per read. Other actions are
/// never merged.
fn coalesce_reads(entries: Vec<(Timestamp, Entry)>) -> Vec<(Timestamp, Entry)> {
    if entries.len() < 2 {
        return entries;
    }
    let mut out: Vec<(Timestamp, Entry, usize, Timestamp)> = Vec::with_capacity(entries.len());
    // The reads kept so far, by the hash of their entry (collisions are told apart by comparing the entries), so
    // that no entry is copied to serve as a key.
    let hasher = std::collections::hash_map::RandomState::new();
    let mut reads: std::collections::HashMap<u64, Vec<usize>> = std::collections::HashMap::new();
    for (time, entry) in entries {
        if entry.action == "read" {
            let candidates = reads.entry(std::hash::BuildHasher::hash_one(&hasher, &entry)).or_default();
            if let Some(&at) = candidates.iter().find(|&&at| out[at].1 == entry) {
                let merged = &mut out[at];
                merged.2 += 1;
                merged.3 = merged.3.max(time);
                continue;
            }
            candidates.push(out.len());
        }
        out.push((time, entry, 1, time));
    }
    out.into_iter()
        .map(|(time, mut entry, count, last)| {
            if count > 1 {
                let burst = format!("×{count}, the last at {}", last.to_rfc3339());
                entry.detail = Some(match entry.detail.take() {
                    Some(detail) => format!("{detail} ({burst})"),
                    None => burst,
                });
            }
            (time, entry)
        })
        .collect()
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut ticker = tokio::time::interval(self.options.checkpoint_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut messages = Vec::with_capacity(self.options.max_batch);
        loop {
            tokio::select! {
                received = rx.recv_many(&mut messages, self.options.max_batch) => {
                    if received == 0 {
                        return;
                    }
                }
                _ = ticker.tick() => {
                    if self.seq > self.checkpointed {
                        // A failure is logged; the next checkpoint covers these entries too.
                        let _ = self.sign_and_store().await;
                    }
                    continue;
                }
            }
            let mut rows = Vec::with_capacity(messages.len());
            let mut waiting = Vec::new();
            let mut entries = Vec::with_capacity(messages.len());
            for message in messages.drain(..) {
                match message {
                    Message::Entry(time, entry) => entries.push((time, entry)),
                    other => waiting.push(other),
                }
            }
            for (time, entry) in coalesce_reads(entries) {
                self.seq += 1;
                let row = row(self.seq, time, &self.hash, entry);
                self.hash.clone_from(&row.hash);
                rows.push(row);
            }
            if !rows.is_empty() {
                // Checkpoints fall on every `checkpoint_every`-th entry after the last one; they are stored in
                // the transaction of the entries they sign.
                let every = self.options.checkpoint_every.max(1);
                let checkpoints: Vec<Checkpoint> = rows
                    .iter()
                    .filter(|row| (row.seq - self.checkpointed).is_multiple_of(every))
                    .map(|row| Checkpoint::sign(&self.key, row.seq, &row.hash, Timestamp::now()))
                    .collect();
                self.persist(rows.into(), &checkpoints).await;
                if let Some(last) = checkpoints.last() {
                    self.checkpointed = last.seq;
                }
            }
            for message in waiting {
                match message {
                    Message::Flush(ack) => {
                        let _ = ack.send(self.seq);
                    }
                    Message::Checkpoint(ack) => {
                        let _ = ack.send(self.sign_and_store().await);
                    }
                    Message::Close(ack) => {
                        if self.seq > self.checkpointed {
                            let _ = self.sign_and_store().await;
                        }
                        let _ = ack.send(());
                        return;
                    }
                    Message::Entry(..) => unreachable!("entries were numbered above"),
                }
            }
            if !self.options.linger.is_zero() {
                tokio::time::sleep(self.options.linger).await;
            }
        }
    }

    /// Appends until the store takes the rows (never empty): the chain cannot skip them. Meanwhile new entries wait in the
    /// queue (and, once it is full, their callers wait).
    async fn persist(&mut self, rows: Arc<[hub_store::AuditRow]>, checkpoints: &[Checkpoint]) {
        let mut backoff = Duration::from_millis(50);
        let last = rows[rows.len() - 1].seq;
        let records: Vec<RecordWrite> = checkpoints.iter().map(record).collect();
        loop {
            match self.store.append_audit(Arc::clone(&rows), records.clone()).await {
                Ok(()) => break,
                // The commit may have happened although the answer was lost (a deadline, a broken connection).
                Err(_) if self.stored(&rows[rows.len() - 1]).await => break,
                Err(e) => {
                    tracing::error!(target: "hub::audit", error = %e, entries = rows.len(), "storing audit entries failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.head.store(last, Ordering::Release);
    }

    /// Whether `row` is in the store already, with its hash.
    async fn stored(&self, row: &hub_store::AuditRow) -> bool {
        let query = hub_store::AuditQuery { after: row.seq - 1, limit: 1, ..hub_store::AuditQuery::default() };
        match self.store.audit(query).await {
            Ok(found) => found.first().is_some_and(|found| found.seq == row.seq && found.hash == row.hash),
            Err(_) => false,
        }
    }

    /// Signs a checkpoint of the newest entry and stores it.
    async fn sign_and_store(&mut self) -> Result<Checkpoint, String> {
        if self.seq == 0 {
            return Err("the audit log is empty: there is nothing to sign".into());
        }
        let checkpoint = Checkpoint::sign(&self.key, self.seq, &self.hash, Timestamp::now());
        let RecordWrite { namespace, key, body } = record(&checkpoint);
        match self.store.put_record(&namespace, &key, &body.unwrap_or_default()).await {
            Ok(()) => {
                self.checkpointed = checkpoint.seq;
                Ok(checkpoint)
            }
            Err(e) => {
                // The next one covers these entries too.
                tracing::error!(target: "hub::audit", error = %e, "storing an audit checkpoint failed");
                Err(format!("storing the checkpoint failed: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod coalescing {
    use super::*;
    use crate::Decision;

    fn read(subject: &str, object: &str) -> Entry {
        Entry::new(subject, Vec::new(), "read", object, Decision::Allowed).with_detail("personal data")
    }

    #[test]
    fn identical_reads_waiting_together_become_one_entry_with_their_count() {
        let t = |s: i64| Timestamp::from_micros(s * 1_000_000);
        let write = Entry::new("ana", Vec::new(), "put", "/providers/x", Decision::Allowed);
        let merged = coalesce_reads(vec![
            (t(1), read("ana", "care-1/heart/rate")),
            (t(2), write.clone()),
            (t(3), read("ana", "care-1/heart/rate")),
            (t(4), read("bob", "care-1/heart/rate")),
            (t(5), write.clone()),
            (t(6), read("ana", "care-1/heart/rate")),
        ]);
        let shown: Vec<(i64, &str, &str, Option<&str>)> = merged
            .iter()
            .map(|(time, e)| (time.as_micros() / 1_000_000, e.subject.as_str(), e.action.as_str(), e.detail.as_deref()))
            .collect();
        assert_eq!(
            shown,
            [
                (1, "ana", "read", Some("personal data (×3, the last at 1970-01-01T00:00:06Z)")),
                (2, "ana", "put", None),
                (4, "bob", "read", Some("personal data")),
                (5, "ana", "put", None),
            ]
        );
        // A denied read is another entry than an allowed one.
        let denied = Entry::new("ana", Vec::new(), "read", "care-1/heart/rate", Decision::Denied);
        assert_eq!(coalesce_reads(vec![(t(1), read("ana", "care-1/heart/rate")), (t(2), denied)]).len(), 2);
    }
}
