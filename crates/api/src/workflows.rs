//! Workflows (content-addressed) and tags.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use aob_store::TagUpdate;

use crate::auth::{Caller, GLOBAL_OWNER};
use crate::error::{ApiError, ApiResult, Code};
use crate::extract::{Json, Query};
use crate::{AppState, views};

/// Parses a workflow given as a JSON object or as YAML/JSON text.
pub fn workflow_doc(v: &Value) -> ApiResult<Value> {
    match v {
        Value::Object(_) => Ok(v.clone()),
        Value::String(text) => {
            let wf = aob_model::Workflow::parse(text).map_err(|e| {
                ApiError::new(Code::ValidationFailed, e.to_string())
                    .with_details(json!({"errors": [{"pointer": "", "code": "invalid_document", "message": e.to_string()}]}))
            })?;
            serde_json::to_value(wf).map_err(|e| ApiError::bad_request(e.to_string()))
        }
        _ => Err(ApiError::bad_request("workflow must be an object (or YAML text)")),
    }
}

/// Parses and validates a document within the caller's tenant limits, off the async
/// workers: validation compiles every expression, on threads of its own.
pub async fn validated(app: &AppState, caller: &Caller, doc: Value) -> ApiResult<(aob_model::Workflow, Vec<aob_model::Issue>)> {
    let limits = app.guards.opts.limits.for_tenant(&caller.owner);
    tokio::task::spawn_blocking(move || aob_model::validate::parse_and_validate_with(&doc, &limits))
        .await
        .map_err(|_| ApiError::new(Code::Internal, "validation stopped unexpectedly"))?
        .map_err(|issues| ApiError::validation(&issues))
}

pub fn check_tag_name(name: &str) -> ApiResult<()> {
    if name.is_empty() || name.len() > 200 || name.starts_with("_global_") || name.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(format!(
            "invalid tag_name '{name}': 1-200 printable characters, not starting with _global_"
        )));
    }
    Ok(())
}

/// Which namespace a tag name is looked up in: the caller's tenant, the global one
/// (`_global_`, readable by every tenant, written by platform admins), or both, the tenant's own
/// tag shadowing a global one of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    User,
    Global,
    #[default]
    All,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Global => "global",
            Scope::All => "all",
        }
    }
}

#[derive(Deserialize, Default)]
pub struct ScopeQuery {
    #[serde(default)]
    pub scope: Scope,
}

/// The tag `name` as `owner` sees it in `scope`.
pub async fn resolve(app: &AppState, owner: &str, name: &str, scope: Scope) -> ApiResult<aob_store::Tag> {
    let own = match scope {
        Scope::User | Scope::All => app.rt.store.get_tag(owner, name).await?,
        Scope::Global => None,
    };
    let found = match (own, scope) {
        (Some(t), _) => Some(t),
        (None, Scope::Global | Scope::All) => app.rt.store.get_tag(GLOBAL_OWNER, name).await?,
        (None, Scope::User) => None,
    };
    found.ok_or_else(|| ApiError::not_found(format!("workflow '{name}'")))
}

/// Global tags are changed by platform admins only: every tenant runs them, so a tenant
/// admin changing one would change what other tenants execute.
pub fn check_write(caller: &Caller, t: &aob_store::Tag) -> ApiResult<()> {
    if t.owner == GLOBAL_OWNER && !caller.is_platform_admin() {
        return Err(ApiError::new(
            Code::Forbidden,
            format!("workflow '{}' is global; only platform admins change global workflows", t.name),
        ));
    }
    Ok(())
}

/// A tag as served, with whether it is global.
pub fn tag_view(t: &aob_store::Tag) -> Value {
    let mut v = views::tag(t);
    v["global"] = json!(t.owner == GLOBAL_OWNER);
    v
}

#[derive(Deserialize)]
pub struct CreateWorkflow {
    tag_name: Option<String>,
    workflow: Option<Value>,
    /// Store under the global namespace (platform admins only).
    #[serde(default)]
    global: bool,
    description: Option<String>,
}

pub async fn create(State(app): State<AppState>, caller: Caller, Json(body): Json<CreateWorkflow>) -> ApiResult<impl IntoResponse> {
    let tag = body.tag_name.ok_or_else(|| ApiError::bad_request("tag_name is required"))?;
    check_tag_name(&tag)?;
    if body.global && !caller.is_platform_admin() {
        return Err(ApiError::new(Code::Forbidden, "only platform admins create global workflows"));
    }
    let owner = if body.global { GLOBAL_OWNER.to_string() } else { caller.owner.clone() };
    let doc = workflow_doc(&body.workflow.ok_or_else(|| ApiError::bad_request("workflow is required"))?)?;
    let (wf, warnings) = validated(&app, &caller, doc).await?;
    let (nodes, edges) = (wf.nodes.len(), wf.edges.len());
    let plan = app.rt.register(wf, &owner).await?;
    let existed = app.rt.store.get_tag(&owner, &tag).await?.is_some();
    let t = app
        .rt
        .store
        .set_tag(TagUpdate {
            owner,
            name: tag,
            hash: plan.hash.clone(),
            expected_version: None,
            by: caller.user.clone(),
            op: if existed { "move".into() } else { "create".into() },
            at: app.rt.clock.now_ms(),
            description: body.description,
        })
        .await?;
    let mut out = tag_view(&t);
    out["nodes_count"] = json!(nodes);
    out["edges_count"] = json!(edges);
    out["warnings"] = serde_json::to_value(&warnings).unwrap_or(Value::Null);
    Ok((StatusCode::CREATED, axum::Json(out)))
}

