//! The scale-out store: PostgreSQL through sqlx (runtime SQL, no compile-time database).
//!
//! A pool of connections (`Options::max_connections`); every connection's `search_path`
//! is set to `Options::schema` when one is given, so several stores (or test cases) can
//! share a database without seeing each other. [`PgStore::connect`] creates the schema
//! if needed and applies the embedded migrations (see `schema.rs`).
//!
//! [`Store::commit`] writes a whole batch in one transaction with a handful of
//! statements whatever its size: run inserts and updates, patch upserts and event inserts
//! are each one `UNNEST` statement. Event ids (the global position `owner_events` pages
//! by) come from a `BIGSERIAL`; a transaction-scoped advisory lock taken just before the
//! events are inserted makes them commit in id order, so a reader paging by id never
//! skips an event that commits late with a smaller id.

mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx_core::executor::Executor;
use sqlx_core::query::query;
use sqlx_core::query_as::query_as;
use sqlx_core::query_builder::QueryBuilder;
use sqlx_core::query_scalar::query_scalar;
use sqlx_core::sql_str::AssertSqlSafe;
use sqlx_postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, Postgres};

use aob_engine::{RunState, RunStatus};
use aob_store::*;

pub use schema::MIGRATIONS;

/// How long a caller waits for a pooled connection before the store reports
/// [`StoreError::Unavailable`].
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Options {
    /// `postgres://user:password@host:port/database` (libpq-style URL options work too).
    pub url: String,
    /// Upper bound of the connection pool.
    pub max_connections: u32,
    /// Schema holding the tables, created when missing; `None` uses the URL's (or the
    /// server's default) `search_path`. Letters, digits and `_`, at most 63 characters.
    pub schema: Option<String>,
}

impl Options {
    pub fn new(url: impl Into<String>) -> Options {
        Options {
            url: url.into(),
            max_connections: 10,
            schema: None,
        }
    }
}

/// Cheap to clone; all clones share one pool.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    schema: Option<String>,
    /// Key of the advisory lock that orders event commits (one per schema).
    events_lock: i64,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Sorts a driver error into the store's kinds: unique violations are conflicts, lost
/// or refused connections (and a server shutting down) are `Unavailable`.
fn db_err(e: sqlx_core::Error) -> StoreError {
    use sqlx_core::Error as E;
    match &e {
        E::Database(d) => {
            let code = d.code().unwrap_or_default();
            if code == "23505" {
                StoreError::Conflict(e.to_string())
            } else if code == "53100" {
                // disk_full: nothing was written; the same write succeeds once space is back.
                StoreError::Full(e.to_string())
            } else if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") {
                StoreError::Unavailable(e.to_string())
            } else {
                StoreError::Backend(e.to_string())
            }
        }
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => StoreError::Unavailable(format!("postgres: {e}")),
        _ => StoreError::Backend(e.to_string()),
    }
}

