//! Rules through the real binary: deployed over HTTP, kept across a restart, and firing afterwards.

use std::time::Duration;

use hub_e2e::{HubProcess, Launch, client};
use serde_json::json;

#[tokio::test]
async fn a_deployed_rule_survives_a_restart_and_fires() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let http = client();
    let doc = json!({"services": {
        "sound": {"resources": {"level": {"kind": "sensor", "type": "number", "value": 40}}},
        "sign": {"resources": {"display": {"kind": "state", "type": "string", "value": ""}}}}});
    let res = http
        .put(format!("{}/api/v1/providers/park.3", hub.base))
        .bearer_auth(&hub.admin)
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let policy = "p, admin, *, *\np, rule:quiet, park.*, write\n";
    assert_eq!(hub.put_policy(policy).await.unwrap(), 204);
    let rule = "rule quiet\n  when park.3/sound/level > 70\n  then set park.3/sign/display = \"quiet please\"\nend\n";
    let res = http
        .put(format!("{}/api/v1/rules/quiet", hub.base))
        .bearer_auth(&hub.admin)
        .header("content-type", "text/plain")
        .body(rule)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert!(hub.stop().unwrap().success());

    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    let (status, listed) = hub.get("/api/v1/rules").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(listed["rules"][0]["id"], "quiet", "{listed}");
    let (s, _) = hub
        .post(
            "/api/v1/ingest",
            &json!({"updates": [{"provider": "park.3", "service": "sound", "resource": "level", "value": 75}]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 200);
    let mut shown = serde_json::Value::Null;
    for _ in 0..100 {
        shown = hub.get("/api/v1/providers/park.3/services/sign/resources/display").await.unwrap().1;
        if shown["value"] == "quiet please" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shown["value"], "quiet please", "the rule fired after the restart: {shown}");
}
