//! Validation: every problem at once, each with a JSON pointer into the definition.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use aob_limits::Limits;

use crate::condition::Condition;
use crate::config::{NodeConfig, parse_instant_ms};
use crate::refs::{self, Root};
use crate::{Edge, Node, NodeKind, Workflow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub pointer: String,
    pub code: &'static str,
    pub message: String,
    pub severity: Severity,
}

impl Issue {
    pub fn error(pointer: impl Into<String>, code: &'static str, message: impl Into<String>) -> Issue {
        Issue {
            pointer: pointer.into(),
            code,
            message: message.into(),
            severity: Severity::Error,
        }
    }
    pub fn warning(pointer: impl Into<String>, code: &'static str, message: impl Into<String>) -> Issue {
        Issue {
            pointer: pointer.into(),
            code,
            message: message.into(),
            severity: Severity::Warning,
        }
    }
}

/// Longest duration a workflow may name (timeouts, retry delays, waits): 366 days.
/// Durations are added to an `i64` millisecond clock and turned into `Duration`s at
/// run time; a bound far inside both ranges means that arithmetic cannot overflow,
/// and a year and a day is longer than any timer a workflow has a use for.
pub const MAX_DURATION_MS: u64 = 366 * 24 * 60 * 60 * 1000;

/// An `invalid_config` issue at `pointer` when `ms` exceeds [`MAX_DURATION_MS`].
fn check_duration(pointer: String, ms: Option<u64>, issues: &mut Vec<Issue>) {
    if let Some(ms) = ms
        && ms > MAX_DURATION_MS
    {
        issues.push(Issue::error(
            pointer,
            "invalid_config",
            format!("{ms} ms is longer than the maximum duration of {MAX_DURATION_MS} ms (366 days)"),
        ));
    }
}

pub fn has_errors(issues: &[Issue]) -> bool {
    issues.iter().any(|i| i.severity == Severity::Error)
}

/// Parses and validates a raw document within the default [`Limits`].
pub fn parse_and_validate(doc: &Value) -> Result<(Workflow, Vec<Issue>), Vec<Issue>> {
    parse_and_validate_with(doc, &Limits::default())
}

