//! Every quota aob enforces on what users send and what their workflows do, in one place.
//!
//! [`Limits`] is plain configuration (`[limits]` in `aob.toml`, `AOB_LIMITS__*`), loaded
//! once by the server and passed down; every parser and evaluator that sees user data
//! checks its part *before* it starts work. Three helpers make the checks cheap and safe:
//!
//! - [`depth_of_text`] measures the nesting of JSON text without parsing it, so a body
//!   nested a million deep is refused before any recursive parser sees it;
//! - [`depth_of`] and [`check_value`] measure a parsed value iteratively (no recursion,
//!   so they cannot overflow on what they are meant to refuse);
//! - [`deep`] runs a closure on a thread whose stack is sized for the limits, for the
//!   third-party parsers (CEL, jq) whose recursion depth follows their input.
//!
//! ```
//! use aob_limits::{Limits, depth_of_text};
//! let limits = Limits::default();
//! assert_eq!(depth_of_text(br#"{"a": [1, {"b": "[[["}]}"#), 3);
//! assert!(limits.check_text(&"[".repeat(10_000).into_bytes()).is_err());
//! ```
//!
//! Invariant: a value that passed [`Limits::check_value`] can be embedded a few levels
//! deep in any stored document (run state, events) and still be read back: the depth
//! cap is at most [`MAX_JSON_DEPTH`], well under serde_json's reader limit of 128.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The highest `json_depth` a configuration may set. Stored documents wrap user values
/// in up to ~10 more levels (state → nodes → output), and serde_json refuses to read
/// anything nested deeper than 128.
pub const MAX_JSON_DEPTH: usize = 100;

/// Stack of the threads [`deep`] starts: room for the deepest recursion the limits allow
/// in the CEL and jq parsers, with a wide margin (measured: a 4 KiB CEL chain needs
/// well under 8 MiB in debug builds). Only touched pages are ever backed by memory.
pub const DEEP_STACK_BYTES: usize = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Stable code `too_deep`.
    #[error("{what} is nested {depth} levels deep; the limit is {limit}")]
    TooDeep { what: String, depth: usize, limit: usize },
    /// Stable code `too_large`.
    #[error("{what} is {size} {unit}; the limit is {limit}")]
    TooLarge { what: String, size: u64, limit: u64, unit: &'static str },
    /// Stable code `too_costly`: an evaluation would exceed its work budget.
    #[error("{what} would cost about {cost} steps; the limit is {limit}")]
    TooCostly { what: String, cost: u64, limit: u64 },
    /// Stable code `evaluation_aborted`: the evaluator thread could not start, or panicked.
    #[error("{0}")]
    Aborted(String),
}

impl LimitError {
    /// The stable error code for APIs and failed attempts.
    pub fn code(&self) -> &'static str {
        match self {
            LimitError::TooDeep { .. } => "too_deep",
            LimitError::TooLarge { .. } => "too_large",
            LimitError::TooCostly { .. } => "too_costly",
            LimitError::Aborted(_) => "evaluation_aborted",
        }
    }

    pub fn too_large(what: impl Into<String>, size: usize, limit: usize, unit: &'static str) -> LimitError {
        LimitError::TooLarge {
            what: what.into(),
            size: size as u64,
            limit: limit as u64,
            unit,
        }
    }
}

/// Quotas. Every field has a default that suits a shared server; see the "Limits and
/// quotas" section of OPERATIONS.md for what each one bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Deepest nesting of any JSON/YAML value a user sends or a node produces (≤ 100).
    pub json_depth: usize,
    /// Largest workflow definition, bytes of canonical JSON.
    pub workflow_bytes: usize,
    pub workflow_nodes: usize,
    pub workflow_edges: usize,
    /// Inline child workflows (`subworkflow.workflow`) nested in one definition.
    pub subworkflow_nesting: usize,
    /// Longest CEL condition, bytes.
    pub expression_bytes: usize,
    /// Deepest CEL expression (brackets and operator nesting).
    pub expression_depth: usize,
    /// CEL comprehensions (`all`, `exists`, `map`, `filter`) nested in one another.
    pub cel_comprehension_depth: usize,
    /// Work budget of one CEL evaluation, estimated from the data before it starts.
    pub cel_cost: u64,
    /// Longest jq filter, bytes.
    pub jq_bytes: usize,
    /// Deepest bracket nesting of a jq filter.
    pub jq_depth: usize,
    /// Wall-clock cap of one jq program; the program is stopped (its process killed).
    pub jq_timeout_ms: u64,
    /// Address space of the process a jq program runs in, bytes.
    pub jq_memory_bytes: u64,
    /// Highest `max_iterations` a loop node may declare.
    pub loop_iterations: u32,
    /// Inline node steps (noop, conditional, loop) in one engine transition; a run that
    /// needs more continues in a later transition, so other runs get their turn.
    pub inline_steps: usize,
    /// Most items one map node fans out over.
    pub map_items: usize,
    /// Highest `concurrency` a map node may declare.
    pub map_concurrency: u32,
    /// Operations in one run or tag patch.
    pub patch_operations: usize,
    /// Upper bound for an http node's `max_response_bytes` (and its default cap).
    pub response_bytes: usize,
    /// Largest output one attempt may produce, bytes of JSON.
    pub output_bytes: usize,
    /// Events one run may append; a run that reaches it fails with `event_limit_exceeded`.
    pub events_per_run: u64,
    /// Largest response remembered for an idempotency key (larger ones are not replayed).
    pub idempotency_response_bytes: usize,
    /// Validation issues listed in one report (the count of the rest is given).
    pub validation_issues: usize,
    /// Compiled plans kept in memory, by the size of their definitions.
    pub plan_cache_bytes: usize,
    /// Share of this process's worker slots one tenant's attempts may hold at once
    /// (percent, 1..=100), so one tenant's slow attempts cannot starve the others.
    pub tenant_share_percent: u32,
    /// Per-tenant overrides.
    pub tenants: BTreeMap<String, TenantLimits>,
}

