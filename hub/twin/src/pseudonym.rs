//! Keyed pseudonyms for values that identify people.
//!
//! A resource declared an identifier (`[privacy] identifiers`, globs over `provider/service/resource`) never keeps
//! its clear value: before a batch is validated, each such value becomes `psn:` and the first 128 bits of
//! HMAC-SHA256 under the current period's secret, in hex. The same value gets the same pseudonym throughout a
//! period (counting unique visitors, drawing heat maps) and an unrelated one in the next. Each period's secret is
//! random, kept only in memory and in one small file that the next period's secret overwrites in place, so once a
//! period is over nobody, the operator included, can link its pseudonyms to values or to the next period's.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use hub_model::{Glob, ResourcePath, Timestamp};
use serde_json::Value;
use sha2::Sha256;

/// What a pseudonym starts with.
pub const PREFIX: &str = "psn:";

/// One period's secret.
struct Period {
    index: u64,
    key: [u8; 32],
}

/// Replaces identifying values by pseudonyms; shared by every writer of the twin.
pub struct Pseudonymiser {
    identifiers: Vec<Glob>,
    period_secs: u64,
    key_file: PathBuf,
    current: ArcSwap<Period>,
    /// Held while a new period's secret is made and written.
    rotating: Mutex<()>,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymiser")
            .field("identifiers", &self.identifiers.iter().map(Glob::as_str).collect::<Vec<_>>())
            .field("period_secs", &self.period_secs)
            .finish_non_exhaustive()
    }
}

impl Pseudonymiser {
    /// Pseudonymises the resources `identifiers` match, with secrets that rotate every `period` (whole seconds, at
    /// least one), the current one kept in `key_file` (created 0600 when missing; a secret of an earlier period
    /// found there is replaced).
    pub fn open(identifiers: Vec<Glob>, period: Duration, key_file: &Path) -> io::Result<Pseudonymiser> {
        let period_secs = period.as_secs().max(1);
        let index = period_of(Timestamp::now(), period_secs);
        let stored = read_key_file(key_file)?;
        let current = match stored {
            Some(period) if period.index == index => period,
            _ => {
                let period = Period { index, key: rand::random() };
                write_key_file(key_file, &period)?;
                period
            }
        };
        Ok(Pseudonymiser {
            identifiers,
            period_secs,
            key_file: key_file.to_owned(),
            current: ArcSwap::from_pointee(current),
            rotating: Mutex::new(()),
        })
    }

    /// Whether values of `path` are pseudonymised.
    pub fn covers(&self, path: &ResourcePath) -> bool {
        if self.identifiers.is_empty() {
            return false;
        }
        // Every update of every batch asks: the path's text is written into one buffer per thread, not allocated.
        thread_local! {
            static TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        TEXT.with_borrow_mut(|text| {
            text.clear();
            let _ = std::fmt::Write::write_fmt(text, format_args!("{path}"));
            self.identifiers.iter().any(|g| g.matches(text))
        })
    }

    /// The pseudonym of `value` in the period of `at`. `null` (no reading) stays `null`. A period later than the
    /// current one makes its secret first (and fails if it cannot be kept); an earlier one, which only a clock
    /// set back can ask for, gets the current secret, since earlier ones are gone.
    pub fn pseudonym(&self, value: &Value, at: Timestamp) -> io::Result<Value> {
        if value.is_null() {
            return Ok(Value::Null);
        }
        let key = self.key_at(period_of(at, self.period_secs))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key.key).expect("HMAC takes keys of any length");
        match value {
            Value::String(s) => mac.update(s.as_bytes()),
            other => mac.update(other.to_string().as_bytes()),
        }
        let digest = mac.finalize().into_bytes();
        Ok(Value::String(format!("{PREFIX}{}", hex::encode(&digest[..16]))))
    }

    /// Replaces the secret when `now` is past its period, whether or not a value arrived since: an ended
    /// period's secret must not outlive it. The hub calls it at every period boundary.
    pub fn rotate(&self, now: Timestamp) -> io::Result<()> {
        self.key_at(period_of(now, self.period_secs)).map(drop)
    }

    /// How long from `now` until the next period begins.
    pub fn until_next_period(&self, now: Timestamp) -> Duration {
        let micros = now.as_micros().max(0) as u64;
        let period = self.period_secs * 1_000_000;
        Duration::from_micros(period - micros % period)
    }

    fn key_at(&self, index: u64) -> io::Result<Arc<Period>> {
        let current = self.current.load_full();
        if index <= current.index {
            return Ok(current);
        }
        let _rotating = self.rotating.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current.load_full();
        if index <= current.index {
            return Ok(current);
        }
        let next = Arc::new(Period { index, key: rand::random() });
        write_key_file(&self.key_file, &next)?;
        self.current.store(next.clone());
        tracing::info!(period = index, "pseudonym secret rotated");
        Ok(next)
    }
}

fn period_of(at: Timestamp, period_secs: u64) -> u64 {
    (at.as_micros().max(0) as u64 / 1_000_000) / period_secs
}

