//! SSE and WebSocket streams over a real socket: filtering by glob and by permission, names with dots,
//! deletions, and a policy change cutting a stream's view at once.

mod common;

use std::time::Duration;

use common::{Hub, SseReader, serve};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_carries_only_matching_and_permitted_updates() {
    let hub = Hub::new().await;
    hub.ingest(
        &hub.admin,
        json!([
            {"provider": "noise-1", "service": "sound", "resource": "level", "value": 1},
            {"provider": "cam.1", "service": "people", "resource": "count", "value": 1}
        ]),
    )
    .await;
    let addr = serve(&hub).await;
    let reader_token = hub.token("rita", &["reader"]);
    let nobody = hub.token("nobody", &[]);
    assert_eq!(SseReader::open(&addr, "", &nobody).await.err(), Some(reqwest::StatusCode::FORBIDDEN));

    let mut reader = SseReader::open(&addr, "", &reader_token).await.unwrap();
    let mut dotted = SseReader::open(&addr, "provider=cam.*&resource=count", &hub.admin).await.unwrap();
    let (s, v) = hub
        .ingest(
            &hub.admin,
            json!([
                {"provider": "cam.1", "service": "people", "resource": "count", "value": 7},
                {"provider": "noise-1", "service": "sound", "resource": "level", "value": 55}
            ]),
        )
        .await;
    assert_eq!(s, axum::http::StatusCode::OK, "{v}");
    let (kind, ev) = reader.next_event().await;
    assert_eq!(kind, "update");
    assert_eq!(
        (ev["provider"].as_str(), ev["value"].as_i64()),
        (Some("noise-1"), Some(55)),
        "the reader never sees cam.1"
    );
    let (_, ev) = dotted.next_event().await;
    assert_eq!(
        (ev["provider"].as_str(), ev["resource"].as_str(), ev["value"].as_i64()),
        (Some("cam.1"), Some("count"), Some(7))
    );

    // The policy changes: the reader loses noise-1 at once, on the stream already open.
    hub.state.policy.replace("p, admin, *, *\np, reader, noise-2/*, read\n").await.unwrap();
    hub.ingest(
        &hub.admin,
        json!([
            {"provider": "noise-1", "service": "sound", "resource": "level", "value": 56},
            {"provider": "noise-2", "service": "sound", "resource": "level", "value": 1}
        ]),
    )
    .await;
    let (_, ev) = reader.next_event().await;
    assert_eq!(ev["provider"], "noise-2", "noise-1's update must not reach the reader after the change: {ev}");

    // Deletion is streamed to whoever may read the provider.
    let (s, _, _) = hub.call(axum::http::Method::DELETE, "/api/v1/providers/cam.1", Some(&hub.admin), None).await;
    assert_eq!(s, axum::http::StatusCode::NO_CONTENT);
    let (kind, ev) = dotted.next_event().await;
    assert_eq!((kind.as_str(), ev["provider"].as_str()), ("deleted", Some("cam.1")));
}

#[tokio::test]
async fn websocket_subscriptions_filter_by_glob_and_permission() {
    let hub = Hub::new().await;
    hub.ingest(&hub.admin, json!([{"provider": "noise-1", "service": "sound", "resource": "level", "value": 1}])).await;
    let addr = serve(&hub).await;
    let reader_token = hub.token("rita", &["reader"]);
    // The token travels as a query parameter, as browsers must send it.
    let req = format!("ws://{addr}/api/v1/ws?access_token={reader_token}").into_client_request().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text(json!({"op": "subscribe", "id": "s1", "provider": "*"}).to_string())).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    hub.ingest(
        &hub.admin,
        json!([
            {"provider": "cam-1", "service": "people", "resource": "count", "value": 4},
            {"provider": "noise-1", "service": "sound", "resource": "level", "value": 60}
        ]),
    )
    .await;
    let ev = next(&mut ws).await;
    assert_eq!(
        (ev["type"].as_str(), ev["subscription"].as_str(), ev["provider"].as_str()),
        (Some("update"), Some("s1"), Some("noise-1"))
    );
    ws.send(Message::text("{\"op\": \"dance\"}")).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "error");
    ws.send(Message::text(json!({"op": "unsubscribe", "id": "s1"}).to_string())).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "unsubscribed");

    let nobody = hub.token("nobody", &[]);
    let req = format!("ws://{addr}/api/v1/ws?access_token={nobody}").into_client_request().unwrap();
    assert!(tokio_tungstenite::connect_async(req).await.is_err(), "a subject with no read permission is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_the_token_expires() {
    let hub = Hub::new().await;
    hub.ingest(&hub.admin, json!([{"provider": "noise-1", "service": "sound", "resource": "level", "value": 1}])).await;
    let addr = serve(&hub).await;
    let soon = hub_model::Timestamp::now().as_micros() + 2_000_000;
    let token = hub.token_until("rita", &["reader"], Some(soon));

    let mut sse = SseReader::open(&addr, "provider=noise-*", &token).await.unwrap();
    let req = format!("ws://{addr}/api/v1/ws?access_token={token}").into_client_request().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text(json!({"op": "subscribe", "id": "s1"}).to_string())).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    hub.ingest(&hub.admin, json!([{"provider": "noise-1", "service": "sound", "resource": "level", "value": 2}])).await;
    assert_eq!(sse.next_event().await.0, "update");
    assert_eq!(next(&mut ws).await["type"], "update");

    // At the expiry both streams end: the event stream's body finishes, the socket gets a policy close.
    let ended = timeout(WAIT, async {
        while let Some(chunk) = sse.body.next().await {
            chunk.unwrap();
        }
    })
    .await;
    assert!(ended.is_ok(), "the event stream outlived its token");
    assert!(hub_model::Timestamp::now().as_micros() >= soon - 100_000, "ended before the expiry");
    let close = timeout(WAIT, ws.next()).await.expect("no close in time").unwrap().unwrap();
    match close {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1008);
            assert!(frame.reason.contains("expired"), "{}", frame.reason);
        }
        other => panic!("wanted a close frame, got {other:?}"),
    }
    // And the token opens nothing any more.
    assert_eq!(SseReader::open(&addr, "", &token).await.err(), Some(reqwest::StatusCode::UNAUTHORIZED));
}

async fn next<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let msg = timeout(WAIT, ws.next()).await.expect("no WebSocket message in time").unwrap().unwrap();
    serde_json::from_str::<Value>(msg.to_text().unwrap()).unwrap()
}
