//! Typed configuration of each node type. Validation deserializes `config` into these;
//! executors read the same types, so what validates is exactly what runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoopConfig {
    /// The node's output (references allowed). Without it the node passes its input through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Accepted for seed compatibility; inert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_name: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HttpConfig {
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, Value>,
    #[serde(default)]
    pub query: BTreeMap<String, Value>,
    /// JSON body (objects/arrays/numbers are sent as JSON; a string is sent as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Seed name for `body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<usize>,
    /// `true` fails the attempt on any status >= 400; a list names the statuses
    /// (numbers, or `"4xx"`/`"5xx"`). Default: statuses are data, not failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_on_status: Option<FailOnStatus>,
    #[serde(default = "default_true")]
    pub follow_redirects: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum FailOnStatus {
    All(bool),
    List(Vec<StatusMatch>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum StatusMatch {
    Code(u16),
    Class(String),
}

impl FailOnStatus {
    pub fn fails(&self, status: u16) -> bool {
        match self {
            FailOnStatus::All(b) => *b && status >= 400,
            FailOnStatus::List(list) => list.iter().any(|m| match m {
                StatusMatch::Code(c) => *c == status,
                StatusMatch::Class(c) => c.len() == 3 && c.ends_with("xx") && c.as_bytes()[0] == b'0' + (status / 100) as u8,
            }),
        }
    }
}

fn default_method() -> String {
    "GET".into()
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TransformConfig {
    /// Pipeline steps, each `{"step": <primitive>, …}`.
    #[serde(default)]
    pub pipeline: Vec<Value>,
    /// The pipeline's input (references allowed). Default: the node's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// Most times the loop body runs.
    pub max_iterations: u32,
    /// First node of the loop body.
    pub loop_back_to: String,
    /// CEL; true = run the body again. Sees the body's latest output as `output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Nodes that run when the condition turns false.
    #[serde(default)]
    pub break_path: Vec<String>,
    /// Nodes that run when `max_iterations` is reached.
    #[serde(default)]
    pub timeout_path: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    /// The list to fan out over (usually a reference).
    pub items: Value,
    /// The step run for each item; `$item` and `$index` are defined inside it.
    pub node: MapStep,
    /// Items in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
}

fn default_concurrency() -> u32 {
    8
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MapStep {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub config: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubworkflowConfig {
    /// Tag of the child workflow (resolved when the child starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Or an inline child workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Value>,
    /// Inputs of the child run (references allowed).
    #[serde(default)]
    pub inputs: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// RFC 3339 instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgentConfig {
    /// The prompt (`prompt` is accepted as the seed's alias).
    #[serde(default, alias = "prompt")]
    pub task: Option<String>,
    #[serde(default)]
    pub tools: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HitlConfig {
    /// Shown to the approver; references are rendered.
    #[serde(default)]
    pub message: String,
    /// Without a decision by then, `on_timeout` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Who may decide: user names, or `role:<role>` for everyone with that role (any
    /// user of the tenant when empty; admins always may).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// Extra data offered to the approver (references allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    Approve,
    Reject,
    /// The node fails (and the run, unless the failure is handled).
    #[default]
    Fail,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConditionalConfig {
    /// Informational (the seed UI wrote it); routing lives on the out-edges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// A parsed `config` for one node type.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeConfig {
    Noop(NoopConfig),
    Http(HttpConfig),
    Agent(AgentConfig),
    Hitl(HitlConfig),
    Transform(TransformConfig),
    Conditional(ConditionalConfig),
    Loop(LoopConfig),
    Map(MapConfig),
    Subworkflow(SubworkflowConfig),
    Wait(WaitConfig),
    Aggregate,
}

impl NodeConfig {
    /// Parses `config` for `kind`. A missing config is an empty object.
    pub fn parse(kind: crate::NodeKind, config: &Value) -> Result<NodeConfig, String> {
        use crate::NodeKind as K;
        let value = if config.is_null() {
            Value::Object(Default::default())
        } else {
            config.clone()
        };
        fn de<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| e.to_string())
        }
        Ok(match kind {
            K::Noop => NodeConfig::Noop(de(value)?),
            K::Http => NodeConfig::Http(de(value)?),
            K::Agent => NodeConfig::Agent(de(value)?),
            K::Hitl => NodeConfig::Hitl(de(value)?),
            K::Transform => NodeConfig::Transform(de(value)?),
            K::Conditional => NodeConfig::Conditional(de(value)?),
            K::Loop => NodeConfig::Loop(de(value)?),
            K::Map => NodeConfig::Map(de(value)?),
            K::Subworkflow => NodeConfig::Subworkflow(de(value)?),
            K::Wait => NodeConfig::Wait(de(value)?),
            K::Aggregate => NodeConfig::Aggregate,
        })
    }
}

/// Parses an RFC 3339 instant into unix milliseconds.
pub fn parse_instant_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}
