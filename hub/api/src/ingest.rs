use axum::{Json, extract::State};
use hub_model::{ResourcePath, Timestamp, Update};
use hub_policy::Action;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::{
    ApiError, AppState,
    auth::{Caller, denied},
    body::{RawBody, parse_json},
    providers::{name, path_of},
};

/// The JSON ingest document.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestBody {
    /// The updates, applied all or nothing.
    pub updates: Vec<IngestUpdate>,
}

/// One update in an ingest document.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestUpdate {
    /// Provider name.
    pub provider: String,
    /// Service name.
    pub service: String,
    /// Resource name.
    pub resource: String,
    /// The value (not null).
    #[schema(value_type = Object)]
    pub value: Value,
    /// RFC 3339; defaults to the time of receipt.
    #[schema(value_type = Option<String>)]
    pub timestamp: Option<Timestamp>,
}

/// Push data in: a JSON batch, or a SenML pack (`application/senml+json`). Answers once the whole batch is
/// durable; the batch is applied entirely or not at all.
#[utoipa::path(post, path = "/api/v1/ingest", tag = "twin",
    request_body(content = IngestBody, content_type = "application/json",
        description = "`{\"updates\": [...]}`, or a SenML JSON pack (RFC 8428) whose names are `provider/service/resource`"),
    responses((status = 200, description = "`{\"accepted\": n}`, durable"), (status = 400), (status = 401), (status = 403),
              (status = 413), (status = 415), (status = 422)))]
pub async fn ingest(State(state): State<AppState>, caller: Caller, body: RawBody) -> Result<Json<Value>, ApiError> {
    let now = Timestamp::now();
    let updates = match body.content_type.as_deref() {
        Some("application/json") | None => from_json(&body.bytes, now)?,
        Some("application/senml+json") => senml::parse(&body.bytes, now)?,
        Some(other) => {
            return Err(ApiError::unsupported_media_type(format!(
                "expected application/json or application/senml+json, got {other}"
            )));
        }
    };
    if updates.is_empty() {
        return Err(ApiError::bad_request("updates", "the batch is empty"));
    }
    if updates.len() > state.limits.max_batch {
        return Err(ApiError::too_large(format!(
            "{} updates in one batch; the limit is {}",
            updates.len(),
            state.limits.max_batch
        )));
    }
    // Consecutive updates of one resource share one policy check; the personal data among them is noted for the
    // owners' audit trails.
    let mut personal = crate::audit::BatchWrites::default();
    let mut last: Option<&ResourcePath> = None;
    for u in &updates {
        if last != Some(&u.path) {
            let object = u.path.to_string();
            if !state.policy.check(&caller.0, &object, Action::Write) {
                return Err(denied(&caller, &object, Action::Write));
            }
            personal.note(&state, &object);
            last = Some(&u.path);
        }
    }
    let accepted = state.twin.ingest(updates).await?;
    personal.record(&state, &caller);
    state.metrics.ingested.inc_by(accepted as u64);
    Ok(Json(json!({ "accepted": accepted })))
}

fn from_json(bytes: &[u8], now: Timestamp) -> Result<Vec<Update>, ApiError> {
    let body: IngestBody = parse_json(bytes)?;
    body.updates
        .into_iter()
        .enumerate()
        .map(|(i, u)| {
            let name = |field: &str, value: &str| name(&format!("updates[{i}].{field}"), value);
            let path = ResourcePath::new(
                name("provider", &u.provider)?,
                name("service", &u.service)?,
                name("resource", &u.resource)?,
            );
            if u.value.is_null() {
                return Err(ApiError::bad_request(format!("updates[{i}].value"), "null is not a value"));
            }
            Ok(Update { path, value: u.value, timestamp: u.timestamp.unwrap_or(now) })
        })
        .collect()
}

/// SenML JSON (RFC 8428) packs.
pub mod senml {
    use super::*;

    /// Times below 2^28 seconds are relative to now (RFC 8428 section 4.5.3).
    const RELATIVE_LIMIT: f64 = 268_435_456.0;

    #[derive(Debug, Deserialize)]
    struct Record {
        bn: Option<String>,
        bt: Option<f64>,
        bu: Option<String>,
        bv: Option<f64>,
        bs: Option<f64>,
        bver: Option<i64>,
        n: Option<String>,
        u: Option<String>,
        v: Option<f64>,
        vs: Option<String>,
        vb: Option<bool>,
        vd: Option<String>,
        s: Option<f64>,
        t: Option<f64>,
        ut: Option<f64>,
        /// Fields this hub does not know. RFC 8428 section 4.4: ignore them, unless the name ends with `_`
        /// (must-understand), which refuses the pack.
        #[serde(flatten)]
        extra: std::collections::BTreeMap<String, Value>,
    }

