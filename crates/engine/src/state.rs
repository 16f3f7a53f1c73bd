use serde::{Deserialize, Serialize};
use serde_json::Value;

use aob_model::NodeKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Queued,
    Running,
    WaitingForApproval,
    Paused,
    Completed,
    Failed,
    Cancelled,
    Timeout,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled | RunStatus::Timeout)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "QUEUED",
            RunStatus::Running => "RUNNING",
            RunStatus::WaitingForApproval => "WAITING_FOR_APPROVAL",
            RunStatus::Paused => "PAUSED",
            RunStatus::Completed => "COMPLETED",
            RunStatus::Failed => "FAILED",
            RunStatus::Cancelled => "CANCELLED",
            RunStatus::Timeout => "TIMEOUT",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s.to_ascii_uppercase().as_str() {
            "QUEUED" => RunStatus::Queued,
            "RUNNING" => RunStatus::Running,
            "WAITING_FOR_APPROVAL" => RunStatus::WaitingForApproval,
            "PAUSED" => RunStatus::Paused,
            "COMPLETED" => RunStatus::Completed,
            "FAILED" => RunStatus::Failed,
            "CANCELLED" => RunStatus::Cancelled,
            "TIMEOUT" => RunStatus::Timeout,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Pending,
    Ready,
    Running,
    Retrying,
    WaitingForApproval,
    Completed,
    Failed,
    Skipped,
    Cancelled,
}

impl NodeStatus {
    /// Work is still owed on this node.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            NodeStatus::Ready | NodeStatus::Running | NodeStatus::Retrying | NodeStatus::WaitingForApproval
        )
    }
    pub fn is_done(self) -> bool {
        matches!(self, NodeStatus::Completed | NodeStatus::Failed | NodeStatus::Skipped | NodeStatus::Cancelled)
    }
}

/// The state of one edge for the current activation of its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Token {
    Pending,
    Taken,
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub status: NodeStatus,
    /// Bumped each time a loop re-enters the node; part of every attempt id.
    #[serde(default)]
    pub activation: u32,
    /// Attempts started in the current activation.
    #[serde(default)]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// When a retry is due (retrying) or a wait ends (running `wait` node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<i64>,
    /// When the current attempt is declared lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// Loop nodes: body runs so far in this loop.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub iterations: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapState>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl NodeState {
    pub fn new() -> NodeState {
        NodeState {
            status: NodeStatus::Pending,
            activation: 0,
            attempt: 0,
            output: None,
            error: None,
            due_at: None,
            deadline: None,
            started_at: None,
            finished_at: None,
            iterations: 0,
            map: None,
        }
    }
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState::new()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapState {
    pub items: Vec<Value>,
    pub results: Vec<Option<Value>>,
    pub item_states: Vec<ItemState>,
    pub concurrency: u32,
    /// The resolved step config, before `$item`/`$index` are filled in.
    pub step_config: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemState {
    pub status: NodeStatus,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
}

/// Everything the engine knows about one run. Serialized as the run's durable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    pub status: RunStatus,
    pub inputs: Value,
    pub nodes: Vec<NodeState>,
    pub edges: Vec<Token>,
    /// Seq of the last event appended; the next event gets `seq + 1`.
    pub seq: u64,
    #[serde(default)]
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
    /// Seq of the last run patch (applied, pending or rejected).
    #[serde(default)]
    pub patch_seq: u64,
    #[serde(default)]
    pub settings: RunSettings,
}

/// Per-run policy chosen at start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Patches wait as `pending` until a person approves them.
    #[serde(default)]
    pub patch_review: bool,
    /// Cap on agent nodes reachable through patches (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_limit: Option<u32>,
    /// Events the run may append before it fails with `event_limit_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<u64>,
    /// Most items one of its map nodes may fan out over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_map_items: Option<u64>,
    /// Inline node steps per transition before the run yields (continues in a later one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_steps: Option<u64>,
}

