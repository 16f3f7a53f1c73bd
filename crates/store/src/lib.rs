//! The storage seam: runs with their state and event log, workflows (content-addressed
//! blobs) and tags. Every backend implements [`Store`] and passes [`conformance`].
//!
//! Invariant: a run's state and the events of the transition that produced it are
//! written in one transaction ([`Store::commit`]); an event's `seq` is unique per run.

pub mod conformance;
mod types;

pub use types::*;

use async_trait::async_trait;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// An optimistic check failed (tag version, duplicate key).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The backend is shutting down or unreachable.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A write carried a shard lease ([`Fence`]) that is no longer current: another
    /// process took the shard over. Nothing of the batch was written.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The disk (or the database server's) is out of space: nothing was written; the
    /// same write succeeds once space is back.
    #[error("storage full: {0}")]
    Full(String),
}

impl StoreError {
    /// Whether the failure belongs to the write itself (a conflict, a missing run, a
    /// stale fence, a constraint), rather than to the store as a whole (unreachable,
    /// out of space), which every other write of the moment would meet as well.
    pub fn is_write_specific(&self) -> bool {
        !matches!(self, StoreError::Unavailable(_) | StoreError::Full(_))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a content-addressed blob; storing the same hash twice is a no-op.
    async fn put_blob(&self, blob: Blob) -> Result<()>;
    async fn get_blob(&self, hash: &str) -> Result<Option<Blob>>;

    /// Points a tag at a blob. With `expected_version`, fails with `Conflict` unless the
    /// tag's current version matches (0 = the tag must not exist).
    async fn set_tag(&self, update: TagUpdate) -> Result<Tag>;
    async fn get_tag(&self, owner: &str, name: &str) -> Result<Option<Tag>>;
    async fn list_tags(&self, owner: &str) -> Result<Vec<Tag>>;
    /// Every version the tag pointed at, oldest first (`seq` 0 is the original).
    async fn tag_history(&self, owner: &str, name: &str) -> Result<Vec<TagVersion>>;
    async fn delete_tag(&self, owner: &str, name: &str) -> Result<bool>;

    /// Writes run creations, states and events atomically (one transaction for the batch).
    /// A write with a [`Fence`] is checked against the shard's current lease inside the
    /// transaction: if any fence is stale, the whole batch fails with `Fenced`.
    async fn commit(&self, writes: Vec<RunWrite>) -> Result<()>;
    /// Writes each [`RunWrite`] atomically on its own and returns one result per write,
    /// in order: a write that fails (a conflict, a stale fence, a constraint) leaves the
    /// others of the batch written. This is the group commit of the engine loop, where
    /// each write is one run's transition and one bad run must not fail its neighbours.
    ///
    /// The default commits the batch as one (no isolation); backends override it.
    async fn commit_each(&self, writes: Vec<RunWrite>) -> Vec<Result<()>> {
        let n = writes.len();
        match self.commit(writes).await {
            Ok(()) => (0..n).map(|_| Ok(())).collect(),
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }
    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>>;
    async fn list_runs(&self, filter: RunFilter) -> Result<Vec<RunSummary>>;
    /// Ids of runs that are not terminal: what recovery resumes.
    async fn active_runs(&self) -> Result<Vec<String>>;
    /// A run's events with `seq > after`, in order.
    async fn events(&self, run_id: &str, after: u64, limit: usize) -> Result<Vec<StoredEvent>>;
    /// Events of every run of `owner`, ordered by a global position greater than `after`.
    async fn owner_events(&self, owner: &str, after: i64, limit: usize) -> Result<Vec<(i64, StoredEvent)>>;
    /// Finds a run created with this idempotency key by this owner.
    async fn run_by_idempotency_key(&self, owner: &str, key: &str) -> Result<Option<String>>;

    /// Records that `owner` may read the blob (blobs are shared by content, access is not).
    async fn grant_blob(&self, hash: &str, owner: &str) -> Result<()>;
    async fn blob_granted(&self, hash: &str, owner: &str) -> Result<bool>;

    /// Approvals of `owner`'s runs, newest first, optionally of one status.
    async fn list_approvals(&self, owner: &str, status: Option<&str>, limit: usize) -> Result<Vec<Approval>>;
    async fn get_approval(&self, id: &str) -> Result<Option<Approval>>;

    /// A run's patches in seq order.
    async fn list_patches(&self, run_id: &str) -> Result<Vec<PatchRecord>>;
    async fn get_patch(&self, run_id: &str, seq: u64) -> Result<Option<PatchRecord>>;

    /// API keys: stored by id with the hash of the secret, never the secret.
    async fn put_key(&self, key: ApiKey) -> Result<()>;
    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>>;
    /// Keys of one tenant, or of every tenant with `None`.
    async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>>;
    /// Returns false when the key does not exist or was already revoked.
    async fn revoke_key(&self, id: &str, at: i64) -> Result<bool>;

    /// Claims `(rec.tenant, rec.key)` for a new request, atomically. Returns `None` when
    /// claimed (`rec` is stored, in progress), or the record that holds the key: a
    /// completed one created at or after `completed_since`, or one still in progress
    /// created at or after `pending_since`. Older records are replaced.
    async fn claim_idempotency(&self, rec: IdempotencyRecord, completed_since: i64, pending_since: i64) -> Result<Option<IdempotencyRecord>>;
    /// Stores the answer of a claim made with `claim` (matched on tenant, key and `created_at`).
    async fn complete_idempotency(&self, claim: &IdempotencyRecord, status: u16, response: Vec<u8>) -> Result<()>;
    /// Drops a claim that is still in progress (its request had no answer worth replaying).
    async fn release_idempotency(&self, claim: &IdempotencyRecord) -> Result<()>;
    /// Deletes records created before `before`; returns how many.
    async fn purge_idempotency(&self, before: i64) -> Result<u64>;

    /// Claims or renews `owner`'s leases on `shards` until `now + ttl_ms`: each shard
    /// that has no lease, whose lease expired (`expires_at <= now`), or that `owner`
    /// already holds. A renewal keeps the epoch; a takeover from another owner (or a
    /// first claim) moves it up by one. Returns the leases `owner` holds among `shards`
    /// after the call, in shard order.
    async fn claim_shards(&self, owner: &str, shards: &[u32], now: i64, ttl_ms: i64) -> Result<Vec<ShardLease>>;
    /// Gives up `owner`'s leases on `shards`: they expire at once, the epoch stays (the
    /// next owner's claim moves it up). Shards `owner` does not hold are left alone.
    async fn release_shards(&self, owner: &str, shards: &[u32]) -> Result<()>;
    /// Every shard lease, in shard order.
    async fn shard_leases(&self) -> Result<Vec<ShardLease>>;
    /// Records that a process is alive (insert or update by id).
    async fn heartbeat(&self, member: Member) -> Result<()>;
    /// Processes whose last heartbeat is at or after `since`, by id.
    async fn members(&self, since: i64) -> Result<Vec<Member>>;
    /// Forgets a process (graceful shutdown).
    async fn leave(&self, id: &str) -> Result<()>;
}
