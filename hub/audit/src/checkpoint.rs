//! Signed checkpoints and the signing key.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, Verifier};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use hub_model::Timestamp;
use serde::{Deserialize, Serialize};

use crate::AuditError;

/// What a checkpoint document says it is.
const FORMAT: &str = "hub-audit-checkpoint/1";

/// A signed statement "the log's entry `seq` has hash `hash`": everything up to `seq` is fixed by it. Small,
/// self-describing JSON, meant to be kept outside the hub (printed, mailed, put in another city's archive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// `hub-audit-checkpoint/1`.
    pub format: String,
    /// The entry the checkpoint covers up to.
    pub seq: u64,
    /// That entry's hash (hex).
    pub hash: String,
    /// When the checkpoint was signed (µs since the epoch).
    pub signed_at: i64,
    /// The signer's Ed25519 public key (hex).
    pub key: String,
    /// Ed25519 signature of [`Checkpoint::message`] (hex).
    pub signature: String,
}

impl Checkpoint {
    /// Signs a checkpoint for entry `seq` with hash `hash`.
    pub fn sign(key: &SigningKey, seq: u64, hash: &str, signed_at: Timestamp) -> Checkpoint {
        let mut checkpoint = Checkpoint {
            format: FORMAT.to_owned(),
            seq,
            hash: hash.to_owned(),
            signed_at: signed_at.as_micros(),
            key: public_key_hex(&key.verifying_key()),
            signature: String::new(),
        };
        checkpoint.signature = hex::encode(key.sign(checkpoint.message().as_bytes()).to_bytes());
        checkpoint
    }

    /// The signed text: the format, the entry, its hash and the signing time, one per line.
    pub fn message(&self) -> String {
        format!("{}\n{}\n{}\n{}", self.format, self.seq, self.hash, self.signed_at)
    }

    /// Checks the signature against `key` (the key the verifier trusts, not the one the document names).
    pub fn check(&self, key: &VerifyingKey) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("unknown checkpoint format {:?} (expected {FORMAT})", self.format));
        }
        let bytes: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the signature is not 64 bytes of hex")?;
        key.verify(self.message().as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| "the signature does not verify with the trusted public key".to_owned())
    }

    /// Parses a checkpoint document.
    pub fn from_json(text: &str) -> Result<Checkpoint, AuditError> {
        serde_json::from_str(text).map_err(|e| AuditError::Checkpoint(e.to_string()))
    }
}

/// A public key as the hub prints it: 64 hex digits.
pub fn public_key_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

/// Parses a public key printed by [`public_key_hex`].
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, AuditError> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| AuditError::Key("a public key is 64 hex digits (32 bytes)".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| AuditError::Key(format!("not an Ed25519 public key: {e}")))
}

/// Reads the signing key at `path` (64 hex digits, the Ed25519 seed), creating it (readable by the owner only)
/// when the file does not exist.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, AuditError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let seed: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| AuditError::Key(format!("{} does not hold 64 hex digits", path.display())))?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
            write_private(path, &format!("{}\n", hex::encode(key.to_bytes())))
                .map_err(|e| AuditError::Key(format!("cannot create {}: {e}", path.display())))?;
            tracing::info!(path = %path.display(), public_key = %public_key_hex(&key.verifying_key()), "created the audit signing key");
            Ok(key)
        }
        Err(e) => Err(AuditError::Key(format!("cannot read {}: {e}", path.display()))),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_only_unchanged_and_with_the_trusted_key() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let checkpoint = Checkpoint::sign(&key, 42, &"ab".repeat(32), Timestamp::from_micros(5));
        checkpoint.check(&key.verifying_key()).unwrap();
        let round = Checkpoint::from_json(&serde_json::to_string(&checkpoint).unwrap()).unwrap();
        assert_eq!(round, checkpoint);
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(checkpoint.check(&other).is_err(), "another key");
        for forged in [
            Checkpoint { seq: 41, ..checkpoint.clone() },
            Checkpoint { hash: "cd".repeat(32), ..checkpoint.clone() },
            Checkpoint { signed_at: 6, ..checkpoint.clone() },
            Checkpoint { signature: "00".repeat(64), ..checkpoint.clone() },
            Checkpoint { signature: "zz".into(), ..checkpoint.clone() },
        ] {
            assert!(forged.check(&key.verifying_key()).is_err(), "{forged:?}");
        }
        assert!(Checkpoint::from_json(r#"{"format":"x"}"#).is_err());
    }

    #[test]
    fn the_key_file_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-signing.key");
        let created = load_or_create_key(&path).unwrap();
        let read = load_or_create_key(&path).unwrap();
        assert_eq!(created.to_bytes(), read.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let public = public_key_hex(&created.verifying_key());
        assert_eq!(parse_public_key(&public).unwrap(), created.verifying_key());
        assert!(parse_public_key("abc").is_err());
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(load_or_create_key(&path), Err(AuditError::Key(_))));
    }
}
