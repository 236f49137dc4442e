//! The audit log of a running `hub serve`: reads of personal data (allowed and denied), changes and failed
//! authentications are recorded; owners see who looked at their data and nothing else; the log verifies over
//! the API; a checkpoint is exported; and the offline `hub audit verify` finds an entry edited in the database
//! after the hub stopped, and a tail removed after the exported checkpoint.

use std::process::Command;

use hub_e2e::{HubProcess, Launch, client, hub_binary};
use serde_json::{Value, json};

async fn token(hub: &HubProcess, subject: &str, roles: &[&str]) -> String {
    let (status, body) = hub.post("/api/v1/tokens", &json!({"subject": subject, "roles": roles})).await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn get_as(hub: &HubProcess, token: &str, path: &str) -> (u16, Value) {
    let res = client().get(format!("{}{path}", hub.base)).bearer_auth(token).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `(subject, action, object, decision)` of each entry.
fn summary(page: &Value) -> Vec<(String, String, String, String)> {
    let text = |e: &Value, k: &str| e[k].as_str().unwrap_or_default().to_owned();
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (text(e, "subject"), text(e, "action"), text(e, "object"), text(e, "decision")))
        .collect()
}

fn verify_offline(data_dir: &std::path::Path, key: &str, checkpoints: &[&std::path::Path]) -> (bool, String) {
    let mut cmd = Command::new(hub_binary());
    cmd.args(["audit", "verify", "--data-dir"]).arg(data_dir).args(["--public-key", key]);
    for checkpoint in checkpoints {
        cmd.arg("--checkpoint").arg(checkpoint);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test]
async fn reads_of_personal_data_are_audited_verifiable_and_tamper_evident() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.unwrap();

    // Carol's pulse is personal data; the street light is not.
    let model = json!({"services": {
        "vitals": {"resources": {"pulse": {"kind": "sensor", "type": "number", "value": 71,
            "metadata": {"data_class": "personal", "owner": "carol"}}}},
    }});
    let res = client()
        .put(format!("{}/api/v1/providers/care-1", hub.base))
        .bearer_auth(&hub.admin)
        .json(&model)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let (status, _) = hub
        .post(
            "/api/v1/ingest",
            &json!({"updates": [{"provider": "light-1", "service": "lamp", "resource": "on", "value": true}]}),
        )
        .await
        .unwrap();
    assert!(status < 300);

    let carol = token(&hub, "carol", &[]).await;
    let bob = token(&hub, "bob", &["admin"]).await;
    let pulse = "/api/v1/providers/care-1/services/vitals/resources/pulse";
    assert_eq!(get_as(&hub, &carol, pulse).await.0, 200, "the owner reads her data");
    assert_eq!(get_as(&hub, &bob, pulse).await.0, 403, "an administrator may not read personal data");
    assert_eq!(get_as(&hub, &bob, "/api/v1/providers/light-1/services/lamp/resources/on").await.0, 200);
    assert_eq!(get_as(&hub, "hub_forged-token-0123456789abcdefghijklmnopq", pulse).await.0, 401);

    // Carol sees who looked at her data: her read and Bob's refused one; not the street light, not the rest.
    let (status, mine) = get_as(&hub, &carol, "/api/v1/audit").await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(
        summary(&mine),
        [
            ("carol".into(), "read".into(), "care-1/vitals/pulse".into(), "allowed".into()),
            ("bob".into(), "read".into(), "care-1/vitals/pulse".into(), "denied".into()),
        ]
    );
    assert_eq!(mine["entries"][1]["roles"], json!(["admin"]), "the role Bob acted under");
    assert_eq!(mine["entries"][0]["owner"], "carol");
    assert_eq!(get_as(&hub, &carol, "/api/v1/audit?owner=dave").await.0, 403, "nobody else's entries");
    let (status, qualified) = get_as(&hub, &carol, "/api/v1/audit?owner=carol@local").await;
    assert_eq!((status, summary(&qualified)), (200, summary(&mine)), "her name with the hub's domain is hers");

    // The administrator sees the changes, and the failed authentication.
    let (status, changes) = get_as(&hub, &hub.admin, "/api/v1/audit?action=put&object=/providers/*").await;
    assert_eq!(status, 200, "{changes}");
    assert_eq!(summary(&changes), [("admin".into(), "put".into(), "/providers/care-1".into(), "allowed".into())]);
    let (_, ingest) = get_as(&hub, &hub.admin, "/api/v1/audit?action=post&object=/ingest").await;
    assert_eq!(summary(&ingest).len(), 1, "{ingest}");
    let check = json!({"subject": "bob", "object": "care-1/vitals/pulse", "action": "read"});
    assert_eq!(hub.post("/api/v1/policy/check", &check).await.unwrap().0, 200);
    let (_, questions) = get_as(&hub, &hub.admin, "/api/v1/audit?action=post&object=/policy/*").await;
    assert_eq!(summary(&questions), [], "a question changes nothing and is not recorded");
    let (_, failed) = get_as(&hub, &hub.admin, "/api/v1/audit?action=authenticate").await;
    assert_eq!(summary(&failed).len(), 1, "{failed}");
    assert_eq!(failed["entries"][0]["decision"], "denied");
    let (_, page) = get_as(&hub, &hub.admin, "/api/v1/audit?limit=2").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    let next = page["next"].as_u64().expect("a next page");
    let (_, rest) = get_as(&hub, &hub.admin, &format!("/api/v1/audit?after={next}")).await;
    assert_eq!(rest["entries"][0]["seq"].as_u64(), Some(next + 1));
    assert_eq!(get_as(&hub, &hub.admin, "/api/v1/audit?limit=0").await.0, 400);
    assert_eq!(get_as(&hub, &hub.admin, "/api/v1/audit?colour=red").await.0, 400);

    // Intact over the API; a checkpoint is exported and kept outside; the key is public.
    let (status, report) = get_as(&hub, &hub.admin, "/api/v1/audit/verify").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(get_as(&hub, &carol, "/api/v1/audit/verify").await.0, 403);
    let res =
        client().post(format!("{}/api/v1/audit/checkpoint", hub.base)).bearer_auth(&hub.admin).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let checkpoint: Value = res.json().await.unwrap();
    let covered = checkpoint["seq"].as_u64().unwrap();
    assert!(covered >= 7, "{checkpoint}");
    let outside = tempfile::tempdir().unwrap();
    let checkpoint_file = outside.path().join("checkpoint.json");
    std::fs::write(&checkpoint_file, checkpoint.to_string()).unwrap();
    let (_, key) = get_as(&hub, &hub.admin, "/api/v1/audit/key").await;
    let key = key["public_key"].as_str().unwrap().to_owned();
    assert_eq!(key, checkpoint["key"].as_str().unwrap());
    hub.stop().unwrap();

    let (ok, out) = verify_offline(dir.path(), &key, &[&checkpoint_file]);
    assert!(ok, "{out}");
    let (ok, out) = verify_offline(dir.path(), &"ab".repeat(32), &[]);
    assert!(!ok, "another key does not verify the stored checkpoints: {out}");

    // Somebody with the database file removes the entries after Bob's refused read, stored checkpoints
    // included: only the exported checkpoint shows it.
    let db = rusqlite::Connection::open(dir.path().join("hub.db")).unwrap();
    let bobs: u64 = db.query_row("SELECT seq FROM audit WHERE subject = 'bob'", [], |r| r.get(0)).unwrap();
    db.execute_batch(&format!(
        "DELETE FROM audit WHERE seq > {bobs}; DELETE FROM records WHERE namespace = 'audit.checkpoints';"
    ))
    .unwrap();
    let (ok, out) = verify_offline(dir.path(), &key, &[]);
    assert!(ok, "without the exported checkpoint the shortened log is consistent: {out}");
    let (ok, out) = verify_offline(dir.path(), &key, &[&checkpoint_file]);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("entries {} to {covered} were removed", bobs + 1)), "{out}");

    // And an edit in the middle: Bob's refusal turned into an allowed read.
    db.execute(&format!("UPDATE audit SET body = replace(body, '\"denied\"', '\"allowed\"') WHERE seq = {bobs}"), [])
        .unwrap();
    let (ok, out) = verify_offline(dir.path(), &key, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("entry {bobs} was altered")), "{out}");
}
