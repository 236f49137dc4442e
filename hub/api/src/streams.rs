use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{
        Query, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code, rejection::WebSocketUpgradeRejection},
    },
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures::{Stream, StreamExt, stream};
use hub_bus::{Change, Event, Received, Subscription};
use hub_model::{Glob, Update};
use hub_policy::Action;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    ApiError, AppState,
    auth::{Caller, denied},
};

/// Which updates a stream carries: globs over provider, service and resource names.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    provider: Option<Glob>,
    service: Option<Glob>,
    resource: Option<Glob>,
}

impl Filter {
    fn from_query(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
        if let Some(unknown) =
            q.keys().find(|k| !["provider", "service", "resource", "access_token"].contains(&k.as_str()))
        {
            return Err(ApiError::bad_request(
                unknown.clone(),
                "unknown query parameter; accepted: provider, service, resource",
            ));
        }
        Ok(Filter {
            provider: q.get("provider").map(|g| Glob::new(g)),
            service: q.get("service").map(|g| Glob::new(g)),
            resource: q.get("resource").map(|g| Glob::new(g)),
        })
    }

    fn matches(&self, u: &hub_model::ResourcePath) -> bool {
        self.provider.as_ref().is_none_or(|g| g.matches(u.provider.as_str()))
            && self.service.as_ref().is_none_or(|g| g.matches(u.service.as_str()))
            && self.resource.as_ref().is_none_or(|g| g.matches(u.resource.as_str()))
    }

    fn matches_provider(&self, name: &str) -> bool {
        self.provider.as_ref().is_none_or(|g| g.matches(name))
    }
}

/// A stream is allowed when the caller may read at least one existing resource it selects (or, on a hub
/// with nothing selected yet, when the caller is authenticated). Events are then filtered one by one.
fn gate(state: &AppState, caller: &Caller, filter: &Filter) -> Result<(), ApiError> {
    let mut selected_any = false;
    let readable = state.twin.any_resource(|path| {
        if !filter.matches(path) {
            return false;
        }
        selected_any = true;
        state.policy.check(&caller.0, &path.to_string(), Action::Read)
    });
    if readable || (!selected_any && !caller.is_anonymous()) {
        Ok(())
    } else {
        Err(denied(caller, "the selected resources", Action::Read))
    }
}

fn update_json(u: &Update) -> Value {
    json!({
        "provider": u.path.provider,
        "service": u.path.service,
        "resource": u.path.resource,
        "value": u.value,
        "timestamp": u.timestamp,
    })
}

/// Whether a stream may deliver a value of `object`. The first delivery of personal or confidential data on a
/// stream is recorded in the audit log (`noted` holds what this stream has recorded).
fn stream_may_read(state: &AppState, caller: &Caller, object: &str, noted: &mut HashSet<String>) -> bool {
    let (allowed, labels) = state.policy.decide(&caller.0, object, Action::Read);
    if allowed && crate::audit::audited_class(&labels).is_some() && !noted.contains(object) {
        noted.insert(object.to_owned());
        crate::audit::note_read(state, caller, object, allowed, &labels);
    }
    allowed
}

/// What one bus event means for one subscriber: the JSON messages it may see, tagged with an event type.
fn visible_messages(
    state: &AppState,
    caller: &Caller,
    filter: &Filter,
    event: &Event,
    noted: &mut HashSet<String>,
) -> Vec<(&'static str, Value)> {
    match &event.change {
        Change::Updates(updates) => updates
            .iter()
            .filter(|u| filter.matches(&u.path) && stream_may_read(state, caller, &u.path.to_string(), noted))
            .map(|u| ("update", update_json(u)))
            .collect(),
        Change::ProviderDeleted(name) | Change::ModelChanged(name)
            if filter.matches_provider(name.as_str()) && state.policy.check(&caller.0, name.as_str(), Action::Read) =>
        {
            let kind = if matches!(event.change, Change::ProviderDeleted(_)) { "deleted" } else { "model" };
            vec![(kind, json!({ "provider": name }))]
        }
        Change::Published { source, topic, payload }
            if state.policy.check(&caller.0, &format!("event:{topic}"), Action::Read) =>
        {
            vec![("published", json!({ "source": source, "topic": topic, "payload": payload }))]
        }
        _ => Vec::new(),
    }
}

struct OpenStream(Arc<crate::Metrics>);

impl OpenStream {
    fn new(metrics: Arc<crate::Metrics>) -> Self {
        metrics.streams_open.inc();
        OpenStream(metrics)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.streams_open.dec();
    }
}

/// Server-Sent Events of updates (`update`), model changes (`model`), deletions (`deleted`) and drops
/// (`lagged`), filtered by globs and by what the caller may read. Event ids are bus sequence numbers.
#[utoipa::path(get, path = "/api/v1/events", tag = "streams",
    params(("provider" = Option<String>, Query, description = "glob"), ("service" = Option<String>, Query, description = "glob"),
           ("resource" = Option<String>, Query, description = "glob"),
           ("access_token" = Option<String>, Query, description = "for clients that cannot send headers")),
    responses((status = 200, description = "text/event-stream"), (status = 400), (status = 401), (status = 403)))]
