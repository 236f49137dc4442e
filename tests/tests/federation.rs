//! Two cities, two hubs, two real OpenID providers (npm `oidc-provider`): Santander's hub mirrors the Fujisawa
//! providers Fujisawa lets it read, with a token from Santander's own provider (client credentials); the link
//! survives a restart of the Fujisawa hub without a gap or a duplicate; a policy change at Fujisawa stops the
//! flow; imported providers are read-only at Santander and SET is forwarded to Fujisawa under the caller's own
//! identity; and a Fujisawa officer reads at Santander exactly what Santander's policy allows, streams included.

use std::time::Duration;

use hub_e2e::{HubProcess, Launch, client, oidc::IdP, sse_until};
use serde_json::{Value, json};

/// The audience both hubs are known by at both providers.
const AUDIENCE: &str = "https://cities.test/api";

async fn status_as(hub: &HubProcess, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> u16 {
    let mut request = client().request(method, format!("{}{path}", hub.base)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap().status().as_u16()
}

async fn ingest(hub: &HubProcess, updates: Value) {
    let (status, body) = hub.post("/api/v1/ingest", &json!({ "updates": updates })).await.unwrap();
    assert!(status < 300, "{status} {body}");
}

/// Values 0..n of env-1/air/no2 at Fujisawa from `start` (µs since the epoch), two values every millisecond:
/// values of one resource may share a timestamp, and the mirror must keep both.
async fn write_no2(hub: &HubProcess, values: std::ops::Range<u64>, start: i64) {
    let updates: Vec<Value> = values
        .map(|i| {
            let micros = start + (i / 2) as i64 * 1000;
            let ts = chrono::DateTime::from_timestamp_micros(micros).unwrap().to_rfc3339();
            json!({"provider": "env-1", "service": "air", "resource": "no2", "value": i, "timestamp": ts})
        })
        .collect();
    ingest(hub, json!(updates)).await;
}

fn values(points: &[Value]) -> Vec<u64> {
    points.iter().map(|p| p["value"].as_u64().unwrap()).collect()
}

/// Waits until Santander's mirror of env-1/air/no2 holds `count` points; returns them.
async fn mirrored(santander: &HubProcess, count: usize) -> Vec<Value> {
    let mut points = Vec::new();
    for _ in 0..300 {
        points = santander.history("fujisawa.env-1/air/no2").await;
        if points.len() >= count {
            return points;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, peers) = santander.get("/api/v1/federation/peers").await.unwrap();
    panic!("the mirror holds {} of {count} points: {:?}; peers: {peers}", points.len(), values(&points));
}

async fn peer(santander: &HubProcess) -> Value {
    let (status, body) = santander.get("/api/v1/federation/peers").await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["peers"][0].clone()
}

async fn wait_state(santander: &HubProcess, state: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        last = peer(santander).await;
        if last["state"] == state {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the link never became {state}: {last}");
}

fn fujisawa_config(santander_idp: &IdP, fujisawa_idp: &IdP) -> String {
    format!(
        r#"
[policy]
domain = "fujisawa"

[[oidc.issuers]]
issuer = "{}"
audience = "{AUDIENCE}"
domain = "santander"

[[oidc.issuers]]
issuer = "{}"
audience = "{AUDIENCE}"
domain = "fujisawa"
"#,
        santander_idp.issuer(),
        fujisawa_idp.issuer()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn santander_mirrors_fujisawa_without_gaps_and_under_both_policies() {
    let santander_idp = IdP::start(AUDIENCE, &[("hub-santander", "s-secret", json!({"roles": ["partner-hub"]}))])
        .expect("starting Santander's OpenID provider");
    let fujisawa_idp = IdP::start(
        AUDIENCE,
        &[
            ("kenji", "k-secret", json!({"roles": ["officer"], "department": "environment"})),
            ("visitor", "v-secret", json!({"roles": ["visitor"]})),
        ],
    )
    .expect("starting Fujisawa's OpenID provider");

    // Fujisawa: environment data readable by Santander's hub, traffic data not.
    let fujisawa_dir = tempfile::tempdir().unwrap();
    let fujisawa_toml = fujisawa_dir.path().join("hub.toml");
    std::fs::write(&fujisawa_toml, fujisawa_config(&santander_idp, &fujisawa_idp)).unwrap();
    let fujisawa_port = hub_e2e::free_port();
    let launch_fujisawa = || {
        let mut launch = Launch::new(fujisawa_dir.path());
        launch.port = fujisawa_port;
        launch.args = vec!["--config".into(), fujisawa_toml.display().to_string()];
        launch
    };
    let fujisawa = HubProcess::start(launch_fujisawa()).await.unwrap();
    let fujisawa_policy =
        format!("{}p, partner-hub@santander, env-*, read\np, officer, env-*, write\n", hub_policy::DEFAULT_POLICY);
    assert_eq!(fujisawa.put_policy(&fujisawa_policy).await.unwrap(), 204);
    let doc = json!({"services": {"display": {"resources": {
        "message": {"kind": "property", "type": "string", "metadata": {"note": "the sign at the station"}},
    }}}});
    let res = client()
        .put(format!("{}/api/v1/providers/env-1", fujisawa.base))
        .bearer_auth(&fujisawa.admin)
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let t0 = chrono::Utc::now().timestamp_micros() - 60_000_000;
    write_no2(&fujisawa, 0..5, t0).await;
    ingest(&fujisawa, json!([{"provider": "traffic-1", "service": "road", "resource": "count", "value": 12}])).await;

    // Santander: a link to Fujisawa with client credentials at Santander's own provider.
    let santander_dir = tempfile::tempdir().unwrap();
    let santander_toml = santander_dir.path().join("hub.toml");
    let config = format!(
        r#"
[policy]
domain = "santander"

[[oidc.issuers]]
issuer = "{fujisawa_issuer}"
audience = "{AUDIENCE}"
domain = "fujisawa"
department_claim = "department"

[[federation.peers]]
name = "fujisawa"
url = "{fujisawa_url}"
reconnect_max_secs = 1

[federation.peers.client_credentials]
issuer = "{santander_issuer}"
client_id = "hub-santander"
client_secret = "s-secret"
resource = "{AUDIENCE}"
"#,
        fujisawa_issuer = fujisawa_idp.issuer(),
        santander_issuer = santander_idp.issuer(),
        fujisawa_url = fujisawa.base,
    );
    std::fs::write(&santander_toml, config).unwrap();
    let mut launch = Launch::new(santander_dir.path());
    launch.args = vec!["--config".into(), santander_toml.display().to_string()];
    // Its own admin token, which means nothing at Fujisawa.
    launch.admin = Some("hub_stdr-admin-token-0123456789abcdefghijklmno");
    let santander = HubProcess::start(launch).await.unwrap();

    // The snapshot: the current value of what Fujisawa lets Santander read, with its origin; nothing else.
    let first = mirrored(&santander, 1).await;
    assert_eq!(values(&first), [4], "the mirror starts at the current value");
    let status = wait_state(&santander, "connected").await;
    assert_eq!(status["connected"], true, "{status}");
    let (code, mirror) = santander.get("/api/v1/providers/fujisawa.env-1").await.unwrap();
    assert_eq!(code, 200, "{mirror}");
    let no2 = &mirror["services"]["air"]["resources"]["no2"];
    assert_eq!(
        no2["metadata"]["origin"]["value"],
        json!({"peer": "fujisawa", "domain": "fujisawa", "provider": "env-1"})
    );
    assert_eq!(mirror["services"]["display"]["resources"]["message"]["kind"], "property");
    assert_eq!(santander.get("/api/v1/providers/fujisawa.traffic-1").await.unwrap().0, 404);

    // Live values arrive in order.
    write_no2(&fujisawa, 5..25, t0).await;
    let live = mirrored(&santander, 21).await;
    assert_eq!(values(&live), (4..25).collect::<Vec<_>>());

    // Cut the link: Fujisawa stops. Values written while it restarts, before the link is back, are caught up
    // from Fujisawa's history; then the stream goes on. No gap, no duplicate.
    fujisawa.stop().unwrap();
    let down = wait_state(&santander, "disconnected").await;
    assert!(down["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{down}");
    let fujisawa = HubProcess::start(launch_fujisawa()).await.unwrap();
    write_no2(&fujisawa, 25..60, t0).await;
    wait_state(&santander, "connected").await;
    write_no2(&fujisawa, 60..80, t0).await;
    let resumed = mirrored(&santander, 76).await;
    assert_eq!(values(&resumed), (4..80).collect::<Vec<_>>(), "no gap, no duplicate");
    let origin = fujisawa.history("env-1/air/no2").await;
    let origin_tail: Vec<&Value> = origin.iter().filter(|p| p["value"].as_u64() >= Some(4)).collect();
    let timestamps = |points: Vec<&Value>| points.iter().map(|p| p["timestamp"].clone()).collect::<Vec<_>>();
    assert_eq!(timestamps(resumed.iter().collect()), timestamps(origin_tail), "the same timestamps as the origin");
    let status = peer(&santander).await;
    assert!(status["sessions"].as_u64() >= Some(2), "{status}");
    assert!(status["lag_ms"]["p50"].is_number(), "{status}");

    // Imported providers are read-only at Santander ...
    let (code, body) = santander
        .post(
            "/api/v1/ingest",
            &json!({"updates": [{"provider": "fujisawa.env-1", "service": "air", "resource": "no2", "value": 1}]}),
        )
        .await
        .unwrap();
    assert_eq!(code, 403, "{body}");
    // ... and SET goes to Fujisawa under the caller's identity: Fujisawa's officer may, Santander's admin token
    // means nothing at Fujisawa, a visitor is refused by Fujisawa's policy.
    let message = "/api/v1/providers/fujisawa.env-1/services/display/resources/message";
    let kenji = fujisawa_idp.token("kenji").unwrap();
    let santander_policy = format!(
        "{}p, officer@fujisawa, fujisawa.*, *\np, visitor@fujisawa, fujisawa.*, *\n",
        hub_policy::DEFAULT_POLICY
    );
    assert_eq!(santander.put_policy(&santander_policy).await.unwrap(), 204);
    let set = Some(json!({"value": "welcome, Santander"}));
    assert_eq!(status_as(&santander, &kenji, reqwest::Method::PUT, message, set.clone()).await, 200);
    santander.wait_for_value("fujisawa.env-1/services/display/resources/message", &json!("welcome, Santander")).await;
    assert_eq!(status_as(&santander, &santander.admin, reqwest::Method::PUT, message, set.clone()).await, 403);
    let visitor = fujisawa_idp.token("visitor").unwrap();
    assert_eq!(status_as(&santander, &visitor, reqwest::Method::PUT, message, set).await, 403);

    // A Fujisawa officer at Santander: reads what Santander's policy allows, on streams too.
    let santander_policy = format!(
        "{}p, officer@fujisawa, santander-air-*, read\no, santander-care-*, class, personal\n",
        hub_policy::DEFAULT_POLICY
    );
    assert_eq!(santander.put_policy(&santander_policy).await.unwrap(), 204);
    ingest(
        &santander,
        json!([
            {"provider": "santander-air-1", "service": "air", "resource": "no2", "value": 33},
            {"provider": "santander-care-7", "service": "health", "resource": "pulse", "value": 70},
        ]),
    )
    .await;
    for (path, want) in [
        ("/api/v1/providers/santander-air-1", 200),
        ("/api/v1/providers/santander-care-7", 403),
        ("/api/v1/providers/santander-care-7/services/health/resources/pulse", 403),
    ] {
        assert_eq!(status_as(&santander, &kenji, reqwest::Method::GET, path, None).await, want, "{path}");
    }
    let stream = client().get(format!("{}/api/v1/events", santander.base)).bearer_auth(&kenji).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    ingest(
        &santander,
        json!([
            {"provider": "santander-care-7", "service": "health", "resource": "pulse", "value": 71},
            {"provider": "santander-air-1", "service": "air", "resource": "no2", "value": 34},
        ]),
    )
    .await;
    let seen = sse_until(stream, "santander-air-1").await;
    assert!(!seen.contains("santander-care-7"), "personal data reached a stream it must not: {seen}");

    // Fujisawa withdraws Santander's permission: the next values no longer flow.
    assert_eq!(fujisawa.put_policy(hub_policy::DEFAULT_POLICY).await.unwrap(), 204);
    write_no2(&fujisawa, 80..85, t0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = santander.history("fujisawa.env-1/air/no2").await;
    assert_eq!(values(&after).last(), Some(&79), "values written after the policy change must not arrive");

    santander.stop().unwrap();
    fujisawa.stop().unwrap();
}
