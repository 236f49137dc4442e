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
    deploy(&hub, "quiet", rule).await;
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

/// Sends rule source to `/api/v1/rules/{path}` as admin; the status and the body.
async fn send_rule(hub: &HubProcess, method: reqwest::Method, path: &str, source: &str) -> (u16, String) {
    let res = client()
        .request(method, format!("{}/api/v1/rules/{path}", hub.base))
        .bearer_auth(&hub.admin)
        .header("content-type", "text/plain")
        .body(source.to_owned())
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// Deploys `source` as rule `id`; panics with the diagnostics on failure.
async fn deploy(hub: &HubProcess, id: &str, source: &str) {
    let (status, body) = send_rule(hub, reqwest::Method::PUT, id, source).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_rule_calls_a_wasm_rule_app_through_the_policy() {
    let (manifest, wasm) = hub_e2e::build_plugin("fixtures/percentile", "hub-app-percentile").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();
    use base64::Engine as _;
    let wasm = base64::engine::general_purpose::STANDARD.encode(wasm);
    let (status, info) = hub
        .post("/api/v1/plugins", &json!({"manifest": manifest, "wasm": wasm, "grant": {"providers": ["stats-*"]}}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{info}");
    assert_eq!(info["kind"], "app", "{info}");

    // The rule may call the app (act on plugin:percentile); the app may write its namespace.
    let policy = "p, admin, *, *\np, plugin:mqtt, *, write\np, plugin:percentile, stats-*, write\n\
                  p, rule:noise_p95, plugin:percentile, act\n";
    assert_eq!(hub.put_policy(policy).await.unwrap(), 204);
    let ingest =
        |v: i64| json!({"updates": [{"provider": "noise-5", "service": "sound", "resource": "level", "value": v}]});
    assert_eq!(hub.post("/api/v1/ingest", &ingest(1)).await.unwrap().0, 200);
    deploy(
        &hub,
        "noise_p95",
        "rule noise_p95\n  on update noise-5/sound/level\n  then call percentile(key = \"noise-5\", value = value)\nend\n",
    )
    .await;
    for v in 1..=20 {
        assert_eq!(hub.post("/api/v1/ingest", &ingest(v)).await.unwrap().0, 200);
    }
    // 1..=20: the 95th percentile by nearest rank is 19.
    hub.wait_for_value("stats-noise-5/services/values/resources/n", &json!(20)).await;
    let (_, p95) = hub.get("/api/v1/providers/stats-noise-5/services/values/resources/p95").await.unwrap();
    assert_eq!(p95["value"], json!(19.0), "{p95}");
    let (_, rule) = hub.get("/api/v1/rules/noise_p95").await.unwrap();
    assert_eq!(rule["last_result"]["app"], "percentile", "{rule}");
    assert_eq!(rule["last_result"]["result"], json!({"p95": 19.0, "n": 20}), "{rule}");
    assert_eq!(rule["action_failures"], 0, "{rule}");

    // Without the policy line the call is refused and counted; the app's resources stay as they were.
    let policy = "p, admin, *, *\np, plugin:percentile, stats-*, write\n";
    assert_eq!(hub.put_policy(policy).await.unwrap(), 204);
    assert_eq!(hub.post("/api/v1/ingest", &ingest(100)).await.unwrap().0, 200);
    let mut failures = json!(0);
    for _ in 0..100 {
        let (_, rule) = hub.get("/api/v1/rules/noise_p95").await.unwrap();
        failures = rule["action_failures"].clone();
        if failures != 0 {
            assert!(rule["last_error"].as_str().unwrap().contains("plugin:percentile"), "{rule}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(failures, 1);
    let (_, n) = hub.get("/api/v1/providers/stats-noise-5/services/values/resources/n").await.unwrap();
    assert_eq!(n["value"], 20, "{n}");

    // Calling an adapter, or an app that is not installed, fails with a clear error.
    let policy = "p, admin, *, *\np, rule:wrong, plugin:*, act\np, rule:missing, plugin:*, act\n";
    assert_eq!(hub.put_policy(policy).await.unwrap(), 204);
    deploy(&hub, "wrong", "rule wrong\n  on update noise-5/sound/level\n  then call mqtt(x = 1)\nend\n").await;
    let missing = "rule missing\n  on update noise-5/sound/level\n  then call nothere(x = 1)\nend\n";
    let (_, checked) = send_rule(&hub, reqwest::Method::POST, "validate", missing).await;
    assert!(checked.contains("unknown-app") && checked.contains("nothere"), "the checker warns: {checked}");
    deploy(&hub, "missing", missing).await;
    assert_eq!(hub.post("/api/v1/ingest", &ingest(101)).await.unwrap().0, 200);
    for (id, needle) in [("wrong", "not a rule app"), ("missing", "no rule app nothere")] {
        let mut error = String::new();
        for _ in 0..100 {
            let (_, rule) = hub.get(&format!("/api/v1/rules/{id}")).await.unwrap();
            error = rule["last_error"].as_str().unwrap_or_default().to_owned();
            if !error.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(error.contains(needle), "{id}: {error}");
    }
}
