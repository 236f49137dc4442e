//! Keys for personal data at rest: one data key per owner, wrapped under a master key, and erasable.
//!
//! Personal data is sealed with its owner's data key (XChaCha20-Poly1305, a fresh random 192-bit nonce per
//! message, the caller's context bound in as associated data) before it is stored. The data keys live in their own
//! small SQLite file, each encrypted (wrapped) under the master key, which the hub gets from its configuration or
//! environment and never stores beside them. Erasing an owner deletes the owner's wrapped key with SQLite's
//! `secure_delete` (freed bytes are overwritten with zeros) and truncates the write-ahead log, after which every
//! copy of the owner's data, in the live database, its free pages or an old backup, is ciphertext nobody can
//! open: crypto-shredding.
//!
//! The vault file must be kept out of the data's backups (or its backups kept only briefly): a backup of the
//! vault, together with the master key, would still open an erased owner's data.

use std::{
    collections::HashMap,
    fmt, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use chacha20poly1305::{
    Key, KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

/// The first byte of everything [`Vault::seal`] produces: the format, so that a later one can be told apart.
pub const SEALED_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// What the master key must open, stored once, so a wrong master key is refused at start rather than taken for
/// erased data later.
const CHECK: &[u8] = b"hub-vault master key check";

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The vault file could not be read or written.
    #[error("vault storage: {0}")]
    Storage(#[from] rusqlite::Error),
    /// The master key file could not be read or created.
    #[error("master key: {0}")]
    MasterKeyFile(#[from] io::Error),
    /// The master key is malformed, or is not the one this vault was made with.
    #[error("master key: {0}")]
    MasterKey(String),
    /// Sealed data that is malformed, altered, or sealed for another context.
    #[error("sealed data does not open: {0}")]
    Corrupt(&'static str),
}

/// The 256-bit key that wraps every data key.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// From 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<MasterKey, VaultError> {
        let bytes = hex::decode(text.trim()).map_err(|_| VaultError::MasterKey("expected 64 hex digits".into()))?;
        let key = <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| VaultError::MasterKey(format!("expected 32 bytes (64 hex digits), got {}", bytes.len())))?;
        Ok(MasterKey(Zeroizing::new(key)))
    }

    /// Reads the key from `path` (64 hex digits), or creates the file (mode 0600) with a new random key.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, VaultError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                MasterKey::from_hex(&text).map_err(|e| VaultError::MasterKey(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = MasterKey(Zeroizing::new(rand::random()));
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path)?;
                io::Write::write_all(&mut file, format!("{}\n", hex::encode(*key.0)).as_bytes())?;
                file.sync_all()?;
                Ok(key)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&*self.0))
    }
}

