//! JWT validations per second: `OidcVerifier::verify` on RS256 and ES256 access tokens with the issuer's keys
//! cached, on one task and on as many tasks as there are cores; "new" tokens are each seen once (the signature is
//! checked), "repeated" is one token sent again and again (remembered after its first check).
//!
//! `cargo bench -p hub-identity --bench verify` (needs `openssl` for the keys). `VERIFY_SECONDS` sets the time
//! per repeated-token measurement (default 3), `VERIFY_TOKENS` the new tokens per measurement (default 4000).

use std::{
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{Json, Router, routing::get};
use hub_identity::{IssuerConfig, OidcConfig, OidcVerifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

const AUDIENCE: &str = "https://hub.bench.example";

fn signing_key(alg: Algorithm) -> EncodingKey {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    let kind: &[&str] = match alg {
        Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        _ => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    };
    let status = Command::new("openssl")
        .arg("genpkey")
        .args(kind)
        .arg("-out")
        .arg(&path)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed for the keys (apt-get install openssl)");
    assert!(status.success());
    let pem = std::fs::read(&path).unwrap();
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

/// Verifies each token once, spread over `tasks` tasks; validations per second.
async fn measure_new(verifier: Arc<OidcVerifier>, tokens: Arc<Vec<String>>, tasks: usize) -> f64 {
    let begin = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (verifier, tokens) = (verifier.clone(), tokens.clone());
            tokio::spawn(async move {
                for token in tokens.iter().skip(task).step_by(tasks) {
                    verifier.verify(token).await.expect("a valid token");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    tokens.len() as f64 / begin.elapsed().as_secs_f64()
}

/// Verifies one token again and again for `seconds` on `tasks` tasks; validations per second.
async fn measure_repeated(verifier: Arc<OidcVerifier>, token: Arc<String>, tasks: usize, seconds: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let begin = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (verifier, token) = (verifier.clone(), token.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    for _ in 0..256 {
                        verifier.verify(&token).await.expect("a valid token");
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for handle in handles {
        total += handle.await.unwrap();
    }
    total as f64 / begin.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds: f64 = std::env::var("VERIFY_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let count: usize = std::env::var("VERIFY_TOKENS").ok().and_then(|s| s.parse().ok()).unwrap_or(4000);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let keys: Vec<(Algorithm, EncodingKey)> =
        [Algorithm::RS256, Algorithm::ES256].into_iter().map(|alg| (alg, signing_key(alg))).collect();
    let jwks: Vec<Value> = keys
        .iter()
        .map(|(alg, key)| {
            let mut jwk = Jwk::from_encoding_key(key, *alg).unwrap();
            jwk.common.key_id = Some(format!("{alg:?}"));
            serde_json::to_value(jwk).unwrap()
        })
        .collect();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")});
    let set = json!({ "keys": jwks });
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(move || async move { Json(discovery) }))
        .route("/jwks", get(move || async move { Json(set) }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let verifier = Arc::new(
        OidcVerifier::new(&OidcConfig { issuers: vec![IssuerConfig::new(&issuer, AUDIENCE, "bench")], login: None })
            .unwrap(),
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    println!("JWT validations per second (keys cached, {cores} cores)");
    for (alg, key) in &keys {
        let mut header = Header::new(*alg);
        header.kid = Some(format!("{alg:?}"));
        let sign = |jti: usize| {
            let claims = json!({"iss": issuer, "aud": AUDIENCE, "sub": "alice", "exp": now + 3600,
                                "roles": ["officer"], "jti": jti.to_string()});
            jsonwebtoken::encode(&header, &claims, key).unwrap()
        };
        verifier.verify(&sign(0)).await.expect("a valid token"); // fills the key cache
        for tasks in [1, cores] {
            let tokens = Arc::new((1..=count).map(|i| sign(i + tasks * count)).collect::<Vec<_>>());
            let rate = measure_new(verifier.clone(), tokens, tasks).await;
            println!("  {alg:?} new tokens:      {rate:>10.0}/s on {tasks} task(s)");
        }
        let token = Arc::new(sign(usize::MAX));
        for tasks in [1, cores] {
            let rate = measure_repeated(verifier.clone(), token.clone(), tasks, seconds).await;
            println!("  {alg:?} repeated token:  {rate:>10.0}/s on {tasks} task(s)");
        }
    }
}
