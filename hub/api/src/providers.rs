use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use hub_model::{Glob, Name, Provider, ProviderDoc, ResourcePath, Timestamp};
use hub_policy::Action;
use hub_store::{Aggregate, DownsampleQuery, HistoryQuery, Order};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::{
    ApiError, AppState,
    auth::{Caller, authorize, denied},
    body::JsonBody,
};

/// Most history points or buckets returned in one page.
pub const MAX_PAGE: usize = 10_000;
const DEFAULT_PAGE: usize = 1_000;

pub(crate) fn name(field: &str, value: &str) -> Result<Name, ApiError> {
    Name::new(value).map_err(|e| ApiError::bad_request(field, e.to_string()))
}

pub(crate) fn path_of(p: &str, s: &str, r: &str) -> Result<ResourcePath, ApiError> {
    Ok(ResourcePath::new(name("provider", p)?, name("service", s)?, name("resource", r)?))
}

/// Whether the caller may read the provider itself or at least one of its resources.
fn may_see(state: &AppState, caller: &Caller, provider: &Provider) -> bool {
    state.policy.check(&caller.0, provider.name.as_str(), Action::Read)
        || provider.resources().any(|(path, _)| state.policy.check(&caller.0, &path.to_string(), Action::Read))
}

/// A provider reduced to what the caller may read; `None` when nothing of it is readable.
pub(crate) fn visible(state: &AppState, caller: &Caller, provider: &Provider) -> Option<Provider> {
    let whole = state.policy.check(&caller.0, provider.name.as_str(), Action::Read);
    let mut out = provider.clone();
    let mut any = false;
    for (service, svc) in out.services.iter_mut() {
        svc.resources.retain(|resource, _| {
            let object = format!("{}/{}/{}", provider.name, service, resource);
            crate::audit::read_allowed(state, caller, &object)
        });
        any |= !svc.resources.is_empty();
    }
    out.services.retain(|_, svc| !svc.resources.is_empty());
    (any || whole).then_some(out)
}

pub(crate) fn query_params(q: HashMap<String, String>, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    if let Some(unknown) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            unknown.clone(),
            format!("unknown query parameter; accepted: {}", allowed.join(", ")),
        ));
    }
    Ok(q)
}

#[derive(Debug, Clone, Copy)]
struct BBox {
    min_lon: f64,
    min_lat: f64,
    max_lon: f64,
    max_lat: f64,
}

fn parse_bbox(s: &str) -> Result<BBox, ApiError> {
    let parts: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| ApiError::bad_request("bbox", "bbox is min_lon,min_lat,max_lon,max_lat (four numbers)"))?;
    let [min_lon, min_lat, max_lon, max_lat] = parts[..] else {
        return Err(ApiError::bad_request("bbox", "bbox is min_lon,min_lat,max_lon,max_lat (four numbers)"));
    };
    if !(min_lon <= max_lon && min_lat <= max_lat) || parts.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::bad_request("bbox", "bbox minimums must not exceed maximums"));
    }
    Ok(BBox { min_lon, min_lat, max_lon, max_lat })
}

