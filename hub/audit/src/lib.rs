//! The hub's audit log: who did what, appended in order, where nobody can quietly change it.
//!
//! Every entry names the subject, the roles it acted under, the action, the object, the decision and the time.
//! Entries are chained: each one's canonical text carries the hash of the entry before it, and its own hash is
//! the SHA-256 of that text, so editing, removing or reordering an entry breaks the chain at that entry. The hub
//! signs checkpoints (the sequence number and hash of the newest entry) with an Ed25519 key, every so many
//! entries, every so many seconds and at shutdown; a checkpoint exported and kept outside the hub makes even a
//! rewrite of the whole log, or the removal of its tail, detectable.
//!
//! [`AuditLog`] appends (one writer task, batches committed durably through the [`hub_store::Store`]);
//! [`verify`] walks the stored log and names the first entry that is not what it was.

mod checkpoint;
mod entry;
mod log;
mod verify;

pub use checkpoint::{Checkpoint, SigningKey, VerifyingKey, load_or_create_key, parse_public_key, public_key_hex};
pub use entry::{Decision, Entry, Record};
pub use log::{AuditLog, AuditOptions};
pub use verify::{Problem, ProblemKind, Report, verify};

/// The record namespace the signed checkpoints are kept under, keyed by zero-padded sequence number.
pub const CHECKPOINTS: &str = "audit.checkpoints";

/// Why the audit log could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed; the entries are kept and retried by the writer.
    #[error(transparent)]
    Store(#[from] hub_store::StoreError),
    /// The signing key file is missing, unreadable or malformed.
    #[error("audit signing key: {0}")]
    Key(String),
    /// A checkpoint document is malformed.
    #[error("audit checkpoint: {0}")]
    Checkpoint(String),
    /// The log's writer has stopped (the hub is shutting down).
    #[error("the audit log is closed")]
    Closed,
}
