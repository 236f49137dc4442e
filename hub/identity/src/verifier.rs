//! Verifying bearer JWTs against the trusted issuers' published keys.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use base64::Engine;
use hub_policy::{Principal, validate_name};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{Jwk, JwkSet},
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::{IssuerConfig, OidcConfig, OidcError, now_micros};

/// The signature algorithms accepted: asymmetric only. `none` and the HMAC family are refused before anything
/// else, so a public key can never be used as an HMAC secret.
const ACCEPTED: [&str; 9] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

/// The largest discovery document or key set read.
const MAX_DOCUMENT: usize = 1 << 20;

/// How many verified tokens are remembered (by SHA-256) before the memory starts over.
const MAX_REMEMBERED: usize = 10_000;

struct KeyCache {
    keys: JwkSet,
    fetched: Instant,
    /// Bumped when a fetch brings a different set: tokens remembered under an older set are checked again.
    generation: u64,
}

#[derive(Default)]
struct Attempt {
    at: Option<Instant>,
    error: Option<String>,
}

struct Issuer {
    config: IssuerConfig,
    cache: RwLock<Option<Arc<KeyCache>>>,
    /// One fetch at a time per issuer.
    fetching: tokio::sync::Mutex<()>,
    last_attempt: Mutex<Attempt>,
}

impl Issuer {
    /// The generation of the key set in the cache, if one was fetched.
    fn generation(&self) -> Option<u64> {
        self.cache.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|cache| cache.generation)
    }
}

/// A token verified before: what it authenticates, until when, under which issuer's key set.
struct Remembered {
    principal: Principal,
    expires_micros: i64,
    issuer: usize,
    generation: u64,
}

/// Verifies bearer JWTs from the configured issuers and turns them into principals.
///
/// A token verified once is remembered by its SHA-256 until it expires or its issuer's key set is fetched again,
/// so a client that sends the same token with every request pays for the signature once.
pub struct OidcVerifier {
    issuers: Vec<Issuer>,
    http: reqwest::Client,
    remembered: Mutex<HashMap<[u8; 32], Remembered>>,
}

