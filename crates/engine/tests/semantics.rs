//! Scenario tests of the engine contract (DESIGN.md §3–§4), driving `apply` by hand.

#![allow(clippy::unwrap_used)]

mod common;

use aob_engine::{Action, Input, NodeStatus, RunState, RunStatus, TaskId};
use common::{Harness, err, ok};
use serde_json::{Value, json};

fn http(id: &str) -> Value {
    json!({"id": id, "type": "http", "config": {"url": format!("https://example.com/{id}")}})
}

fn noop(id: &str) -> Value {
    json!({"id": id, "type": "noop"})
}

fn edge(from: &str, to: &str) -> Value {
    json!({"from": from, "to": to})
}

fn cond(from: &str, to: &str, c: &str) -> Value {
    json!({"from": from, "to": to, "condition": c})
}

fn diamond(node: fn(&str) -> Value) -> Value {
    json!({
        "nodes": [node("A"), node("B"), node("C"), node("D")],
        "edges": [edge("A", "B"), edge("A", "C"), edge("B", "D"), edge("C", "D")]
    })
}

// ---------------------------------------------------------------- graph shapes

#[test]
fn diamond_of_http_nodes_runs_the_join_once_after_both_branches() {
    let mut h = Harness::started(diamond(http), json!({}));
    assert_eq!(h.st.status, RunStatus::Running);
    assert_eq!(h.kinds(None), ["workflow_started", "node_started"]);
    assert_eq!(h.in_flight.len(), 1);
    h.finish("A", ok(json!({"a": 1})));
    assert_eq!(h.in_flight.iter().map(|t| t.node_id.as_str()).collect::<Vec<_>>(), ["B", "C"]);
    h.finish("C", ok(json!({"c": 1})));
    assert!(h.tasks_of("D").is_empty(), "D must wait for B");
    assert_eq!(h.status("D"), NodeStatus::Pending);
    h.finish("B", ok(json!({"b": 1})));
    let d = h.task("D");
    // A join's input is an object of its taken predecessors' outputs.
    assert_eq!(d.input, json!({"B": {"b": 1}, "C": {"c": 1}}));
    assert_eq!(
        d.id,
        TaskId {
            node: 3,
            activation: 0,
            item: None,
            attempt: 1
        }
    );
    h.finish("D", ok(json!({"d": 1})));
    assert_eq!(h.st.status, RunStatus::Completed);
    assert_eq!(h.last_kind(), "workflow_completed");
    assert_eq!(h.count("node_started", "D"), 1);
    assert_eq!(h.count("node_completed", "D"), 1);
    assert!(h.seq_of("node_started", "D") > h.seq_of("node_completed", "B"));
    assert!(h.seq_of("node_started", "D") > h.seq_of("node_completed", "C"));
    assert_eq!(h.dispatched.len(), 4);
    // Default run outputs: the sink nodes' outputs by id.
    assert_eq!(h.st.outputs, Some(json!({"D": {"d": 1}})));
    assert!(h.st.completed_at.is_some());
}

#[test]
fn diamond_of_noop_nodes_is_evaluated_inline_in_one_step() {
    let mut h = Harness::new(diamond(noop), json!({"x": 1}));
    let step = h.apply(Input::Start);
    assert!(step.actions.is_empty(), "inline nodes are never dispatched");
    assert_eq!(h.st.status, RunStatus::Completed);
    for id in ["A", "B", "C", "D"] {
        assert_eq!(h.count("node_started", id), 1, "{id}");
        assert_eq!(h.count("node_completed", id), 1, "{id}");
        assert_eq!(h.status(id), NodeStatus::Completed);
    }
    assert!(h.seq_of("node_started", "D") > h.seq_of("node_completed", "B"));
    assert!(h.seq_of("node_started", "D") > h.seq_of("node_completed", "C"));
    // Noop passes its input through: the entry sees the run inputs.
    assert_eq!(h.output("A"), Some(&json!({"x": 1})));
    assert_eq!(h.output("D"), Some(&json!({"B": {"x": 1}, "C": {"x": 1}})));
    assert_eq!(h.last_kind(), "workflow_completed");
}

#[test]
fn untaken_branch_feeding_a_join_is_skipped_and_the_join_still_fires_once() {
    let wf = json!({
        "nodes": [http("fetch"), {"id": "check", "type": "conditional"}, http("big"), http("small"), noop("after_big"), http("join")],
        "edges": [
            edge("fetch", "check"),
            cond("check", "big", "output.body.amount > 100"),
            cond("check", "small", "output.body.amount <= 100"),
            edge("big", "after_big"),
            edge("after_big", "join"),
            edge("small", "join")
        ]
    });
    let mut h = Harness::started(wf, json!({}));
    h.finish("fetch", ok(json!({"body": {"amount": 50}})));
    assert_eq!(h.status("big"), NodeStatus::Skipped);
    assert_eq!(h.status("after_big"), NodeStatus::Skipped, "skips propagate");
    assert_eq!(h.count("node_skipped", "after_big"), 1);
    assert!(h.tasks_of("join").is_empty());
    h.finish("small", ok(json!({"s": 1})));
    let join = h.task("join");
    assert_eq!(join.input, json!({"s": 1}), "only the taken edge feeds the join");
    h.finish("join", ok(json!({})));
    assert_eq!(h.st.status, RunStatus::Completed);
    assert_eq!(h.count("node_started", "join"), 1);
    assert_eq!(h.count("node_started", "big"), 0);
}

#[test]
fn a_branch_matching_no_edge_is_a_dead_end_and_the_run_completes() {
    let wf = json!({
        "nodes": [http("a"), {"id": "check", "type": "conditional"}, http("x"), http("y"), http("z")],
        "edges": [
            edge("a", "check"),
            cond("check", "x", "output.n == 1"),
            cond("check", "y", "output.n == 2"),
            edge("x", "z"),
            edge("y", "z")
        ]
    });
    let mut h = Harness::started(wf, json!({}));
    h.finish("a", ok(json!({"n": 3})));
    assert_eq!(h.st.status, RunStatus::Completed);
    for id in ["x", "y", "z"] {
        assert_eq!(h.status(id), NodeStatus::Skipped, "{id}");
    }
    assert_eq!(h.dispatched.len(), 1);
    // No sink completed: the default outputs are empty.
    assert_eq!(h.st.outputs, Some(json!({})));
}