    /// Resolves a pack into updates. Names (`bn` + `n`) must be `provider/service/resource`.
    pub fn parse(bytes: &[u8], now: Timestamp) -> Result<Vec<Update>, ApiError> {
        let records: Vec<Record> = parse_json(bytes)?;
        let mut base_name = String::new();
        let mut base_time = 0.0f64;
        let mut base_value: Option<f64> = None;
        let mut out = Vec::with_capacity(records.len());
        for (i, r) in records.into_iter().enumerate() {
            let field = |k: &str| format!("[{i}].{k}");
            if let Some(bver) = r.bver
                && bver > 10
            {
                return Err(ApiError::bad_request(field("bver"), "unsupported SenML version"));
            }
            if let Some(key) = r.extra.keys().find(|k| k.ends_with('_')) {
                return Err(ApiError::bad_request(
                    field(key),
                    "a must-understand SenML field this hub does not support",
                ));
            }
            if let Some(bn) = r.bn {
                base_name = bn;
            }
            if let Some(bt) = r.bt {
                base_time = bt;
            }
            if r.bv.is_some() {
                base_value = r.bv;
            }
            let _ = (r.bu, r.bs, r.u, r.ut);
            let value = match (r.v, r.vs, r.vb, r.vd, r.s) {
                (Some(v), None, None, None, _) => json!(base_value.unwrap_or(0.0) + v),
                (None, Some(vs), None, None, _) => Value::String(vs),
                (None, None, Some(vb), None, _) => Value::Bool(vb),
                (None, None, None, Some(vd), _) => Value::String(vd),
                (None, None, None, None, Some(sum)) => json!(sum),
                (None, None, None, None, None) => match base_value {
                    Some(bv) => json!(bv),
                    None => return Err(ApiError::bad_request(field("v"), "a record needs one of v, vs, vb, vd or s")),
                },
                _ => return Err(ApiError::bad_request(field("v"), "a record has exactly one of v, vs, vb, vd")),
            };
            if value.as_f64().is_some_and(|f| !f.is_finite()) || (value.is_number() && value.as_f64().is_none()) {
                return Err(ApiError::bad_request(field("v"), "numbers are finite"));
            }
            let name = format!("{base_name}{}", r.n.as_deref().unwrap_or(""));
            let mut parts = name.split('/');
            let path = match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(p), Some(s), Some(res), None) => path_of(p, s, res)
                    .map_err(|_| ApiError::bad_request(field("n"), format!("{name:?}: names use A-Z a-z 0-9 . - _")))?,
                _ => {
                    return Err(ApiError::bad_request(
                        field("n"),
                        format!("{name:?}: SenML names (bn + n) must be provider/service/resource"),
                    ));
                }
            };
            let t = base_time + r.t.unwrap_or(0.0);
            let timestamp = if t.abs() < RELATIVE_LIMIT {
                Timestamp::from_secs_f64(t)
                    .map(|rel| Timestamp::from_micros(now.as_micros().saturating_add(rel.as_micros())))
            } else {
                Timestamp::from_secs_f64(t)
            }
            .ok_or_else(|| ApiError::bad_request(field("t"), "time out of range"))?;
            out.push(Update { path, value, timestamp });
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn resolves_base_fields_and_relative_times() {
            let now = Timestamp::from_micros(1_000_000_000_000);
            let pack = br#"[
                {"bn": "noise-12/sound/", "bt": 1.7e9, "n": "level", "v": 71.5, "u": "dB"},
                {"n": "peak", "v": 80, "t": 1},
                {"bn": "lamp.3/light/", "bt": 0, "n": "on", "vb": true, "t": -5},
                {"n": "label", "vs": "north"}
            ]"#;
            let ups = parse(pack, now).unwrap();
            assert_eq!(ups.len(), 4);
            assert_eq!(
                parse(br#"[{"n": "a/b/c", "v": 1, "later": 2}]"#, now).unwrap().len(),
                1,
                "unknown fields are ignored"
            );
            assert_eq!(ups[0].path.to_string(), "noise-12/sound/level");
            assert_eq!(ups[0].timestamp, Timestamp::from_micros(1_700_000_000_000_000));
            assert_eq!(ups[1].timestamp, Timestamp::from_micros(1_700_000_001_000_000));
            assert_eq!(ups[2].path.to_string(), "lamp.3/light/on");
            assert_eq!(ups[2].timestamp, Timestamp::from_micros(now.as_micros() - 5_000_000));
            assert_eq!(ups[3].value, json!("north"));
        }

        #[test]
        fn rejects_bad_packs_naming_the_record() {
            let now = Timestamp::now();
            let cases: &[(&[u8], &str)] = &[
                (br#"[{"n": "a/b", "v": 1}]"#, "[0].n"),
                (br#"[{"n": "a/b/c"}]"#, "[0].v"),
                (br#"[{"n": "a/b/c", "v": 1, "vs": "x"}]"#, "[0].v"),
                (br#"[{"n": "a/b/c", "v": 1}, {"n": "a/b/c d", "v": 1}]"#, "[1].n"),
                (br#"[{"n": "a/b/c", "v": 1, "zz_": 1}]"#, "[0].zz_"),
                (br#"{"n": "a/b/c"}"#, "body"),
                (br#"[{"n": "a/b/c", "v": 1, "t": 1e300}]"#, "[0].t"),
            ];
            for (pack, field) in cases {
                let err = format!("{:?}", parse(pack, now).unwrap_err());
                assert!(err.contains(&format!("field: Some({field:?})")), "{}: {err}", String::from_utf8_lossy(pack));
            }
        }
    }
}
