//! The native HTTP API (axum): workflows, runs, events, artifacts, health.
//!
//! Invariants: every error leaves through [`error::ApiError`] (one envelope, stable
//! codes); a caller mistake is a 4xx and changes nothing; handlers never hold
//! engine state, they talk to the runtime through its handle.

pub mod error;
mod events;
mod extract;
mod openapi;
mod runs;
mod views;
mod workflows;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;

use aob_runtime::Handle;

pub use openapi::spec as openapi_spec;

/// The owner of everything until API keys and tenants exist.
pub const LOCAL_OWNER: &str = "local";

#[derive(Clone)]
pub struct AppState {
    pub rt: Handle,
    /// Process start, for the version endpoint.
    pub started_at: i64,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Largest accepted request body.
    pub body_limit: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { body_limit: 4 * 1024 * 1024 }
    }
}

pub fn router(state: AppState, opts: &Options) -> Router {
    let api = Router::new()
        .route("/workflows", post(workflows::create).get(workflows::list))
        .route("/workflows/validate", post(workflows::validate))
        .route("/workflows/{tag}", get(workflows::get).delete(workflows::delete))
        .route("/workflows/{tag}/versions/{seq}", get(workflows::version))
        .route("/workflows/{tag}/execute", post(runs::execute))
        .route("/schema/workflow", get(workflows::schema))
        .route("/runs", post(runs::create).get(runs::list))
        .route("/runs/{id}", get(runs::get))
        .route("/runs/{id}/details", get(runs::details))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/runs/{id}/pause", post(runs::pause))
        .route("/runs/{id}/resume", post(runs::resume))
        .route("/runs/{id}/events", get(events::run_stream))
        .route("/runs/{id}/events/list", get(events::run_page))
        .route("/events", get(events::owner_stream))
        .route("/artifacts/{id}", get(runs::artifact))
        .route("/version", get(version));
    Router::new()
        .nest("/api/v1", api)
        .route("/health", get(health))
        .route("/readiness", get(readiness))
        .route("/openapi.json", get(|| async { axum::Json(openapi::spec()) }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(opts.body_limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            error::ApiError::new(error::Code::Internal, "internal error").into_response()
        }))
        .with_state(state)
}

async fn not_found() -> error::ApiError {
    error::ApiError::new(error::Code::NotFound, "no such route")
}

async fn method_not_allowed() -> error::ApiError {
    error::ApiError::new(error::Code::MethodNotAllowed, "method not allowed on this route")
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"status": "ok", "service": "aob"}))
}

/// Ready when the store answers.
async fn readiness(State(app): State<AppState>) -> impl IntoResponse {
    let probe = aob_store::RunFilter { limit: 1, ..Default::default() };
    match tokio::time::timeout(Duration::from_secs(2), app.rt.store.list_runs(probe)).await {
        Ok(Ok(_)) => (StatusCode::OK, axum::Json(json!({"status": "ready"}))),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "unavailable", "reason": e.to_string()}))),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "unavailable", "reason": "store timeout"}))),
    }
}

async fn version(State(app): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({
        "name": "aob",
        "version": env!("CARGO_PKG_VERSION"),
        "api": "v1",
        "started_at": aob_store::rfc3339_ms(app.started_at),
    }))
}

/// Serves until `shutdown` resolves, then drains open requests.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
