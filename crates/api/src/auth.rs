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
    /// An admin of the caller's own tenant: manages that tenant's keys and resources.
    pub fn is_admin(&self) -> bool {
        self.role == ADMIN
    }

    /// An admin of the default tenant (the bootstrap key's tenant): administers the
    /// platform itself, i.e. other tenants' keys, global workflows and metrics.
    pub fn is_platform_admin(&self) -> bool {
        self.is_admin() && self.owner == DEFAULT_TENANT
    }
}

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Equal-time comparison, so a timing probe learns nothing about the stored hash.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credential a metrics scraper sends (`Authorization: Bearer <token>`) instead of
/// a platform admin's key, so Prometheus need not hold a key that can do everything.
/// Its `Debug` never shows the token, so configuration dumps do not leak it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ScrapeToken(String);

/// Shortest scrape token accepted: a guessable one would expose the metrics.
pub const SCRAPE_TOKEN_MIN_LEN: usize = 16;

impl ScrapeToken {
    pub fn new(token: impl Into<String>) -> ScrapeToken {
        ScrapeToken(token.into())
    }

    /// Whether the token is long enough to be used.
    pub fn is_strong(&self) -> bool {
        self.0.chars().count() >= SCRAPE_TOKEN_MIN_LEN
    }

    /// Constant-time comparison of digests, so neither the content nor the length of
    /// the configured token leaks through timing.
    pub fn matches(&self, presented: &str) -> bool {
        same(&digest(&self.0), &digest(presented))
    }
}

impl std::fmt::Debug for ScrapeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrapeToken(<redacted>)")
    }
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

/// The routes a key may be given in the query string on (`GET` only): the SSE streams
/// and the WebSocket, because browsers' EventSource and WebSocket cannot set headers.
/// Anywhere else a URL-borne key would end up in proxy and access logs and browser
/// history, so it is refused rather than ignored: the client learns at once.
const QUERY_KEY_ROUTES: [&str; 3] = ["/api/v1/runs/{id}/events", "/api/v1/events", "/api/v1/ws"];

/// Whether the request carries `api_key=` in its query string.
fn query_key(parts: &Parts) -> Option<String> {
    parts
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("api_key=").map(str::to_string)))
}

/// Whether `parts` is a request on which a query-string key is accepted.
fn query_key_allowed(parts: &Parts) -> bool {
    parts.method == axum::http::Method::GET
        && parts
            .extensions
            .get::<axum::extract::MatchedPath>()
            .is_some_and(|m| QUERY_KEY_ROUTES.contains(&m.as_str()))
}

/// The key presented in a header: `X-API-Key` or `Authorization: Bearer`.
pub fn header_key(parts: &Parts) -> Option<String> {
    if let Some(v) = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    if let Some(v) = parts.headers.get("authorization").and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))
    {
        return Some(t.trim().to_string());
    }
    None
}

/// The key presented with a request: `X-API-Key`, `Authorization: Bearer`, or (on the
/// streaming routes of [`QUERY_KEY_ROUTES`] only) `?api_key=`. A query-string key on
/// any other route is an error, even next to a header key.
pub fn presented(parts: &Parts) -> Result<Option<String>, ApiError> {
    let in_query = query_key(parts);
    if in_query.is_some() && !query_key_allowed(parts) {
        return Err(ApiError::new(
            Code::Unauthorized,
            "API keys in the query string are accepted on the event streams only; send X-API-Key or Authorization: Bearer",
        ));
    }
    Ok(header_key(parts).or(in_query))
}

/// Authenticates the request once: the caller is kept in the request's extensions, so
/// middleware (rate limits, idempotency) and the handler share one key check.
pub async fn caller(parts: &mut Parts, app: &AppState) -> Result<Caller, ApiError> {
    if let Some(c) = parts.extensions.get::<Caller>() {
        return Ok(c.clone());
    }
    let Some(key) = presented(parts)? else {
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

    #[test]
    fn scrape_tokens_match_exactly_and_never_print() {
        let t = ScrapeToken::new("s3cret-scrape-token");
        assert!(t.matches("s3cret-scrape-token"));
        assert!(!t.matches("s3cret-scrape-toke") && !t.matches("s3cret-scrape-token ") && !t.matches(""));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(t.is_strong() && !ScrapeToken::new("short").is_strong());
    }

    fn caller(owner: &str, role: &str) -> Caller {
        Caller {
            owner: owner.into(),
            user: "u".into(),
            role: role.into(),
            key_id: "k".into(),
        }
    }

    #[test]
    fn platform_admins_are_the_default_tenants_admins() {
        assert!(caller(DEFAULT_TENANT, ADMIN).is_platform_admin());
        assert!(!caller(DEFAULT_TENANT, MEMBER).is_platform_admin());
        assert!(!caller("acme", ADMIN).is_platform_admin());
        assert!(caller("acme", ADMIN).is_admin());
    }
}
