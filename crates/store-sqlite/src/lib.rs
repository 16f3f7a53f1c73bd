//! The embedded store: SQLite in WAL mode.
//!
//! One writer thread owns the only write connection and commits whatever has queued
//! up in a single transaction (group commit), so throughput is not one fsync per
//! transition. Reads go to a small pool of read connections on blocking threads.

mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use aob_engine::{RunState, RunStatus};
use aob_store::*;

/// How much a commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit: survives power loss.
    Fsync,
    /// No fsync: survives the process being killed, not the machine losing power.
    Process,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub path: PathBuf,
    pub durability: Durability,
    pub readers: usize,
}

impl Options {
    pub fn new(path: impl AsRef<Path>) -> Options {
        Options {
            path: path.as_ref().to_path_buf(),
            durability: Durability::Fsync,
            readers: 4,
        }
    }
}

/// A write job; its error is what the caller gets (see [`job_err`]).
type Job = Box<dyn FnOnce(&Connection) -> Result<()> + Send>;

enum Msg {
    Commit(Vec<RunWrite>, oneshot::Sender<Result<()>>),
    /// Each write in its own savepoint, one result per write (`Store::commit_each`).
    CommitEach(Vec<RunWrite>, oneshot::Sender<Vec<Result<()>>>),
    /// Any other write, run inside the next group transaction.
    Exec(Job, oneshot::Sender<Result<()>>),
}

/// Cheap to clone; all clones share the writer thread and the read pool.
#[derive(Clone)]
pub struct SqliteStore {
    tx: mpsc::Sender<Msg>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
    max_readers: usize,
    tags: Arc<Mutex<TagCache>>,
}

/// Tags are read on every run start and change rarely. This process is the store's
/// only writer, so its own writes are all the invalidation the cache needs; the
/// generation keeps a read that raced a write from caching the old value.
#[derive(Default)]
struct TagCache {
    generation: u64,
    tags: std::collections::HashMap<(String, String), Tag>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Whether SQLite refused the write for lack of space (`SQLITE_FULL`: the file system
/// answered ENOSPC, or the database reached its size limit).
fn is_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

/// A SQLite error of a write: `Full` when out of space, else `Backend`.
fn db(e: rusqlite::Error) -> StoreError {
    if is_full(&e) { StoreError::Full(e.to_string()) } else { backend(e) }
}

/// A SQLite error inside a write job: `Full` when out of space, else a `Conflict` (what a
/// job's constraint violations mean to its caller).
fn job_err(e: rusqlite::Error) -> StoreError {
    if is_full(&e) {
        StoreError::Full(e.to_string())
    } else {
        StoreError::Conflict(e.to_string())
    }
}

fn open(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", if durability == Durability::Fsync { "FULL" } else { "NORMAL" })?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    Ok(c)
}

/// The database holds every tenant's workflows, runs and key hashes: its files are the
/// owner's only (0600). SQLite creates the `-wal` and `-shm` files with the database
/// file's mode, so creating the database file 0600 before SQLite opens it covers them;
/// files left by an older version are tightened.
fn private_files(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = std::path::PathBuf::from(name);
        // Never chmod through a link: it could point at someone else's file.
        match std::fs::symlink_metadata(&file) {
            Ok(m) if m.file_type().is_file() && m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
            _ => {}
        }
    }
    Ok(())
}

impl SqliteStore {
    pub fn open(opts: Options) -> Result<SqliteStore> {
        if let Some(dir) = opts.path.parent()
            && !dir.as_os_str().is_empty()
        {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(backend)?;
        }
        private_files(&opts.path).map_err(backend)?;
        let mut writer = open(&opts.path, opts.durability).map_err(backend)?;
        schema::migrate(&mut writer).map_err(backend)?;
        let mut readers = Vec::new();
        for _ in 0..opts.readers.max(1) {
            readers.push(open(&opts.path, opts.durability).map_err(backend)?);
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("aob-sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(backend)?;
        let max_readers = readers.len();
        Ok(SqliteStore {
            tx,
            readers: Arc::new(Mutex::new(readers)),
            path: opts.path,
            max_readers,
            tags: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn forget_tag(&self, owner: &str, name: &str) {
        let mut c = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        c.generation += 1;
        c.tags.remove(&(owner.to_string(), name.to_string()));
    }

    async fn send(&self, make: impl FnOnce(oneshot::Sender<Result<()>>) -> Msg) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?
    }

    async fn exec(&self, job: Job) -> Result<()> {
        self.send(|tx| Msg::Exec(job, tx)).await
    }

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static) -> Result<T> {
        let pool = self.readers.clone();
        let (path, keep) = (self.path.clone(), self.max_readers);
        tokio::task::spawn_blocking(move || {
            let pooled = pool.lock().map_err(|_| StoreError::Backend("reader pool poisoned".into()))?.pop();
            // All pooled readers busy: open another for this read; the pool keeps at
            // most `keep` of them afterwards.
            let conn = match pooled {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(backend)?;
                    c.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
                    c
                }
            };
            let out = f(&conn).map_err(backend);
            if let Ok(mut p) = pool.lock()
                && p.len() < keep
            {
                p.push(conn);
            }
            out
        })
        .await
        .map_err(backend)?
    }
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Msg>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        // One transaction for the whole group; each message (each write of a
        // `CommitEach`) gets its own savepoint so one bad write fails alone without
        // undoing the others.
        let result = (|| -> rusqlite::Result<Vec<Outcome>> {
            let mut tx = conn.transaction()?;
            let mut results = Vec::with_capacity(batch.len());
            for m in &mut batch {
                let r = match m {
                    Msg::Commit(writes, _) => Outcome::One(in_savepoint(&mut tx, |sp| apply_writes(sp, writes))?),
                    Msg::CommitEach(writes, _) => {
                        let mut each = Vec::with_capacity(writes.len());
                        for w in writes.iter() {
                            each.push(in_savepoint(&mut tx, |sp| apply_writes(sp, std::slice::from_ref(w)))?);
                        }
                        Outcome::Each(each)
                    }
                    Msg::Exec(job, _) => {
                        let job = std::mem::replace(job, Box::new(|_| Ok(())));
                        Outcome::One(in_savepoint(&mut tx, |sp| job(sp))?)
                    }
                };
                results.push(r);
            }
            tx.commit()?;
            Ok(results)
        })();
        match result {
            Ok(results) => {
                for (m, r) in batch.into_iter().zip(results) {
                    reply(m, r);
                }
            }
            Err(e) => {
                // The transaction itself failed (typically at its commit, where WAL
                // frames are written: ENOSPC shows up here): nothing of the group was
                // written, and every message is told why.
                tracing::error!(error = %e, "sqlite group commit failed");
                let err = db(e);
                for m in batch {
                    let r = match &m {
                        Msg::CommitEach(writes, _) => Outcome::Each(writes.iter().map(|_| Err(err.clone())).collect()),
                        _ => Outcome::One(Err(err.clone())),
                    };
                    reply(m, r);
                }
            }
        }
    }
}

/// What one message of a group gets back.
enum Outcome {
    One(Result<()>),
    Each(Vec<Result<()>>),
}

/// Runs `f` in a savepoint, kept when it succeeds and rolled back when it fails. The
/// outer error is a failure of the savepoint itself (the transaction is unusable).
fn in_savepoint(tx: &mut rusqlite::Transaction<'_>, f: impl FnOnce(&Connection) -> Result<()>) -> rusqlite::Result<Result<()>> {
    let sp = tx.savepoint()?;
    let r = f(&sp);
    if r.is_ok() {
        sp.commit()?;
    } else {
        drop(sp);
    }
    Ok(r)
}

/// Drops a tag from the cache once a write to it is over, however it ended.
struct ForgetOnDrop<'a>(&'a SqliteStore, String, String);

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.forget_tag(&self.1, &self.2);
    }
}

