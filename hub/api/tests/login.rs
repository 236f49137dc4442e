//! The sign-in routes and the session cookie through the real router: the cookie authenticates like a token,
//! ends at logout, guards state-changing requests against other sites, and never outranks a bearer token. The
//! redirect dance with a real OpenID provider is in `tests/tests/login.rs`; here sessions are opened directly
//! and the provider (configured, never reached) is only needed for what is refused before it is asked.

mod common;

use std::sync::Arc;

use axum::{
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use common::Hub;
use http_body_util::BodyExt;
use hub_identity::{IssuerConfig, Login, LoginConfig};
use hub_policy::Principal;
use serde_json::{Value, json};
use tower::ServiceExt;

const ORIGIN: &str = "https://hub.example";

/// A hub whose sign-in is configured with an issuer on a port nothing listens on.
async fn hub_with_login() -> Hub {
    let mut hub = Hub::with_policy("p, admin, *, *\np, reader, noise-*, read\np, writer@fujisawa, noise-*, write\np, writer@fujisawa, noise-*, read\n").await;
    let issuer = IssuerConfig::new("http://127.0.0.1:9", "https://hub.example/api", "fujisawa");
    let config = LoginConfig::new(&issuer.issuer, "hub", &format!("{ORIGIN}/api/v1/auth/callback"));
    hub.state.login = Some(Arc::new(Login::new(config, issuer).unwrap()));
    hub.router = hub_api::router(hub.state.clone());
    let model =
        json!({"services": {"sound": {"resources": {"level": {"kind": "state", "type": "number", "value": 1}}}}});
    let (status, _) = hub.send_json(Method::PUT, "/api/v1/providers/noise-1", &hub.admin, model).await;
    assert_eq!(status, StatusCode::OK);
    hub
}

fn sign_in(hub: &Hub, subject: &str, roles: &[&str]) -> String {
    let principal = Principal::new(subject, roles.iter().map(|r| r.to_string()).collect());
    hub.state.login.as_ref().unwrap().open_session(principal, None).unwrap().0
}

/// Sends a request with `headers`; the status, the response headers and the JSON body.
async fn send(
    hub: &Hub,
    method: Method,
    uri: &str,
    headers: &[&(&str, String)],
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = match body {
        Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    };
    let response = hub.router.clone().oneshot(request.unwrap()).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn session_cookie(id: &str) -> (&'static str, String) {
    ("cookie", format!("theme=dark; hub_session={id}"))
}

const SET: &str = "/api/v1/providers/noise-1/services/sound/resources/level";

#[tokio::test]
async fn a_session_cookie_authenticates_until_logout() {
    let hub = hub_with_login().await;
    let alice = sign_in(&hub, "alice@fujisawa", &["reader"]);
    let cookie = session_cookie(&alice);

    let (status, _, body) = send(&hub, Method::GET, "/api/v1/auth/session", &[&cookie], None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["subject"], "alice@fujisawa");
    assert_eq!(body["roles"], json!(["reader"]));
    assert!(body["expires"].is_string(), "{body}");

    // The policy applies to the session's principal.
    let (status, _, _) = send(&hub, Method::GET, "/api/v1/providers/noise-1", &[&cookie], None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(&hub, Method::GET, "/api/v1/policy", &[&cookie], None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A bearer token wins over the cookie.
    let auth = ("authorization", format!("Bearer {}", hub.admin));
    let (status, _, body) = send(&hub, Method::GET, "/api/v1/auth/session", &[&cookie, &auth], None).await;
    assert_eq!((status, body["subject"].as_str()), (StatusCode::OK, Some("admin")));

    let csrf = ("x-requested-with", "fetch".to_string());
    let (status, headers, _) = send(&hub, Method::POST, "/api/v1/auth/logout", &[&cookie, &csrf], None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "no provider known: nothing to end there");
    let cleared = headers.get(header::SET_COOKIE).unwrap().to_str().unwrap();
    assert!(cleared.starts_with("hub_session=;") & cleared.contains("Max-Age=0"), "{cleared}");
    assert!(cleared.contains("HttpOnly") & cleared.contains("SameSite=Lax") & cleared.contains("Secure"), "{cleared}");

    let (status, _, problem) = send(&hub, Method::GET, "/api/v1/providers/noise-1", &[&cookie], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("sign in again"), "{problem}");
    let (status, _, _) = send(&hub, Method::GET, "/api/v1/auth/session", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "anonymous is not signed in");
}

#[tokio::test]
async fn cookie_requests_that_change_something_need_a_same_site_sign() {
    let hub = hub_with_login().await;
    let writer = sign_in(&hub, "bob@fujisawa", &["writer@fujisawa"]);
    let cookie = session_cookie(&writer);
    let set = || Some(json!({"value": 2}));

    let (status, _, problem) = send(&hub, Method::PUT, SET, &[&cookie], set()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("X-Requested-With"), "{problem}");
    let foreign = ("origin", "https://evil.example".to_string());
    let (status, _, _) = send(&hub, Method::PUT, SET, &[&cookie, &foreign], set()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    for sign in [("x-requested-with", "XMLHttpRequest".to_string()), ("origin", ORIGIN.to_string())] {
        let (status, _, problem) = send(&hub, Method::PUT, SET, &[&cookie, &sign], set()).await;
        assert_eq!(status, StatusCode::OK, "{problem}");
    }
    // Reading needs no sign; a bearer token needs none either (a browser never adds it by itself).
    let (status, _, _) = send(&hub, Method::GET, SET, &[&cookie, &foreign], None).await;
    assert_eq!(status, StatusCode::OK);
    let auth = ("authorization", format!("Bearer {}", hub.admin));
    let (status, _, _) = send(&hub, Method::PUT, SET, &[&auth, &foreign], set()).await;
    assert_eq!(status, StatusCode::OK);

    // Logout too: another site cannot sign a browser out.
    let (status, _, _) = send(&hub, Method::POST, "/api/v1/auth/logout", &[&cookie, &foreign], None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(&hub, Method::GET, "/api/v1/auth/session", &[&cookie], None).await;
    assert_eq!(status, StatusCode::OK, "the session is still there");
}

#[tokio::test]
async fn sign_in_requests_are_checked_before_the_provider_is_asked() {
    let hub = hub_with_login().await;
    for evil in ["//evil.example", "https://evil.example/", "/\\evil.example"] {
        let uri = format!("/api/v1/auth/login?return_to={}", urlencode(evil));
        let (status, headers, problem) = send(&hub, Method::GET, &uri, &[], None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{evil}: {problem}");
        assert_eq!(problem["field"], "return_to", "{problem}");
        assert!(headers.get(header::LOCATION).is_none());
    }
    let (status, headers, problem) =
        send(&hub, Method::GET, "/api/v1/auth/callback?code=c&state=never-issued", &[], None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["field"], "state");
    let unbind = headers.get(header::SET_COOKIE).unwrap().to_str().unwrap();
    assert!(unbind.starts_with("hub_login=;") & unbind.contains("Path=/api/v1/auth/callback"), "{unbind}");
    // The provider is down: a clear 502, no redirect.
    let (status, _, problem) = send(&hub, Method::GET, "/api/v1/auth/login", &[], None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("127.0.0.1:9"), "{problem}");
}

#[tokio::test]
async fn without_sign_in_configured_the_routes_say_so() {
    let hub = Hub::new().await;
    let (status, _, problem) = send(&hub, Method::GET, "/api/v1/auth/login", &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(problem["detail"].as_str().unwrap().contains("oidc.login"), "{problem}");
    let (status, _, _) = send(&hub, Method::GET, "/api/v1/auth/callback?code=c&state=s", &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A stray cookie is nobody's session: anonymous.
    let (status, _, _) = send(&hub, Method::GET, "/api/v1/auth/session", &[&session_cookie("x")], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let reader = hub.token("carol", &["reader"]);
    let auth = ("authorization", format!("Bearer {reader}"));
    let (status, _, body) = send(&hub, Method::GET, "/api/v1/auth/session", &[&auth], None).await;
    assert_eq!((status, body["subject"].as_str(), &body["expires"]), (StatusCode::OK, Some("carol"), &Value::Null));
    let (status, _, _) = send(&hub, Method::POST, "/api/v1/auth/logout", &[&auth], None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}