fn valid_schema(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 63 && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// FNV-1a: a stable lock key per schema (advisory locks are database-wide).
fn lock_key(schema: Option<&str>) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "aob:events:".bytes().chain(schema.unwrap_or("").bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Session settings of every connection. A process paused or partitioned in the middle
/// of a transaction (SIGSTOP, a stalled VM) would otherwise hold its row and advisory
/// locks until it wakes up, and with them every other process's commits and shard
/// claims: the server ends such a transaction after `idle_in_transaction_session_timeout`
/// (our transactions send their statements back to back, so they are never idle that
/// long). `lock_timeout` is longer, so a waiter outlasts a paused holder, but a wait
/// never hangs for good.
const SESSION: [(&str, &str); 2] = [("idle_in_transaction_session_timeout", "5s"), ("lock_timeout", "15s")];

fn connect_options(url: &str) -> Result<PgConnectOptions> {
    let co = PgConnectOptions::from_str(url).map_err(|e| StoreError::Backend(format!("invalid database url: {e}")))?;
    Ok(co.options(SESSION))
}

/// Where a URL points, without its password, for error messages.
fn describe(o: &PgConnectOptions) -> String {
    format!("{}:{}/{}", o.get_host(), o.get_port(), o.get_database().unwrap_or("postgres"))
}

async fn direct(opts: &PgConnectOptions) -> Result<PgConnection> {
    use sqlx_core::connection::ConnectOptions;
    match tokio::time::timeout(ACQUIRE_TIMEOUT, opts.connect()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(StoreError::Unavailable(format!("cannot connect to PostgreSQL at {}: {e}", describe(opts)))),
        Err(_) => Err(StoreError::Unavailable(format!(
            "cannot connect to PostgreSQL at {}: timed out",
            describe(opts)
        ))),
    }
}

async fn set_search_path(c: &mut PgConnection, schema: &str) -> std::result::Result<(), sqlx_core::Error> {
    query("SELECT set_config('search_path', quote_ident($1), false)")
        .bind(schema)
        .execute(c)
        .await
        .map(|_| ())
}

impl PgStore {
    async fn commit_slice(&self, writes: &[RunWrite]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        check_fences(&mut tx, writes).await?;
        write_batch(&mut tx, writes, self.events_lock).await?;
        tx.commit().await.map_err(db_err)
    }

    /// Connects, creates the schema if needed and applies pending migrations. Fails with
    /// [`StoreError::Unavailable`] (naming host, port and database) when the server cannot
    /// be reached.
    pub async fn connect(opts: Options) -> Result<PgStore> {
        use sqlx_core::connection::Connection;
        if let Some(s) = &opts.schema
            && !valid_schema(s)
        {
            return Err(StoreError::Backend(format!("invalid schema name {s:?}: use letters, digits and _")));
        }
        let co = connect_options(&opts.url)?;
        // One plain connection first: it reports why the server cannot be reached (the
        // pool would retry refused connections until its timeout), and it runs the
        // migrations, so their advisory lock ends with it whatever happens.
        let mut conn = direct(&co).await?;
        if let Some(s) = &opts.schema {
            conn.execute(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{s}\"")))
                .await
                .map_err(db_err)?;
            set_search_path(&mut conn, s).await.map_err(db_err)?;
        }
        schema::migrate(&mut conn)
            .await
            .map_err(|e| StoreError::Backend(format!("migrating the database: {e}")))?;
        let _ = conn.close().await;

        let schema = opts.schema.clone();
        let hook_schema = opts.schema.clone();
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |c, _meta| {
                let s = hook_schema.clone();
                Box::pin(async move {
                    match s {
                        Some(s) => set_search_path(c, &s).await,
                        None => Ok(()),
                    }
                })
            })
            .connect_with(co)
            .await
            .map_err(db_err)?;
        Ok(PgStore {
            pool,
            events_lock: lock_key(schema.as_deref()),
            schema,
        })
    }

    /// The pool, for callers that keep their own tables next to the store's.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Closes every connection; later calls fail with `Unavailable`.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Drops `schema` and everything in it, over a connection of its own (so it can run
    /// from any runtime, e.g. a test's `Drop`). Meant for tests and tooling.
    pub async fn drop_schema(url: &str, schema: &str) -> Result<()> {
        use sqlx_core::connection::Connection;
        if !valid_schema(schema) {
            return Err(StoreError::Backend(format!("invalid schema name {schema:?}")));
        }
        let mut conn = direct(&connect_options(url)?).await?;
        conn.execute(AssertSqlSafe(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")))
            .await
            .map_err(db_err)?;
        let _ = conn.close().await;
        Ok(())
    }
}

/// Refuses the batch unless every fence is the current epoch of its shard. Runs first in
/// the commit's transaction and reads the lease rows `FOR SHARE`, held until the commit
/// ends: a takeover (an update of the row) waits for the commits in flight, and every
/// commit after it sees the new epoch. Rows are locked in shard order, as claims do.
async fn check_fences(tx: &mut PgConnection, writes: &[RunWrite]) -> Result<()> {
    let fences: BTreeSet<(u32, u64)> = writes.iter().filter_map(|w| w.fence).map(|f| (f.shard, f.epoch)).collect();
    if fences.is_empty() {
        return Ok(());
    }
    let mut shards: Vec<i64> = fences.iter().map(|(s, _)| i64::from(*s)).collect();
    shards.dedup();
    let rows: Vec<(i64, i64)> = query_as("SELECT shard, epoch FROM shard_leases WHERE shard = ANY($1) ORDER BY shard FOR SHARE")
        .bind(&shards)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
    let current: BTreeMap<i64, i64> = rows.into_iter().collect();
    for (shard, epoch) in fences {
        match current.get(&i64::from(shard)) {
            Some(e) if *e as u64 == epoch => {}
            Some(e) => return Err(StoreError::Fenced(format!("shard {shard} is at epoch {e}, the write holds epoch {epoch}"))),
            None => return Err(StoreError::Fenced(format!("shard {shard} has no lease, the write holds epoch {epoch}"))),
        }
    }
    Ok(())
}

/// Sorted and without repeats: one upsert may not touch a row twice, and claims lock
/// rows in shard order so concurrent claims never deadlock.
fn distinct(shards: &[u32]) -> Vec<i64> {
    let mut v: Vec<i64> = shards.iter().map(|s| i64::from(*s)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

type LeaseRow = (i64, String, i64, i64);

fn lease(r: LeaseRow) -> ShardLease {
    ShardLease {
        shard: r.0 as u32,
        owner: r.1,
        epoch: r.2 as u64,
        expires_at: r.3,
    }
}

type MemberRow = (String, String, String, i64, i64);

fn member(r: MemberRow) -> Member {
    Member {
        id: r.0,
        roles: r.1,
        addr: r.2,
        started_at: r.3,
        seen_at: r.4,
    }
}

/// Everything a batch does to one run, in the order the batch said it.
struct RunAgg<'a> {
    create: Option<&'a NewRun>,
    state: &'a RunState,
    state_json: &'a str,
    current_hash: Option<&'a str>,
}

async fn write_batch(tx: &mut PgConnection, writes: &[RunWrite], events_lock: i64) -> Result<()> {
    // Collapse the batch per run: a run written twice is inserted or updated once, with
    // its last state. Sorted by run id, so concurrent batches lock rows in one order.
    let mut runs: BTreeMap<&str, RunAgg<'_>> = BTreeMap::new();
    for w in writes {
        let id = w.state.run_id.as_str();
        match runs.get_mut(id) {
            Some(agg) => {
                if w.create.is_some() {
                    return Err(StoreError::Conflict(format!("run {id} created twice in one batch")));
                }
                agg.state = &w.state;
                agg.state_json = &w.state_json;
                agg.current_hash = w.current_hash.as_deref().or(agg.current_hash);
            }
            None => {
                runs.insert(
                    id,
                    RunAgg {
                        create: w.create.as_ref(),
                        state: &w.state,
                        state_json: &w.state_json,
                        current_hash: w.current_hash.as_deref(),
                    },
                );
            }
        }
    }
    insert_runs(tx, runs.iter().filter(|(_, a)| a.create.is_some())).await?;
    update_runs(tx, runs.iter().filter(|(_, a)| a.create.is_none())).await?;
    upsert_patches(tx, writes).await?;
    for w in writes {
        project_approvals(tx, &w.state.run_id, &w.events).await?;
    }
    insert_events(tx, writes, events_lock).await
}

async fn insert_runs<'a>(tx: &mut PgConnection, runs: impl Iterator<Item = (&'a &'a str, &'a RunAgg<'a>)>) -> Result<()> {
    let (mut id, mut owner, mut wf, mut cur, mut tag, mut parent, mut idem) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut status, mut active, mut created, mut started, mut completed, mut state) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (run_id, a) in runs {
        let Some(c) = a.create else { continue };
        id.push(run_id.to_string());
        owner.push(c.owner.clone());
        wf.push(c.workflow_hash.clone());
        cur.push(a.current_hash.map(str::to_string));
        tag.push(c.tag.clone());
        parent.push(c.parent_run_id.clone());
        idem.push(c.idempotency_key.clone());
        status.push(a.state.status.as_str().to_string());
        active.push(!a.state.status.is_terminal());
        created.push(a.state.created_at);
        started.push(a.state.started_at);
        completed.push(a.state.completed_at);
        state.push(a.state_json.to_string());
    }
    if id.is_empty() {
        return Ok(());
    }
    query(
        "INSERT INTO runs (run_id, owner, workflow_hash, current_hash, tag, parent_run_id, idempotency_key,
                           status, active, created_at, started_at, completed_at, state)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                              $8::text[], $9::bool[], $10::int8[], $11::int8[], $12::int8[], $13::text[])",
    )
    .bind(id)
    .bind(owner)
    .bind(wf)
    .bind(cur)
    .bind(tag)
    .bind(parent)
    .bind(idem)
    .bind(status)
    .bind(active)
    .bind(created)
    .bind(started)
    .bind(completed)
    .bind(state)
    .execute(tx)
    .await
    .map_err(|e| match db_err(e) {
        StoreError::Backend(m) => StoreError::Conflict(m),
        other => other,
    })?;
    Ok(())
}