fn reply(m: Msg, r: Outcome) {
    match (m, r) {
        (Msg::Commit(_, tx) | Msg::Exec(_, tx), Outcome::One(r)) => {
            let _ = tx.send(r);
        }
        (Msg::CommitEach(_, tx), Outcome::Each(r)) => {
            let _ = tx.send(r);
        }
        // Built by the writer loop from the message's own kind: cannot happen.
        (Msg::Commit(_, tx) | Msg::Exec(_, tx), Outcome::Each(_)) => {
            let _ = tx.send(Err(StoreError::Backend("sqlite writer: mismatched reply".into())));
        }
        (Msg::CommitEach(writes, tx), Outcome::One(_)) => {
            let _ = tx.send(
                writes
                    .iter()
                    .map(|_| Err(StoreError::Backend("sqlite writer: mismatched reply".into())))
                    .collect(),
            );
        }
    }
}

fn is_terminal(s: RunStatus) -> bool {
    s.is_terminal()
}

/// Refuses a message whose fences are not all current, before it writes anything. It
/// runs in the message's savepoint, and lease changes go through this same writer
/// thread, so no takeover can land between the check and the writes.
fn check_fences(tx: &Connection, writes: &[RunWrite]) -> Result<()> {
    let fences: std::collections::BTreeSet<(u32, u64)> = writes.iter().filter_map(|w| w.fence).map(|f| (f.shard, f.epoch)).collect();
    if fences.is_empty() {
        return Ok(());
    }
    let mut st = tx.prepare_cached("SELECT epoch FROM shard_leases WHERE shard = ?1").map_err(db)?;
    for (shard, epoch) in fences {
        let have: Option<i64> = st.query_row([shard], |r| r.get(0)).optional().map_err(db)?;
        match have {
            Some(e) if e as u64 == epoch => {}
            Some(e) => return Err(StoreError::Fenced(format!("shard {shard} is at epoch {e}, the write holds epoch {epoch}"))),
            None => return Err(StoreError::Fenced(format!("shard {shard} has no lease, the write holds epoch {epoch}"))),
        }
    }
    Ok(())
}

