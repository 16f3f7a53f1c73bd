//! A tiny driver around the pure engine for tests: a hand-advanced clock, the set of
//! dispatched-but-unfinished tasks, and the full event log with gapless-seq checks.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};

use aob_engine::{Action, Event, Input, NodeStatus, Outcome, Plan, RunState, RunStatus, Step, Task, TaskError, TaskId, apply, in_flight};
use aob_model::Workflow;
use serde_json::{Value, json};

pub fn plan(wf: Value) -> Plan {
    let wf = Workflow::from_value(wf).expect("workflow parses");
    match Plan::new(wf) {
        Ok(p) => p,
        Err(issues) => panic!("invalid workflow: {issues:#?}"),
    }
}

pub fn ok(v: Value) -> Outcome {
    Outcome::Ok(v)
}

pub fn err(code: &str, retryable: bool) -> Outcome {
    Outcome::Err(TaskError::new(code, format!("{code} happened"), retryable))
}

pub struct Harness {
    pub plan: Plan,
    pub st: RunState,
    pub now: i64,
    /// Every event appended so far, in order.
    pub events: Vec<Event>,
    /// Dispatched and neither completed (by us) nor aborted, in dispatch order.
    pub in_flight: Vec<Task>,
    /// Every task ever dispatched.
    pub dispatched: Vec<Task>,
    /// Every abort ever requested.
    pub aborted: Vec<TaskId>,
    /// Scripted outcomes per node id, consumed in order; `Ok({})` when empty.
    pub script: HashMap<String, VecDeque<Outcome>>,
}

impl Harness {
    pub fn new(wf: Value, inputs: Value) -> Harness {
        let plan = plan(wf);
        let st = RunState::new("run-1", &plan, inputs, 0);
        Harness {
            plan,
            st,
            now: 0,
            events: Vec::new(),
            in_flight: Vec::new(),
            dispatched: Vec::new(),
            aborted: Vec::new(),
            script: HashMap::new(),
        }
    }

    /// Starts a run of `wf` with `inputs` at t=0.
    pub fn started(wf: Value, inputs: Value) -> Harness {
        let mut h = Harness::new(wf, inputs);
        h.apply(Input::Start);
        h
    }

    pub fn script(&mut self, node: &str, outcomes: impl IntoIterator<Item = Outcome>) {
        self.script.entry(node.to_string()).or_default().extend(outcomes);
    }

    /// Applies one input at the current time, records everything and checks the
    /// invariants every step must keep.
    pub fn apply(&mut self, input: Input) -> Step {
        let step = apply(&self.plan, &mut self.st, input, self.now);
        let mut expected = self.events.last().map_or(1, |e| e.seq + 1);
        for e in &step.events {
            assert_eq!(e.seq, expected, "event seqs must be gapless: {:?}", step.events);
            expected += 1;
        }
        assert_eq!(self.st.seq, expected - 1, "state seq must match the last event");
        for a in &step.actions {
            match a {
                Action::Dispatch(t) => {
                    assert!(!self.dispatched.iter().any(|d| d.id == t.id), "task {:?} dispatched twice", t.id);
                    self.in_flight.push(t.clone());
                    self.dispatched.push(t.clone());
                }
                Action::Abort(id) => {
                    self.in_flight.retain(|t| t.id != *id);
                    self.aborted.push(*id);
                }
            }
        }
        self.events.extend(step.events.iter().cloned());
        if self.st.status == RunStatus::Running {
            assert!(
                self.st.has_tasks_in_flight(&self.plan) || self.st.next_wake().is_some(),
                "a running run must have a task in flight or a timer: {:#?}",
                self.st
            );
        }
        if self.st.status.is_terminal() {
            assert!(step.actions.iter().all(|a| matches!(a, Action::Abort(_))));
            assert_eq!(self.st.next_wake(), None);
        }
        step
    }

    pub fn tick_to(&mut self, t: i64) -> Step {
        assert!(t >= self.now, "time does not go back");
        self.now = t;
        self.apply(Input::Tick)
    }

    pub fn node_index(&self, id: &str) -> usize {
        *self.plan.index.get(id).unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn status(&self, id: &str) -> NodeStatus {
        self.st.nodes[self.node_index(id)].status
    }

    pub fn output(&self, id: &str) -> Option<&Value> {
        self.st.nodes[self.node_index(id)].output.as_ref()
    }

    /// The in-flight tasks of node `id`.
    pub fn tasks_of(&self, id: &str) -> Vec<Task> {
        self.in_flight.iter().filter(|t| t.node_id == id).cloned().collect()
    }

    /// The single in-flight task of node `id`.
    pub fn task(&self, id: &str) -> Task {
        let ts = self.tasks_of(id);
        assert_eq!(ts.len(), 1, "expected one task of {id} in flight, have {:?}", self.in_flight);
        ts.into_iter().next().unwrap()
    }

    /// Feeds back the outcome of the given task.
    pub fn done(&mut self, id: TaskId, outcome: Outcome) -> Step {
        self.in_flight.retain(|t| t.id != id);
        self.apply(Input::Done { task: id, outcome })
    }

    /// Completes the single in-flight task of node `id`.
    pub fn finish(&mut self, node: &str, outcome: Outcome) -> Step {
        let t = self.task(node);
        self.done(t.id, outcome)
    }

    /// Drives the run to the end: completes in-flight tasks oldest first with scripted
    /// outcomes, and advances the clock to the next timer when nothing is in flight.
    pub fn run_to_end(&mut self) {
        for _ in 0..10_000 {
            if self.st.status.is_terminal() {
                return;
            }
            if let Some(t) = self.in_flight.first().cloned() {
                let outcome = self.next_outcome(&t);
                self.done(t.id, outcome);
            } else if let Some(w) = self.st.next_wake() {
                let w = w.max(self.now);
                self.tick_to(w);
            } else {
                panic!("run is stuck: {:#?}", self.st);
            }
        }
        panic!("run did not end");
    }

    pub fn next_outcome(&mut self, t: &Task) -> Outcome {
        self.script.get_mut(&t.node_id).and_then(VecDeque::pop_front).unwrap_or_else(|| ok(json!({})))
    }

    /// Event kinds in order, optionally for one node.
    pub fn kinds(&self, node: Option<&str>) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| node.is_none() || e.node_id.as_deref() == node)
            .map(|e| e.kind.clone())
            .collect()
    }

    pub fn count(&self, kind: &str, node: &str) -> usize {
        self.events.iter().filter(|e| e.kind == kind && e.node_id.as_deref() == Some(node)).count()
    }

    /// Seq of the first event of `kind` for `node`.
    pub fn seq_of(&self, kind: &str, node: &str) -> u64 {
        self.events
            .iter()
            .find(|e| e.kind == kind && e.node_id.as_deref() == Some(node))
            .unwrap_or_else(|| panic!("no {kind} for {node}"))
            .seq
    }

    pub fn last_kind(&self) -> &str {
        &self.events.last().expect("some event").kind
    }

    /// Dispatches ever made for node `id`.
    pub fn dispatches_of(&self, id: &str) -> Vec<Task> {
        self.dispatched.iter().filter(|t| t.node_id == id).cloned().collect()
    }

    /// The engine's view of what is in flight, rebuilt from the state.
    pub fn rebuilt_in_flight(&self) -> Vec<Task> {
        in_flight(&self.plan, &self.st)
    }
}
