//! Extractors whose rejections use the API error envelope.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::{ApiError, Code};

pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;

    /// The body's nesting is measured before it is parsed: a body nested deeper than the
    /// limit is refused without any recursive parser seeing it.
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::Bytes::from_request(Request::from_parts(parts.clone(), body), state).await {
            Ok(b) => b,
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(Code::PayloadTooLarge, "request body is too large"));
            }
            Err(e) => return Err(ApiError::bad_request(e.body_text())),
        };
        state.guards.opts.limits.check_text(&bytes).map_err(ApiError::limit)?;
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(Code::UnsupportedMediaType, "expected Content-Type: application/json")),
            Err(JsonRejection::BytesRejection(e)) => {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    Err(ApiError::new(Code::PayloadTooLarge, "request body is too large"))
                } else {
                    Err(ApiError::bad_request(e.body_text()))
                }
            }
            Err(e) => Err(ApiError::new(Code::InvalidJson, e.body_text())),
        }
    }
}

pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => Err(ApiError::bad_request(e.body_text())),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Parses an optional JSON body: empty means `None`.
pub fn optional_json<T: DeserializeOwned>(body: &[u8]) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    aob_limits::Limits::default().check_text(body).map_err(ApiError::limit)?;
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| ApiError::new(Code::InvalidJson, format!("invalid JSON body: {e}")))
}