/// What a tenant may have that differs from the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantLimits {
    pub loop_iterations: Option<u32>,
    pub map_items: Option<usize>,
    pub events_per_run: Option<u64>,
    pub workflow_nodes: Option<usize>,
    pub tenant_share_percent: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            json_depth: 64,
            workflow_bytes: 1 << 20,
            workflow_nodes: 1_000,
            workflow_edges: 5_000,
            subworkflow_nesting: 8,
            expression_bytes: 4_096,
            expression_depth: 32,
            cel_comprehension_depth: 2,
            cel_cost: 1_000_000,
            jq_bytes: 16 << 10,
            jq_depth: 64,
            jq_timeout_ms: 10_000,
            jq_memory_bytes: 1 << 30,
            loop_iterations: 10_000,
            inline_steps: 1_000,
            map_items: 10_000,
            map_concurrency: 256,
            patch_operations: 100,
            response_bytes: 10 << 20,
            output_bytes: 16 << 20,
            events_per_run: 100_000,
            idempotency_response_bytes: 1 << 20,
            validation_issues: 100,
            plan_cache_bytes: 64 << 20,
            tenant_share_percent: 75,
            tenants: BTreeMap::new(),
        }
    }
}

impl Limits {
    /// Checks the configuration itself: every limit positive and within what the code
    /// can honour.
    pub fn validate(&self) -> Result<(), String> {
        if self.json_depth == 0 || self.json_depth > MAX_JSON_DEPTH {
            return Err(format!("limits.json_depth must be 1..={MAX_JSON_DEPTH}"));
        }
        if self.expression_depth == 0 || self.expression_depth > 256 {
            return Err("limits.expression_depth must be 1..=256".into());
        }
        if self.expression_bytes > 1 << 20 || self.jq_bytes > 1 << 20 {
            return Err("limits.expression_bytes and limits.jq_bytes must be at most 1 MiB".into());
        }
        if self.jq_depth == 0 || self.jq_depth > 1_000 {
            return Err("limits.jq_depth must be 1..=1000".into());
        }
        let share_ok = |p: u32| (1..=100).contains(&p);
        if !share_ok(self.tenant_share_percent) || self.tenants.values().any(|t| t.tenant_share_percent.is_some_and(|p| !share_ok(p))) {
            return Err("tenant_share_percent must be 1..=100".into());
        }
        let zero = [
            ("workflow_bytes", self.workflow_bytes == 0),
            ("workflow_nodes", self.workflow_nodes == 0),
            ("inline_steps", self.inline_steps == 0),
            ("loop_iterations", self.loop_iterations == 0),
            ("map_items", self.map_items == 0),
            ("map_concurrency", self.map_concurrency == 0),
            ("patch_operations", self.patch_operations == 0),
            ("events_per_run", self.events_per_run < 100),
            ("validation_issues", self.validation_issues == 0),
            ("jq_timeout_ms", self.jq_timeout_ms == 0),
        ];
        match zero.iter().find(|(_, bad)| *bad) {
            Some((name, _)) => Err(format!("limits.{name} is too small")),
            None => Ok(()),
        }
    }

    /// The limits that apply to `tenant`: the defaults with its overrides.
    pub fn for_tenant(&self, tenant: &str) -> Limits {
        let mut out = self.clone();
        out.tenants = BTreeMap::new();
        if let Some(t) = self.tenants.get(tenant) {
            out.loop_iterations = t.loop_iterations.unwrap_or(out.loop_iterations);
            out.map_items = t.map_items.unwrap_or(out.map_items);
            out.events_per_run = t.events_per_run.unwrap_or(out.events_per_run);
            out.workflow_nodes = t.workflow_nodes.unwrap_or(out.workflow_nodes);
            out.tenant_share_percent = t.tenant_share_percent.unwrap_or(out.tenant_share_percent);
        }
        out
    }