/// List providers, filtered by globs and a bounding box on `admin/location`.
#[utoipa::path(get, path = "/api/v1/providers", tag = "twin",
    params(
        ("provider" = Option<String>, Query, description = "glob over provider names"),
        ("service" = Option<String>, Query, description = "keep providers with a service matching this glob"),
        ("resource" = Option<String>, Query, description = "keep providers with a resource matching this glob"),
        ("bbox" = Option<String>, Query, description = "min_lon,min_lat,max_lon,max_lat on admin/location"),
    ),
    responses((status = 200, description = "`{\"providers\": [snapshot, ...]}`, only what the caller may read"),
              (status = 400, description = "bad filter"), (status = 401), (status = 403)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let q = query_params(q, &["provider", "service", "resource", "bbox"])?;
    let provider = q.get("provider").map(|g| Glob::new(g));
    let service = q.get("service").map(|g| Glob::new(g));
    let resource = q.get("resource").map(|g| Glob::new(g));
    let bbox = q.get("bbox").map(|b| parse_bbox(b)).transpose()?;
    // Visibility is decided under the twin's read locks; only what is returned is copied.
    let mut hub_has_providers = false;
    let mut any_readable = false;
    let readable: Vec<Provider> = state.twin.filter_map_providers(|p| {
        hub_has_providers = true;
        if provider.as_ref().is_some_and(|g| !g.matches(p.name.as_str())) {
            // Not listed, but it still counts when deciding whether the caller may read anything at all.
            any_readable = any_readable || may_see(&state, &caller, p);
            return None;
        }
        let shown = visible(&state, &caller, p);
        any_readable |= shown.is_some();
        shown
    });
    if !any_readable && hub_has_providers {
        return Err(denied(&caller, "any provider", Action::Read));
    }
    let out: Vec<Provider> = readable
        .into_iter()
        .filter(|p| service.as_ref().is_none_or(|g| p.services.keys().any(|s| g.matches(s.as_str()))))
        .filter(|p| {
            resource
                .as_ref()
                .is_none_or(|g| p.services.values().any(|s| s.resources.keys().any(|r| g.matches(r.as_str()))))
        })
        .filter(|p| {
            bbox.is_none_or(|b| {
                p.location().is_some_and(|l| {
                    (b.min_lon..=b.max_lon).contains(&l.lon) && (b.min_lat..=b.max_lat).contains(&l.lat)
                })
            })
        })
        .collect();
    Ok(Json(json!({ "providers": out })))
}

/// The full snapshot of one provider: services, resources, values, metadata.
#[utoipa::path(get, path = "/api/v1/providers/{provider}", tag = "twin",
    params(("provider" = String, Path)),
    responses((status = 200, description = "provider snapshot"), (status = 401), (status = 403), (status = 404)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(p): Path<String>,
) -> Result<Json<Provider>, ApiError> {
    let p = name("provider", &p)?;
    match state.twin.provider(p.as_str()) {
        Some(provider) => {
            visible(&state, &caller, &provider).map(Json).ok_or_else(|| denied(&caller, p.as_str(), Action::Read))
        }
        None => {
            authorize(&state, &caller, p.as_str(), Action::Read)?;
            Err(ApiError::not_found(format!("provider {p}")))
        }
    }
}

/// Create or update a provider from a model document.
#[utoipa::path(put, path = "/api/v1/providers/{provider}", tag = "twin",
    params(("provider" = String, Path)),
    request_body(content = Object, description = "model document: `{\"services\": {s: {\"resources\": {r: {kind, type, unit, metadata, parameters, value, timestamp}}}}}`"),
    responses((status = 200, description = "the provider after the change"), (status = 400), (status = 401), (status = 403), (status = 409), (status = 422)))]
pub async fn put_model(
    State(state): State<AppState>,
    caller: Caller,
    Path(p): Path<String>,
    JsonBody(doc): JsonBody<ProviderDoc>,
) -> Result<Json<Provider>, ApiError> {
    let p = name("provider", &p)?;
    authorize(&state, &caller, p.as_str(), Action::Write)?;
    let provider = state.twin.put_provider(p, &doc).await?;
    Ok(Json(provider))
}

/// Delete a provider with its whole history.
#[utoipa::path(delete, path = "/api/v1/providers/{provider}", tag = "twin",
    params(("provider" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 401), (status = 403), (status = 404)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(p): Path<String>,
) -> Result<StatusCode, ApiError> {
    let p = name("provider", &p)?;
    authorize(&state, &caller, p.as_str(), Action::Admin)?;
    if state.twin.delete_provider(&p).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("provider {p}")))
    }
}

/// One resource: kind, type, unit, value, timestamp, metadata.
#[utoipa::path(get, path = "/api/v1/providers/{provider}/services/{service}/resources/{resource}", tag = "twin",
    params(("provider" = String, Path), ("service" = String, Path), ("resource" = String, Path)),
    responses((status = 200, description = "`{kind, type, unit, value, timestamp, metadata}`"), (status = 401), (status = 403), (status = 404)))]
pub async fn get_resource(
    State(state): State<AppState>,
    caller: Caller,
    Path((p, s, r)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let path = path_of(&p, &s, &r)?;
    authorize(&state, &caller, &path.to_string(), Action::Read)?;
    let resource = state.twin.resource(&path).ok_or_else(|| ApiError::not_found(format!("resource {path}")))?;
    Ok(Json(resource).into_response())
}

/// The body of a SET.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBody {
    /// The new value; must have the resource's type.
    #[schema(value_type = Object)]
    pub value: Value,
}