async fn update_runs<'a>(tx: &mut PgConnection, runs: impl Iterator<Item = (&'a &'a str, &'a RunAgg<'a>)>) -> Result<()> {
    let (mut id, mut status, mut active, mut started, mut completed, mut state, mut cur) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (run_id, a) in runs {
        id.push(run_id.to_string());
        status.push(a.state.status.as_str().to_string());
        active.push(!a.state.status.is_terminal());
        started.push(a.state.started_at);
        completed.push(a.state.completed_at);
        state.push(a.state_json.to_string());
        cur.push(a.current_hash.map(str::to_string));
    }
    if id.is_empty() {
        return Ok(());
    }
    let updated: Vec<String> = query_scalar(
        "UPDATE runs SET status = u.status, active = u.active, started_at = u.started_at,
                         completed_at = u.completed_at, state = u.state,
                         current_hash = COALESCE(u.current_hash, runs.current_hash)
         FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::int8[], $5::int8[], $6::text[], $7::text[])
              AS u(run_id, status, active, started_at, completed_at, state, current_hash)
         WHERE runs.run_id = u.run_id
         RETURNING runs.run_id",
    )
    .bind(&id)
    .bind(status)
    .bind(active)
    .bind(started)
    .bind(completed)
    .bind(state)
    .bind(cur)
    .fetch_all(tx)
    .await
    .map_err(db_err)?;
    if updated.len() != id.len() {
        let missing = id.iter().find(|i| !updated.contains(i)).cloned().unwrap_or_default();
        return Err(StoreError::NotFound(format!("run {missing}")));
    }
    Ok(())
}

