//! Shared set-up: a real router over a real SQLite store in a temporary directory.
#![allow(dead_code)]

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use futures::StreamExt;
use http_body_util::BodyExt;
use hub_api::{ApiLimits, AppState, Metrics};
use hub_bus::Bus;
use hub_policy::{PolicyEngine, TokenInfo, TokenRegistry};
use hub_store::SqliteStore;
use hub_twin::Twin;
use serde_json::Value;
use tower::ServiceExt;

pub struct Hub {
    pub router: Router,
    pub state: AppState,
    pub admin: String,
    _dir: tempfile::TempDir,
}

pub const POLICY: &str = "\
p, admin, *, *
p, reader, noise-*, read
p, writer, noise-*, write
p, writer, noise-*, read
";

impl Hub {
    pub async fn new() -> Hub {
        Hub::with_policy(POLICY).await
    }

    pub async fn with_policy(policy: &str) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("hub.db")).unwrap());
        let twin = Arc::new(Twin::open(store, Bus::new(1024)).await.unwrap());
        let policy = Arc::new(PolicyEngine::with_domain(policy, "santander", 10_000).unwrap());
        policy.set_label_source(Arc::new(hub_api::TwinLabels(twin.clone())));
        let plugins = hub_runtime::PluginHost::new(
            hub_runtime::HostConfig::new(dir.path(), "0.1.0".parse().unwrap()),
            twin.clone(),
            policy.clone(),
            Arc::new(hub_runtime::Transports::new()),
        );
        let automation =
            hub_automation::Automation::start(twin.clone(), policy.clone(), Default::default()).await.unwrap();
        let key = hub_audit::SigningKey::from_bytes(&[9; 32]);
        let audit = hub_audit::AuditLog::open(twin.store().clone(), key, Default::default()).await.unwrap();
        let consents =
            hub_api::ConsentBook::open(twin.store().clone(), policy.clone(), audit.clone(), Default::default())
                .await
                .unwrap();
        let state = AppState {
            consents,
            oidc: None,
            federation: None,
            login: None,
            automation,
            twin,
            policy,
            plugins,
            transports: Default::default(),
            tokens: Arc::new(TokenRegistry::new()),
            audit,
            metrics: Arc::new(Metrics::new()),
            limits: ApiLimits { max_body_bytes: 64 * 1024, ..ApiLimits::default() },
            shutdown: Default::default(),
        };
        let mut hub = Hub { router: hub_api::router(state.clone()), state, admin: String::new(), _dir: dir };
        hub.admin = hub.token("admin", &["admin"]);
        hub
    }

    pub fn token(&self, subject: &str, roles: &[&str]) -> String {
        self.token_until(subject, roles, None)
    }

    /// A token that expires at `expires_micros` (µs since the epoch; `None`: never).
    pub fn token_until(&self, subject: &str, roles: &[&str], expires_micros: Option<i64>) -> String {
        let (secret, hash) = TokenRegistry::generate().unwrap();
        self.state
            .tokens
            .insert(TokenInfo {
                hash,
                subject: subject.into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                description: None,
                created_micros: 0,
                expires_micros,
            })
            .unwrap();
        secret
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> (StatusCode, Value, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some((ct, bytes)) => req.header(header::CONTENT_TYPE, ct).body(Body::from(bytes)).unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let ct = res.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json, ct)
    }

    pub async fn get(&self, uri: &str, token: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::GET, uri, Some(token), None).await;
        (s, v)
    }

    pub async fn send_json(&self, method: Method, uri: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) =
            self.call(method, uri, Some(token), Some(("application/json", body.to_string().into_bytes()))).await;
        (s, v)
    }

    pub async fn ingest(&self, token: &str, updates: Value) -> (StatusCode, Value) {
        self.send_json(Method::POST, "/api/v1/ingest", token, serde_json::json!({ "updates": updates })).await
    }
}

/// Serves the hub's router on a loopback port; returns `host:port`.
pub async fn serve(hub: &Hub) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = hub.router.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("127.0.0.1:{}", addr.port())
}

/// Reads SSE frames until `n` events of type `kind` were seen (or the deadline passes).
pub struct SseReader {
    pub body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    _client: reqwest::Client,
}

impl SseReader {
    pub async fn open(addr: &str, query: &str, token: &str) -> Result<SseReader, reqwest::StatusCode> {
        let client = reqwest::Client::new();
        let res = client.get(format!("http://{addr}/api/v1/events?{query}")).bearer_auth(token).send().await.unwrap();
        if !res.status().is_success() {
            return Err(res.status());
        }
        Ok(SseReader { body: Box::pin(res.bytes_stream()), buf: String::new(), _client: client })
    }

    pub async fn next_event(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let mut kind = String::new();
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(k) = line.strip_prefix("event:") {
                        kind = k.trim().to_string();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim());
                    }
                }
                if kind.is_empty() {
                    continue; // keep-alive comment
                }
                return (kind, serde_json::from_str(&data).unwrap_or(Value::Null));
            }
            let chunk = tokio::time::timeout(SSE_WAIT, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("no SSE event in time; buffered: {:?}", self.buf))
                .unwrap()
                .unwrap();
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// How long a test waits for an SSE event.
pub const SSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
