//! Consents over HTTP: an owner's grant allows reads (and writes, when granted) at once, a revocation stops an
//! open stream, an expiry is enforced without anyone acting, delegates grant only within what the owner allowed,
//! bad requests change nothing, and every change is in the owner's audit trail.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{Hub, SseReader, serve};
use hub_model::Timestamp;
use serde_json::{Value, json};

const POLICY: &str = "\
p, admin, *, *
p, viewer, *, read
g, nina, nurse
o, care-*, class, personal
";

const HEART_1: &str = "/api/v1/providers/care-1/services/heart/resources/rate";
const BED_1: &str = "/api/v1/providers/care-1/services/bed/resources/position";
const HEART_2: &str = "/api/v1/providers/care-2/services/heart/resources/rate";

/// Two homes: care-1 is erin's, care-2 is frank's (owners set in their metadata).
async fn homes() -> Hub {
    let hub = Hub::with_policy(POLICY).await;
    for (provider, owner) in [("care-1", "erin"), ("care-2", "frank")] {
        let doc = json!({"services": {
            "heart": {"resources": {"rate": {"kind": "sensor", "type": "number", "metadata": {"owner": owner}}}},
            "bed": {"resources": {"position": {"kind": "state", "type": "string", "metadata": {"owner": owner}}}},
        }});
        let (s, v) = hub.send_json(Method::PUT, &format!("/api/v1/providers/{provider}"), &hub.admin, doc).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let updates = json!([
        {"provider": "care-1", "service": "heart", "resource": "rate", "value": 71},
        {"provider": "care-2", "service": "heart", "resource": "rate", "value": 64},
        {"provider": "air-1", "service": "no2", "resource": "value", "value": 40},
    ]);
    let (s, v) = hub.ingest(&hub.admin, updates).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    hub
}

async fn give(hub: &Hub, token: &str, body: Value) -> (StatusCode, Value) {
    hub.send_json(Method::POST, "/api/v1/consents", token, body).await
}

async fn revoke(hub: &Hub, token: &str, id: &str) -> (StatusCode, Value) {
    let (s, v, _) = hub.call(Method::DELETE, &format!("/api/v1/consents/{id}"), Some(token), None).await;
    (s, v)
}

fn rfc3339_in(ms: i64) -> String {
    Timestamp::from_micros(Timestamp::now().as_micros() + ms * 1000).to_rfc3339()
}

#[tokio::test]
async fn a_grant_allows_at_once_and_a_revocation_denies_at_once() {
    let hub = homes().await;
    let erin = hub.token("erin", &[]);
    let nina = hub.token("nina", &[]);
    let viewer = hub.token("victor", &["viewer"]);
    assert_eq!(hub.get(HEART_1, &nina).await.0, StatusCode::FORBIDDEN);

    let (s, consent) = give(
        &hub,
        &erin,
        json!({"grantee": "nurse", "objects": "care-*", "actions": ["read"], "purpose": "home care visits"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{consent}");
    assert_eq!(consent["owner"], "erin");
    assert_eq!(consent["granted_by"], "erin");
    assert_eq!(consent["state"], "active");
    let id = consent["id"].as_str().unwrap().to_owned();

    // The role's holder reads erin's data, and only erin's, though the pattern covers both homes.
    let (s, v) = hub.get(HEART_1, &nina).await;
    assert_eq!((s, v["value"].clone()), (StatusCode::OK, json!(71)));
    assert_eq!(hub.get(HEART_2, &nina).await.0, StatusCode::FORBIDDEN);
    // Read only: a write was not consented to.
    let set = json!({"value": "sitting"});
    assert_eq!(hub.send_json(Method::PUT, BED_1, &nina, set.clone()).await.0, StatusCode::FORBIDDEN);
    // A permission is still no consent.
    assert_eq!(hub.get(HEART_1, &viewer).await.0, StatusCode::FORBIDDEN);
    let (s, explained) = hub
        .send_json(
            Method::POST,
            "/api/v1/policy/explain",
            &hub.admin,
            json!({"subject": "nina", "object": "care-1/heart/rate", "action": "read"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(explained["allowed"], true);
    assert!(explained["matched"].as_str().unwrap().starts_with(&format!("consent {id}")), "{explained}");

    // Who sees the consent: the owner, the grantee's holders, whoever may read `consents` (admins, and the
    // viewer role, whose `*` covers it); not others.
    let dora = hub.token("dora", &[]);
    for (token, expected) in [(&erin, 1), (&nina, 1), (&hub.admin, 1), (&viewer, 1), (&dora, 0)] {
        let (s, v) = hub.get("/api/v1/consents", token).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["consents"].as_array().unwrap().len(), expected, "{v}");
    }
    assert_eq!(hub.get(&format!("/api/v1/consents/{id}"), &dora).await.0, StatusCode::NOT_FOUND);
    // Nobody but the owner, the giver, the grantee subject or an admin revokes it.
    assert_eq!(revoke(&hub, &nina, &id).await.0, StatusCode::FORBIDDEN, "nina holds the role; the grantee is nurse");

    let (s, v) = revoke(&hub, &erin, &id).await;
    assert_eq!((s, v["revoked"].clone()), (StatusCode::OK, json!([id])));
    assert_eq!(hub.get(HEART_1, &nina).await.0, StatusCode::FORBIDDEN);
    assert_eq!(revoke(&hub, &erin, &id).await.0, StatusCode::NOT_FOUND);

    // A write consent lets a SET through, on the owner's data only.
    let (s, v) = give(
        &hub,
        &erin,
        json!({"grantee": "nina", "objects": "care-1/bed/*", "actions": ["write", "read"], "purpose": "turning"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["actions"], json!(["read", "write"]));
    assert_eq!(hub.send_json(Method::PUT, BED_1, &nina, set).await.0, StatusCode::OK);
    assert_eq!(hub.get(BED_1, &nina).await.1["value"], "sitting");
    // erin's trail shows who changed her data: nina's SET, and the batch that wrote her heart rate.
    let (_, trail) = hub.get("/api/v1/audit", &erin).await;
    let entries = trail["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["subject"] == "nina" && e["action"] == "put" && e["object"] == "care-1/bed/position"),
        "{trail}"
    );
    assert!(
        entries.iter().any(|e| e["subject"] == "admin" && e["action"] == "write" && e["object"] == "/ingest"),
        "{trail}"
    );
    assert!(entries.iter().all(|e| e["owner"] == "erin"), "only entries about erin's data: {trail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_stops_an_open_stream_at_once() {
    let hub = homes().await;
    let erin = hub.token("erin", &[]);
    let nina = hub.token("nina", &[]);
    let (s, consent) = give(
        &hub,
        &erin,
        json!({"grantee": "nina", "objects": "care-1/*", "actions": ["read"], "purpose": "night watch"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{consent}");
    let policy = "p, admin, *, *\np, nina, air-*, read\ng, nina, nurse\no, care-*, class, personal\n";
    hub.state.policy.replace(policy).await.unwrap();
    let addr = serve(&hub).await;
    let mut stream = SseReader::open(&addr, "", &nina).await.expect("the stream opens");

    let heart = |v: i64| json!([{"provider": "care-1", "service": "heart", "resource": "rate", "value": v}]);
    let air = |v: i64| json!([{"provider": "air-1", "service": "no2", "resource": "value", "value": v}]);
    assert_eq!(hub.ingest(&hub.admin, heart(90)).await.0, StatusCode::OK);
    let (kind, event) = stream.next_event().await;
    assert_eq!((kind.as_str(), &event["provider"], &event["value"]), ("update", &json!("care-1"), &json!(90)));

    assert_eq!(revoke(&hub, &erin, consent["id"].as_str().unwrap()).await.0, StatusCode::OK);
    // The next heart rate is not delivered; the open-data value after it is, so the stream is alive and the
    // heart rate was withheld, not late.
    assert_eq!(hub.ingest(&hub.admin, heart(91)).await.0, StatusCode::OK);
    assert_eq!(hub.ingest(&hub.admin, air(41)).await.0, StatusCode::OK);
    let (kind, event) = stream.next_event().await;
    assert_eq!((kind.as_str(), &event["provider"], &event["value"]), ("update", &json!("air-1"), &json!(41)));
}

#[tokio::test]
async fn an_expiry_is_enforced_at_its_instant_and_recorded() {
    let hub = homes().await;
    let erin = hub.token("erin", &[]);
    let nina = hub.token("nina", &[]);
    let (s, consent) = give(
        &hub,
        &erin,
        json!({"grantee": "nina", "objects": "care-1/*", "actions": ["read"], "purpose": "one visit",
               "expires": rfc3339_in(1_500)}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{consent}");
    let id = consent["id"].as_str().unwrap().to_owned();
    assert_eq!(hub.get(HEART_1, &nina).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert_eq!(hub.get(HEART_1, &nina).await.0, StatusCode::FORBIDDEN);
    // The book drops it and the owner's trail says so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, trail) = hub.get("/api/v1/audit?action=consent.expire", &erin).await;
        let entries = trail["entries"].as_array().unwrap();
        if let Some(entry) = entries.first() {
            assert_eq!(entry["object"], format!("consent:{id}"));
            assert_eq!(entry["owner"], "erin");
            assert_eq!(entry["subject"], "hub");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no expiry entry in the audit log: {trail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(hub.get(&format!("/api/v1/consents/{id}"), &erin).await.0, StatusCode::NOT_FOUND);
    assert_eq!(hub.state.policy.grant_count(), 0);
}

#[tokio::test]
async fn delegates_grant_only_within_what_the_owner_allowed() {
    let hub = homes().await;
    let erin = hub.token("erin", &[]);
    let cora = hub.token("cora", &[]);
    let nina = hub.token("nina", &[]);
    // Without a delegation, cora cannot grant for erin.
    let on_behalf =
        json!({"owner": "erin", "grantee": "nina", "objects": "care-1/heart/*", "actions": ["read"], "purpose": "x"});
    assert_eq!(give(&hub, &cora, on_behalf.clone()).await.0, StatusCode::FORBIDDEN);

    let (s, delegation) = give(
        &hub,
        &erin,
        json!({"grantee": "cora", "objects": "care-1/*", "actions": ["read", "write"], "purpose": "care coordination",
               "expires": rfc3339_in(3_600_000), "delegate": true}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{delegation}");
    let delegation_id = delegation["id"].as_str().unwrap().to_owned();

    let (s, given) = give(&hub, &cora, on_behalf.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{given}");
    assert_eq!(given["owner"], "erin");
    assert_eq!(given["granted_by"], "cora");
    assert_eq!(given["via"], delegation_id.as_str());
    assert_eq!(given["expires"], delegation["expires"], "an open-ended grant ends with its delegation");
    assert_eq!(hub.get(HEART_1, &nina).await.0, StatusCode::OK);

    // Outside the delegation: other objects, other actions, another owner, longer, or a further delegation.
    let refusals = [
        json!({"owner": "erin", "grantee": "nina", "objects": "care-*", "actions": ["read"], "purpose": "x"}),
        json!({"owner": "erin", "grantee": "nina", "objects": "care-1/*", "actions": ["act"], "purpose": "x"}),
        json!({"owner": "frank", "grantee": "nina", "objects": "care-2/*", "actions": ["read"], "purpose": "x"}),
        json!({"owner": "erin", "grantee": "nina", "objects": "care-1/*", "actions": ["read"], "purpose": "x",
               "expires": rfc3339_in(7_200_000)}),
        json!({"owner": "erin", "grantee": "nina", "objects": "care-1/*", "actions": ["read"], "purpose": "x",
               "delegate": true}),
    ];
    for body in refusals {
        let (s, v) = give(&hub, &cora, body.clone()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body} -> {v}");
    }
    // The delegate who gave a consent may change it, within the delegation.
    let given_id = given["id"].as_str().unwrap().to_owned();
    let narrower = json!({"grantee": "nina", "objects": "care-1/bed/*", "actions": ["read"], "purpose": "y"});
    let (s, v) = hub.send_json(Method::PUT, &format!("/api/v1/consents/{given_id}"), &cora, narrower).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(hub.get(HEART_1, &nina).await.0, StatusCode::FORBIDDEN);
    assert_ne!(hub.get(BED_1, &nina).await.0, StatusCode::FORBIDDEN);

    // Narrowing the delegation revokes what no longer fits it; revoking it revokes the rest.
    let (s, v) = hub
        .send_json(
            Method::PUT,
            &format!("/api/v1/consents/{delegation_id}"),
            &erin,
            json!({"grantee": "cora", "objects": "care-1/heart/*", "actions": ["read"], "purpose": "care coordination",
                   "delegate": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["revoked"], json!([given_id]));
    let (s, again) = give(&hub, &cora, on_behalf.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{again}");
    assert_eq!(again["expires"], Value::Null, "the delegation no longer ends");
    // Handing the delegation to another coordinator ends what the first one gave under it.
    let (s, v) = hub
        .send_json(
            Method::PUT,
            &format!("/api/v1/consents/{delegation_id}"),
            &erin,
            json!({"grantee": "cleo", "objects": "care-1/heart/*", "actions": ["read"], "purpose": "care coordination",
                   "delegate": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["revoked"], json!([again["id"]]));
    assert_eq!(hub.get(HEART_1, &nina).await.0, StatusCode::FORBIDDEN);
    let cleo = hub.token("cleo", &[]);
    let (s, again) = give(&hub, &cleo, on_behalf).await;
    assert_eq!(s, StatusCode::CREATED, "{again}");
    let (s, v) = revoke(&hub, &erin, &delegation_id).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["revoked"], json!([delegation_id, again["id"]]));
    assert_eq!(hub.get(HEART_1, &nina).await.0, StatusCode::FORBIDDEN);

    // The owner's trail names the delegate's grant and the cascade.
    let (_, trail) = hub.get("/api/v1/audit?owner=erin", &erin).await;
    let entries = trail["entries"].as_array().unwrap();
    let by_cora: Vec<&Value> =
        entries.iter().filter(|e| e["subject"] == "cora" && e["action"] == "consent.grant").collect();
    assert!(by_cora.iter().any(|e| e["decision"] == "denied"), "cora's refused attempts are in erin's trail: {trail}");
    assert!(
        by_cora.iter().any(|e| e["decision"] == "allowed"
            && e["detail"].as_str().unwrap().contains(&format!("under delegation {delegation_id}"))),
        "{trail}"
    );
    let cascaded = entries
        .iter()
        .filter(|e| e["action"] == "consent.revoke" && e["detail"].as_str().unwrap().contains("changed or ended"))
        .count();
    assert_eq!(cascaded, 3, "the narrowing, the new delegate and the revocation each ended one consent: {trail}");
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let hub = homes().await;
    let erin = hub.token("erin", &[]);
    let ok = json!({"grantee": "nina", "objects": "care-1/*", "actions": ["read"], "purpose": "visits"});
    let with = |key: &str, value: Value| {
        let mut body = ok.clone();
        body[key] = value;
        body
    };
    let cases = [
        (with("colour", json!("red")), "colour"),
        (with("actions", json!(["admin"])), "actions"),
        (with("actions", json!([])), "actions"),
        (with("actions", json!(["delete"])), "actions"),
        (with("purpose", json!("  ")), "purpose"),
        (with("purpose", json!("x".repeat(300))), "purpose"),
        (with("expires", json!("2001-01-01T00:00:00Z")), "expires"),
        (with("expires", json!("tomorrow")), "expires"),
        (with("grantee", json!("erin")), "grantee"),
        (with("grantee", json!("bad name")), "grantee"),
        (with("objects", json!("care-1/[x]")), "objects"),
    ];
    for (body, field) in cases {
        let (s, v) = give(&hub, &erin, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body} -> {v}");
        assert!(v["field"].as_str().unwrap_or_default().contains(field), "{body} -> {v}");
    }
    let (s, _, _) =
        hub.call(Method::POST, "/api/v1/consents", None, Some(("application/json", ok.to_string().into_bytes()))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(hub.get("/api/v1/consents", &hub.admin).await.1["consents"], json!([]));
    assert_eq!(hub.state.policy.grant_count(), 0);
}

#[tokio::test]
async fn consents_survive_a_restart_of_the_book() {
    let hub = homes().await;
    let erin = hub.token("erin", &[]);
    let (s, v) =
        give(&hub, &erin, json!({"grantee": "nina", "objects": "care-1/*", "actions": ["read"], "purpose": "visits"}))
            .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A second book over the same store, as a restarted hub would open it, puts the grant back in force.
    let policy = std::sync::Arc::new(hub_policy::PolicyEngine::with_domain(POLICY, "santander", 100).unwrap());
    let store = hub.state.twin.store().clone();
    let _book =
        hub_api::ConsentBook::open(store, policy.clone(), hub.state.audit.clone(), Default::default()).await.unwrap();
    assert_eq!(policy.grant_count(), 1);
}

/// What a federation link reads of this hub (the listing, the snapshot, the history, the event stream) carries a
/// peer's personal data only when its owner consented to that peer; a permission for the peer is not enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_receives_personal_data_only_under_the_owners_consent() {
    let hub = homes().await;
    let policy = "p, admin, *, *\np, santander-hub@santander, *, read\no, care-*, class, personal\n";
    hub.state.policy.replace(policy).await.unwrap();
    let peer = hub.token("santander-hub@santander", &[]);
    let erin = hub.token("erin", &[]);
    let providers = |v: &Value| -> Vec<String> {
        v["providers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect()
    };
    let (s, listing) = hub.get("/api/v1/providers", &peer).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(providers(&listing), ["air-1"], "{listing}");
    assert_eq!(hub.get("/api/v1/providers/care-1", &peer).await.0, StatusCode::FORBIDDEN);
    assert_eq!(hub.get(&format!("{HEART_1}/history"), &peer).await.0, StatusCode::FORBIDDEN);

    let (s, v) = give(
        &hub,
        &erin,
        json!({"grantee": "santander-hub@santander", "objects": "care-1/heart/*", "actions": ["read"],
               "purpose": "continuity of care in Santander"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, listing) = hub.get("/api/v1/providers", &peer).await;
    assert_eq!(providers(&listing), ["air-1", "care-1"], "{listing}");
    let (s, history) = hub.get(&format!("{HEART_1}/history"), &peer).await;
    assert_eq!(s, StatusCode::OK, "{history}");
    assert_eq!(hub.get(BED_1, &peer).await.0, StatusCode::FORBIDDEN, "outside the consent");
    assert_eq!(hub.get(HEART_2, &peer).await.0, StatusCode::FORBIDDEN, "another owner");
    let addr = serve(&hub).await;
    let mut stream = SseReader::open(&addr, "provider=care-*", &peer).await.expect("the stream opens");
    let updates = json!([
        {"provider": "care-2", "service": "heart", "resource": "rate", "value": 65},
        {"provider": "care-1", "service": "heart", "resource": "rate", "value": 72},
    ]);
    assert_eq!(hub.ingest(&hub.admin, updates).await.0, StatusCode::OK);
    let (_, event) = stream.next_event().await;
    assert_eq!((&event["provider"], &event["value"]), (&json!("care-1"), &json!(72)), "frank's value is withheld");
}