fn apply_writes(tx: &Connection, writes: &[RunWrite]) -> Result<()> {
    check_fences(tx, writes)?;
    let mut ins_run = tx
        .prepare_cached(
            "INSERT INTO runs (run_id, owner, workflow_hash, tag, parent_run_id, idempotency_key, status, active, created_at, started_at, completed_at, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .map_err(db)?;
    let mut upd_run = tx
        .prepare_cached("UPDATE runs SET status = ?2, active = ?3, started_at = ?4, completed_at = ?5, state = ?6 WHERE run_id = ?1")
        .map_err(db)?;
    let mut ins_ev = tx
        .prepare_cached("INSERT INTO events (run_id, seq, owner, kind, body) VALUES (?1, ?2, ?3, ?4, ?5)")
        .map_err(db)?;
    let many = format!(
        "INSERT INTO events (run_id, seq, owner, kind, body) VALUES {}",
        vec!["(?, ?, ?, ?, ?)"; EVENT_ROWS].join(", ")
    );
    let mut ins_ev_many = tx.prepare_cached(&many).map_err(db)?;
    for w in writes {
        let st = &w.state;
        let active = !is_terminal(st.status);
        match &w.create {
            Some(c) => {
                ins_run
                    .execute(params![
                        st.run_id,
                        c.owner,
                        c.workflow_hash,
                        c.tag,
                        c.parent_run_id,
                        c.idempotency_key,
                        st.status.as_str(),
                        active,
                        st.created_at,
                        st.started_at,
                        st.completed_at,
                        w.state_json
                    ])
                    .map_err(job_err)?;
            }
            None => {
                let n = upd_run
                    .execute(params![st.run_id, st.status.as_str(), active, st.started_at, st.completed_at, w.state_json])
                    .map_err(db)?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("run {}", st.run_id)));
                }
            }
        }
        project_approvals(tx, &st.run_id, &w.events)?;
        if let Some(h) = &w.current_hash {
            tx.execute("UPDATE runs SET current_hash = ?2 WHERE run_id = ?1", params![st.run_id, h])
                .map_err(db)?;
        }
        for p in &w.patches {
            tx.execute(
                "INSERT OR REPLACE INTO run_patches (run_id, seq, status, author, description, node_id, operations, base_hash, result_hash, created_at, decided_at, decided_by, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![p.run_id, p.seq as i64, p.status, p.author, p.description, p.node_id, p.operations.to_string(), p.base_hash, p.result_hash, p.created_at, p.decided_at, p.decided_by, p.reason],
            )
            .map_err(db)?;
        }
        // Events go in as multi-row statements, EVENT_ROWS at a time: the cost per
        // statement, not per row, dominated the writer thread.
        let owner: String = match &w.create {
            Some(c) => c.owner.clone(),
            None => tx
                .query_row("SELECT owner FROM runs WHERE run_id = ?1", [&st.run_id], |r| r.get(0))
                .map_err(db)?,
        };
        for chunk in w.events.chunks(EVENT_ROWS) {
            if chunk.len() == EVENT_ROWS {
                let seqs: Vec<i64> = chunk.iter().map(|e| e.seq as i64).collect();
                let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(EVENT_ROWS * 5);
                for (e, seq) in chunk.iter().zip(&seqs) {
                    args.extend([&e.run_id as &dyn rusqlite::ToSql, seq, &owner, &e.kind, &e.body]);
                }
                ins_ev_many.execute(args.as_slice()).map_err(|err| {
                    if is_full(&err) {
                        db(err)
                    } else {
                        StoreError::Conflict(format!("events of {}: {err}", st.run_id))
                    }
                })?;
            } else {
                for e in chunk {
                    ins_ev.execute(params![e.run_id, e.seq as i64, owner, e.kind, e.body]).map_err(|err| {
                        if is_full(&err) {
                            db(err)
                        } else {
                            StoreError::Conflict(format!("event {}#{}: {err}", e.run_id, e.seq))
                        }
                    })?;
                }
            }
        }
    }
    Ok(())
}