#[test]
fn join_any_fires_on_the_first_taken_edge_only_once() {
    let wf = json!({
        "nodes": [http("A"), http("B"), http("C"), {"id": "J", "type": "http", "join": "any", "config": {"url": "https://e/j"}}],
        "edges": [edge("A", "B"), edge("A", "C"), edge("B", "J"), edge("C", "J")]
    });
    let mut h = Harness::started(wf, json!({}));
    h.finish("A", ok(json!({})));
    h.finish("B", ok(json!({"from": "B"})));
    let j = h.task("J");
    assert_eq!(j.input, json!({"from": "B"}));
    h.finish("C", ok(json!({"from": "C"})));
    // C's edge resolves later; J does not fire again.
    assert_eq!(h.count("node_started", "J"), 1);
    assert_eq!(h.dispatches_of("J").len(), 1);
    assert_eq!(h.st.status, RunStatus::Running, "J is still in flight");
    h.finish("J", ok(json!({})));
    assert_eq!(h.st.status, RunStatus::Completed);
    assert_eq!(h.count("node_completed", "J"), 1);
}

#[test]
fn join_any_with_the_first_branch_still_running() {
    let wf = json!({
        "nodes": [http("A"), http("B"), http("C"), {"id": "J", "type": "http", "join": "any", "config": {"url": "https://e/j"}}],
        "edges": [edge("A", "B"), edge("A", "C"), edge("B", "J"), edge("C", "J")]
    });
    let mut h = Harness::started(wf, json!({}));
    h.finish("A", ok(json!({})));
    h.finish("B", ok(json!({"from": "B"})));
    // J runs while C is still running.
    assert_eq!(h.tasks_of("J").len(), 1);
    assert_eq!(h.tasks_of("C").len(), 1);
    h.finish("J", ok(json!({})));
    assert_eq!(h.st.status, RunStatus::Running, "C is still in flight");
    h.finish("C", ok(json!({})));
    assert_eq!(h.st.status, RunStatus::Completed);
    assert_eq!(h.count("node_started", "J"), 1);
    assert_eq!(h.count("node_completed", "J"), 1);
}

#[test]
fn join_any_whose_edges_are_all_skipped_is_skipped() {
    let wf = json!({
        "nodes": [http("A"), {"id": "J", "type": "noop", "join": "any"}, http("K")],
        "edges": [cond("A", "J", "false"), cond("A", "J", "output.x == 1"), edge("J", "K")]
    });
    // Two parallel edges A→J are allowed and both resolve.
    let mut h = Harness::started(wf, json!({}));
    h.finish("A", ok(json!({"x": 2})));
    assert_eq!(h.status("J"), NodeStatus::Skipped);
    assert_eq!(h.status("K"), NodeStatus::Skipped);
    assert_eq!(h.st.status, RunStatus::Completed);
}

#[test]
fn edge_conditions_work_on_any_node_and_see_inputs_and_nodes() {
    let wf = json!({
        "nodes": [http("a"), http("b"), http("c"), http("d"), http("e")],
        "edges": [
            cond("a", "b", "output.status == 200"),
            cond("a", "c", "output.status != 200"),
            cond("a", "d", "inputs.mode == 'full' && nodes.a.status == 200"),
            cond("a", "e", "size(output.items) > 2")
        ]
    });
    let mut h = Harness::started(wf, json!({"mode": "full"}));
    h.finish("a", ok(json!({"status": 200, "items": [1, 2]})));
    assert_eq!(h.status("b"), NodeStatus::Running);
    assert_eq!(h.status("c"), NodeStatus::Skipped);
    assert_eq!(h.status("d"), NodeStatus::Running);
    assert_eq!(h.status("e"), NodeStatus::Skipped);
    h.run_to_end();
    assert_eq!(h.st.status, RunStatus::Completed);
}

#[test]
fn seed_dollar_dot_conditions_mean_output() {
    let wf = json!({
        "metadata": {"name": "seed"},
        "nodes": [http("approve"), {"id": "yes", "type": "function"}, {"id": "no", "type": "function"}],
        "edges": [cond("approve", "yes", "$.approved == true"), cond("approve", "no", "$.approved != true")]
    });
    let mut h = Harness::started(wf, json!({}));
    h.finish("approve", ok(json!({"approved": true})));
    assert_eq!(h.status("yes"), NodeStatus::Completed);
    assert_eq!(h.status("no"), NodeStatus::Skipped);
    assert_eq!(h.st.status, RunStatus::Completed);
}

#[test]
fn a_condition_that_does_not_evaluate_to_a_bool_fails_the_node() {
    let wf = json!({"nodes": [http("a"), http("b")], "edges": [cond("a", "b", "output.missing == 1")]});
    let mut h = Harness::started(wf, json!({}));
    h.finish("a", ok(json!({"x": 1})));
    assert_eq!(h.status("a"), NodeStatus::Failed);
    assert_eq!(h.st.nodes[0].error.as_ref().unwrap()["code"], "condition_error");
    assert_eq!(h.st.status, RunStatus::Failed);
}

// ---------------------------------------------------------------- failures

#[test]
fn failure_edges_handle_a_failure_and_the_run_completes() {
    let wf = json!({
        "nodes": [http("a"), http("ok"), http("handler"), http("always")],
        "edges": [
            edge("a", "ok"),
            {"from": "a", "to": "handler", "on": "failure", "condition": "output.error.code == 'boom'"},
            {"from": "a", "to": "always", "on": "always"}
        ]
    });
    let mut h = Harness::started(wf, json!({}));
    h.finish("a", err("boom", false));
    assert_eq!(h.status("a"), NodeStatus::Failed);
    assert_eq!(h.status("ok"), NodeStatus::Skipped);
    let handler = h.task("handler");
    assert_eq!(handler.input["code"], "boom", "the handler's input is the error");
    assert_eq!(h.tasks_of("always").len(), 1);
    h.run_to_end();
    assert_eq!(h.st.status, RunStatus::Completed);
    assert_eq!(h.st.error, None);
}

#[test]
fn failure_edges_are_skipped_on_success() {
    let wf = json!({
        "nodes": [http("a"), http("ok"), http("handler"), http("always")],
        "edges": [edge("a", "ok"), {"from": "a", "to": "handler", "on": "failure"}, {"from": "a", "to": "always", "on": "always"}]
    });
    let mut h = Harness::started(wf, json!({}));
    h.finish("a", ok(json!({})));
    assert_eq!(h.status("handler"), NodeStatus::Skipped);
    assert_eq!(h.status("ok"), NodeStatus::Running);
    assert_eq!(h.status("always"), NodeStatus::Running);
    h.run_to_end();
    assert_eq!(h.st.status, RunStatus::Completed);
}

