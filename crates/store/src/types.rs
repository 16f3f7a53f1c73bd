use serde::{Deserialize, Serialize};
use serde_json::Value;

use aob_engine::{RunState, RunStatus};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blob {
    /// `sha256:<hex>` of the canonical content.
    pub hash: String,
    /// What the blob holds, e.g. `workflow`.
    pub kind: String,
    pub content: Value,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TagUpdate {
    pub owner: String,
    pub name: String,
    pub hash: String,
    pub expected_version: Option<u64>,
    pub by: String,
    /// `create`, `move` or `patch`, recorded in the history.
    pub op: String,
    pub at: i64,
    /// Why the tag moved (a patch's description), recorded in the history.
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tag {
    pub owner: String,
    pub name: String,
    pub hash: String,
    /// Starts at 1 and grows by one on every move.
    pub version: u64,
    pub created_by: String,
    pub moved_by: String,
    pub created_at: i64,
    pub moved_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagVersion {
    /// 0 for the tag's creation; the move that made the tag's version `v` has seq `v - 1`.
    pub seq: u64,
    pub hash: String,
    pub op: String,
    pub by: String,
    pub at: i64,
    #[serde(default)]
    pub description: Option<String>,
}

/// A new run's identity, written with its first state.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub owner: String,
    pub workflow_hash: String,
    pub tag: Option<String>,
    pub parent_run_id: Option<String>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub run_id: String,
    pub seq: u64,
    pub kind: String,
    /// The event as served to clients: one-line JSON.
    pub body: String,
}

#[derive(Debug, Clone)]
pub struct RunWrite {
    pub create: Option<NewRun>,
    pub state: RunState,
    /// Serialized `state`; the caller serializes once (it is also cached in memory).
    pub state_json: String,
    pub events: Vec<StoredEvent>,
    /// Set when a patch moved the run onto another workflow version.
    pub current_hash: Option<String>,
    /// Run patches created or decided by this transition.
    pub patches: Vec<PatchRecord>,
    /// The shard lease the writer holds for this run (scale-out); `None` in embedded mode.
    pub fence: Option<Fence>,
}

/// A shard lease as written with a run: the commit is refused unless the shard's
/// epoch is still `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fence {
    pub shard: u32,
    pub epoch: u64,
}

/// Which process applies the transitions of a shard's runs, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLease {
    pub shard: u32,
    pub owner: String,
    /// Moves up by one each time the shard changes hands: the fencing token.
    pub epoch: u64,
    pub expires_at: i64,
}

/// A live `aob` process of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// Comma-separated roles, e.g. `api,engine,worker`.
    pub roles: String,
    /// The address it serves HTTP on.
    pub addr: String,
    pub started_at: i64,
    pub seen_at: i64,
}

/// The shard of a run: a stable hash (FNV-1a 64) of its id, so every process and
/// every version of the binary agrees.
pub fn shard_of(run_id: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in run_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u32
}

/// A run patch: the operations, who sent them, and what became of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchRecord {
    pub run_id: String,
    pub seq: u64,
    /// `applied`, `pending` (waiting for review) or `rejected`.
    pub status: String,
    pub author: String,
    pub description: String,
    pub node_id: Option<String>,
    pub operations: Value,
    /// The workflow the patch was checked against, and the result when applied.
    pub base_hash: String,
    pub result_hash: Option<String>,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    pub owner: String,
    pub workflow_hash: String,
    pub tag: Option<String>,
    pub parent_run_id: Option<String>,
    /// The workflow the run executes now, when patches moved it off `workflow_hash`
    /// (which stays the version the run started with).
    pub current_hash: Option<String>,
    pub state: RunState,
}

impl RunRecord {
    /// The hash of the plan the run executes now.
    pub fn plan_hash(&self) -> &str {
        self.current_hash.as_deref().unwrap_or(&self.workflow_hash)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub owner: String,
    pub workflow_hash: String,
    pub tag: Option<String>,
    /// Set for child runs of `subworkflow` nodes: listings must show which run spawned them.
    #[serde(default)]
    pub parent_run_id: Option<String>,
    pub status: RunStatus,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub owner: Option<String>,
    pub status: Option<RunStatus>,
    pub tag: Option<String>,
    /// Cursor: only runs strictly older than this `(created_at, run_id)`.
    pub before: Option<(i64, String)>,
    pub limit: usize,
}

/// Renders an engine event as the JSON served to clients and stored in the log.
pub fn event_body(run_id: &str, e: &aob_engine::Event) -> String {
    /// Borrowed view, serialized straight to text: no copy of the event's data.
    #[derive(Serialize)]
    struct Body<'a> {
        run_id: &'a str,
        seq: u64,
        #[serde(rename = "type")]
        kind: &'a str,
        timestamp: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        node_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        data: &'a Value,
    }
    // Every node event carries `attempt` (the event contract); a node that never ran
    // (e.g. `node_skipped`) is reported as attempt 0.
    let attempt = e.attempt.or(e.node_id.as_ref().map(|_| 0));
    let body = Body {
        run_id,
        seq: e.seq,
        kind: &e.kind,
        timestamp: rfc3339_ms(e.at),
        node_id: e.node_id.as_deref(),
        attempt,
        data: &e.data,
    };
    serde_json::to_string(&body).unwrap_or_default()
}

pub fn stored_events(run_id: &str, events: &[aob_engine::Event]) -> Vec<StoredEvent> {
    events
        .iter()
        .map(|e| StoredEvent {
            run_id: run_id.to_string(),
            seq: e.seq,
            kind: e.kind.clone(),
            body: event_body(run_id, e),
        })
        .collect()
}

/// Unix milliseconds as RFC 3339 with millisecond precision, UTC.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public part of the key, e.g. `k1a2b3c4`.
    pub id: String,
    pub tenant: String,
    pub user: String,
    /// `admin` or `member`.
    pub role: String,
    pub name: String,
    /// Hex sha256 of the whole key.
    pub hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A pending or decided human approval: a projection of a run's approval events,
/// written in the same transaction as the events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub run_id: String,
    pub node_id: String,
    pub activation: u32,
    pub owner: String,
    /// `pending`, `approved`, `rejected`, `timed_out` or `cancelled`.
    pub status: String,
    pub message: String,
    pub data: Value,
    pub approvers: Vec<String>,
    pub created_at: i64,
    pub timeout_at: Option<i64>,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
    pub comment: Option<String>,
    pub decision_data: Value,
}

/// The first answer to a request sent with an `Idempotency-Key`, replayed for repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub tenant: String,
    pub key: String,
    /// `METHOD path` of the first request, e.g. `POST /api/v1/runs`.
    pub request: String,
    /// Hex sha256 of the first request's body.
    pub body_hash: String,
    /// `None` while the first request is still being answered.
    pub status: Option<u16>,
    pub response: Option<Vec<u8>>,
    pub created_at: i64,
}
