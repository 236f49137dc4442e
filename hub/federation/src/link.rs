//! One link: mirrors the providers a peer lets this hub read, live, resuming after a cut without gaps or
//! duplicates.
//!
//! A session opens the peer's event stream first, then takes the snapshot (`GET /providers`) and catches up each
//! resource from its cursor through the peer's history, then applies the stream. The cursor of a resource is the
//! timestamp of its newest imported value, which the local twin keeps durably: only values newer than it are
//! imported, so a value is imported once whether it arrives through the history, the stream, or both, and a
//! value written at the peer while the link was down is fetched from the history when the link comes back.
//! Events the stream carried while the snapshot was taken wait in the connection; if the peer had to drop
//! some (`lagged`), the link catches up from the history again.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use eventsource_stream::Eventsource;
use futures::{FutureExt, StreamExt};
use hub_identity::ClientCredentials;
use hub_model::{Glob, Name, ProviderDoc, ResourceDoc, ResourceKind, ResourcePath, ServiceDoc, Timestamp, Update};
use hub_store::{HistoryQuery, Order};
use hub_twin::Twin;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::{PeerAuth, PeerConfig};

/// Most updates imported in one transaction.
const MAX_BATCH: usize = 2_000;
/// How long the events that follow the first of a batch may take to arrive and join it. Each batch is one durable
/// commit; without the wait, events that trickle in over the socket make batches of a few events, and the link
/// spends its time waiting for commits.
const LINGER: Duration = Duration::from_millis(5);
/// Lag samples kept for the percentiles.
const LAG_SAMPLES: usize = 4_096;
/// Most history points asked for per page.
const HISTORY_PAGE: usize = 10_000;

/// Where a link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Opening the stream.
    Connecting,
    /// Taking the snapshot and catching up.
    Syncing,
    /// Applying the live stream.
    Connected,
    /// Waiting to try again after an error.
    Disconnected,
}

/// What `GET /api/v1/federation/peers` shows of a link.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// The peer's name.
    pub name: String,
    /// Its base URL.
    pub url: String,
    /// Its domain.
    pub domain: String,
    /// The local prefix of what it imports.
    pub prefix: String,
    /// The provider globs imported.
    pub import: Vec<String>,
    /// Where the link is.
    pub state: LinkState,
    /// Whether the live stream is being applied.
    pub connected: bool,
    /// Since when, if it is.
    pub connected_since: Option<Timestamp>,
    /// The last error, with its time.
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at: Option<Timestamp>,
    /// Providers imported so far (since start).
    pub providers: usize,
    /// Values imported (since start).
    pub updates: u64,
    /// Values received again and skipped, because their resource already had them.
    pub duplicates_skipped: u64,
    /// Sessions opened (since start).
    pub sessions: u64,
    /// Catch-ups from the peer's history.
    pub catch_ups: u64,
    /// Milliseconds from a value's timestamp to its import here, over the last 4096 live values.
    pub lag_ms: Lag,
}

/// Lag percentiles, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lag {
    /// The latest.
    pub last: Option<f64>,
    /// The median.
    pub p50: Option<f64>,
    /// The 99th percentile.
    pub p99: Option<f64>,
}

#[derive(Default)]
struct Counters {
    state: Option<LinkState>,
    connected_since: Option<Timestamp>,
    last_error: Option<(String, Timestamp)>,
    providers: std::collections::HashSet<String>,
    updates: u64,
    duplicates: u64,
    sessions: u64,
    catch_ups: u64,
    lags: VecDeque<f64>,
}

/// A link to one peer.
pub struct Link {
    config: PeerConfig,
    prefix: String,
    import: Vec<Glob>,
    auth: Auth,
    http: reqwest::Client,
    counters: Mutex<Counters>,
}

enum Auth {
    Credentials(ClientCredentials),
    Token(String),
}