async fn upsert_patches(tx: &mut PgConnection, writes: &[RunWrite]) -> Result<()> {
    // Last write of each (run, seq) wins, as it would applied one by one.
    let patches: BTreeMap<(&str, u64), &PatchRecord> = writes.iter().flat_map(|w| &w.patches).map(|p| ((p.run_id.as_str(), p.seq), p)).collect();
    if patches.is_empty() {
        return Ok(());
    }
    let (mut run, mut seq, mut status, mut author, mut desc, mut node, mut ops) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut base, mut result, mut created, mut decided_at, mut decided_by, mut reason) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for p in patches.values() {
        run.push(p.run_id.clone());
        seq.push(p.seq as i64);
        status.push(p.status.clone());
        author.push(p.author.clone());
        desc.push(p.description.clone());
        node.push(p.node_id.clone());
        ops.push(p.operations.to_string());
        base.push(p.base_hash.clone());
        result.push(p.result_hash.clone());
        created.push(p.created_at);
        decided_at.push(p.decided_at);
        decided_by.push(p.decided_by.clone());
        reason.push(p.reason.clone());
    }
    query(
        "INSERT INTO run_patches (run_id, seq, status, author, description, node_id, operations, base_hash,
                                  result_hash, created_at, decided_at, decided_by, reason)
         SELECT u.run_id, u.seq, u.status, u.author, u.description, u.node_id, u.operations::json, u.base_hash,
                u.result_hash, u.created_at, u.decided_at, u.decided_by, u.reason
         FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                     $9::text[], $10::int8[], $11::int8[], $12::text[], $13::text[])
              AS u(run_id, seq, status, author, description, node_id, operations, base_hash,
                   result_hash, created_at, decided_at, decided_by, reason)
         ON CONFLICT (run_id, seq) DO UPDATE SET
             status = EXCLUDED.status, author = EXCLUDED.author, description = EXCLUDED.description,
             node_id = EXCLUDED.node_id, operations = EXCLUDED.operations, base_hash = EXCLUDED.base_hash,
             result_hash = EXCLUDED.result_hash, created_at = EXCLUDED.created_at,
             decided_at = EXCLUDED.decided_at, decided_by = EXCLUDED.decided_by, reason = EXCLUDED.reason",
    )
    .bind(run)
    .bind(seq)
    .bind(status)
    .bind(author)
    .bind(desc)
    .bind(node)
    .bind(ops)
    .bind(base)
    .bind(result)
    .bind(created)
    .bind(decided_at)
    .bind(decided_by)
    .bind(reason)
    .execute(tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn insert_events(tx: &mut PgConnection, writes: &[RunWrite], events_lock: i64) -> Result<()> {
    let n: usize = writes.iter().map(|w| w.events.len()).sum();
    if n == 0 {
        return Ok(());
    }
    let (mut run, mut seq, mut kind, mut body) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for e in writes.iter().flat_map(|w| &w.events) {
        run.push(e.run_id.as_str());
        seq.push(e.seq as i64);
        kind.push(e.kind.as_str());
        body.push(e.body.as_str());
    }
    // Held until commit: event ids become visible in the order they were assigned.
    query("SELECT pg_advisory_xact_lock($1)")
        .bind(events_lock)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    // A missing run leaves `owner` NULL, which the NOT NULL constraint rejects.
    query(
        "INSERT INTO events (run_id, seq, owner, kind, body)
         SELECT e.run_id, e.seq, r.owner, e.kind, e.body
         FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[]) WITH ORDINALITY AS e(run_id, seq, kind, body, ord)
         LEFT JOIN runs r ON r.run_id = e.run_id
         ORDER BY e.ord",
    )
    .bind(run)
    .bind(seq)
    .bind(kind)
    .bind(body)
    .execute(tx)
    .await
    .map_err(|e| match db_err(e) {
        StoreError::Backend(m) => StoreError::Conflict(format!("events: {m}")),
        other => other,
    })?;
    Ok(())
}

