//! Tag versions: patch a tag's workflow (RFC 6902, optimistic version check), its
//! history, and moving it back or forth to a recorded version (undo/redo).
//!
//! Every move is a new history entry (`seq` = the tag's version - 1, so `versions/0` is
//! the original); workflows are immutable and content-addressed, so a run keeps the
//! version it started with whatever happens to the tag afterwards.

use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use aob_store::{Tag, TagUpdate, TagVersion};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Code};
use crate::extract::{Json, Query};
use crate::workflows::{ScopeQuery, check_write, resolve, tag_view};

pub fn version_view(t: &Tag, v: &TagVersion) -> Value {
    json!({
        "tag": t.name,
        "owner": t.owner,
        "seq": v.seq,
        "hash": v.hash,
        "cas_id": v.hash,
        "op": v.op,
        "by": v.by,
        "at": aob_store::rfc3339_ms(v.at),
        "description": v.description,
        "current": v.seq + 1 == t.version,
    })
}

fn moved_view(t: &Tag, op_count: Option<usize>, description: &Option<String>) -> Value {
    let mut out = tag_view(t);
    out["seq"] = json!(t.version.saturating_sub(1));
    out["description"] = json!(description);
    if let Some(n) = op_count {
        out["op_count"] = json!(n);
    }
    out
}

/// 409 unless the client's `expected_version` (when given) is the tag's version.
fn check_expected(t: &Tag, expected: Option<u64>) -> ApiResult<()> {
    match expected {
        Some(e) if e != t.version => Err(
            ApiError::new(Code::Conflict, format!("workflow '{}' is at version {}, not {e}", t.name, t.version))
                .with_details(json!({"expected_version": e, "current_version": t.version})),
        ),
        _ => Ok(()),
    }
}

/// Moves the tag, checked against the version the change was computed from, so a
/// concurrent move is a 409 rather than a lost update.
async fn move_to(app: &AppState, caller: &Caller, t: &Tag, hash: String, op: &str, description: Option<String>) -> ApiResult<Tag> {
    let update = TagUpdate {
        owner: t.owner.clone(),
        name: t.name.clone(),
        hash,
        expected_version: Some(t.version),
        by: caller.user.clone(),
        op: op.into(),
        at: app.rt.clock.now_ms(),
        description,
    };
    match app.rt.store.set_tag(update).await {
        Ok(t) => Ok(t),
        Err(aob_store::StoreError::Conflict(m)) => Err(ApiError::new(Code::Conflict, m).with_details(json!({"expected_version": t.version}))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct PatchBody {
    operations: Option<Value>,
    description: Option<String>,
    expected_version: Option<u64>,
}

/// `PATCH /api/v1/workflows/:tag/patch`: RFC 6902 operations on the tag's workflow.
/// The result is validated like a new workflow (every problem at once), stored by its
/// hash, and the tag moves to it.
pub async fn patch(
    State(app): State<AppState>,
    caller: Caller,
    Path(tag): Path<String>,
    Query(q): Query<ScopeQuery>,
    Json(body): Json<PatchBody>,
) -> ApiResult<axum::Json<Value>> {
    let ops = body.operations.ok_or_else(|| ApiError::bad_request("operations is required"))?;
    let count = match ops.as_array() {
        Some(a) if !a.is_empty() => a.len(),
        _ => return Err(ApiError::bad_request("operations must be a non-empty array of RFC 6902 operations")),
    };
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(|e| {
        ApiError::bad_request(format!("invalid patch operations: {e}")).with_details(json!({"errors": [{"pointer": "/operations", "message": e.to_string()}]}))
    })?;
    let t = resolve(&app, &caller.owner, &tag, q.scope).await?;
    check_write(&caller, &t)?;
    check_expected(&t, body.expected_version)?;
    let blob = app
        .rt
        .store
        .get_blob(&t.hash)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("workflow {}", t.hash)))?;
    let mut doc = blob.content;
    let limits = app.guards.opts.limits.for_tenant(&caller.owner);
    if patch.0.len() > limits.patch_operations {
        return Err(
            ApiError::bad_request(format!("a patch may have at most {} operations", limits.patch_operations)).with_details(json!({"limit": "too_large"})),
        );
    }
    // One operation at a time, measuring the document after each: `copy` must not
    // amplify a small request into a huge document.
    for (i, op) in patch.0.iter().enumerate() {
        json_patch::patch(&mut doc, std::slice::from_ref(op)).map_err(|e| {
            ApiError::bad_request(format!("operation {i} does not apply: {e}"))
                .with_details(json!({"errors": [{"pointer": format!("/operations/{i}"), "path": e.path.to_string(), "message": e.kind.to_string()}]}))
        })?;
        aob_model::patch::within(&doc, &limits).map_err(|e| {
            ApiError::limit(e.clone()).with_details(json!({"limit": e.code(), "errors": [{"pointer": format!("/operations/{i}"), "message": e.to_string()}]}))
        })?;
    }
    let (wf, warnings) = crate::workflows::validated(&app, &caller, doc).await?;
    let plan = app.rt.register(wf, &t.owner).await?;
    let moved = move_to(&app, &caller, &t, plan.hash.clone(), "patch", body.description.clone()).await?;
    let mut out = moved_view(&moved, Some(count), &body.description);
    out["previous_hash"] = json!(t.hash);
    out["warnings"] = serde_json::to_value(&warnings).unwrap_or(Value::Null);
    Ok(axum::Json(out))
}

/// Every move of the tag, oldest first: op, who, when, hash, description.
pub async fn history(State(app): State<AppState>, caller: Caller, Path(tag): Path<String>, Query(q): Query<ScopeQuery>) -> ApiResult<axum::Json<Value>> {
    let t = resolve(&app, &caller.owner, &tag, q.scope).await?;
    let h = app.rt.store.tag_history(&t.owner, &t.name).await?;
    let items: Vec<Value> = h.iter().map(|v| version_view(&t, v)).collect();
    let mut out = tag_view(&t);
    out["count"] = json!(items.len());
    out["history"] = Value::Array(items);
    Ok(axum::Json(out))
}

#[derive(Deserialize)]
pub struct MoveBody {
    /// The history `seq` whose workflow the tag should point at.
    version: Option<u64>,
    expected_version: Option<u64>,
    description: Option<String>,
}

/// `POST /api/v1/workflows/:tag/move {version}`: points the tag at the workflow of
/// history entry `version` (undo/redo); recorded as a `move`.
pub async fn move_tag(
    State(app): State<AppState>,
    caller: Caller,
    Path(tag): Path<String>,
    Query(q): Query<ScopeQuery>,
    Json(body): Json<MoveBody>,
) -> ApiResult<axum::Json<Value>> {
    let to = body.version.ok_or_else(|| ApiError::bad_request("version (a history seq) is required"))?;
    let t = resolve(&app, &caller.owner, &tag, q.scope).await?;
    check_write(&caller, &t)?;
    check_expected(&t, body.expected_version)?;
    let h = app.rt.store.tag_history(&t.owner, &t.name).await?;
    let v = h
        .iter()
        .find(|v| v.seq == to)
        .ok_or_else(|| ApiError::not_found(format!("workflow version {tag}@{to}")))?;
    let description = Some(body.description.unwrap_or_else(|| format!("moved to version {to}")));
    let moved = move_to(&app, &caller, &t, v.hash.clone(), "move", description.clone()).await?;
    let mut out = moved_view(&moved, None, &description);
    out["moved_to"] = json!(to);
    out["previous_hash"] = json!(t.hash);
    Ok(axum::Json(out))
}
