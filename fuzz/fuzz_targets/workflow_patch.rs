//! Patches on a workflow document, both ways the server applies them, each followed by
//! validation and compilation:
//! - run patches (`POST /api/v1/runs/:id/patches`): `aob_model::patch::apply` (RFC 6902
//!   and id-based ops) on the run's current workflow, `parse_and_validate`, `Plan::new`,
//!   then `aob_engine::patch::check` against the live run state and, when it passes,
//!   `rebase` and `apply(Input::Patched)`;
//! - tag patches (`PATCH /api/v1/workflows/:tag/patch`): the ops as a `json_patch::Patch`
//!   on the stored document, then `parse_and_validate` and `Plan::new`.
//!
//! Input: `ops JSON %% progress %% base workflow (JSON or YAML)`. The base defaults to
//! `examples/branch-join.yaml`; `progress` (default 0) is how many dispatched attempts
//! complete before the patch, so locked (started, finished) nodes get exercised.
#![no_main]

use aob_engine::{Action, Input, Outcome, Plan, RunState, apply};
use aob_model::Workflow;
use aob_model::validate::parse_and_validate;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const DEFAULT_BASE: &str = include_str!("../../examples/branch-join.yaml");

fn base_plan(text: Option<&str>) -> Plan {
    if let Some(plan) = text.and_then(|t| Workflow::parse(t).ok()).and_then(|wf| Plan::new(wf).ok()) {
        return plan;
    }
    let wf = Workflow::parse(DEFAULT_BASE).expect("the example parses");
    Plan::new(wf).expect("the example compiles")
}

/// Starts the run and completes up to `progress` dispatched attempts.
fn live_state(plan: &Plan, progress: usize) -> RunState {
    let mut st = RunState::new("run-fuzz", plan, json!({"base_url": "http://example.test"}), 0);
    let mut queue: Vec<Action> = apply(plan, &mut st, Input::Start, 0).actions;
    let mut now = 0;
    for _ in 0..progress {
        let Some(pos) = queue.iter().position(|a| matches!(a, Action::Dispatch(_))) else {
            break;
        };
        let Action::Dispatch(task) = queue.remove(pos) else { unreachable!() };
        now += 10;
        let out = Outcome::Ok(json!({"body": {"score": 90}, "ok": true, "items": [1, 2]}));
        queue.extend(apply(plan, &mut st, Input::Done { task: task.id, outcome: out }, now).actions);
    }
    st
}

fn run_patch(plan: &Plan, st: &RunState, ops: &[Value]) {
    let doc = serde_json::to_value(&plan.workflow).expect("a workflow serializes");
    let Ok(doc) = aob_model::patch::apply(&doc, ops) else { return };
    let Ok((wf, _)) = parse_and_validate(&doc) else { return };
    let new = Plan::new(wf).unwrap_or_else(|issues| panic!("validated patched workflow does not compile: {issues:?}"));
    if !aob_engine::patch::check(plan, st, &new, aob_engine::patch::DEFAULT_AGENT_LIMIT).is_empty() {
        return;
    }
    let mut next = aob_engine::patch::rebase(plan, st, &new);
    assert_eq!(next.nodes.len(), new.nodes.len());
    assert_eq!(next.edges.len(), new.edges.len());
    let input = Input::Patched {
        seq: 1,
        by: "fuzz".into(),
        description: String::new(),
        node_id: None,
        workflow: new.hash.clone(),
    };
    let _ = apply(&new, &mut next, input, 1_000);
}

fn tag_patch(plan: &Plan, ops: &Value) {
    let Ok(patch) = serde_json::from_value::<json_patch::Patch>(ops.clone()) else {
        return;
    };
    let mut doc = plan.workflow.to_canonical_json();
    if json_patch::patch(&mut doc, &patch).is_err() {
        return;
    }
    if let Ok((wf, _)) = parse_and_validate(&doc) {
        Plan::new(wf).unwrap_or_else(|issues| panic!("validated patched workflow does not compile: {issues:?}"));
    }
}

fuzz_target!(init: aob_fuzz::init(), |data: &[u8]| {
    let Some(text) = aob_fuzz::text(data) else { return };
    let [ops, progress, base] = aob_fuzz::parts::<3>(text);
    let Some(ops) = ops.and_then(|o| serde_json::from_str::<Value>(o).ok()) else { return };
    let progress = progress.and_then(|p| p.trim().parse::<usize>().ok()).unwrap_or(0).min(64);
    let plan = base_plan(base);
    let st = live_state(&plan, progress);
    if let Some(list) = ops.as_array() {
        run_patch(&plan, &st, list);
    }
    tag_patch(&plan, &ops);
});
