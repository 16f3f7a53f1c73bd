//! Property tests: random DAGs, outcomes, completion orders and duplicate deliveries.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use aob_engine::{Input, NodeStatus, Outcome, RunStatus, TaskError, TaskId};
use common::Harness;
use proptest::prelude::*;
use serde_json::{Value, json};

const CONDITIONS: [&str; 6] = [
    "true",
    "false",
    "output.v == 1",
    "has(output.v) && output.v >= 1",
    "!has(output.v) || output.v == 0",
    "has(output.error)",
];

#[derive(Debug, Clone, Copy)]
enum Out {
    Ok(u8),
    Retryable,
    Fatal,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Dispatched.
    Http,
    /// Evaluated inline.
    Noop,
    /// A timer.
    Wait,
    /// Fans out over `items` numbers with an http step.
    Map { items: u8, concurrency: u32 },
}

#[derive(Debug, Clone)]
struct NodeSpec {
    kind: Kind,
    join_any: bool,
    continue_on_error: bool,
    /// (max_attempts, backoff_ms)
    retry: Option<(u32, u64)>,
    timeout: bool,
    /// Outcome of attempt `a` is `outcomes[(a - 1 + item) % len]` (http nodes, map items).
    outcomes: Vec<Out>,
    /// Noop nodes: output `{"v": v}`, or a missing reference when `noop_fails`.
    v: u8,
    noop_fails: bool,
}

#[derive(Debug, Clone)]
struct EdgeSpec {
    from: usize,
    to: usize,
    condition: Option<usize>,
    /// 0 success, 1 failure, 2 always
    on: u8,
}

#[derive(Debug, Clone)]
struct Case {
    nodes: Vec<NodeSpec>,
    edges: Vec<EdgeSpec>,
    /// Driver choices: (what, a, b).
    driver: Vec<(u8, u16, u16)>,
}

fn out() -> impl Strategy<Value = Out> {
    prop_oneof![
        6 => (0u8..3).prop_map(Out::Ok),
        2 => Just(Out::Retryable),
        1 => Just(Out::Fatal),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Http),
        4 => Just(Kind::Noop),
        1 => Just(Kind::Wait),
        1 => (0u8..4, 1u32..3).prop_map(|(items, concurrency)| Kind::Map { items, concurrency }),
    ]
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    (
        kind(),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.2),
        prop::option::weighted(0.4, (1u32..4, 0u64..50)),
        prop::bool::weighted(0.15),
        prop::collection::vec(out(), 1..4),
        0u8..3,
        prop::bool::weighted(0.05),
    )
        .prop_map(|(kind, join_any, continue_on_error, retry, timeout, outcomes, v, noop_fails)| NodeSpec {
            kind,
            join_any,
            continue_on_error,
            retry,
            timeout,
            outcomes,
            v,
            noop_fails,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=12).prop_flat_map(|n| {
        let pairs = n * (n - 1) / 2;
        let edge = (
            prop::bool::weighted(0.3),
            prop::option::weighted(0.35, 0..CONDITIONS.len()),
            prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        );
        (
            prop::collection::vec(node_spec(), n),
            prop::collection::vec(edge, pairs),
            prop::collection::vec((0u8..100, any::<u16>(), any::<u16>()), 0..120),
        )
            .prop_map(move |(nodes, pair_edges, driver)| {
                let mut edges = Vec::new();
                let mut k = 0;
                for from in 0..n {
                    for to in from + 1..n {
                        let (present, condition, on) = pair_edges[k];
                        k += 1;
                        if present {
                            edges.push(EdgeSpec { from, to, condition, on });
                        }
                    }
                }
                Case { nodes, edges, driver }
            })
    })
}

