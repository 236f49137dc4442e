use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use hub_store::StoreError;
use hub_twin::{ActError, TwinError};
use serde::Serialize;

/// Every error the API returns, rendered as RFC 9457 `application/problem+json`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    title: &'static str,
    detail: String,
    field: Option<String>,
    diagnostics: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    diagnostics: Option<&'a serde_json::Value>,
}

impl ApiError {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, title, detail: detail.into(), field: None, diagnostics: None }
    }

    /// The explanation the problem document carries.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// 400: the request is malformed; `field` names what is wrong.
    pub fn bad_request(field: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError { field: Some(field.into()), ..Self::new(StatusCode::BAD_REQUEST, "Bad request", detail) }
    }

    /// 422: well-formed, but the model refuses it.
    pub fn unprocessable(field: Option<String>, detail: impl Into<String>) -> Self {
        ApiError { field, ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable content", detail) }
    }

    /// 401: no valid credentials.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail)
    }

    /// 403: authenticated, but the policy denies it.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", detail)
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed", "this path does not accept that method")
    }

    /// 409: the operation does not fit the resource.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", detail)
    }

    /// 413.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "Content too large", detail)
    }

    /// 415.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported media type", detail)
    }

    /// 502: a downstream owner (an adapter) failed.
    pub fn bad_gateway(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "Bad gateway", detail)
    }

    /// 503: storage is unavailable; the client may retry. Nothing internal is leaked; the cause is logged.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        let id = uuid::Uuid::new_v4();
        tracing::error!(error_id = %id, "service unavailable: {cause}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            format!("storage is unavailable; retry later (error id {id})"),
        )
    }

    /// 500: never expected; logged with an id, details withheld.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        let id = uuid::Uuid::new_v4();
        tracing::error!(error_id = %id, "internal error: {cause}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error", format!("internal error (error id {id})"))
    }

    /// Attaches rule diagnostics (line, column, message) to the problem document.
    pub fn with_diagnostics(mut self, diagnostics: serde_json::Value) -> Self {
        self.diagnostics = Some(diagnostics);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: "about:blank",
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            field: self.field.as_deref(),
            diagnostics: self.diagnostics.as_ref(),
        };
        let mut res = (self.status, serde_json::to_vec(&body).unwrap_or_default()).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<TwinError> for ApiError {
    fn from(e: TwinError) -> Self {
        use hub_model::ModelError;
        match e {
            TwinError::Invalid { index, source } => {
                let field = index.map(|i| format!("updates[{i}]"));
                match source {
                    ModelError::WrongKind { .. } => ApiError::conflict(source.to_string()),
                    ModelError::NotFound(what) => ApiError::not_found(what),
                    other => ApiError::unprocessable(field, other.to_string()),
                }
            }
            TwinError::NotFound(what) => ApiError::not_found(what),
            TwinError::NoOwner(path) => ApiError::not_found(format!(
                "no owner is registered for {path}; ACT needs an adapter that handles this provider"
            )),
            TwinError::Act(ActError::Refused(why)) => ApiError::unprocessable(Some("params".into()), why),
            TwinError::Act(e) => ApiError::bad_gateway(e.to_string()),
            TwinError::Storage(e) => e.into(),
            e @ TwinError::Imported { .. } => ApiError::forbidden(e.to_string()),
            e @ TwinError::Pseudonym { .. } => ApiError::unavailable(&e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidInput(why) => ApiError::bad_request("cursor", why),
            other => ApiError::unavailable(&other),
        }
    }
}
