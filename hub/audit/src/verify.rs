//! Walking the stored log: the chain, the order, and the signed checkpoints.

use std::collections::BTreeMap;

use hub_store::{AuditQuery, AuditRow, Store};
use serde::Serialize;

use crate::{
    AuditError, CHECKPOINTS, Checkpoint, VerifyingKey,
    entry::{Body, GENESIS, hash_hex},
};

/// Rows read per page while verifying.
const PAGE: usize = 10_000;

/// What kind of change verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// An entry's content changed (or it was replaced).
    Altered,
    /// An entry is gone from the middle of the log.
    Missing,
    /// Entries are not in the order they were recorded.
    Reordered,
    /// Entries that a signed checkpoint covers are gone from the end of the log.
    Truncated,
    /// A stored checkpoint does not verify with the trusted key.
    BadCheckpoint,
}

/// The first thing that is not as it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What changed.
    pub kind: ProblemKind,
    /// The entry (sequence number) where it shows first.
    pub seq: u64,
    /// What was found, in a sentence.
    pub message: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Whether the whole log is intact.
    pub ok: bool,
    /// Entries checked (up to the first problem).
    pub entries: u64,
    /// The newest entry and its hash, when the log is intact and not empty.
    pub head: Option<(u64, String)>,
    /// Signed checkpoints that verified and matched the log.
    pub checkpoints: usize,
    /// The newest entry a verified checkpoint covers.
    pub covered: u64,
    /// The first problem, when there is one.
    pub problem: Option<Problem>,
}

/// Checks the log in `store` against its chain and against the checkpoints signed by `key`: those stored with
/// the log and `published` ones kept elsewhere. Stops at the first problem and names its entry.
///
/// What it cannot see: entries appended after the newest checkpoint and then removed (the tail nobody signed
/// yet). Checkpoints every so many entries and seconds, kept outside the hub, bound that window.
pub async fn verify(store: &dyn Store, key: &VerifyingKey, published: &[Checkpoint]) -> Result<Report, AuditError> {
    let mut report = Report { ok: false, entries: 0, head: None, checkpoints: 0, covered: 0, problem: None };
    // The checkpoints, by the entry they cover (several may name one entry); a bad signature is a problem of its
    // own, located by the entry the checkpoint names (or its record's key when it does not parse).
    let mut signed: BTreeMap<u64, Vec<Checkpoint>> = BTreeMap::new();
    let stored = store.records(CHECKPOINTS).await?;
    let stored = stored.iter().map(|(key, body)| {
        let seq = key.split('.').next().and_then(|seq| seq.parse().ok()).unwrap_or(0);
        (format!("stored under {key}"), seq, Checkpoint::from_json(body))
    });
    let published = published.iter().map(|c| (format!("published for entry {}", c.seq), c.seq, Ok(c.clone())));
    for (name, seq, checkpoint) in stored.chain(published) {
        let checked = checkpoint.map_err(|e| e.to_string()).and_then(|c| c.check(key).map(|()| c));
        match checked {
            Ok(checkpoint) => signed.entry(checkpoint.seq).or_default().push(checkpoint),
            Err(e) => {
                report.problem = Some(Problem {
                    kind: ProblemKind::BadCheckpoint,
                    seq,
                    message: format!("the checkpoint {name} is not trustworthy: {e}"),
                });
                return Ok(report);
            }
        }
    }

    let mut prev = GENESIS.to_owned();
    let mut expected = 1u64;
    // The entry after the last checkpoint that matched: where a rewrite may have started.
    let mut unconfirmed_from = 1u64;
    loop {
        let page = store.audit(AuditQuery { after: expected - 1, limit: PAGE, ..AuditQuery::default() }).await?;
        let done = page.len() < PAGE;
        for row in &page {
            if let Err(problem) = check_row(row, expected, &prev) {
                report.problem = Some(problem);
                return Ok(report);
            }
            if let Some(checkpoints) = signed.get(&row.seq) {
                if checkpoints.iter().any(|checkpoint| checkpoint.hash != row.hash) {
                    report.problem = Some(Problem {
                        kind: ProblemKind::Altered,
                        seq: unconfirmed_from,
                        message: format!(
                            "entries {unconfirmed_from} to {} were rewritten: the checkpoint signed for entry {} \
                             names another hash",
                            row.seq, row.seq
                        ),
                    });
                    return Ok(report);
                }
                report.checkpoints += 1;
                report.covered = row.seq;
                unconfirmed_from = row.seq + 1;
            }
            prev.clone_from(&row.hash);
            expected += 1;
            report.entries += 1;
        }
        if done {
            break;
        }
    }
    let last = expected - 1;
    if let Some((&covered, checkpoints)) = signed.last_key_value()
        && covered > last
        && let Some(checkpoint) = checkpoints.first()
    {
        report.problem = Some(Problem {
            kind: ProblemKind::Truncated,
            seq: last + 1,
            message: format!(
                "the log ends at entry {last}, but a checkpoint signed at {} covers entries up to {covered}: entries \
                 {} to {covered} were removed",
                hub_model::Timestamp::from_micros(checkpoint.signed_at).to_rfc3339(),
                last + 1
            ),
        });
        return Ok(report);
    }
    report.ok = true;
    report.head = (last > 0).then_some((last, prev));
    Ok(report)
}

/// Checks one row against its expected place and the hash before it.
fn check_row(row: &AuditRow, expected: u64, prev: &str) -> Result<(), Problem> {
    let problem = |kind, seq, message: String| Problem { kind, seq, message };
    if row.seq != expected {
        let message = if expected == 1 {
            format!("the log starts at entry {} instead of 1: entries 1 to {} are missing", row.seq, row.seq - 1)
        } else {
            format!("entry {expected} is missing: the log goes from entry {} to entry {}", expected - 1, row.seq)
        };
        return Err(problem(ProblemKind::Missing, expected, message));
    }
    let body: Body = serde_json::from_str(&row.body).map_err(|e| {
        problem(ProblemKind::Altered, row.seq, format!("entry {} was altered: it is not an audit entry ({e})", row.seq))
    })?;
    if body.seq != row.seq {
        return Err(problem(
            ProblemKind::Reordered,
            row.seq,
            format!("entry {} holds entry {}: entries were reordered", row.seq, body.seq),
        ));
    }
    if hash_hex(&row.body) != row.hash {
        return Err(problem(
            ProblemKind::Altered,
            row.seq,
            format!("entry {} was altered: its content does not match its hash", row.seq),
        ));
    }
    if body.prev != prev {
        let before = row.seq - 1;
        return Err(match before {
            0 => problem(ProblemKind::Altered, 1, "entry 1 was altered: it does not start the chain".into()),
            _ => problem(
                ProblemKind::Altered,
                before,
                format!("entry {before} was altered or replaced: entry {} does not chain to it", row.seq),
            ),
        });
    }
    let columns_agree = body.time == row.time.as_micros()
        && body.subject == row.subject
        && body.action == row.action
        && body.object == row.object
        && body.owner == row.owner;
    if !columns_agree {
        return Err(problem(
            ProblemKind::Altered,
            row.seq,
            format!("entry {} was altered: its indexed columns differ from its content", row.seq),
        ));
    }
    Ok(())
}
