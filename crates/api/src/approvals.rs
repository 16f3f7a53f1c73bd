//! Human approvals: list, show, decide (and the seed's `POST /api/approval`).

use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use aob_engine::Decision;
use aob_store::Approval;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Code};
use crate::extract::{Json, Query};

fn ts(ms: Option<i64>) -> Value {
    ms.map(|t| Value::String(aob_store::rfc3339_ms(t))).unwrap_or(Value::Null)
}

pub fn view(a: &Approval) -> Value {
    json!({
        "approval_id": a.id,
        "run_id": a.run_id,
        "node_id": a.node_id,
        "status": a.status,
        "message": a.message,
        "data": a.data,
        "approvers": a.approvers,
        "created_at": ts(Some(a.created_at)),
        "timeout_at": ts(a.timeout_at),
        "decided_at": ts(a.decided_at),
        "decided_by": a.decided_by,
        "comment": a.comment,
        "decision_data": a.decision_data,
    })
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
}

pub async fn list(State(app): State<AppState>, caller: Caller, Query(q): Query<ListQuery>) -> ApiResult<axum::Json<Value>> {
    if let Some(s) = &q.status
        && !matches!(s.as_str(), "pending" | "approved" | "rejected" | "timed_out" | "cancelled")
    {
        return Err(ApiError::bad_request(format!("unknown approval status '{s}'")));
    }
    let items = app.rt.store.list_approvals(&caller.owner, q.status.as_deref(), q.limit.unwrap_or(100)).await?;
    let items: Vec<Value> = items.iter().map(view).collect();
    Ok(axum::Json(json!({"approvals": items, "count": items.len()})))
}

async fn load(app: &AppState, caller: &Caller, id: &str) -> ApiResult<Approval> {
    match app.rt.store.get_approval(id).await? {
        Some(a) if a.owner == caller.owner => Ok(a),
        _ => Err(ApiError::not_found(format!("approval {id}"))),
    }
}

pub async fn get(State(app): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(view(&load(&app, &caller, &id).await?)))
}

#[derive(Deserialize)]
pub struct DecideBody {
    decision: String,
    comment: Option<String>,
    #[serde(default)]
    data: Value,
}

async fn decide_on(app: &AppState, caller: &Caller, a: Approval, approved: bool, comment: Option<String>, data: Value) -> ApiResult<axum::Json<Value>> {
    let role = format!("role:{}", caller.role);
    let listed = a.approvers.iter().any(|x| *x == caller.user || *x == role);
    if !a.approvers.is_empty() && !listed && !caller.is_admin() {
        return Err(ApiError::new(
            Code::Forbidden,
            format!("user '{}' is not among the approvers of {}", caller.user, a.id),
        ));
    }
    if a.status != "pending" {
        return Err(ApiError::new(Code::Conflict, format!("approval {} is already {}", a.id, a.status)).with_details(json!({"status": a.status})));
    }
    let decision = Decision {
        approved,
        comment,
        by: caller.user.clone(),
        data,
    };
    if !app.rt.decide(&a.run_id, &a.node_id, a.activation, decision).await? {
        // Another decision (or the timeout) got there first.
        let now = app.rt.store.get_approval(&a.id).await?.map(|x| x.status).unwrap_or_default();
        return Err(ApiError::new(Code::Conflict, format!("approval {} is already {now}", a.id)).with_details(json!({"status": now})));
    }
    let fresh = app
        .rt
        .store
        .get_approval(&a.id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("approval {}", a.id)))?;
    Ok(axum::Json(view(&fresh)))
}

pub async fn decide(State(app): State<AppState>, caller: Caller, Path(id): Path<String>, Json(b): Json<DecideBody>) -> ApiResult<axum::Json<Value>> {
    let approved = match b.decision.as_str() {
        "approve" | "approved" => true,
        "reject" | "rejected" => false,
        other => return Err(ApiError::bad_request(format!("decision must be approve or reject, not '{other}'"))),
    };
    let a = load(&app, &caller, &id).await?;
    decide_on(&app, &caller, a, approved, b.comment, b.data).await
}

#[derive(Deserialize)]
pub struct SeedBody {
    run_id: String,
    node_id: String,
    approved: bool,
    comment: Option<String>,
    #[serde(default)]
    data: Value,
}

/// The seed's route: the newest approval of a run's node.
pub async fn seed(State(app): State<AppState>, caller: Caller, Json(b): Json<SeedBody>) -> ApiResult<axum::Json<Value>> {
    let run = app
        .rt
        .store
        .get_run(&b.run_id)
        .await?
        .filter(|r| r.owner == caller.owner)
        .ok_or_else(|| ApiError::not_found(format!("run {}", b.run_id)))?;
    let all = app.rt.store.list_approvals(&caller.owner, None, 1000).await?;
    let a = all
        .into_iter()
        .filter(|a| a.run_id == run.run_id && a.node_id == b.node_id)
        .max_by_key(|a| (a.activation, a.created_at))
        .ok_or_else(|| ApiError::not_found(format!("approval for node {} of run {}", b.node_id, b.run_id)))?;
    let mut out = decide_on(&app, &caller, a, b.approved, b.comment, b.data).await?.0;
    out["success"] = json!(true);
    Ok(axum::Json(out))
}
