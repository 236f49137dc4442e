//! API tokens: minting, hashing and authenticating bearer secrets.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::{TryRngCore, rngs::OsRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{AuthError, PolicyError, Principal, error::truncate_for_message, principal::validate_name};

/// Every secret minted by [`TokenRegistry::generate`] starts with this, so leaked tokens are easy to grep for.
pub const TOKEN_PREFIX: &str = "hub_";

/// The most roles one token may carry.
const MAX_ROLES: usize = 32;
/// The longest description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Secrets longer than this are rejected without hashing.
const MAX_SECRET_LEN: usize = 512;

/// What the hub knows about one token. The secret itself is never kept, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// SHA-256 of the secret, 64 lowercase hex digits (see [`TokenRegistry::hash`]).
    pub hash: String,
    /// The subject the token authenticates.
    pub subject: String,
    /// The roles the token carries.
    pub roles: Vec<String>,
    /// A note from whoever created it.
    pub description: Option<String>,
    /// Creation time, microseconds since the Unix epoch.
    pub created_micros: i64,
    /// Expiry time, microseconds since the Unix epoch; the token is refused from this instant on.
    pub expires_micros: Option<i64>,
}

/// Subjects the hub's own actors use (`plugin:<id>`, `rule:<id>`); no token may carry them, so a policy line for a
/// plugin or a rule can never be borrowed by a person or a device.
pub const RESERVED_SUBJECT_PREFIXES: [&str; 2] = ["plugin:", "rule:"];

fn reserved(field: &'static str, value: &str) -> Result<(), PolicyError> {
    if RESERVED_SUBJECT_PREFIXES.iter().any(|p| value.starts_with(p)) {
        return Err(PolicyError::InvalidName {
            field,
            value: truncate_for_message(value),
            reason: "`plugin:` and `rule:` name the hub's plugins and rules; tokens may not use them",
        });
    }
    Ok(())
}

impl TokenInfo {
    /// Checks the record: a 64-digit lowercase hex hash, a valid subject, at most 32 valid roles, and a
    /// description of at most 1024 characters.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.hash.len() != 64 || !self.hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(PolicyError::InvalidName {
                field: "hash",
                value: truncate_for_message(&self.hash),
                reason: "must be a SHA-256 digest as 64 lowercase hex digits",
            });
        }
        validate_name("subject", &self.subject)?;
        reserved("subject", &self.subject)?;
        if self.roles.len() > MAX_ROLES {
            return Err(PolicyError::InvalidName {
                field: "roles",
                value: format!("{} roles", self.roles.len()),
                reason: "a token carries at most 32 roles",
            });
        }
        for role in &self.roles {
            validate_name("role", role)?;
            reserved("role", role)?;
        }
        if let Some(description) = &self.description
            && description.chars().count() > MAX_DESCRIPTION_CHARS
        {
            return Err(PolicyError::InvalidName {
                field: "description",
                value: truncate_for_message(description),
                reason: "must be at most 1024 characters long",
            });
        }
        Ok(())
    }

    /// Whether the token has expired at `now_micros`.
    pub fn is_expired(&self, now_micros: i64) -> bool {
        self.expires_micros.is_some_and(|expires| now_micros >= expires)
    }

    /// The principal this token authenticates.
    pub fn principal(&self) -> Principal {
        Principal::new(self.subject.clone(), self.roles.clone())
    }
}

/// The known tokens, by hash.
///
/// Reads ([`authenticate`](Self::authenticate), [`list`](Self::list)) load an immutable map without locking;
/// writes copy the map and swap it in, which suits a set that changes rarely and is read on every request.
#[derive(Debug, Default)]
pub struct TokenRegistry {
    tokens: ArcSwap<HashMap<String, TokenInfo>>,
}