fn workflow(c: &Case) -> Value {
    let nodes: Vec<Value> = c
        .nodes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let id = format!("n{i}");
            let mut n = match s.kind {
                Kind::Http => json!({"id": id, "type": "http", "config": {"url": format!("https://e/{i}")}}),
                Kind::Noop if s.noop_fails => {
                    json!({"id": id, "type": "noop", "config": {"output": "$inputs.missing"}})
                }
                Kind::Noop => json!({"id": id, "type": "noop", "config": {"output": {"v": s.v}}}),
                Kind::Wait => json!({"id": id, "type": "wait", "config": {"duration_ms": u64::from(s.v) * 700}}),
                Kind::Map { items, concurrency } => json!({"id": id, "type": "map", "config": {
                    "items": (0..items).collect::<Vec<u8>>(),
                    "concurrency": concurrency,
                    "node": {"type": "http", "config": {"url": "https://e/m/${item}"}}
                }}),
            };
            if s.join_any {
                n["join"] = json!("any");
            }
            if s.continue_on_error {
                n["on_error"] = json!("continue");
            }
            if let Some((max_attempts, backoff_ms)) = s.retry {
                n["retry"] = json!({"max_attempts": max_attempts, "backoff_ms": backoff_ms});
            }
            if s.timeout {
                n["timeout_ms"] = json!(1000);
            }
            n
        })
        .collect();
    let edges: Vec<Value> = c
        .edges
        .iter()
        .map(|e| {
            let mut v = json!({"from": format!("n{}", e.from), "to": format!("n{}", e.to)});
            if let Some(k) = e.condition {
                v["condition"] = json!(CONDITIONS[k]);
            }
            match e.on {
                1 => v["on"] = json!("failure"),
                2 => v["on"] = json!("always"),
                _ => {}
            }
            v
        })
        .collect();
    json!({"nodes": nodes, "edges": edges})
}

fn outcome_for(c: &Case, id: &TaskId) -> Outcome {
    let s = &c.nodes[id.node as usize];
    let k = id.attempt as usize - 1 + id.item.unwrap_or(0) as usize;
    match s.outcomes[k % s.outcomes.len()] {
        Out::Ok(v) => Outcome::Ok(json!({"v": v})),
        Out::Retryable => Outcome::Err(TaskError::new("unavailable", "try again", true)),
        Out::Fatal => Outcome::Err(TaskError::new("bad_request", "no", false)),
    }
}

fn sorted_ids(tasks: &[aob_engine::Task]) -> Vec<TaskId> {
    let mut ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    ids.sort_by_key(|t| (t.node, t.activation, t.item, t.attempt));
    ids
}

/// Drives a started run to its end with the given choices (then a default schedule),
/// checking after every step that duplicates are no-ops and that the state alone
/// rebuilds exactly the tasks in flight. The harness checks seqs and liveness.
fn drive(h: &mut Harness, choices: &[(u8, u16, u16)], outcome_for: impl Fn(&TaskId) -> Outcome) -> Result<(), TestCaseError> {
    // Completions already delivered (or aborted): any later delivery must be a no-op.
    let mut stale: Vec<(TaskId, Outcome)> = Vec::new();
    let mut driver = choices.iter().copied();
    let mut steps = 0;
    while !h.st.status.is_terminal() {
        steps += 1;
        prop_assert!(steps < 2_000, "the run does not terminate: {:#?}", h.st);
        let (what, a, b) = driver.next().unwrap_or((0, 0, 0));
        let before_aborts = h.aborted.len();
        if what >= 90 && !stale.is_empty() {
            // A duplicate or late delivery.
            let (id, outcome) = stale[a as usize % stale.len()].clone();
            let before = h.st.clone();
            let step = h.apply(Input::Done { task: id, outcome });
            prop_assert!(step.is_empty(), "stale completion of {id:?} did something: {step:?}");
            prop_assert_eq!(&h.st, &before);
        } else if (80..90).contains(&what) || (h.in_flight.is_empty() && !h.st.paused) {
            // Time passes.
            let jump = if what >= 80 { i64::from(b % 8_000) } else { 0 };
            let target = match h.st.next_wake() {
                Some(w) if h.in_flight.is_empty() => w.max(h.now + jump),
                _ => h.now + jump,
            };
            h.tick_to(target);
        } else if (76..80).contains(&what) || h.st.paused {
            // Pause, or resume a paused run.
            if h.st.paused {
                h.apply(Input::Resume);
            } else {
                h.apply(Input::Pause);
            }
        } else {
            // Complete one in-flight task, chosen at random.
            let t = h.in_flight[a as usize % h.in_flight.len()].clone();
            let outcome = outcome_for(&t.id);
            h.done(t.id, outcome.clone());
            stale.push((t.id, outcome));
        }
        for id in &h.aborted[before_aborts..] {
            stale.push((*id, Outcome::Ok(json!({"v": 1}))));
        }
        // Crash recovery: the state alone rebuilds exactly what is in flight.
        let text = serde_json::to_string(&h.st).unwrap();
        let back: aob_engine::RunState = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &h.st);
        prop_assert_eq!(sorted_ids(&aob_engine::in_flight(&h.plan, &back)), sorted_ids(&h.in_flight));
        prop_assert_eq!(back.has_tasks_in_flight(&h.plan), !h.in_flight.is_empty());
    }
    Ok(())
}

