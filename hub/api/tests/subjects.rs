//! A subject's data export: everything the hub holds about one person, to them and to whoever may read
//! `subjects`, and to nobody else.

mod common;

use axum::http::{Method, StatusCode};
use common::Hub;
use serde_json::json;

const POLICY: &str = "\
p, admin, *, *
p, dpo, subjects, read
o, care-*, class, personal
";

#[tokio::test]
async fn an_export_holds_the_owners_data_consents_audit_and_tokens() {
    let hub = Hub::with_policy(POLICY).await;
    for (provider, owner) in [("care-1", "erin"), ("care-2", "frank")] {
        let doc = json!({"services": {"heart": {"resources": {
            "rate": {"kind": "sensor", "type": "number", "metadata": {"owner": owner}}}}}});
        let (s, v) = hub.send_json(Method::PUT, &format!("/api/v1/providers/{provider}"), &hub.admin, doc).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    for value in [70, 71, 72] {
        let updates = json!([
            {"provider": "care-1", "service": "heart", "resource": "rate", "value": value},
            {"provider": "care-2", "service": "heart", "resource": "rate", "value": value + 100},
        ]);
        assert_eq!(hub.ingest(&hub.admin, updates).await.0, StatusCode::OK);
    }
    let erin = hub.token("erin", &[]);
    let frank = hub.token("frank", &[]);
    let dpo = hub.token("dora", &["dpo"]);
    let (s, v) = hub
        .send_json(
            Method::POST,
            "/api/v1/consents",
            &erin,
            json!({"grantee": "nurse", "objects": "care-1/*", "actions": ["read"], "purpose": "visits"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(hub.get("/api/v1/providers/care-1/services/heart/resources/rate", &erin).await.0, StatusCode::OK);

    // A data protection officer gets erin's records, not her personal data: a permission is no consent.
    let (s, export) = hub.get("/api/v1/subjects/erin/export", &dpo).await;
    assert_eq!(s, StatusCode::OK, "{export}");
    assert_eq!(export["resources"], json!([]));
    assert_eq!(export["withheld"], json!(["care-1/heart/rate"]));
    assert_eq!(export["consents"]["given"].as_array().unwrap().len(), 1);

    {
        let token = &erin;
        let (s, export) = hub.get("/api/v1/subjects/erin/export", token).await;
        assert_eq!(s, StatusCode::OK, "{export}");
        assert_eq!(export["subject"], "erin");
        let resources = export["resources"].as_array().unwrap();
        assert_eq!(resources.len(), 1, "only erin's resources: {export}");
        assert_eq!(resources[0]["resource"], "care-1/heart/rate");
        assert_eq!(resources[0]["value"], 72);
        let history: Vec<i64> =
            resources[0]["history"].as_array().unwrap().iter().map(|p| p["value"].as_i64().unwrap()).collect();
        assert_eq!(history, [70, 71, 72]);
        assert_eq!(export["consents"]["given"].as_array().unwrap().len(), 1);
        assert_eq!(export["consents"]["given"][0]["grantee"], "nurse");
        let actions: Vec<&str> =
            export["audit"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert!(actions.contains(&"consent.grant") && actions.contains(&"read"), "{actions:?}");
        assert_eq!(export["tokens"].as_array().unwrap().len(), 1);
        assert_eq!(export["tokens"][0]["subject"], "erin");
        assert!(!export.to_string().contains(&erin), "a token's secret is never exported");
        assert!(!export["resources"].to_string().contains("care-2"), "frank's data is not in erin's export");
    }
    assert_eq!(hub.get("/api/v1/subjects/erin/export", &frank).await.0, StatusCode::FORBIDDEN);
    // Both exports are in erin's trail.
    let (_, trail) = hub.get("/api/v1/audit?action=subject.export", &erin).await;
    let by: Vec<&str> = trail["entries"].as_array().unwrap().iter().map(|e| e["subject"].as_str().unwrap()).collect();
    assert_eq!(by, ["dora", "erin"], "{trail}");
    let (s, _, _) = hub.call(Method::GET, "/api/v1/subjects/erin/export", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(hub.get("/api/v1/subjects/bad%20name/export", &hub.admin).await.0, StatusCode::BAD_REQUEST);
}