/// Keeps the approvals table in step with the run's approval events, in the same
/// transaction, so an approval is pending exactly while the run waits for it.
fn project_approvals(tx: &Connection, run_id: &str, events: &[StoredEvent]) -> Result<()> {
    for e in events {
        match e.kind.as_str() {
            "approval_required" => {
                let v: serde_json::Value = serde_json::from_str(&e.body).map_err(backend)?;
                let d = &v["data"];
                let at = chrono_ms(&v["timestamp"]);
                tx.execute(
                    "INSERT OR REPLACE INTO approvals (id, run_id, node_id, activation, owner, status, message, data, approvers, created_at, timeout_at, decision_data)
                     VALUES (?1, ?2, ?3, ?4, (SELECT owner FROM runs WHERE run_id = ?2), 'pending', ?5, ?6, ?7, ?8, ?9, 'null')",
                    params![
                        d["approval_id"].as_str().unwrap_or_default(),
                        run_id,
                        v["node_id"].as_str().unwrap_or_default(),
                        d["activation"].as_u64().unwrap_or(0) as i64,
                        d["message"].as_str().unwrap_or_default(),
                        d["data"].to_string(),
                        d["approvers"].to_string(),
                        at,
                        d["timeout_at_ms"].as_i64(),
                    ],
                )
                .map_err(db)?;
            }
            "approval_decided" => {
                let v: serde_json::Value = serde_json::from_str(&e.body).map_err(backend)?;
                let d = &v["data"];
                tx.execute(
                    "UPDATE approvals SET status = ?2, decided_at = ?3, decided_by = ?4, comment = ?5, decision_data = ?6 WHERE id = ?1",
                    params![
                        d["approval_id"].as_str().unwrap_or_default(),
                        d["status"].as_str().unwrap_or("approved"),
                        d["decided_at_ms"].as_i64(),
                        d["approved_by"].as_str(),
                        d["comment"].as_str(),
                        d["data"].to_string(),
                    ],
                )
                .map_err(db)?;
            }
            "workflow_completed" | "workflow_failed" | "workflow_cancelled" => {
                tx.execute("UPDATE approvals SET status = 'cancelled' WHERE run_id = ?1 AND status = 'pending'", [run_id])
                    .map_err(db)?;
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

/// Rows per multi-row event insert.
const EVENT_ROWS: usize = 16;

fn parse_state(json: &str) -> rusqlite::Result<RunState> {
    serde_json::from_str(json).map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

fn summary(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunSummary> {
    let status: String = row.get(4)?;
    Ok(RunSummary {
        run_id: row.get(0)?,
        owner: row.get(1)?,
        workflow_hash: row.get(2)?,
        tag: row.get(3)?,
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
        created_at: row.get(5)?,
        started_at: row.get(6)?,
        completed_at: row.get(7)?,
        parent_run_id: row.get(8)?,
    })
}

fn tag_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Tag> {
    Ok(Tag {
        owner: row.get(0)?,
        name: row.get(1)?,
        hash: row.get(2)?,
        version: row.get::<_, i64>(3)? as u64,
        created_by: row.get(4)?,
        moved_by: row.get(5)?,
        created_at: row.get(6)?,
        moved_at: row.get(7)?,
    })
}

const TAG_COLS: &str = "owner, name, hash, version, created_by, moved_by, created_at, moved_at";

#[async_trait]
impl Store for SqliteStore {
    async fn put_blob(&self, blob: Blob) -> Result<()> {
        self.exec(Box::new(move |tx| {
            let content = blob.content.to_string();
            tx.execute(
                "INSERT OR IGNORE INTO blobs (hash, kind, content, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![blob.hash, blob.kind, content, blob.created_at],
            )
            .map(|_| ())
            .map_err(job_err)
        }))
        .await
    }

    async fn get_blob(&self, hash: &str) -> Result<Option<Blob>> {
        let hash = hash.to_string();
        self.read(move |c| {
            c.query_row("SELECT hash, kind, content, created_at FROM blobs WHERE hash = ?1", [hash], |r| {
                let content: String = r.get(2)?;
                Ok(Blob {
                    hash: r.get(0)?,
                    kind: r.get(1)?,
                    content: serde_json::from_str(&content).unwrap_or(serde_json::Value::Null),
                    created_at: r.get(3)?,
                })
            })
            .optional()
        })
        .await
    }

    async fn set_tag(&self, u: TagUpdate) -> Result<Tag> {
        let (owner, name) = (u.owner.clone(), u.name.clone());
        self.forget_tag(&owner, &name);
        let result = self
            .exec(Box::new(move |tx| {
                let current: Option<i64> = tx
                    .query_row("SELECT version FROM tags WHERE owner = ?1 AND name = ?2", params![u.owner, u.name], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(job_err)?;
                let have = current.unwrap_or(0) as u64;
                if let Some(expected) = u.expected_version
                    && expected != have
                {
                    return Err(StoreError::Conflict(format!("tag {} is at version {have}, expected {expected}", u.name)));
                }
                let next = have + 1;
                if current.is_some() {
                    tx.execute(
                        "UPDATE tags SET hash = ?3, version = ?4, moved_by = ?5, moved_at = ?6 WHERE owner = ?1 AND name = ?2",
                        params![u.owner, u.name, u.hash, next as i64, u.by, u.at],
                    )
                } else {
                    tx.execute(
                        "INSERT INTO tags (owner, name, hash, version, created_by, moved_by, created_at, moved_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?6)",
                        params![u.owner, u.name, u.hash, next as i64, u.by, u.at],
                    )
                }
                .map_err(job_err)?;
                let seq: i64 = tx
                    .query_row(
                        "SELECT COALESCE(MAX(seq) + 1, 0) FROM tag_history WHERE owner = ?1 AND name = ?2",
                        params![u.owner, u.name],
                        |r| r.get(0),
                    )
                    .map_err(job_err)?;
                tx.execute(
                    "INSERT INTO tag_history (owner, name, seq, hash, op, by, at, description) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![u.owner, u.name, seq, u.hash, u.op, u.by, u.at, u.description],
                )
                .map_err(job_err)?;
                Ok(())
            }))
            .await;
        self.forget_tag(&owner, &name);
        result?;
        self.get_tag(&owner, &name).await?.ok_or(StoreError::NotFound(name))
    }

    async fn get_tag(&self, owner: &str, name: &str) -> Result<Option<Tag>> {
        let key = (owner.to_string(), name.to_string());
        let generation = {
            let c = self.tags.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = c.tags.get(&key) {
                return Ok(Some(t.clone()));
            }
            c.generation
        };
        let (o, n) = key.clone();
        let tag = self
            .read(move |c| {
                c.query_row(&format!("SELECT {TAG_COLS} FROM tags WHERE owner = ?1 AND name = ?2"), params![o, n], tag_row)
                    .optional()
            })
            .await?;
        if let Some(t) = &tag {
            let mut c = self.tags.lock().unwrap_or_else(|p| p.into_inner());
            if c.generation == generation {
                c.tags.insert(key, t.clone());
            }
        }
        Ok(tag)
    }

    async fn list_tags(&self, owner: &str) -> Result<Vec<Tag>> {
        let owner = owner.to_string();
        self.read(move |c| {
            let mut st = c.prepare(&format!("SELECT {TAG_COLS} FROM tags WHERE owner = ?1 ORDER BY name"))?;
            st.query_map([owner], tag_row)?.collect()
        })
        .await
    }

    async fn tag_history(&self, owner: &str, name: &str) -> Result<Vec<TagVersion>> {
        let (owner, name) = (owner.to_string(), name.to_string());
        self.read(move |c| {
            let mut st = c.prepare("SELECT seq, hash, op, by, at, description FROM tag_history WHERE owner = ?1 AND name = ?2 ORDER BY seq")?;
            st.query_map(params![owner, name], |r| {
                Ok(TagVersion {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                    op: r.get(2)?,
                    by: r.get(3)?,
                    at: r.get(4)?,
                    description: r.get(5)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn delete_tag(&self, owner: &str, name: &str) -> Result<bool> {
        let existed = self.get_tag(owner, name).await?.is_some();
        self.forget_tag(owner, name);
        let (owner, name) = (owner.to_string(), name.to_string());
        let _forget = ForgetOnDrop(self, owner.clone(), name.clone());
        self.exec(Box::new(move |tx| {
            tx.execute("DELETE FROM tags WHERE owner = ?1 AND name = ?2", params![owner, name])
                .map_err(job_err)?;
            tx.execute("DELETE FROM tag_history WHERE owner = ?1 AND name = ?2", params![owner, name])
                .map_err(job_err)?;
            Ok(())
        }))
        .await?;
        Ok(existed)
    }

    async fn commit(&self, writes: Vec<RunWrite>) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        self.send(|tx| Msg::Commit(writes, tx)).await
    }

    async fn commit_each(&self, writes: Vec<RunWrite>) -> Vec<Result<()>> {
        if writes.is_empty() {
            return Vec::new();
        }
        let n = writes.len();
        let stopped = || (0..n).map(|_| Err(StoreError::Unavailable("sqlite writer stopped".into()))).collect();
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::CommitEach(writes, tx)).is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let run_id = run_id.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT run_id, owner, workflow_hash, tag, parent_run_id, state, current_hash FROM runs WHERE run_id = ?1",
                [run_id],
                |r| {
                    let state: String = r.get(5)?;
                    Ok(RunRecord {
                        run_id: r.get(0)?,
                        owner: r.get(1)?,
                        workflow_hash: r.get(2)?,
                        tag: r.get(3)?,
                        parent_run_id: r.get(4)?,
                        current_hash: r.get(6)?,
                        state: parse_state(&state)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn list_runs(&self, f: RunFilter) -> Result<Vec<RunSummary>> {
        self.read(move |c| {
            let mut sql =
                String::from("SELECT run_id, owner, workflow_hash, tag, status, created_at, started_at, completed_at, parent_run_id FROM runs WHERE 1=1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            if let Some(o) = f.owner {
                args.push(o.into());
                sql.push_str(&format!(" AND owner = ?{}", args.len()));
            }
            if let Some(s) = f.status {
                args.push(s.as_str().to_string().into());
                sql.push_str(&format!(" AND status = ?{}", args.len()));
            }
            if let Some(t) = f.tag {
                args.push(t.into());
                sql.push_str(&format!(" AND tag = ?{}", args.len()));
            }
            if let Some((at, id)) = f.before {
                args.push(at.into());
                args.push(id.into());
                let (a, b) = (args.len() - 1, args.len());
                sql.push_str(&format!(" AND (created_at < ?{a} OR (created_at = ?{a} AND run_id < ?{b}))"));
            }
            sql.push_str(&format!(" ORDER BY created_at DESC, run_id DESC LIMIT {}", f.limit.clamp(1, 1000)));
            let mut st = c.prepare(&sql)?;
            st.query_map(rusqlite::params_from_iter(args), summary)?.collect()
        })
        .await
    }

    async fn active_runs(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT run_id FROM runs WHERE active = 1")?;
            st.query_map([], |r| r.get(0))?.collect()
        })
        .await
    }

    async fn events(&self, run_id: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let run_id = run_id.to_string();
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT run_id, seq, kind, body FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")?;
            st.query_map(params![run_id, after as i64, limit.min(100_000) as i64], |r| {
                Ok(StoredEvent {
                    run_id: r.get(0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    kind: r.get(2)?,
                    body: r.get(3)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn owner_events(&self, owner: &str, after: i64, limit: usize) -> Result<Vec<(i64, StoredEvent)>> {
        let owner = owner.to_string();
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT id, run_id, seq, kind, body FROM events WHERE owner = ?1 AND id > ?2 ORDER BY id LIMIT ?3")?;
            st.query_map(params![owner, after, limit.min(100_000) as i64], |r| {
                Ok((
                    r.get(0)?,
                    StoredEvent {
                        run_id: r.get(1)?,
                        seq: r.get::<_, i64>(2)? as u64,
                        kind: r.get(3)?,
                        body: r.get(4)?,
                    },
                ))
            })?
            .collect()
        })
        .await
    }

    async fn run_by_idempotency_key(&self, owner: &str, key: &str) -> Result<Option<String>> {
        let (owner, key) = (owner.to_string(), key.to_string());
        self.read(move |c| {
            c.query_row("SELECT run_id FROM runs WHERE owner = ?1 AND idempotency_key = ?2", params![owner, key], |r| {
                r.get(0)
            })
            .optional()
        })
        .await
    }

    async fn grant_blob(&self, hash: &str, owner: &str) -> Result<()> {
        let (hash, owner) = (hash.to_string(), owner.to_string());
        self.exec(Box::new(move |tx| {
            tx.execute("INSERT OR IGNORE INTO blob_owners (hash, owner) VALUES (?1, ?2)", params![hash, owner])
                .map(|_| ())
                .map_err(job_err)
        }))
        .await
    }

    async fn blob_granted(&self, hash: &str, owner: &str) -> Result<bool> {
        let (hash, owner) = (hash.to_string(), owner.to_string());
        self.read(move |c| {
            c.query_row("SELECT 1 FROM blob_owners WHERE hash = ?1 AND owner = ?2", params![hash, owner], |_| Ok(()))
                .optional()
                .map(|o| o.is_some())
        })
        .await
    }

    async fn list_approvals(&self, owner: &str, status: Option<&str>, limit: usize) -> Result<Vec<Approval>> {
        let (owner, status) = (owner.to_string(), status.map(str::to_string));
        let limit = limit.clamp(1, 1000) as i64;
        self.read(move |c| match status {
            Some(s) => {
                let mut st = c.prepare_cached(&format!(
                    "SELECT {APPROVAL_COLS} FROM approvals WHERE owner = ?1 AND status = ?2 ORDER BY created_at DESC, id LIMIT ?3"
                ))?;
                st.query_map(params![owner, s, limit], approval_row)?.collect()
            }
            None => {
                let mut st = c.prepare_cached(&format!(
                    "SELECT {APPROVAL_COLS} FROM approvals WHERE owner = ?1 ORDER BY created_at DESC, id LIMIT ?2"
                ))?;
                st.query_map(params![owner, limit], approval_row)?.collect()
            }
        })
        .await
    }

    async fn get_approval(&self, id: &str) -> Result<Option<Approval>> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(&format!("SELECT {APPROVAL_COLS} FROM approvals WHERE id = ?1"), [id], approval_row)
                .optional()
        })
        .await
    }

    async fn list_patches(&self, run_id: &str) -> Result<Vec<PatchRecord>> {
        let run_id = run_id.to_string();
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!("SELECT {PATCH_COLS} FROM run_patches WHERE run_id = ?1 ORDER BY seq"))?;
            st.query_map([run_id], patch_row)?.collect()
        })
        .await
    }

    async fn get_patch(&self, run_id: &str, seq: u64) -> Result<Option<PatchRecord>> {
        let run_id = run_id.to_string();
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {PATCH_COLS} FROM run_patches WHERE run_id = ?1 AND seq = ?2"),
                params![run_id, seq as i64],
                patch_row,
            )
            .optional()
        })
        .await
    }

    async fn put_key(&self, k: ApiKey) -> Result<()> {
        self.exec(Box::new(move |tx| {
            tx.execute(
                "INSERT INTO api_keys (id, tenant, user, role, name, hash, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![k.id, k.tenant, k.user, k.role, k.name, k.hash, k.created_at, k.revoked_at],
            )
            .map(|_| ())
            .map_err(job_err)
        }))
        .await
    }

    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let id = id.to_string();
        self.read(move |c| c.query_row(&format!("SELECT {KEY_COLS} FROM api_keys WHERE id = ?1"), [id], key_row).optional())
            .await
    }

    async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let tenant = tenant.map(str::to_string);
        self.read(move |c| match tenant {
            Some(t) => {
                let mut st = c.prepare(&format!("SELECT {KEY_COLS} FROM api_keys WHERE tenant = ?1 ORDER BY created_at, id"))?;
                st.query_map([t], key_row)?.collect()
            }
            None => {
                let mut st = c.prepare(&format!("SELECT {KEY_COLS} FROM api_keys ORDER BY created_at, id"))?;
                st.query_map([], key_row)?.collect()
            }
        })
        .await
    }

    async fn revoke_key(&self, id: &str, at: i64) -> Result<bool> {
        let live = matches!(self.get_key(id).await?, Some(k) if k.revoked_at.is_none());
        if !live {
            return Ok(false);
        }
        let id = id.to_string();
        self.exec(Box::new(move |tx| {
            tx.execute("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![id, at])
                .map(|_| ())
                .map_err(job_err)
        }))
        .await?;
        Ok(true)
    }

    async fn claim_idempotency(&self, rec: IdempotencyRecord, completed_since: i64, pending_since: i64) -> Result<Option<IdempotencyRecord>> {
        let found: Arc<Mutex<Option<IdempotencyRecord>>> = Arc::default();
        let out = found.clone();
        self.exec(Box::new(move |tx| {
            let existing = tx
                .query_row(
                    &format!("SELECT {IDEM_COLS} FROM idempotency WHERE tenant = ?1 AND key = ?2"),
                    params![rec.tenant, rec.key],
                    idem_row,
                )
                .optional()
                .map_err(job_err)?;
            if let Some(e) = existing {
                let live = if e.status.is_some() {
                    e.created_at >= completed_since
                } else {
                    e.created_at >= pending_since
                };
                if live {
                    *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    return Ok(());
                }
            }
            tx.execute(
                "INSERT OR REPLACE INTO idempotency (tenant, key, request, body_hash, status, response, created_at) VALUES (?1, ?2, ?3, ?4, NULL, NULL, ?5)",
                params![rec.tenant, rec.key, rec.request, rec.body_hash, rec.created_at],
            )
            .map(|_| ())
            .map_err(job_err)
        }))
        .await?;
        Ok(found.lock().unwrap_or_else(|p| p.into_inner()).take())
    }

    async fn complete_idempotency(&self, claim: &IdempotencyRecord, status: u16, response: Vec<u8>) -> Result<()> {
        let (tenant, key, at) = (claim.tenant.clone(), claim.key.clone(), claim.created_at);
        self.exec(Box::new(move |tx| {
            tx.execute(
                "UPDATE idempotency SET status = ?4, response = ?5 WHERE tenant = ?1 AND key = ?2 AND created_at = ?3 AND status IS NULL",
                params![tenant, key, at, status as i64, response],
            )
            .map(|_| ())
            .map_err(job_err)
        }))
        .await
    }

    async fn release_idempotency(&self, claim: &IdempotencyRecord) -> Result<()> {
        let (tenant, key, at) = (claim.tenant.clone(), claim.key.clone(), claim.created_at);
        self.exec(Box::new(move |tx| {
            tx.execute(
                "DELETE FROM idempotency WHERE tenant = ?1 AND key = ?2 AND created_at = ?3 AND status IS NULL",
                params![tenant, key, at],
            )
            .map(|_| ())
            .map_err(job_err)
        }))
        .await
    }

    async fn purge_idempotency(&self, before: i64) -> Result<u64> {
        let n: Arc<Mutex<u64>> = Arc::default();
        let out = n.clone();
        self.exec(Box::new(move |tx| {
            let k = tx.execute("DELETE FROM idempotency WHERE created_at < ?1", [before]).map_err(job_err)?;
            *out.lock().unwrap_or_else(|p| p.into_inner()) = k as u64;
            Ok(())
        }))
        .await?;
        Ok(*n.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn claim_shards(&self, owner: &str, shards: &[u32], now: i64, ttl_ms: i64) -> Result<Vec<ShardLease>> {
        let shards = distinct(shards);
        if shards.is_empty() {
            return Ok(vec![]);
        }
        let owner = owner.to_string();
        let expires_at = now.saturating_add(ttl_ms);
        let held: Arc<Mutex<Vec<ShardLease>>> = Arc::default();
        let out = held.clone();
        // A write like any other, so it is ordered with the commits it fences.
        self.exec(Box::new(move |tx| {
            let mut claim = tx
                .prepare_cached(
                    "INSERT INTO shard_leases (shard, owner, epoch, expires_at) VALUES (?1, ?2, 1, ?3)
                     ON CONFLICT (shard) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at,
                         epoch = CASE WHEN shard_leases.owner = excluded.owner THEN shard_leases.epoch ELSE shard_leases.epoch + 1 END
                     WHERE shard_leases.owner = excluded.owner OR shard_leases.expires_at <= ?4",
                )
                .map_err(job_err)?;
            let mut get = tx
                .prepare_cached("SELECT shard, owner, epoch, expires_at FROM shard_leases WHERE shard = ?1 AND owner = ?2")
                .map_err(job_err)?;
            let mut leases = Vec::new();
            for shard in shards {
                claim.execute(params![shard, owner, expires_at, now]).map_err(job_err)?;
                if let Some(l) = get.query_row(params![shard, owner], lease_row).optional().map_err(job_err)? {
                    leases.push(l);
                }
            }
            *out.lock().unwrap_or_else(|p| p.into_inner()) = leases;
            Ok(())
        }))
        .await?;
        Ok(std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner())))
    }

    async fn release_shards(&self, owner: &str, shards: &[u32]) -> Result<()> {
        let shards = distinct(shards);
        if shards.is_empty() {
            return Ok(());
        }
        let owner = owner.to_string();
        self.exec(Box::new(move |tx| {
            let mut st = tx
                .prepare_cached("UPDATE shard_leases SET expires_at = 0 WHERE shard = ?1 AND owner = ?2")
                .map_err(job_err)?;
            for shard in shards {
                st.execute(params![shard, owner]).map_err(job_err)?;
            }
            Ok(())
        }))
        .await
    }

    async fn shard_leases(&self) -> Result<Vec<ShardLease>> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT shard, owner, epoch, expires_at FROM shard_leases ORDER BY shard")?;
            st.query_map([], lease_row)?.collect()
        })
        .await
    }

    async fn heartbeat(&self, m: Member) -> Result<()> {
        self.exec(Box::new(move |tx| {
            tx.execute(
                "INSERT INTO members (id, roles, addr, started_at, seen_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET roles = excluded.roles, addr = excluded.addr,
                     started_at = excluded.started_at, seen_at = excluded.seen_at",
                params![m.id, m.roles, m.addr, m.started_at, m.seen_at],
            )
            .map(|_| ())
            .map_err(job_err)
        }))
        .await
    }

    async fn members(&self, since: i64) -> Result<Vec<Member>> {
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT id, roles, addr, started_at, seen_at FROM members WHERE seen_at >= ?1 ORDER BY id")?;
            st.query_map([since], member_row)?.collect()
        })
        .await
    }

    async fn leave(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.exec(Box::new(move |tx| {
            tx.execute("DELETE FROM members WHERE id = ?1", [id]).map(|_| ()).map_err(job_err)
        }))
        .await
    }
}

/// Sorted and without repeats: the order leases are returned in.
fn distinct(shards: &[u32]) -> Vec<u32> {
    let mut v = shards.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

fn lease_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ShardLease> {
    Ok(ShardLease {
        shard: r.get(0)?,
        owner: r.get(1)?,
        epoch: r.get::<_, i64>(2)? as u64,
        expires_at: r.get(3)?,
    })
}

fn member_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Member> {
    Ok(Member {
        id: r.get(0)?,
        roles: r.get(1)?,
        addr: r.get(2)?,
        started_at: r.get(3)?,
        seen_at: r.get(4)?,
    })
}

const IDEM_COLS: &str = "tenant, key, request, body_hash, status, response, created_at";

fn idem_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IdempotencyRecord> {
    Ok(IdempotencyRecord {
        tenant: r.get(0)?,
        key: r.get(1)?,
        request: r.get(2)?,
        body_hash: r.get(3)?,
        status: r.get::<_, Option<i64>>(4)?.map(|s| s as u16),
        response: r.get(5)?,
        created_at: r.get(6)?,
    })
}

const APPROVAL_COLS: &str =
    "id, run_id, node_id, activation, owner, status, message, data, approvers, created_at, timeout_at, decided_at, decided_by, comment, decision_data";

fn approval_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Approval> {
    let json = |i: usize| -> rusqlite::Result<serde_json::Value> {
        let t: String = r.get(i)?;
        Ok(serde_json::from_str(&t).unwrap_or(serde_json::Value::Null))
    };
    Ok(Approval {
        id: r.get(0)?,
        run_id: r.get(1)?,
        node_id: r.get(2)?,
        activation: r.get::<_, i64>(3)? as u32,
        owner: r.get(4)?,
        status: r.get(5)?,
        message: r.get(6)?,
        data: json(7)?,
        approvers: serde_json::from_value(json(8)?).unwrap_or_default(),
        created_at: r.get(9)?,
        timeout_at: r.get(10)?,
        decided_at: r.get(11)?,
        decided_by: r.get(12)?,
        comment: r.get(13)?,
        decision_data: json(14)?,
    })
}

const PATCH_COLS: &str = "run_id, seq, status, author, description, node_id, operations, base_hash, result_hash, created_at, decided_at, decided_by, reason";

fn patch_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PatchRecord> {
    let ops: String = r.get(6)?;
    Ok(PatchRecord {
        run_id: r.get(0)?,
        seq: r.get::<_, i64>(1)? as u64,
        status: r.get(2)?,
        author: r.get(3)?,
        description: r.get(4)?,
        node_id: r.get(5)?,
        operations: serde_json::from_str(&ops).unwrap_or(serde_json::Value::Null),
        base_hash: r.get(7)?,
        result_hash: r.get(8)?,
        created_at: r.get(9)?,
        decided_at: r.get(10)?,
        decided_by: r.get(11)?,
        reason: r.get(12)?,
    })
}

const KEY_COLS: &str = "id, tenant, user, role, name, hash, created_at, revoked_at";

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: r.get(0)?,
        tenant: r.get(1)?,
        user: r.get(2)?,
        role: r.get(3)?,
        name: r.get(4)?,
        hash: r.get(5)?,
        created_at: r.get(6)?,
        revoked_at: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> Box<SqliteStore> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.keep().join("aob.db");
        Box::new(
            SqliteStore::open(Options {
                path,
                durability: Durability::Process,
                readers: 2,
            })
            .unwrap(),
        )
    }

    aob_store::store_conformance!(fresh());

    fn create(run_id: &str, fence: Option<Fence>) -> RunWrite {
        let state = RunState {
            run_id: run_id.into(),
            status: RunStatus::Running,
            inputs: serde_json::json!({}),
            nodes: vec![],
            edges: vec![],
            seq: 1,
            paused: false,
            error: None,
            outputs: None,
            created_at: 1,
            started_at: None,
            completed_at: None,
            patch_seq: 0,
            settings: Default::default(),
        };
        let event = aob_engine::Event {
            seq: 1,
            kind: "workflow_started".into(),
            node_id: None,
            attempt: None,
            at: 1,
            data: serde_json::json!({}),
        };
        RunWrite {
            create: Some(NewRun {
                owner: "alice".into(),
                workflow_hash: "sha256:abc".into(),
                tag: None,
                parent_run_id: None,
                idempotency_key: None,
            }),
            state_json: serde_json::to_string(&state).unwrap(),
            events: stored_events(run_id, &[event]),
            state,
            current_hash: None,
            patches: vec![],
            fence,
        }
    }

    /// Group commit: a stale fence fails its own message (its savepoint is rolled back),
    /// not the other callers' messages folded into the same transaction.
    #[tokio::test]
    async fn a_fenced_message_fails_alone_in_its_group() {
        let s = fresh().await;
        assert_eq!(s.claim_shards("a", &[1], 0, 1000).await.unwrap()[0].epoch, 1);
        // Hold the writer inside a group so the next messages queue up and share the
        // following transaction.
        let (release, wait) = mpsc::channel::<()>();
        let (running, started) = mpsc::channel::<()>();
        let (held_tx, held) = oneshot::channel();
        let hold: Job = Box::new(move |_| {
            let _ = running.send(());
            let _ = wait.recv();
            Ok(())
        });
        s.tx.send(Msg::Exec(hold, held_tx)).unwrap();
        started.recv().unwrap();
        let send = |w: RunWrite| {
            let (tx, rx) = oneshot::channel();
            s.tx.send(Msg::Commit(vec![w], tx)).unwrap();
            rx
        };
        let good = send(create("g1", Some(Fence { shard: 1, epoch: 1 })));
        let stale = send(create("g2", Some(Fence { shard: 1, epoch: 0 })));
        let plain = send(create("g3", None));
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        good.await.unwrap().unwrap();
        assert!(matches!(stale.await.unwrap(), Err(StoreError::Fenced(_))));
        plain.await.unwrap().unwrap();
        assert!(s.get_run("g1").await.unwrap().is_some());
        assert!(s.get_run("g2").await.unwrap().is_none());
        assert!(s.events("g2", 0, 10).await.unwrap().is_empty());
        assert!(s.get_run("g3").await.unwrap().is_some());
    }

    /// A database made by the previous release (user_version 5) gains the new tables.
    #[tokio::test]
    async fn migrates_a_database_of_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let mut c = Connection::open(&path).unwrap();
            let tx = c.transaction().unwrap();
            for step in &schema::STEPS[..5] {
                tx.execute_batch(step).unwrap();
            }
            tx.pragma_update(None, "user_version", 5).unwrap();
            tx.commit().unwrap();
        }
        let s = SqliteStore::open(Options::new(&path)).unwrap();
        assert_eq!(s.claim_shards("a", &[2], 0, 10).await.unwrap().len(), 1);
        let c = Connection::open(&path).unwrap();
        let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v as usize, schema::STEPS.len());
    }

    /// More concurrent reads than pooled readers: the extra ones open their own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn reads_beyond_the_pool_succeed() {
        let s = fresh().await;
        let mut tasks = Vec::new();
        for i in 0..64 {
            let s = (*s).clone();
            tasks.push(tokio::spawn(async move { s.get_blob(&format!("sha256:{i}")).await }));
        }
        for t in tasks {
            assert!(t.await.unwrap().unwrap().is_none());
        }
        assert!(s.readers.lock().unwrap().len() <= s.max_readers);
    }

    /// The database, its WAL and shared-memory files are the owner's only, whatever
    /// the umask, and a database left world-readable by an older version is tightened.
    #[cfg(unix)]
    #[tokio::test]
    async fn database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/aob.db");
        let s = SqliteStore::open(Options::new(&path)).unwrap();
        s.claim_shards("a", &[1], 0, 10).await.unwrap();
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        for suffix in ["", "-wal", "-shm"] {
            let f = PathBuf::from(format!("{}{suffix}", path.display()));
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }

        let old = dir.path().join("old.db");
        drop(Connection::open(&old).unwrap());
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(SqliteStore::open(Options::new(&old)).unwrap());
        assert_eq!(mode(&old), 0o600);
    }
}