/// Runs a case to the end and checks every property along the way.
fn check(c: &Case) -> Result<(), TestCaseError> {
    let mut h = Harness::new(workflow(c), json!({}));
    h.apply(Input::Start);
    drive(&mut h, &c.driver, |id| outcome_for(c, id))?;

    // Terminal, with nothing left to do.
    prop_assert!(matches!(h.st.status, RunStatus::Completed | RunStatus::Failed), "{:?}", h.st.status);
    prop_assert!(h.st.next_wake().is_none());
    prop_assert!(aob_engine::in_flight(&h.plan, &h.st).is_empty());
    prop_assert_eq!(h.st.error.is_some(), h.st.status == RunStatus::Failed);
    let last = h.events.last().unwrap();
    prop_assert!(last.kind == "workflow_completed" || last.kind == "workflow_failed");
    prop_assert_eq!(
        h.events
            .iter()
            .filter(|e| e.kind.starts_with("workflow_") && e.kind != "workflow_paused" && e.kind != "workflow_resumed")
            .count(),
        2
    );
    // Gapless seqs from 1.
    for (k, e) in h.events.iter().enumerate() {
        prop_assert_eq!(e.seq, k as u64 + 1);
    }

    let mut started: HashMap<(String, u32), usize> = HashMap::new();
    let mut completed: HashMap<String, usize> = HashMap::new();
    let mut finished: HashMap<String, usize> = HashMap::new();
    // seq of each node's terminal event, for ordering checks.
    let mut done_at: HashMap<String, u64> = HashMap::new();
    let mut first_start: HashMap<String, u64> = HashMap::new();
    for e in &h.events {
        let Some(node) = e.node_id.clone() else {
            continue;
        };
        match e.kind.as_str() {
            "node_started" => {
                *started.entry((node.clone(), e.attempt.unwrap())).or_default() += 1;
                first_start.entry(node).or_insert(e.seq);
            }
            "node_completed" | "node_failed" | "node_skipped" => {
                if e.kind == "node_completed" {
                    *completed.entry(node.clone()).or_default() += 1;
                }
                *finished.entry(node.clone()).or_default() += 1;
                done_at.entry(node).or_insert(e.seq);
            }
            _ => {}
        }
    }
    for ((node, attempt), count) in &started {
        prop_assert_eq!(*count, 1, "{} attempt {} started {} times", node, attempt, count);
    }
    for (node, count) in &finished {
        prop_assert_eq!(*count, 1, "{} finished {} times", node, count);
    }
    for (node, count) in &completed {
        prop_assert_eq!(*count, 1, "{} completed {} times", node, count);
    }
    for (i, s) in c.nodes.iter().enumerate() {
        let id = format!("n{i}");
        let status = h.st.nodes[i].status;
        prop_assert!(
            status.is_done() || (status == NodeStatus::Pending && h.st.status == RunStatus::Failed),
            "{} ended {:?} in a {:?} run",
            id,
            status,
            h.st.status
        );
        // Attempts never exceed the policy.
        let max = s.retry.map_or(1, |r| r.0);
        prop_assert!(h.st.nodes[i].attempt <= max);
        if let Some(m) = &h.st.nodes[i].map {
            prop_assert!(m.item_states.iter().all(|it| it.attempt <= max));
        }
        // A node starts only once its join condition holds.
        if let Some(&seq) = first_start.get(&id) {
            let preds: Vec<String> = c.edges.iter().filter(|e| e.to == i).map(|e| format!("n{}", e.from)).collect();
            let resolved = preds.iter().filter(|p| done_at.get(*p).is_some_and(|&d| d < seq)).count();
            if s.join_any {
                prop_assert!(preds.is_empty() || resolved >= 1, "{} started before any predecessor finished", id);
            } else {
                prop_assert_eq!(resolved, preds.len(), "{} started before all predecessors finished", id);
            }
        }
        if h.st.status == RunStatus::Completed {
            prop_assert!(h.st.nodes[i].status != NodeStatus::Cancelled);
        }
    }
    let most: usize = c
        .nodes
        .iter()
        .map(|s| {
            let attempts = s.retry.map_or(1, |r| r.0 as usize);
            match s.kind {
                Kind::Http => attempts,
                Kind::Map { items, .. } => attempts * items as usize,
                Kind::Noop | Kind::Wait => 0,
            }
        })
        .sum();
    prop_assert!(h.dispatched.len() <= most);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_dags_run_to_a_consistent_end(c in case()) {
        check(&c)?;
    }
}

