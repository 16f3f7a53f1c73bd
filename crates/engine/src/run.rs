//! The run state machine. One function, [`apply`], moves a run forward.

use serde_json::{Map, Value, json};

use aob_model::config::NodeConfig;
use aob_model::refs::{self, Scope};
use aob_model::{EdgeOn, Join, NodeKind, OnError};

use crate::plan::{EdgeKind, Plan};
use crate::state::*;

/// Grace added to an attempt's timeout before the engine declares it lost; the
/// executor enforces the timeout itself, this only catches attempts that vanished.
const DEADLINE_GRACE_MS: i64 = 5_000;

/// `ms` milliseconds after `now`, saturating: validation bounds workflow durations,
/// but a stored run of an older version may carry any `u64`, and `as i64` would wrap
/// a huge one into the past.
fn later(now: i64, ms: u64) -> i64 {
    now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Start,
    Done {
        task: TaskId,
        outcome: Outcome,
    },
    /// Time passed: fire due retries, waits and attempt deadlines.
    Tick,
    Cancel {
        reason: String,
    },
    Pause,
    Resume,
    /// The run was moved onto a patched plan (see `patch::rebase`): record it and
    /// decide the pending nodes whose incoming edges changed.
    Patched {
        seq: u64,
        by: String,
        description: String,
        node_id: Option<String>,
        workflow: String,
    },
    /// Re-run `node` of a finished run (and everything downstream of it).
    Replay {
        node: u32,
        by: String,
        reason: String,
    },
    /// A person's decision on the approval of a waiting `hitl` node.
    Decide {
        node: u32,
        activation: u32,
        decision: Decision,
    },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub approved: bool,
    pub comment: Option<String>,
    pub by: String,
    pub data: Value,
}

/// The id of the approval a `hitl` node's activation creates: stable, so a replayed
/// transition names the same approval.
pub fn approval_id(run_id: &str, node: usize, activation: u32) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{run_id}:{node}:{activation}").as_bytes());
    let hex: String = d[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("apr_{hex}")
}

// Boxing the task would change the public API for a few hundred bytes per step.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Dispatch(Task),
    /// Stop an in-flight attempt; its late result will be ignored anyway.
    Abort(TaskId),
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Step {
    pub events: Vec<Event>,
    pub actions: Vec<Action>,
}

impl Step {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.actions.is_empty()
    }
}

/// Applies one input at time `now` (unix ms). Inputs that do not apply to the current
/// state (a duplicate completion, a stale attempt, cancel of a finished run) change nothing.
pub fn apply(plan: &Plan, st: &mut RunState, input: Input, now: i64) -> Step {
    let mut m = Machine {
        plan,
        st,
        now,
        step: Step::default(),
        inline: 0,
    };
    if let Input::Replay { node, by, reason } = &input {
        if m.st.status.is_terminal() && (*node as usize) < m.plan.nodes.len() {
            m.replay(*node as usize, by, reason);
            m.advance();
            m.refresh_status();
            m.check_done();
        }
        return m.step;
    }
    if m.st.status.is_terminal() {
        return m.step;
    }
    match input {
        Input::Start => m.start(),
        Input::Done { task, outcome } => m.done(task, outcome),
        Input::Tick => m.tick(),
        Input::Cancel { reason } => {
            m.cancel(reason);
            return m.step;
        }
        Input::Pause => m.pause(),
        Input::Resume => m.resume(),
        Input::Decide { node, activation, decision } => m.decide(node as usize, activation, decision),
        Input::Patched {
            seq,
            by,
            description,
            node_id,
            workflow,
        } => {
            let data = json!({"seq": seq, "by": by, "description": description, "node_id": node_id, "workflow": workflow});
            m.emit("patch_applied", None, None, data);
            let pending = (0..m.st.nodes.len()).filter(|&i| m.st.nodes[i].status == NodeStatus::Pending).collect();
            m.settle(pending);
        }
        Input::Replay { .. } => {}
    }
    m.advance();
    m.refresh_status();
    m.check_done();
    m.check_event_limit();
    m.step
}

/// The tasks a run has in flight, rebuilt from its state: what a restarted process
/// dispatches again (same attempt ids, so effects can deduplicate).
pub fn in_flight(plan: &Plan, st: &RunState) -> Vec<Task> {
    let mut out = Vec::new();
    if st.status.is_terminal() {
        return out;
    }
    let m = Machine {
        plan,
        st: &mut st.clone(),
        now: 0,
        step: Step::default(),
        inline: 0,
    };
    for (i, n) in st.nodes.iter().enumerate() {
        if n.status != NodeStatus::Running {
            continue;
        }
        match plan.nodes[i].kind {
            NodeKind::Wait => {}
            NodeKind::Map => {
                if let Some(ms) = &n.map {
                    for (it, s) in ms.item_states.iter().enumerate() {
                        if s.status == NodeStatus::Running
                            && let Ok(t) = m.item_task(i, it, s.attempt)
                        {
                            out.push(t);
                        }
                    }
                }
            }
            _ => {
                if let Ok(t) = m.node_task(i, n.attempt) {
                    out.push(t);
                }
            }
        }
    }
    out
}

struct Machine<'a> {
    plan: &'a Plan,
    st: &'a mut RunState,
    now: i64,
    step: Step,
    /// Inline nodes begun in this transition (see `RunSettings::inline_steps`).
    inline: u64,
}

