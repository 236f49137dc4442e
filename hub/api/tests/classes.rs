//! Data classes over HTTP: labels from metadata and from the policy decide reads, listings hide what a caller
//! may not read, and `/policy/explain` says why.

mod common;

use axum::http::{Method, StatusCode};
use common::Hub;
use serde_json::json;

const POLICY: &str = "\
p, admin, *, *
p, viewer, *, read
s, env-staff, department, environment
g, ana, env-staff
o, water-*, class, closed
";

async fn city() -> Hub {
    let hub = Hub::with_policy(POLICY).await;
    // The care provider's writer classifies its own data through metadata.
    let doc = json!({"services": {"heart": {"resources": {
        "rate": {"kind": "sensor", "type": "number", "metadata": {"data_class": "personal", "owner": "erin"}},
    }}}});
    let (s, v) = hub.send_json(Method::PUT, "/api/v1/providers/care-1", &hub.admin, doc).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let doc = json!({"services": {"no2": {"resources": {
        "value": {"kind": "sensor", "type": "number", "metadata": {"data_class": "open"}},
    }}}});
    let (s, v) = hub.send_json(Method::PUT, "/api/v1/providers/air-1", &hub.admin, doc).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let updates = json!([
        {"provider": "care-1", "service": "heart", "resource": "rate", "value": 71},
        {"provider": "air-1", "service": "no2", "resource": "value", "value": 40},
        {"provider": "water-1", "service": "ph", "resource": "value", "value": 7.1},
    ]);
    let (s, v) = hub.ingest(&hub.admin, updates).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    hub
}

const HEART: &str = "/api/v1/providers/care-1/services/heart/resources/rate";
const AIR: &str = "/api/v1/providers/air-1/services/no2/resources/value";
const WATER: &str = "/api/v1/providers/water-1/services/ph/resources/value";

#[tokio::test]
async fn classes_decide_reads_whatever_the_permissions_say() {
    let hub = city().await;
    let viewer = hub.token("victor", &["viewer"]);
    let erin = hub.token("erin", &[]);
    let ana = hub.token("ana", &[]);
    let table = [
        // (token, resource, status)
        (&viewer, AIR, StatusCode::OK),
        (&viewer, HEART, StatusCode::FORBIDDEN), // personal: a permission is not the owner's consent
        (&viewer, WATER, StatusCode::FORBIDDEN), // closed: no department
        (&erin, HEART, StatusCode::OK),          // the owner, without any permission
        (&erin, AIR, StatusCode::OK),            // open data
        (&erin, WATER, StatusCode::FORBIDDEN),
        (&ana, WATER, StatusCode::OK), // City Hall staff of this hub's domain
        (&ana, HEART, StatusCode::FORBIDDEN),
        (&hub.admin, HEART, StatusCode::FORBIDDEN),
    ];
    for (token, uri, want) in table {
        let (s, v) = hub.get(uri, token).await;
        assert_eq!(s, want, "{uri}: {v}");
    }
    // Anonymous citizens read open data and nothing else.
    let (s, _, _) = hub.call(Method::GET, AIR, None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = hub.call(Method::GET, WATER, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // The listing shows only readable resources.
    let (s, list) = hub.get("/api/v1/providers", &viewer).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = list["providers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    // care-1's admin service is unclassified, its personal heart rate is left out; water-1 is closed throughout.
    assert_eq!(names, ["air-1", "care-1"], "{list}");
    assert!(list["providers"][1]["services"].get("heart").is_none(), "{list}");
    assert!(list["providers"][1]["services"].get("admin").is_some(), "{list}");

    // A consent line lets the owner's nurse read, at once.
    let (s, _, _) = hub
        .call(
            Method::PUT,
            "/api/v1/policy",
            Some(&hub.admin),
            Some(("text/csv", format!("{POLICY}c, erin, nurse, care-1/*\n").into_bytes())),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let nurse = hub.token("nina", &["nurse"]);
    assert_eq!(hub.get(HEART, &nurse).await.0, StatusCode::OK);
    assert_eq!(hub.get(HEART, &viewer).await.0, StatusCode::FORBIDDEN);

    // A metadata change reclassifies at once.
    let doc = json!({"services": {"heart": {"resources": {"rate": {"metadata": {"data_class": "open"}}}}}});
    let (s, v) = hub.send_json(Method::PUT, "/api/v1/providers/care-1", &hub.admin, doc).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(hub.get(HEART, &viewer).await.0, StatusCode::OK);
}

#[tokio::test]
async fn explain_names_the_rule_labels_and_attributes() {
    let hub = city().await;
    let ask = |subject: &str, roles: &[&str], object: &str| json!({"subject": subject, "roles": roles, "object": object, "action": "read"});
    let (s, v) = hub
        .send_json(Method::POST, "/api/v1/policy/explain", &hub.admin, ask("victor", &["viewer"], "care-1/heart/rate"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["allowed"], false);
    assert_eq!(v["reason"], "personal data: only its owner erin and whom the owner granted may read it");
    assert_eq!(v["labels"]["class"]["value"], "personal");
    assert_eq!(v["labels"]["class"]["origin"], "metadata");
    assert_eq!(v["labels"]["owner"]["value"], "erin");
    assert_eq!(v["domain"], "santander");

    let (s, v) =
        hub.send_json(Method::POST, "/api/v1/policy/explain", &hub.admin, ask("ana", &[], "water-1/ph/value")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["labels"]["class"]["origin"], json!({"policy": 5}));
    assert_eq!(v["attributes"]["departments"], json!(["environment"]));

    // Attributes a token would carry can be asked about too.
    let mut question = ask("kenji@fujisawa", &[], "water-1/ph/value");
    question["attributes"] = json!({"departments": ["environment"], "clearance": 2});
    let (s, v) = hub.send_json(Method::POST, "/api/v1/policy/explain", &hub.admin, question).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["allowed"], false);
    assert_eq!(v["domain"], "fujisawa");
    assert!(v["reason"].as_str().unwrap().contains("another domain"), "{v}");

    let (s, v) = hub
        .send_json(Method::POST, "/api/v1/policy/explain", &hub.admin, ask("victor", &["viewer"], "noise-1/a/b"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["matched"], "p, viewer, *, read");
    assert_eq!(v["line"], 2);

    // Reading the explanation needs `read` on the policy.
    let viewer_without_policy = hub.token("nobody", &[]);
    let (s, _) =
        hub.send_json(Method::POST, "/api/v1/policy/explain", &viewer_without_policy, ask("a", &[], "b")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let mut bad = ask("a", &[], "b");
    bad["action"] = json!("delete");
    let (s, v) = hub.send_json(Method::POST, "/api/v1/policy/explain", &hub.admin, bad).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}