#[derive(Debug, Clone)]
struct LoopCase {
    max_iterations: u32,
    condition: usize,
    /// `call`: (retry max_attempts, on_error continue, timeout)
    call_retry: u32,
    call_continue: bool,
    call_timeout: bool,
    /// `mid` is dispatched (http) or inline (noop passing `call`'s output through).
    mid_http: bool,
    /// Outcome of the k-th dispatch of `call` / `mid`.
    call_outcomes: Vec<Out>,
    mid_outcomes: Vec<Out>,
    driver: Vec<(u8, u16, u16)>,
}

const LOOP_CONDITIONS: [&str; 4] = ["true", "false", "has(output.v) && output.v != 2", "!has(output.v) || output.v == 0"];

fn loop_case() -> impl Strategy<Value = LoopCase> {
    (
        1u32..5,
        0..LOOP_CONDITIONS.len(),
        1u32..3,
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.2),
        any::<bool>(),
        prop::collection::vec(out(), 1..12),
        prop::collection::vec(out(), 1..12),
        prop::collection::vec((0u8..100, any::<u16>(), any::<u16>()), 0..120),
    )
        .prop_map(
            |(max_iterations, condition, call_retry, call_continue, call_timeout, mid_http, call_outcomes, mid_outcomes, driver)| LoopCase {
                max_iterations,
                condition,
                call_retry,
                call_continue,
                call_timeout,
                mid_http,
                call_outcomes,
                mid_outcomes,
                driver,
            },
        )
}

fn loop_workflow(c: &LoopCase) -> Value {
    let mut call = json!({"id": "call", "type": "http", "config": {"url": "https://e/call"},
        "retry": {"max_attempts": c.call_retry, "backoff_ms": 20}});
    if c.call_continue {
        call["on_error"] = json!("continue");
    }
    if c.call_timeout {
        call["timeout_ms"] = json!(500);
    }
    let mid = if c.mid_http {
        json!({"id": "mid", "type": "http", "config": {"url": "https://e/mid/${nodes.call.v}"}, "on_error": "continue"})
    } else {
        json!({"id": "mid", "type": "noop"})
    };
    json!({
        "nodes": [
            {"id": "pre", "type": "http", "config": {"url": "https://e/pre"}},
            call,
            mid,
            {"id": "lp", "type": "loop", "config": {
                "max_iterations": c.max_iterations, "loop_back_to": "call",
                "condition": LOOP_CONDITIONS[c.condition],
                "break_path": ["ok"], "timeout_path": ["give_up"]}},
            {"id": "ok", "type": "noop"},
            {"id": "give_up", "type": "noop"},
            {"id": "after", "type": "noop", "join": "any"}
        ],
        "edges": [
            {"from": "pre", "to": "call"},
            {"from": "call", "to": "mid"},
            {"from": "mid", "to": "lp"},
            {"from": "ok", "to": "after"},
            {"from": "give_up", "to": "after"}
        ]
    })
}