#[test]
fn on_error_continue_records_the_failure_and_follows_success_edges() {
    let wf = json!({
        "nodes": [
            {"id": "a", "type": "http", "on_error": "continue", "config": {"url": "https://e/a"}},
            http("b")
        ],
        "edges": [edge("a", "b")]
    });
    let mut h = Harness::started(wf, json!({}));
    h.finish("a", err("bad_gateway", false));
    assert_eq!(h.status("a"), NodeStatus::Failed);
    assert_eq!(h.count("node_failed", "a"), 1);
    let b = h.task("b");
    assert_eq!(b.input["code"], "bad_gateway");
    h.finish("b", ok(json!({"done": true})));
    assert_eq!(h.st.status, RunStatus::Completed);
}

#[test]
fn an_unhandled_failure_fails_the_run_and_aborts_other_attempts() {
    let mut h = Harness::started(diamond(http), json!({}));
    h.finish("A", ok(json!({})));
    let c = h.task("C");
    let step = h.finish("B", err("boom", false));
    assert_eq!(h.st.status, RunStatus::Failed);
    assert!(step.actions.contains(&Action::Abort(c.id)), "{:?}", step.actions);
    assert_eq!(h.status("C"), NodeStatus::Cancelled);
    assert_eq!(h.status("D"), NodeStatus::Pending);
    assert_eq!(h.last_kind(), "workflow_failed");
    let error = h.st.error.clone().unwrap();
    assert_eq!(error["node_id"], "B");
    assert_eq!(error["code"], "boom");
    // The aborted attempt reporting late changes nothing.
    let before = h.st.clone();
    let step = h.done(c.id, ok(json!({})));
    assert!(step.is_empty());
    assert_eq!(h.st, before);
    let step = h.tick_to(1_000_000);
    assert!(step.is_empty());
}

#[test]
fn retries_back_off_and_dispatch_only_when_due() {
    let wf = json!({
        "nodes": [{"id": "a", "type": "http", "config": {"url": "https://e/a"},
                   "retry": {"max_attempts": 3, "backoff_ms": 1000, "backoff_multiplier": 2.0}}],
        "edges": []
    });
    let mut h = Harness::started(wf, json!({}));
    h.now = 10;
    let step = h.finish("a", err("unavailable", true));
    assert!(step.actions.is_empty(), "nothing dispatched before the retry is due");
    assert_eq!(h.status("a"), NodeStatus::Retrying);
    let ev = step.events.iter().find(|e| e.kind == "node_retrying").unwrap();
    assert_eq!(ev.attempt, Some(1));
    let due = ev.data["next_attempt_at_ms"].as_i64().unwrap();
    let delay = ev.data["delay_ms"].as_i64().unwrap();
    assert_eq!(due, 10 + delay);
    assert!((500..=1000).contains(&delay), "equal jitter around backoff_ms: {delay}");
    assert_eq!(h.st.nodes[0].due_at, Some(due), "the schedule is persisted in the state");
    assert_eq!(h.st.next_wake(), Some(due));

    let step = h.tick_to(due - 1);
    assert!(step.is_empty(), "not due yet");
    let step = h.tick_to(due);
    let task = h.task("a");
    assert_eq!(task.id.attempt, 2);
    assert!(step.actions.contains(&Action::Dispatch(task.clone())));
    assert!(step.events.iter().any(|e| e.kind == "node_started" && e.attempt == Some(2)));

    h.now = due + 5;
    let step = h.finish("a", err("unavailable", true));
    let ev = step.events.iter().find(|e| e.kind == "node_retrying").unwrap();
    let delay2 = ev.data["delay_ms"].as_i64().unwrap();
    assert!((1000..=2000).contains(&delay2), "exponential: {delay2}");
    let due2 = ev.data["next_attempt_at_ms"].as_i64().unwrap();
    h.tick_to(due2);
    assert_eq!(h.task("a").id.attempt, 3);
    // Last attempt: the node fails and, unhandled, so does the run.
    let step = h.finish("a", err("unavailable", true));
    assert!(step.events.iter().all(|e| e.kind != "node_retrying"));
    assert_eq!(h.status("a"), NodeStatus::Failed);
    assert_eq!(h.st.status, RunStatus::Failed);
    assert_eq!(h.count("node_started", "a"), 3);
}

#[test]
fn non_retryable_errors_are_not_retried_and_success_after_retry_completes() {
    let wf = json!({
        "nodes": [
            {"id": "a", "type": "http", "config": {"url": "https://e/a"}, "retry": {"max_attempts": 5, "backoff_ms": 100}},
            {"id": "b", "type": "http", "config": {"url": "https://e/b"}, "retry": {"max_attempts": 5, "backoff_ms": 100}}
        ],
        "edges": [edge("a", "b")]
    });
    let mut h = Harness::started(wf, json!({}));
    h.script("a", [err("flaky", true), ok(json!({"n": 1}))]);
    h.run_to_end();
    assert_eq!(h.count("node_started", "a"), 2);
    assert_eq!(h.st.status, RunStatus::Completed);

    let wf = json!({
        "nodes": [{"id": "a", "type": "http", "config": {"url": "https://e/a"}, "retry": {"max_attempts": 5, "backoff_ms": 100}}],
        "edges": []
    });
    let mut h = Harness::started(wf, json!({}));
    h.finish("a", err("bad_request", false));
    assert_eq!(h.count("node_started", "a"), 1);
    assert_eq!(h.st.status, RunStatus::Failed);
}

#[test]
fn an_attempt_past_its_deadline_times_out_and_is_retried() {
    let wf = json!({
        "nodes": [{"id": "a", "type": "http", "config": {"url": "https://e/a"}, "timeout_ms": 1000,
                   "retry": {"max_attempts": 2, "backoff_ms": 0}}, http("b")],
        "edges": [edge("a", "b")]
    });
    let mut h = Harness::started(wf, json!({}));
    let first = h.task("a");
    assert_eq!(first.timeout_ms, Some(1000), "the executor gets the timeout");
    let deadline = h.st.next_wake().unwrap();
    assert!(deadline >= 1000, "the deadline is at least timeout_ms away: {deadline}");
    assert!(h.tick_to(deadline - 1).is_empty());
    let step = h.tick_to(deadline);
    assert!(step.actions.contains(&Action::Abort(first.id)), "{:?}", step.actions);
    let ev = step.events.iter().find(|e| e.kind == "node_retrying").unwrap();
    assert_eq!(ev.data["error"]["code"], "timeout");
    // backoff 0: due now, dispatched on the next tick.
    h.tick_to(deadline);
    let second = h.task("a");
    assert_eq!(second.id.attempt, 2);
    // The first attempt reporting late is ignored.
    let before = h.st.clone();
    assert!(h.done(first.id, ok(json!({"late": true}))).is_empty());
    assert_eq!(h.st, before);
    // The second one also times out: no attempts left, the run fails.
    let deadline2 = h.st.next_wake().unwrap();
    h.tick_to(deadline2);
    assert_eq!(h.status("a"), NodeStatus::Failed);
    assert_eq!(h.st.status, RunStatus::Failed);
    assert_eq!(h.st.error.as_ref().unwrap()["code"], "timeout");
}

