//! What auditing costs a read: the release `hub serve` answers `GET` on one resource of personal data (each
//! read recorded in the audit log) and on an identical resource without a data class (not recorded), from
//! concurrent clients for a fixed time each, alternating, twice. The hub and the clients share the machine's
//! cores.
//!
//! Run: `cargo bench -p hub-e2e --bench audit`. Prints reads/s for both and the difference; asserts nothing
//! about speed, and checks that every personal read was recorded and the log verifies.

use std::time::{Duration, Instant};

use hub_e2e::{HubProcess, Launch, client};
use serde_json::{Value, json};

const CLIENTS: usize = 8;
const SECONDS: u64 = 5;

async fn reads_per_second(base: &str, token: &str, path: &str) -> (f64, u64) {
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, token) = (format!("{base}{path}"), token.to_owned());
            tokio::spawn(async move {
                let http = client();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let res = http.get(&url).bearer_auth(&token).send().await.unwrap();
                    assert_eq!(res.status(), 200);
                    res.bytes().await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    (total as f64 / started.elapsed().as_secs_f64(), total)
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(Launch::new(dir.path())).await.expect("starting the hub");
    let http = client();
    for (provider, metadata) in
        [("care-1", json!({"data_class": "personal", "owner": "carol"})), ("plain-1", json!({"owner": "carol"}))]
    {
        let model = json!({"services": {"vitals": {"resources": {"pulse": {
            "kind": "sensor", "type": "number", "value": 71, "metadata": metadata}}}}});
        let res = http
            .put(format!("{}/api/v1/providers/{provider}", hub.base))
            .bearer_auth(&hub.admin)
            .json(&model)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // Carol may read both: the first as its owner, the second through a permission.
    let policy = format!("{}\np, carol, plain-1/*, read\n", hub_policy::DEFAULT_POLICY);
    assert_eq!(hub.put_policy(&policy).await.unwrap(), 204);
    let (status, body) = hub.post("/api/v1/tokens", &json!({"subject": "carol", "roles": []})).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let carol = body["token"].as_str().unwrap().to_owned();

    let personal = "/api/v1/providers/care-1/services/vitals/resources/pulse";
    let plain = "/api/v1/providers/plain-1/services/vitals/resources/pulse";
    reads_per_second(&hub.base, &carol, plain).await; // warm-up
    let mut audited_reads = 0;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let (rate, n) = reads_per_second(&hub.base, &carol, personal).await;
        with.push(rate);
        audited_reads += n;
        without.push(reads_per_second(&hub.base, &carol, plain).await.0);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (with, without) = (mean(&with), mean(&without));
    println!("| reads | reads/s ({CLIENTS} clients, 2 × {SECONDS} s each) |");
    println!("|---|---|");
    println!("| personal data, each read audited | {with:.0} |");
    println!("| the same resource unclassified, not audited | {without:.0} |");
    println!("| cost of auditing | {:.1} % |", (1.0 - with / without) * 100.0);

    let (status, report): (u16, Value) = hub.get("/api/v1/audit/verify").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(report["ok"], true, "{report}");
    let entries = report["entries"].as_u64().unwrap();
    // Every personal read is in the log: one entry each, or one per burst of identical reads with its count.
    let (mut recorded, mut read_entries, mut after) = (0u64, 0u64, 0u64);
    loop {
        let (status, page): (u16, Value) =
            hub.get(&format!("/api/v1/audit?action=read&object=care-1/*&limit=1000&after={after}")).await.unwrap();
        assert_eq!(status, 200, "{page}");
        for entry in page["entries"].as_array().unwrap() {
            let detail = entry["detail"].as_str().unwrap_or_default();
            let count = detail.split('×').nth(1).and_then(|rest| rest.split(',').next()?.parse().ok()).unwrap_or(1);
            recorded += count;
            read_entries += 1;
        }
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(recorded, audited_reads, "every personal read is recorded");
    println!(
        "\naudit log: {entries} entries, verified: {}; {audited_reads} personal reads recorded in {read_entries} entries",
        report["ok"]
    );
    hub.stop().unwrap();
}