/// SET a `state` or `property` resource.
#[utoipa::path(put, path = "/api/v1/providers/{provider}/services/{service}/resources/{resource}", tag = "twin",
    params(("provider" = String, Path), ("service" = String, Path), ("resource" = String, Path)),
    request_body = SetBody,
    responses((status = 200, description = "`{value, timestamp}` as stored"), (status = 401), (status = 403), (status = 404),
              (status = 409, description = "the resource is not a state or property"), (status = 422, description = "wrong type")))]
pub async fn set_resource(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((p, s, r)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<SetBody>,
) -> Response {
    let object = format!("{p}/{s}/{r}");
    let result = set_value(&state, &caller, &headers, (p, s, r), body).await;
    crate::audit::about_owner(&state, &object, "put", result)
}

async fn set_value(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    (p, s, r): (String, String, String),
    body: SetBody,
) -> Result<Json<Value>, ApiError> {
    let path = path_of(&p, &s, &r)?;
    authorize(state, caller, &path.to_string(), Action::Write)?;
    if state.twin.imported_from(&p).is_some() {
        let rest = format!("services/{s}/resources/{r}");
        return forward(state, headers, &p, reqwest::Method::PUT, &rest, json!({ "value": body.value })).await;
    }
    let update = state.twin.set(path, body.value).await?;
    Ok(Json(json!({ "value": update.value, "timestamp": update.timestamp })))
}

/// The body of an ACT.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActBody {
    /// Parameters, checked against the action's declared parameters.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: serde_json::Map<String, Value>,
}

/// ACT on an `action` resource; routed to the adapter that owns the provider.
#[utoipa::path(post, path = "/api/v1/providers/{provider}/services/{service}/resources/{resource}/act", tag = "twin",
    params(("provider" = String, Path), ("service" = String, Path), ("resource" = String, Path)),
    request_body = ActBody,
    responses((status = 200, description = "`{result}`"), (status = 401), (status = 403),
              (status = 404, description = "no such resource, or nobody owns it"), (status = 409), (status = 422), (status = 502)))]
pub async fn act(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((p, s, r)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<ActBody>,
) -> Response {
    let object = format!("{p}/{s}/{r}");
    let result = act_on(&state, &caller, &headers, (p, s, r), body).await;
    crate::audit::about_owner(&state, &object, "post", result)
}

async fn act_on(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    (p, s, r): (String, String, String),
    body: ActBody,
) -> Result<Json<Value>, ApiError> {
    let path = path_of(&p, &s, &r)?;
    authorize(state, caller, &path.to_string(), Action::Act)?;
    if state.twin.imported_from(&p).is_some() {
        let rest = format!("services/{s}/resources/{r}/act");
        return forward(state, headers, &p, reqwest::Method::POST, &rest, json!({ "params": body.params })).await;
    }
    let result = state.twin.act(path, body.params).await?;
    Ok(Json(json!({ "result": result })))
}

/// SET and ACT on a provider imported from a federation peer go to its origin hub, under the caller's own
/// credentials: the origin's policy decides.
async fn forward(
    state: &AppState,
    headers: &HeaderMap,
    provider: &str,
    method: reqwest::Method,
    rest: &str,
    body: Value,
) -> Result<Json<Value>, ApiError> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let answer = match &state.federation {
        Some(federation) => federation.forward(provider, method, rest, authorization, &body).await,
        None => None,
    };
    let Some(answer) = answer else {
        return Err(ApiError::bad_gateway(format!("{provider} is imported, but no federation link carries it")));
    };
    match answer {
        Err(e) => Err(ApiError::bad_gateway(e)),
        Ok(f) if (200..300).contains(&f.status) => Ok(Json(f.body)),
        Ok(f) => {
            let detail = f.body.get("detail").and_then(Value::as_str).unwrap_or("").to_owned();
            let detail = format!("the origin hub answered {}: {detail}", f.status);
            Err(match f.status {
                401 | 403 => ApiError::forbidden(detail),
                404 => ApiError::not_found(detail),
                409 => ApiError::conflict(detail),
                400 | 422 => ApiError::unprocessable(None, detail),
                _ => ApiError::bad_gateway(detail),
            })
        }
    }
}

