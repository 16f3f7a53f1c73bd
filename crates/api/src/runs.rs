//! Runs: start, read, list, control.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use aob_engine::{Input, Plan, RunStatus};
use aob_runtime::StartRun;
use aob_store::RunFilter;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Code};
use crate::extract::{Json, Query, optional_json};
use crate::workflows::workflow_doc;
use crate::{AppState, views};

#[derive(Deserialize)]
pub struct CreateRun {
    workflow: Option<Value>,
    tag: Option<String>,
    #[serde(default)]
    inputs: Value,
    idempotency_key: Option<String>,
    /// Patches wait for review before they apply.
    #[serde(default)]
    patch_review: bool,
    /// Most agent nodes the run may reach through patches (default 5).
    agent_limit: Option<u32>,
}

#[derive(Deserialize)]
pub struct Execute {
    #[serde(default)]
    inputs: Value,
    idempotency_key: Option<String>,
}

/// Checks inputs against the `required` list and top-level property types of the
/// workflow's `inputs` schema.
fn check_inputs(plan: &Plan, inputs: &Value) -> ApiResult<()> {
    let Some(obj) = inputs.as_object() else {
        return Err(ApiError::bad_request("inputs must be a JSON object"));
    };
    let Some(schema) = &plan.workflow.inputs else { return Ok(()) };
    let mut problems = Vec::new();
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !obj.contains_key(r) {
                problems.push(json!({"pointer": format!("/inputs/{r}"), "message": format!("input '{r}' is required")}));
            }
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, p) in props {
            let (Some(v), Some(t)) = (obj.get(k), p.get("type").and_then(Value::as_str)) else {
                continue;
            };
            let ok = match t {
                "string" => v.is_string(),
                "number" => v.is_number(),
                "integer" => v.is_i64() || v.is_u64(),
                "boolean" => v.is_boolean(),
                "array" => v.is_array(),
                "object" => v.is_object(),
                "null" => v.is_null(),
                _ => true,
            };
            if !ok {
                problems.push(json!({"pointer": format!("/inputs/{k}"), "message": format!("input '{k}' must be of type {t}")}));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::ValidationFailed,
            format!("inputs do not match the workflow's inputs schema ({} problems)", problems.len()),
        )
        .with_details(json!({"errors": problems})))
    }
}

async fn resolve_tag(app: &AppState, owner: &str, tag: &str) -> ApiResult<Arc<Plan>> {
    // The caller's own tag, else a global one (whose workflow the tenant may then read).
    let t = crate::workflows::resolve(app, owner, tag, crate::workflows::Scope::All).await?;
    if t.owner != owner {
        app.rt.store.grant_blob(&t.hash, owner).await?;
    }
    Ok(app.rt.plans.get(&*app.rt.store, &t.hash).await?)
}

/// A run as the API starts it: a new id, no parent; null inputs mean `{}`.
fn new_run(owner: &str, plan: Arc<Plan>, tag: Option<String>, inputs: Value, key: Option<String>, settings: aob_engine::RunSettings) -> StartRun {
    StartRun {
        run_id: uuid::Uuid::now_v7().to_string(),
        owner: owner.to_string(),
        plan,
        inputs: if inputs.is_null() { json!({}) } else { inputs },
        tag,
        parent_run_id: None,
        idempotency_key: key,
        settings,
    }
}

async fn start(app: &AppState, req: StartRun) -> ApiResult<(StatusCode, Value)> {
    check_inputs(&req.plan, &req.inputs)?;
    let (owner, plan, tag, key) = (req.owner.clone(), req.plan.clone(), req.tag.clone(), req.idempotency_key.clone());
    let owner = owner.as_str();
    if let Some(k) = &key
        && let Some(existing) = app.rt.store.run_by_idempotency_key(owner, k).await?
    {
        return replay(app, &existing).await;
    }
    match app.rt.start(req).await {
        Ok(st) => Ok((
            StatusCode::CREATED,
            json!({"run_id": st.run_id, "status": st.status.as_str(), "workflow_hash": plan.hash, "tag": tag}),
        )),
        // Two requests with one key raced: the loser answers with the winner's run.
        Err(aob_runtime::RuntimeError::Conflict(m)) => match &key {
            Some(k) => match app.rt.store.run_by_idempotency_key(owner, k).await? {
                Some(existing) => replay(app, &existing).await,
                None => Err(ApiError::new(Code::Conflict, m)),
            },
            None => Err(ApiError::new(Code::Conflict, m)),
        },
        Err(e) => Err(e.into()),
    }
}