impl TokenRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mints a new secret and returns `(secret, hash)`.
    ///
    /// The secret is `hub_` followed by 43 base64url characters encoding 32 bytes from the operating system's
    /// random number generator. Show the secret to its owner once; keep only the hash.
    pub fn generate() -> Result<(String, String), PolicyError> {
        let mut bytes = [0u8; 32];
        OsRng.try_fill_bytes(&mut bytes).map_err(|e| PolicyError::Random(e.to_string()))?;
        let secret = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        let hash = Self::hash(&secret);
        Ok((secret, hash))
    }

    /// The SHA-256 of a secret, as 64 lowercase hex digits.
    pub fn hash(secret: &str) -> String {
        hex::encode(Sha256::digest(secret.as_bytes()))
    }

    /// Adds a token, or replaces the one with the same hash.
    pub fn insert(&self, info: TokenInfo) -> Result<(), PolicyError> {
        info.validate()?;
        self.tokens.rcu(|tokens| {
            let mut tokens = HashMap::clone(tokens);
            tokens.insert(info.hash.clone(), info.clone());
            tokens
        });
        Ok(())
    }

    /// Revokes a token by hash. Returns whether it was known.
    pub fn remove(&self, hash: &str) -> bool {
        if !self.tokens.load().contains_key(hash) {
            return false;
        }
        let previous = self.tokens.rcu(|tokens| {
            let mut tokens = HashMap::clone(tokens);
            tokens.remove(hash);
            tokens
        });
        previous.contains_key(hash)
    }

    /// Replaces every token at once (e.g. after loading them from the store). All-or-nothing: if any record is
    /// invalid, the registry is left as it was and the first error is returned.
    pub fn replace_all(&self, tokens: Vec<TokenInfo>) -> Result<(), PolicyError> {
        let mut map = HashMap::with_capacity(tokens.len());
        for info in tokens {
            info.validate()?;
            map.insert(info.hash.clone(), info);
        }
        self.tokens.store(Arc::new(map));
        Ok(())
    }

    /// Turns a presented secret into the principal it authenticates.
    ///
    /// The secret is hashed and the hash looked up, so the time taken depends on the hash, not on how much of
    /// the secret matches a real one.
    pub fn authenticate(&self, secret: &str, now_micros: i64) -> Result<Principal, AuthError> {
        self.authenticate_until(secret, now_micros).map(|(principal, _)| principal)
    }

    /// [`authenticate`](Self::authenticate), with the time (µs since the epoch) the token expires, if it does.
    pub fn authenticate_until(&self, secret: &str, now_micros: i64) -> Result<(Principal, Option<i64>), AuthError> {
        if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
            return Err(AuthError::UnknownToken);
        }
        let hash = Self::hash(secret);
        let tokens = self.tokens.load();
        let info = tokens.get(&hash).ok_or(AuthError::UnknownToken)?;
        if info.is_expired(now_micros) {
            return Err(AuthError::Expired);
        }
        Ok((info.principal(), info.expires_micros))
    }

    /// The token with this hash, if known.
    pub fn get(&self, hash: &str) -> Option<TokenInfo> {
        self.tokens.load().get(hash).cloned()
    }

    /// Every token, oldest first (ties broken by hash, so the order is stable).
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut all: Vec<TokenInfo> = self.tokens.load().values().cloned().collect();
        all.sort_by(|a, b| a.created_micros.cmp(&b.created_micros).then_with(|| a.hash.cmp(&b.hash)));
        all
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.tokens.load().len()
    }

    /// Whether no tokens are known.
    pub fn is_empty(&self) -> bool {
        self.tokens.load().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(hash: &str, subject: &str, roles: &[&str], expires: Option<i64>) -> TokenInfo {
        TokenInfo {
            hash: hash.to_owned(),
            subject: subject.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            description: Some("test".into()),
            created_micros: 1_000,
            expires_micros: expires,
        }
    }

    #[test]
    fn generated_secrets_have_the_documented_shape() {
        let (secret, hash) = TokenRegistry::generate().unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX));
        let body = &secret[TOKEN_PREFIX.len()..];
        assert_eq!(body.len(), 43);
        assert!(body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
        assert_eq!(hash, TokenRegistry::hash(&secret));
        assert_eq!(hash.len(), 64);
        let (other, _) = TokenRegistry::generate().unwrap();
        assert_ne!(secret, other);
    }

    #[test]
    fn tokens_cannot_borrow_plugin_or_rule_subjects() {
        let registry = TokenRegistry::new();
        let (_, hash) = TokenRegistry::generate().unwrap();
        assert!(registry.insert(info(&hash, "plugin:mqtt", &[], None)).is_err());
        assert!(registry.insert(info(&hash, "ops", &["rule:x"], None)).is_err());
        assert!(registry.insert(info(&hash, "ops", &["plugins"], None)).is_ok());
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(TokenRegistry::hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn authenticate_known_unknown_expired_and_removed() {
        let registry = TokenRegistry::new();
        let (secret, hash) = TokenRegistry::generate().unwrap();
        registry.insert(info(&hash, "gateway-7", &["readers", "ops"], Some(5_000))).unwrap();

        let principal = registry.authenticate(&secret, 4_999).unwrap();
        assert_eq!(principal, Principal::new("gateway-7", vec!["readers".into(), "ops".into()]));
        assert_eq!(registry.authenticate(&secret, 5_000), Err(AuthError::Expired));
        assert_eq!(registry.authenticate("hub_nope", 0), Err(AuthError::UnknownToken));
        assert_eq!(registry.authenticate("", 0), Err(AuthError::UnknownToken));
        assert_eq!(registry.authenticate(&"x".repeat(10_000), 0), Err(AuthError::UnknownToken));
        // The hash itself is not a credential.
        assert_eq!(registry.authenticate(&hash, 0), Err(AuthError::UnknownToken));

        assert!(registry.remove(&hash));
        assert!(!registry.remove(&hash));
        assert_eq!(registry.authenticate(&secret, 0), Err(AuthError::UnknownToken));
        assert!(registry.is_empty());
    }

    #[test]
    fn tokens_without_expiry_never_expire() {
        let registry = TokenRegistry::new();
        let (secret, hash) = TokenRegistry::generate().unwrap();
        registry.insert(info(&hash, "admin", &[], None)).unwrap();
        assert_eq!(registry.authenticate(&secret, i64::MAX).unwrap().subject, "admin");
    }

    #[test]
    fn invalid_records_are_refused() {
        let registry = TokenRegistry::new();
        let good = TokenRegistry::hash("s");
        let cases = [
            (info("abc", "alice", &[], None), "hash"),
            (info(&good.to_uppercase(), "alice", &[], None), "hash"),
            (info(&good, "", &[], None), "subject"),
            (info(&good, "al ice", &[], None), "subject"),
            (info(&good, "alice", &["ok", "no/slash"], None), "role"),
            (info(&good, "alice", &["r"; 33], None), "roles"),
            (TokenInfo { description: Some("d".repeat(1025)), ..info(&good, "alice", &[], None) }, "description"),
        ];
        for (record, field) in cases {
            match registry.insert(record.clone()) {
                Err(PolicyError::InvalidName { field: got, .. }) => assert_eq!(got, field, "{record:?}"),
                other => panic!("{record:?}: expected InvalidName for {field}, got {other:?}"),
            }
        }
        assert!(registry.is_empty());
    }

    #[test]
    fn replace_all_is_all_or_nothing_and_list_is_ordered() {
        let registry = TokenRegistry::new();
        let (h1, h2) = (TokenRegistry::hash("one"), TokenRegistry::hash("two"));
        let mut later = info(&h1, "alice", &[], None);
        later.created_micros = 2_000;
        registry.replace_all(vec![later.clone(), info(&h2, "bob", &[], None)]).unwrap();
        let listed: Vec<String> = registry.list().into_iter().map(|t| t.subject).collect();
        assert_eq!(listed, ["bob", "alice"]);
        assert_eq!(registry.get(&h1), Some(later));

        let err = registry.replace_all(vec![info(&h1, "carol", &[], None), info("bad", "dave", &[], None)]);
        assert!(err.is_err());
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.authenticate("one", 0).unwrap().subject, "alice");
    }
}
