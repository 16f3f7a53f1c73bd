//! The native HTTP API (axum): workflows, runs, events, artifacts, health.
//!
//! Invariants: every error leaves through [`error::ApiError`] (one envelope, stable
//! codes); a caller mistake is a 4xx and changes nothing; handlers never hold
//! engine state, they talk to the runtime through its handle.

mod approvals;
pub mod auth;
pub mod error;
mod events;
mod extract;
mod idempotency;
mod keys;
pub mod limits;
mod openapi;
mod patches;
mod runs;
mod tags;
mod views;
mod workflows;
mod ws;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;

use aob_runtime::Handle;

pub use openapi::spec as openapi_spec;

#[derive(Clone)]
pub struct AppState {
    pub rt: Handle,
    pub keys: auth::Keys,
    /// Process start, for the version endpoint.
    pub started_at: i64,
    /// Options, rate limiters and idempotency bookkeeping; set by [`router`].
    pub(crate) guards: Arc<Guards>,
}

impl AppState {
    pub fn new(rt: Handle, keys: auth::Keys, started_at: i64) -> AppState {
        AppState {
            rt,
            keys,
            started_at,
            guards: Arc::new(Guards::new(Options::default())),
        }
    }
}

pub(crate) struct Guards {
    pub opts: Options,
    pub limits: Arc<limits::Limiters>,
    /// When expired idempotency records were last purged (ms).
    pub idempotency_purged_at: AtomicI64,
    /// `GET /runs/:id` bodies of finished runs, keyed by run id and valid while the
    /// runtime's read cache hands out the same record (the same `Arc`).
    pub rendered: std::sync::Mutex<std::collections::HashMap<String, (Arc<aob_store::RunRecord>, axum::body::Bytes)>>,
}

impl Guards {
    fn new(opts: Options) -> Guards {
        let clock = opts.limit_clock.clone().unwrap_or_else(limits::LimitClock::monotonic);
        let limits = Arc::new(limits::Limiters::new(&opts.rate_limit, &clock));
        Guards {
            opts,
            limits,
            idempotency_purged_at: AtomicI64::new(0),
            rendered: Default::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Largest accepted request body.
    pub body_limit: usize,
    pub rate_limit: limits::RateLimits,
    pub ws: ws::WsOptions,
    /// The rate limiters' clock (monotonic when `None`).
    pub limit_clock: Option<limits::LimitClock>,
    /// Serve the API (false: a worker- or engine-only process serves health, readiness
    /// and metrics only).
    pub api: bool,
    /// Other processes share the store (scale-out): a claim in progress may belong to
    /// a live process that started before this one.
    pub shared_store: bool,
    /// Quotas on what callers send (depth, sizes, validation work).
    pub limits: Arc<aob_limits::Limits>,
    /// A bearer token that may read `/metrics` (besides platform admins' keys).
    pub metrics_token: Option<auth::ScrapeToken>,
    /// Under patch review, the author of a run patch may not approve it (four eyes).
    pub forbid_self_approval: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            body_limit: 4 * 1024 * 1024,
            rate_limit: Default::default(),
            ws: Default::default(),
            limit_clock: None,
            api: true,
            shared_store: false,
            limits: Arc::new(aob_limits::Limits::default()),
            metrics_token: None,
            forbid_self_approval: false,
        }
    }
}

pub use limits::{RateLimits, Tiers};
pub use ws::WsOptions;

/// Per-route rate limits (outer) and idempotency keys, on every route but health,
/// readiness and the OpenAPI document.
fn guarded(r: Router<AppState>, state: &AppState) -> Router<AppState> {
    r.route_layer(axum::middleware::from_fn_with_state(state.clone(), idempotency::layer))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), limits::per_route))
}