impl OidcVerifier {
    /// A verifier for these issuers. Nothing is fetched until the first token arrives, so an issuer that is down
    /// does not stop the hub. HTTPS trusts the system's root certificates.
    pub fn new(config: &OidcConfig) -> Result<OidcVerifier, String> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let issuers = config
            .issuers
            .iter()
            .map(|config| Issuer {
                config: config.clone(),
                cache: RwLock::new(None),
                fetching: tokio::sync::Mutex::new(()),
                last_attempt: Mutex::new(Attempt::default()),
            })
            .collect();
        Ok(OidcVerifier { issuers, http, remembered: Mutex::new(HashMap::new()) })
    }

    /// Verifies a bearer JWT and returns the principal it authenticates and when the token expires (µs since
    /// the epoch, from `exp`).
    pub async fn verify(&self, token: &str) -> Result<(Principal, i64), OidcError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now_micros = now_micros();
        if let Some(known) = self.remembered.lock().unwrap_or_else(|e| e.into_inner()).get(&digest)
            && now_micros < known.expires_micros
            && self.issuers[known.issuer].generation() == Some(known.generation)
        {
            return Ok((known.principal.clone(), known.expires_micros));
        }
        let (index, generation, principal, expires_micros) = self.verify_signed(token).await?;
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if remembered.len() >= MAX_REMEMBERED {
            remembered.clear();
        }
        let entry = Remembered { principal: principal.clone(), expires_micros, issuer: index, generation };
        remembered.insert(digest, entry);
        Ok((principal, expires_micros))
    }

    /// The full check of a token: its issuer's index and key set generation, its principal and expiry.
    async fn verify_signed(&self, token: &str) -> Result<(usize, u64, Principal, i64), OidcError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OidcError::Malformed);
        };
        let header = decode_json(header)?;
        let alg = header.get("alg").and_then(Value::as_str).ok_or(OidcError::Malformed)?;
        if !ACCEPTED.contains(&alg) {
            return Err(OidcError::Algorithm(alg.chars().take(16).collect()));
        }
        let alg: Algorithm = alg.parse().map_err(|_| OidcError::Malformed)?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(OidcError::Malformed),
        };
        let claims = decode_json(payload)?;
        let iss = claims.get("iss").and_then(Value::as_str).ok_or(OidcError::Invalid("it has no issuer".into()))?;
        let index = self
            .issuers
            .iter()
            .position(|issuer| issuer.config.issuer == iss)
            .ok_or_else(|| OidcError::UntrustedIssuer(iss.chars().take(200).collect()))?;
        let issuer = &self.issuers[index];
        let (jwk, generation) = self.key_for(issuer, kid, alg).await?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| OidcError::Invalid(format!("the issuer's key is unusable: {e}")))?;

        let config = &issuer.config;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)
            .map_err(|e| OidcError::Invalid(describe(e.kind(), config)))?;
        let exp = data
            .claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(OidcError::Invalid("its \"exp\" claim is malformed".into()))?;
        // Accepted up to `leeway_secs` after `exp`: that is when it stops being good.
        let until = exp.saturating_add(config.leeway_secs.min(i64::MAX as u64) as i64).saturating_mul(1_000_000);
        Ok((index, generation, principal(&data.claims, config)?, until))
    }

    /// The issuer's key for a token: from the cache, else after fetching the set again.
    async fn key_for(&self, issuer: &Issuer, kid: Option<&str>, alg: Algorithm) -> Result<(Jwk, u64), OidcError> {
        let cached = issuer.cache.read().unwrap_or_else(|e| e.into_inner()).clone();
        let refresh = Duration::from_secs(issuer.config.jwks_refresh_secs);
        let cache = match cached {
            Some(cache) if cache.fetched.elapsed() < refresh => cache,
            _ => self.refresh(issuer).await?,
        };
        if let Some(jwk) = pick(&cache.keys, kid, alg) {
            return Ok((jwk, cache.generation));
        }
        // A key id the cache does not know: the issuer may have rotated its keys.
        let cache = self.refresh(issuer).await?;
        pick(&cache.keys, kid, alg)
            .map(|jwk| (jwk, cache.generation))
            .ok_or_else(|| OidcError::UnknownKey(kid.unwrap_or("(none)").chars().take(100).collect()))
    }

    /// Fetches the issuer's key set again, unless that was tried less than `min_refresh_secs` ago (then the
    /// cache, or the last failure, stands).
    async fn refresh(&self, issuer: &Issuer) -> Result<Arc<KeyCache>, OidcError> {
        let asked = Instant::now();
        let _one_at_a_time = issuer.fetching.lock().await;
        let current = issuer.cache.read().unwrap_or_else(|e| e.into_inner()).clone();
        let unavailable = |reason: String| OidcError::KeysUnavailable { issuer: issuer.config.issuer.clone(), reason };
        {
            let attempt = issuer.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            // Fetched by another request while this one waited.
            if let (Some(at), Some(cache)) = (attempt.at, &current)
                && at >= asked
                && attempt.error.is_none()
            {
                return Ok(cache.clone());
            }
            let min = Duration::from_secs(issuer.config.min_refresh_secs);
            if let Some(at) = attempt.at
                && at.elapsed() < min
            {
                return match (&current, &attempt.error) {
                    (Some(cache), _) => Ok(cache.clone()),
                    (None, error) => Err(unavailable(error.clone().unwrap_or_else(|| "not fetched yet".into()))),
                };
            }
        }
        let result = self.fetch(&issuer.config).await;
        let mut attempt = issuer.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
        attempt.at = Some(Instant::now());
        match result {
            Ok(keys) => {
                attempt.error = None;
                let generation = match &current {
                    Some(old) if old.keys.keys == keys.keys => old.generation,
                    Some(old) => old.generation + 1,
                    None => 1,
                };
                let cache = Arc::new(KeyCache { keys, fetched: Instant::now(), generation });
                *issuer.cache.write().unwrap_or_else(|e| e.into_inner()) = Some(cache.clone());
                Ok(cache)
            }
            Err(reason) => {
                tracing::warn!(issuer = %issuer.config.issuer, %reason, "fetching the issuer's keys failed");
                attempt.error = Some(reason.clone());
                // The keys known so far stay usable while the issuer is unreachable.
                current.ok_or_else(|| unavailable(reason))
            }
        }
    }

    /// Discovery, then the key set it names.
    async fn fetch(&self, config: &IssuerConfig) -> Result<JwkSet, String> {
        let timeout = Duration::from_secs(config.timeout_secs);
        let discovery_url = format!("{}/.well-known/openid-configuration", config.issuer.trim_end_matches('/'));
        let discovery = self.get_json(&discovery_url, timeout).await?;
        if discovery.get("issuer").and_then(Value::as_str) != Some(config.issuer.as_str()) {
            return Err(format!("{discovery_url} names another issuer"));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{discovery_url} has no jwks_uri"))?;
        let issuer_url = url::Url::parse(&config.issuer).map_err(|e| e.to_string())?;
        let jwks_url = url::Url::parse(jwks_uri).map_err(|e| format!("jwks_uri {jwks_uri:?}: {e}"))?;
        if jwks_url.scheme() != "https"
            && !(jwks_url.scheme() == issuer_url.scheme() && jwks_url.host() == issuer_url.host())
        {
            return Err(format!("jwks_uri {jwks_uri:?} is not https"));
        }
        let set = self.get_json(jwks_uri, timeout).await?;
        let keys: Vec<Jwk> = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{jwks_uri} is not a key set"))?
            .iter()
            // A key of a kind this hub cannot use is skipped; the others stay usable.
            .filter_map(|key| serde_json::from_value::<Jwk>(key.clone()).ok())
            .filter(usable)
            .collect();
        tracing::info!(issuer = %config.issuer, keys = keys.len(), "fetched the issuer's keys");
        Ok(JwkSet { keys })
    }

    async fn get_json(&self, url: &str, timeout: Duration) -> Result<Value, String> {
        let response = self.http.get(url).timeout(timeout).send().await.map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        if response.content_length().is_some_and(|n| n > MAX_DOCUMENT as u64) {
            return Err(format!("{url}: larger than {MAX_DOCUMENT} bytes"));
        }
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(format!("{url}: larger than {MAX_DOCUMENT} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
    }
}

/// Whether a published key is one this hub verifies with, and well-formed: RSA, or an EC or OKP key whose
/// coordinates have their curve's length (a short one would make the signature check fail badly). Symmetric keys
/// are never used.
fn usable(jwk: &Jwk) -> bool {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    let length = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).map_or(0, |b| b.len());
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => true,
        AlgorithmParameters::EllipticCurve(ec) => {
            let size = match ec.curve {
                EllipticCurve::P256 => 32,
                EllipticCurve::P384 => 48,
                _ => return false,
            };
            length(&ec.x) == size && length(&ec.y) == size
        }
        AlgorithmParameters::OctetKeyPair(okp) => okp.curve == EllipticCurve::Ed25519 && length(&okp.x) == 32,
        AlgorithmParameters::OctetKey(_) => false,
    }
}

