//! The model through the API: first sight, type enforcement, SET/ACT rules, model documents, history paging
//! and downsampling, SenML, names with dots, and provider deletion.

mod common;

use axum::http::{Method, StatusCode};
use common::Hub;
use serde_json::{Value, json};

const LEVEL: &str = "/api/v1/providers/noise-12/services/sound/resources/level";

#[tokio::test]
async fn sensors_appear_on_first_sight_and_types_are_enforced() {
    let hub = Hub::new().await;
    let (s, v) = hub
        .ingest(&hub.admin, json!([{"provider": "noise-12", "service": "sound", "resource": "level", "value": 71.5, "timestamp": "2026-11-22T10:00:00Z"}]))
        .await;
    assert_eq!((s, v["accepted"].clone()), (StatusCode::OK, json!(1)));
    let (s, r) = hub.get(LEVEL, &hub.admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["kind"], "sensor");
    assert_eq!(r["type"], "number");
    assert_eq!(r["value"], 71.5);
    assert_eq!(r["timestamp"], "2026-11-22T10:00:00Z");
    let (_, p) = hub.get("/api/v1/providers/noise-12", &hub.admin).await;
    assert_eq!(p["services"]["admin"]["resources"]["status"]["value"], "online");
    assert_eq!(p["services"]["admin"]["resources"]["last_seen"]["value"], "2026-11-22T10:00:00Z");

    // A string to a number resource: refused, names the update, and nothing else in the batch is applied.
    let (s, problem) = hub
        .ingest(
            &hub.admin,
            json!([
                {"provider": "noise-12", "service": "sound", "resource": "peak", "value": 90},
                {"provider": "noise-12", "service": "sound", "resource": "level", "value": "loud"}
            ]),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["field"], "updates[1]");
    assert!(problem["detail"].as_str().unwrap().contains("expected a value of type number"), "{problem}");
    assert_eq!(hub.get(LEVEL, &hub.admin).await.1["value"], 71.5);
    let peak = "/api/v1/providers/noise-12/services/sound/resources/peak";
    assert_eq!(hub.get(peak, &hub.admin).await.0, StatusCode::NOT_FOUND);
    // Two different types for one new resource in one batch are refused too.
    let (s, _) = hub
        .ingest(
            &hub.admin,
            json!([
                {"provider": "n2", "service": "s", "resource": "r", "value": 1},
                {"provider": "n2", "service": "s", "resource": "r", "value": true}
            ]),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(hub.get("/api/v1/providers/n2", &hub.admin).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn model_documents_set_and_act() {
    let hub = Hub::new().await;
    let doc = json!({"services": {
        "admin": {"resources": {"friendly_name": {"value": "Lamp on Calle Real"},
                                "location": {"value": {"type": "Point", "coordinates": [-3.81, 43.46]}}}},
        "light": {"resources": {
            "on": {"kind": "state", "type": "boolean", "value": false},
            "lux": {"kind": "sensor", "type": "number", "unit": "lx", "metadata": {"accuracy": 0.5}},
            "blink": {"kind": "action", "type": "object", "parameters": {"times": "integer"}}
        }}
    }});
    let (s, p) = hub.send_json(Method::PUT, "/api/v1/providers/lamp.7", &hub.admin, doc).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["services"]["light"]["resources"]["lux"]["unit"], "lx");
    assert_eq!(p["services"]["light"]["resources"]["lux"]["metadata"]["accuracy"]["value"], 0.5);
    assert!(p["services"]["light"]["resources"]["lux"]["metadata"]["accuracy"]["timestamp"].is_string());

    let on = "/api/v1/providers/lamp.7/services/light/resources/on";
    let (s, v) = hub.send_json(Method::PUT, on, &hub.admin, json!({"value": true})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(hub.get(on, &hub.admin).await.1["value"], true);
    let (s, _) = hub.send_json(Method::PUT, on, &hub.admin, json!({"value": "yes"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let lux = "/api/v1/providers/lamp.7/services/light/resources/lux";
    let (s, problem) = hub.send_json(Method::PUT, lux, &hub.admin, json!({"value": 3})).await;
    assert_eq!(s, StatusCode::CONFLICT, "SET on a sensor: {problem}");

    let blink = "/api/v1/providers/lamp.7/services/light/resources/blink/act";
    let (s, problem) = hub.send_json(Method::POST, blink, &hub.admin, json!({"params": {"times": 2}})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no adapter owns lamp.7 yet: {problem}");
    assert!(problem["detail"].as_str().unwrap().contains("no owner"));
    let (s, _) = hub.send_json(Method::POST, blink, &hub.admin, json!({"params": {"times": "two"}})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = hub.send_json(Method::POST, &on.replace("/on", "/on/act"), &hub.admin, json!({"params": {}})).await;
    assert_eq!(s, StatusCode::CONFLICT, "ACT on a state");

    let (_, list) = hub.get("/api/v1/providers?bbox=-4,43,-3,44", &hub.admin).await;
    assert_eq!(list["providers"].as_array().unwrap().len(), 1);
    let (_, list) = hub.get("/api/v1/providers?bbox=139,35,140,36", &hub.admin).await;
    assert_eq!(list["providers"].as_array().unwrap().len(), 0);
    let (_, list) = hub.get("/api/v1/providers?resource=lu*", &hub.admin).await;
    assert_eq!(list["providers"].as_array().unwrap().len(), 1);
    let (_, list) = hub.get("/api/v1/providers?service=heat", &hub.admin).await;
    assert_eq!(list["providers"].as_array().unwrap().len(), 0);

    // Redeclaring with another type is a 422 and changes nothing.
    let (s, _) = hub
        .send_json(
            Method::PUT,
            "/api/v1/providers/lamp.7",
            &hub.admin,
            json!({"services": {"light": {"resources": {"on": {"type": "string"}}}}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(hub.get(on, &hub.admin).await.1["type"], "boolean");
}

async fn ingest_series(hub: &Hub, provider: &str, n: usize) {
    let updates: Vec<Value> = (0..n)
        .map(|i| {
            json!({"provider": provider, "service": "sound", "resource": "level", "value": i as f64,
                   "timestamp": format!("2026-11-22T10:{:02}:{:02}Z", i / 60, i % 60)})
        })
        .collect();
    // The test hub limits bodies to 64 KiB: send the series in chunks.
    for chunk in updates.chunks(200) {
        let (s, v) = hub.ingest(&hub.admin, json!(chunk)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

#[tokio::test]
async fn history_pages_with_cursors_and_downsamples() {
    let hub = Hub::new().await;
    ingest_series(&hub, "noise-12", 600).await;
    let mut seen = Vec::new();
    let mut uri = format!("{LEVEL}/history?limit=250");
    loop {
        let (s, page) = hub.get(&uri, &hub.admin).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        seen.extend(page["points"].as_array().unwrap().iter().map(|p| p["value"].as_f64().unwrap() as usize));
        match page["next"].as_str() {
            Some(next) => uri = format!("{LEVEL}/history?limit=250&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, (0..600).collect::<Vec<_>>());

    let (_, page) = hub
        .get(
            &format!("{LEVEL}/history?order=desc&limit=3&from=2026-11-22T10:01:00Z&to=2026-11-22T10:02:00Z"),
            &hub.admin,
        )
        .await;
    let values: Vec<f64> = page["points"].as_array().unwrap().iter().map(|p| p["value"].as_f64().unwrap()).collect();
    assert_eq!(values, [119.0, 118.0, 117.0]);

    let (s, b) = hub.get(&format!("{LEVEL}/history?every=1m&agg=avg"), &hub.admin).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let buckets = b["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 10);
    assert_eq!(buckets[0]["value"].as_f64().unwrap(), 29.5);
    assert_eq!(buckets[0]["count"], 60);
    assert_eq!(buckets[9]["start"], "2026-11-22T10:09:00Z");
    let (_, b) = hub.get(&format!("{LEVEL}/history?every=5m&agg=max"), &hub.admin).await;
    let maxes: Vec<f64> = b["buckets"].as_array().unwrap().iter().map(|b| b["value"].as_f64().unwrap()).collect();
    assert_eq!(maxes, [299.0, 599.0]);
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_changes_nothing() {
    let hub = Hub::new().await;
    ingest_series(&hub, "noise-12", 3).await;
    let big = "x".repeat(70 * 1024);
    type Case<'a> = (Method, String, (&'a str, Vec<u8>), StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (Method::POST, "/api/v1/ingest".into(), ("application/json", b"{not json".to_vec()), StatusCode::BAD_REQUEST, "body"),
        (Method::POST, "/api/v1/ingest".into(), ("application/json", br#"{"updates": [{"provider": "p"}]}"#.to_vec()), StatusCode::BAD_REQUEST, "updates[0]"),
        (Method::POST, "/api/v1/ingest".into(), ("application/json", br#"{"updates": [{"provider": "a b", "service": "s", "resource": "r", "value": 1}]}"#.to_vec()), StatusCode::BAD_REQUEST, "updates[0].provider"),
        (Method::POST, "/api/v1/ingest".into(), ("application/json", br#"{"updates": [{"provider": "p", "service": "s", "resource": "r", "value": null}]}"#.to_vec()), StatusCode::BAD_REQUEST, "updates[0].value"),
        (Method::POST, "/api/v1/ingest".into(), ("application/json", br#"{"updates": [{"provider": "p", "service": "s", "resource": "r", "value": 1, "timestamp": "noon"}]}"#.to_vec()), StatusCode::BAD_REQUEST, "updates[0].timestamp"),
        (Method::POST, "/api/v1/ingest".into(), ("application/json", br#"{"updates": []}"#.to_vec()), StatusCode::BAD_REQUEST, "updates"),
        (Method::POST, "/api/v1/ingest".into(), ("application/json", br#"{"updates": [], "extra": 1}"#.to_vec()), StatusCode::BAD_REQUEST, "extra"),
        (Method::POST, "/api/v1/ingest".into(), ("application/json", format!(r#"{{"updates": [{{"provider": "p", "service": "s", "resource": "r", "value": "{big}"}}]}}"#).into_bytes()), StatusCode::PAYLOAD_TOO_LARGE, ""),
        (Method::POST, "/api/v1/ingest".into(), ("text/xml", b"<a/>".to_vec()), StatusCode::UNSUPPORTED_MEDIA_TYPE, ""),
        (Method::POST, "/api/v1/ingest".into(), ("application/senml+json", br#"[{"n": "p/s", "v": 1}]"#.to_vec()), StatusCode::BAD_REQUEST, "[0].n"),
        (Method::POST, "/api/v1/ingest".into(), ("application/senml+json", br#"[{"n": "p/s/r"}]"#.to_vec()), StatusCode::BAD_REQUEST, "[0].v"),
        (Method::PUT, "/api/v1/providers/noise-12".into(), ("application/json", br#"{"services": {"s": {"resources": {"r": {"kind": "gizmo"}}}}}"#.to_vec()), StatusCode::BAD_REQUEST, "services.s.resources.r.kind"),
        (Method::PUT, "/api/v1/providers/noise-12".into(), ("application/json", br#"{"servics": {}}"#.to_vec()), StatusCode::BAD_REQUEST, "servics"),
        (Method::PUT, LEVEL.to_string(), ("application/json", br#"{"valu": 1}"#.to_vec()), StatusCode::BAD_REQUEST, "valu"),
    ];
    for (method, uri, body, want, field) in cases {
        let (status, problem, ct) = hub.call(method.clone(), &uri, Some(&hub.admin), Some(body)).await;
        assert_eq!(status, want, "{method} {uri}: {problem}");
        assert_eq!(ct, "application/problem+json", "{method} {uri}");
        assert_eq!(problem["status"], want.as_u16());
        if !field.is_empty() {
            assert_eq!(problem["field"], field, "{method} {uri}: {problem}");
        }
    }
    let gets: Vec<(String, StatusCode, &str)> = vec![
        ("/api/v1/providers/bad%20name".into(), StatusCode::BAD_REQUEST, "provider"),
        ("/api/v1/providers/..".into(), StatusCode::BAD_REQUEST, "provider"),
        ("/api/v1/providers?bbox=1,2,3".into(), StatusCode::BAD_REQUEST, "bbox"),
        ("/api/v1/providers?colour=red".into(), StatusCode::BAD_REQUEST, "colour"),
        (format!("{LEVEL}/history?from=yesterday"), StatusCode::BAD_REQUEST, "from"),
        (format!("{LEVEL}/history?from=2026-11-23T00:00:00Z&to=2026-11-22T00:00:00Z"), StatusCode::BAD_REQUEST, "to"),
        (format!("{LEVEL}/history?limit=0"), StatusCode::BAD_REQUEST, "limit"),
        (format!("{LEVEL}/history?limit=100001"), StatusCode::BAD_REQUEST, "limit"),
        (format!("{LEVEL}/history?order=up"), StatusCode::BAD_REQUEST, "order"),
        (format!("{LEVEL}/history?cursor=garbage"), StatusCode::BAD_REQUEST, "cursor"),
        (format!("{LEVEL}/history?every=often"), StatusCode::BAD_REQUEST, "every"),
        (format!("{LEVEL}/history?every=5m&agg=median"), StatusCode::BAD_REQUEST, "agg"),
        ("/api/v1/nowhere".into(), StatusCode::NOT_FOUND, ""),
        ("/elsewhere".into(), StatusCode::NOT_FOUND, ""),
    ];
    for (uri, want, field) in gets {
        let (status, problem, ct) = hub.call(Method::GET, &uri, Some(&hub.admin), None).await;
        assert_eq!(status, want, "GET {uri}: {problem}");
        assert_eq!(ct, "application/problem+json", "GET {uri}");
        if !field.is_empty() {
            assert_eq!(problem["field"], field, "GET {uri}: {problem}");
        }
    }
    let (status, _, ct) = hub.call(Method::PATCH, LEVEL, Some(&hub.admin), None).await;
    assert_eq!((status, ct.as_str()), (StatusCode::METHOD_NOT_ALLOWED, "application/problem+json"));
    // Nothing changed and the hub still serves.
    let (_, page) = hub.get(&format!("{LEVEL}/history"), &hub.admin).await;
    assert_eq!(page["points"].as_array().unwrap().len(), 3);
    assert_eq!(hub.get("/api/v1/healthz", &hub.admin).await.0, StatusCode::OK);
    let (_, list) = hub.get("/api/v1/providers", &hub.admin).await;
    assert_eq!(list["providers"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn senml_packs_are_ingested() {
    let hub = Hub::new().await;
    let pack = br#"[{"bn": "air.9/quality/", "bt": 1.7e9, "n": "pm10", "v": 12.5, "u": "ug/m3"},
                    {"n": "pm10", "t": 60, "v": 14},
                    {"n": "label", "vs": "Plaza"}]"#;
    let (s, v, _) = hub
        .call(Method::POST, "/api/v1/ingest", Some(&hub.admin), Some(("application/senml+json", pack.to_vec())))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["accepted"], 3);
    let (_, page) = hub.get("/api/v1/providers/air.9/services/quality/resources/pm10/history", &hub.admin).await;
    let points = page["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[1]["timestamp"], "2023-11-14T22:14:20Z");
    assert_eq!(points[1]["value"], 14.0);
}

#[tokio::test]
async fn names_with_dots_work_everywhere_and_providers_can_be_deleted() {
    let hub = Hub::new().await;
    let base = "/api/v1/providers/site.a/services/env.v2/resources/temp.c";
    let (s, _) = hub
        .ingest(&hub.admin, json!([{"provider": "site.a", "service": "env.v2", "resource": "temp.c", "value": 21.5}]))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(hub.get(base, &hub.admin).await.1["value"], 21.5);
    assert_eq!(hub.get(&format!("{base}/history"), &hub.admin).await.1["points"][0]["value"], 21.5);
    let (_, list) = hub.get("/api/v1/providers?provider=site.*&service=env.v2&resource=temp.c", &hub.admin).await;
    assert_eq!(list["providers"][0]["name"], "site.a");
    let (_, list) = hub.get("/api/v1/providers?provider=siteXa", &hub.admin).await;
    assert_eq!(list["providers"].as_array().unwrap().len(), 0, "dots are literal in filters");

    let (s, _, _) = hub.call(Method::DELETE, "/api/v1/providers/site.a", Some(&hub.admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(hub.get(base, &hub.admin).await.0, StatusCode::NOT_FOUND);
    assert_eq!(hub.get("/api/v1/providers/site.a", &hub.admin).await.0, StatusCode::NOT_FOUND);
    let path = "site.a/env.v2/temp.c".parse().unwrap();
    let page = hub
        .state
        .twin
        .store()
        .history(hub_store::HistoryQuery {
            path,
            from: None,
            to: None,
            limit: 10,
            order: hub_store::Order::Asc,
            cursor: None,
        })
        .await
        .unwrap();
    assert!(page.points.is_empty(), "history deleted with the provider");
    let (s, _, _) = hub.call(Method::DELETE, "/api/v1/providers/site.a", Some(&hub.admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Data arriving later creates it afresh.
    hub.ingest(&hub.admin, json!([{"provider": "site.a", "service": "env.v2", "resource": "temp.c", "value": "warm"}]))
        .await;
    assert_eq!(hub.get(base, &hub.admin).await.1["type"], "string");
}

#[tokio::test]
async fn readers_see_only_what_they_may_read() {
    let hub = Hub::new().await;
    hub.ingest(
        &hub.admin,
        json!([
            {"provider": "noise-1", "service": "sound", "resource": "level", "value": 50},
            {"provider": "cam-1", "service": "people", "resource": "count", "value": 3}
        ]),
    )
    .await;
    let reader = hub.token("rita", &["reader"]);
    let (_, list) = hub.get("/api/v1/providers", &reader).await;
    let names: Vec<&str> = list["providers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["noise-1"]);
    assert_eq!(hub.get("/api/v1/providers/cam-1", &reader).await.0, StatusCode::FORBIDDEN);
    let (s, _) = hub
        .ingest(&reader, json!([{"provider": "noise-1", "service": "sound", "resource": "level", "value": 1}]))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let writer = hub.token("wes", &["writer"]);
    let (s, _) = hub
        .ingest(
            &writer,
            json!([
                {"provider": "noise-1", "service": "sound", "resource": "level", "value": 1},
                {"provider": "cam-1", "service": "people", "resource": "count", "value": 1}
            ]),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "one denied update refuses the batch");
    assert_eq!(hub.get("/api/v1/providers/noise-1/services/sound/resources/level", &hub.admin).await.1["value"], 50);
}
