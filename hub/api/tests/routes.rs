//! Every route, walked from the generated OpenAPI document: 401 without a token, 403 without the permission,
//! success with it; and every documented route exists in the router.

mod common;

use axum::http::{Method, StatusCode};
use common::Hub;
use serde_json::json;

fn concrete(path: &str) -> String {
    path.replace("{provider}", "noise-1")
        .replace("{service}", "sound")
        .replace("{resource}", "level")
        .replace("{id}", "nope")
}

fn body_for(method: &str, path: &str) -> Option<(&'static str, Vec<u8>)> {
    let json = |v: serde_json::Value| Some(("application/json", v.to_string().into_bytes()));
    match (method, path) {
        ("POST", "/api/v1/ingest") => {
            json(json!({"updates": [{"provider": "noise-1", "service": "sound", "resource": "level", "value": 1}]}))
        }
        ("PUT", "/api/v1/providers/{provider}") => json(json!({"services": {}})),
        ("PUT", p) if p.ends_with("{resource}") => json(json!({"value": 1})),
        ("POST", p) if p.ends_with("/act") => json(json!({"params": {}})),
        ("POST", "/api/v1/tokens") => json(json!({"subject": "x"})),
        ("PUT", "/api/v1/policy") => Some(("text/csv", b"p, admin, *, *\n".to_vec())),
        ("POST", "/api/v1/plugins") | ("PUT", "/api/v1/plugins/{id}") => json(json!({
            "manifest": format!("id = \"nope\"\nversion = \"1.0.0\"\nabi = 1\nhub = \">=0.1.0\"\nkind = \"adapter\"\nsha256 = \"{}\"\n", "0".repeat(64)),
            "wasm": ""
        })),
        ("POST", "/api/v1/rules/validate") | ("PUT", "/api/v1/rules/{id}") => {
            Some(("text/plain", b"rule nope when noise-1/sound/level > 1 then publish \"x\" end".to_vec()))
        }
        ("PUT", "/api/v1/plugins/{id}/config") => json(json!({"config": null})),
        ("POST", "/api/v1/audit/verify") => json(json!({"checkpoints": []})),
        ("POST", "/api/v1/consents") | ("PUT", "/api/v1/consents/{id}") => {
            json(json!({"grantee": "x", "objects": "noise-*", "actions": ["read"], "purpose": "a test"}))
        }
        ("PUT", "/api/v1/plugins/{id}/grant") => json(json!({"providers": ["x-*"]})),
        ("POST", "/api/v1/policy/check" | "/api/v1/policy/explain") => {
            json(json!({"subject": "a", "object": "b", "action": "read"}))
        }
        _ => None,
    }
}

fn method(m: &str) -> Method {
    m.parse().unwrap()
}