async fn replay(app: &AppState, run_id: &str) -> ApiResult<(StatusCode, Value)> {
    let rec = app
        .rt
        .store
        .get_run(run_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {run_id}")))?;
    Ok((
        StatusCode::CREATED,
        json!({"run_id": rec.run_id, "status": rec.state.status.as_str(), "workflow_hash": rec.workflow_hash, "tag": rec.tag, "idempotent_replay": true}),
    ))
}

fn header_key(headers: &HeaderMap) -> Option<String> {
    headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string)
}

pub async fn create(State(app): State<AppState>, caller: Caller, headers: HeaderMap, Json(body): Json<CreateRun>) -> ApiResult<impl IntoResponse> {
    let key = header_key(&headers).or(body.idempotency_key);
    let (plan, tag) = match (body.workflow, body.tag) {
        (Some(doc), None) => {
            let doc = workflow_doc(&doc)?;
            let (wf, _) = crate::workflows::validated(&app, &caller, doc).await?;
            // The tier is checked before anything is stored.
            app.guards.limits.check_tier(&caller, wf.agent_count())?;
            (app.rt.register(wf, &caller.owner).await?, None)
        }
        (None, Some(tag)) => {
            let plan = resolve_tag(&app, &caller.owner, &tag).await?;
            app.guards.limits.check_tier(&caller, plan.workflow.agent_count())?;
            (plan, Some(tag))
        }
        _ => return Err(ApiError::bad_request("give exactly one of workflow or tag")),
    };
    let settings = aob_engine::RunSettings {
        patch_review: body.patch_review,
        agent_limit: body.agent_limit,
        ..Default::default()
    };
    let (status, body) = start(&app, new_run(&caller.owner, plan, tag, body.inputs, key, settings)).await?;
    Ok((status, axum::Json(body)))
}

