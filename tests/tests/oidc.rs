//! OpenID Connect against a real provider (npm `oidc-provider`, JWT access tokens by the client credentials
//! grant): the harness itself (claims, keys, rotation), and a hub that trusts the provider's tokens, applies its
//! policy to their subjects and roles, refuses forged ones and follows a key rotation without a restart.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hub_e2e::{
    HubProcess, Launch, client,
    oidc::{IdP, open_air_to_fujisawa_officers},
};
use serde_json::{Value, json};

const AUDIENCE: &str = "https://hub.test/api";

/// The decoded header and payload of a compact JWT.
fn decode(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWT: {token}");
    let part = |s: &str| -> Value {
        let bytes = URL_SAFE_NO_PAD.decode(s).expect("base64url");
        serde_json::from_slice(&bytes).expect("a JSON object")
    };
    (part(parts[0]), part(parts[1]))
}

fn has_audience(aud: &Value, want: &str) -> bool {
    match aud {
        Value::String(s) => s == want,
        Value::Array(items) => items.iter().any(|a| a == want),
        _ => false,
    }
}

#[test]
fn issues_jwt_access_tokens_with_client_claims_and_rotates_keys() {
    let claims = json!({"roles": ["officer"], "department": "environment", "clearance": 2});
    let mut idp = IdP::start(AUDIENCE, &[("fujisawa-hub", "fujisawa-secret", claims)]).expect("starting the IdP");

    let discovery = idp.discovery().unwrap();
    assert_eq!(discovery["issuer"], idp.issuer());

    let (header, payload) = decode(&idp.token("fujisawa-hub").unwrap());
    assert_eq!(header["alg"], "RS256", "{header}");
    let first_kid = header["kid"].as_str().expect("a kid").to_string();
    assert_eq!(first_kid, idp.private_jwk()["kid"].as_str().unwrap());
    assert_eq!(payload["iss"], idp.issuer(), "{payload}");
    assert!(has_audience(&payload["aud"], AUDIENCE), "{payload}");
    assert_eq!(payload["roles"], json!(["officer"]), "{payload}");
    assert_eq!(payload["department"], "environment", "{payload}");
    assert_eq!(payload["clearance"], 2, "{payload}");
    assert_eq!(payload["client_id"], "fujisawa-hub", "{payload}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(payload["exp"].as_u64().expect("an exp") > now, "{payload}");

    assert!(idp.token("nobody").is_err(), "an unregistered client gets no token");

    let port = idp.port;
    idp.rotate().expect("rotating the signing key");
    assert_eq!(idp.port, port, "the issuer stays the same");
    let (header, payload) = decode(&idp.token("fujisawa-hub").unwrap());
    let second_kid = header["kid"].as_str().expect("a kid").to_string();
    assert_ne!(second_kid, first_kid, "tokens after the rotation use the new key");
    assert_eq!(second_kid, idp.private_jwk()["kid"].as_str().unwrap());
    assert_eq!(payload["iss"], idp.issuer());

    let jwks = idp.jwks().unwrap();
    let keys = jwks["keys"].as_array().expect("keys");
    let kids: Vec<&str> = keys.iter().filter_map(|k| k["kid"].as_str()).collect();
    assert!(kids.contains(&first_kid.as_str()) && kids.contains(&second_kid.as_str()), "{jwks}");
    assert!(keys.iter().all(|k| k.get("d").is_none()), "only public keys are published: {jwks}");
}

/// GET a path with a bearer token; the status.
async fn get_as(hub: &HubProcess, token: &str, path: &str) -> u16 {
    let res = client().get(format!("{}{path}", hub.base)).bearer_auth(token).send().await.unwrap();
    res.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_accepts_a_trusted_providers_tokens_under_its_policy() {
    let audience = "https://hub.santander.example/api";
    let mut idp = IdP::start(
        audience,
        &[
            ("fujisawa-officer", "secret-1", json!({"roles": ["officer"], "department": "environment"})),
            ("fujisawa-visitor", "secret-2", json!({"roles": "visitor"})),
        ],
    )
    .unwrap();
    let untrusted = IdP::start(audience, &[("fujisawa-officer", "secret-1", json!({"roles": ["officer"]}))]).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    let text = format!(
        "[[oidc.issuers]]\nissuer = \"{}\"\naudience = \"{audience}\"\ndomain = \"fujisawa\"\nmin_refresh_secs = 1\n",
        idp.issuer()
    );
    std::fs::write(&config, text).unwrap();
    let mut launch = Launch::new(dir.path());
    launch.args = vec!["--config".into(), config.display().to_string()];
    let hub = HubProcess::start(launch).await.unwrap();

    open_air_to_fujisawa_officers(&hub).await.unwrap();

    // The officer reads the air data Santander's policy opens to Fujisawa's officers, and nothing else.
    let officer = idp.token("fujisawa-officer").unwrap();
    assert_eq!(get_as(&hub, &officer, "/api/v1/providers/santander-air-1").await, 200);
    assert_eq!(get_as(&hub, &officer, "/api/v1/providers/santander-care-7").await, 403);
    let visitor = idp.token("fujisawa-visitor").unwrap();
    assert_eq!(get_as(&hub, &visitor, "/api/v1/providers/santander-air-1").await, 403);

    // Forged and foreign tokens: 401.
    let parts: Vec<&str> = officer.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["roles"] = json!(["admin"]);
    let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2]);
    let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), parts[1]);
    let foreign = untrusted.token("fujisawa-officer").unwrap();
    for (what, token) in [("forged", forged.as_str()), ("alg none", none.as_str()), ("untrusted issuer", &foreign)] {
        let res = client()
            .get(format!("{}/api/v1/providers/santander-air-1", hub.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 401, "{what}");
        let problem: Value = res.json().await.unwrap();
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: {problem}");
    }

    // The provider rotates its signing key: the hub fetches the new key when a token names it, no restart.
    // (`min_refresh_secs` = 1: the hub fetches keys for an unknown key id at most once a second.)
    idp.rotate().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let rotated = idp.token("fujisawa-officer").unwrap();
    assert_ne!(rotated.split('.').next(), officer.split('.').next(), "a new key id");
    assert_eq!(get_as(&hub, &rotated, "/api/v1/providers/santander-air-1").await, 200);
    // Hub tokens keep working beside OpenID Connect.
    assert_eq!(hub.get("/api/v1/providers/santander-care-7").await.unwrap().0, 200);
    hub.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_from_the_provider_are_cached_and_the_hubs_verifier_accepts_them() {
    use hub_identity::{ClientCredentials, ClientCredentialsConfig, IssuerConfig, OidcConfig, OidcError, OidcVerifier};

    let audience = "https://hub.santander.example/api";
    let idp = IdP::start(audience, &[("fujisawa-hub", "fujisawa-secret", json!({"roles": ["peer"]}))]).unwrap();
    let mut config = ClientCredentialsConfig::new(&idp.issuer(), "fujisawa-hub", "fujisawa-secret");
    config.resource = Some(audience.to_owned());
    config.scope = Some("read".to_owned());
    let credentials = ClientCredentials::new(config.clone()).unwrap();

    let token = credentials.access_token().await.expect("a token from the provider");
    let (header, payload) = decode(&token);
    assert_eq!(header["alg"], "RS256");
    assert!(has_audience(&payload["aud"], audience), "{payload}");
    assert_eq!(payload["client_id"], "fujisawa-hub", "{payload}");
    assert_eq!(payload["scope"], "read", "{payload}");
    // Cached: the provider issues a new token (new jti) on every request, and none is asked for here.
    assert_eq!(credentials.access_token().await.unwrap(), token);
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let credentials = credentials.clone();
            tokio::spawn(async move { credentials.access_token().await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), token);
    }

    // The hub's verifier accepts it as the client's principal.
    let verifier = OidcVerifier::new(&OidcConfig {
        issuers: vec![IssuerConfig::new(&idp.issuer(), audience, "fujisawa")],
        login: None,
    })
    .unwrap();
    let (principal, _) = verifier.verify(&token).await.expect("the hub's verifier accepts the token");
    assert_eq!(principal.subject, "fujisawa-hub@fujisawa");
    assert_eq!(principal.roles, vec!["peer@fujisawa"]);

    // A wrong secret: the provider's refusal, with its description.
    let mut wrong = config.clone();
    wrong.client_secret = "not-the-secret".into();
    match ClientCredentials::new(wrong).unwrap().access_token().await {
        Err(OidcError::Refused { error, description, .. }) => {
            assert_eq!(error, "invalid_client");
            assert!(description.is_some_and(|d| !d.is_empty()), "the provider's error_description");
        }
        other => panic!("wanted Refused(invalid_client), got {other:?}"),
    }
    // An issuer nobody answers for.
    let mut nowhere = config;
    nowhere.issuer = format!("http://127.0.0.1:{}", hub_e2e::free_port());
    let error = ClientCredentials::new(nowhere).unwrap().access_token().await.unwrap_err();
    assert!(matches!(error, OidcError::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains("discovery"), "{error}");
}
