//! Rate limits: token buckets (GCRA, the `governor` crate) per API key and route, and
//! the seed's workflow-aware tiers on run creation (by the number of `agent` nodes),
//! per tenant and user.
//!
//! A rejection is a 429 in the error envelope (`rate_limited`) with `Retry-After` and
//! `X-RateLimit-*` headers, decided before anything is created. Health, readiness and
//! the OpenAPI document are outside the limited router.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{self, Caller};
use crate::error::{ApiError, ApiResult, Code};

/// The window every limit is expressed in.
const WINDOW: Duration = Duration::from_secs(60);

/// Rate limit configuration; every number is per minute and 0 turns that limit off.
/// These defaults are the only ones (the CLI's configuration embeds this type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Requests per API key and route (method + route template).
    pub per_route_per_minute: u32,
    /// Run creations per tenant and user, by the workflow's tier.
    pub tiers: Tiers,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_route_per_minute: 600,
            tiers: Tiers::default(),
        }
    }
}

/// Runs per minute by the number of `agent` nodes in the workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tiers {
    /// No agent.
    pub simple: u32,
    /// One or two agents.
    pub standard: u32,
    /// Three agents or more.
    pub heavy: u32,
}

impl Default for Tiers {
    fn default() -> Self {
        Tiers {
            simple: 100,
            standard: 20,
            heavy: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    Simple,
    Standard,
    Heavy,
}

impl Tier {
    pub fn of(agents: usize) -> Tier {
        match agents {
            0 => Tier::Simple,
            1 | 2 => Tier::Standard,
            _ => Tier::Heavy,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Simple => "simple",
            Tier::Standard => "standard",
            Tier::Heavy => "heavy",
        }
    }
}

/// The limiters' time source: monotonic in production; tests may drive it by hand.
#[derive(Clone)]
pub struct LimitClock(Arc<dyn Fn() -> Duration + Send + Sync>);

impl LimitClock {
    pub fn monotonic() -> LimitClock {
        let start = Instant::now();
        LimitClock(Arc::new(move || start.elapsed()))
    }

    /// A clock that reads `now` (elapsed time since an arbitrary origin).
    pub fn from_fn(now: impl Fn() -> Duration + Send + Sync + 'static) -> LimitClock {
        LimitClock(Arc::new(now))
    }
}

impl std::fmt::Debug for LimitClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LimitClock")
    }
}

impl Clock for LimitClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from((self.0)())
    }
}

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, LimitClock, StateInformationMiddleware>;

/// One keyed token bucket family with its per-minute limit.
struct Bucket<K: Hash + Eq + Clone> {
    limiter: Keyed<K>,
    limit: u32,
    clock: LimitClock,
}

/// What a check found: the bucket's size, what is left, and the seconds until it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub limit: u32,
    pub remaining: u32,
    pub reset_seconds: u64,
}

/// A rejected check: when to retry, and when the bucket is full again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub limit: u32,
    pub retry_after_seconds: u64,
    pub reset_seconds: u64,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

