//! API keys and the authenticated caller.
//!
//! A key is `aob_<id>_<secret>`: the id finds the stored record, the sha256 of the
//! whole key is compared in constant time, the secret itself is never stored.
//! Every resource is owned by a tenant; a caller sees only its tenant's resources.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use aob_store::{ApiKey, Store};

use crate::AppState;
use crate::error::{ApiError, Code};

pub const ADMIN: &str = "admin";
pub const MEMBER: &str = "member";

/// The tenant the first admin key belongs to.
pub const DEFAULT_TENANT: &str = "default";

/// The owner of global workflows: readable by every tenant, written by admins only.
/// No tenant may be named like it.
pub const GLOBAL_OWNER: &str = "_global_";

/// Who is calling, established from the request's key.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The tenant: owner of everything the caller creates.
    pub owner: String,
    pub user: String,
    pub role: String,
    pub key_id: String,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == ADMIN
    }
}

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Equal-time comparison, so a timing probe learns nothing about the stored hash.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Makes a new key; returns the plaintext (shown once) and the record to store.
pub fn generate(tenant: &str, user: &str, role: &str, name: &str, now: i64) -> (String, ApiKey) {
    let id = format!("k{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let plain = format!("aob_{id}_{secret}");
    let key = ApiKey {
        id,
        tenant: tenant.to_string(),
        user: user.to_string(),
        role: role.to_string(),
        name: name.to_string(),
        hash: digest(&plain),
        created_at: now,
        revoked_at: None,
    };
    (plain, key)
}

/// Verifies keys against the store, caching records by id (revocation goes through
/// [`Keys::forget`], so a revoked key stops working at once in this process). When
/// other processes share the store ([`Keys::shared`]), they may revoke a key too: a
/// cached record is then trusted for `ttl` only.
#[derive(Clone)]
pub struct Keys {
    store: Arc<dyn Store>,
    cache: Arc<Mutex<HashMap<String, (ApiKey, Instant)>>>,
    ttl: Option<Duration>,
}

impl Keys {
    pub fn new(store: Arc<dyn Store>) -> Keys {
        Keys {
            store,
            cache: Arc::default(),
            ttl: None,
        }
    }

    /// Keys of a store other processes write too: a revocation elsewhere takes effect
    /// here within `ttl`.
    pub fn shared(store: Arc<dyn Store>, ttl: Duration) -> Keys {
        Keys {
            ttl: Some(ttl),
            ..Keys::new(store)
        }
    }

    pub async fn verify(&self, presented: &str) -> Result<Option<ApiKey>, ApiError> {
        let Some(rest) = presented.strip_prefix("aob_") else { return Ok(None) };
        let Some((id, _)) = rest.split_once('_') else { return Ok(None) };
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|(_, at)| self.ttl.is_none_or(|ttl| at.elapsed() < ttl))
            .map(|(k, _)| k.clone());
        let record = match cached {
            Some(k) => Some(k),
            None => {
                let k = self.store.get_key(id).await?;
                if let Some(k) = &k {
                    self.cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.to_string(), (k.clone(), Instant::now()));
                }
                k
            }
        };
        Ok(record.filter(|k| k.revoked_at.is_none() && same(&k.hash, &digest(presented))))
    }

    pub fn forget(&self, id: &str) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// The key presented with a request: `X-API-Key`, `Authorization: Bearer`, or (for
/// browsers' EventSource and WebSocket, which cannot set headers) `?api_key=`.
pub fn presented(parts: &Parts) -> Option<String> {
    if let Some(v) = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    if let Some(v) = parts.headers.get("authorization").and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))
    {
        return Some(t.trim().to_string());
    }
    parts
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("api_key=").map(str::to_string)))
}

/// Authenticates the request once: the caller is kept in the request's extensions, so
/// middleware (rate limits, idempotency) and the handler share one key check.
pub async fn caller(parts: &mut Parts, app: &AppState) -> Result<Caller, ApiError> {
    if let Some(c) = parts.extensions.get::<Caller>() {
        return Ok(c.clone());
    }
    let Some(key) = presented(parts) else {
        return Err(ApiError::new(Code::Unauthorized, "an API key is required (X-API-Key or Authorization: Bearer)"));
    };
    match app.keys.verify(&key).await? {
        Some(k) => {
            let c = Caller {
                owner: k.tenant,
                user: k.user,
                role: k.role,
                key_id: k.id,
            };
            parts.extensions.insert(c.clone());
            Ok(c)
        }
        None => Err(ApiError::new(Code::Unauthorized, "invalid or revoked API key")),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        caller(parts, app).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        let (plain, k) = generate("t", "u", MEMBER, "n", 1);
        assert!(plain.starts_with(&format!("aob_{}_", k.id)));
        assert_eq!(k.hash, digest(&plain));
        assert!(!k.hash.contains(&plain[10..]));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