#[test]
fn duplicate_and_stale_completions_are_ignored() {
    let wf = json!({
        "nodes": [{"id": "a", "type": "http", "config": {"url": "https://e/a"}, "retry": {"max_attempts": 3, "backoff_ms": 10}}, http("b"), http("c")],
        "edges": [edge("a", "b"), edge("a", "c")]
    });
    let mut h = Harness::started(wf, json!({}));
    let a1 = h.task("a").id;
    h.finish("a", err("flaky", true));
    // Same attempt again while retrying.
    let before = h.st.clone();
    assert!(
        h.apply(Input::Done {
            task: a1,
            outcome: ok(json!({}))
        })
        .is_empty()
    );
    assert_eq!(h.st, before);
    let due = h.st.next_wake().unwrap();
    h.tick_to(due);
    let a2 = h.task("a").id;
    // The old attempt while the new one runs.
    let before = h.st.clone();
    assert!(
        h.apply(Input::Done {
            task: a1,
            outcome: ok(json!({}))
        })
        .is_empty()
    );
    assert_eq!(h.st, before);
    // A future attempt, another activation, an item id, an unknown node.
    for bogus in [
        TaskId { attempt: 3, ..a2 },
        TaskId { activation: 1, ..a2 },
        TaskId { item: Some(0), ..a2 },
        TaskId { node: 99, ..a2 },
    ] {
        assert!(
            h.apply(Input::Done {
                task: bogus,
                outcome: ok(json!({}))
            })
            .is_empty(),
            "{bogus:?}"
        );
        assert_eq!(h.st, before);
    }
    h.finish("a", ok(json!({"v": 1})));
    let after = h.st.clone();
    let events = h.events.len();
    // The same completion delivered twice.
    assert!(
        h.apply(Input::Done {
            task: a2,
            outcome: ok(json!({"v": 2}))
        })
        .is_empty()
    );
    assert!(
        h.apply(Input::Done {
            task: a2,
            outcome: err("x", false)
        })
        .is_empty()
    );
    assert_eq!(h.st, after);
    assert_eq!(h.events.len(), events);
    assert_eq!(h.output("a"), Some(&json!({"v": 1})));
    h.run_to_end();
    assert_eq!(h.st.status, RunStatus::Completed);
    assert_eq!(h.count("node_started", "b"), 1);
}

// ---------------------------------------------------------------- loops

fn retry_loop() -> Value {
    json!({
        "nodes": [
            http("call"),
            {"id": "retry", "type": "loop", "config": {
                "max_iterations": 5, "loop_back_to": "call",
                "condition": "output.body.status != 'success'",
                "break_path": ["ok"], "timeout_path": ["give_up"]}},
            http("ok"),
            http("give_up")
        ],
        "edges": [edge("call", "retry")]
    })
}

#[test]
fn loop_reruns_the_body_while_the_condition_holds_and_breaks_on_success() {
    let mut h = Harness::started(retry_loop(), json!({}));
    h.script(
        "call",
        [
            ok(json!({"body": {"status": "error", "n": 1}})),
            ok(json!({"body": {"status": "error", "n": 2}})),
            ok(json!({"body": {"status": "success", "n": 3}})),
        ],
    );
    h.run_to_end();
    assert_eq!(h.st.status, RunStatus::Completed);
    let calls = h.dispatches_of("call");
    assert_eq!(calls.len(), 3);
    // Each iteration is a new activation of the body, with its own attempt ids.
    let ids: Vec<(u32, u32)> = calls.iter().map(|t| (t.id.activation, t.id.attempt)).collect();
    assert_eq!(ids, [(0, 1), (1, 1), (2, 1)]);
    assert_eq!(h.dispatches_of("ok").len(), 1);
    assert_eq!(h.dispatches_of("give_up").len(), 0);
    assert_eq!(h.status("give_up"), NodeStatus::Skipped);
    assert_eq!(h.status("ok"), NodeStatus::Completed);
    assert_eq!(h.count("loop_iteration", "retry"), 2);
    // The loop exits with the body's latest output.
    assert_eq!(h.output("retry"), Some(&json!({"body": {"status": "success", "n": 3}})));
    let done = h
        .events
        .iter()
        .rfind(|e| e.kind == "node_completed" && e.node_id.as_deref() == Some("retry"))
        .unwrap();
    assert_eq!(done.data["exit"], "break");
    assert_eq!(h.dispatches_of("ok")[0].input, json!({"body": {"status": "success", "n": 3}}));
}

#[test]
fn loop_takes_the_timeout_path_after_max_iterations() {
    let mut h = Harness::started(retry_loop(), json!({}));
    h.script("call", (0..10).map(|_| ok(json!({"body": {"status": "error"}}))));
    h.run_to_end();
    assert_eq!(h.st.status, RunStatus::Completed);
    assert_eq!(h.dispatches_of("call").len(), 5);
    assert_eq!(h.dispatches_of("give_up").len(), 1);
    assert_eq!(h.status("ok"), NodeStatus::Skipped);
    let done = h
        .events
        .iter()
        .rfind(|e| e.kind == "node_completed" && e.node_id.as_deref() == Some("retry"))
        .unwrap();
    assert_eq!(done.data["exit"], "timeout");
}

#[test]
fn loop_ignores_completions_of_a_previous_activation() {
    let mut h = Harness::started(retry_loop(), json!({}));
    let first = h.task("call").id;
    h.finish("call", ok(json!({"body": {"status": "error"}})));
    let second = h.task("call").id;
    assert_eq!(second.activation, first.activation + 1);
    let before = h.st.clone();
    assert!(
        h.apply(Input::Done {
            task: first,
            outcome: ok(json!({"body": {"status": "success"}}))
        })
        .is_empty()
    );
    assert_eq!(h.st, before);
}