/// `?scope=user|global|all` (default all: the tenant's tags, then the global ones it does not shadow).
pub async fn list(State(app): State<AppState>, caller: Caller, Query(q): Query<ScopeQuery>) -> ApiResult<axum::Json<Value>> {
    let mut tags = match q.scope {
        Scope::Global => vec![],
        Scope::User | Scope::All => app.rt.store.list_tags(&caller.owner).await?,
    };
    if q.scope != Scope::User && caller.owner != GLOBAL_OWNER {
        let own: std::collections::HashSet<String> = tags.iter().map(|t| t.name.clone()).collect();
        tags.extend(app.rt.store.list_tags(GLOBAL_OWNER).await?.into_iter().filter(|t| !own.contains(&t.name)));
    }
    let items: Vec<Value> = tags.iter().map(tag_view).collect();
    Ok(axum::Json(json!({"count": items.len(), "workflows": items, "scope": q.scope.as_str()})))
}

#[derive(Deserialize, Default)]
pub struct Materialize {
    #[serde(default)]
    materialize: Option<bool>,
    #[serde(default)]
    scope: Scope,
}

pub async fn get(State(app): State<AppState>, caller: Caller, Path(tag): Path<String>, Query(q): Query<Materialize>) -> ApiResult<axum::Json<Value>> {
    let t = resolve(&app, &caller.owner, &tag, q.scope).await?;
    let mut out = tag_view(&t);
    if q.materialize.unwrap_or(true) {
        let blob = app
            .rt
            .store
            .get_blob(&t.hash)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("workflow {}", t.hash)))?;
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
    let seq: u64 = seq
        .parse()
        .map_err(|_| ApiError::bad_request(format!("version seq '{seq}' is not a non-negative integer")))?;
    let t = resolve(&app, &caller.owner, &tag, q.scope).await?;
    let history = app.rt.store.tag_history(&t.owner, &tag).await?;
    let v = history
        .iter()
        .find(|v| v.seq == seq)
        .ok_or_else(|| ApiError::not_found(format!("workflow version {tag}@{seq}")))?;
    let mut out = crate::tags::version_view(&t, v);
    if q.materialize.unwrap_or(true) {
        let blob = app
            .rt
            .store
            .get_blob(&v.hash)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("workflow {}", v.hash)))?;
        out["workflow"] = blob.content;
    }
    Ok(axum::Json(out))
}

pub async fn delete(State(app): State<AppState>, caller: Caller, Path(tag): Path<String>, Query(q): Query<ScopeQuery>) -> ApiResult<axum::Json<Value>> {
    let t = resolve(&app, &caller.owner, &tag, q.scope).await?;
    check_write(&caller, &t)?;
    if !app.rt.store.delete_tag(&t.owner, &tag).await? {
        return Err(ApiError::not_found(format!("workflow '{tag}'")));
    }
    Ok(axum::Json(json!({"message": "workflow tag deleted", "tag": tag, "owner": t.owner})))
}

#[derive(Deserialize)]
pub struct ValidateBody {
    workflow: Option<Value>,
}

/// Validates without storing anything.
pub async fn validate(State(app): State<AppState>, caller: Caller, Json(body): Json<ValidateBody>) -> ApiResult<axum::Json<Value>> {
    let doc = workflow_doc(&body.workflow.ok_or_else(|| ApiError::bad_request("workflow is required"))?)?;
    let issues = match validated(&app, &caller, doc).await {
        Ok((_, w)) => w,
        // The report as validation made it (already capped).
        Err(e) if e.code == Code::ValidationFailed && e.details.get("errors").is_some() => {
            return Ok(axum::Json(
                json!({"valid": false, "errors": e.details["errors"], "warnings": e.details["warnings"]}),
            ));
        }
        Err(e) => return Err(e),
    };
    let valid = !aob_model::validate::has_errors(&issues);
    let errors: Vec<_> = issues.iter().filter(|i| i.severity == aob_model::Severity::Error).collect();
    let warnings: Vec<_> = issues.iter().filter(|i| i.severity == aob_model::Severity::Warning).collect();
    Ok(axum::Json(json!({"valid": valid, "errors": errors, "warnings": warnings})))
}

pub async fn schema(_caller: Caller) -> axum::Json<Value> {
    axum::Json(aob_model::schema::workflow_schema())
}