impl Machine<'_> {
    fn emit(&mut self, kind: &str, node: Option<usize>, attempt: Option<u32>, data: Value) {
        self.st.seq += 1;
        self.step.events.push(Event {
            seq: self.st.seq,
            kind: kind.to_string(),
            node_id: node.map(|i| self.plan.nodes[i].id.clone()),
            attempt,
            at: self.now,
            data,
        });
    }

    fn start(&mut self) {
        if self.st.status != RunStatus::Queued {
            return;
        }
        self.st.status = RunStatus::Running;
        self.st.started_at = Some(self.now);
        let data = json!({"workflow": self.plan.hash, "inputs": self.st.inputs});
        self.emit("workflow_started", None, None, data);
        for &i in &self.plan.entries {
            self.st.nodes[i].status = NodeStatus::Ready;
        }
    }

    fn pause(&mut self) {
        if matches!(self.st.status, RunStatus::Running | RunStatus::WaitingForApproval | RunStatus::Queued) {
            self.st.paused = true;
            self.st.status = RunStatus::Paused;
            self.emit("workflow_paused", None, None, json!({}));
        }
    }

    fn resume(&mut self) {
        if self.st.status == RunStatus::Paused {
            self.st.paused = false;
            self.st.status = if self.st.started_at.is_some() {
                RunStatus::Running
            } else {
                RunStatus::Queued
            };
            self.emit("workflow_resumed", None, None, json!({}));
            if self.st.status == RunStatus::Queued {
                self.start();
            }
            // Map items are held back while paused (see `fill_map`); a running map is
            // not `Ready`, so `advance` would never look at it again: refill it here.
            for i in 0..self.st.nodes.len() {
                if self.plan.nodes[i].kind == NodeKind::Map && self.st.nodes[i].status == NodeStatus::Running {
                    self.fill_map(i);
                }
            }
        }
    }

    /// Aborts every attempt in flight and cancels every node that still owed work.
    fn stop_all(&mut self) {
        self.abort_all();
        for n in &mut self.st.nodes {
            if n.status.is_active() {
                n.status = NodeStatus::Cancelled;
                n.finished_at = Some(self.now);
                n.due_at = None;
                n.deadline = None;
            }
        }
    }

    fn cancel(&mut self, reason: String) {
        self.stop_all();
        self.st.status = RunStatus::Cancelled;
        self.st.paused = false;
        self.st.completed_at = Some(self.now);
        self.emit("workflow_cancelled", None, None, json!({"reason": reason}));
    }

    /// Stops an attempt. An attempt dispatched earlier in this same step was never sent:
    /// drop its dispatch instead, so that a step never both starts and stops a task and a
    /// run that ends in this step dispatches nothing.
    fn abort(&mut self, id: TaskId) {
        let before = self.step.actions.len();
        self.step.actions.retain(|a| !matches!(a, Action::Dispatch(t) if t.id == id));
        if self.step.actions.len() == before {
            self.step.actions.push(Action::Abort(id));
        }
    }

    fn abort_all(&mut self) {
        for i in 0..self.st.nodes.len() {
            self.abort_node(i);
        }
    }

    /// Aborts the attempts node `i` has in flight (none unless it is running).
    fn abort_node(&mut self, i: usize) {
        let n = &self.st.nodes[i];
        if n.status != NodeStatus::Running {
            return;
        }
        let mut aborts = Vec::new();
        match self.plan.nodes[i].kind {
            NodeKind::Wait => {}
            NodeKind::Map => {
                if let Some(ms) = &n.map {
                    for (it, s) in ms.item_states.iter().enumerate() {
                        if s.status == NodeStatus::Running {
                            let id = TaskId {
                                node: i as u32,
                                activation: n.activation,
                                item: Some(it as u32),
                                attempt: s.attempt,
                            };
                            aborts.push(id);
                        }
                    }
                }
            }
            _ => {
                let id = TaskId {
                    node: i as u32,
                    activation: n.activation,
                    item: None,
                    attempt: n.attempt,
                };
                aborts.push(id);
            }
        }
        for id in aborts {
            self.abort(id);
        }
    }

    fn done(&mut self, task: TaskId, outcome: Outcome) {
        let i = task.node as usize;
        let Some(n) = self.st.nodes.get(i) else {
            return;
        };
        if n.activation != task.activation || n.status != NodeStatus::Running {
            return;
        }
        match task.item {
            None => {
                // Map and wait nodes have no node-level task: only their items / the timer
                // finish them, never a completion naming the node itself.
                if n.attempt != task.attempt || matches!(self.plan.nodes[i].kind, NodeKind::Map | NodeKind::Wait) {
                    return;
                }
                match outcome {
                    Outcome::Ok(v) => self.complete(i, v, None),
                    Outcome::Err(e) => self.attempt_failed(i, e),
                }
            }
            Some(it) => self.item_done(i, it as usize, task.attempt, outcome),
        }
    }

    fn decide(&mut self, i: usize, activation: u32, d: Decision) {
        let Some(n) = self.st.nodes.get(i) else { return };
        if n.status != NodeStatus::WaitingForApproval || n.activation != activation {
            return;
        }
        let id = approval_id(&self.st.run_id, i, activation);
        let output = json!({
            "approved": d.approved,
            "comment": d.comment,
            "approved_by": d.by,
            "decided_at_ms": self.now,
            "data": d.data,
        });
        let mut event = output.clone();
        event["approval_id"] = json!(id);
        event["status"] = json!(if d.approved { "approved" } else { "rejected" });
        let attempt = n.attempt;
        self.emit("approval_decided", Some(i), Some(attempt), event);
        self.complete(i, output, None);
    }

    /// Resets `i` and everything downstream of it, and the attempts the run's end
    /// cancelled, then readies them again.
    fn replay(&mut self, i: usize, by: &str, reason: &str) {
        let mut reset = crate::patch::downstream(self.plan, i);
        let cancelled: Vec<usize> = (0..self.st.nodes.len()).filter(|&v| self.st.nodes[v].status == NodeStatus::Cancelled).collect();
        for &c in &cancelled {
            for v in crate::patch::downstream(self.plan, c) {
                if !reset.contains(&v) {
                    reset.push(v);
                }
            }
        }
        for &v in &reset {
            let n = &mut self.st.nodes[v];
            *n = NodeState {
                activation: n.activation + 1,
                ..NodeState::new()
            };
            for &k in &self.plan.nodes[v].outgoing {
                self.st.edges[k] = Token::Pending;
            }
        }
        self.st.status = RunStatus::Running;
        self.st.paused = false;
        self.st.error = None;
        self.st.outputs = None;
        self.st.completed_at = None;
        let ids: Vec<&str> = reset.iter().map(|&v| self.plan.nodes[v].id.as_str()).collect();
        let data = json!({"node_id": self.plan.nodes[i].id, "by": by, "reason": reason, "reset": ids});
        self.emit("node_replayed", Some(i), None, data);
        self.st.nodes[i].status = NodeStatus::Ready;
        for c in cancelled {
            if c != i && self.st.nodes[c].status == NodeStatus::Pending {
                self.st.nodes[c].status = NodeStatus::Ready;
            }
        }
        // Nodes downstream whose inputs are already decided settle now.
        let pending = reset.into_iter().filter(|&v| self.st.nodes[v].status == NodeStatus::Pending).collect();
        self.settle(pending);
    }

    /// An approval whose time ran out follows the node's `on_timeout`.
    fn approval_timed_out(&mut self, i: usize) {
        let NodeConfig::Hitl(h) = &self.plan.nodes[i].config else { return };
        let id = approval_id(&self.st.run_id, i, self.st.nodes[i].activation);
        let attempt = self.st.nodes[i].attempt;
        let approved = match h.on_timeout {
            aob_model::config::OnTimeout::Approve => Some(true),
            aob_model::config::OnTimeout::Reject => Some(false),
            aob_model::config::OnTimeout::Fail => None,
        };
        let output = json!({
            "approved": approved.unwrap_or(false),
            "comment": null,
            "approved_by": null,
            "decided_at_ms": self.now,
            "data": null,
            "timed_out": true,
        });
        let mut event = output.clone();
        event["approval_id"] = json!(id);
        event["status"] = json!("timed_out");
        self.emit("approval_decided", Some(i), Some(attempt), event);
        match approved {
            Some(_) => self.complete(i, output, None),
            None => self.fail_node(i, TaskError::new("approval_timeout", "no decision before the approval timed out", false)),
        }
    }

    /// RUNNING while anything can progress; WAITING_FOR_APPROVAL while only approvals can.
    fn refresh_status(&mut self) {
        if !matches!(self.st.status, RunStatus::Running | RunStatus::WaitingForApproval) {
            return;
        }
        let busy = self
            .st
            .nodes
            .iter()
            .any(|n| matches!(n.status, NodeStatus::Ready | NodeStatus::Running | NodeStatus::Retrying));
        let waiting = self.st.nodes.iter().any(|n| n.status == NodeStatus::WaitingForApproval);
        self.st.status = if !busy && waiting {
            RunStatus::WaitingForApproval
        } else {
            RunStatus::Running
        };
    }

    fn tick(&mut self) {
        let now = self.now;
        for i in 0..self.st.nodes.len() {
            let n = &self.st.nodes[i];
            match n.status {
                NodeStatus::WaitingForApproval if n.due_at.is_some_and(|t| t <= now) => self.approval_timed_out(i),
                NodeStatus::Retrying if n.due_at.is_some_and(|t| t <= now) => {
                    let n = &mut self.st.nodes[i];
                    n.due_at = None;
                    n.status = NodeStatus::Ready;
                }
                NodeStatus::Running => {
                    if self.plan.nodes[i].kind == NodeKind::Wait {
                        if let Some(t) = n.due_at.filter(|t| *t <= now) {
                            self.complete(i, json!({"waited_until_ms": t}), None);
                        }
                    } else if self.plan.nodes[i].kind == NodeKind::Map {
                        self.tick_map(i);
                    } else if n.deadline.is_some_and(|t| t <= now) {
                        let id = TaskId {
                            node: i as u32,
                            activation: n.activation,
                            item: None,
                            attempt: n.attempt,
                        };
                        self.step.actions.push(Action::Abort(id));
                        self.attempt_failed(i, TaskError::new("timeout", "attempt timed out (lost or unresponsive worker)", true));
                    }
                }
                _ => {}
            }
            if self.st.status.is_terminal() {
                return;
            }
        }
    }

    /// Runs every ready node. Inline nodes complete here and may make more nodes ready.
    fn advance(&mut self) {
        if self.st.paused || self.st.status.is_terminal() {
            return;
        }
        loop {
            let ready: Vec<usize> = (0..self.st.nodes.len()).filter(|&i| self.st.nodes[i].status == NodeStatus::Ready).collect();
            if ready.is_empty() {
                return;
            }
            for i in ready {
                if self.st.status.is_terminal() {
                    return;
                }
                if self.st.nodes[i].status != NodeStatus::Ready {
                    continue;
                }
                if self.plan.nodes[i].kind.is_inline() {
                    if self.inline >= self.st.settings.inline_steps() {
                        self.yield_ready();
                        return;
                    }
                    self.inline += 1;
                }
                self.st.nodes[i].due_at = None;
                self.begin(i);
            }
        }
    }

    /// Leaves the ready nodes for a later transition: a timer due now (`due_at` of a
    /// ready node) brings the run back after the engine has served other runs, and
    /// survives a restart like any timer.
    fn yield_ready(&mut self) {
        let now = self.now;
        for n in &mut self.st.nodes {
            if n.status == NodeStatus::Ready {
                n.due_at = Some(now);
            }
        }
    }

    /// A run that has appended its quota of events fails; the failure's own events are
    /// the last it appends.
    fn check_event_limit(&mut self) {
        let max = self.st.settings.max_events();
        if self.st.status.is_terminal() || self.st.seq < max {
            return;
        }
        self.stop_all();
        let error = json!({"code": "event_limit_exceeded", "message": format!("the run appended {} events; the limit is {max}", self.st.seq)});
        self.st.error = Some(error.clone());
        self.st.status = RunStatus::Failed;
        self.st.paused = false;
        self.st.completed_at = Some(self.now);
        self.emit("workflow_failed", None, None, json!({"error": error}));
    }

    fn scope_value(&self, i: usize) -> Option<&Value> {
        let n = &self.st.nodes[i];
        n.output.as_ref().or(n.error.as_ref())
    }

    /// The node's input: the run inputs for an entry node, the single taken
    /// predecessor's output, or an object of all taken predecessors' outputs.
    fn node_input(&self, i: usize) -> Value {
        let taken: Vec<usize> = self.plan.nodes[i]
            .incoming
            .iter()
            .filter(|&&k| self.st.edges[k] == Token::Taken)
            .map(|&k| self.plan.edges[k].from)
            .collect();
        match taken.as_slice() {
            [] => self.st.inputs.clone(),
            [one] => self.scope_value(*one).cloned().unwrap_or(Value::Null),
            many => {
                let mut m = Map::new();
                for &j in many {
                    m.insert(self.plan.nodes[j].id.clone(), self.scope_value(j).cloned().unwrap_or(Value::Null));
                }
                Value::Object(m)
            }
        }
    }

    fn resolve(&self, value: &Value, item: Option<(&Value, usize)>) -> Result<Value, refs::RefError> {
        let lookup = |id: &str| self.plan.index.get(id).and_then(|&j| self.st.nodes[j].output.as_ref());
        let scope = Scope {
            inputs: &self.st.inputs,
            node: &lookup,
            item,
        };
        refs::resolve(value, &scope)
    }

    fn nodes_value(&self) -> Value {
        let mut m = Map::new();
        for (j, n) in self.st.nodes.iter().enumerate() {
            if let Some(o) = &n.output {
                m.insert(self.plan.nodes[j].id.clone(), o.clone());
            }
        }
        Value::Object(m)
    }

    fn begin(&mut self, i: usize) {
        let node = &self.plan.nodes[i];
        match &node.config {
            NodeConfig::Noop(c) => {
                let output = match &c.output {
                    Some(o) => match self.resolve(o, None) {
                        Ok(v) => v,
                        Err(e) => {
                            return self.fail_early(i, TaskError::new("reference_error", e.to_string(), false));
                        }
                    },
                    None => self.node_input(i),
                };
                self.start_inline(i);
                self.complete(i, output, None);
            }
            NodeConfig::Conditional(_) => {
                let output = self.node_input(i);
                self.start_inline(i);
                self.complete(i, output, None);
            }
            NodeConfig::Aggregate => {
                let mut m = Map::new();
                for &k in &node.incoming {
                    if self.st.edges[k] == Token::Taken {
                        let j = self.plan.edges[k].from;
                        m.insert(self.plan.nodes[j].id.clone(), self.scope_value(j).cloned().unwrap_or(Value::Null));
                    }
                }
                self.start_inline(i);
                self.complete(i, Value::Object(m), None);
            }
            NodeConfig::Loop(_) => {
                let body_output = self.node_input(i);
                self.start_inline(i);
                self.loop_step(i, body_output);
            }
            NodeConfig::Wait(w) => {
                let due = match (w.duration_ms, &w.until) {
                    (Some(ms), _) => Ok(later(self.now, ms)),
                    (None, Some(u)) => match self.resolve(&Value::String(u.clone()), None) {
                        Ok(Value::String(s)) => aob_model::config::parse_instant_ms(&s).ok_or_else(|| format!("until '{s}' is not an RFC 3339 instant")),
                        Ok(Value::Number(n)) => n.as_i64().ok_or_else(|| "until is not an integer".to_string()),
                        Ok(other) => Err(format!("until resolved to {other}, not an RFC 3339 instant")),
                        Err(e) => Err(e.to_string()),
                    },
                    (None, None) => Err("wait needs duration_ms or until".to_string()),
                };
                match due {
                    Ok(t) => {
                        let n = &mut self.st.nodes[i];
                        n.status = NodeStatus::Running;
                        n.attempt = 1;
                        n.started_at = Some(self.now);
                        n.due_at = Some(t);
                        self.emit("node_started", Some(i), Some(1), json!({"type": "wait", "until_ms": t}));
                    }
                    Err(msg) => self.fail_early(i, TaskError::new("invalid_config", msg, false)),
                }
            }
            NodeConfig::Map(mc) => {
                let items = match self.resolve(&mc.items, None) {
                    Ok(Value::Array(items)) => items,
                    Ok(other) => {
                        let kind = json_kind(&other);
                        return self.fail_early(
                            i,
                            TaskError::new("invalid_items", format!("map items resolved to {kind}, expected an array"), false),
                        );
                    }
                    Err(e) => {
                        return self.fail_early(i, TaskError::new("reference_error", e.to_string(), false));
                    }
                };
                let count = items.len();
                let max = self.st.settings.max_map_items();
                if count as u64 > max {
                    return self.fail_early(
                        i,
                        TaskError::new("too_many_items", format!("map items resolved to {count} items; the limit is {max}"), false),
                    );
                }
                let n = &mut self.st.nodes[i];
                n.status = NodeStatus::Running;
                n.attempt = 1;
                n.started_at = Some(self.now);
                n.map = Some(MapState {
                    results: vec![None; count],
                    item_states: vec![
                        ItemState {
                            status: NodeStatus::Pending,
                            attempt: 0,
                            due_at: None,
                            deadline: None
                        };
                        count
                    ],
                    items,
                    concurrency: mc.concurrency.max(1),
                    step_config: mc.node.config.clone(),
                });
                self.emit("node_started", Some(i), Some(1), json!({"type": "map", "items": count}));
                if count == 0 {
                    self.complete(i, json!([]), None);
                } else {
                    self.fill_map(i);
                }
            }
            NodeConfig::Hitl(h) => {
                let rendered = self.resolve(&Value::String(h.message.clone()), None).and_then(|m| match &h.data {
                    Some(d) => self.resolve(d, None).map(|d| (m, d)),
                    None => Ok((m, Value::Null)),
                });
                let (message, data) = match rendered {
                    Ok(v) => v,
                    Err(e) => {
                        return self.fail_early(i, TaskError::new("reference_error", e.to_string(), false));
                    }
                };
                let due = h.timeout_ms.map(|t| later(self.now, t));
                let activation = self.st.nodes[i].activation;
                let id = approval_id(&self.st.run_id, i, activation);
                let n = &mut self.st.nodes[i];
                n.status = NodeStatus::WaitingForApproval;
                n.attempt = 1;
                n.started_at = Some(self.now);
                n.due_at = due;
                self.emit("node_started", Some(i), Some(1), json!({"type": "hitl"}));
                let event = json!({
                    "approval_id": id,
                    "activation": activation,
                    "message": message,
                    "data": data,
                    "approvers": h.approvers,
                    "timeout_at_ms": due,
                    "on_timeout": h.on_timeout,
                });
                self.emit("approval_required", Some(i), Some(1), event);
            }
            _ => self.dispatch_attempt(i),
        }
    }

    fn start_inline(&mut self, i: usize) {
        let n = &mut self.st.nodes[i];
        n.status = NodeStatus::Running;
        n.attempt += 1;
        n.started_at = Some(self.now);
        let attempt = n.attempt;
        let kind = self.plan.nodes[i].kind;
        self.emit("node_started", Some(i), Some(attempt), json!({"type": kind}));
    }

    /// A failure found before any attempt ran (bad reference, bad items).
    fn fail_early(&mut self, i: usize, err: TaskError) {
        let n = &mut self.st.nodes[i];
        if n.attempt == 0 {
            n.attempt = 1;
        }
        n.started_at.get_or_insert(self.now);
        self.fail_node(i, err);
    }

    fn node_task(&self, i: usize, attempt: u32) -> Result<Task, refs::RefError> {
        let node = &self.plan.nodes[i];
        let config = if node.kind == NodeKind::Subworkflow {
            // An inline child workflow is the child's own document: its references
            // belong to the child run, so only the parent-side fields are resolved.
            let mut raw = node.raw_config.clone();
            let child = raw.as_object_mut().and_then(|o| o.remove("workflow"));
            let mut resolved = self.resolve(&raw, None)?;
            if let (Some(obj), Some(child)) = (resolved.as_object_mut(), child) {
                obj.insert("workflow".into(), child);
            }
            resolved
        } else {
            self.resolve(&node.raw_config, None)?
        };
        let n = &self.st.nodes[i];
        Ok(Task {
            run_id: self.st.run_id.clone(),
            id: TaskId {
                node: i as u32,
                activation: n.activation,
                item: None,
                attempt,
            },
            node_id: node.id.clone(),
            kind: node.kind,
            config,
            input: self.node_input(i),
            timeout_ms: node.timeout_ms,
            owner: String::new(),
        })
    }

    fn item_task(&self, i: usize, it: usize, attempt: u32) -> Result<Task, refs::RefError> {
        let node = &self.plan.nodes[i];
        let n = &self.st.nodes[i];
        let Some(ms) = &n.map else {
            return Err(refs::RefError {
                reference: "$item".into(),
                message: "map state missing".into(),
            });
        };
        let item = ms.items.get(it).cloned().unwrap_or(Value::Null);
        let config = self.resolve(&ms.step_config, Some((&item, it)))?;
        let kind = match &node.config {
            NodeConfig::Map(mc) => NodeKind::parse(&mc.node.kind).unwrap_or(NodeKind::Noop),
            _ => NodeKind::Noop,
        };
        Ok(Task {
            run_id: self.st.run_id.clone(),
            id: TaskId {
                node: i as u32,
                activation: n.activation,
                item: Some(it as u32),
                attempt,
            },
            node_id: node.id.clone(),
            kind,
            config,
            input: item,
            timeout_ms: node.timeout_ms,
            owner: String::new(),
        })
    }

    fn deadline(&self, i: usize) -> Option<i64> {
        self.plan.nodes[i].timeout_ms.map(|t| later(self.now, t).saturating_add(DEADLINE_GRACE_MS))
    }

    fn dispatch_attempt(&mut self, i: usize) {
        let attempt = self.st.nodes[i].attempt + 1;
        match self.node_task(i, attempt) {
            Err(e) => {
                self.st.nodes[i].attempt = attempt;
                self.fail_early(i, TaskError::new("reference_error", e.to_string(), false));
            }
            Ok(task) => {
                let deadline = self.deadline(i);
                let n = &mut self.st.nodes[i];
                n.status = NodeStatus::Running;
                n.attempt = attempt;
                n.started_at.get_or_insert(self.now);
                n.deadline = deadline;
                let kind = self.plan.nodes[i].kind;
                self.emit("node_started", Some(i), Some(attempt), json!({"type": kind}));
                self.step.actions.push(Action::Dispatch(task));
            }
        }
    }

    fn fill_map(&mut self, i: usize) {
        // Pause stops new dispatch, map items included: item completions and due item
        // retries arrive while paused and would otherwise start more items.
        if self.st.paused {
            return;
        }
        loop {
            let Some(ms) = self.st.nodes[i].map.as_ref() else {
                return;
            };
            let running = ms.item_states.iter().filter(|s| s.status == NodeStatus::Running).count() as u32;
            if running >= ms.concurrency {
                return;
            }
            let Some(it) = ms
                .item_states
                .iter()
                .position(|s| s.status == NodeStatus::Pending || s.status == NodeStatus::Ready)
            else {
                return;
            };
            if !self.dispatch_item(i, it) {
                return;
            }
        }
    }

    /// Returns false when the item could not be dispatched (and the node failed).
    fn dispatch_item(&mut self, i: usize, it: usize) -> bool {
        let attempt = self.st.nodes[i].map.as_ref().map_or(0, |m| m.item_states[it].attempt) + 1;
        match self.item_task(i, it, attempt) {
            Err(e) => {
                self.abort_map_items(i);
                self.fail_node(i, TaskError::new("reference_error", format!("item {it}: {e}"), false));
                false
            }
            Ok(task) => {
                let deadline = self.deadline(i);
                if let Some(ms) = self.st.nodes[i].map.as_mut() {
                    let s = &mut ms.item_states[it];
                    s.status = NodeStatus::Running;
                    s.attempt = attempt;
                    s.due_at = None;
                    s.deadline = deadline;
                }
                self.step.actions.push(Action::Dispatch(task));
                true
            }
        }
    }

    fn abort_map_items(&mut self, i: usize) {
        let activation = self.st.nodes[i].activation;
        let mut aborts = Vec::new();
        if let Some(ms) = self.st.nodes[i].map.as_mut() {
            for (it, s) in ms.item_states.iter_mut().enumerate() {
                if s.status == NodeStatus::Running {
                    aborts.push(TaskId {
                        node: i as u32,
                        activation,
                        item: Some(it as u32),
                        attempt: s.attempt,
                    });
                    s.status = NodeStatus::Cancelled;
                }
            }
        }
        for id in aborts {
            self.abort(id);
        }
    }

    fn item_done(&mut self, i: usize, it: usize, attempt: u32, outcome: Outcome) {
        let max = self.plan.nodes[i].max_attempts();
        let seed = format!("{}:{}:{}:{it}", self.st.run_id, i, self.st.nodes[i].activation);
        let policy = self.plan.nodes[i].retry.clone();
        let now = self.now;
        let Some(ms) = self.st.nodes[i].map.as_mut() else {
            return;
        };
        let Some(s) = ms.item_states.get_mut(it) else {
            return;
        };
        if s.status != NodeStatus::Running || s.attempt != attempt {
            return;
        }
        match outcome {
            Outcome::Ok(v) => {
                s.status = NodeStatus::Completed;
                s.deadline = None;
                ms.results[it] = Some(v);
                if ms.item_states.iter().all(|s| s.status == NodeStatus::Completed) {
                    let results: Vec<Value> = ms.results.iter_mut().map(|r| r.take().unwrap_or(Value::Null)).collect();
                    self.complete(i, Value::Array(results), None);
                } else {
                    self.fill_map(i);
                }
            }
            Outcome::Err(e) => {
                if e.retryable && attempt < max {
                    let delay = policy.as_ref().map_or(0, |p| crate::retry_delay_ms(p, attempt, &seed));
                    s.status = NodeStatus::Retrying;
                    s.deadline = None;
                    s.due_at = Some(later(now, delay));
                    let data = json!({"item": it, "error": e.to_value(), "delay_ms": delay, "next_attempt_at_ms": later(now, delay)});
                    self.emit("node_retrying", Some(i), Some(attempt), data);
                } else {
                    s.status = NodeStatus::Failed;
                    self.abort_map_items(i);
                    let err = TaskError::new(e.code, format!("item {it}: {}", e.message), false);
                    self.fail_node(i, err);
                }
            }
        }
    }

    fn tick_map(&mut self, i: usize) {
        let now = self.now;
        let activation = self.st.nodes[i].activation;
        let mut due = Vec::new();
        let mut lost = Vec::new();
        if let Some(ms) = self.st.nodes[i].map.as_mut() {
            for (it, s) in ms.item_states.iter_mut().enumerate() {
                if s.status == NodeStatus::Retrying && s.due_at.is_some_and(|t| t <= now) {
                    s.status = NodeStatus::Ready;
                    s.due_at = None;
                    due.push(it);
                } else if s.status == NodeStatus::Running && s.deadline.is_some_and(|t| t <= now) {
                    lost.push((it, s.attempt));
                }
            }
        }
        for (it, attempt) in lost {
            self.step.actions.push(Action::Abort(TaskId {
                node: i as u32,
                activation,
                item: Some(it as u32),
                attempt,
            }));
            self.item_done(
                i,
                it,
                attempt,
                Outcome::Err(TaskError::new("timeout", "attempt timed out (lost or unresponsive worker)", true)),
            );
        }
        if !due.is_empty() && self.st.nodes[i].status == NodeStatus::Running {
            self.fill_map(i);
        }
    }

    fn attempt_failed(&mut self, i: usize, e: TaskError) {
        let n = &self.st.nodes[i];
        let attempt = n.attempt;
        if e.retryable && attempt < self.plan.nodes[i].max_attempts() {
            let seed = format!("{}:{}:{}", self.st.run_id, i, n.activation);
            let delay = self.plan.nodes[i].retry.as_ref().map_or(0, |p| crate::retry_delay_ms(p, attempt, &seed));
            let due = later(self.now, delay);
            let n = &mut self.st.nodes[i];
            n.status = NodeStatus::Retrying;
            n.deadline = None;
            n.due_at = Some(due);
            let data = json!({"error": e.to_value(), "delay_ms": delay, "next_attempt_at_ms": due});
            self.emit("node_retrying", Some(i), Some(attempt), data);
        } else {
            self.fail_node(i, e);
        }
    }

    /// Decides each out-edge of a finished node. `output` is what conditions see.
    fn route(&mut self, i: usize, output: &Value, failed: bool, exit: Option<EdgeKind>) -> Result<Vec<(usize, Token)>, String> {
        let continue_on_error = self.plan.nodes[i].on_error == OnError::Continue;
        let mut nodes_cache: Option<Value> = None;
        let mut out = Vec::new();
        for &k in &self.plan.nodes[i].outgoing {
            let e = &self.plan.edges[k];
            let follows = match (e.kind, exit) {
                (EdgeKind::Break, x) => x == Some(EdgeKind::Break),
                (EdgeKind::Timeout, x) => x == Some(EdgeKind::Timeout),
                (EdgeKind::Normal, _) => match e.on {
                    EdgeOn::Success => !failed || continue_on_error,
                    EdgeOn::Failure => failed,
                    EdgeOn::Always => true,
                },
            };
            let token = if !follows {
                Token::Skipped
            } else if let Some(c) = &e.condition {
                // Every output of the run is copied only for a condition that reads `nodes`.
                let empty = Value::Object(Map::new());
                let nodes = if c.uses("nodes") {
                    &*nodes_cache.get_or_insert_with(|| self.nodes_value())
                } else {
                    &empty
                };
                match c.eval(output, &self.st.inputs, nodes) {
                    Ok(true) => Token::Taken,
                    Ok(false) => Token::Skipped,
                    Err(msg) => {
                        return Err(format!("edge {} → {}: {msg}", self.plan.nodes[i].id, self.plan.nodes[e.to].id));
                    }
                }
            } else {
                Token::Taken
            };
            out.push((k, token));
        }
        Ok(out)
    }

    fn complete(&mut self, i: usize, output: Value, exit: Option<EdgeKind>) {
        // Record the output before routing: the node's own out-edge conditions see it as
        // `nodes.<id>` too, like every finished node's (and not a previous iteration's).
        self.st.nodes[i].output = Some(output.clone());
        let tokens = match self.route(i, &output, false, exit) {
            Ok(t) => t,
            Err(msg) => return self.fail_node(i, TaskError::new("condition_error", msg, false)),
        };
        let n = &mut self.st.nodes[i];
        n.status = NodeStatus::Completed;
        n.finished_at = Some(self.now);
        n.deadline = None;
        n.due_at = None;
        n.error = None;
        let attempt = n.attempt;
        let duration = n.started_at.map(|s| self.now - s).unwrap_or(0);
        let mut data = json!({"output": output, "duration_ms": duration});
        if let Some(x) = exit {
            data["exit"] = json!(if x == EdgeKind::Break { "break" } else { "timeout" });
        }
        n.output = Some(output);
        self.emit("node_completed", Some(i), Some(attempt), data);
        self.propagate(tokens);
    }

    fn fail_node(&mut self, i: usize, err: TaskError) {
        let error = err.to_value();
        let n = &mut self.st.nodes[i];
        n.status = NodeStatus::Failed;
        n.finished_at = Some(self.now);
        n.deadline = None;
        n.due_at = None;
        n.error = Some(error.clone());
        // A failed node has no output. In a loop body the previous iteration's output
        // would otherwise shadow the error (`scope_value` prefers the output) and be
        // what successors and the loop condition see.
        n.output = None;
        let attempt = n.attempt;
        self.emit("node_failed", Some(i), Some(attempt.max(1)), json!({"error": error}));
        let node = &self.plan.nodes[i];
        let handled = node.on_error == OnError::Continue
            || node
                .outgoing
                .iter()
                .any(|&k| matches!(self.plan.edges[k].on, EdgeOn::Failure | EdgeOn::Always) && self.plan.edges[k].kind == EdgeKind::Normal);
        if !handled {
            return self.fail_run(i, &err);
        }
        let seen = json!({"error": error});
        let tokens = match self.route(i, &seen, true, None) {
            Ok(t) => t,
            Err(msg) => {
                let e = TaskError::new("condition_error", msg, false);
                return self.fail_run(i, &e);
            }
        };
        self.propagate(tokens);
    }

    fn fail_run(&mut self, i: usize, err: &TaskError) {
        self.stop_all();
        let error = json!({"node_id": self.plan.nodes[i].id, "code": err.code, "message": err.message});
        self.st.error = Some(error.clone());
        self.st.status = RunStatus::Failed;
        self.st.paused = false;
        self.st.completed_at = Some(self.now);
        self.emit("workflow_failed", None, None, json!({"error": error}));
    }

    /// Sets edge tokens and resolves their targets: ready, or skipped (which skips onward).
    fn propagate(&mut self, tokens: Vec<(usize, Token)>) {
        let mut work: Vec<usize> = Vec::new();
        for (k, t) in tokens {
            self.st.edges[k] = t;
            work.push(self.plan.edges[k].to);
        }
        self.settle(work);
    }

    /// Decides every pending node in `work` that its incoming tokens now decide.
    fn settle(&mut self, mut work: Vec<usize>) {
        while let Some(t) = work.pop() {
            // A node without incoming edges is an entry: only `start` readies it.
            if self.st.nodes[t].status != NodeStatus::Pending || self.plan.nodes[t].incoming.is_empty() {
                continue;
            }
            let node = &self.plan.nodes[t];
            let taken = node.incoming.iter().any(|&k| self.st.edges[k] == Token::Taken);
            let resolved = node.incoming.iter().all(|&k| self.st.edges[k] != Token::Pending);
            let fire = match node.join {
                Join::Any => taken,
                Join::All => taken && resolved,
            };
            if fire {
                self.st.nodes[t].status = NodeStatus::Ready;
            } else if resolved {
                // Dead-path elimination: nothing will ever arrive, so skip and pass it on.
                self.st.nodes[t].status = NodeStatus::Skipped;
                self.st.nodes[t].finished_at = Some(self.now);
                self.emit("node_skipped", Some(t), None, json!({}));
                for &k in &self.plan.nodes[t].outgoing {
                    self.st.edges[k] = Token::Skipped;
                    work.push(self.plan.edges[k].to);
                }
            }
        }
    }

    fn loop_step(&mut self, i: usize, body_output: Value) {
        let NodeConfig::Loop(cfg) = &self.plan.nodes[i].config else {
            return;
        };
        let iterations = self.st.nodes[i].iterations + 1;
        let go_on = match &self.plan.nodes[i].loop_condition {
            None => true,
            Some(c) => match c.eval(
                &body_output,
                &self.st.inputs,
                &if c.uses("nodes") { self.nodes_value() } else { Value::Object(Map::new()) },
            ) {
                Ok(b) => b,
                Err(msg) => {
                    return self.fail_node(i, TaskError::new("condition_error", msg, false));
                }
            },
        };
        if go_on && iterations < cfg.max_iterations {
            self.st.nodes[i].iterations = iterations;
            let attempt = self.st.nodes[i].attempt;
            self.emit(
                "loop_iteration",
                Some(i),
                Some(attempt),
                json!({"iteration": iterations, "output": body_output}),
            );
            let plan_node = &self.plan.nodes[i];
            for &v in &plan_node.loop_body {
                // A body node can still be running when the loop node fires early
                // (`join: any`); the reset discards that attempt, so stop it too.
                self.abort_node(v);
                let n = &mut self.st.nodes[v];
                n.status = NodeStatus::Pending;
                n.activation += 1;
                n.attempt = 0;
                n.error = None;
                // The previous iteration's output must not leak into this one (stale
                // values for conditions, references and inputs of skipped paths).
                n.output = None;
                n.due_at = None;
                n.deadline = None;
                n.started_at = None;
                n.finished_at = None;
                n.map = None;
            }
            for &k in &plan_node.loop_body_edges {
                self.st.edges[k] = Token::Pending;
            }
            for &k in &plan_node.outgoing {
                self.st.edges[k] = Token::Pending;
            }
            if let Some(start) = plan_node.loop_back_to {
                self.st.nodes[start].status = NodeStatus::Ready;
            }
        } else {
            self.st.nodes[i].iterations = 0;
            let exit = if go_on { EdgeKind::Timeout } else { EdgeKind::Break };
            self.complete(i, body_output, Some(exit));
        }
    }

    fn check_done(&mut self) {
        if !matches!(self.st.status, RunStatus::Running | RunStatus::Paused | RunStatus::WaitingForApproval) {
            return;
        }
        // A run paused before it started has no active node yet, but it is not done.
        if self.st.started_at.is_none() {
            return;
        }
        if self.st.nodes.iter().any(|n| n.status.is_active()) {
            return;
        }
        let outputs = match &self.plan.workflow.outputs {
            Some(spec) => match self.resolve(spec, None) {
                Ok(v) => v,
                Err(e) => {
                    let error = json!({"code": "output_error", "message": e.to_string()});
                    self.st.error = Some(error.clone());
                    self.st.status = RunStatus::Failed;
                    self.st.paused = false;
                    self.st.completed_at = Some(self.now);
                    self.emit("workflow_failed", None, None, json!({"error": error}));
                    return;
                }
            },
            None => {
                let mut m = Map::new();
                for (j, node) in self.plan.nodes.iter().enumerate() {
                    if node.outgoing.is_empty() && self.st.nodes[j].status == NodeStatus::Completed {
                        m.insert(node.id.clone(), self.st.nodes[j].output.clone().unwrap_or(Value::Null));
                    }
                }
                Value::Object(m)
            }
        };
        self.st.outputs = Some(outputs.clone());
        self.st.status = RunStatus::Completed;
        self.st.paused = false;
        self.st.completed_at = Some(self.now);
        self.emit("workflow_completed", None, None, json!({"outputs": outputs}));
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::later;

    #[test]
    fn deadlines_saturate_instead_of_wrapping_into_the_past() {
        assert_eq!(later(1_000, 500), 1_500);
        assert_eq!(later(1_000, u64::MAX), i64::MAX);
        assert_eq!(later(i64::MAX - 1, 10), i64::MAX);
    }
}