#[test]
fn loop_condition_sees_the_error_of_a_body_that_failed_in_a_later_iteration() {
    // `call` continues on error; the loop goes on while the call reports `retry`.
    // In iteration 2 the call fails: the condition must see that failure, not the
    // output that iteration 1 left behind.
    let wf = json!({
        "nodes": [
            {"id": "call", "type": "http", "on_error": "continue", "config": {"url": "https://e/c"}},
            {"id": "again", "type": "loop", "config": {
                "max_iterations": 5, "loop_back_to": "call",
                "condition": "has(output.body) && output.body.status == 'retry'",
                "break_path": ["ok"], "timeout_path": ["give_up"]}},
            http("ok"),
            http("give_up")
        ],
        "edges": [edge("call", "again")]
    });
    let mut h = Harness::started(wf, json!({}));
    h.script(
        "call",
        [
            ok(json!({"body": {"status": "retry"}})),
            err("down", false),
            ok(json!({"body": {"status": "retry"}})),
        ],
    );
    h.run_to_end();
    assert_eq!(h.dispatches_of("call").len(), 2);
    assert_eq!(h.dispatches_of("ok").len(), 1);
    assert_eq!(h.dispatches_of("ok")[0].input["code"], "down");
    assert_eq!(h.output("call"), None, "a failed node has no output");
    assert_eq!(h.st.status, RunStatus::Completed);
}

#[test]
fn loop_body_with_several_nodes_and_inline_steps() {
    // fetch → score (noop computing nothing) → check loop; the body is fetch+score.
    let wf = json!({
        "nodes": [
            http("init"),
            http("fetch"),
            {"id": "score", "type": "noop", "config": {"output": {"n": "$nodes.fetch.n"}}},
            {"id": "again", "type": "loop", "config": {"max_iterations": 10, "loop_back_to": "fetch", "condition": "output.n < 3", "break_path": ["done"]}},
            {"id": "done", "type": "noop", "config": {"output": {"final": "$nodes.score.n", "init": "$nodes.init.i"}}}
        ],
        "edges": [edge("init", "fetch"), edge("fetch", "score"), edge("score", "again")]
    });
    let mut h = Harness::started(wf, json!({}));
    h.script("init", [ok(json!({"i": 7}))]);
    h.script("fetch", (1..=5).map(|n| ok(json!({"n": n}))));
    h.run_to_end();
    assert_eq!(h.st.status, RunStatus::Completed);
    assert_eq!(h.dispatches_of("init").len(), 1);
    assert_eq!(h.dispatches_of("fetch").len(), 3);
    assert_eq!(h.count("node_started", "score"), 3);
    assert_eq!(h.output("done"), Some(&json!({"final": 3, "init": 7})));
}

// ---------------------------------------------------------------- map

fn map_wf(concurrency: u32, retry: Option<Value>) -> Value {
    let mut node = json!({"id": "fan", "type": "map", "config": {
        "items": "$inputs.items", "concurrency": concurrency,
        "node": {"type": "http", "config": {"url": "https://e/item/${item.id}", "body": {"index": "$index", "item": "$item"}}}}});
    if let Some(r) = retry {
        node["retry"] = r;
    }
    json!({"nodes": [node, http("after")], "edges": [edge("fan", "after")]})
}

fn item_list(n: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"id": i})).collect()
}

#[test]
fn map_respects_concurrency_and_collects_results_in_order() {
    let items = item_list(5);
    let mut h = Harness::started(map_wf(2, None), json!({"items": items}));
    assert_eq!(h.tasks_of("fan").len(), 2);
    let t0 = &h.tasks_of("fan")[0];
    assert_eq!(t0.config["url"], "https://e/item/0");
    assert_eq!(t0.config["body"], json!({"index": 0, "item": {"id": 0}}));
    assert_eq!(t0.input, json!({"id": 0}));
    assert_eq!(t0.id.item, Some(0));
    // Complete in a scrambled order, always the newest first.
    let mut max_in_flight = 0;
    while let Some(t) = h.tasks_of("fan").last().cloned() {
        max_in_flight = max_in_flight.max(h.tasks_of("fan").len());
        assert!(h.tasks_of("fan").len() <= 2);
        let i = t.id.item.unwrap();
        h.done(t.id, ok(json!({"r": i * 10})));
    }
    assert_eq!(max_in_flight, 2);
    assert_eq!(h.dispatches_of("fan").len(), 5);
    assert_eq!(h.status("fan"), NodeStatus::Completed);
    let expected: Vec<Value> = (0..5).map(|i| json!({"r": i * 10})).collect();
    assert_eq!(h.output("fan"), Some(&Value::Array(expected.clone())));
    assert_eq!(h.task("after").input, Value::Array(expected));
    assert_eq!(h.count("node_started", "fan"), 1);
    h.run_to_end();
    assert_eq!(h.st.status, RunStatus::Completed);
}

#[test]
fn map_over_an_empty_list_completes_with_an_empty_list() {
    let mut h = Harness::started(map_wf(2, None), json!({"items": []}));
    assert_eq!(h.output("fan"), Some(&json!([])));
    h.run_to_end();
    assert_eq!(h.st.status, RunStatus::Completed);
}

#[test]
fn map_over_a_non_list_fails_the_node() {
    let h = Harness::started(map_wf(2, None), json!({"items": {"a": 1}}));
    assert_eq!(h.status("fan"), NodeStatus::Failed);
    assert_eq!(h.st.nodes[0].error.as_ref().unwrap()["code"], "invalid_items");
    assert_eq!(h.st.status, RunStatus::Failed);
    assert!(h.dispatched.is_empty());
}

#[test]
fn map_items_are_retried_individually() {
    let items = item_list(3);
    let retry = json!({"max_attempts": 2, "backoff_ms": 100});
    let mut h = Harness::started(map_wf(3, Some(retry)), json!({"items": items}));
    let tasks = h.tasks_of("fan");
    assert_eq!(tasks.len(), 3);
    h.done(tasks[1].id, err("flaky", true));
    let ev = h.events.iter().rfind(|e| e.kind == "node_retrying").unwrap();
    assert_eq!(ev.data["item"], 1);
    let due = ev.data["next_attempt_at_ms"].as_i64().unwrap();
    assert_eq!(h.st.next_wake(), Some(due));
    h.done(tasks[0].id, ok(json!(0)));
    assert!(h.tick_to(due - 1).is_empty());
    h.tick_to(due);
    let retried: Vec<_> = h.tasks_of("fan").into_iter().filter(|t| t.id.item == Some(1)).collect();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].id.attempt, 2);
    // A late result of item 1's first attempt is ignored.
    let before = h.st.clone();
    assert!(
        h.apply(Input::Done {
            task: tasks[1].id,
            outcome: ok(json!("late"))
        })
        .is_empty()
    );
    assert_eq!(h.st, before);
    h.done(retried[0].id, ok(json!(1)));
    h.done(tasks[2].id, ok(json!(2)));
    assert_eq!(h.output("fan"), Some(&json!([0, 1, 2])));
    // An item that exhausts its attempts fails the map and aborts the others.
    let mut h = Harness::started(map_wf(3, Some(json!({"max_attempts": 2, "backoff_ms": 0}))), json!({"items": item_list(3)}));
    let tasks = h.tasks_of("fan");
    h.done(tasks[0].id, err("flaky", true));
    h.tick_to(0);
    let again = h.tasks_of("fan").into_iter().find(|t| t.id.item == Some(0)).unwrap();
    let step = h.done(again.id, err("flaky", true));
    assert!(step.actions.contains(&Action::Abort(tasks[1].id)));
    assert!(step.actions.contains(&Action::Abort(tasks[2].id)));
    assert_eq!(h.status("fan"), NodeStatus::Failed);
    assert_eq!(h.st.status, RunStatus::Failed);
}