/// The owners' data keys.
pub struct Vault {
    path: PathBuf,
    db: Mutex<Connection>,
    master: XChaCha20Poly1305,
    /// Unwrapped keys, by owner.
    keys: Mutex<HashMap<String, Arc<XChaCha20Poly1305>>>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Vault {
    /// Opens (or creates) the vault file at `path`. A vault made with another master key is refused.
    pub fn open(path: &Path, master: &MasterKey) -> Result<Vault, VaultError> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "secure_delete", "ON")?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS vault_check (id INTEGER PRIMARY KEY CHECK (id = 1), sealed BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS data_keys (owner TEXT PRIMARY KEY, wrapped BLOB NOT NULL);",
        )?;
        let master = master.cipher();
        let check: Option<Vec<u8>> =
            db.query_row("SELECT sealed FROM vault_check WHERE id = 1", [], |row| row.get(0)).optional()?;
        match check {
            Some(sealed) => {
                if open_with(&master, &sealed, b"check").ok().as_deref() != Some(CHECK) {
                    return Err(VaultError::MasterKey(format!(
                        "it does not open the vault {}: this is not the master key the vault was made with",
                        path.display()
                    )));
                }
            }
            None => {
                db.execute(
                    "INSERT INTO vault_check (id, sealed) VALUES (1, ?1)",
                    params![seal_with(&master, CHECK, b"check")],
                )?;
            }
        }
        Ok(Vault { path: path.to_owned(), db: Mutex::new(db), master, keys: Mutex::new(HashMap::new()) })
    }

    /// Seals `plaintext` with `owner`'s data key (made, wrapped and stored durably on first use), binding
    /// `context` (where the data belongs, e.g. its resource path) so that it opens only there.
    pub fn seal(&self, owner: &str, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, VaultError> {
        let key = self.key(owner, true)?.expect("a key is made when missing");
        Ok(seal_with(&key, plaintext, context))
    }

    /// Opens what [`seal`](Self::seal) sealed for `owner` and `context`. `Ok(None)`: the owner's key is erased
    /// (or never existed), so the data is gone.
    pub fn open_sealed(&self, owner: &str, sealed: &[u8], context: &[u8]) -> Result<Option<Vec<u8>>, VaultError> {
        match self.key(owner, false)? {
            Some(key) => open_with(&key, sealed, context).map(Some),
            None => Ok(None),
        }
    }

    /// Whether `owner` has a data key.
    pub fn has_key(&self, owner: &str) -> Result<bool, VaultError> {
        Ok(self.key(owner, false)?.is_some())
    }

    /// Erases `owner`'s data key for good: deleted with its bytes overwritten, the write-ahead log checkpointed
    /// and truncated. Returns whether there was one. Everything sealed with it can never be opened again.
    ///
    /// Fails (and may be called again) when another connection to the vault file holds a read transaction, which
    /// keeps the old pages in the log: the key is then deleted but its bytes may remain until the next erasure.
    pub fn erase(&self, owner: &str) -> Result<bool, VaultError> {
        // The database lock is held throughout, and `key` takes it before looking at the cache: no seal can pick
        // up the key while it is being erased.
        let db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).remove(owner);
        let erased = db.execute("DELETE FROM data_keys WHERE owner = ?1", params![owner])? > 0;
        let (busy, log, checkpointed): (i64, i64, i64) =
            db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        if busy != 0 || log != checkpointed {
            return Err(VaultError::Storage(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                Some(format!(
                    "the data key of {owner} is deleted, but another reader of {} holds the log: erase again once it \
                     is gone",
                    self.path.display()
                )),
            )));
        }
        Ok(erased)
    }

    /// Every owner with a data key, in name order.
    pub fn owners(&self) -> Result<Vec<String>, VaultError> {
        let db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        let mut statement = db.prepare("SELECT owner FROM data_keys ORDER BY owner")?;
        let owners = statement.query_map([], |row| row.get(0))?.collect::<Result<Vec<String>, _>>()?;
        Ok(owners)
    }

    /// The vault file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn key(&self, owner: &str, create: bool) -> Result<Option<Arc<XChaCha20Poly1305>>, VaultError> {
        let db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = self.keys.lock().unwrap_or_else(PoisonError::into_inner).get(owner) {
            return Ok(Some(key.clone()));
        }
        let wrapped: Option<Vec<u8>> = db
            .query_row("SELECT wrapped FROM data_keys WHERE owner = ?1", params![owner], |row| row.get(0))
            .optional()?;
        let raw = match wrapped {
            Some(wrapped) => Zeroizing::new(open_with(&self.master, &wrapped, owner.as_bytes())?),
            None if create => {
                let raw = Zeroizing::new(rand::random::<[u8; 32]>().to_vec());
                let wrapped = seal_with(&self.master, &raw, owner.as_bytes());
                db.execute("INSERT INTO data_keys (owner, wrapped) VALUES (?1, ?2)", params![owner, wrapped])?;
                raw
            }
            None => return Ok(None),
        };
        if raw.len() != 32 {
            return Err(VaultError::Corrupt("a wrapped data key is not 32 bytes"));
        }
        let key = Arc::new(XChaCha20Poly1305::new(Key::from_slice(&raw)));
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).insert(owner.to_owned(), key.clone());
        Ok(Some(key))
    }
}

