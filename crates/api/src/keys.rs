//! API key management and `whoami`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use aob_store::ApiKey;

use crate::AppState;
use crate::auth::{self, ADMIN, Caller, MEMBER};
use crate::error::{ApiError, ApiResult, Code};
use crate::extract::{Json, Query};

fn view(k: &ApiKey) -> Value {
    json!({
        "id": k.id,
        "tenant": k.tenant,
        "user": k.user,
        "role": k.role,
        "name": k.name,
        "created_at": aob_store::rfc3339_ms(k.created_at),
        "revoked_at": k.revoked_at.map(aob_store::rfc3339_ms),
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

#[derive(Deserialize)]
pub struct CreateKey {
    name: Option<String>,
    user: Option<String>,
    role: Option<String>,
    /// Default: the caller's. Only platform admins create keys for another tenant.
    tenant: Option<String>,
}

/// Creates a key. The plaintext is in this response only. A tenant admin creates keys
/// of its own tenant; a key for another tenant (a new tenant's first admin, say) needs a
/// platform admin.
pub async fn create(State(app): State<AppState>, caller: Caller, Json(b): Json<CreateKey>) -> ApiResult<impl IntoResponse> {
    if !caller.is_admin() {
        return Err(ApiError::new(Code::Forbidden, "only admins create API keys"));
    }
    let tenant = b.tenant.unwrap_or_else(|| caller.owner.clone());
    if tenant != caller.owner && !caller.is_platform_admin() {
        return Err(ApiError::new(
            Code::Forbidden,
            format!("only platform admins create keys for another tenant ('{tenant}')"),
        ));
    }
    let user = b.user.unwrap_or_else(|| caller.user.clone());
    let role = b.role.unwrap_or_else(|| MEMBER.to_string());
    let name = b.name.unwrap_or_else(|| "key".to_string());
    for (field, v) in [("tenant", &tenant), ("user", &user), ("name", &name)] {
        if !valid_name(v) {
            return Err(ApiError::bad_request(format!("{field} '{v}' must be 1-64 characters of [A-Za-z0-9-_.@]")));
        }
    }
    if tenant.starts_with(auth::GLOBAL_OWNER) {
        return Err(ApiError::bad_request(format!("tenant '{tenant}' is reserved for global workflows")));
    }
    if role != ADMIN && role != MEMBER {
        return Err(ApiError::bad_request(format!("role must be admin or member, not '{role}'")));
    }
    let (plain, key) = auth::generate(&tenant, &user, &role, &name, app.rt.clock.now_ms());
    app.rt.store.put_key(key.clone()).await?;
    let mut out = view(&key);
    out["key"] = json!(plain);
    Ok((StatusCode::CREATED, axum::Json(out)))
}

#[derive(Deserialize, Default)]
pub struct ListKeys {
    tenant: Option<String>,
    /// Every tenant's keys (platform admins only).
    #[serde(default)]
    all: bool,
}

/// Admins list their tenant's keys; platform admins also another tenant's (`?tenant=`)
/// or every tenant's (`?all=true`); members see their own.
pub async fn list(State(app): State<AppState>, caller: Caller, Query(q): Query<ListKeys>) -> ApiResult<axum::Json<Value>> {
    let across = q.all || q.tenant.as_deref().is_some_and(|t| t != caller.owner);
    if across && !caller.is_platform_admin() {
        return Err(ApiError::new(Code::Forbidden, "only platform admins list other tenants' keys"));
    }
    let keys = if q.all {
        app.rt.store.list_keys(None).await?
    } else if caller.is_admin() {
        app.rt.store.list_keys(Some(q.tenant.as_deref().unwrap_or(&caller.owner))).await?
    } else {
        app.rt
            .store
            .list_keys(Some(&caller.owner))
            .await?
            .into_iter()
            .filter(|k| k.user == caller.user)
            .collect()
    };
    let items: Vec<Value> = keys.iter().map(view).collect();
    Ok(axum::Json(json!({"keys": items, "count": items.len()})))
}

/// Revokes a key: admins any key of their tenant, platform admins any tenant's, members
/// their own. Another tenant's key is answered like a missing one (404), so key ids of
/// other tenants cannot be probed.
pub async fn revoke(State(app): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<axum::Json<Value>> {
    let key = app.rt.store.get_key(&id).await?.ok_or_else(|| ApiError::not_found(format!("key {id}")))?;
    let allowed = caller.is_platform_admin() || (key.tenant == caller.owner && (caller.is_admin() || key.user == caller.user));
    if !allowed {
        return Err(ApiError::not_found(format!("key {id}")));
    }
    if !app.rt.store.revoke_key(&id, app.rt.clock.now_ms()).await? {
        return Err(ApiError::new(Code::InvalidState, format!("key {id} is already revoked")));
    }
    app.keys.forget(&id);
    Ok(axum::Json(json!({"id": id, "revoked": true})))
}

pub async fn whoami(caller: Caller) -> axum::Json<Value> {
    axum::Json(json!({"tenant": caller.owner, "user": caller.user, "role": caller.role, "key_id": caller.key_id}))
}
