//! Run patches (change a running run's graph) and node replay.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use aob_runtime::{PatchRequest, RuntimeError};
use aob_store::PatchRecord;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Code};
use crate::extract::{Json, optional_json};
use crate::runs;

pub fn view(p: &PatchRecord) -> Value {
    json!({
        "run_id": p.run_id,
        "seq": p.seq,
        "status": p.status,
        "author": p.author,
        "description": p.description,
        "node_id": p.node_id,
        "operations": p.operations,
        "op_count": p.operations.as_array().map_or(0, Vec::len),
        "base_hash": p.base_hash,
        "result_hash": p.result_hash,
        "created_at": aob_store::rfc3339_ms(p.created_at),
        "decided_at": p.decided_at.map(aob_store::rfc3339_ms),
        "decided_by": p.decided_by,
        "reason": p.reason,
    })
}

/// Patch and replay refusals: every reason in `details.errors`.
pub fn rejected(e: RuntimeError) -> ApiError {
    match e {
        RuntimeError::Rejected { code, issues } => {
            let (c, status_code) = match code {
                "validation_failed" | "invalid_patch" => (Code::ValidationFailed, code),
                "agent_limit_exceeded" => (Code::AgentLimitExceeded, code),
                _ => (Code::PatchRejected, code),
            };
            let summary = issues
                .iter()
                .map(|i| {
                    let pointer = i["pointer"].as_str().unwrap_or_default();
                    format!(
                        "{}: {}",
                        if pointer.is_empty() { "/" } else { pointer },
                        i["message"].as_str().unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            ApiError::new(c, format!("patch refused ({status_code}): {summary}")).with_details(json!({"reason": status_code, "errors": issues}))
        }
        other => other.into(),
    }
}

#[derive(Deserialize)]
pub struct CreatePatch {
    operations: Vec<Value>,
    #[serde(default)]
    description: String,
    node_id: Option<String>,
}

pub async fn create(State(app): State<AppState>, caller: Caller, Path(id): Path<String>, Json(b): Json<CreatePatch>) -> ApiResult<impl IntoResponse> {
    runs::load(&app, &caller, &id).await?;
    let req = PatchRequest {
        prepared: None,
        operations: b.operations,
        description: b.description,
        node_id: b.node_id,
        by: caller.user.clone(),
    };
    let rec = app.rt.patch(&id, req).await.map_err(rejected)?;
    Ok((StatusCode::CREATED, axum::Json(view(&rec))))
}

pub async fn list(State(app): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<axum::Json<Value>> {
    runs::load(&app, &caller, &id).await?;
    let items: Vec<Value> = app.rt.store.list_patches(&id).await?.iter().map(view).collect();
    Ok(axum::Json(json!({"run_id": id, "patches": items, "count": items.len()})))
}

fn seq_of(seq: &str) -> ApiResult<u64> {
    seq.parse()
        .map_err(|_| ApiError::bad_request(format!("patch seq '{seq}' is not a positive integer")))
}

pub async fn get(State(app): State<AppState>, caller: Caller, Path((id, seq)): Path<(String, String)>) -> ApiResult<axum::Json<Value>> {
    runs::load(&app, &caller, &id).await?;
    let seq = seq_of(&seq)?;
    let rec = app
        .rt
        .store
        .get_patch(&id, seq)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("patch {seq} of run {id}")))?;
    Ok(axum::Json(view(&rec)))
}

#[derive(Deserialize, Default)]
pub struct Review {
    reason: Option<String>,
}

async fn review(app: AppState, caller: Caller, id: String, seq: String, body: axum::body::Bytes, approve: bool) -> ApiResult<axum::Json<Value>> {
    runs::load(&app, &caller, &id).await?;
    let seq = seq_of(&seq)?;
    let reason = optional_json::<Review>(&body)?.and_then(|r| r.reason);
    // Review is only worth something when the reviewer is someone else; an author may
    // still withdraw (reject) their own patch.
    if approve
        && app.guards.opts.forbid_self_approval
        && let Some(p) = app.rt.store.get_patch(&id, seq).await?
        && p.author == caller.user
    {
        return Err(ApiError::new(
            Code::Forbidden,
            format!("patch {seq} was written by {}; another user must approve it", p.author),
        ));
    }
    let rec = app.rt.decide_patch(&id, seq, approve, &caller.user, reason).await.map_err(rejected)?;
    if approve && rec.status != "applied" {
        return Err(ApiError::new(
            Code::Conflict,
            format!("patch {seq} no longer applies: {}", rec.reason.clone().unwrap_or_default()),
        )
        .with_details(view(&rec)));
    }
    Ok(axum::Json(view(&rec)))
}

pub async fn approve(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, seq)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<axum::Json<Value>> {
    review(app, caller, id, seq, body, true).await
}

pub async fn reject(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, seq)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<axum::Json<Value>> {
    review(app, caller, id, seq, body, false).await
}

#[derive(Deserialize, Default)]
pub struct ReplayBody {
    config: Option<Value>,
    #[serde(default)]
    reason: String,
}

pub async fn replay(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, node)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<axum::Json<Value>> {
    runs::load(&app, &caller, &id).await?;
    let b = optional_json::<ReplayBody>(&body)?.unwrap_or_default();
    let st = app.rt.replay(&id, &node, b.config, &caller.user, &b.reason).await.map_err(|e| match e {
        RuntimeError::Conflict(m) => ApiError::new(Code::InvalidState, m),
        other => rejected(other),
    })?;
    Ok(axum::Json(
        json!({"run_id": id, "node_id": node, "replayed": true, "status": st.status.as_str()}),
    ))
}