/// The seed's `POST /api/v1/workflows/:tag/execute`.
pub async fn execute(
    State(app): State<AppState>,
    caller: Caller,
    Path(tag): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<impl IntoResponse> {
    let (inputs, key) = match optional_json::<Execute>(&body)? {
        Some(b) => (b.inputs, header_key(&headers).or(b.idempotency_key)),
        None => (json!({}), header_key(&headers)),
    };
    let plan = resolve_tag(&app, &caller.owner, &tag).await?;
    app.guards.limits.check_tier(&caller, plan.workflow.agent_count())?;
    let (status, body) = start(&app, new_run(&caller.owner, plan, Some(tag), inputs, key, Default::default())).await?;
    Ok((status, axum::Json(body)))
}

pub async fn load(app: &AppState, caller: &Caller, id: &str) -> ApiResult<Arc<aob_store::RunRecord>> {
    match app.rt.get_run(id).await? {
        Some(r) if r.owner == caller.owner => Ok(r),
        _ => Err(ApiError::not_found(format!("run {id}"))),
    }
}

pub async fn get(State(app): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    let rec = load(&app, &caller, &id).await?;
    let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
    if let Some((cached, body)) = app.guards.rendered.lock().unwrap_or_else(|p| p.into_inner()).get(&id)
        && Arc::ptr_eq(cached, &rec)
    {
        return Ok((json, body.clone()));
    }
    let body = axum::body::Bytes::from(views::run(&rec).to_string());
    // Only finished runs come back as the same `Arc` twice; rendering them once is the win.
    if rec.state.status.is_terminal() {
        let mut r = app.guards.rendered.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= 16_384 {
            r.clear();
        }
        r.insert(id, (rec, body.clone()));
    }
    Ok((json, body))
}

pub async fn details(State(app): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<axum::Json<Value>> {
    let rec = load(&app, &caller, &id).await?;
    let plan = app.rt.plans.get(&*app.rt.store, rec.plan_hash()).await?;
    let mut out = views::details(&rec, &plan);
    out["patches"] = app.rt.store.list_patches(&id).await?.iter().map(crate::patches::view).collect();
    Ok(axum::Json(out))
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    tag: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

pub async fn list(State(app): State<AppState>, caller: Caller, Query(q): Query<ListQuery>) -> ApiResult<axum::Json<Value>> {
    let status = match q.status.as_deref() {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| ApiError::bad_request(format!("unknown status '{s}'")))?),
        None => None,
    };
    let before = match q.cursor.as_deref() {
        Some(c) => {
            let (at, id) = c.split_once('_').ok_or_else(|| ApiError::bad_request("malformed cursor"))?;
            Some((at.parse::<i64>().map_err(|_| ApiError::bad_request("malformed cursor"))?, id.to_string()))
        }
        None => None,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let runs = app
        .rt
        .store
        .list_runs(RunFilter {
            owner: Some(caller.owner.clone()),
            status,
            tag: q.tag,
            before,
            limit,
        })
        .await?;
    let next = if runs.len() == limit {
        runs.last().map(|r| format!("{}_{}", r.created_at, r.run_id))
    } else {
        None
    };
    let items: Vec<Value> = runs.iter().map(views::summary).collect();
    Ok(axum::Json(json!({"runs": items, "count": items.len(), "next_cursor": next})))
}

async fn control(app: AppState, caller: Caller, id: String, input: Input, verb: &str) -> ApiResult<axum::Json<Value>> {
    let rec = load(&app, &caller, &id).await?;
    let before = rec.state.status;
    if before.is_terminal() {
        return Err(ApiError::new(
            Code::InvalidState,
            format!("run {id} is already {}; cannot {verb}", before.as_str()),
        ));
    }
    if verb == "resume" && before != RunStatus::Paused {
        return Err(ApiError::new(Code::InvalidState, format!("run {id} is {}, not PAUSED", before.as_str())));
    }
    if verb == "pause" && before == RunStatus::Paused {
        return Err(ApiError::new(Code::InvalidState, format!("run {id} is already PAUSED")));
    }
    let st = app.rt.control(&id, input).await?;
    Ok(axum::Json(json!({"run_id": id, "status": st.status.as_str()})))
}

#[derive(Deserialize, Default)]
pub struct CancelBody {
    reason: Option<String>,
}

pub async fn cancel(State(app): State<AppState>, caller: Caller, Path(id): Path<String>, body: axum::body::Bytes) -> ApiResult<axum::Json<Value>> {
    let reason = optional_json::<CancelBody>(&body)?
        .and_then(|b| b.reason)
        .unwrap_or_else(|| "cancelled by request".into());
    control(app, caller, id, Input::Cancel { reason }, "cancel").await
}

pub async fn pause(State(app): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<axum::Json<Value>> {
    control(app, caller, id, Input::Pause, "pause").await
}

pub async fn resume(State(app): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<axum::Json<Value>> {
    control(app, caller, id, Input::Resume, "resume").await
}

pub async fn artifact(State(app): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<axum::Json<Value>> {
    if !app.rt.store.blob_granted(&id, &caller.owner).await? {
        return Err(ApiError::not_found(format!("artifact {id}")));
    }
    let blob = app.rt.store.get_blob(&id).await?.ok_or_else(|| ApiError::not_found(format!("artifact {id}")))?;
    Ok(axum::Json(
        json!({"artifact_id": blob.hash, "cas_id": blob.hash, "kind": blob.kind, "created_at": aob_store::rfc3339_ms(blob.created_at), "content": blob.content}),
    ))
}