impl Link {
    pub(crate) fn new(config: PeerConfig) -> Result<Link, String> {
        let auth = match config.auth().map_err(|e| format!("federation peer {}: {e}", config.name))? {
            PeerAuth::Credentials(c) => Auth::Credentials(
                ClientCredentials::new(c).map_err(|e| format!("federation peer {}: {e}", config.name))?,
            ),
            PeerAuth::Token(token) => Auth::Token(token),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(config.timeout_secs))
            .build()
            .map_err(|e| format!("federation peer {}: {e}", config.name))?;
        Ok(Link {
            prefix: config.prefix(),
            import: config.import.iter().map(|g| Glob::new(g)).collect(),
            config,
            auth,
            http,
            counters: Mutex::new(Counters::default()),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn base(&self) -> &str {
        self.config.url.trim_end_matches('/')
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.timeout_secs)
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The link's status.
    pub fn status(&self) -> PeerStatus {
        let c = self.counters();
        let mut lags: Vec<f64> = c.lags.iter().copied().collect();
        lags.sort_by(f64::total_cmp);
        let at = |q: f64| lags.get(((lags.len() as f64 - 1.0) * q).round() as usize).copied();
        let state = c.state.unwrap_or(LinkState::Connecting);
        PeerStatus {
            name: self.config.name.clone(),
            url: self.config.url.clone(),
            domain: self.config.domain().to_owned(),
            prefix: self.prefix.clone(),
            import: self.config.import.clone(),
            state,
            connected: state == LinkState::Connected,
            connected_since: c.connected_since,
            last_error: c.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at: c.last_error.as_ref().map(|(_, t)| *t),
            providers: c.providers.len(),
            updates: c.updates,
            duplicates_skipped: c.duplicates,
            sessions: c.sessions,
            catch_ups: c.catch_ups,
            lag_ms: Lag { last: c.lags.back().copied(), p50: at(0.5), p99: at(0.99) },
        }
    }

    fn set_state(&self, state: LinkState) {
        let mut c = self.counters();
        c.state = Some(state);
        c.connected_since = (state == LinkState::Connected).then(Timestamp::now);
    }

    /// A token the peer accepts.
    pub(crate) async fn token(&self) -> Result<String, String> {
        match &self.auth {
            Auth::Token(token) => Ok(token.clone()),
            Auth::Credentials(c) => c.access_token().await.map_err(|e| format!("no token for the peer: {e}")),
        }
    }

    /// Runs sessions until `cancel`, waiting longer after each failure (half a second, doubling, up to
    /// `reconnect_max_secs`; back to the start after a session that reached the live stream).
    pub(crate) async fn run(self: Arc<Self>, twin: Arc<Twin>, cancel: CancellationToken) {
        let max = Duration::from_secs(self.config.reconnect_max_secs);
        let mut wait = Duration::from_millis(500);
        loop {
            let mut session = Session { link: &self, twin: &twin, cursors: HashMap::new(), reached_live: false };
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                outcome = session.run() => outcome,
            };
            if session.reached_live {
                wait = Duration::from_millis(500);
            }
            let error = match outcome {
                Ok(()) => "the peer ended the event stream".to_owned(),
                Err(error) => error,
            };
            tracing::warn!(peer = %self.config.name, %error, retry_in = ?wait, "federation link interrupted");
            {
                let mut c = self.counters();
                c.state = Some(LinkState::Disconnected);
                c.connected_since = None;
                c.last_error = Some((error, Timestamp::now()));
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(max);
        }
    }

    /// The local name of a peer's provider, if the link imports it.
    fn local_name(&self, remote: &str) -> Option<Name> {
        if !self.import.iter().any(|g| g.matches(remote)) {
            return None;
        }
        Name::new(&format!("{}{remote}", self.prefix)).ok()
    }

    /// Sends a request to the peer and reads the whole answer, each within the timeout. `what` names the
    /// request in errors.
    pub(crate) async fn exchange(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, bytes::Bytes), String> {
        let response = tokio::time::timeout(self.timeout(), request.send())
            .await
            .map_err(|_| format!("{what}: no answer within {:?}", self.timeout()))?
            .map_err(|e| format!("{what}: {e}"))?;
        let status = response.status();
        let body = tokio::time::timeout(self.timeout(), response.bytes())
            .await
            .map_err(|_| format!("{what}: the body did not arrive within {:?}", self.timeout()))?
            .map_err(|e| format!("{what}: {e}"))?;
        Ok((status, body))
    }

    /// A request to the peer, authenticated, with the answer's JSON body.
    async fn get_json(&self, token: &str, path: &str) -> Result<Value, FetchError> {
        let what = format!("GET {path}");
        let request = self.http.get(format!("{}/api/v1{path}", self.base())).bearer_auth(token);
        let (status, body) = self.exchange(&what, request).await.map_err(FetchError::failed)?;
        if !status.is_success() {
            let message = format!("{what}: the peer answered {status}: {}", problem_detail(&body));
            return Err(FetchError { status: Some(status), message });
        }
        serde_json::from_slice(&body).map_err(|e| FetchError::failed(format!("{what}: not JSON: {e}")))
    }
}

/// Why a request to the peer brought no document: its refusal (with the status), or a failure on the way.
struct FetchError {
    status: Option<StatusCode>,
    message: String,
}

impl FetchError {
    fn failed(message: String) -> FetchError {
        FetchError { status: None, message }
    }

    /// Whether the peer answered with one of these statuses.
    fn is(&self, statuses: &[StatusCode]) -> bool {
        self.status.is_some_and(|s| statuses.contains(&s))
    }
}

impl From<FetchError> for String {
    fn from(e: FetchError) -> String {
        e.message
    }
}

/// What a link has imported for one resource: the newest timestamp, and the digests of the values imported at
/// exactly that time (several values of one resource may share a timestamp, e.g. those of one batch).
struct Cursor {
    at: Option<Timestamp>,
    seen: Vec<u64>,
}

impl Cursor {
    /// Whether an update is new: later than the cursor, or at its time with a value not imported yet. An older
    /// update, or the same value again at the same time, was imported already (or is late data: not imported).
    /// Moves the cursor over what it admits.
    fn admit(&mut self, update: &Update) -> bool {
        match self.at {
            Some(at) if update.timestamp < at => false,
            Some(at) if update.timestamp == at => {
                let digest = digest(&update.value);
                if self.seen.contains(&digest) {
                    return false;
                }
                self.seen.push(digest);
                true
            }
            _ => {
                self.at = Some(update.timestamp);
                self.seen.clear();
                self.seen.push(digest(&update.value));
                true
            }
        }
    }
}

/// A digest of a JSON value, computed from its serialisation without allocating it.
fn digest(value: &Value) -> u64 {
    struct HashWriter(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            std::hash::Hasher::write(&mut self.0, bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut writer = HashWriter(std::collections::hash_map::DefaultHasher::new());
    // Writing to a hasher cannot fail.
    let _ = serde_json::to_writer(&mut writer, value);
    std::hash::Hasher::finish(&writer.0)
}

/// The `detail` of a problem document, or the start of the body.
pub(crate) fn problem_detail(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

struct Session<'a> {
    link: &'a Link,
    twin: &'a Twin,
    /// Per local resource: what has been imported, read from the twin and the store on first use.
    cursors: HashMap<ResourcePath, Cursor>,
    reached_live: bool,
}

impl Session<'_> {
    async fn run(&mut self) -> Result<(), String> {
        let link = self.link;
        link.set_state(LinkState::Connecting);
        let token = link.token().await?;
        let filter = match link.config.import.as_slice() {
            [one] => format!("?provider={}", url::form_urlencoded::byte_serialize(one.as_bytes()).collect::<String>()),
            _ => String::new(),
        };
        let url = format!("{}/api/v1/events{filter}", link.base());
        let response = tokio::time::timeout(
            link.timeout(),
            link.http.get(&url).bearer_auth(&token).header(reqwest::header::ACCEPT, "text/event-stream").send(),
        )
        .await
        .map_err(|_| "the event stream did not open in time".to_owned())?
        .map_err(|e| format!("opening the event stream: {e}"))?;
        if response.status() != StatusCode::OK {
            let status = response.status();
            let body = response.bytes().await.unwrap_or_default();
            return Err(format!("the peer refused the event stream ({status}): {}", problem_detail(&body)));
        }
        let mut events = response.bytes_stream().eventsource();
        link.counters().sessions += 1;
        link.set_state(LinkState::Syncing);
        self.catch_up(&token).await?;
        link.set_state(LinkState::Connected);
        self.reached_live = true;
        tracing::info!(peer = %link.config.name, "federation link live");

        loop {
            let first = events.next().await;
            let linger_until = tokio::time::Instant::now() + LINGER;
            let mut pending = vec![first];
            while pending.len() < MAX_BATCH && matches!(pending.last(), Some(Some(Ok(_)))) {
                match events.next().now_or_never() {
                    Some(event) => pending.push(event),
                    None => match tokio::time::timeout_at(linger_until, events.next()).await {
                        Ok(event) => pending.push(event),
                        Err(_) => break,
                    },
                }
            }
            let mut batch = Vec::new();
            for event in pending {
                let event = match event {
                    None => {
                        self.import(std::mem::take(&mut batch), true).await?;
                        return Ok(());
                    }
                    Some(Err(e)) => {
                        self.import(std::mem::take(&mut batch), true).await?;
                        return Err(format!("the event stream failed: {e}"));
                    }
                    Some(Ok(event)) => event,
                };
                match event.event.as_str() {
                    "update" => {
                        if let Some(update) = self.update_of(&event.data) {
                            batch.push(update);
                        }
                    }
                    "model" | "deleted" | "lagged" => {
                        self.import(std::mem::take(&mut batch), true).await?;
                        let token = link.token().await?;
                        match event.event.as_str() {
                            "model" => self.model_changed(&token, &event.data).await?,
                            "deleted" => self.deleted(&event.data).await?,
                            _ => {
                                tracing::warn!(peer = %link.config.name, "the peer dropped events; catching up");
                                self.catch_up(&token).await?
                            }
                        }
                    }
                    _ => {}
                }
            }
            self.import(batch, true).await?;
        }
    }

    /// A streamed update as a local one, if the link imports it.
    fn update_of(&self, data: &str) -> Option<Update> {
        let v: Value = serde_json::from_str(data).ok()?;
        let provider = self.link.local_name(v.get("provider")?.as_str()?)?;
        let service = Name::new(v.get("service")?.as_str()?).ok()?;
        if service.as_str() == hub_model::ADMIN_SERVICE {
            return None;
        }
        let resource = Name::new(v.get("resource")?.as_str()?).ok()?;
        let timestamp = Timestamp::parse_rfc3339(v.get("timestamp")?.as_str()?).ok()?;
        Some(Update { path: ResourcePath::new(provider, service, resource), value: v.get("value")?.clone(), timestamp })
    }

    /// The cursor of a local resource: the twin's newest timestamp, and the values stored at exactly that time.
    async fn cursor(&mut self, path: &ResourcePath) -> Result<&mut Cursor, String> {
        if !self.cursors.contains_key(path) {
            let mut cursor = Cursor { at: self.twin.resource(path).and_then(|r| r.timestamp), seen: Vec::new() };
            if let Some(at) = cursor.at {
                let query = HistoryQuery {
                    path: path.clone(),
                    from: Some(at),
                    to: Some(Timestamp::from_micros(at.as_micros() + 1)),
                    limit: HISTORY_PAGE,
                    order: Order::Asc,
                    cursor: None,
                };
                let page = self.twin.store().history(query).await.map_err(|e| format!("reading {path}: {e}"))?;
                cursor.seen = page.points.iter().map(|p| digest(&p.value)).collect();
            }
            self.cursors.insert(path.clone(), cursor);
        }
        Ok(self.cursors.get_mut(path).expect("the cursor was just inserted"))
    }

    /// Imports the updates newer than their resource's cursor, in one transaction.
    async fn import(&mut self, updates: Vec<Update>, live: bool) -> Result<(), String> {
        let mut fresh = Vec::with_capacity(updates.len());
        let mut skipped = 0;
        for update in updates {
            if self.cursor(&update.path).await?.admit(&update) {
                fresh.push(update);
            } else {
                skipped += 1;
            }
        }
        // Kept for the counters: the providers (once per run of one provider) and, for live values, the times.
        let mut providers: Vec<Name> = Vec::new();
        let mut stamps: Vec<i64> = Vec::new();
        for u in &fresh {
            if providers.last() != Some(&u.path.provider) {
                providers.push(u.path.provider.clone());
            }
            if live {
                stamps.push(u.timestamp.as_micros());
            }
        }
        let imported = fresh.len() as u64;
        if !fresh.is_empty()
            && let Err(e) = self.twin.ingest_imported(fresh).await
        {
            // The cursors moved for values that were not stored: read them from the twin again.
            self.cursors.clear();
            return Err(format!("storing imported values: {e}"));
        }
        let now = Timestamp::now().as_micros();
        let mut c = self.link.counters();
        for provider in providers {
            if !c.providers.contains(provider.as_str()) {
                c.providers.insert(provider.to_string());
            }
        }
        c.updates += imported;
        c.duplicates += skipped;
        for stamp in stamps {
            if c.lags.len() == LAG_SAMPLES {
                c.lags.pop_front();
            }
            c.lags.push_back((now - stamp) as f64 / 1000.0);
        }
        Ok(())
    }

    /// The snapshot, and each resource caught up from its cursor.
    async fn catch_up(&mut self, token: &str) -> Result<(), String> {
        let listing = match self.link.get_json(token, "/providers").await {
            Ok(listing) => listing,
            // A peer that lets this hub read nothing (yet) answers 403 to the listing.
            Err(e) if e.is(&[StatusCode::FORBIDDEN]) => json!({ "providers": [] }),
            Err(e) => return Err(e.into()),
        };
        let providers = listing.get("providers").and_then(Value::as_array).cloned().unwrap_or_default();
        for provider in &providers {
            self.import_provider(token, provider).await?;
        }
        self.link.counters().catch_ups += 1;
        Ok(())
    }

    /// Declares one of the peer's providers here (kinds, types, units, metadata, and its origin) and imports the
    /// values it has that are newer than the cursors.
    async fn import_provider(&mut self, token: &str, provider: &Value) -> Result<(), String> {
        let Some(remote) = provider.get("name").and_then(Value::as_str) else { return Ok(()) };
        let Some(local) = self.link.local_name(remote) else { return Ok(()) };
        let services = provider.get("services").and_then(Value::as_object).cloned().unwrap_or_default();
        let mut doc = ProviderDoc::default();
        let mut latest: Vec<(ResourcePath, Timestamp, Value)> = Vec::new();
        for (service, body) in &services {
            // The admin service is each hub's own (status, last_seen): not imported.
            let Ok(service_name) = Name::new(service) else { continue };
            if service == hub_model::ADMIN_SERVICE {
                continue;
            }
            let resources = body.get("resources").and_then(Value::as_object).cloned().unwrap_or_default();
            let mut sdoc = ServiceDoc::default();
            for (resource, r) in &resources {
                let Ok(resource_name) = Name::new(resource) else { continue };
                let Some(rdoc) = self.resource_doc(remote, r) else { continue };
                let kind = rdoc.kind;
                sdoc.resources.insert(resource_name.clone(), rdoc);
                let timestamp =
                    r.get("timestamp").and_then(Value::as_str).and_then(|t| Timestamp::parse_rfc3339(t).ok());
                if let (Some(timestamp), Some(value)) = (timestamp, r.get("value"))
                    && !value.is_null()
                    && kind != Some(ResourceKind::Action)
                {
                    let path = ResourcePath::new(local.clone(), service_name.clone(), resource_name);
                    latest.push((path, timestamp, value.clone()));
                }
            }
            doc.services.insert(service_name, sdoc);
        }
        if !self.declared_alike(&local, &doc) {
            self.twin
                .put_provider_imported(local.clone(), &doc)
                .await
                .map_err(|e| format!("declaring {local}: {e}"))?;
        }
        self.link.counters().providers.insert(local.to_string());
        for (path, timestamp, value) in latest {
            let cursor = self.cursor(&path).await?;
            // The peer's current value imported already: nothing newer to fetch (values arrive in order).
            let current = cursor.at == Some(timestamp) && cursor.seen.contains(&digest(&value));
            match cursor.at {
                Some(at) if timestamp < at || current => {}
                // Never imported: the snapshot starts the mirror at the current value.
                None => self.import(vec![Update { path, value, timestamp }], false).await?,
                // Newer values, or more values at the cursor's time: fetch them from the cursor on.
                Some(at) => self.history_since(token, remote, &path, at).await?,
            }
        }
        Ok(())
    }

    /// The local declaration of a peer's resource; `None` for what cannot be declared.
    fn resource_doc(&self, remote_provider: &str, r: &Value) -> Option<ResourceDoc> {
        let kind: ResourceKind = serde_json::from_value(r.get("kind")?.clone()).ok()?;
        let value_type = serde_json::from_value(r.get("type")?.clone()).ok()?;
        let mut metadata: std::collections::BTreeMap<String, Value> = r
            .get("metadata")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.get("value")?.clone()))).collect())
            .unwrap_or_default();
        // An owner is a name of the peer's domain: qualify it, so that it means the same person here.
        if let Some(Value::String(owner)) = metadata.get_mut("owner")
            && !owner.contains('@')
        {
            *owner = format!("{owner}@{}", self.link.config.domain());
        }
        metadata.insert(
            "origin".to_owned(),
            json!({ "peer": self.link.config.name, "domain": self.link.config.domain(), "provider": remote_provider }),
        );
        let parameters = r.get("parameters").and_then(|p| serde_json::from_value(p.clone()).ok()).unwrap_or_default();
        Some(ResourceDoc {
            kind: Some(kind),
            value_type: Some(value_type),
            unit: r.get("unit").and_then(Value::as_str).map(str::to_owned),
            metadata,
            parameters,
            value: None,
            timestamp: None,
        })
    }