impl<K: Hash + Eq + Clone> Bucket<K> {
    fn new(per_minute: u32, clock: &LimitClock) -> Option<Bucket<K>> {
        let n = NonZeroU32::new(per_minute)?;
        let quota = Quota::per_minute(n);
        let limiter: Keyed<K> = RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock.clone());
        Some(Bucket {
            limiter,
            limit: per_minute,
            clock: clock.clone(),
        })
    }

    /// One token's worth of time.
    fn period(&self) -> Duration {
        WINDOW / self.limit
    }

    fn check(&self, key: &K) -> Result<Allowance, Rejection> {
        match self.limiter.check_key(key) {
            Ok(snap) => {
                let remaining = snap.remaining_burst_capacity();
                Ok(Allowance {
                    limit: self.limit,
                    remaining,
                    reset_seconds: ceil_secs(self.period() * (self.limit - remaining)),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let full = wait + self.period() * (self.limit - 1);
                Err(Rejection {
                    limit: self.limit,
                    retry_after_seconds: ceil_secs(wait).max(1),
                    reset_seconds: ceil_secs(full).max(1),
                })
            }
        }
    }

    fn retain_recent(&self) {
        self.limiter.retain_recent();
    }
}

/// Every limiter of one server.
pub struct Limiters {
    route: Option<Bucket<(String, String)>>,
    simple: Option<Bucket<(String, String)>>,
    standard: Option<Bucket<(String, String)>>,
    heavy: Option<Bucket<(String, String)>>,
}

impl Limiters {
    pub fn new(cfg: &RateLimits, clock: &LimitClock) -> Limiters {
        Limiters {
            route: Bucket::new(cfg.per_route_per_minute, clock),
            simple: Bucket::new(cfg.tiers.simple, clock),
            standard: Bucket::new(cfg.tiers.standard, clock),
            heavy: Bucket::new(cfg.tiers.heavy, clock),
        }
    }

    /// Takes a token from the caller's bucket for `route` (`METHOD /route/{template}`).
    pub fn check_route(&self, caller: &Caller, route: &str) -> ApiResult<Option<Allowance>> {
        let Some(b) = &self.route else { return Ok(None) };
        b.check(&(caller.key_id.clone(), route.to_string())).map(Some).map_err(|r| {
            ApiError::new(
                Code::RateLimited,
                format!(
                    "rate limit exceeded: {} requests/minute per key on {route}, retry after {} seconds",
                    r.limit, r.retry_after_seconds
                ),
            )
            .with_details(json!({
                "scope": "route",
                "route": route,
                "limit": r.limit,
                "window": "60 seconds",
                "retry_after_seconds": r.retry_after_seconds,
                "reset_seconds": r.reset_seconds,
            }))
        })
    }

    /// Takes a token from the caller's bucket of the tier of a workflow with `agents`
    /// agent nodes. Call it before anything of the run is created.
    pub fn check_tier(&self, caller: &Caller, agents: usize) -> ApiResult<Option<Allowance>> {
        let tier = Tier::of(agents);
        let bucket = match tier {
            Tier::Simple => &self.simple,
            Tier::Standard => &self.standard,
            Tier::Heavy => &self.heavy,
        };
        let Some(b) = bucket else { return Ok(None) };
        b.check(&(caller.owner.clone(), caller.user.clone())).map(Some).map_err(|r| {
            ApiError::new(
                Code::RateLimited,
                format!(
                    "rate limit exceeded: {} tier allows {} runs/minute, retry after {} seconds",
                    tier.as_str(),
                    r.limit,
                    r.retry_after_seconds
                ),
            )
            .with_details(json!({
                "scope": "tier",
                "tier": tier.as_str(),
                "agents": agents,
                "limit": r.limit,
                "window": "60 seconds",
                "retry_after_seconds": r.retry_after_seconds,
                "reset_seconds": r.reset_seconds,
            }))
        })
    }

    /// Forgets buckets that are full again (they hold no information).
    pub fn retain_recent(&self) {
        for b in [&self.route, &self.simple, &self.standard, &self.heavy].into_iter().flatten() {
            b.retain_recent();
        }
    }
}

fn header(v: u64) -> HeaderValue {
    HeaderValue::from(v)
}

impl Allowance {
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", header(self.limit.into()));
        headers.insert("x-ratelimit-remaining", header(self.remaining.into()));
        headers.insert("x-ratelimit-reset", header(self.reset_seconds));
    }
}

/// The headers of a `rate_limited` error, from its details.
pub(crate) fn rejection_headers(details: &Value) -> HeaderMap {
    let mut h = HeaderMap::new();
    let num = |k: &str| details.get(k).and_then(Value::as_u64);
    if let Some(s) = num("retry_after_seconds") {
        h.insert("retry-after", header(s));
    }
    if let Some(l) = num("limit") {
        h.insert("x-ratelimit-limit", header(l));
        h.insert("x-ratelimit-remaining", header(0));
    }
    if let Some(r) = num("reset_seconds") {
        h.insert("x-ratelimit-reset", header(r));
    }
    h
}

