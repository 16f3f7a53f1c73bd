//! What callers ask of the engine loop about one run ([`Call`]) and what it answers
//! ([`Answer`]). Both are plain data, so a call can cross processes unchanged (the
//! scale-out mode forwards it to the run's owner) and its answer can come back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use aob_engine::{Decision, RunSettings, RunState};
use aob_store::PatchRecord;

use crate::RuntimeError;

/// A run patch as submitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchRequest {
    pub operations: Vec<Value>,
    pub description: String,
    pub node_id: Option<String>,
    pub by: String,
    /// Set by the handle: the workflow the operations make, materialized and validated
    /// before the request reached the engine loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<Prepared>,
}

/// A patch materialized off the engine loop: valid while the run is still on `base`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepared {
    pub base: String,
    pub result: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub(crate) enum Call {
    /// The plan travels by hash: it is stored (and cached) before the start is sent.
    Start {
        run_id: String,
        owner: String,
        plan_hash: String,
        inputs: Value,
        tag: Option<String>,
        parent_run_id: Option<String>,
        idempotency_key: Option<String>,
        settings: RunSettings,
    },
    Cancel {
        run_id: String,
        reason: String,
    },
    Pause {
        run_id: String,
    },
    Resume {
        run_id: String,
    },
    /// A decision on a waiting `hitl` node.
    Decide {
        run_id: String,
        node_id: String,
        activation: u32,
        decision: Decision,
    },
    Patch {
        run_id: String,
        request: PatchRequest,
    },
    /// Review of a pending patch.
    PatchDecision {
        run_id: String,
        seq: u64,
        approve: bool,
        by: String,
        reason: Option<String>,
    },
    /// Re-run a node of a finished run, with an optional config override.
    Replay {
        run_id: String,
        node_id: String,
        config: Option<Value>,
        by: String,
        reason: String,
    },
}

impl Call {
    pub(crate) fn run_id(&self) -> &str {
        match self {
            Call::Start { run_id, .. }
            | Call::Cancel { run_id, .. }
            | Call::Pause { run_id }
            | Call::Resume { run_id }
            | Call::Decide { run_id, .. }
            | Call::Patch { run_id, .. }
            | Call::PatchDecision { run_id, .. }
            | Call::Replay { run_id, .. } => run_id,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Answer {
    State(Box<RunState>),
    /// Whether the input changed the run (a decision on a node no longer waiting does not).
    Applied(bool),
    Patch(Box<PatchRecord>),
}

impl Answer {
    pub(crate) fn state(self) -> Result<RunState, RuntimeError> {
        match self {
            Answer::State(s) => Ok(*s),
            other => Err(RuntimeError::Invalid(format!("unexpected answer {other:?}"))),
        }
    }

    pub(crate) fn applied(self) -> Result<bool, RuntimeError> {
        match self {
            Answer::Applied(b) => Ok(b),
            other => Err(RuntimeError::Invalid(format!("unexpected answer {other:?}"))),
        }
    }

    pub(crate) fn patch(self) -> Result<PatchRecord, RuntimeError> {
        match self {
            Answer::Patch(p) => Ok(*p),
            other => Err(RuntimeError::Invalid(format!("unexpected answer {other:?}"))),
        }
    }
}

/// A [`RuntimeError`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireError {
    kind: String,
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    issues: Vec<Value>,
}

impl From<&RuntimeError> for WireError {
    fn from(e: &RuntimeError) -> WireError {
        let (kind, message) = match e {
            RuntimeError::Store(aob_store::StoreError::Unavailable(m)) => ("unavailable", m.clone()),
            RuntimeError::Store(aob_store::StoreError::Conflict(m)) => ("conflict", m.clone()),
            RuntimeError::Store(aob_store::StoreError::NotFound(m)) => ("not_found", m.clone()),
            RuntimeError::Store(aob_store::StoreError::Full(m)) => ("storage_full", m.clone()),
            RuntimeError::Store(other) => ("store", other.to_string()),
            RuntimeError::NotFound(m) => ("not_found", m.clone()),
            RuntimeError::Invalid(m) => ("invalid", m.clone()),
            RuntimeError::Conflict(m) => ("conflict", m.clone()),
            RuntimeError::Stopped => ("stopped", String::new()),
            RuntimeError::NotOwner(m) => ("not_owner", m.clone()),
            RuntimeError::Unavailable(m) => ("unavailable", m.clone()),
            RuntimeError::Rejected { code, issues } => {
                return WireError {
                    kind: "rejected".into(),
                    message: String::new(),
                    code: Some((*code).to_string()),
                    issues: issues.clone(),
                };
            }
        };
        WireError {
            kind: kind.into(),
            message,
            code: None,
            issues: vec![],
        }
    }
}

impl From<WireError> for RuntimeError {
    fn from(w: WireError) -> RuntimeError {
        match w.kind.as_str() {
            "not_found" => RuntimeError::NotFound(w.message),
            "invalid" => RuntimeError::Invalid(w.message),
            "conflict" => RuntimeError::Conflict(w.message),
            "stopped" => RuntimeError::Stopped,
            "not_owner" => RuntimeError::NotOwner(w.message),
            "unavailable" => RuntimeError::Unavailable(w.message),
            "storage_full" => RuntimeError::Store(aob_store::StoreError::Full(w.message)),
            "rejected" => RuntimeError::Rejected {
                code: rejection_code(w.code.as_deref().unwrap_or_default()),
                issues: w.issues,
            },
            _ => RuntimeError::Store(aob_store::StoreError::Backend(w.message)),
        }
    }
}

/// The codes a refusal can carry (see the engine loop's patch and replay paths).
fn rejection_code(code: &str) -> &'static str {
    match code {
        "validation_failed" => "validation_failed",
        "invalid_patch" => "invalid_patch",
        "agent_limit_exceeded" => "agent_limit_exceeded",
        _ => "patch_rejected",
    }
}

/// Issues as they are served: `{pointer, code, message, severity}`.
pub(crate) fn issue_values(issues: Vec<aob_model::Issue>) -> Vec<Value> {
    issues.into_iter().map(|i| serde_json::to_value(i).unwrap_or(Value::Null)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_wire() {
        let cases = [
            RuntimeError::NotFound("run r".into()),
            RuntimeError::Conflict("exists".into()),
            RuntimeError::NotOwner("shard 3".into()),
            RuntimeError::Rejected {
                code: "agent_limit_exceeded",
                issues: vec![serde_json::json!({"pointer": "/nodes", "code": "agent_limit_exceeded", "message": "too many"})],
            },
        ];
        for e in cases {
            let w: WireError = serde_json::from_str(&serde_json::to_string(&WireError::from(&e)).unwrap()).unwrap();
            assert_eq!(RuntimeError::from(w).to_string(), e.to_string());
        }
    }

    #[test]
    fn calls_round_trip() {
        let c = Call::Cancel {
            run_id: "r1".into(),
            reason: "stop".into(),
        };
        let back: Call = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.run_id(), "r1");
    }
}