#[test]
fn map_item_timeouts_are_caught_by_ticks() {
    let mut wf = map_wf(1, None);
    wf["nodes"][0]["timeout_ms"] = json!(100);
    let mut h = Harness::started(wf, json!({"items": item_list(2)}));
    let t = h.task("fan");
    let deadline = h.st.next_wake().unwrap();
    assert!(deadline >= 100);
    let step = h.tick_to(deadline);
    assert!(step.actions.contains(&Action::Abort(t.id)));
    assert_eq!(h.st.status, RunStatus::Failed);
    assert_eq!(h.st.error.as_ref().unwrap()["code"], "timeout");
}

// ---------------------------------------------------------------- wait

#[test]
fn wait_completes_only_at_its_due_time() {
    let wf = json!({
        "nodes": [http("a"), {"id": "pause", "type": "wait", "config": {"duration_ms": 1000}}, http("b")],
        "edges": [edge("a", "pause"), edge("pause", "b")]
    });
    let mut h = Harness::started(wf, json!({}));
    h.now = 50;
    h.finish("a", ok(json!({})));
    assert_eq!(h.status("pause"), NodeStatus::Running);
    assert!(h.in_flight.is_empty(), "a wait is a timer, not a task");
    assert!(!h.st.has_tasks_in_flight(&h.plan));
    assert_eq!(h.st.next_wake(), Some(1050));
    assert!(h.tick_to(1049).is_empty());
    assert_eq!(h.status("pause"), NodeStatus::Running);
    h.tick_to(1060);
    assert_eq!(h.status("pause"), NodeStatus::Completed);
    assert_eq!(h.output("pause"), Some(&json!({"waited_until_ms": 1050})));
    h.finish("b", ok(json!({})));
    assert_eq!(h.st.status, RunStatus::Completed);
}

#[test]
fn wait_until_a_referenced_instant() {
    let wf = json!({
        "nodes": [{"id": "w", "type": "wait", "config": {"until": "$inputs.at"}}],
        "edges": []
    });
    let mut h = Harness::started(wf, json!({"at": "1970-01-01T00:00:02Z"}));
    assert_eq!(h.st.next_wake(), Some(2000));
    h.tick_to(2000);
    assert_eq!(h.st.status, RunStatus::Completed);
    let h = Harness::started(
        json!({"nodes": [{"id": "w", "type": "wait", "config": {"until": "$inputs.at"}}], "edges": []}),
        json!({"at": "tomorrow"}),
    );
    assert_eq!(h.st.nodes[0].error.as_ref().unwrap()["code"], "invalid_config");
    assert_eq!(h.st.status, RunStatus::Failed);
}

// ---------------------------------------------------------------- references

#[test]
fn dispatched_configs_have_references_resolved() {
    let wf = json!({
        "nodes": [
            http("a"),
            {"id": "b", "type": "http", "config": {
                "method": "POST",
                "url": "https://api.example.com/t/${inputs.ticket}/${nodes.a.body.y}",
                "headers": {"x-n": "$inputs.n"},
                "body": {"y": "$nodes.a.body.y", "list": "$nodes.a.body.list", "seed": "${$nodes.a.body.y}", "lit": "cost ${not.a.ref}"}
            }}
        ],
        "edges": [edge("a", "b")]
    });
    let mut h = Harness::started(wf, json!({"ticket": "T-1", "n": 3}));
    h.finish("a", ok(json!({"body": {"y": 42, "list": [1, 2]}})));
    let b = h.task("b");
    assert_eq!(b.config["url"], "https://api.example.com/t/T-1/42");
    assert_eq!(b.config["headers"]["x-n"], 3);
    assert_eq!(b.config["body"], json!({"y": 42, "list": [1, 2], "seed": "42", "lit": "cost ${not.a.ref}"}));
    assert_eq!(b.config["method"], "POST");
    assert_eq!(b.input, json!({"body": {"y": 42, "list": [1, 2]}}));
    assert_eq!(b.idempotency_key(), "run-1:1:0:1");
}

#[test]
fn a_missing_reference_fails_the_node_without_dispatching() {
    let wf = json!({
        "nodes": [http("a"), {"id": "b", "type": "http", "config": {"url": "https://e/${nodes.a.body.missing}"}}, http("c")],
        "edges": [edge("a", "b"), edge("b", "c")]
    });
    let mut h = Harness::started(wf, json!({}));
    let step = h.finish("a", ok(json!({"body": {}})));
    assert!(step.actions.iter().all(|a| !matches!(a, Action::Dispatch(_))), "{:?}", step.actions);
    assert!(h.dispatches_of("b").is_empty());
    assert_eq!(h.status("b"), NodeStatus::Failed);
    let e = h.st.nodes[1].error.clone().unwrap();
    assert_eq!(e["code"], "reference_error");
    assert!(e["message"].as_str().unwrap().contains("missing"), "{e}");
    assert_eq!(h.st.status, RunStatus::Failed);
    assert_eq!(h.st.error.as_ref().unwrap()["code"], "reference_error");

    // Also for a missing input on an inline node, and handled by on_error.
    let wf = json!({
        "nodes": [{"id": "n", "type": "noop", "on_error": "continue", "config": {"output": "$inputs.nope"}}, http("m")],
        "edges": [edge("n", "m")]
    });
    let h = Harness::started(wf, json!({}));
    assert_eq!(h.status("n"), NodeStatus::Failed);
    assert_eq!(h.task("m").input["code"], "reference_error");
}