#[tokio::test]
async fn every_route_needs_a_token_and_a_permission() {
    let hub = Hub::new().await;
    let (s, _) = hub
        .ingest(&hub.admin, json!([{"provider": "noise-1", "service": "sound", "resource": "level", "value": 1}]))
        .await;
    assert_eq!(s, StatusCode::OK);
    // A subject with a token but no grant at all.
    let nobody = hub.token("nobody", &[]);
    let routes = hub_api::route_table();
    assert!(routes.len() >= 19, "route table too small: {routes:?}");
    // The sign-in routes are how a browser gets credentials (tests/login.rs).
    for (m, path) in routes.iter().filter(|(_, path)| !path.starts_with("/api/v1/auth/")) {
        let uri = concrete(path);
        let (status, problem, ct) = hub.call(method(m), &uri, None, body_for(m, path)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{m} {uri} without a token: {problem}");
        assert_eq!(ct, "application/problem+json", "{m} {uri}");
        let (status, problem, _) = hub.call(method(m), &uri, Some(&nobody), body_for(m, path)).await;
        if uri == "/api/v1/audit" {
            // Everybody may ask who looked at their own data.
            assert_eq!(status, StatusCode::OK, "{problem}");
            assert_eq!(problem["entries"], json!([]), "nobody owns no data: {problem}");
        } else if uri == "/api/v1/consents" {
            // Everybody manages the consents about their own data: listing shows only those, and a grant is
            // about the caller's own data (it allows nothing on anyone else's).
            let expected = if m == "GET" { StatusCode::OK } else { StatusCode::CREATED };
            assert_eq!(status, expected, "{m} {uri}: {problem}");
            assert!(m != "POST" || problem["owner"] == "nobody", "{problem}");
        } else if uri.starts_with("/api/v1/consents/") {
            // A consent the caller may not see does not exist for it.
            assert_eq!(status, StatusCode::NOT_FOUND, "{m} {uri}: {problem}");
        } else {
            assert_eq!(status, StatusCode::FORBIDDEN, "{m} {uri} without permission: {problem}");
        }
        let (status, _, _) = hub.call(method(m), &uri, Some("hub_forged-token"), body_for(m, path)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{m} {uri} with a forged token");
    }
}

#[tokio::test]
async fn every_documented_route_is_served_for_an_admin() {
    let hub = Hub::new().await;
    for (m, path) in hub_api::route_table() {
        if path.ends_with("/events") || path.ends_with("/ws") || path.starts_with("/api/v1/auth/") {
            continue; // streams are exercised in streams.rs, sign-in in login.rs
        }
        // Each call starts from the same model (a DELETE earlier in the walk removes it).
        let doc =
            json!({"services": {"sound": {"resources": {"level": {"kind": "state", "type": "number", "value": 3}}}}});
        let (s, _) = hub.send_json(Method::PUT, "/api/v1/providers/noise-1", &hub.admin, doc).await;
        assert_eq!(s, StatusCode::OK);
        let uri = concrete(&path);
        let (status, problem, _) = hub.call(method(&m), &uri, Some(&hub.admin), body_for(&m, &path)).await;
        // ACT on a state resource (409) and revoking an unknown token (404) are answered by their handlers.
        let handled_refusal = (uri.ends_with("/act") && status == StatusCode::CONFLICT)
            || (uri.contains("/tokens/") && status == StatusCode::NOT_FOUND)
            // No plugin "nope" is installed, and the dummy upload is not a valid module.
            || (uri.contains("/plugins/nope") && status == StatusCode::NOT_FOUND)
            || (uri.contains("/rules/nope") && status == StatusCode::NOT_FOUND)
            || (uri.contains("/consents/nope") && status == StatusCode::NOT_FOUND)
            // No checkpoint is signed before the first thousand entries (or a minute).
            || (uri == "/api/v1/audit/checkpoint" && m == "GET" && status == StatusCode::NOT_FOUND)
            || (uri == "/api/v1/plugins" && m == "POST" && status.is_client_error() && status != StatusCode::NOT_FOUND);
        assert!(status.is_success() || handled_refusal, "{m} {uri}: {status} {problem}");
        if status == StatusCode::NOT_FOUND {
            assert_ne!(problem["detail"], "no such route; the API lives under /api/v1", "{m} {uri} is not routed");
        }
    }
}

#[tokio::test]
async fn anonymous_gets_exactly_what_the_policy_grants_it() {
    let hub = Hub::with_policy("p, admin, *, *\np, anonymous, system:health, read\np, anonymous, open-*, read\n").await;
    hub.ingest(
        &hub.admin,
        json!([
            {"provider": "open-1", "service": "air", "resource": "pm10", "value": 12},
            {"provider": "closed-1", "service": "air", "resource": "pm10", "value": 13}
        ]),
    )
    .await;
    let (s, _, _) = hub.call(Method::GET, "/api/v1/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, list, _) = hub.call(Method::GET, "/api/v1/providers", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = list["providers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["open-1"]);
    let (s, _, _) = hub.call(Method::GET, "/api/v1/providers/closed-1/services/air/resources/pm10", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = hub.call(Method::GET, "/api/v1/metrics", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn policy_changes_apply_at_once_and_check_explains() {
    let hub = Hub::new().await;
    hub.ingest(&hub.admin, json!([{"provider": "noise-1", "service": "sound", "resource": "level", "value": 1}])).await;
    let alice = hub.token("alice", &[]);
    let uri = "/api/v1/providers/noise-1/services/sound/resources/level";
    assert_eq!(hub.get(uri, &alice).await.0, StatusCode::FORBIDDEN);
    let policy = format!("{}p, alice, noise-1/*, read\n", common::POLICY);
    let (s, _, _) =
        hub.call(Method::PUT, "/api/v1/policy", Some(&hub.admin), Some(("text/csv", policy.into_bytes()))).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(hub.get(uri, &alice).await.0, StatusCode::OK);
    let (s, v) = hub
        .send_json(
            Method::POST,
            "/api/v1/policy/check",
            &hub.admin,
            json!({"subject": "alice", "object": "noise-1/sound/level", "action": "read"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["allowed"], true);
    assert!(v["matched"].as_str().unwrap().contains("alice"), "{v}");
    // A broken policy is refused, names its line, and the old one stays in force.
    let (s, v, _) = hub
        .call(Method::PUT, "/api/v1/policy", Some(&hub.admin), Some(("text/csv", b"p, admin, *, *\np, bob\n".to_vec())))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["detail"].as_str().unwrap().contains('2'), "{v}");
    assert_eq!(hub.get(uri, &alice).await.0, StatusCode::OK);
    // Saved: the store has the accepted text.
    let saved = hub.state.twin.store().policy().await.unwrap().unwrap();
    assert!(saved.contains("alice"));
}

#[tokio::test]
async fn tokens_are_created_listed_and_revoked_through_the_api() {
    let hub = Hub::new().await;
    let (s, v) = hub
        .send_json(
            Method::POST,
            "/api/v1/tokens",
            &hub.admin,
            json!({"subject": "carol", "roles": ["reader"], "expires_in": "1h"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let secret = v["token"].as_str().unwrap().to_string();
    let id = v["id"].as_str().unwrap().to_string();
    hub.ingest(&hub.admin, json!([{"provider": "noise-1", "service": "sound", "resource": "level", "value": 1}])).await;
    assert_eq!(hub.get("/api/v1/providers/noise-1", &secret).await.0, StatusCode::OK);
    let (_, list) = hub.get("/api/v1/tokens", &hub.admin).await;
    let listed = list.to_string();
    assert!(listed.contains("carol") && !listed.contains(&secret), "secrets never listed");
    let stored = hub.state.twin.store().tokens().await.unwrap();
    assert!(stored.iter().any(|t| t.hash == id) && !format!("{stored:?}").contains(&secret));
    let (s, _, _) = hub.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), Some(&hub.admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(hub.get("/api/v1/providers/noise-1", &secret).await.0, StatusCode::UNAUTHORIZED);
    let (s, v) = hub.send_json(Method::POST, "/api/v1/tokens", &hub.admin, json!({"subject": "bad subject!"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let hub = Hub::new().await;
    let (s, doc) = hub.get("/api/v1/openapi.json", &hub.admin).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/ingest",
        "/api/v1/events",
        "/api/v1/ws",
        "/api/v1/providers/{provider}/services/{service}/resources/{resource}/history",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    let (s, text, ct) = hub.call(Method::GET, "/api/v1/metrics", Some(&hub.admin), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ct.starts_with("application/openmetrics-text"), "{ct} {text}");
}
