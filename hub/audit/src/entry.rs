//! Entries, their canonical text, and the chain hash.

use hub_model::Timestamp;
use hub_store::AuditRow;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash the first entry chains to.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the decision on the recorded action was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The action was allowed (and, for writes, done).
    Allowed,
    /// The policy denied it.
    Denied,
    /// It was allowed but failed (a rejected value, an unreachable device).
    Failed,
}

/// One thing that happened, as a caller records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Who acted (`anonymous` without credentials; `plugin:<id>`, `rule:<id>` for the hub's own actors).
    pub subject: String,
    /// The roles the subject held when it acted.
    pub roles: Vec<String>,
    /// What it did: `read`, `write`, `act`, `admin`, `authenticate`, `policy.replace`, `plugin.install`, ...
    pub action: String,
    /// What it did it to: a resource path, a provider, `policy`, `plugin:<id>`, `token:<id>`, ...
    pub object: String,
    /// The outcome.
    pub decision: Decision,
    /// Whose personal data the entry is about, when it is (the owner sees the entries about their data).
    pub owner: Option<String>,
    /// A short note (why it was denied, how many values a write carried); never the data itself.
    pub detail: Option<String>,
}

impl Entry {
    /// An entry without owner or detail.
    pub fn new(
        subject: impl Into<String>,
        roles: Vec<String>,
        action: impl Into<String>,
        object: impl Into<String>,
        decision: Decision,
    ) -> Entry {
        Entry {
            subject: subject.into(),
            roles,
            action: action.into(),
            object: object.into(),
            decision,
            owner: None,
            detail: None,
        }
    }

    /// The same entry about `owner`'s data.
    pub fn owned_by(mut self, owner: Option<String>) -> Entry {
        self.owner = owner;
        self
    }

    /// The same entry with a note.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Entry {
        self.detail = Some(detail.into());
        self
    }
}

/// An entry in the log: its place, its time, the hash it chains to and its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When it was recorded (RFC 3339).
    pub time: String,
    /// The hash of the entry before (64 zeros for the first).
    pub prev: String,
    /// What happened.
    #[serde(flatten)]
    pub entry: Entry,
    /// SHA-256 of the canonical text (hex).
    pub hash: String,
}

/// The canonical text of an entry: JSON with a fixed field order, the previous hash inside. Its SHA-256 is the
/// entry's hash.
#[derive(Serialize, Deserialize)]
pub(crate) struct Body {
    pub(crate) seq: u64,
    /// µs since the epoch.
    pub(crate) time: i64,
    pub(crate) prev: String,
    pub(crate) subject: String,
    pub(crate) roles: Vec<String>,
    pub(crate) action: String,
    pub(crate) object: String,
    pub(crate) decision: Decision,
    pub(crate) owner: Option<String>,
    pub(crate) detail: Option<String>,
}

pub(crate) fn hash_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The stored row of `entry` at `seq`, chained to `prev`.
pub(crate) fn row(seq: u64, time: Timestamp, prev: &str, entry: Entry) -> AuditRow {
    let body = Body {
        seq,
        time: time.as_micros(),
        prev: prev.to_owned(),
        subject: entry.subject,
        roles: entry.roles,
        action: entry.action,
        object: entry.object,
        decision: entry.decision,
        owner: entry.owner,
        detail: entry.detail,
    };
    // Serialising a struct of strings, numbers and a unit enum cannot fail.
    let text = serde_json::to_string(&body).expect("an audit entry serialises");
    AuditRow {
        seq,
        time,
        hash: hash_hex(&text),
        subject: body.subject,
        action: body.action,
        object: body.object,
        owner: body.owner,
        body: text,
    }
}

impl Record {
    /// The entry a stored row holds, read from its canonical text (the columns are only for filtering).
    pub fn from_row(row: &AuditRow) -> Result<Record, String> {
        let body: Body =
            serde_json::from_str(&row.body).map_err(|e| format!("entry {} is not an audit entry: {e}", row.seq))?;
        Ok(Record {
            seq: body.seq,
            time: Timestamp::from_micros(body.time).to_rfc3339(),
            prev: body.prev,
            entry: Entry {
                subject: body.subject,
                roles: body.roles,
                action: body.action,
                object: body.object,
                decision: body.decision,
                owner: body.owner,
                detail: body.detail,
            },
            hash: row.hash.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_covers_every_field_and_the_previous_hash() {
        let entry =
            Entry::new("alice@santander", vec!["officer".into()], "read", "care-1/vitals/pulse", Decision::Allowed)
                .owned_by(Some("carol".into()));
        let base = row(7, Timestamp::from_micros(1_000), GENESIS, entry.clone());
        assert_eq!(base.hash, hash_hex(&base.body));
        assert_eq!(base.owner.as_deref(), Some("carol"));
        let variants = [
            row(8, Timestamp::from_micros(1_000), GENESIS, entry.clone()),
            row(7, Timestamp::from_micros(1_001), GENESIS, entry.clone()),
            row(7, Timestamp::from_micros(1_000), &"1".repeat(64), entry.clone()),
            row(7, Timestamp::from_micros(1_000), GENESIS, Entry { decision: Decision::Denied, ..entry.clone() }),
            row(7, Timestamp::from_micros(1_000), GENESIS, entry.clone().with_detail("x")),
            row(7, Timestamp::from_micros(1_000), GENESIS, Entry { roles: vec![], ..entry.clone() }),
        ];
        for variant in variants {
            assert_ne!(variant.hash, base.hash, "{}", variant.body);
        }
        let record = Record::from_row(&base).unwrap();
        assert_eq!((record.seq, record.entry, record.prev.as_str()), (7, entry, GENESIS));
    }
}
