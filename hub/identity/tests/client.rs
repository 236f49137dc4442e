//! The client credentials cache against a token endpoint served over HTTP on loopback (discovery and token
//! endpoint), which counts its requests: one fetch for many callers, an expired token never handed out, the
//! endpoint's failures and refusals passed on. (When within its lifetime a token is refreshed is unit-tested in
//! `src/client.rs`.) The same client against the real provider is in `tests/tests/oidc.rs`.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU32, Ordering},
};

use axum::{
    Form, Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hub_identity::{ClientCredentials, ClientCredentialsConfig, OidcError};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// A token valid for this many seconds.
    Token(u64),
    Down,
}

/// The forms the token endpoint received, in order.
type Forms = Arc<Mutex<Vec<Vec<(String, String)>>>>;

#[derive(Clone)]
struct Endpoint {
    issuer: String,
    fetches: Arc<AtomicU32>,
    answer: Arc<Mutex<Answer>>,
    forms: Forms,
}

async fn discovery(State(e): State<Endpoint>) -> Json<Value> {
    Json(json!({
        "issuer": e.issuer,
        "authorization_endpoint": format!("{}/auth", e.issuer),
        "token_endpoint": format!("{}/token", e.issuer),
        "jwks_uri": format!("{}/jwks", e.issuer),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

async fn token(State(e): State<Endpoint>, headers: HeaderMap, Form(form): Form<Vec<(String, String)>>) -> Response {
    let n = e.fetches.fetch_add(1, Ordering::SeqCst) + 1;
    e.forms.lock().unwrap().push(form);
    // "hub:secret" with HTTP Basic.
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Basic aHViOnNlY3JldA==") {
        let body = json!({"error": "invalid_client", "error_description": "no client with that secret"});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    match *e.answer.lock().unwrap() {
        Answer::Token(lifetime) => {
            let body = json!({"access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": lifetime});
            Json(body).into_response()
        }
        Answer::Down => (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response(),
    }
}

async fn serve() -> Endpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = Endpoint {
        issuer: format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port()),
        fetches: Arc::default(),
        answer: Arc::new(Mutex::new(Answer::Token(3600))),
        forms: Arc::default(),
    };
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(|| async { Json(json!({"keys": []})) }))
        .route("/token", post(token))
        .with_state(endpoint.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    endpoint
}

fn credentials(endpoint: &Endpoint, secret: &str) -> ClientCredentials {
    let mut config = ClientCredentialsConfig::new(&endpoint.issuer, "hub", secret);
    config.resource = Some("https://peer.example/api".into());
    config.scope = Some("read write".into());
    ClientCredentials::new(config).unwrap()
}

#[tokio::test]
async fn many_callers_share_one_fetch_with_the_grant_resource_and_scope() {
    let endpoint = serve().await;
    let client = credentials(&endpoint, "secret");
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.access_token().await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), "token-1");
    }
    assert_eq!(client.access_token().await.unwrap(), "token-1");
    assert_eq!(endpoint.fetches.load(Ordering::SeqCst), 1, "one fetch for every caller");
    let form = endpoint.forms.lock().unwrap()[0].clone();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(field("grant_type"), Some("client_credentials"));
    assert_eq!(field("resource"), Some("https://peer.example/api"));
    assert_eq!(field("scope"), Some("read write"));
}

#[tokio::test]
async fn an_expired_token_is_never_handed_out() {
    let endpoint = serve().await;
    // Tokens that are expired when they arrive: every call fetches.
    *endpoint.answer.lock().unwrap() = Answer::Token(0);
    let client = credentials(&endpoint, "secret");
    assert_eq!(client.access_token().await.unwrap(), "token-1");
    assert_eq!(client.access_token().await.unwrap(), "token-2");
    // The endpoint fails and there is no valid token to fall back on: the caller learns why.
    *endpoint.answer.lock().unwrap() = Answer::Down;
    match client.access_token().await {
        Err(OidcError::Unavailable { reason, .. }) => assert!(reason.contains("maintenance"), "{reason}"),
        other => panic!("wanted Unavailable, got {other:?}"),
    }
    *endpoint.answer.lock().unwrap() = Answer::Token(3600);
    assert_eq!(client.access_token().await.unwrap(), "token-4");
    assert_eq!(client.access_token().await.unwrap(), "token-4");
    assert_eq!(endpoint.fetches.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_refusal_carries_the_providers_description() {
    let endpoint = serve().await;
    match credentials(&endpoint, "wrong").access_token().await {
        Err(error @ OidcError::Refused { .. }) => {
            let text = error.to_string();
            assert!(text.contains("invalid_client") && text.contains("no client with that secret"), "{text}");
        }
        other => panic!("wanted Refused, got {other:?}"),
    }
}
