//! [`Dispatch`] on Redis Streams, for the scale-out mode: several processes share one
//! queue, and any of them can die.
//!
//! # Keys (all under one prefix `P`)
//!
//! | key | type | what | bounded by |
//! |---|---|---|---|
//! | `P:q:{queue}` | stream, consumer group `aob` | one entry per queued or leased envelope (`id`, `payload`) | XDEL on ack and dead-letter; `XADD MAXLEN ~ max_len` |
//! | `P:dead` | stream | dead letters (`id`, `queue`, `payload`), oldest first | `MAXLEN ~ dead_max_len`; TTL `dead_ttl`, refreshed on each add |
//! | `P:queues` | set | the known queues (a pull of "all queues" reads them) | TTL `key_ttl`, refreshed on every push and pull |
//! | `P:bell` | stream, one entry | rung by every push; an "all queues" pull blocks on it | `MAXLEN 1`; TTL `key_ttl` |
//! | `P:id:{envelope id}` | string `[queue, entry id]` | push dedupe | TTL `key_ttl`, refreshed on delivery and extend; deleted on ack and dead-letter |
//! | `P:lease:{token}` | string `[queue, entry id, envelope id]` | maps a lease token to its entry | TTL `key_ttl`, refreshed on extend; deleted on ack and when found stale |
//!
//! Consumers of the group are per process (`consumer_name`); the janitor pass of `pull`
//! (every `janitor_every`) deletes consumers that own no pending entry and have been idle
//! for `consumer_idle`, so restarted processes do not pile up in the group.
//!
//! # Delivery
//!
//! `pull` runs one script per call that, queue by queue, first reclaims entries whose
//! lease expired (`XAUTOCLAIM`, min-idle = visibility, from a per-queue cursor kept in the
//! process), moving an entry that would exceed `max_deliveries` to `P:dead` (XADD there,
//! XACK + XDEL of the original), then reads new entries (`XREADGROUP … >`). The delivery
//! count (`Lease::delivery`) is the PEL's: 1 on the first read, +1 on every claim. With
//! nothing to hand out, the pull blocks (`XREAD BLOCK`, on a connection of its own) on the
//! queues' streams (on `P:bell` for "all queues") from their last id, in slices of at
//! most a quarter visibility so expired leases are picked up while waiting. The blocking
//! read claims nothing, so cancelling a pull strands no entry.
//!
//! `ack` is XACK + XDEL (streams hold only queued and leased entries); `extend` is
//! `XCLAIM … 0 JUSTID` by the owner, which resets the idle time and keeps the count.
//!
//! # Why a stale lease cannot ack or extend
//!
//! A delivery is named by (stream, entry id, owning consumer, delivery count): Redis
//! changes the owner and raises the count atomically on every delivery (XREADGROUP and
//! XAUTOCLAIM), and nothing else changes them (extend uses JUSTID, which keeps both).
//! The lease token is 64 bits of sha1 of that tuple, and `P:lease:{token}` records which
//! entry it is about. `ack` and `extend` are scripts that read the entry's PEL row and
//! recompute the token from its *current* owner and count in the same atomic step as the
//! XACK or XCLAIM. Once anyone (the same consumer included) has reclaimed the entry, the
//! count has moved on and the old token can never match again; once it was acked the row
//! is gone. So two holders never both succeed: Redis serializes the claim and the check.
//!
//! # Redis is not the source of truth
//!
//! Redis may lose its latest writes (asynchronous persistence, a failover, a restart
//! without AOF) and `MAXLEN ~` may trim a backlog beyond `max_len`. Nothing here tries to
//! be durable beyond that: attempts are recorded in the run state in the store before
//! they are pushed, and the runtime re-pushes every in-flight attempt at recovery (with
//! fresh deadlines) and, on an attempt's deadline, retries it per policy. Dedupe checks
//! that the entry it remembers is still in its stream, so such a re-push is never
//! swallowed by a dedupe key that outlived its entry; a group or stream that vanished is
//! re-created by the next push or pull. Run Redis with `maxmemory-policy noeviction`.

mod bus;
mod scripts;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client};
use tokio::time::Instant;

use aob_dispatch::{Dispatch, DispatchError, Envelope, Lease, Options, Result};

pub use bus::RedisBus;
use scripts::{DEAD_SCRIPT, PULL_SCRIPT, PUSH_SCRIPT, SETTLE_SCRIPT};

/// The consumer group of every queue stream.
pub const GROUP: &str = "aob";