/// Middleware: the per-key, per-route bucket. Requests without a valid key pass (the
/// handler answers 401); allowed responses carry `X-RateLimit-*`.
pub async fn per_route(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let limits = app.guards.limits.clone();
    if limits.route.is_none() {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let caller = auth::caller(&mut parts, &app).await.ok();
    let route = match parts.extensions.get::<MatchedPath>() {
        Some(m) => format!("{} {}", parts.method, m.as_str()),
        None => format!("{} {}", parts.method, parts.uri.path()),
    };
    let req = Request::from_parts(parts, body);
    let Some(caller) = caller else { return next.run(req).await };
    match limits.check_route(&caller, &route) {
        Ok(allowance) => {
            let mut resp = next.run(req).await;
            if let Some(a) = allowance {
                a.apply(resp.headers_mut());
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn caller(owner: &str, user: &str) -> Caller {
        Caller {
            owner: owner.into(),
            user: user.into(),
            role: "member".into(),
            key_id: format!("k-{owner}-{user}"),
        }
    }

    fn manual() -> (LimitClock, Arc<AtomicU64>) {
        let ms = Arc::new(AtomicU64::new(0));
        let m = ms.clone();
        (LimitClock::from_fn(move || Duration::from_millis(m.load(Ordering::SeqCst))), ms)
    }

    #[test]
    fn tiers_follow_agent_counts() {
        assert_eq!(
            [0, 1, 2, 3, 9].map(Tier::of),
            [Tier::Simple, Tier::Standard, Tier::Standard, Tier::Heavy, Tier::Heavy]
        );
    }

    #[test]
    fn heavy_bucket_refills_one_run_every_twelve_seconds() {
        let (clock, ms) = manual();
        let l = Limiters::new(&RateLimits::default(), &clock);
        let alice = caller("t1", "alice");
        for i in 0..5u32 {
            let a = l.check_tier(&alice, 3).unwrap().unwrap();
            assert_eq!((a.limit, a.remaining), (5, 4 - i));
        }
        let e = l.check_tier(&alice, 4).unwrap_err();
        assert_eq!(e.code, Code::RateLimited);
        assert_eq!(e.details["tier"], "heavy");
        assert_eq!(e.details["retry_after_seconds"], 12);
        assert_eq!(e.details["reset_seconds"], 60);
        // Other tiers, users and tenants have their own buckets.
        assert!(l.check_tier(&alice, 0).is_ok());
        assert!(l.check_tier(&caller("t1", "bob"), 3).is_ok());
        assert!(l.check_tier(&caller("t2", "alice"), 3).is_ok());
        ms.store(11_000, Ordering::SeqCst);
        assert_eq!(l.check_tier(&alice, 3).unwrap_err().details["retry_after_seconds"], 1);
        ms.store(12_000, Ordering::SeqCst);
        assert_eq!(l.check_tier(&alice, 3).unwrap().unwrap().remaining, 0);
        assert!(l.check_tier(&alice, 3).is_err());
        let h = rejection_headers(&l.check_tier(&alice, 3).unwrap_err().details);
        assert_eq!(h["retry-after"], "12");
        assert_eq!(h["x-ratelimit-limit"], "5");
        assert_eq!(h["x-ratelimit-remaining"], "0");
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let (clock, _) = manual();
        let cfg = RateLimits {
            per_route_per_minute: 0,
            tiers: Tiers {
                simple: 0,
                standard: 1,
                heavy: 1,
            },
        };
        let l = Limiters::new(&cfg, &clock);
        let c = caller("t", "u");
        for _ in 0..1000 {
            assert_eq!(l.check_tier(&c, 0).unwrap(), None);
            assert_eq!(l.check_route(&c, "GET /x").unwrap(), None);
        }
        assert!(l.check_tier(&c, 1).is_ok());
        assert!(l.check_tier(&c, 1).is_err());
    }

    #[test]
    fn route_buckets_are_per_key_and_route() {
        let (clock, _) = manual();
        let l = Limiters::new(
            &RateLimits {
                per_route_per_minute: 2,
                ..Default::default()
            },
            &clock,
        );
        let c = caller("t", "u");
        assert!(l.check_route(&c, "GET /a").is_ok());
        assert!(l.check_route(&c, "GET /a").is_ok());
        let e = l.check_route(&c, "GET /a").unwrap_err();
        assert_eq!(
            (e.details["scope"].as_str(), e.details["retry_after_seconds"].as_u64()),
            (Some("route"), Some(30))
        );
        assert!(l.check_route(&c, "POST /a").is_ok());
        assert!(l.check_route(&caller("t", "v"), "GET /a").is_ok());
    }
}
