//! Idempotency keys for every POST and PATCH: a request carrying `Idempotency-Key`
//! (or, on run creation, `idempotency_key` in its body) is answered once; a repeat
//! within 24 hours gets the first answer (status and body) again, with
//! `Idempotent-Replayed: true`. The same key with another method, path or body is
//! `422 idempotency_mismatch`; a repeat while the first is still being answered is a 409.
//!
//! Server errors and rate-limit rejections are not remembered: retrying them with the
//! same key runs the request again. Keys are per tenant.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{MatchedPath, OriginalUri, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use aob_store::{IdempotencyRecord, Store};

use crate::AppState;
use crate::auth;
use crate::error::{ApiError, Code};

/// How long an answer is replayed.
pub const TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// A claim still in progress after this long is taken to be abandoned (its process died).
const PENDING_MS: i64 = 5 * 60 * 1000;
/// Scale-out: a claim in progress this old was left by a process that died.
const SHARED_PENDING_MS: i64 = 2 * 60 * 1000;
/// Largest response remembered.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
const MAX_KEY: usize = 255;

/// Routes whose body may carry the key as `idempotency_key`.
fn body_key_route(path: Option<&str>) -> bool {
    let path = path.map(|p| p.strip_prefix("/api/v1").unwrap_or(p));
    matches!(path, Some("/runs" | "/workflows/{tag}/execute"))
}

/// Releases a claim when its request ends without an answer worth keeping (including
/// when the client goes away and the handler is dropped).
struct Claim {
    store: Arc<dyn Store>,
    rec: Option<IdempotencyRecord>,
}

impl Claim {
    async fn complete(mut self, status: StatusCode, body: Vec<u8>) {
        if let Some(rec) = self.rec.take()
            && let Err(e) = self.store.complete_idempotency(&rec, status.as_u16(), body).await
        {
            tracing::warn!(key = %rec.key, error = %e, "storing an idempotent response failed");
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            let store = self.store.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = store.release_idempotency(&rec).await;
                });
            }
        }
    }
}

fn replay(status: u16, body: Vec<u8>) -> Response {
    let mut resp = (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

/// Middleware on every route of the API; only POST and PATCH with a key are affected.
pub async fn layer(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::POST | Method::PATCH) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let header_key = match parts.headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(k)) => Some(k.trim().to_string()),
        Some(Err(_)) => return ApiError::bad_request("Idempotency-Key must be visible ASCII").into_response(),
        None => None,
    };
    let body_route = body_key_route(parts.extensions.get::<MatchedPath>().map(MatchedPath::as_str));
    if header_key.is_none() && !body_route {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let Ok(caller) = auth::caller(&mut parts, &app).await else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let bytes = match axum::body::to_bytes(body, app.guards.opts.body_limit).await {
        Ok(b) => b,
        Err(_) => return ApiError::new(Code::PayloadTooLarge, "request body is too large").into_response(),
    };
    let key = header_key.or_else(|| {
        serde_json::from_slice::<Value>(&bytes)
            .ok()?
            .get("idempotency_key")?
            .as_str()
            .map(str::to_string)
    });
    let Some(key) = key else {
        return next.run(Request::from_parts(parts, Body::from(bytes))).await;
    };
    if key.is_empty() || key.len() > MAX_KEY || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return ApiError::bad_request(format!("an idempotency key is 1-{MAX_KEY} visible ASCII characters")).into_response();
    }
    let store = app.rt.store.clone();
    let now = app.rt.clock.now_ms();
    purge_now_and_then(&app, now);
    let rec = IdempotencyRecord {
        tenant: caller.owner.clone(),
        key: key.clone(),
        // Inside the nested router the URI lost its `/api/v1` prefix; the original has it.
        request: format!(
            "{} {}",
            parts.method,
            parts.extensions.get::<OriginalUri>().map_or(parts.uri.path(), |u| u.path())
        ),
        body_hash: hex::encode(Sha256::digest(&bytes)),
        status: None,
        response: None,
        created_at: now,
    };
    // A claim still in progress that predates this process was left by one that died
    // mid-request (kill -9): nobody will ever answer it, so a retry takes it over. With
    // one process per store every live claim was made by this process; when processes
    // share the store, a claim is presumed abandoned only once it is older than any
    // request can take (a forwarded call gives up after its timeout).
    let pending_since = if app.guards.opts.shared_store {
        now - SHARED_PENDING_MS
    } else {
        (now - PENDING_MS).max(app.started_at)
    };
    match store.claim_idempotency(rec.clone(), now - TTL_MS, pending_since).await {
        Err(e) => ApiError::from(e).into_response(),
        Ok(Some(first)) if first.request != rec.request || first.body_hash != rec.body_hash => {
            let what = if first.request != rec.request { "another request" } else { "another body" };
            ApiError::new(
                Code::IdempotencyMismatch,
                format!("Idempotency-Key '{key}' was first used with {what}; use a new key for a new request"),
            )
            .with_details(json!({"idempotency_key": key, "first_request": first.request, "request": rec.request}))
            .into_response()
        }
        Ok(Some(first)) => match first.status {
            Some(status) => replay(status, first.response.unwrap_or_default()),
            None => ApiError::new(
                Code::Conflict,
                format!("a request with Idempotency-Key '{key}' is still being answered; retry shortly"),
            )
            .with_details(json!({"idempotency_key": key}))
            .into_response(),
        },
        Ok(None) => {
            let claim = Claim { store, rec: Some(rec) };
            let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
            let status = resp.status();
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                return resp; // the claim is released on drop
            }
            let (parts, body) = resp.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_RESPONSE).await else {
                return ApiError::new(Code::Internal, "response too large to remember").into_response();
            };
            // A large answer is not kept whole: a replay gets the status and a short note,
            // and the request is still not performed twice.
            let max = app.guards.opts.limits.idempotency_response_bytes;
            let remembered = if bytes.len() > max {
                json!({"idempotent_replay": true, "message": format!("the original response ({} bytes) was larger than the {max} bytes kept for idempotency keys", bytes.len())})
                    .to_string()
                    .into_bytes()
            } else {
                bytes.to_vec()
            };
            claim.complete(status, remembered).await;
            Response::from_parts(parts, Body::from(bytes))
        }
    }
}

/// Deletes expired records at most once an hour, off the request's path.
fn purge_now_and_then(app: &AppState, now: i64) {
    let last = &app.guards.idempotency_purged_at;
    let prev = last.load(Ordering::Relaxed);
    if now - prev < 60 * 60 * 1000 || last.compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        return;
    }
    let store = app.rt.store.clone();
    let limits = app.guards.limits.clone();
    tokio::spawn(async move {
        if let Err(e) = store.purge_idempotency(now - TTL_MS).await {
            tracing::warn!(error = %e, "purging idempotency keys failed");
        }
        limits.retain_recent();
    });
}