#[derive(Serialize)]
struct HistoryBody {
    points: Vec<hub_store::Point>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

pub(crate) fn parse_time(field: &str, q: &HashMap<String, String>) -> Result<Option<Timestamp>, ApiError> {
    q.get(field)
        .map(|s| Timestamp::parse_rfc3339(s).map_err(|e| ApiError::bad_request(field, e.to_string())))
        .transpose()
}

/// History of a resource: raw points with cursor paging, or downsampled buckets with `every` and `agg`.
#[utoipa::path(get, path = "/api/v1/providers/{provider}/services/{service}/resources/{resource}/history", tag = "twin",
    params(("provider" = String, Path), ("service" = String, Path), ("resource" = String, Path),
        ("from" = Option<String>, Query, description = "RFC 3339, inclusive"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("limit" = Option<usize>, Query, description = "1 to 10000, default 1000"),
        ("order" = Option<String>, Query, description = "asc (default) or desc"),
        ("cursor" = Option<String>, Query, description = "the `next` of the previous page"),
        ("every" = Option<String>, Query, description = "bucket width (e.g. 5m) to downsample"),
        ("agg" = Option<String>, Query, description = "avg, min, max, count, sum or last (default avg)")),
    responses((status = 200, description = "`{points, next}` or `{buckets}`"), (status = 400), (status = 401), (status = 403), (status = 404)))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path((p, s, r)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let path = path_of(&p, &s, &r)?;
    authorize(&state, &caller, &path.to_string(), Action::Read)?;
    let q = query_params(q, &["from", "to", "limit", "order", "cursor", "every", "agg"])?;
    let resource = state.twin.resource(&path).ok_or_else(|| ApiError::not_found(format!("resource {path}")))?;
    let from = parse_time("from", &q)?;
    let to = parse_time("to", &q)?;
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(ApiError::bad_request("to", "`to` must be later than `from`"));
    }
    let limit = match q.get("limit") {
        None => DEFAULT_PAGE,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(ApiError::bad_request("limit", format!("limit is a whole number from 1 to {MAX_PAGE}"))),
        },
    };
    let order = match q.get("order").map(String::as_str) {
        None | Some("asc") => Order::Asc,
        Some("desc") => Order::Desc,
        Some(_) => return Err(ApiError::bad_request("order", "order is asc or desc")),
    };
    if let Some(every) = q.get("every") {
        if q.contains_key("cursor") {
            return Err(ApiError::bad_request("cursor", "downsampled history is not paged; narrow from/to instead"));
        }
        let every = humantime::parse_duration(every)
            .map_err(|e| ApiError::bad_request("every", format!("{every:?} is not a duration ({e}); use e.g. 5m")))?;
        let every_micros = i64::try_from(every.as_micros()).unwrap_or(i64::MAX);
        if every_micros < 1_000 {
            return Err(ApiError::bad_request("every", "every is at least 1ms"));
        }
        let aggregate = match q.get("agg").map(String::as_str) {
            None | Some("avg") => Aggregate::Avg,
            Some("min") => Aggregate::Min,
            Some("max") => Aggregate::Max,
            Some("sum") => Aggregate::Sum,
            Some("count") => Aggregate::Count,
            Some("last") => Aggregate::Last,
            Some(_) => return Err(ApiError::bad_request("agg", "agg is avg, min, max, sum, count or last")),
        };
        if aggregate.needs_numbers() && !resource.value_type.is_numeric() {
            return Err(ApiError::bad_request(
                "agg",
                format!("{path} holds {} values; only count and last apply", resource.value_type),
            ));
        }
        let buckets = state
            .twin
            .store()
            .downsample(DownsampleQuery { path, from, to, every_micros, aggregate, limit, order })
            .await?;
        return Ok(Json(json!({ "buckets": buckets })).into_response());
    }
    if q.contains_key("agg") {
        return Err(ApiError::bad_request("agg", "agg needs every (the bucket width)"));
    }
    let page = state
        .twin
        .store()
        .history(HistoryQuery { path, from, to, limit, order, cursor: q.get("cursor").cloned() })
        .await?;
    Ok(Json(HistoryBody { points: page.points, next: page.next_cursor }).into_response())
}