/// Keeps the approvals table in step with the run's approval events, in the same
/// transaction, so an approval is pending exactly while the run waits for it.
async fn project_approvals(tx: &mut PgConnection, run_id: &str, events: &[StoredEvent]) -> Result<()> {
    for e in events {
        match e.kind.as_str() {
            "approval_required" => {
                let v: serde_json::Value = serde_json::from_str(&e.body).map_err(backend)?;
                let d = &v["data"];
                query(
                    "INSERT INTO approvals (id, run_id, node_id, activation, owner, status, message, data, approvers,
                                            created_at, timeout_at, decision_data)
                     VALUES ($1, $2, $3, $4, (SELECT owner FROM runs WHERE run_id = $2), 'pending', $5, $6::json,
                             $7::jsonb, $8, $9, 'null')
                     ON CONFLICT (id) DO UPDATE SET
                         run_id = EXCLUDED.run_id, node_id = EXCLUDED.node_id, activation = EXCLUDED.activation,
                         owner = EXCLUDED.owner, status = 'pending', message = EXCLUDED.message, data = EXCLUDED.data,
                         approvers = EXCLUDED.approvers, created_at = EXCLUDED.created_at,
                         timeout_at = EXCLUDED.timeout_at, decided_at = NULL, decided_by = NULL, comment = NULL,
                         decision_data = 'null'",
                )
                .bind(d["approval_id"].as_str().unwrap_or_default())
                .bind(run_id)
                .bind(v["node_id"].as_str().unwrap_or_default())
                .bind(d["activation"].as_u64().unwrap_or(0) as i64)
                .bind(d["message"].as_str().unwrap_or_default())
                .bind(d["data"].to_string())
                .bind(d["approvers"].to_string())
                .bind(chrono_ms(&v["timestamp"]))
                .bind(d["timeout_at_ms"].as_i64())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            "approval_decided" => {
                let v: serde_json::Value = serde_json::from_str(&e.body).map_err(backend)?;
                let d = &v["data"];
                query(
                    "UPDATE approvals SET status = $2, decided_at = $3, decided_by = $4, comment = $5,
                                          decision_data = $6::json
                     WHERE id = $1",
                )
                .bind(d["approval_id"].as_str().unwrap_or_default())
                .bind(d["status"].as_str().unwrap_or("approved"))
                .bind(d["decided_at_ms"].as_i64())
                .bind(d["approved_by"].as_str())
                .bind(d["comment"].as_str())
                .bind(d["data"].to_string())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            "workflow_completed" | "workflow_failed" | "workflow_cancelled" => {
                query("UPDATE approvals SET status = 'cancelled' WHERE run_id = $1 AND status = 'pending'")
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn chrono_ms(v: &serde_json::Value) -> i64 {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_millis())
        .unwrap_or(0)
}

fn json(text: &str, what: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("stored {what} is not valid JSON: {e}")))
}

type SummaryRow = (String, String, String, Option<String>, String, i64, Option<i64>, Option<i64>, Option<String>);

fn summary(r: SummaryRow) -> RunSummary {
    RunSummary {
        run_id: r.0,
        owner: r.1,
        workflow_hash: r.2,
        tag: r.3,
        status: RunStatus::parse(&r.4).unwrap_or(RunStatus::Failed),
        created_at: r.5,
        started_at: r.6,
        completed_at: r.7,
        parent_run_id: r.8,
    }
}

const TAG_COLS: &str = "owner, name, hash, version, created_by, moved_by, created_at, moved_at";
type TagRow = (String, String, String, i64, String, String, i64, i64);

fn tag(r: TagRow) -> Tag {
    Tag {
        owner: r.0,
        name: r.1,
        hash: r.2,
        version: r.3 as u64,
        created_by: r.4,
        moved_by: r.5,
        created_at: r.6,
        moved_at: r.7,
    }
}

type ApprovalRow = (
    String,
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    String,
);

fn approval(r: ApprovalRow) -> Result<Approval> {
    Ok(Approval {
        id: r.0,
        run_id: r.1,
        node_id: r.2,
        activation: r.3 as u32,
        owner: r.4,
        status: r.5,
        message: r.6,
        data: json(&r.7, "approval data")?,
        approvers: serde_json::from_value(json(&r.8, "approvers")?).unwrap_or_default(),
        created_at: r.9,
        timeout_at: r.10,
        decided_at: r.11,
        decided_by: r.12,
        comment: r.13,
        decision_data: json(&r.14, "decision data")?,
    })
}

const APPROVAL_SELECT: &str = "SELECT id, run_id, node_id, activation, owner, status, message, data::text, approvers::text,
        created_at, timeout_at, decided_at, decided_by, comment, decision_data::text FROM approvals";

type PatchRow = (
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn patch(r: PatchRow) -> Result<PatchRecord> {
    Ok(PatchRecord {
        run_id: r.0,
        seq: r.1 as u64,
        status: r.2,
        author: r.3,
        description: r.4,
        node_id: r.5,
        operations: json(&r.6, "patch operations")?,
        base_hash: r.7,
        result_hash: r.8,
        created_at: r.9,
        decided_at: r.10,
        decided_by: r.11,
        reason: r.12,
    })
}

const PATCH_SELECT: &str = "SELECT run_id, seq, status, author, description, node_id, operations::text, base_hash,
        result_hash, created_at, decided_at, decided_by, reason FROM run_patches";

type KeyRow = (String, String, String, String, String, String, i64, Option<i64>);

fn key(r: KeyRow) -> ApiKey {
    ApiKey {
        id: r.0,
        tenant: r.1,
        user: r.2,
        role: r.3,
        name: r.4,
        hash: r.5,
        created_at: r.6,
        revoked_at: r.7,
    }
}

const KEY_SELECT: &str = "SELECT id, tenant, \"user\", role, name, hash, created_at, revoked_at FROM api_keys";

type IdemRow = (String, String, String, String, Option<i32>, Option<Vec<u8>>, i64);

fn idem(r: IdemRow) -> IdempotencyRecord {
    IdempotencyRecord {
        tenant: r.0,
        key: r.1,
        request: r.2,
        body_hash: r.3,
        status: r.4.map(|s| s as u16),
        response: r.5,
        created_at: r.6,
    }
}

/// How many times an operation that lost a race (a concurrent insert of the same key)
/// is tried again before the conflict is reported.
const RACE_RETRIES: usize = 3;

impl PgStore {
    async fn try_set_tag(&self, u: &TagUpdate) -> Result<Option<Tag>> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let current: Option<i64> = query_scalar("SELECT version FROM tags WHERE owner = $1 AND name = $2 FOR UPDATE")
            .bind(&u.owner)
            .bind(&u.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        let have = current.unwrap_or(0) as u64;
        if let Some(expected) = u.expected_version
            && expected != have
        {
            return Err(StoreError::Conflict(format!("tag {} is at version {have}, expected {expected}", u.name)));
        }
        let next = (have + 1) as i64;
        // One statement either way; both take the same parameters.
        let sql = if current.is_some() {
            format!("UPDATE tags SET hash = $3, version = $4, moved_by = $5, moved_at = $6 WHERE owner = $1 AND name = $2 RETURNING {TAG_COLS}")
        } else {
            format!(
                "INSERT INTO tags (owner, name, hash, version, created_by, moved_by, created_at, moved_at)
                 VALUES ($1, $2, $3, $4, $5, $5, $6, $6) ON CONFLICT DO NOTHING RETURNING {TAG_COLS}"
            )
        };
        let row: Option<TagRow> = query_as(AssertSqlSafe(sql))
            .bind(&u.owner)
            .bind(&u.name)
            .bind(&u.hash)
            .bind(next)
            .bind(&u.by)
            .bind(u.at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        // Someone created the tag between our read and our insert: try again (or, with
        // an expected version, the check above will now fail).
        let Some(row) = row else { return Ok(None) };
        query(
            "INSERT INTO tag_history (owner, name, seq, hash, op, by, at, description)
             SELECT $1, $2, COALESCE(MAX(seq) + 1, 0), $3, $4, $5, $6, $7
             FROM tag_history WHERE owner = $1 AND name = $2",
        )
        .bind(&u.owner)
        .bind(&u.name)
        .bind(&u.hash)
        .bind(&u.op)
        .bind(&u.by)
        .bind(u.at)
        .bind(&u.description)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(tag(row)))
    }

    async fn try_claim(&self, rec: &IdempotencyRecord, completed_since: i64, pending_since: i64) -> Result<Option<Option<IdempotencyRecord>>> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        // Inserts, or takes over an expired record; either way the row ends up locked by
        // this transaction, so the read below sees the record that holds the key.
        let claimed = query(
            "INSERT INTO idempotency AS i (tenant, key, request, body_hash, status, response, created_at)
             VALUES ($1, $2, $3, $4, NULL, NULL, $5)
             ON CONFLICT (tenant, key) DO UPDATE SET request = EXCLUDED.request, body_hash = EXCLUDED.body_hash,
                 status = NULL, response = NULL, created_at = EXCLUDED.created_at
             WHERE (i.status IS NOT NULL AND i.created_at < $6) OR (i.status IS NULL AND i.created_at < $7)",
        )
        .bind(&rec.tenant)
        .bind(&rec.key)
        .bind(&rec.request)
        .bind(&rec.body_hash)
        .bind(rec.created_at)
        .bind(completed_since)
        .bind(pending_since)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected()
            == 1;
        let out = if claimed {
            Some(None)
        } else {
            let held: Option<IdemRow> = query_as(
                "SELECT tenant, key, request, body_hash, status, response, created_at FROM idempotency
                 WHERE tenant = $1 AND key = $2",
            )
            .bind(&rec.tenant)
            .bind(&rec.key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            held.map(|r| Some(idem(r)))
        };
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn put_blob(&self, blob: Blob) -> Result<()> {
        query("INSERT INTO blobs (hash, kind, content, created_at) VALUES ($1, $2, $3::json, $4) ON CONFLICT DO NOTHING")
            .bind(&blob.hash)
            .bind(&blob.kind)
            .bind(blob.content.to_string())
            .bind(blob.created_at)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn get_blob(&self, hash: &str) -> Result<Option<Blob>> {
        let row: Option<(String, String, String, i64)> = query_as("SELECT hash, kind, content::text, created_at FROM blobs WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|(hash, kind, content, created_at)| {
            Ok(Blob {
                hash,
                kind,
                content: json(&content, "blob")?,
                created_at,
            })
        })
        .transpose()
    }

    async fn set_tag(&self, u: TagUpdate) -> Result<Tag> {
        for _ in 0..RACE_RETRIES {
            if let Some(t) = self.try_set_tag(&u).await? {
                return Ok(t);
            }
        }
        Err(StoreError::Conflict(format!("tag {} is being created concurrently", u.name)))
    }

    async fn get_tag(&self, owner: &str, name: &str) -> Result<Option<Tag>> {
        let row: Option<TagRow> = query_as(AssertSqlSafe(format!("SELECT {TAG_COLS} FROM tags WHERE owner = $1 AND name = $2")))
            .bind(owner)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row.map(tag))
    }

    async fn list_tags(&self, owner: &str) -> Result<Vec<Tag>> {
        let rows: Vec<TagRow> = query_as(AssertSqlSafe(format!("SELECT {TAG_COLS} FROM tags WHERE owner = $1 ORDER BY name")))
            .bind(owner)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(rows.into_iter().map(tag).collect())
    }

    async fn tag_history(&self, owner: &str, name: &str) -> Result<Vec<TagVersion>> {
        let rows: Vec<(i64, String, String, String, i64, Option<String>)> =
            query_as("SELECT seq, hash, op, by, at, description FROM tag_history WHERE owner = $1 AND name = $2 ORDER BY seq")
                .bind(owner)
                .bind(name)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        Ok(rows
            .into_iter()
            .map(|(seq, hash, op, by, at, description)| TagVersion {
                seq: seq as u64,
                hash,
                op,
                by,
                at,
                description,
            })
            .collect())
    }

    async fn delete_tag(&self, owner: &str, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let n = query("DELETE FROM tags WHERE owner = $1 AND name = $2")
            .bind(owner)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        query("DELETE FROM tag_history WHERE owner = $1 AND name = $2")
            .bind(owner)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(n > 0)
    }

    async fn commit(&self, writes: Vec<RunWrite>) -> Result<()> {
        self.commit_slice(&writes).await
    }

    /// One transaction for the batch, as `commit`; only when it fails for a reason of
    /// one write (not an unreachable or full server) is each write committed on its
    /// own, so the good ones land and only the bad one fails. The happy path stays one
    /// transaction; per-write savepoints would cost a round trip each.
    async fn commit_each(&self, writes: Vec<RunWrite>) -> Vec<Result<()>> {
        match self.commit_slice(&writes).await {
            Ok(()) => writes.iter().map(|_| Ok(())).collect(),
            Err(e) if writes.len() > 1 && e.is_write_specific() => {
                let mut out = Vec::with_capacity(writes.len());
                for w in &writes {
                    out.push(self.commit_slice(std::slice::from_ref(w)).await);
                }
                out
            }
            Err(e) => writes.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        #[allow(clippy::type_complexity)]
        let row: Option<(String, String, String, Option<String>, Option<String>, String, Option<String>)> =
            query_as("SELECT run_id, owner, workflow_hash, tag, parent_run_id, state, current_hash FROM runs WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
        let Some((run_id, owner, workflow_hash, tag, parent_run_id, state, current_hash)) = row else {
            return Ok(None);
        };
        let state = serde_json::from_str(&state).map_err(|e| StoreError::Backend(format!("run {run_id}: stored state: {e}")))?;
        Ok(Some(RunRecord {
            run_id,
            owner,
            workflow_hash,
            tag,
            parent_run_id,
            current_hash,
            state,
        }))
    }

    async fn list_runs(&self, f: RunFilter) -> Result<Vec<RunSummary>> {
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT run_id, owner, workflow_hash, tag, status, created_at, started_at, completed_at, parent_run_id
             FROM runs WHERE TRUE",
        );
        if let Some(o) = f.owner {
            q.push(" AND owner = ").push_bind(o);
        }
        if let Some(s) = f.status {
            q.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(t) = f.tag {
            q.push(" AND tag = ").push_bind(t);
        }
        if let Some((at, id)) = f.before {
            q.push(" AND (created_at, run_id) < (").push_bind(at).push(", ").push_bind(id).push(")");
        }
        q.push(" ORDER BY created_at DESC, run_id DESC LIMIT ").push_bind(f.limit.clamp(1, 1000) as i64);
        let rows: Vec<SummaryRow> = q.build_query_as().fetch_all(&self.pool).await.map_err(db_err)?;
        Ok(rows.into_iter().map(summary).collect())
    }

    async fn active_runs(&self) -> Result<Vec<String>> {
        query_scalar("SELECT run_id FROM runs WHERE active").fetch_all(&self.pool).await.map_err(db_err)
    }

    async fn events(&self, run_id: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let rows: Vec<(String, i64, String, String)> =
            query_as("SELECT run_id, seq, kind, body FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
                .bind(run_id)
                .bind(after as i64)
                .bind(limit.min(100_000) as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        Ok(rows
            .into_iter()
            .map(|(run_id, seq, kind, body)| StoredEvent {
                run_id,
                seq: seq as u64,
                kind,
                body,
            })
            .collect())
    }

    async fn owner_events(&self, owner: &str, after: i64, limit: usize) -> Result<Vec<(i64, StoredEvent)>> {
        let rows: Vec<(i64, String, i64, String, String)> =
            query_as("SELECT id, run_id, seq, kind, body FROM events WHERE owner = $1 AND id > $2 ORDER BY id LIMIT $3")
                .bind(owner)
                .bind(after)
                .bind(limit.min(100_000) as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        Ok(rows
            .into_iter()
            .map(|(id, run_id, seq, kind, body)| {
                (
                    id,
                    StoredEvent {
                        run_id,
                        seq: seq as u64,
                        kind,
                        body,
                    },
                )
            })
            .collect())
    }

    async fn run_by_idempotency_key(&self, owner: &str, key: &str) -> Result<Option<String>> {
        query_scalar("SELECT run_id FROM runs WHERE owner = $1 AND idempotency_key = $2")
            .bind(owner)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn grant_blob(&self, hash: &str, owner: &str) -> Result<()> {
        query("INSERT INTO blob_owners (hash, owner) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(hash)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn blob_granted(&self, hash: &str, owner: &str) -> Result<bool> {
        query_scalar("SELECT EXISTS (SELECT 1 FROM blob_owners WHERE hash = $1 AND owner = $2)")
            .bind(hash)
            .bind(owner)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn list_approvals(&self, owner: &str, status: Option<&str>, limit: usize) -> Result<Vec<Approval>> {
        let rows: Vec<ApprovalRow> = query_as(AssertSqlSafe(format!(
            "{APPROVAL_SELECT} WHERE owner = $1 AND ($2::text IS NULL OR status = $2) ORDER BY created_at DESC, id LIMIT $3"
        )))
        .bind(owner)
        .bind(status)
        .bind(limit.clamp(1, 1000) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.into_iter().map(approval).collect()
    }

    async fn get_approval(&self, id: &str) -> Result<Option<Approval>> {
        let row: Option<ApprovalRow> = query_as(AssertSqlSafe(format!("{APPROVAL_SELECT} WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(approval).transpose()
    }

    async fn list_patches(&self, run_id: &str) -> Result<Vec<PatchRecord>> {
        let rows: Vec<PatchRow> = query_as(AssertSqlSafe(format!("{PATCH_SELECT} WHERE run_id = $1 ORDER BY seq")))
            .bind(run_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.into_iter().map(patch).collect()
    }

    async fn get_patch(&self, run_id: &str, seq: u64) -> Result<Option<PatchRecord>> {
        let row: Option<PatchRow> = query_as(AssertSqlSafe(format!("{PATCH_SELECT} WHERE run_id = $1 AND seq = $2")))
            .bind(run_id)
            .bind(seq as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(patch).transpose()
    }

    async fn put_key(&self, k: ApiKey) -> Result<()> {
        query(
            "INSERT INTO api_keys (id, tenant, \"user\", role, name, hash, created_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&k.id)
        .bind(&k.tenant)
        .bind(&k.user)
        .bind(&k.role)
        .bind(&k.name)
        .bind(&k.hash)
        .bind(k.created_at)
        .bind(k.revoked_at)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let row: Option<KeyRow> = query_as(AssertSqlSafe(format!("{KEY_SELECT} WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row.map(key))
    }

    async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let rows: Vec<KeyRow> = query_as(AssertSqlSafe(format!(
            "{KEY_SELECT} WHERE ($1::text IS NULL OR tenant = $1) ORDER BY created_at, id"
        )))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(rows.into_iter().map(key).collect())
    }

    async fn revoke_key(&self, id: &str, at: i64) -> Result<bool> {
        let n = query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(at)
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
        Ok(n == 1)
    }

    async fn claim_idempotency(&self, rec: IdempotencyRecord, completed_since: i64, pending_since: i64) -> Result<Option<IdempotencyRecord>> {
        // A record deleted between the upsert and the read (released by its request)
        // leaves nothing to report: claim again.
        for _ in 0..RACE_RETRIES {
            if let Some(out) = self.try_claim(&rec, completed_since, pending_since).await? {
                return Ok(out);
            }
        }
        Err(StoreError::Conflict(format!("idempotency key {} is contended", rec.key)))
    }

    async fn complete_idempotency(&self, claim: &IdempotencyRecord, status: u16, response: Vec<u8>) -> Result<()> {
        query(
            "UPDATE idempotency SET status = $4, response = $5
             WHERE tenant = $1 AND key = $2 AND created_at = $3 AND status IS NULL",
        )
        .bind(&claim.tenant)
        .bind(&claim.key)
        .bind(claim.created_at)
        .bind(i32::from(status))
        .bind(response)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn release_idempotency(&self, claim: &IdempotencyRecord) -> Result<()> {
        query("DELETE FROM idempotency WHERE tenant = $1 AND key = $2 AND created_at = $3 AND status IS NULL")
            .bind(&claim.tenant)
            .bind(&claim.key)
            .bind(claim.created_at)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn purge_idempotency(&self, before: i64) -> Result<u64> {
        let r = query("DELETE FROM idempotency WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected())
    }

    async fn claim_shards(&self, owner: &str, shards: &[u32], now: i64, ttl_ms: i64) -> Result<Vec<ShardLease>> {
        let shards = distinct(shards);
        if shards.is_empty() {
            return Ok(vec![]);
        }
        // One statement: a row is inserted (epoch 1), renewed by its owner (same epoch),
        // taken over once expired (epoch + 1), or left alone; RETURNING lists exactly the
        // rows `owner` holds afterwards.
        let rows: Vec<LeaseRow> = query_as(
            "WITH claimed AS (
                 INSERT INTO shard_leases (shard, owner, epoch, expires_at)
                 SELECT s, $2, 1, $3 FROM UNNEST($1::int8[]) AS s ORDER BY s
                 ON CONFLICT (shard) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at,
                     epoch = CASE WHEN shard_leases.owner = EXCLUDED.owner THEN shard_leases.epoch ELSE shard_leases.epoch + 1 END
                 WHERE shard_leases.owner = EXCLUDED.owner OR shard_leases.expires_at <= $4
                 RETURNING shard, owner, epoch, expires_at
             )
             SELECT shard, owner, epoch, expires_at FROM claimed ORDER BY shard",
        )
        .bind(&shards)
        .bind(owner)
        .bind(now.saturating_add(ttl_ms))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(rows.into_iter().map(lease).collect())
    }

    async fn release_shards(&self, owner: &str, shards: &[u32]) -> Result<()> {
        let shards = distinct(shards);
        if shards.is_empty() {
            return Ok(());
        }
        // Rows are locked in shard order first, as claims lock them.
        query(
            "UPDATE shard_leases SET expires_at = 0
             WHERE owner = $1 AND shard IN (
                 SELECT shard FROM shard_leases WHERE owner = $1 AND shard = ANY($2) ORDER BY shard FOR UPDATE
             )",
        )
        .bind(owner)
        .bind(&shards)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn shard_leases(&self) -> Result<Vec<ShardLease>> {
        let rows: Vec<LeaseRow> = query_as("SELECT shard, owner, epoch, expires_at FROM shard_leases ORDER BY shard")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(rows.into_iter().map(lease).collect())
    }

    async fn heartbeat(&self, m: Member) -> Result<()> {
        query(
            "INSERT INTO members (id, roles, addr, started_at, seen_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET roles = EXCLUDED.roles, addr = EXCLUDED.addr,
                 started_at = EXCLUDED.started_at, seen_at = EXCLUDED.seen_at",
        )
        .bind(&m.id)
        .bind(&m.roles)
        .bind(&m.addr)
        .bind(m.started_at)
        .bind(m.seen_at)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn members(&self, since: i64) -> Result<Vec<Member>> {
        let rows: Vec<MemberRow> = query_as("SELECT id, roles, addr, started_at, seen_at FROM members WHERE seen_at >= $1 ORDER BY id")
            .bind(since)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(rows.into_iter().map(member).collect())
    }

    async fn leave(&self, id: &str) -> Result<()> {
        query("DELETE FROM members WHERE id = $1").bind(id).execute(&self.pool).await.map_err(db_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(valid_schema("aob_test_0123abc"));
        assert!(valid_schema("_x"));
        assert!(!valid_schema(""));
        assert!(!valid_schema("1abc"));
        assert!(!valid_schema("a\"; DROP TABLE runs; --"));
        assert!(!valid_schema(&"a".repeat(64)));
    }

    #[test]
    fn lock_keys_differ_per_schema() {
        assert_eq!(lock_key(Some("a")), lock_key(Some("a")));
        assert_ne!(lock_key(Some("a")), lock_key(Some("b")));
        assert_ne!(lock_key(None), lock_key(Some("b")));
    }

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        assert_eq!(files.len(), MIGRATIONS.len(), "list every file of migrations/ in schema::MIGRATIONS");
        for (i, (f, (v, d, _))) in files.iter().zip(MIGRATIONS).enumerate() {
            assert_eq!(*v, i as i64 + 1);
            assert_eq!(f, &format!("{v:04}_{d}.sql"));
        }
    }
}
