//! The verifier against an issuer served over HTTP on loopback (discovery and key set), with tokens signed by
//! keys made by `openssl`: what it accepts, every way it refuses, and keys that rotate.

use std::{
    process::Command,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{Json, Router, extract::State, routing::get};
use base64::Engine;
use hub_identity::{IssuerConfig, OidcConfig, OidcError, OidcVerifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

const AUDIENCE: &str = "https://hub.santander.example";

struct Key {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    public_pem: Vec<u8>,
}

impl Key {
    fn new(kid: &str, alg: Algorithm) -> Key {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("key.pem");
        let public = dir.path().join("pub.pem");
        let args: &[&str] = match alg {
            Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            _ => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        };
        let run = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl (apt-get install openssl)");
            assert!(status.success(), "openssl {args:?}");
        };
        let mut genpkey = vec!["genpkey"];
        genpkey.extend_from_slice(args);
        genpkey.extend_from_slice(&["-out", private.to_str().unwrap()]);
        run(&genpkey);
        run(&["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
        let pem = std::fs::read(&private).unwrap();
        let encoding = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        Key { kid: kid.to_owned(), alg, encoding, public_pem: std::fs::read(&public).unwrap() }
    }

    fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).unwrap()
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

#[derive(Clone)]
struct Published {
    issuer: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<Mutex<u32>>,
}

async fn discovery(State(p): State<Published>) -> Json<Value> {
    Json(json!({"issuer": p.issuer, "jwks_uri": format!("{}/jwks", p.issuer)}))
}

async fn jwks(State(p): State<Published>) -> Json<Value> {
    *p.fetches.lock().unwrap() += 1;
    Json(json!({"keys": p.keys.lock().unwrap().clone()}))
}

/// An issuer on a free loopback port publishing `keys`.
async fn serve(keys: Vec<Value>) -> Published {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let published = Published { issuer, keys: Arc::new(Mutex::new(keys)), fetches: Arc::new(Mutex::new(0)) };
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .with_state(published.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    published
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn claims(issuer: &str) -> Value {
    json!({"iss": issuer, "aud": AUDIENCE, "sub": "alice", "exp": now() + 300, "iat": now(),
           "roles": ["officer", "environment"], "department": "environment"})
}

fn verifier(issuer: &str) -> OidcVerifier {
    let mut entry = IssuerConfig::new(issuer, AUDIENCE, "fujisawa");
    entry.min_refresh_secs = 1;
    entry.leeway_secs = 5;
    OidcVerifier::new(&OidcConfig { issuers: vec![entry], login: None }).unwrap()
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[tokio::test]
async fn a_valid_token_becomes_a_principal_of_its_domain() {
    let (rsa, ec) = (Key::new("rsa-1", Algorithm::RS256), Key::new("ec-1", Algorithm::ES256));
    let idp = serve(vec![rsa.jwk(), ec.jwk()]).await;
    let verifier = verifier(&idp.issuer);
    for key in [&rsa, &ec] {
        let (principal, expires) = verifier.verify(&key.sign(&claims(&idp.issuer))).await.unwrap();
        assert!((expires / 1_000_000 - (now() + 300 + 5)).abs() <= 2, "exp plus the leeway, in µs");
        assert_eq!(principal.subject, "alice@fujisawa");
        assert_eq!(principal.roles, vec!["officer@fujisawa", "environment@fujisawa"]);
    }
    // An audience list that includes the hub is fine; the keys were fetched once.
    let mut listed = claims(&idp.issuer);
    listed["aud"] = json!(["another-api", AUDIENCE]);
    verifier.verify(&rsa.sign(&listed)).await.unwrap();
    assert_eq!(*idp.fetches.lock().unwrap(), 1);
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_reason() {
    let rsa = Key::new("rsa-1", Algorithm::RS256);
    let stranger = Key::new("rsa-x", Algorithm::RS256);
    let idp = serve(vec![rsa.jwk()]).await;
    let verifier = verifier(&idp.issuer);
    let good = claims(&idp.issuer);
    let with = |field: &str, value: Value| {
        let mut claims = good.clone();
        claims[field] = value;
        claims
    };
    let invalid = |result: Result<_, OidcError>, expected: &str| match result {
        Err(OidcError::Invalid(reason)) => assert!(reason.contains(expected), "{reason} (wanted {expected})"),
        other => panic!("wanted Invalid({expected}), got {other:?}"),
    };

    invalid(verifier.verify(&rsa.sign(&with("exp", json!(now() - 60)))).await, "expired");
    invalid(verifier.verify(&rsa.sign(&with("nbf", json!(now() + 600)))).await, "not valid yet");
    invalid(verifier.verify(&rsa.sign(&with("aud", json!("https://other.example")))).await, "audience");
    let mut no_sub = good.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    invalid(verifier.verify(&rsa.sign(&no_sub)).await, "sub");
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    invalid(verifier.verify(&rsa.sign(&no_exp)).await, "exp");

    // Another issuer, even with the right key.
    let wrong_iss = rsa.sign(&with("iss", json!("https://evil.example")));
    assert!(matches!(verifier.verify(&wrong_iss).await, Err(OidcError::UntrustedIssuer(_))));

    // A changed payload under the original signature.
    let token = rsa.sign(&good);
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64(&with("sub", json!("admin"))), parts[2]);
    invalid(verifier.verify(&forged).await, "signature");

    // Signed by a key the issuer does not publish, under a key id it does publish.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let impostor = jsonwebtoken::encode(&header, &good, &stranger.encoding).unwrap();
    invalid(verifier.verify(&impostor).await, "signature");
    // ... or under its own key id.
    assert!(matches!(verifier.verify(&stranger.sign(&good)).await, Err(OidcError::UnknownKey(_))));

    // `alg: none`, with and without a signature.
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "kid": "rsa-1"})), b64(&good));
    assert!(matches!(verifier.verify(&none).await, Err(OidcError::Algorithm(alg)) if alg == "none"));
    // HS256 keyed with the issuer's public key (key confusion).
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(&rsa.public_pem)).unwrap();
    assert!(matches!(verifier.verify(&confused).await, Err(OidcError::Algorithm(alg)) if alg == "HS256"));
    // An ES256 header on an RSA key.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rsa-1".into());
    let ec = Key::new("ec", Algorithm::ES256);
    let mismatched = jsonwebtoken::encode(&header, &good, &ec.encoding).unwrap();
    assert!(verifier.verify(&mismatched).await.is_err());

    for garbage in ["", "a.b", "a.b.c.d", "!!.??.**", &format!("{}.{}.x", b64(&json!([])), b64(&good))] {
        assert!(verifier.verify(garbage).await.is_err(), "{garbage}");
    }
    // A subject the policy cannot name, or one that claims another domain.
    let spaced = rsa.sign(&with("sub", json!("alice smith")));
    assert!(matches!(verifier.verify(&spaced).await, Err(OidcError::Subject(_))));
    let other_domain = rsa.sign(&with("sub", json!("mayor@santander")));
    assert!(matches!(verifier.verify(&other_domain).await, Err(OidcError::Subject(_))));
    // Roles that claim another domain are left out.
    let (principal, _) =
        verifier.verify(&rsa.sign(&with("roles", json!(["officer", "admin@santander"])))).await.unwrap();
    assert_eq!(principal.roles, vec!["officer@fujisawa"]);
    // And a good token still passes afterwards.
    verifier.verify(&rsa.sign(&good)).await.unwrap();
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it() {
    let old = Key::new("2026-11", Algorithm::RS256);
    let idp = serve(vec![old.jwk()]).await;
    let verifier = verifier(&idp.issuer);
    verifier.verify(&old.sign(&claims(&idp.issuer))).await.unwrap();

    // The issuer publishes a new key and signs with it; the hub has never seen its id (and last fetched more
    // than `min_refresh_secs` ago).
    let new = Key::new("2026-12", Algorithm::RS256);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    idp.keys.lock().unwrap().insert(0, new.jwk());
    verifier.verify(&new.sign(&claims(&idp.issuer))).await.unwrap();
    assert_eq!(*idp.fetches.lock().unwrap(), 2);
    // The old key is withdrawn: its tokens fail once the set is fetched again, even one verified before.
    let remembered = old.sign(&json!({"iss": idp.issuer, "aud": AUDIENCE, "sub": "bob", "exp": now() + 60}));
    verifier.verify(&remembered).await.unwrap();
    idp.keys.lock().unwrap().truncate(1);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let stranger = Key::new("2026-10", Algorithm::RS256);
    assert!(verifier.verify(&stranger.sign(&claims(&idp.issuer))).await.is_err());
    assert!(matches!(verifier.verify(&old.sign(&claims(&idp.issuer))).await, Err(OidcError::UnknownKey(_))));
    assert!(matches!(verifier.verify(&remembered).await, Err(OidcError::UnknownKey(_))), "no longer remembered");
}

#[tokio::test]
async fn an_unreachable_issuer_is_reported_and_unknown_keys_do_not_hammer_it() {
    let key = Key::new("k", Algorithm::RS256);
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let issuer = format!("http://127.0.0.1:{port}");
    let verifier = verifier(&issuer);
    let error = verifier.verify(&key.sign(&claims(&issuer))).await.unwrap_err();
    assert!(matches!(error, OidcError::KeysUnavailable { .. }), "{error}");

    // With a floor between fetches, a flood of tokens naming unknown keys costs one fetch.
    let idp = serve(vec![key.jwk()]).await;
    let mut entry = IssuerConfig::new(&idp.issuer, AUDIENCE, "fujisawa");
    entry.min_refresh_secs = 60;
    let verifier = OidcVerifier::new(&OidcConfig { issuers: vec![entry], login: None }).unwrap();
    verifier.verify(&key.sign(&claims(&idp.issuer))).await.unwrap();
    for i in 0..20 {
        let unknown = Key { kid: format!("unknown-{i}"), ..Key::new("x", Algorithm::RS256) };
        assert!(matches!(verifier.verify(&unknown.sign(&claims(&idp.issuer))).await, Err(OidcError::UnknownKey(_))));
    }
    assert_eq!(*idp.fetches.lock().unwrap(), 1);
}

#[tokio::test]
async fn malformed_published_keys_are_ignored() {
    let rsa = Key::new("rsa-1", Algorithm::RS256);
    // An Ed25519 key with a short `x`, an EC key with a short `y`, a symmetric key: none is usable.
    let short_okp = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "AAAA"});
    let mut short_ec = Key::new("ec-1", Algorithm::ES256).jwk();
    short_ec["y"] = json!("AAAA");
    let oct = json!({"kty": "oct", "kid": "hs", "k": "c2VjcmV0"});
    let idp = serve(vec![short_okp, short_ec, oct, rsa.jwk()]).await;
    let verifier = verifier(&idp.issuer);
    verifier.verify(&rsa.sign(&claims(&idp.issuer))).await.unwrap();
    let forged_ed = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "EdDSA", "kid": "ed"})),
        b64(&claims(&idp.issuer)),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0u8; 64])
    );
    assert!(matches!(verifier.verify(&forged_ed).await, Err(OidcError::UnknownKey(_))));
}