impl RunSettings {
    /// The quotas of `limits` that the engine enforces on a run.
    pub fn with_limits(mut self, limits: &aob_limits::Limits) -> RunSettings {
        self.max_events = Some(limits.events_per_run);
        self.max_map_items = Some(limits.map_items as u64);
        self.inline_steps = Some(limits.inline_steps as u64);
        self
    }

    fn limits() -> aob_limits::Limits {
        aob_limits::Limits::default()
    }

    pub fn max_events(&self) -> u64 {
        self.max_events.unwrap_or_else(|| Self::limits().events_per_run)
    }

    pub fn max_map_items(&self) -> u64 {
        self.max_map_items.unwrap_or_else(|| Self::limits().map_items as u64)
    }

    pub fn inline_steps(&self) -> u64 {
        self.inline_steps.unwrap_or_else(|| Self::limits().inline_steps as u64)
    }
}

impl RunState {
    pub fn new(run_id: impl Into<String>, plan: &crate::Plan, inputs: Value, now: i64) -> RunState {
        RunState {
            run_id: run_id.into(),
            status: RunStatus::Queued,
            inputs,
            nodes: vec![NodeState::new(); plan.nodes.len()],
            edges: vec![Token::Pending; plan.edges.len()],
            seq: 0,
            paused: false,
            error: None,
            outputs: None,
            created_at: now,
            started_at: None,
            completed_at: None,
            patch_seq: 0,
            settings: RunSettings::default(),
        }
    }

    /// The earliest time at which `Input::Tick` has something to do.
    pub fn next_wake(&self) -> Option<i64> {
        if self.status.is_terminal() {
            return None;
        }
        let mut best: Option<i64> = None;
        let mut see = |t: Option<i64>| {
            if let Some(t) = t {
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        };
        for n in &self.nodes {
            if n.status.is_active() {
                see(n.due_at);
                see(n.deadline);
            }
            if let Some(m) = &n.map
                && n.status == NodeStatus::Running
            {
                for it in &m.item_states {
                    see(it.due_at);
                    see(it.deadline);
                }
            }
        }
        best
    }

    /// True when a dispatched task of this run may still report back.
    pub fn has_tasks_in_flight(&self, plan: &crate::Plan) -> bool {
        self.nodes.iter().enumerate().any(|(i, n)| {
            n.status == NodeStatus::Running
                && match plan.nodes[i].kind {
                    NodeKind::Wait => false,
                    NodeKind::Map => n.map.as_ref().is_some_and(|m| m.item_states.iter().any(|s| s.status == NodeStatus::Running)),
                    _ => true,
                }
        })
    }
}

/// Identifies one attempt: `node` is the node's index in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskId {
    pub node: u32,
    pub activation: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    pub attempt: u32,
}

impl TaskId {
    /// Stable text form used for idempotency keys and dispatch ids.
    pub fn key(&self, run_id: &str) -> String {
        match self.item {
            Some(i) => format!("{run_id}:{}:{}:{i}:{}", self.node, self.activation, self.attempt),
            None => format!("{run_id}:{}:{}:{}", self.node, self.activation, self.attempt),
        }
    }
}

/// A unit of work for an executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub run_id: String,
    pub id: TaskId,
    pub node_id: String,
    pub kind: NodeKind,
    /// Config with every reference resolved.
    pub config: Value,
    /// The node's input: its single predecessor's output, an object of them, or the run inputs.
    pub input: Value,
    pub timeout_ms: Option<u64>,
    /// The run's tenant, set by the runtime when it dispatches (workers share their
    /// slots fairly between tenants); the engine leaves it empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

impl Task {
    pub fn idempotency_key(&self) -> String {
        self.id.key(&self.run_id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

impl TaskError {
    pub fn new(code: impl Into<String>, message: impl Into<String>, retryable: bool) -> TaskError {
        TaskError {
            code: code.into(),
            message: message.into(),
            retryable,
        }
    }
    pub fn to_value(&self) -> Value {
        serde_json::json!({"code": self.code, "message": self.message})
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Value),
    Err(TaskError),
}

/// One appended record of the run's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub kind: String,
    pub node_id: Option<String>,
    pub attempt: Option<u32>,
    pub at: i64,
    pub data: Value,
}