/// Size and lifetime bounds. The defaults suit production; tests shrink them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Approximate cap on a queue stream's length (queued + leased entries).
    pub max_len: u64,
    /// Approximate cap on the dead-letter stream's length.
    pub dead_max_len: u64,
    /// TTL of the helper keys (dedupe, lease tokens, the queue set, the bell).
    pub key_ttl: Duration,
    /// TTL of the dead-letter stream, refreshed on each dead letter.
    pub dead_ttl: Duration,
    /// How often `pull` runs the consumer janitor.
    pub janitor_every: Duration,
    /// A consumer with nothing pending that has been idle this long is deleted.
    pub consumer_idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_len: 100_000,
            dead_max_len: 10_000,
            key_ttl: Duration::from_secs(24 * 3600),
            dead_ttl: Duration::from_secs(7 * 24 * 3600),
            janitor_every: Duration::from_secs(60),
            consumer_idle: Duration::from_secs(600),
        }
    }
}

/// Envelopes per push script call.
const PUSH_BATCH: usize = 500;
/// Idle blocking connections kept for reuse.
const BLOCKING_POOL: usize = 8;

pub struct RedisDispatch {
    conn: ConnectionManager,
    client: Client,
    /// Connections for `XREAD BLOCK`, which would stall everything else on a shared one.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    prefix: String,
    consumer: String,
    opts: Options,
    limits: Limits,
    /// Per-queue XAUTOCLAIM cursor.
    cursors: Mutex<HashMap<String, String>>,
    last_janitor: Mutex<Option<Instant>>,
}

