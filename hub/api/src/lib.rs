//! The hub's HTTP API under `/api/v1`: the twin (providers, resources, SET, ACT, history), ingest (JSON and
//! SenML), live streams (Server-Sent Events and WebSocket), tokens, policy, health, metrics and the OpenAPI
//! document generated from the handlers.
//!
//! Every request is authenticated (bearer token, or the session cookie of a browser signed in through
//! `/auth/login`; neither means the subject `anonymous`) and authorised by the policy engine before anything else
//! happens. Errors are RFC 9457 problem documents naming the bad field.

mod audit;
mod auth;
mod body;
mod consents;
mod error;
mod ingest;
mod labels;
mod login;
mod metrics;
mod openapi;
mod plugins;
mod providers;
mod rules;
mod streams;
mod subjects;
mod system;
mod transports;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request, State},
    middleware::{self, Next},
    response::Response,
    routing::{get, post, put},
};
use hub_policy::{PolicyEngine, TokenRegistry};
use hub_twin::Twin;
use tower_http::timeout::TimeoutLayer;

pub use auth::Caller;
pub use consents::{Consent, ConsentBook};
pub use error::ApiError;
pub use labels::TwinLabels;
pub use metrics::Metrics;
pub use openapi::openapi;
pub use system::{token_info, token_record};
pub use transports::{HostTransport, HostTransports, counters_of};

/// Limits the API enforces.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most updates in one ingest request.
    pub max_batch: usize,
    /// Deadline for one non-streaming request.
    pub request_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits { max_body_bytes: 16 * 1024 * 1024, max_batch: 100_000, request_timeout: Duration::from_secs(30) }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The live model.
    pub twin: Arc<Twin>,
    /// Authorisation.
    pub policy: Arc<PolicyEngine>,
    /// Authentication: hub tokens.
    pub tokens: Arc<TokenRegistry>,
    /// Authentication: JWT access tokens from the trusted OpenID providers (none configured: `None`).
    pub oidc: Option<Arc<hub_identity::OidcVerifier>>,
    /// The links to federation peers (none configured: `None`).
    pub federation: Option<Arc<hub_federation::Federation>>,
    /// Sign-in in the browser and its sessions (`[oidc.login]`; none configured: `None`).
    pub login: Option<Arc<hub_identity::Login>>,
    /// The audit log.
    pub audit: hub_audit::AuditLog,
    /// The consents owners of personal data gave.
    pub consents: Arc<ConsentBook>,
    /// Counters exposed at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Limits.
    pub limits: ApiLimits,
    /// The rules host.
    pub automation: hub_automation::Automation,
    /// The WASM plugin runtime.
    pub plugins: hub_runtime::PluginHost,
    /// The host transports the binary started (for status and metrics).
    pub transports: HostTransports,
    /// Cancelled when the hub shuts down: open streams end so that connections can drain.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The complete router, ready to serve.
pub fn router(state: AppState) -> Router {
    let timeout = state.limits.request_timeout;
    let body_limit = state.limits.max_body_bytes;
    let plain = Router::new()
        .route("/providers", get(providers::list))
        .route("/providers/{provider}", get(providers::get_one).put(providers::put_model).delete(providers::delete))
        .route(
            "/providers/{provider}/services/{service}/resources/{resource}",
            get(providers::get_resource).put(providers::set_resource),
        )
        .route("/providers/{provider}/services/{service}/resources/{resource}/act", post(providers::act))
        .route("/providers/{provider}/services/{service}/resources/{resource}/history", get(providers::history))
        .route("/ingest", post(ingest::ingest))
        .route("/tokens", get(system::list_tokens).post(system::create_token))
        .route("/tokens/{id}", axum::routing::delete(system::delete_token))
        .route("/policy", get(system::get_policy).put(system::put_policy))
        .route("/policy/check", post(system::check_policy))
        .route("/policy/explain", post(system::explain_policy))
        .route("/plugins", get(plugins::list).post(plugins::install))
        .route("/plugins/{id}", get(plugins::get_one).put(plugins::upgrade).delete(plugins::remove))
        .route("/plugins/{id}/config", put(plugins::set_config))
        .route("/plugins/{id}/grant", put(plugins::set_grant))
        .route("/plugins/{id}/start", post(plugins::start))
        .route("/plugins/{id}/stop", post(plugins::stop))
        .route("/rules", get(rules::list))
        .route("/rules/validate", post(rules::validate))
        .route("/rules/{id}", get(rules::get_one).put(rules::deploy).delete(rules::remove))
        .route("/rules/{id}/firings", get(rules::firings))
        .route("/rules/{id}/enable", post(rules::enable))
        .route("/rules/{id}/disable", post(rules::disable))
        .route("/federation/peers", get(system::federation_peers))
        .route("/consents", get(consents::list).post(consents::grant))
        .route("/consents/{id}", get(consents::get_one).put(consents::update).delete(consents::revoke))
        .route("/subjects/{id}/export", get(subjects::export))
        .route("/audit", get(audit::list))
        .route("/audit/verify", get(audit::verify).post(audit::verify_published))
        .route("/audit/checkpoint", get(audit::latest_checkpoint).post(audit::sign_checkpoint))
        .route("/audit/key", get(audit::public_key))
        .route("/transports", get(transports::list))
        .route("/gateways", get(transports::gateways))
        .route("/auth/login", get(login::login))
        .route("/auth/callback", get(login::callback))
        .route("/auth/session", get(login::session))
        .route("/auth/logout", post(login::logout))
        .route("/healthz", get(system::healthz))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi_json))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::SERVICE_UNAVAILABLE, timeout));
    let streaming = Router::new().route("/events", get(streams::sse)).route("/ws", get(streams::ws));
    let api = plain
        .merge(streaming)
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(state.clone(), audit::record_changes))
        .layer(DefaultBodyLimit::max(body_limit));
    Router::new()
        .nest("/api/v1", api)
        .fallback(|| async { ApiError::not_found("no such route; the API lives under /api/v1") })
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    state.metrics.observe_status(res.status().as_u16());
    res
}

/// The routes and methods of the API, as `(method, path template)`, for tests that walk the route table.
pub fn route_table() -> Vec<(String, String)> {
    let doc = openapi();
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (method, op) in ops {
            if op.is_some() {
                out.push((method.to_string(), path.clone()));
            }
        }
    }
    out
}