fn pick(outs: &[Out], k: usize) -> Outcome {
    match outs[k % outs.len()] {
        Out::Ok(v) => Outcome::Ok(json!({"v": v})),
        Out::Retryable => Outcome::Err(TaskError::new("unavailable", "try again", true)),
        Out::Fatal => Outcome::Err(TaskError::new("bad_request", "no", false)),
    }
}

fn check_loop(c: &LoopCase) -> Result<(), TestCaseError> {
    let mut h = Harness::new(loop_workflow(c), json!({}));
    h.apply(Input::Start);
    let (call, mid) = (h.node_index("call") as u32, h.node_index("mid") as u32);
    // Outcomes depend only on the task id, so redeliveries and reorderings agree.
    let per_try = c.call_retry as usize;
    drive(&mut h, &c.driver, |id| {
        let k = id.activation as usize * per_try + id.attempt as usize - 1;
        if id.node == call {
            pick(&c.call_outcomes, k)
        } else if id.node == mid {
            pick(&c.mid_outcomes, k)
        } else {
            Outcome::Ok(json!({"v": 1}))
        }
    })?;
    prop_assert!(matches!(h.st.status, RunStatus::Completed | RunStatus::Failed), "{:?}", h.st.status);
    let iterations = h.count("loop_iteration", "lp");
    prop_assert!(iterations < c.max_iterations as usize);
    // Each activation of the body starts `call` at most `call_retry` times, each attempt once.
    let activations = h.dispatches_of("call").iter().map(|t| t.id.activation).max().map_or(0, |a| a + 1);
    prop_assert!(activations as usize <= iterations + 1);
    prop_assert!(h.dispatches_of("call").len() <= (iterations + 1) * per_try);
    prop_assert_eq!(h.count("node_started", "pre"), 1);
    if h.st.status == RunStatus::Completed {
        let exits = [h.status("ok"), h.status("give_up")];
        prop_assert!(
            exits == [NodeStatus::Completed, NodeStatus::Skipped] || exits == [NodeStatus::Skipped, NodeStatus::Completed],
            "{:?}",
            exits
        );
        prop_assert_eq!(h.count("node_completed", "after"), 1);
        prop_assert_eq!(h.count("node_completed", "lp"), 1);
        // The exit agrees with the loop condition on the body's last output.
        let done = h
            .events
            .iter()
            .find(|e| e.kind == "node_completed" && e.node_id.as_deref() == Some("lp"))
            .unwrap();
        let v = done.data["output"].get("v").and_then(Value::as_u64);
        let go_on = match c.condition {
            0 => true,
            1 => false,
            2 => v.is_some_and(|v| v != 2),
            _ => v.is_none_or(|v| v == 0),
        };
        if done.data["exit"] == "timeout" {
            prop_assert!(go_on && iterations + 1 == c.max_iterations as usize);
            prop_assert_eq!(h.status("give_up"), NodeStatus::Completed);
        } else {
            prop_assert_eq!(&done.data["exit"], "break");
            prop_assert!(!go_on);
            prop_assert_eq!(h.status("ok"), NodeStatus::Completed);
        }
        for i in 0..h.st.nodes.len() {
            prop_assert!(h.st.nodes[i].status.is_done());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_loops_run_to_a_consistent_end(c in loop_case()) {
        check_loop(&c)?;
    }
}