fn unavailable(e: impl std::fmt::Display) -> DispatchError {
    DispatchError::Unavailable(format!("redis: {e}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisDispatch {
    /// Connects to `url`, with keys under `prefix` and this process's `consumer_name`
    /// (unique per process, e.g. host + pid + a random suffix). Fails when Redis cannot be
    /// reached.
    pub async fn connect(url: &str, prefix: &str, consumer_name: &str, opts: Options) -> Result<RedisDispatch> {
        Self::connect_with(url, prefix, consumer_name, opts, Limits::default()).await
    }

    pub async fn connect_with(url: &str, prefix: &str, consumer_name: &str, opts: Options, limits: Limits) -> Result<RedisDispatch> {
        if prefix.is_empty() || consumer_name.is_empty() {
            return Err(DispatchError::Unavailable("redis: prefix and consumer name must not be empty".into()));
        }
        let client = Client::open(url).map_err(unavailable)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client.clone(), cfg)
            .await
            .map_err(|e| DispatchError::Unavailable(format!("redis: cannot connect to {}: {e}", redact(url))))?;
        Ok(RedisDispatch {
            conn,
            client,
            blocking: Mutex::new(Vec::new()),
            prefix: prefix.to_string(),
            consumer: consumer_name.to_string(),
            opts,
            limits,
            cursors: Mutex::new(HashMap::new()),
            last_janitor: Mutex::new(None),
        })
    }

    /// Deletes every key under `prefix` (tests, and a restore from a PostgreSQL backup);
    /// returns how many. Nothing may be using the prefix meanwhile.
    pub async fn purge(url: &str, prefix: &str) -> Result<u64> {
        if prefix.is_empty() {
            return Err(DispatchError::Unavailable("redis: refusing to purge an empty prefix".into()));
        }
        let client = Client::open(url).map_err(unavailable)?;
        let mut c = client.get_multiplexed_async_connection().await.map_err(unavailable)?;
        let mut cursor = "0".to_string();
        let mut n = 0;
        loop {
            let (next, keys): (String, Vec<String>) = redis::cmd("SCAN")
                .arg(&cursor)
                .arg("MATCH")
                .arg(format!("{prefix}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if !keys.is_empty() {
                n += redis::cmd("DEL").arg(&keys).query_async::<u64>(&mut c).await.map_err(unavailable)?;
            }
            if next == "0" {
                return Ok(n);
            }
            cursor = next;
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn consumer_name(&self) -> &str {
        &self.consumer
    }

    /// The stream of `queue`.
    pub fn stream_key(&self, queue: &str) -> String {
        format!("{}:q:{queue}", self.prefix)
    }

    /// The dead-letter stream.
    pub fn dead_key(&self) -> String {
        format!("{}:dead", self.prefix)
    }

    fn janitor_due(&self) -> bool {
        let mut last = self.last_janitor.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < self.limits.janitor_every => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// One pass: reclaim, read, maybe janitor. Returns the leases and, when there were
    /// none, what to block on (stream, last id).
    async fn pull_once(&self, queues: &[String], max: usize) -> Result<(Vec<Lease>, Vec<(String, String)>)> {
        let mut inv = PULL_SCRIPT.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(millis(self.opts.visibility).max(1))
            .arg(self.opts.max_deliveries)
            .arg(max)
            .arg(millis(self.limits.key_ttl).max(1))
            .arg(self.limits.dead_max_len)
            .arg(millis(self.limits.dead_ttl).max(1))
            .arg(if self.janitor_due() {
                i64::try_from(millis(self.limits.consumer_idle)).unwrap_or(i64::MAX)
            } else {
                -1
            })
            .arg(if queues.is_empty() { "all" } else { "list" });
        {
            let cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            if queues.is_empty() {
                for (q, c) in cursors.iter() {
                    inv.arg(q).arg(c);
                }
            } else {
                let mut seen = std::collections::HashSet::new();
                for q in queues.iter().filter(|q| seen.insert(q.as_str())) {
                    inv.arg(q).arg(cursors.get(q).map_or("0-0", String::as_str));
                }
            }
        }
        let mut conn = self.conn.clone();
        let (states, out, wake): (Vec<String>, Vec<String>, Vec<String>) = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        {
            let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            for pair in states.chunks_exact(2) {
                cursors.insert(pair[0].clone(), pair[1].clone());
            }
        }
        let mut leases = Vec::with_capacity(out.len() / 6);
        for l in out.chunks_exact(6) {
            let payload = serde_json::from_str(&l[3]).unwrap_or_else(|_| serde_json::Value::String(l[3].clone()));
            let delivery = l[4].parse::<u32>().map_err(unavailable)?;
            let token = u64::from_str_radix(&l[5], 16).map_err(unavailable)?;
            leases.push(Lease {
                envelope: Envelope {
                    id: l[2].clone(),
                    queue: l[0].clone(),
                    payload,
                },
                delivery,
                token,
            });
        }
        let wake = wake.chunks_exact(2).map(|w| (w[0].clone(), w[1].clone())).collect();
        Ok((leases, wake))
    }

    async fn blocking_conn(&self) -> Result<MultiplexedConnection> {
        if let Some(c) = self.blocking.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(None);
        self.client.get_multiplexed_async_connection_with_config(&cfg).await.map_err(unavailable)
    }

    /// Waits up to `slice` for a new entry after the given ids. Claims nothing.
    async fn wait_for_entries(&self, wake: &[(String, String)], slice: Duration) -> Result<()> {
        if wake.is_empty() {
            tokio::time::sleep(slice).await;
            return Ok(());
        }
        let mut conn = self.blocking_conn().await?;
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(1).arg("BLOCK").arg(millis(slice).max(1)).arg("STREAMS");
        for (s, _) in wake {
            cmd.arg(s);
        }
        for (_, id) in wake {
            cmd.arg(id);
        }
        match tokio::time::timeout(slice + Duration::from_secs(5), cmd.query_async::<redis::Value>(&mut conn)).await {
            Ok(Ok(_)) => {
                let mut pool = self.blocking.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < BLOCKING_POOL {
                    pool.push(conn);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(DispatchError::Unavailable("redis: blocking read timed out".into())),
        }
    }

    async fn settle(&self, lease: &Lease, op: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let ok: i64 = SETTLE_SCRIPT
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(GROUP)
            .arg(format!("{:016x}", lease.token))
            .arg(&lease.envelope.id)
            .arg(op)
            .arg(millis(self.limits.key_ttl).max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if ok == 1 {
            Ok(())
        } else {
            Err(DispatchError::LeaseLost(lease.envelope.id.clone()))
        }
    }
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[async_trait]
impl Dispatch for RedisDispatch {
    async fn push(&self, entries: Vec<Envelope>) -> Result<()> {
        for batch in entries.chunks(PUSH_BATCH) {
            let mut inv = PUSH_SCRIPT.prepare_invoke();
            inv.arg(&self.prefix)
                .arg(GROUP)
                .arg(self.limits.max_len)
                .arg(millis(self.limits.key_ttl).max(1));
            for e in batch {
                let payload = serde_json::to_string(&e.payload).map_err(unavailable)?;
                inv.arg(&e.queue).arg(&e.id).arg(payload);
            }
            let mut conn = self.conn.clone();
            let _added: i64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn pull(&self, queues: &[String], max: usize, wait: Duration) -> Result<Vec<Lease>> {
        let deadline = Instant::now() + wait;
        // Expired leases are found by the pull script, not by the blocking read: wake up
        // often enough to see them within a fraction of the visibility.
        let slice_cap = (self.opts.visibility / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            let (leases, wake) = self.pull_once(queues, max.max(1)).await?;
            if !leases.is_empty() {
                return Ok(leases);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            self.wait_for_entries(&wake, (deadline - now).min(slice_cap)).await?;
        }
    }

    async fn ack(&self, lease: &Lease) -> Result<()> {
        self.settle(lease, "ack").await
    }

    async fn extend(&self, lease: &Lease) -> Result<()> {
        self.settle(lease, "extend").await
    }

    async fn dead_letters(&self) -> Result<Vec<Envelope>> {
        let mut conn = self.conn.clone();
        let out: Vec<String> = DEAD_SCRIPT
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(GROUP)
            .arg(millis(self.opts.visibility).max(1))
            .arg(self.opts.max_deliveries)
            .arg(self.limits.dead_max_len)
            .arg(millis(self.limits.dead_ttl).max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(out
            .chunks_exact(3)
            .map(|d| Envelope {
                id: d[0].clone(),
                queue: d[1].clone(),
                payload: serde_json::from_str(&d[2]).unwrap_or_else(|_| serde_json::Value::String(d[2].clone())),
            })
            .collect())
    }
}