pub fn router(mut state: AppState, opts: &Options) -> Router {
    state.guards = Arc::new(Guards::new(opts.clone()));
    let api = Router::new()
        .route("/workflows", post(workflows::create).get(workflows::list))
        .route("/workflows/validate", post(workflows::validate))
        .route("/workflows/{tag}", get(workflows::get).delete(workflows::delete))
        .route("/workflows/{tag}/versions/{seq}", get(workflows::version))
        .route("/workflows/{tag}/execute", post(runs::execute))
        .route("/workflows/{tag}/patch", axum::routing::patch(tags::patch))
        .route("/workflows/{tag}/history", get(tags::history))
        .route("/workflows/{tag}/move", post(tags::move_tag))
        .route("/ws", get(ws::handler))
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
        .route("/version", get(version))
        .route("/keys", post(keys::create).get(keys::list))
        .route("/keys/{id}", axum::routing::delete(keys::revoke))
        .route("/whoami", get(keys::whoami))
        .route("/runs/{id}/patches", post(patches::create).get(patches::list))
        .route("/runs/{id}/patches/{seq}", get(patches::get))
        .route("/runs/{id}/patches/{seq}/approve", post(patches::approve))
        .route("/runs/{id}/patches/{seq}/reject", post(patches::reject))
        .route("/runs/{id}/nodes/{node}/replay", post(patches::replay))
        .route("/approvals", get(approvals::list))
        .route("/approvals/{id}", get(approvals::get))
        .route("/approvals/{id}/decide", post(approvals::decide));
    let api = guarded(api, &state);
    let seed = guarded(Router::new().route("/api/approval", post(approvals::seed)), &state);
    let routes = if opts.api {
        Router::new().nest("/api/v1", api).merge(seed)
    } else {
        Router::new()
    };
    routes
        .route("/health", get(health))
        .route("/readiness", get(readiness))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { axum::Json(openapi::spec()) }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(opts.body_limit))
        .layer(axum::middleware::map_response(envelope_plain_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            error::ApiError::new(error::Code::Internal, "internal error").into_response()
        }))
        .with_state(state)
}

/// Rejections produced by axum itself are plain text: the body limit on handlers that
/// read raw bytes (the seed's execute route, cancel), malformed path segments, and so
/// on. Rewrap them so that every 4xx/5xx leaves in the one envelope; the status and
/// other headers are kept.
async fn envelope_plain_errors(resp: axum::response::Response) -> axum::response::Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        return resp;
    }
    use error::Code;
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => Code::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::UnsupportedMediaType,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => Code::MethodNotAllowed,
        StatusCode::CONFLICT => Code::Conflict,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        s if s.is_server_error() => Code::Internal,
        _ => Code::BadRequest,
    };
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let body = json!({"error": {"code": code.as_str(), "message": message, "details": null}}).to_string();
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    axum::response::Response::from_parts(parts, axum::body::Body::from(body))
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
    let probe = aob_store::RunFilter {
        limit: 1,
        ..Default::default()
    };
    let checks = async {
        app.rt.store.list_runs(probe).await.map_err(|e| e.to_string())?;
        app.rt.check_bus().await
    };
    match tokio::time::timeout(Duration::from_secs(2), checks).await {
        Ok(Ok(_)) => (StatusCode::OK, axum::Json(json!({"status": "ready", "shards": app.rt.shards_held()}))),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "unavailable", "reason": e}))),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "unavailable", "reason": "store or bus timeout"})),
        ),
    }
}

/// Prometheus text format. The figures are the whole platform's (every tenant's runs),
/// so they are for platform admins and for the configured scrape token only.
async fn metrics(State(app): State<AppState>, req: axum::extract::Request) -> Result<impl IntoResponse, error::ApiError> {
    let (mut parts, _) = req.into_parts();
    let scraper = match (&app.guards.opts.metrics_token, auth::header_key(&parts)) {
        (Some(token), Some(given)) => token.matches(&given),
        _ => false,
    };
    if !scraper && !auth::caller(&mut parts, &app).await?.is_platform_admin() {
        return Err(error::ApiError::new(
            error::Code::Forbidden,
            "metrics are readable by platform admins and the metrics token only",
        ));
    }
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.rt.metrics.render()))
}

async fn version(State(app): State<AppState>, _caller: auth::Caller) -> axum::Json<serde_json::Value> {
    axum::Json(json!({
        "name": "aob",
        "version": env!("CARGO_PKG_VERSION"),
        "api": "v1",
        "started_at": aob_store::rfc3339_ms(app.started_at),
    }))
}

/// Serves until `shutdown` resolves, then drains open requests.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Small SSE frames must not wait for the client's delayed ACK (Nagle).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