    /// The largest quota any tenant has: what a stored workflow may have been validated
    /// against, so what the engine accepts when it compiles one again.
    pub fn widest(&self) -> Limits {
        let mut out = self.clone();
        for t in self.tenants.values() {
            out.loop_iterations = out.loop_iterations.max(t.loop_iterations.unwrap_or(0));
            out.map_items = out.map_items.max(t.map_items.unwrap_or(0));
            out.events_per_run = out.events_per_run.max(t.events_per_run.unwrap_or(0));
            out.workflow_nodes = out.workflow_nodes.max(t.workflow_nodes.unwrap_or(0));
        }
        out.tenants = BTreeMap::new();
        out
    }

    /// Refuses JSON text nested deeper than `json_depth`, before anything parses it.
    pub fn check_text(&self, text: &[u8]) -> Result<(), LimitError> {
        let depth = depth_of_text(text);
        if depth > self.json_depth {
            return Err(LimitError::TooDeep {
                what: "the JSON document".into(),
                depth,
                limit: self.json_depth,
            });
        }
        Ok(())
    }

    /// Refuses a value nested deeper than `json_depth`.
    pub fn check_value(&self, what: &str, value: &Value) -> Result<(), LimitError> {
        check_value(what, value, self.json_depth)
    }
}

/// Nesting depth of JSON text (`[` and `{` outside strings), without parsing it. Garbage
/// in gives a number, never an error: the parser that runs after reports the syntax.
pub fn depth_of_text(text: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Nesting depth of a value: 0 for a scalar, 1 for `[]` or `[1]`, … Iterative.
pub fn depth_of(value: &Value) -> usize {
    let mut max = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Object(map) => {
                max = max.max(d + 1);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// Refuses `value` when it is nested deeper than `limit`; stops looking as soon as it is.
pub fn check_value(what: &str, value: &Value, limit: usize) -> Result<(), LimitError> {
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if d + 1 > limit {
            return Err(LimitError::TooDeep {
                what: what.to_string(),
                depth: d + 1,
                limit,
            });
        }
        stack.extend(children.map(|c| (c, d + 1)));
    }
    Ok(())
}

/// Drops a value of any depth without recursing: serde_json's own drop recurses once
/// per level, so a value a million levels deep would overflow the stack just by being
/// freed. Values that passed [`check_value`] never need this.
pub fn drop_deep(value: Value) {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// Runs `f` on a thread with a [`DEEP_STACK_BYTES`] stack and waits for it. Parsers whose
/// recursion follows their input (bounded beforehand by the limits) run here, so they
/// cannot overflow the caller's stack; a panic in them becomes an error, never an abort
/// of the process.
pub fn deep<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R, LimitError> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("aob-deep".into())
            .stack_size(DEEP_STACK_BYTES)
            .spawn_scoped(scope, f)
            .map_err(|e| LimitError::Aborted(format!("cannot start an evaluator thread: {e}")))?;
        handle
            .join()
            .map_err(|_| LimitError::Aborted("the evaluator stopped on an internal error".into()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_depth_ignores_brackets_in_strings() {
        assert_eq!(depth_of_text(b"1"), 0);
        assert_eq!(depth_of_text(b"[[]]"), 2);
        assert_eq!(depth_of_text(br#"["[[[[", {"a\"[": {}}]"#), 3);
        assert_eq!(depth_of_text(b"]]]][[").min(2), 2);
    }

    #[test]
    fn value_depth_is_iterative_and_exact() {
        assert_eq!(depth_of(&json!(1)), 0);
        assert_eq!(depth_of(&json!({"a": [1, {"b": []}]})), 4);
        let mut v = json!(0);
        for _ in 0..200_000 {
            v = Value::Array(vec![v]);
        }
        assert_eq!(depth_of(&v), 200_000);
        assert_eq!(check_value("x", &v, 64).map_err(|e| e.code()), Err("too_deep"));
        drop_deep(v);
        assert!(check_value("x", &json!({"a": {"b": 1}}), 2).is_ok());
        assert!(check_value("x", &json!({"a": {"b": {}}}), 2).is_err());
    }

    #[test]
    fn deep_turns_panics_into_errors() {
        assert_eq!(deep(|| 41 + 1), Ok(42));
        let r: Result<(), _> = deep(|| panic!("boom"));
        assert_eq!(r.map_err(|e| e.code()), Err("evaluation_aborted"));
    }

    #[test]
    fn config_is_checked_and_tenants_override() {
        assert!(Limits::default().validate().is_ok());
        let mut l = Limits {
            json_depth: 500,
            ..Limits::default()
        };
        assert!(l.validate().is_err());
        l.json_depth = 64;
        l.tenants.insert(
            "big".into(),
            TenantLimits {
                loop_iterations: Some(50_000),
                ..Default::default()
            },
        );
        assert_eq!(l.for_tenant("big").loop_iterations, 50_000);
        assert_eq!(l.for_tenant("other").loop_iterations, 10_000);
    }
}
