-- aob PostgreSQL schema, version 1. Never edit an applied migration: add a new numbered
-- file instead (sqlx records a checksum of each applied file and refuses a changed one).
-- Tables are created unqualified: they land in the first schema of `search_path`, which
-- the store sets on every connection when `Options::schema` is given.
--
-- Times are Unix milliseconds (BIGINT). Event bodies and run states are TEXT so they are
-- served byte-for-byte as written; JSON values that are only stored and returned use
-- `json` (kept as written, key order included); `jsonb` is used where it is queried.

CREATE TABLE blobs (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    content JSON NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE blob_owners (
    hash TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (hash, owner)
);

CREATE TABLE tags (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    moved_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    moved_at BIGINT NOT NULL,
    PRIMARY KEY (owner, name)
);

CREATE TABLE tag_history (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    op TEXT NOT NULL,
    by TEXT NOT NULL,
    at BIGINT NOT NULL,
    description TEXT,
    PRIMARY KEY (owner, name, seq)
);

CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    workflow_hash TEXT NOT NULL,
    current_hash TEXT,
    tag TEXT,
    parent_run_id TEXT,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    active BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    completed_at BIGINT,
    state TEXT NOT NULL
);
CREATE INDEX runs_owner_created ON runs (owner, created_at DESC, run_id DESC);
CREATE INDEX runs_created ON runs (created_at DESC, run_id DESC);
CREATE INDEX runs_active ON runs (run_id) WHERE active;
CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE UNIQUE INDEX runs_idempotency ON runs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- `id` is the global position `owner_events` pages by. Writers take a transaction-level
-- advisory lock just before inserting events, so ids become visible in increasing order
-- (a reader never sees id n+1 committed while id n is still in flight).
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (run_id, seq)
);
CREATE INDEX events_owner ON events (owner, id);

CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    activation BIGINT NOT NULL,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL,
    data JSON NOT NULL,
    approvers JSONB NOT NULL,
    created_at BIGINT NOT NULL,
    timeout_at BIGINT,
    decided_at BIGINT,
    decided_by TEXT,
    comment TEXT,
    decision_data JSON NOT NULL
);
CREATE INDEX approvals_owner ON approvals (owner, status, created_at DESC);
CREATE INDEX approvals_run ON approvals (run_id, status);

CREATE TABLE run_patches (
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    status TEXT NOT NULL,
    author TEXT NOT NULL,
    description TEXT NOT NULL,
    node_id TEXT,
    operations JSON NOT NULL,
    base_hash TEXT NOT NULL,
    result_hash TEXT,
    created_at BIGINT NOT NULL,
    decided_at BIGINT,
    decided_by TEXT,
    reason TEXT,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    "user" TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);

CREATE TABLE idempotency (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    request TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    status INTEGER,
    response BYTEA,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_created ON idempotency (created_at);
