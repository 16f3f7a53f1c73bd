use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A workflow definition as written by a user. Unknown top-level fields are kept
/// out of the canonical form on purpose: only what the engine reads is hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Workflow {
    /// Display name. Seed files put it under `metadata.name`; see [`Workflow::display_name`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the run inputs (informational and validated at run start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Value>,
    /// What the run returns: an object whose values may be references. Defaults to the
    /// outputs of the sink nodes, keyed by node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub edges: Vec<Edge>,
    /// Seed-format metadata (`name`, `description`, `version`, `tags`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Node {
    pub id: String,
    /// The node type; kept as a string so that validation can report unknown types.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub config: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Upper bound for each attempt, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Join>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// CEL over `output`, `inputs`, `nodes`; the seed's `$.x` means `output.x`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Which outcome of `from` this edge follows.
    #[serde(default, skip_serializing_if = "EdgeOn::is_success")]
    pub on: EdgeOn,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EdgeOn {
    /// Taken when `from` completes (and the condition holds).
    #[default]
    Success,
    /// Taken when `from` fails after its last attempt; the failure is then handled.
    Failure,
    /// Taken in both cases.
    Always,
}

impl EdgeOn {
    fn is_success(&self) -> bool {
        *self == EdgeOn::Success
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Join {
    /// Ready when every incoming edge is resolved and at least one was taken.
    #[default]
    All,
    /// Ready on the first taken incoming edge.
    Any,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Fail,
    /// The node is recorded as failed but its success edges still fire, with the error as output.
    Continue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RetryPolicy {
    /// Total attempts including the first (1..=100).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "default_multiplier")]
    pub backoff_multiplier: f64,
    /// Cap on a single delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    1000
}
fn default_multiplier() -> f64 {
    2.0
}

/// Every node type the engine executes. Parsing a kind is total: unknown strings map to `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Noop,
    Http,
    Agent,
    Hitl,
    Transform,
    Conditional,
    Loop,
    Map,
    Subworkflow,
    Wait,
    Aggregate,
}

impl NodeKind {
    pub const NAMES: [&'static str; 13] = [
        "noop",
        "function",
        "parallel",
        "http",
        "agent",
        "hitl",
        "transform",
        "conditional",
        "loop",
        "map",
        "subworkflow",
        "wait",
        "aggregate",
    ];

    pub fn parse(s: &str) -> Option<NodeKind> {
        Some(match s {
            // `function` and `parallel` are seed names for a passthrough step.
            "noop" | "function" | "parallel" => NodeKind::Noop,
            "http" => NodeKind::Http,
            "agent" => NodeKind::Agent,
            "hitl" => NodeKind::Hitl,
            "transform" => NodeKind::Transform,
            "conditional" => NodeKind::Conditional,
            "loop" => NodeKind::Loop,
            "map" => NodeKind::Map,
            "subworkflow" => NodeKind::Subworkflow,
            "wait" => NodeKind::Wait,
            "aggregate" => NodeKind::Aggregate,
            _ => return None,
        })
    }

    /// Control nodes are evaluated by the engine itself inside a transition: they have no
    /// effect, so they need no dispatch and no commit of their own.
    pub fn is_inline(self) -> bool {
        matches!(self, NodeKind::Noop | NodeKind::Conditional | NodeKind::Loop | NodeKind::Aggregate)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("the document is nested {0} levels deep; the limit is {max}", max = aob_limits::MAX_JSON_DEPTH)]
    TooDeep(usize),
}

impl Workflow {
    /// Parses JSON, or YAML when the text does not start like JSON.
    pub fn parse(text: &str) -> Result<Workflow, ParseError> {
        // Flow collections (`[[[…`) nest the YAML loader as deep as they go: measured first.
        let depth = aob_limits::depth_of_text(text.as_bytes());
        if depth > aob_limits::MAX_JSON_DEPTH {
            return Err(ParseError::TooDeep(depth));
        }
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            Ok(serde_json::from_str(text)?)
        } else {
            Ok(serde_yaml_ng::from_str(text)?)
        }
    }

    pub fn from_value(value: Value) -> Result<Workflow, ParseError> {
        Ok(serde_json::from_value(value)?)
    }

    pub fn display_name(&self) -> Option<&str> {
        self.name
            .as_deref()
            .or_else(|| self.metadata.as_ref().and_then(|m| m.get("name")).and_then(Value::as_str))
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn agent_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.kind == "agent").count()
    }
}

impl Node {
    pub fn kind(&self) -> Option<NodeKind> {
        NodeKind::parse(&self.kind)
    }

    pub fn join(&self) -> Join {
        self.join.unwrap_or_default()
    }

    pub fn on_error(&self) -> OnError {
        self.on_error.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seed_format_json_and_yaml() {
        let json = r#"{"metadata":{"name":"seed"},"nodes":[{"id":"a","type":"function"}],"edges":[]}"#;
        let wf = Workflow::parse(json).unwrap();
        assert_eq!(wf.display_name(), Some("seed"));
        assert_eq!(wf.nodes[0].kind(), Some(NodeKind::Noop));
        let yaml = "name: y\nnodes:\n  - id: a\n    type: http\n    config: {url: 'https://x'}\nedges: []\n";
        let wf = Workflow::parse(yaml).unwrap();
        assert_eq!(wf.nodes[0].kind(), Some(NodeKind::Http));
    }

    #[test]
    fn deeply_nested_text_is_refused_before_parsing() {
        let yaml = format!("nodes: {}", "[".repeat(60_000));
        assert!(matches!(Workflow::parse(&yaml), Err(ParseError::TooDeep(60_000))));
        let json = format!(r#"{{"nodes": {}}}"#, "[".repeat(60_000));
        assert!(matches!(Workflow::parse(&json), Err(ParseError::TooDeep(_))));
    }
}
