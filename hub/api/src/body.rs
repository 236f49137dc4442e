use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::header,
};
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState};

/// The raw body with its content type, limited in size; a too-large body is a 413 problem.
pub struct RawBody {
    pub content_type: Option<String>,
    pub bytes: Bytes,
}

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(format!("the body exceeds {} bytes", state.limits.max_body_bytes))
            } else {
                ApiError::bad_request("body", e.body_text())
            }
        })?;
        Ok(RawBody { content_type, bytes })
    }
}

/// A JSON body parsed strictly; errors name the offending field.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let raw = RawBody::from_request(req, state).await?;
        match raw.content_type.as_deref() {
            Some("application/json") | None => {}
            Some(other) => {
                return Err(ApiError::unsupported_media_type(format!("expected application/json, got {other}")));
            }
        }
        parse_json(&raw.bytes).map(JsonBody)
    }
}

/// Parses JSON, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" || path.is_empty() { "body".to_string() } else { path };
        ApiError::bad_request(field, e.into_inner().to_string())
    })?;
    de.end().map_err(|e| ApiError::bad_request("body", e.to_string()))?;
    Ok(value)
}