/// The key a token names (`kid`), or with no `kid` the only key that fits its algorithm.
fn pick(set: &JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<Jwk> {
    let fits = |jwk: &&Jwk| {
        let declared = jwk.common.key_algorithm.map(|a| a.to_string());
        declared.is_none_or(|declared| declared == format!("{alg:?}"))
    };
    match kid {
        Some(kid) => set.keys.iter().filter(fits).find(|jwk| jwk.common.key_id.as_deref() == Some(kid)).cloned(),
        None => {
            let mut fitting = set.keys.iter().filter(fits);
            match (fitting.next(), fitting.next()) {
                (Some(only), None) => Some(only.clone()),
                _ => None,
            }
        }
    }
}

fn decode_json(part: &str) -> Result<serde_json::Map<String, Value>, OidcError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).map_err(|_| OidcError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| OidcError::Malformed)
}

fn describe(kind: &ErrorKind, config: &IssuerConfig) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "it has expired".to_owned(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidAudience => format!("its audience does not include {:?}", config.audience),
        ErrorKind::InvalidIssuer => "its issuer does not match".to_owned(),
        ErrorKind::InvalidSignature => "its signature does not verify".to_owned(),
        ErrorKind::InvalidAlgorithm => "its algorithm does not fit the issuer's key".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("it has no {claim:?} claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("its {claim:?} claim is malformed"),
        other => format!("{other:?}"),
    }
}

/// The principal of verified claims: `{sub}@{domain}` and `{role}@{domain}` for each role the claim lists.
pub(crate) fn principal(
    claims: &serde_json::Map<String, Value>,
    config: &IssuerConfig,
) -> Result<Principal, OidcError> {
    let sub = claims.get("sub").and_then(Value::as_str).ok_or(OidcError::Invalid("it has no \"sub\" claim".into()))?;
    // The domain is the hub's to add: an issuer cannot name a subject or role of another domain.
    if sub.contains('@') {
        return Err(OidcError::Subject(format!("{sub:?} contains '@'")));
    }
    let subject = format!("{sub}@{}", config.domain);
    validate_name("subject", &subject).map_err(|e| OidcError::Subject(e.to_string()))?;
    let listed: Vec<&str> = match claims.get(&config.roles_claim) {
        Some(Value::Array(roles)) => roles.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(roles)) => roles.split_whitespace().collect(),
        _ => Vec::new(),
    };
    let mut roles = Vec::new();
    for role in listed.into_iter().filter(|role| !role.contains('@')) {
        let role = format!("{role}@{}", config.domain);
        // A role the policy cannot name could never be granted anything: it is left out.
        if validate_name("role", &role).is_ok() && !roles.contains(&role) {
            roles.push(role);
        }
    }
    Ok(Principal::new(subject, roles))
}