/// `1 || nonce || ciphertext and tag`.
fn seal_with(cipher: &XChaCha20Poly1305, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: context })
        .expect("XChaCha20-Poly1305 seals any message that fits in memory");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    out.push(SEALED_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

fn open_with(cipher: &XChaCha20Poly1305, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, VaultError> {
    if sealed.len() < 1 + NONCE_LEN + TAG_LEN {
        return Err(VaultError::Corrupt("too short"));
    }
    if sealed[0] != SEALED_V1 {
        return Err(VaultError::Corrupt("unknown format"));
    }
    let (nonce, body) = sealed[1..].split_at(NONCE_LEN);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: context })
        .map_err(|_| VaultError::Corrupt("altered, or sealed with another key or for another place"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_contain(dir: &Path, needle: &[u8]) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read(e.path()).unwrap().windows(needle.len()).any(|w| w == needle))
            .map(|e| e.path().display().to_string())
            .collect()
    }

    #[test]
    fn sealed_data_opens_only_with_its_owner_key_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::load_or_create(&dir.path().join("master.key")).unwrap();
        let vault = Vault::open(&dir.path().join("vault.db"), &master).unwrap();
        let sealed = vault.seal("erin", b"pulse 71", b"care-1/heart/rate").unwrap();
        assert_eq!(sealed[0], SEALED_V1);
        assert!(!sealed.windows(8).any(|w| w == b"pulse 71"));
        assert_eq!(vault.open_sealed("erin", &sealed, b"care-1/heart/rate").unwrap().unwrap(), b"pulse 71");
        // Two seals of the same text differ (fresh nonces).
        assert_ne!(vault.seal("erin", b"pulse 71", b"care-1/heart/rate").unwrap(), sealed);
        // Another place, another owner, an altered byte: refused, never garbage.
        assert!(vault.open_sealed("erin", &sealed, b"care-2/heart/rate").is_err());
        vault.seal("frank", b"x", b"y").unwrap();
        assert!(vault.open_sealed("frank", &sealed, b"care-1/heart/rate").is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(vault.open_sealed("erin", &altered, b"care-1/heart/rate").is_err());
        assert!(vault.open_sealed("erin", &sealed[..10], b"care-1/heart/rate").is_err());
        assert_eq!(vault.open_sealed("gina", &sealed, b"care-1/heart/rate").unwrap(), None, "no key: no data");
        assert_eq!(vault.owners().unwrap(), ["erin", "frank"]);
    }

    #[test]
    fn keys_survive_a_reopen_and_a_wrong_master_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("master.key");
        let master = MasterKey::load_or_create(&key_file).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let path = dir.path().join("vault.db");
        let sealed = Vault::open(&path, &master).unwrap().seal("erin", b"bed: sitting", b"ctx").unwrap();
        let again = MasterKey::load_or_create(&key_file).unwrap();
        let vault = Vault::open(&path, &again).unwrap();
        assert_eq!(vault.open_sealed("erin", &sealed, b"ctx").unwrap().unwrap(), b"bed: sitting");
        let wrong = MasterKey::from_hex(&"11".repeat(32)).unwrap();
        let e = Vault::open(&path, &wrong).unwrap_err();
        assert!(e.to_string().contains("not the master key"), "{e}");
        assert!(MasterKey::from_hex("abc").is_err());
        assert!(MasterKey::from_hex(&"ab".repeat(31)).unwrap_err().to_string().contains("got 31"));
    }

    #[test]
    fn erasure_leaves_no_trace_of_the_key_and_the_data_never_opens_again() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::load_or_create(&dir.path().join("master.key")).unwrap();
        let path = dir.path().join("vault.db");
        let vault = Vault::open(&path, &master).unwrap();
        let sealed = vault.seal("erin", b"heart 71", b"ctx").unwrap();
        vault.seal("frank", b"heart 64", b"ctx").unwrap();
        let wrapped: Vec<u8> = vault
            .db
            .lock()
            .unwrap()
            .query_row("SELECT wrapped FROM data_keys WHERE owner = 'erin'", [], |row| row.get(0))
            .unwrap();
        assert!(!files_contain(dir.path(), &wrapped).is_empty(), "the search sees the stored key");
        assert!(vault.erase("erin").unwrap());
        assert!(!vault.erase("erin").unwrap(), "erased once");
        assert_eq!(vault.open_sealed("erin", &sealed, b"ctx").unwrap(), None);
        assert_eq!(files_contain(dir.path(), &wrapped), Vec::<String>::new(), "the wrapped key's bytes are gone");
        drop(vault);
        let vault = Vault::open(&path, &master).unwrap();
        assert_eq!(vault.open_sealed("erin", &sealed, b"ctx").unwrap(), None, "not back after a reopen");
        assert!(!vault.has_key("erin").unwrap());
        assert!(vault.has_key("frank").unwrap());
        // A new key for the same name opens nothing of the old data.
        vault.seal("erin", b"new", b"ctx").unwrap();
        assert!(vault.open_sealed("erin", &sealed, b"ctx").is_err());
    }
}