#[test]
fn workflow_outputs_resolve_references() {
    let wf = json!({
        "nodes": [http("a"), http("b")],
        "edges": [edge("a", "b")],
        "outputs": {"id": "$nodes.a.body.id", "summary": "${inputs.who}: ${nodes.b.text}", "const": 1}
    });
    let mut h = Harness::started(wf, json!({"who": "bob"}));
    h.finish("a", ok(json!({"body": {"id": 7}})));
    h.finish("b", ok(json!({"text": "fine"})));
    assert_eq!(h.st.status, RunStatus::Completed);
    let want = json!({"id": 7, "summary": "bob: fine", "const": 1});
    assert_eq!(h.st.outputs, Some(want.clone()));
    assert_eq!(h.events.last().unwrap().data["outputs"], want);

    let wf = json!({"nodes": [http("a")], "edges": [], "outputs": {"x": "$nodes.a.nope"}});
    let mut h = Harness::started(wf, json!({}));
    h.finish("a", ok(json!({})));
    assert_eq!(h.st.status, RunStatus::Failed);
    assert_eq!(h.st.error.as_ref().unwrap()["code"], "output_error");
}

// ---------------------------------------------------------------- control

#[test]
fn cancel_aborts_in_flight_attempts_and_ends_the_run() {
    let mut h = Harness::started(diamond(http), json!({}));
    h.finish("A", ok(json!({})));
    let (b, c) = (h.task("B").id, h.task("C").id);
    let step = h.apply(Input::Cancel { reason: "user".into() });
    assert!(step.actions.contains(&Action::Abort(b)));
    assert!(step.actions.contains(&Action::Abort(c)));
    assert_eq!(h.st.status, RunStatus::Cancelled);
    assert_eq!(h.last_kind(), "workflow_cancelled");
    assert_eq!(h.events.last().unwrap().data["reason"], "user");
    assert_eq!(h.status("B"), NodeStatus::Cancelled);
    assert_eq!(h.status("D"), NodeStatus::Pending);
    let before = h.st.clone();
    for input in [
        Input::Done {
            task: b,
            outcome: ok(json!({})),
        },
        Input::Tick,
        Input::Pause,
        Input::Resume,
        Input::Start,
        Input::Cancel { reason: "again".into() },
    ] {
        assert!(h.apply(input).is_empty());
        assert_eq!(h.st, before);
    }
    assert!(h.rebuilt_in_flight().is_empty());
}

#[test]
fn cancel_a_queued_run() {
    let mut h = Harness::new(diamond(http), json!({}));
    h.apply(Input::Cancel { reason: "nope".into() });
    assert_eq!(h.st.status, RunStatus::Cancelled);
    assert!(h.apply(Input::Start).is_empty());
    assert!(h.dispatched.is_empty());
}

#[test]
fn pause_stops_new_dispatch_and_resume_continues() {
    let wf = json!({
        "nodes": [http("a"), {"id": "b", "type": "http", "config": {"url": "https://e/b"}, "retry": {"max_attempts": 2, "backoff_ms": 100}}, http("c")],
        "edges": [edge("a", "b"), edge("b", "c")]
    });
    let mut h = Harness::started(wf, json!({}));
    let step = h.apply(Input::Pause);
    assert_eq!(h.st.status, RunStatus::Paused);
    assert_eq!(step.events[0].kind, "workflow_paused");
    // The running attempt may finish; its successor is not dispatched.
    let step = h.finish("a", ok(json!({})));
    assert!(step.actions.is_empty());
    assert_eq!(h.status("b"), NodeStatus::Ready);
    assert_eq!(h.st.status, RunStatus::Paused);
    assert!(h.apply(Input::Pause).is_empty(), "pausing twice does nothing");
    let step = h.apply(Input::Resume);
    assert_eq!(h.st.status, RunStatus::Running);
    assert_eq!(step.events[0].kind, "workflow_resumed");
    assert_eq!(h.tasks_of("b").len(), 1);
    // A retry falling due during a pause waits for the resume.
    h.finish("b", err("flaky", true));
    h.apply(Input::Pause);
    let due = h.st.next_wake().unwrap();
    let step = h.tick_to(due + 10);
    assert!(step.actions.is_empty());
    assert!(h.apply(Input::Resume).actions.len() == 1);
    assert_eq!(h.task("b").id.attempt, 2);
    assert!(h.apply(Input::Resume).is_empty(), "resuming a running run does nothing");
    h.run_to_end();
    assert_eq!(h.st.status, RunStatus::Completed);
}

#[test]
fn pause_stops_map_items_from_being_dispatched() {
    let mut h = Harness::started(map_wf(1, Some(json!({"max_attempts": 2, "backoff_ms": 10}))), json!({"items": item_list(3)}));
    h.apply(Input::Pause);
    let first = h.task("fan");
    let step = h.done(first.id, ok(json!("r0")));
    assert!(step.actions.is_empty(), "no item dispatched while paused: {:?}", step.actions);
    assert!(h.tasks_of("fan").is_empty());
    h.apply(Input::Resume);
    let second = h.task("fan");
    assert_eq!(second.id.item, Some(1));
    // A retry falling due while paused waits for the resume too.
    h.done(second.id, err("flaky", true));
    h.apply(Input::Pause);
    let due = h.st.next_wake().unwrap();
    assert!(h.tick_to(due).actions.is_empty());
    assert!(h.tasks_of("fan").is_empty());
    h.apply(Input::Resume);
    let again = h.task("fan");
    assert_eq!((again.id.item, again.id.attempt), (Some(1), 2));
    h.run_to_end();
    assert_eq!(h.st.status, RunStatus::Completed);
    assert_eq!(h.output("fan"), Some(&json!(["r0", {}, {}])));
}

#[test]
fn pausing_a_queued_run_holds_it_until_resume() {
    let mut h = Harness::new(diamond(noop), json!({}));
    h.apply(Input::Pause);
    assert_eq!(h.st.status, RunStatus::Paused, "a paused run that never started is not complete");
    h.apply(Input::Start);
    assert_eq!(h.st.status, RunStatus::Paused);
    assert_eq!(h.count("node_started", "A"), 0);
    h.apply(Input::Resume);
    assert_eq!(h.st.status, RunStatus::Completed);
    assert_eq!(h.kinds(None)[..3], ["workflow_paused", "workflow_resumed", "workflow_started"]);
    assert_eq!(h.count("node_completed", "D"), 1);
}

#[test]
fn cancel_while_paused() {
    let mut h = Harness::started(diamond(http), json!({}));
    h.apply(Input::Pause);
    let a = h.task("A").id;
    let step = h.apply(Input::Cancel { reason: "x".into() });
    assert_eq!(step.actions, [Action::Abort(a)]);
    assert_eq!(h.st.status, RunStatus::Cancelled);
}

#[test]
fn start_twice_does_nothing_the_second_time() {
    let mut h = Harness::started(diamond(http), json!({}));
    assert!(h.apply(Input::Start).is_empty());
    assert_eq!(h.dispatched.len(), 1);
}

// ---------------------------------------------------------------- durability

