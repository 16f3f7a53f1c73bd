//! The one error envelope: `{"error": {"code", "message", "details"}}` with stable codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use aob_runtime::RuntimeError;
use aob_store::StoreError;

/// Every error code the API returns, with its HTTP status. Codes are part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    PatchRejected,
    AgentLimitExceeded,
    Unauthorized,
    Forbidden,
    InvalidJson,
    ValidationFailed,
    NotFound,
    Conflict,
    InvalidState,
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    /// 429: a token bucket is empty; `details` say which and when to retry.
    RateLimited,
    /// 422: an `Idempotency-Key` was reused with another request.
    IdempotencyMismatch,
    Unavailable,
    /// 507: the store is out of space; nothing was written, the same request succeeds
    /// once space is back.
    StorageFull,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::PatchRejected => "patch_rejected",
            Code::AgentLimitExceeded => "agent_limit_exceeded",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::InvalidJson => "invalid_json",
            Code::ValidationFailed => "validation_failed",
            Code::NotFound => "not_found",
            Code::Conflict => "conflict",
            Code::InvalidState => "invalid_state",
            Code::PayloadTooLarge => "payload_too_large",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::RateLimited => "rate_limited",
            Code::IdempotencyMismatch => "idempotency_mismatch",
            Code::Unavailable => "unavailable",
            Code::StorageFull => "storage_full",
            Code::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::BadRequest | Code::InvalidJson | Code::ValidationFailed => StatusCode::BAD_REQUEST,
            Code::PatchRejected | Code::AgentLimitExceeded => StatusCode::UNPROCESSABLE_ENTITY,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Conflict | Code::InvalidState => StatusCode::CONFLICT,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub const ALL: [Code; 18] = [
        Code::BadRequest,
        Code::PatchRejected,
        Code::AgentLimitExceeded,
        Code::Unauthorized,
        Code::Forbidden,
        Code::InvalidJson,
        Code::ValidationFailed,
        Code::NotFound,
        Code::Conflict,
        Code::InvalidState,
        Code::PayloadTooLarge,
        Code::UnsupportedMediaType,
        Code::MethodNotAllowed,
        Code::RateLimited,
        Code::IdempotencyMismatch,
        Code::Unavailable,
        Code::StorageFull,
        Code::Internal,
    ];
}

#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub details: Value,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            details: Value::Null,
        }
    }
    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = details;
        self
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::BadRequest, message)
    }
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(Code::NotFound, format!("{} not found", what.into()))
    }
    /// A request beyond a quota: 413 for sizes, 400 otherwise, with the limit's stable code
    /// in `details.limit`.
    pub fn limit(e: aob_limits::LimitError) -> ApiError {
        let code = match e {
            aob_limits::LimitError::TooLarge { .. } => Code::PayloadTooLarge,
            _ => Code::BadRequest,
        };
        ApiError::new(code, e.to_string()).with_details(json!({"limit": e.code()}))
    }

    pub fn validation(issues: &[aob_model::Issue]) -> ApiError {
        let errors: Vec<&aob_model::Issue> = issues.iter().filter(|i| i.severity == aob_model::Severity::Error).collect();
        let summary = errors
            .iter()
            .map(|i| format!("{}: {}", if i.pointer.is_empty() { "/" } else { &i.pointer }, i.message))
            .collect::<Vec<_>>()
            .join("; ");
        ApiError::new(Code::ValidationFailed, format!("workflow is invalid ({} errors): {summary}", errors.len()))
            .with_details(json!({"errors": errors, "warnings": issues.iter().filter(|i| i.severity == aob_model::Severity::Warning).collect::<Vec<_>>()}))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self.code, Code::Internal | Code::Unavailable | Code::StorageFull) {
            tracing::error!(code = self.code.as_str(), message = %self.message, "request failed");
        }
        let headers = if self.code == Code::RateLimited {
            crate::limits::rejection_headers(&self.details)
        } else {
            Default::default()
        };
        let body = json!({"error": {"code": self.code.as_str(), "message": self.message, "details": self.details}});
        (self.code.status(), headers, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(m) => ApiError::new(Code::Conflict, m),
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Unavailable(m) => ApiError::new(Code::Unavailable, m),
            StoreError::Backend(m) => ApiError::new(Code::Internal, m),
            StoreError::Fenced(m) => ApiError::new(Code::Unavailable, m),
            StoreError::Full(m) => ApiError::new(Code::StorageFull, format!("the store is out of space; nothing was written, retry later: {m}")),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> ApiError {
        match e {
            RuntimeError::Store(s) => s.into(),
            RuntimeError::NotFound(m) => ApiError::not_found(m),
            RuntimeError::Invalid(m) => ApiError::new(Code::ValidationFailed, m),
            RuntimeError::Conflict(m) => ApiError::new(Code::Conflict, m),
            RuntimeError::Stopped => ApiError::new(Code::Unavailable, "the server is shutting down"),
            RuntimeError::NotOwner(m) | RuntimeError::Unavailable(m) => ApiError::new(Code::Unavailable, m),
            e @ RuntimeError::Rejected { .. } => crate::patches::rejected(e),
        }
    }
}