/// Parses and validates a raw document. Structural errors carry the pointer of the
/// offending node or edge, so a broken file still gets every problem listed. The
/// document's depth and size are checked first, before anything walks it.
pub fn parse_and_validate_with(doc: &Value, limits: &Limits) -> Result<(Workflow, Vec<Issue>), Vec<Issue>> {
    if let Err(e) = limits.check_value("the workflow", doc) {
        return Err(vec![Issue::error("", e.code(), e.to_string())]);
    }
    let size = serde_json::to_vec(doc).map_or(usize::MAX, |b| b.len());
    if size > limits.workflow_bytes {
        let e = aob_limits::LimitError::too_large("the workflow", size, limits.workflow_bytes, "bytes");
        return Err(vec![Issue::error("", e.code(), e.to_string())]);
    }
    let mut issues = Vec::new();
    let Some(obj) = doc.as_object() else {
        return Err(vec![Issue::error("", "invalid_document", "a workflow must be a JSON object")]);
    };
    match obj.get("nodes") {
        Some(Value::Array(nodes)) => {
            for (i, n) in nodes.iter().enumerate() {
                if let Err(e) = serde_json::from_value::<Node>(n.clone()) {
                    issues.push(Issue::error(format!("/nodes/{i}"), "invalid_node", e.to_string()));
                }
            }
        }
        Some(_) => issues.push(Issue::error("/nodes", "invalid_document", "nodes must be an array")),
        None => issues.push(Issue::error("/nodes", "invalid_document", "nodes is required")),
    }
    match obj.get("edges") {
        Some(Value::Array(edges)) => {
            for (i, e) in edges.iter().enumerate() {
                if let Err(err) = serde_json::from_value::<Edge>(e.clone()) {
                    issues.push(Issue::error(format!("/edges/{i}"), "invalid_edge", err.to_string()));
                }
            }
        }
        Some(Value::Null) | None => {}
        Some(_) => issues.push(Issue::error("/edges", "invalid_document", "edges must be an array")),
    }
    if !issues.is_empty() {
        return Err(cap(issues, limits));
    }
    let wf = Workflow::from_value(doc.clone()).map_err(|e| vec![Issue::error("", "invalid_document", e.to_string())])?;
    let issues = validate_with(&wf, limits);
    if has_errors(&issues) {
        return Err(issues);
    }
    Ok((wf, issues))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Validates a parsed workflow within the default [`Limits`]. Warnings (unreachable
/// nodes) do not make it invalid.
pub fn validate(wf: &Workflow) -> Vec<Issue> {
    validate_with(wf, &Limits::default())
}

/// Validates a parsed workflow; the report lists at most `limits.validation_issues`
/// issues (and says how many more there were).
pub fn validate_with(wf: &Workflow, limits: &Limits) -> Vec<Issue> {
    cap(validate_at(wf, "", &Scope { limits, nesting: 0 }), limits)
}

/// What validation of one (possibly inline child) workflow knows besides the workflow.
struct Scope<'a> {
    limits: &'a Limits,
    /// How many inline child workflows enclose this one.
    nesting: usize,
}

/// Keeps a report within `limits.validation_issues`, errors first.
fn cap(mut issues: Vec<Issue>, limits: &Limits) -> Vec<Issue> {
    let max = limits.validation_issues;
    if issues.len() <= max {
        return issues;
    }
    issues.sort_by_key(|i| i.severity != Severity::Error);
    let more = issues.len() - max;
    issues.truncate(max);
    issues.push(Issue::error("", "too_many_issues", format!("{more} more issues are not listed")));
    issues
}

fn validate_at(wf: &Workflow, base: &str, scope: &Scope<'_>) -> Vec<Issue> {
    let mut issues = Vec::new();
    let limits = scope.limits;
    if wf.nodes.is_empty() {
        issues.push(Issue::error(format!("{base}/nodes"), "no_nodes", "a workflow needs at least one node"));
        return issues;
    }
    // Size first: everything below is linear or worse in the node and edge counts.
    if wf.nodes.len() > limits.workflow_nodes || wf.edges.len() > limits.workflow_edges {
        issues.push(Issue::error(
            format!("{base}/nodes"),
            "too_large",
            format!(
                "the workflow has {} nodes and {} edges; the limits are {} and {}",
                wf.nodes.len(),
                wf.edges.len(),
                limits.workflow_nodes,
                limits.workflow_edges
            ),
        ));
        return issues;
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, n) in wf.nodes.iter().enumerate() {
        let p = format!("{base}/nodes/{i}");
        if !valid_id(&n.id) {
            issues.push(Issue::error(
                format!("{p}/id"),
                "invalid_id",
                format!("node id '{}' must match ^[A-Za-z0-9_-]{{1,128}}$", n.id),
            ));
        }
        if index.insert(n.id.as_str(), i).is_some() {
            issues.push(Issue::error(format!("{p}/id"), "duplicate_id", format!("duplicate node id '{}'", n.id)));
        }
    }

    // Graph over edges plus the loop nodes' configured paths.
    let n = wf.nodes.len();
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut has_incoming = vec![false; n];
    let mut loop_back: HashSet<(usize, usize)> = HashSet::new();
    let mut configs: Vec<Option<NodeConfig>> = Vec::with_capacity(n);

    for (i, node) in wf.nodes.iter().enumerate() {
        let p = format!("{base}/nodes/{i}");
        let Some(kind) = node.kind() else {
            configs.push(None);
            issues.push(Issue::error(
                format!("{p}/type"),
                "unknown_type",
                format!("unknown node type '{}'; expected one of: {}", node.kind, NodeKind::NAMES.join(", ")),
            ));
            continue;
        };
        if let Some(r) = &node.retry {
            if r.max_attempts == 0 || r.max_attempts > 100 {
                issues.push(Issue::error(
                    format!("{p}/retry/max_attempts"),
                    "invalid_config",
                    "max_attempts must be between 1 and 100",
                ));
            }
            if !(r.backoff_multiplier >= 1.0 && r.backoff_multiplier <= 100.0) {
                issues.push(Issue::error(
                    format!("{p}/retry/backoff_multiplier"),
                    "invalid_config",
                    "backoff_multiplier must be between 1.0 and 100.0",
                ));
            }
            check_duration(format!("{p}/retry/backoff_ms"), Some(r.backoff_ms), &mut issues);
            check_duration(format!("{p}/retry/max_backoff_ms"), r.max_backoff_ms, &mut issues);
        }
        check_duration(format!("{p}/timeout_ms"), node.timeout_ms, &mut issues);
        match NodeConfig::parse(kind, &node.config) {
            Ok(cfg) => {
                check_config(&format!("{base}/nodes/{i}/config"), &cfg, &index, scope, &mut issues);
                if let NodeConfig::Loop(l) = &cfg {
                    if let Some(&t) = index.get(l.loop_back_to.as_str()) {
                        loop_back.insert((i, t));
                    }
                    for id in l.break_path.iter().chain(&l.timeout_path) {
                        if let Some(&t) = index.get(id.as_str()) {
                            succ[i].push(t);
                            has_incoming[t] = true;
                        }
                    }
                }
                configs.push(Some(cfg));
            }
            Err(e) => {
                configs.push(None);
                issues.push(Issue::error(
                    format!("{p}/config"),
                    "invalid_config",
                    format!("invalid {} config: {e}", node.kind),
                ));
            }
        }
    }

    for (j, e) in wf.edges.iter().enumerate() {
        let p = format!("{base}/edges/{j}");
        let from = index.get(e.from.as_str()).copied();
        let to = index.get(e.to.as_str()).copied();
        if from.is_none() {
            issues.push(Issue::error(
                format!("{p}/from"),
                "dangling_edge",
                format!("edge from unknown node '{}'", e.from),
            ));
        }
        if to.is_none() {
            issues.push(Issue::error(format!("{p}/to"), "dangling_edge", format!("edge to unknown node '{}'", e.to)));
        }
        if let Some(c) = &e.condition
            && let Err(msg) = Condition::compile_with(c, limits)
        {
            issues.push(Issue::error(
                format!("{p}/condition"),
                "invalid_condition",
                format!("condition does not compile: {msg}"),
            ));
        }
        if let (Some(f), Some(t)) = (from, to) {
            // An explicit edge from a loop node back to its body start is the loop itself.
            if loop_back.contains(&(f, t)) {
                continue;
            }
            succ[f].push(t);
            has_incoming[t] = true;
        }
    }

    // Cycles not declared as loops.
    find_cycles(&succ, wf, base, &mut issues);

    let entries: Vec<usize> = (0..n).filter(|&i| !has_incoming[i]).collect();
    if entries.is_empty() {
        issues.push(Issue::error(
            format!("{base}/nodes"),
            "no_entry",
            "no entry node: every node has an incoming edge",
        ));
    }

    // Reachability (warning) and ancestry (for references).
    let mut reach = vec![false; n];
    let mut stack = entries.clone();
    while let Some(v) = stack.pop() {
        if !reach[v] {
            reach[v] = true;
            stack.extend(succ[v].iter().copied());
        }
    }
    for (i, r) in reach.iter().enumerate() {
        if !r && !entries.is_empty() {
            issues.push(Issue::warning(
                format!("{base}/nodes/{i}"),
                "unreachable",
                format!("node '{}' is unreachable", wf.nodes[i].id),
            ));
        }
    }
    let mut pred: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (f, ts) in succ.iter().enumerate() {
        for &t in ts {
            pred[t].push(f);
        }
    }
    for (i, node) in wf.nodes.iter().enumerate() {
        let mut found = Vec::new();
        let mut scoped = node.config.clone();
        if node.kind() == Some(NodeKind::Subworkflow) {
            // An inline child's references are resolved in the child run, not here.
            if let Some(o) = scoped.as_object_mut() {
                o.remove("workflow");
            }
        }
        refs::collect(&scoped, &format!("{base}/nodes/{i}/config"), &mut found);
        let mut ancestors: Option<HashSet<usize>> = None;
        for (pointer, r) in found {
            match &r.root {
                Root::Node(id) => match index.get(id.as_str()) {
                    None => issues.push(Issue::error(pointer, "invalid_reference", format!("{} refers to unknown node '{id}'", r.text))),
                    Some(&t) => {
                        let anc = ancestors.get_or_insert_with(|| ancestors_of(i, &pred));
                        if !anc.contains(&t) {
                            issues.push(Issue::error(
                                pointer,
                                "invalid_reference",
                                format!("{} refers to node '{id}', which cannot have run before '{}'", r.text, node.id),
                            ));
                        }
                    }
                },
                Root::Item | Root::Index => {
                    let inside_map_step = node.kind() == Some(NodeKind::Map) && pointer.starts_with(&format!("{base}/nodes/{i}/config/node/"));
                    if !inside_map_step {
                        issues.push(Issue::error(
                            pointer,
                            "invalid_reference",
                            format!("{} is only defined inside a map node's step", r.text),
                        ));
                    }
                }
                Root::Inputs => {}
            }
        }
    }
    let _ = configs;
    issues
}

fn ancestors_of(i: usize, pred: &[Vec<usize>]) -> HashSet<usize> {
    let mut seen = HashSet::new();
    let mut stack: Vec<usize> = pred[i].clone();
    while let Some(v) = stack.pop() {
        if seen.insert(v) {
            stack.extend(pred[v].iter().copied());
        }
    }
    seen
}

/// Reports every edge that closes a cycle, by an iterative depth-first search (a chain
/// of thousands of nodes must not turn into thousands of stack frames).
fn find_cycles(succ: &[Vec<usize>], wf: &Workflow, base: &str, issues: &mut Vec<Issue>) {
    // 0 = unseen, 1 = on the current path, 2 = done.
    let mut color = vec![0u8; succ.len()];
    let mut path: Vec<usize> = Vec::new();
    for root in 0..succ.len() {
        if color[root] != 0 {
            continue;
        }
        // Each frame: a node and the index of its next successor to look at.
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        color[root] = 1;
        path.push(root);
        while let Some(&mut (v, ref mut next)) = stack.last_mut() {
            let Some(&w) = succ[v].get(*next) else {
                color[v] = 2;
                path.pop();
                stack.pop();
                continue;
            };
            *next += 1;
            match color[w] {
                1 => {
                    let start = path.iter().position(|&x| x == w).unwrap_or(0);
                    let names: Vec<&str> = path[start..].iter().map(|&x| wf.nodes[x].id.as_str()).collect();
                    let edge = wf
                        .edges
                        .iter()
                        .position(|e| e.from == wf.nodes[v].id && e.to == wf.nodes[w].id)
                        .map(|j| format!("{base}/edges/{j}"))
                        .unwrap_or_else(|| format!("{base}/nodes/{v}"));
                    issues.push(Issue::error(
                        edge,
                        "cycle",
                        format!(
                            "cycle {} → {} is not declared as a loop (use a loop node with loop_back_to)",
                            names.join(" → "),
                            wf.nodes[w].id
                        ),
                    ));
                }
                0 => {
                    color[w] = 1;
                    path.push(w);
                    stack.push((w, 0));
                }
                _ => {}
            }
        }
    }
}

/// Checks a parsed config; `p` is the JSON pointer of the config object.
fn check_config(p: &str, cfg: &NodeConfig, index: &HashMap<&str, usize>, scope: &Scope<'_>, issues: &mut Vec<Issue>) {
    let p = p.to_string();
    let limits = scope.limits;
    match cfg {
        NodeConfig::Http(h) => {
            if h.url.trim().is_empty() {
                issues.push(Issue::error(format!("{p}/url"), "invalid_config", "url is required"));
            }
            if let Some(max) = h.max_response_bytes
                && max > limits.response_bytes
            {
                issues.push(Issue::error(
                    format!("{p}/max_response_bytes"),
                    "invalid_config",
                    format!("max_response_bytes may be at most {}", limits.response_bytes),
                ));
            }
            if http_method(&h.method).is_none() {
                issues.push(Issue::error(
                    format!("{p}/method"),
                    "invalid_config",
                    format!("unsupported HTTP method '{}'", h.method),
                ));
            }
            for name in h.headers.keys().filter(|n| aob_transform::forbidden_request_header(n)) {
                issues.push(Issue::error(
                    format!("{p}/headers/{}", name.replace('~', "~0").replace('/', "~1")),
                    "invalid_config",
                    format!("header '{name}' is managed by the HTTP client and may not be set (hop-by-hop headers and Host)"),
                ));
            }
            check_duration(format!("{p}/timeout_ms"), h.timeout_ms, issues);
        }
        NodeConfig::Transform(t) => {
            for (ptr, msg) in aob_transform::validate_pipeline_with(&Value::Array(t.pipeline.clone()), limits) {
                issues.push(Issue::error(format!("{p}/pipeline{ptr}"), "invalid_config", msg));
            }
        }
        NodeConfig::Loop(l) => {
            if l.max_iterations == 0 || l.max_iterations > limits.loop_iterations {
                issues.push(Issue::error(
                    format!("{p}/max_iterations"),
                    "invalid_config",
                    format!("max_iterations must be between 1 and {}", limits.loop_iterations),
                ));
            }
            if !index.contains_key(l.loop_back_to.as_str()) {
                issues.push(Issue::error(
                    format!("{p}/loop_back_to"),
                    "invalid_config",
                    format!("loop_back_to names unknown node '{}'", l.loop_back_to),
                ));
            }
            for (field, ids) in [("break_path", &l.break_path), ("timeout_path", &l.timeout_path)] {
                for (k, id) in ids.iter().enumerate() {
                    if !index.contains_key(id.as_str()) {
                        issues.push(Issue::error(
                            format!("{p}/{field}/{k}"),
                            "invalid_config",
                            format!("{field} names unknown node '{id}'"),
                        ));
                    }
                }
            }
            if let Some(c) = &l.condition
                && let Err(msg) = Condition::compile_with(c, limits)
            {
                issues.push(Issue::error(
                    format!("{p}/condition"),
                    "invalid_condition",
                    format!("condition does not compile: {msg}"),
                ));
            }
        }
        NodeConfig::Map(m) => {
            if m.concurrency == 0 || m.concurrency > limits.map_concurrency {
                issues.push(Issue::error(
                    format!("{p}/concurrency"),
                    "invalid_config",
                    format!("concurrency must be between 1 and {}", limits.map_concurrency),
                ));
            }
            if let Value::Array(items) = &m.items
                && items.len() > limits.map_items
            {
                issues.push(Issue::error(
                    format!("{p}/items"),
                    "invalid_config",
                    format!("a map may fan out over at most {} items", limits.map_items),
                ));
            }
            match NodeKind::parse(&m.node.kind) {
                Some(k @ (NodeKind::Http | NodeKind::Transform | NodeKind::Noop | NodeKind::Subworkflow | NodeKind::Agent)) => {
                    match NodeConfig::parse(k, &m.node.config) {
                        Ok(inner) => check_config(&format!("{p}/node/config"), &inner, index, scope, issues),
                        Err(e) => issues.push(Issue::error(
                            format!("{p}/node/config"),
                            "invalid_config",
                            format!("invalid {} config: {e}", m.node.kind),
                        )),
                    }
                }
                _ => issues.push(Issue::error(
                    format!("{p}/node/type"),
                    "invalid_config",
                    format!("a map step must be one of http, transform, noop, subworkflow, agent (got '{}')", m.node.kind),
                )),
            }
        }
        NodeConfig::Subworkflow(s) => match (&s.tag, &s.workflow) {
            (Some(_), None) => {}
            (None, Some(_)) if scope.nesting >= limits.subworkflow_nesting => issues.push(Issue::error(
                format!("{p}/workflow"),
                "too_deep",
                format!("inline child workflows may nest at most {} deep", limits.subworkflow_nesting),
            )),
            (None, Some(child)) => match Workflow::from_value(child.clone()) {
                Ok(child) => {
                    let inner = Scope {
                        limits,
                        nesting: scope.nesting + 1,
                    };
                    issues.extend(validate_at(&child, &format!("{p}/workflow"), &inner));
                }
                Err(e) => issues.push(Issue::error(format!("{p}/workflow"), "invalid_config", e.to_string())),
            },
            _ => issues.push(Issue::error(p.clone(), "invalid_config", "subworkflow needs exactly one of tag or workflow")),
        },
        NodeConfig::Wait(w) => match (&w.duration_ms, &w.until) {
            (Some(ms), None) => check_duration(format!("{p}/duration_ms"), Some(*ms), issues),
            (None, Some(u)) => {
                if !u.starts_with('$') && !u.contains("${") && parse_instant_ms(u).is_none() {
                    issues.push(Issue::error(
                        format!("{p}/until"),
                        "invalid_config",
                        format!("until '{u}' is not an RFC 3339 instant"),
                    ));
                }
            }
            _ => issues.push(Issue::error(p.clone(), "invalid_config", "wait needs exactly one of duration_ms or until")),
        },
        NodeConfig::Hitl(h) => check_duration(format!("{p}/timeout_ms"), h.timeout_ms, issues),
        NodeConfig::Noop(_) | NodeConfig::Agent(_) | NodeConfig::Conditional(_) | NodeConfig::Aggregate => {}
    }
}

/// The HTTP methods an http node may use.
pub fn http_method(m: &str) -> Option<&'static str> {
    Some(match m.to_ascii_uppercase().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn codes(doc: Value) -> Vec<(&'static str, String)> {
        match parse_and_validate(&doc) {
            Ok((_, issues)) => issues.into_iter().map(|i| (i.code, i.pointer)).collect(),
            Err(issues) => issues.into_iter().map(|i| (i.code, i.pointer)).collect(),
        }
    }

    #[test]
    fn reports_every_error_at_once() {
        let doc = json!({
            "nodes": [
                {"id": "a", "type": "noop"},
                {"id": "a", "type": "noop"},
                {"id": "b", "type": "task"},
                {"id": "c", "type": "http", "config": {"url": "https://x/${nodes.d.y}"}},
                {"id": "d", "type": "noop"}
            ],
            "edges": [
                {"from": "a", "to": "zzz"},
                {"from": "a", "to": "c", "condition": "output.x >"},
                {"from": "c", "to": "d"}
            ]
        });
        let got = codes(doc);
        for want in [
            ("duplicate_id", "/nodes/1/id"),
            ("unknown_type", "/nodes/2/type"),
            ("dangling_edge", "/edges/0/to"),
            ("invalid_condition", "/edges/1/condition"),
            ("invalid_reference", "/nodes/3/config/url"),
        ] {
            assert!(got.iter().any(|(c, p)| *c == want.0 && p == want.1), "missing {want:?} in {got:?}");
        }
    }

    #[test]
    fn cycles_need_a_loop_node() {
        let doc = json!({
            "nodes": [{"id": "s", "type": "noop"}, {"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}],
            "edges": [{"from": "s", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "a"}]
        });
        assert!(codes(doc).iter().any(|(c, _)| *c == "cycle"));
        let ok = json!({
            "nodes": [
                {"id": "call", "type": "noop"},
                {"id": "retry", "type": "loop", "config": {"max_iterations": 3, "loop_back_to": "call", "condition": "$.status != 'success'", "break_path": ["ok"], "timeout_path": ["give_up"]}},
                {"id": "ok", "type": "noop"}, {"id": "give_up", "type": "noop"}
            ],
            "edges": [{"from": "call", "to": "retry"}]
        });
        let got = codes(ok);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn durations_beyond_the_maximum_are_refused_with_their_pointer() {
        let over = MAX_DURATION_MS + 1;
        let doc = json!({
            "nodes": [
                {"id": "a", "type": "http", "timeout_ms": over, "retry": {"backoff_ms": over, "max_backoff_ms": u64::MAX},
                 "config": {"url": "https://x", "timeout_ms": over}},
                {"id": "w", "type": "wait", "config": {"duration_ms": over}},
                {"id": "h", "type": "hitl", "config": {"timeout_ms": over}},
                {"id": "m", "type": "map", "config": {"items": [1], "node": {"type": "http", "config": {"url": "https://x", "timeout_ms": over}}}}
            ],
            "edges": [{"from": "a", "to": "w"}, {"from": "w", "to": "h"}, {"from": "h", "to": "m"}]
        });
        let got = codes(doc);
        for want in [
            "/nodes/0/timeout_ms",
            "/nodes/0/retry/backoff_ms",
            "/nodes/0/retry/max_backoff_ms",
            "/nodes/0/config/timeout_ms",
            "/nodes/1/config/duration_ms",
            "/nodes/2/config/timeout_ms",
            "/nodes/3/config/node/config/timeout_ms",
        ] {
            assert!(got.iter().any(|(c, p)| *c == "invalid_config" && p == want), "missing {want} in {got:?}");
        }
        let at_max = json!({"nodes": [{"id": "w", "type": "wait", "timeout_ms": MAX_DURATION_MS, "config": {"duration_ms": MAX_DURATION_MS}}]});
        assert!(codes(at_max).is_empty());
    }

    #[test]
    fn http_nodes_may_not_set_hop_by_hop_headers_or_host() {
        let doc = json!({"nodes": [{"id": "a", "type": "http", "config": {"url": "https://x", "headers": {
            "Host": "internal", "Connection": "close", "Keep-Alive": "1", "TE": "trailers", "Upgrade": "h2c",
            "Proxy-Authorization": "x", "Trailer": "t", "Transfer-Encoding": "chunked", "Accept": "a/b", "X-Ok": "1"
        }}}]});
        let mut got: Vec<String> = codes(doc).into_iter().filter(|(c, _)| *c == "invalid_config").map(|(_, p)| p).collect();
        got.sort();
        assert_eq!(
            got,
            [
                "/nodes/0/config/headers/Connection",
                "/nodes/0/config/headers/Host",
                "/nodes/0/config/headers/Keep-Alive",
                "/nodes/0/config/headers/Proxy-Authorization",
                "/nodes/0/config/headers/TE",
                "/nodes/0/config/headers/Trailer",
                "/nodes/0/config/headers/Transfer-Encoding",
                "/nodes/0/config/headers/Upgrade",
            ]
        );
    }

    #[test]
    fn unreachable_is_a_warning_only() {
        let doc = json!({
            "nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}, {"id": "c", "type": "noop"}],
            "edges": [{"from": "b", "to": "c"}, {"from": "c", "to": "b"}]
        });
        let got = codes(doc);
        assert!(got.iter().any(|(c, _)| *c == "cycle"));
    }
}