#[test]
fn event_seqs_start_at_one_and_have_no_gaps_across_a_run() {
    let wf = json!({
        "nodes": [
            {"id": "a", "type": "http", "config": {"url": "https://e/a"}, "retry": {"max_attempts": 3, "backoff_ms": 5}},
            http("b"), noop("c"), {"id": "w", "type": "wait", "config": {"duration_ms": 10}}, noop("d")
        ],
        "edges": [edge("a", "b"), edge("a", "c"), cond("c", "w", "true"), cond("c", "d", "false")]
    });
    let mut h = Harness::started(wf, json!({}));
    h.apply(Input::Pause);
    h.apply(Input::Resume);
    h.script("a", [err("x", true), err("x", true)]);
    h.run_to_end();
    assert_eq!(h.st.status, RunStatus::Completed);
    let seqs: Vec<u64> = h.events.iter().map(|e| e.seq).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want);
    assert_eq!(h.st.seq, seqs.len() as u64);
    assert_eq!(h.events[0].kind, "workflow_started");
    assert_eq!(h.last_kind(), "workflow_completed");
}

fn roundtrip(st: &RunState) -> RunState {
    let text = serde_json::to_string(st).unwrap();
    let back: RunState = serde_json::from_str(&text).unwrap();
    assert_eq!(&back, st);
    back
}

#[test]
fn in_flight_rebuilds_exactly_the_in_flight_tasks_after_a_crash() {
    let wf = json!({
        "nodes": [
            http("A"),
            {"id": "B", "type": "http", "config": {"url": "https://e/${nodes.A.id}"}, "retry": {"max_attempts": 3, "backoff_ms": 5}},
            http("C"),
            {"id": "M", "type": "map", "config": {"items": "$nodes.A.items", "concurrency": 2,
                "node": {"type": "http", "config": {"url": "https://e/m/${item}"}}}},
            {"id": "W", "type": "wait", "config": {"duration_ms": 100}},
            http("D")
        ],
        "edges": [edge("A", "B"), edge("A", "C"), edge("A", "M"), edge("A", "W"), edge("B", "D"), edge("C", "D"), edge("M", "D"), edge("W", "D")]
    });
    let mut h = Harness::started(wf, json!({}));
    let check = |h: &Harness| {
        let st = roundtrip(&h.st);
        let rebuilt = aob_engine::in_flight(&h.plan, &st);
        let mut want = h.in_flight.clone();
        let mut got = rebuilt.clone();
        want.sort_by_key(|t| format!("{:?}", t.id));
        got.sort_by_key(|t| format!("{:?}", t.id));
        assert_eq!(got, want, "rebuilt tasks must equal the ones in flight (same ids, same config)");
        assert_eq!(st.has_tasks_in_flight(&h.plan), !want.is_empty());
    };
    check(&h);
    h.finish("A", ok(json!({"id": 9, "items": ["x", "y", "z"]})));
    assert_eq!(h.in_flight.len(), 4);
    check(&h);
    h.finish("B", err("flaky", true));
    check(&h);
    let m = h.tasks_of("M");
    h.done(m[1].id, ok(json!(1)));
    check(&h);
    // Continue the run from the deserialized state, as a restarted process would.
    h.st = roundtrip(&h.st);
    h.run_to_end();
    check(&h);
    assert_eq!(h.st.status, RunStatus::Completed);
    assert_eq!(h.count("node_started", "D"), 1);
    assert_eq!(h.output("M"), Some(&json!([{}, 1, {}])));
}

// ---------------------------------------------------------------- regressions

#[test]
fn a_run_that_fails_in_the_step_that_dispatched_a_task_dispatches_nothing() {
    // Three entry nodes: the http one is dispatched, then the failing noop fails the run
    // in the same step. The step must not both dispatch and abort that task.
    let wf = json!({
        "nodes": [noop("a"), http("b"), {"id": "c", "type": "noop", "config": {"output": "$inputs.missing"}}],
        "edges": []
    });
    let mut h = Harness::new(wf, json!({}));
    let step = h.apply(Input::Start);
    assert_eq!(h.st.status, RunStatus::Failed);
    assert!(step.actions.is_empty(), "{:?}", step.actions);
    assert_eq!(h.status("b"), NodeStatus::Cancelled);
    assert!(h.rebuilt_in_flight().is_empty());
}

#[test]
fn a_map_item_with_a_bad_reference_fails_the_map_without_dispatching_siblings() {
    let items = json!([{"id": 0}, {"other": 1}, {"id": 2}]);
    let mut h = Harness::new(map_wf(3, None), json!({"items": items}));
    let step = h.apply(Input::Start);
    assert!(step.actions.is_empty(), "{:?}", step.actions);
    assert_eq!(h.status("fan"), NodeStatus::Failed);
    let e = h.st.nodes[0].error.clone().unwrap();
    assert_eq!(e["code"], "reference_error");
    assert!(e["message"].as_str().unwrap().starts_with("item 1:"), "{e}");
    assert_eq!(h.st.status, RunStatus::Failed);
}

#[test]
fn a_completion_naming_a_wait_node_is_ignored() {
    let wf = json!({"nodes": [{"id": "w", "type": "wait", "config": {"duration_ms": 1000}}], "edges": []});
    let mut h = Harness::started(wf, json!({}));
    let before = h.st.clone();
    let id = TaskId {
        node: 0,
        activation: 0,
        item: None,
        attempt: 1,
    };
    assert!(
        h.apply(Input::Done {
            task: id,
            outcome: ok(json!({}))
        })
        .is_empty()
    );
    assert_eq!(h.st, before);
    h.tick_to(1000);
    assert_eq!(h.st.status, RunStatus::Completed);
}

#[test]
fn a_loop_firing_early_aborts_the_body_attempts_it_discards() {
    let wf = json!({
        "nodes": [
            noop("start"), http("A"), http("B"),
            {"id": "again", "type": "loop", "join": "any", "config": {
                "max_iterations": 2, "loop_back_to": "start", "condition": "true", "timeout_path": ["end"]}},
            noop("end")
        ],
        "edges": [edge("start", "A"), edge("start", "B"), edge("A", "again"), edge("B", "again")]
    });
    let mut h = Harness::started(wf, json!({}));
    let b0 = h.task("B").id;
    let step = h.finish("A", ok(json!({})));
    assert!(step.actions.contains(&Action::Abort(b0)), "{:?}", step.actions);
    assert_eq!(h.task("B").id.activation, 1);
    assert_eq!(h.rebuilt_in_flight().len(), h.in_flight.len());
    h.run_to_end();
    assert_eq!(h.st.status, RunStatus::Completed);
    assert_eq!(h.status("end"), NodeStatus::Completed);
    assert_eq!(h.dispatches_of("A").len(), 2);
}