    /// Whether the local provider already has this declaration (so it need not be written again).
    fn declared_alike(&self, local: &Name, doc: &ProviderDoc) -> bool {
        let Some(current) = self.twin.provider(local.as_str()) else { return false };
        doc.services.iter().all(|(s, sdoc)| {
            sdoc.resources.iter().all(|(r, rdoc)| {
                current.resource(s.as_str(), r.as_str()).is_some_and(|have| {
                    Some(have.kind) == rdoc.kind
                        && Some(have.value_type) == rdoc.value_type
                        && have.unit.as_deref() == rdoc.unit.as_deref()
                        && rdoc.metadata.iter().all(|(k, v)| have.metadata.get(k).is_some_and(|m| m.value == *v))
                        && have.parameters == rdoc.parameters
                })
            })
        })
    }

    /// Imports a resource's values newer than `cursor` from the peer's history, page by page.
    async fn history_since(
        &mut self,
        token: &str,
        remote: &str,
        path: &ResourcePath,
        cursor: Timestamp,
    ) -> Result<(), String> {
        let base = format!(
            "/providers/{remote}/services/{}/resources/{}/history?from={}&limit={HISTORY_PAGE}",
            path.service,
            path.resource,
            url::form_urlencoded::byte_serialize(cursor.to_rfc3339().as_bytes()).collect::<String>()
        );
        let mut page_cursor: Option<String> = None;
        loop {
            let query = match &page_cursor {
                Some(next) => {
                    format!(
                        "{base}&cursor={}",
                        url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                    )
                }
                None => base.clone(),
            };
            let page = self.link.get_json(token, &query).await?;
            let updates: Vec<Update> = page
                .get("points")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let timestamp = Timestamp::parse_rfc3339(p.get("timestamp")?.as_str()?).ok()?;
                    Some(Update { path: path.clone(), value: p.get("value")?.clone(), timestamp })
                })
                .collect();
            self.import(updates, false).await?;
            match page.get("next").and_then(Value::as_str) {
                Some(next) => page_cursor = Some(next.to_owned()),
                None => return Ok(()),
            }
        }
    }

    /// The peer changed a provider's model: declare it again.
    async fn model_changed(&mut self, token: &str, data: &str) -> Result<(), String> {
        let Some(remote) = serde_json::from_str::<Value>(data)
            .ok()
            .and_then(|v| v.get("provider").and_then(Value::as_str).map(str::to_owned))
        else {
            return Ok(());
        };
        if self.link.local_name(&remote).is_none() {
            return Ok(());
        }
        match self.link.get_json(token, &format!("/providers/{remote}")).await {
            Ok(provider) => self.import_provider(token, &provider).await,
            // No longer readable: the mirror keeps what it has.
            Err(e) if e.is(&[StatusCode::FORBIDDEN, StatusCode::NOT_FOUND]) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The peer deleted a provider: so does the mirror.
    async fn deleted(&mut self, data: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(data).unwrap_or_default();
        let Some(local) = v.get("provider").and_then(Value::as_str).and_then(|p| self.link.local_name(p)) else {
            return Ok(());
        };
        self.twin.delete_provider(&local).await.map_err(|e| format!("deleting {local}: {e}"))?;
        self.cursors.retain(|path, _| path.provider != local);
        self.link.counters().providers.remove(local.as_str());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update(micros: i64, value: Value) -> Update {
        Update { path: "p/s/r".parse().unwrap(), value, timestamp: Timestamp::from_micros(micros) }
    }

    #[test]
    fn values_sharing_a_timestamp_are_all_admitted_once() {
        let mut cursor = Cursor { at: None, seen: Vec::new() };
        assert!(cursor.admit(&update(10, json!(1))));
        assert!(cursor.admit(&update(10, json!(2))), "a second value at the same time is new");
        assert!(!cursor.admit(&update(10, json!(1))), "the same value at the same time is a duplicate");
        assert!(!cursor.admit(&update(9, json!(3))), "older than the cursor");
        assert!(cursor.admit(&update(11, json!(1))), "a later time moves the cursor");
        assert_eq!(cursor.at, Some(Timestamp::from_micros(11)));
        assert!(!cursor.admit(&update(10, json!(2))), "the values of the previous time are behind the cursor");
        assert!(cursor.admit(&update(11, json!({"a": [1, 2]}))));
        assert!(!cursor.admit(&update(11, json!({"a": [1, 2]}))));
    }

    #[test]
    fn a_cursor_read_back_from_the_store_skips_what_was_imported_at_its_time() {
        let mut cursor = Cursor { at: Some(Timestamp::from_micros(5)), seen: vec![digest(&json!("a"))] };
        assert!(!cursor.admit(&update(5, json!("a"))));
        assert!(cursor.admit(&update(5, json!("b"))));
        assert_ne!(digest(&json!(1)), digest(&json!("1")), "the digest tells types apart");
    }
}
