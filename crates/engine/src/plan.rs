//! A workflow compiled for execution: indices instead of ids, conditions compiled,
//! loop bodies and exits precomputed. Built once per workflow version and shared.

use std::collections::{HashMap, HashSet};

use aob_model::condition::Condition;
use aob_model::config::NodeConfig;
use aob_model::{EdgeOn, Issue, Join, NodeKind, OnError, RetryPolicy, Workflow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EdgeKind {
    Normal,
    /// Loop exit taken when the loop condition turns false.
    Break,
    /// Loop exit taken when `max_iterations` is reached.
    Timeout,
}

#[derive(Debug)]
pub struct PlanEdge {
    pub from: usize,
    pub to: usize,
    pub condition: Option<Condition>,
    pub on: EdgeOn,
    pub kind: EdgeKind,
}

#[derive(Debug)]
pub struct PlanNode {
    pub id: String,
    pub kind: NodeKind,
    pub config: NodeConfig,
    pub raw_config: serde_json::Value,
    pub retry: Option<RetryPolicy>,
    pub timeout_ms: Option<u64>,
    pub on_error: OnError,
    pub join: Join,
    pub incoming: Vec<usize>,
    pub outgoing: Vec<usize>,
    /// Loop nodes: the nodes reset on each iteration (including the loop node itself).
    pub loop_body: Vec<usize>,
    /// Loop nodes: edges with both ends in the body.
    pub loop_body_edges: Vec<usize>,
    pub loop_back_to: Option<usize>,
    pub loop_condition: Option<Condition>,
}

impl PlanNode {
    pub fn max_attempts(&self) -> u32 {
        self.retry.as_ref().map_or(1, |r| r.max_attempts.max(1))
    }
}

#[derive(Debug)]
pub struct Plan {
    pub workflow: Workflow,
    pub hash: String,
    pub nodes: Vec<PlanNode>,
    pub edges: Vec<PlanEdge>,
    pub index: HashMap<String, usize>,
    /// Nodes with no incoming edge: ready at start.
    pub entries: Vec<usize>,
}

impl Plan {
    /// Validates (within the default limits) and compiles.
    pub fn new(workflow: Workflow) -> Result<Plan, Vec<Issue>> {
        Plan::new_with(workflow, &aob_limits::Limits::default())
    }

    /// Validates within `limits` and compiles. Only a valid workflow becomes a plan.
    pub fn new_with(workflow: Workflow, limits: &aob_limits::Limits) -> Result<Plan, Vec<Issue>> {
        let issues = aob_model::validate::validate_with(&workflow, limits);
        if aob_model::validate::has_errors(&issues) {
            return Err(issues);
        }
        let invalid = |msg: String| {
            vec![Issue {
                pointer: String::new(),
                code: "invalid_workflow",
                message: msg,
                severity: aob_model::Severity::Error,
            }]
        };
        let index: HashMap<String, usize> = workflow.nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
        let mut nodes = Vec::with_capacity(workflow.nodes.len());
        for n in &workflow.nodes {
            let kind = n.kind().ok_or_else(|| invalid(format!("unknown type {}", n.kind)))?;
            let config = NodeConfig::parse(kind, &n.config).map_err(invalid)?;
            let (loop_back_to, loop_condition) = match &config {
                NodeConfig::Loop(l) => (
                    index.get(&l.loop_back_to).copied(),
                    match &l.condition {
                        Some(c) => Some(Condition::compile_with(c, limits).map_err(invalid)?),
                        None => None,
                    },
                ),
                _ => (None, None),
            };
            nodes.push(PlanNode {
                id: n.id.clone(),
                kind,
                config,
                raw_config: n.config.clone(),
                retry: n.retry.clone(),
                timeout_ms: n.timeout_ms,
                on_error: n.on_error(),
                join: n.join(),
                incoming: Vec::new(),
                outgoing: Vec::new(),
                loop_body: Vec::new(),
                loop_body_edges: Vec::new(),
                loop_back_to,
                loop_condition,
            });
        }
        let mut edges = Vec::new();
        let mut seen_exit: HashSet<(usize, usize)> = HashSet::new();
        // Loop exits named in config become edges so that joins and skips see them.
        for (i, n) in workflow.nodes.iter().enumerate() {
            if let Some(NodeConfig::Loop(l)) = nodes.get(i).map(|p| &p.config) {
                let _ = n;
                for (ids, kind) in [(&l.break_path, EdgeKind::Break), (&l.timeout_path, EdgeKind::Timeout)] {
                    for id in ids {
                        if let Some(&t) = index.get(id)
                            && seen_exit.insert((i, t))
                        {
                            edges.push(PlanEdge {
                                from: i,
                                to: t,
                                condition: None,
                                on: EdgeOn::Success,
                                kind,
                            });
                        }
                    }
                }
            }
        }
        for e in &workflow.edges {
            let (Some(&from), Some(&to)) = (index.get(&e.from), index.get(&e.to)) else {
                continue;
            };
            if nodes[from].loop_back_to == Some(to) || seen_exit.contains(&(from, to)) {
                continue;
            }
            let condition = match &e.condition {
                Some(c) => Some(Condition::compile_with(c, limits).map_err(invalid)?),
                None => None,
            };
            edges.push(PlanEdge {
                from,
                to,
                condition,
                on: e.on,
                kind: EdgeKind::Normal,
            });
        }
        for (k, e) in edges.iter().enumerate() {
            nodes[e.from].outgoing.push(k);
            nodes[e.to].incoming.push(k);
        }
        // Loop bodies: nodes on a path from loop_back_to to the loop node.
        for l in 0..nodes.len() {
            let Some(start) = nodes[l].loop_back_to else {
                continue;
            };
            let mut fwd = HashSet::new();
            let mut stack = vec![start];
            while let Some(v) = stack.pop() {
                if fwd.insert(v) && v != l {
                    stack.extend(nodes[v].outgoing.iter().map(|&k| edges[k].to));
                }
            }
            let mut back = HashSet::new();
            let mut stack = vec![l];
            while let Some(v) = stack.pop() {
                if back.insert(v) && v != start {
                    stack.extend(nodes[v].incoming.iter().map(|&k| edges[k].from));
                }
            }
            let mut body: Vec<usize> = fwd.intersection(&back).copied().collect();
            for v in [start, l] {
                if !body.contains(&v) {
                    body.push(v);
                }
            }
            body.sort_unstable();
            let set: HashSet<usize> = body.iter().copied().collect();
            let body_edges = (0..edges.len())
                .filter(|&k| set.contains(&edges[k].from) && set.contains(&edges[k].to) && edges[k].from != l)
                .collect();
            nodes[l].loop_body = body;
            nodes[l].loop_body_edges = body_edges;
        }
        let entries = (0..nodes.len()).filter(|&i| nodes[i].incoming.is_empty()).collect();
        let hash = workflow.content_hash();
        Ok(Plan {
            workflow,
            hash,
            nodes,
            edges,
            index,
            entries,
        })
    }
}