/// `v1 <period, 20 digits> <key, 64 hex digits>\n`: always the same length, so a new period overwrites the old
/// secret's bytes in place.
fn encode(period: &Period) -> String {
    format!("v1 {:020} {}\n", period.index, hex::encode(period.key))
}

fn read_key_file(path: &Path) -> io::Result<Option<Period>> {
    let mut text = String::new();
    match File::open(path) {
        Ok(mut file) => file.read_to_string(&mut text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let invalid =
        || io::Error::new(io::ErrorKind::InvalidData, format!("{} is not a pseudonym key file", path.display()));
    let mut parts = text.split_whitespace();
    if parts.next() != Some("v1") {
        return Err(invalid());
    }
    let index = parts.next().and_then(|p| p.parse::<u64>().ok()).ok_or_else(invalid)?;
    let key = parts.next().and_then(|k| hex::decode(k).ok()).and_then(|k| <[u8; 32]>::try_from(k).ok());
    Ok(Some(Period { index, key: key.ok_or_else(invalid)? }))
}

fn write_key_file(path: &Path, period: &Period) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.seek(SeekFrom::Start(0))?;
    let text = encode(period);
    file.write_all(text.as_bytes())?;
    file.set_len(text.len() as u64)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_secs(s: i64) -> Timestamp {
        Timestamp::from_micros(s * 1_000_000)
    }

    #[test]
    fn stable_within_a_period_different_across_and_never_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pseudonym.key");
        let p = Pseudonymiser::open(vec![Glob::new("*/wifi/mac")], Duration::from_secs(60), &file).unwrap();
        let mac = Value::from("a4:5e:60:e1:7f:02");
        let now = Timestamp::now().as_micros() / 1_000_000;
        let start = now - now % 60;
        let first = p.pseudonym(&mac, at_secs(start)).unwrap();
        assert_eq!(p.pseudonym(&mac, at_secs(start + 59)).unwrap(), first, "the same within a period");
        let other = p.pseudonym(&Value::from("a4:5e:60:e1:7f:03"), at_secs(start)).unwrap();
        assert_ne!(other, first, "another value, another pseudonym");
        let text = first.as_str().unwrap();
        assert!(text.starts_with(PREFIX) && text.len() == PREFIX.len() + 32, "{text}");
        assert!(!text.contains("a4:5e"));
        let before = std::fs::read(&file).unwrap();
        let next = p.pseudonym(&mac, at_secs(start + 60)).unwrap();
        assert_ne!(next, first, "a new period, a new pseudonym");
        // The new secret took the old one's bytes: the file holds only the new period.
        let after = std::fs::read(&file).unwrap();
        assert_eq!(before.len(), after.len());
        assert_ne!(before, after);
        // Rotation without a value: the boundary alone replaces the secret.
        let idle = p.until_next_period(at_secs(start + 60));
        assert_eq!(idle, Duration::from_secs(60));
        p.rotate(at_secs(start + 120)).unwrap();
        assert_ne!(std::fs::read(&file).unwrap(), after, "the idle period's secret is gone from the file");
        let after = std::fs::read(&file).unwrap();
        assert_ne!(p.pseudonym(&mac, at_secs(start + 120)).unwrap(), next);
        assert_eq!(std::fs::read(&file).unwrap(), after);
        let next = p.pseudonym(&mac, at_secs(start + 120)).unwrap();
        // A clock set back gets the current secret, never an old one.
        assert_eq!(p.pseudonym(&mac, at_secs(start)).unwrap(), next);
        assert_eq!(p.pseudonym(&Value::Null, at_secs(start)).unwrap(), Value::Null);
        // Numbers are pseudonymised too.
        assert!(p.pseudonym(&Value::from(4711), at_secs(start + 60)).unwrap().as_str().unwrap().starts_with(PREFIX));
    }

    #[test]
    fn a_restart_within_the_period_keeps_the_pseudonyms() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pseudonym.key");
        let mac = Value::from("a4:5e:60:e1:7f:02");
        let now = Timestamp::now();
        let a = Pseudonymiser::open(Vec::new(), Duration::from_secs(86_400), &file).unwrap();
        let b = Pseudonymiser::open(Vec::new(), Duration::from_secs(86_400), &file).unwrap();
        assert_eq!(a.pseudonym(&mac, now).unwrap(), b.pseudonym(&mac, now).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&file, "garbage").unwrap();
        let e = Pseudonymiser::open(Vec::new(), Duration::from_secs(86_400), &file).unwrap_err();
        assert!(e.to_string().contains("not a pseudonym key file"), "{e}");
    }

    #[test]
    fn identifiers_are_chosen_by_glob() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pseudonymiser::open(
            vec![Glob::new("*/wifi/mac"), Glob::new("reports-*/report/reporter")],
            Duration::from_secs(60),
            &dir.path().join("k"),
        )
        .unwrap();
        let path = |s: &str| s.parse::<ResourcePath>().unwrap();
        assert!(p.covers(&path("occ-1/wifi/mac")));
        assert!(p.covers(&path("reports-7/report/reporter")));
        assert!(!p.covers(&path("occ-1/wifi/count")));
    }
}
