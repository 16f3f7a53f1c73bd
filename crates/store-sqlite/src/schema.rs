//! Schema migrations, tracked in `PRAGMA user_version`. Never edit an applied step.

use rusqlite::Connection;

pub(crate) const STEPS: &[&str] = &[
    r#"
CREATE TABLE blobs (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE tags (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    moved_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    moved_at INTEGER NOT NULL,
    PRIMARY KEY (owner, name)
);
CREATE TABLE tag_history (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    op TEXT NOT NULL,
    by TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (owner, name, seq)
);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    workflow_hash TEXT NOT NULL,
    tag TEXT,
    parent_run_id TEXT,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    active INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    completed_at INTEGER,
    state TEXT NOT NULL
);
CREATE INDEX runs_owner_created ON runs (owner, created_at DESC, run_id DESC);
CREATE INDEX runs_active ON runs (active) WHERE active = 1;
CREATE UNIQUE INDEX runs_idempotency ON runs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (run_id, seq)
);
CREATE INDEX events_owner ON events (owner, id);
"#,
    r#"
CREATE TABLE blob_owners (
    hash TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (hash, owner)
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);
"#,
    r#"
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    activation INTEGER NOT NULL,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL,
    approvers TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    timeout_at INTEGER,
    decided_at INTEGER,
    decided_by TEXT,
    comment TEXT,
    decision_data TEXT NOT NULL
);
CREATE INDEX approvals_owner ON approvals (owner, status, created_at DESC);
CREATE INDEX approvals_run ON approvals (run_id, status);
"#,
    r#"
ALTER TABLE runs ADD COLUMN current_hash TEXT;
CREATE TABLE run_patches (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    author TEXT NOT NULL,
    description TEXT NOT NULL,
    node_id TEXT,
    operations TEXT NOT NULL,
    base_hash TEXT NOT NULL,
    result_hash TEXT,
    created_at INTEGER NOT NULL,
    decided_at INTEGER,
    decided_by TEXT,
    reason TEXT,
    PRIMARY KEY (run_id, seq)
);
"#,
    r#"
ALTER TABLE tag_history ADD COLUMN description TEXT;
CREATE TABLE idempotency (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    request TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    status INTEGER,
    response BLOB,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_created ON idempotency (created_at);
"#,
    r#"
CREATE TABLE shard_leases (
    shard INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE members (
    id TEXT PRIMARY KEY,
    roles TEXT NOT NULL,
    addr TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    seen_at INTEGER NOT NULL
);
"#,
];

pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let have: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, step) in STEPS.iter().enumerate().skip(have.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