pub async fn sse(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let filter = Filter::from_query(&q)?;
    gate(&state, &caller, &filter)?;
    let sub = state.twin.bus().subscribe();
    let guard = OpenStream::new(state.metrics.clone());
    let shutdown = state.shutdown.clone().cancelled_owned();
    let expiry = caller.expiry();
    let noted = HashSet::new();
    let events = stream::unfold(
        (sub, state, caller, filter, guard, noted),
        |(mut sub, state, caller, filter, guard, mut noted)| async move {
            let batch: Vec<SseEvent> = match sub.recv().await {
                Received::Event(event) => visible_messages(&state, &caller, &filter, &event, &mut noted)
                    .into_iter()
                    .map(|(kind, data)| {
                        SseEvent::default().event(kind).id(event.seq.to_string()).data(data.to_string())
                    })
                    .collect(),
                Received::Lagged(n) => {
                    state.metrics.stream_events_dropped.inc_by(n);
                    vec![SseEvent::default().event("lagged").data(json!({ "dropped": n }).to_string())]
                }
                Received::Closed => return None,
            };
            Some((stream::iter(batch.into_iter().map(Ok)), (sub, state, caller, filter, guard, noted)))
        },
    )
    .flatten()
    .take_until(shutdown)
    .take_until(expiry);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum ClientMessage {
    Subscribe { id: String, provider: Option<String>, service: Option<String>, resource: Option<String> },
    Unsubscribe { id: String },
}

/// Most subscriptions one WebSocket may hold.
const MAX_WS_SUBSCRIPTIONS: usize = 64;

/// WebSocket: send `{"op": "subscribe", "id", "provider"?, "service"?, "resource"?}` or
/// `{"op": "unsubscribe", "id"}`; receive `{"type": "update", "subscription", ...}` events.
#[utoipa::path(get, path = "/api/v1/ws", tag = "streams",
    params(("access_token" = Option<String>, Query, description = "for clients that cannot send headers")),
    responses((status = 101, description = "switching protocols"), (status = 401), (status = 403)))]
pub async fn ws(
    State(state): State<AppState>,
    caller: Caller,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    gate(&state, &caller, &Filter::default())?;
    let upgrade = upgrade
        .map_err(|e| ApiError::bad_request("upgrade", format!("not a WebSocket handshake: {}", e.body_text())))?;
    Ok(upgrade.on_upgrade(move |socket| serve_ws(socket, state, caller)).into_response())
}

async fn serve_ws(mut socket: WebSocket, state: AppState, caller: Caller) {
    let _guard = OpenStream::new(state.metrics.clone());
    let mut sub: Subscription = state.twin.bus().subscribe();
    let mut subscriptions: HashMap<String, Filter> = HashMap::new();
    let mut noted = HashSet::new();
    let shutdown = state.shutdown.clone();
    let expiry = caller.expiry();
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            _ = &mut expiry => {
                let frame = CloseFrame { code: close_code::POLICY, reason: "the token has expired".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            }
            incoming = socket.recv() => {
                let reply = match incoming {
                    Some(Ok(Message::Text(text))) => handle_client(&text, &mut subscriptions),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                if socket.send(Message::Text(reply.to_string().into())).await.is_err() {
                    return;
                }
            }
            received = sub.recv() => {
                let messages: Vec<Value> = match received {
                    Received::Event(event) => subscriptions
                        .iter()
                        .flat_map(|(id, filter)| {
                            let seq = event.seq;
                            visible_messages(&state, &caller, filter, &event, &mut noted).into_iter().map(move |(kind, mut data)| {
                                if let Some(obj) = data.as_object_mut() {
                                    obj.insert("type".into(), json!(kind));
                                    obj.insert("subscription".into(), json!(id));
                                    obj.insert("seq".into(), json!(seq));
                                }
                                data
                            })
                        })
                        .collect(),
                    Received::Lagged(n) => {
                        state.metrics.stream_events_dropped.inc_by(n);
                        vec![json!({ "type": "lagged", "dropped": n })]
                    }
                    Received::Closed => return,
                };
                for m in messages {
                    if socket.send(Message::Text(m.to_string().into())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn handle_client(text: &str, subscriptions: &mut HashMap<String, Filter>) -> Value {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(ClientMessage::Subscribe { id, provider, service, resource }) => {
            if subscriptions.len() >= MAX_WS_SUBSCRIPTIONS && !subscriptions.contains_key(&id) {
                return json!({ "type": "error", "id": id, "message": format!("at most {MAX_WS_SUBSCRIPTIONS} subscriptions per socket") });
            }
            let filter = Filter {
                provider: provider.as_deref().map(Glob::new),
                service: service.as_deref().map(Glob::new),
                resource: resource.as_deref().map(Glob::new),
            };
            subscriptions.insert(id.clone(), filter);
            json!({ "type": "subscribed", "id": id })
        }
        Ok(ClientMessage::Unsubscribe { id }) => {
            let existed = subscriptions.remove(&id).is_some();
            json!({ "type": "unsubscribed", "id": id, "existed": existed })
        }
        Err(e) => json!({ "type": "error", "message": format!("bad message: {e}") }),
    }
}
