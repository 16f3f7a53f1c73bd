//! Workflows (content-addressed) and tags.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use aob_model::validate::parse_and_validate;
use aob_store::TagUpdate;

use crate::error::{ApiError, ApiResult, Code};
use crate::auth::Caller;
use crate::extract::{Json, Query};
use crate::{AppState, views};

/// Parses a workflow given as a JSON object or as YAML/JSON text.
pub fn workflow_doc(v: &Value) -> ApiResult<Value> {
    match v {
        Value::Object(_) => Ok(v.clone()),
        Value::String(text) => {
            let wf = aob_model::Workflow::parse(text)
                .map_err(|e| ApiError::new(Code::ValidationFailed, e.to_string()).with_details(json!({"errors": [{"pointer": "", "code": "invalid_document", "message": e.to_string()}]})))?;
            serde_json::to_value(wf).map_err(|e| ApiError::bad_request(e.to_string()))
        }
        _ => Err(ApiError::bad_request("workflow must be an object (or YAML text)")),
    }
}

pub fn check_tag_name(name: &str) -> ApiResult<()> {
    if name.is_empty() || name.len() > 200 || name.starts_with("_global_") || name.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(format!("invalid tag_name '{name}': 1-200 printable characters, not starting with _global_")));
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct CreateWorkflow {
    tag_name: Option<String>,
    workflow: Option<Value>,
}

pub async fn create(State(app): State<AppState>, caller: Caller, Json(body): Json<CreateWorkflow>) -> ApiResult<impl IntoResponse> {
    let tag = body.tag_name.ok_or_else(|| ApiError::bad_request("tag_name is required"))?;
    check_tag_name(&tag)?;
    let doc = workflow_doc(&body.workflow.ok_or_else(|| ApiError::bad_request("workflow is required"))?)?;
    let (wf, warnings) = parse_and_validate(&doc).map_err(|issues| ApiError::validation(&issues))?;
    let (nodes, edges) = (wf.nodes.len(), wf.edges.len());
    let plan = app.rt.register(wf, &caller.owner).await?;
    let existed = app.rt.store.get_tag(&caller.owner, &tag).await?.is_some();
    let t = app
        .rt
        .store
        .set_tag(TagUpdate {
            owner: caller.owner.clone(),
            name: tag,
            hash: plan.hash.clone(),
            expected_version: None,
            by: caller.owner.clone(),
            op: if existed { "move".into() } else { "create".into() },
            at: app.rt.clock.now_ms(),
        })
        .await?;
    let mut out = views::tag(&t);
    out["nodes_count"] = json!(nodes);
    out["edges_count"] = json!(edges);
    out["warnings"] = serde_json::to_value(&warnings).unwrap_or(Value::Null);
    Ok((StatusCode::CREATED, axum::Json(out)))
}

pub async fn list(State(app): State<AppState>, caller: Caller) -> ApiResult<axum::Json<Value>> {
    let tags = app.rt.store.list_tags(&caller.owner).await?;
    let items: Vec<Value> = tags.iter().map(views::tag).collect();
    Ok(axum::Json(json!({"count": items.len(), "workflows": items})))
}

#[derive(Deserialize, Default)]
pub struct Materialize {
    #[serde(default)]
    materialize: Option<bool>,
}

pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path(tag): Path<String>,
    Query(q): Query<Materialize>,
) -> ApiResult<axum::Json<Value>> {
    let t = app.rt.store.get_tag(&caller.owner, &tag).await?.ok_or_else(|| ApiError::not_found(format!("workflow '{tag}'")))?;
    let mut out = views::tag(&t);
    if q.materialize.unwrap_or(true) {
        let blob = app.rt.store.get_blob(&t.hash).await?.ok_or_else(|| ApiError::not_found(format!("workflow {}", t.hash)))?;
        out["workflow"] = blob.content;
    }
    Ok(axum::Json(out))
}

pub async fn version(
    State(app): State<AppState>,
    caller: Caller,
    Path((tag, seq)): Path<(String, String)>,
    Query(q): Query<Materialize>,
) -> ApiResult<axum::Json<Value>> {
    let seq: u64 = seq.parse().map_err(|_| ApiError::bad_request(format!("version seq '{seq}' is not a non-negative integer")))?;
    let history = app.rt.store.tag_history(&caller.owner, &tag).await?;
    if history.is_empty() {
        return Err(ApiError::not_found(format!("workflow '{tag}'")));
    }
    let v = history.iter().find(|v| v.seq == seq).ok_or_else(|| ApiError::not_found(format!("workflow version {tag}@{seq}")))?;
    let mut out = json!({"tag": tag, "owner": caller.owner, "seq": v.seq, "hash": v.hash, "cas_id": v.hash, "op": v.op, "by": v.by, "at": aob_store::rfc3339_ms(v.at)});
    if q.materialize.unwrap_or(true) {
        let blob = app.rt.store.get_blob(&v.hash).await?.ok_or_else(|| ApiError::not_found(format!("workflow {}", v.hash)))?;
        out["workflow"] = blob.content;
    }
    Ok(axum::Json(out))
}

pub async fn delete(State(app): State<AppState>, caller: Caller, Path(tag): Path<String>) -> ApiResult<axum::Json<Value>> {
    if !app.rt.store.delete_tag(&caller.owner, &tag).await? {
        return Err(ApiError::not_found(format!("workflow '{tag}'")));
    }
    Ok(axum::Json(json!({"message": "workflow tag deleted", "tag": tag, "owner": caller.owner})))
}

#[derive(Deserialize)]
pub struct ValidateBody {
    workflow: Option<Value>,
}

/// Validates without storing anything.
pub async fn validate(_caller: Caller, Json(body): Json<ValidateBody>) -> ApiResult<axum::Json<Value>> {
    let doc = workflow_doc(&body.workflow.ok_or_else(|| ApiError::bad_request("workflow is required"))?)?;
    let issues = match parse_and_validate(&doc) {
        Ok((_, w)) => w,
        Err(e) => e,
    };
    let valid = !aob_model::validate::has_errors(&issues);
    let errors: Vec<_> = issues.iter().filter(|i| i.severity == aob_model::Severity::Error).collect();
    let warnings: Vec<_> = issues.iter().filter(|i| i.severity == aob_model::Severity::Warning).collect();
    Ok(axum::Json(json!({"valid": valid, "errors": errors, "warnings": warnings})))
}

pub async fn schema(_caller: Caller) -> axum::Json<Value> {
    axum::Json(aob_model::schema::workflow_schema())
}
