//! Changing a running run's graph: the policy a patch must satisfy, and moving the
//! run's state onto the patched plan. Pure, like the rest of the engine.

use std::collections::{HashMap, HashSet};

use aob_model::Issue;

use crate::plan::{EdgeKind, Plan};
use crate::state::{NodeStatus, RunState, Token};

/// Default cap on the number of `agent` nodes a run may reach through patches.
pub const DEFAULT_AGENT_LIMIT: usize = 5;

fn issue(pointer: String, code: &'static str, message: String) -> Issue {
    Issue {
        pointer,
        code,
        message,
        severity: aob_model::Severity::Error,
    }
}

/// An edge's identity across plans.
fn edge_key(p: &Plan, k: usize) -> (String, String, EdgeKind) {
    let e = &p.edges[k];
    (p.nodes[e.from].id.clone(), p.nodes[e.to].id.clone(), e.kind)
}

fn edge_shape(p: &Plan, k: usize) -> (String, String, EdgeKind, Option<String>, aob_model::EdgeOn) {
    let e = &p.edges[k];
    (
        p.nodes[e.from].id.clone(),
        p.nodes[e.to].id.clone(),
        e.kind,
        e.condition.as_ref().map(|c| c.source.clone()),
        e.on,
    )
}

/// Every reason the patched plan `new` may not replace `old` for a run in state `st`.
pub fn check(old: &Plan, st: &RunState, new: &Plan, agent_limit: usize) -> Vec<Issue> {
    let mut out = Vec::new();
    if st.status.is_terminal() {
        out.push(issue(
            String::new(),
            "invalid_state",
            format!("run is {}; only an active run can be patched", st.status.as_str()),
        ));
        return out;
    }
    for (i, pn) in old.nodes.iter().enumerate() {
        let n = &st.nodes[i];
        let started = n.status != NodeStatus::Pending;
        let Some(&j) = new.index.get(&pn.id) else {
            if started {
                out.push(issue(
                    format!("/nodes/{}", pn.id),
                    "node_locked",
                    format!("node '{}' is {:?} and cannot be removed", pn.id, n.status).to_lowercase(),
                ));
            }
            continue;
        };
        let qn = &new.nodes[j];
        if started && (qn.kind != pn.kind || qn.raw_config != pn.raw_config || qn.retry != pn.retry || qn.timeout_ms != pn.timeout_ms) {
            out.push(issue(
                format!("/nodes/{}", pn.id),
                "node_locked",
                format!("node '{}' has started; its type and config cannot change", pn.id),
            ));
        }
        let before: HashSet<_> = pn.outgoing.iter().map(|&k| edge_shape(old, k)).collect();
        let after: HashSet<_> = qn.outgoing.iter().map(|&k| edge_shape(new, k)).collect();
        if n.status.is_done() && before != after {
            out.push(issue(
                format!("/nodes/{}", pn.id),
                "node_locked",
                format!("node '{}' has finished; its out-edges cannot change", pn.id),
            ));
        } else if started && !before.is_subset(&after) {
            out.push(issue(
                format!("/nodes/{}", pn.id),
                "node_locked",
                format!("node '{}' is running; it may gain out-edges but not lose them", pn.id),
            ));
        }
    }
    // New nodes must be able to run: reachable from a node that has not finished.
    let live: Vec<usize> = new
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, qn)| old.index.get(&qn.id).is_some_and(|&i| !st.nodes[i].status.is_done()))
        .map(|(j, _)| j)
        .collect();
    let mut reach = vec![false; new.nodes.len()];
    let mut stack = live;
    while let Some(v) = stack.pop() {
        if !reach[v] {
            reach[v] = true;
            stack.extend(new.nodes[v].outgoing.iter().map(|&k| new.edges[k].to));
        }
    }
    for (j, qn) in new.nodes.iter().enumerate() {
        if !old.index.contains_key(&qn.id) && !reach[j] {
            out.push(issue(
                format!("/nodes/{}", qn.id),
                "unreachable_node",
                format!("new node '{}' is not reachable from a node that has not finished", qn.id),
            ));
        }
    }
    let agents = new.nodes.iter().filter(|n| n.kind == aob_model::NodeKind::Agent).count();
    if agents > agent_limit {
        out.push(issue(
            "/nodes".into(),
            "agent_limit_exceeded",
            format!("the patched run would have {agents} agent nodes; the limit is {agent_limit}"),
        ));
    }
    out
}

/// The run's state re-indexed for `new`: nodes and edge tokens carried over by id,
/// new ones pending.
pub fn rebase(old: &Plan, st: &RunState, new: &Plan) -> RunState {
    let mut out = st.clone();
    out.nodes = new
        .nodes
        .iter()
        .map(|qn| old.index.get(&qn.id).map(|&i| st.nodes[i].clone()).unwrap_or_default())
        .collect();
    let tokens: HashMap<_, Token> = (0..old.edges.len()).map(|k| (edge_key(old, k), st.edges[k])).collect();
    out.edges = (0..new.edges.len())
        .map(|k| tokens.get(&edge_key(new, k)).copied().unwrap_or(Token::Pending))
        .collect();
    out
}

/// The nodes a replay of `node` resets: the node and everything downstream of it.
pub fn downstream(plan: &Plan, node: usize) -> Vec<usize> {
    let mut seen = vec![false; plan.nodes.len()];
    let mut stack = vec![node];
    let mut out = Vec::new();
    while let Some(v) = stack.pop() {
        if !seen[v] {
            seen[v] = true;
            out.push(v);
            stack.extend(plan.nodes[v].outgoing.iter().map(|&k| plan.edges[k].to));
        }
    }
    out.sort_unstable();
    out
}
