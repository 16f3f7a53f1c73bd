//! JSON shapes served by the API, built from engine and store types.

use serde_json::{Map, Value, json};

use aob_engine::{NodeStatus, Plan, RunState, Token};
use aob_store::{RunRecord, RunSummary, Tag, rfc3339_ms};

fn ts(ms: Option<i64>) -> Value {
    ms.map(|t| Value::String(rfc3339_ms(t))).unwrap_or(Value::Null)
}

pub fn run(rec: &RunRecord) -> Value {
    let s = &rec.state;
    json!({
        "run_id": rec.run_id,
        "status": s.status.as_str(),
        "owner": rec.owner,
        "workflow_hash": rec.workflow_hash,
        "tag": rec.tag,
        "parent_run_id": rec.parent_run_id,
        "inputs": s.inputs,
        "outputs": s.outputs,
        "error": s.error,
        "created_at": ts(Some(s.created_at)),
        "started_at": ts(s.started_at),
        "completed_at": ts(s.completed_at),
        "last_event_seq": s.seq,
    })
}

pub fn summary(r: &RunSummary) -> Value {
    json!({
        "run_id": r.run_id,
        "status": r.status.as_str(),
        "owner": r.owner,
        "workflow_hash": r.workflow_hash,
        "tag": r.tag,
        // Child runs (subworkflows) are listed too; this says whose child they are.
        "parent_run_id": r.parent_run_id,
        "created_at": ts(Some(r.created_at)),
        "started_at": ts(r.started_at),
        "completed_at": ts(r.completed_at),
    })
}

fn node_status(s: NodeStatus) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

/// Per-node state, attempts, outputs and timings, plus edge tokens.
pub fn details(rec: &RunRecord, plan: &Plan) -> Value {
    let st: &RunState = &rec.state;
    let mut nodes = Vec::with_capacity(plan.nodes.len());
    let mut by_id = Map::new();
    for (i, pn) in plan.nodes.iter().enumerate() {
        let n = &st.nodes[i];
        let duration = match (n.started_at, n.finished_at) {
            (Some(a), Some(b)) => json!(b - a),
            _ => Value::Null,
        };
        let mut v = json!({
            "node_id": pn.id,
            "type": plan.workflow.nodes[i].kind,
            "status": node_status(n.status),
            "attempt": n.attempt,
            "activation": n.activation,
            "output": n.output,
            "error": n.error,
            "started_at": ts(n.started_at),
            "finished_at": ts(n.finished_at),
            "duration_ms": duration,
            "next_attempt_at": ts(if n.status == NodeStatus::Retrying { n.due_at } else { None }),
        });
        if n.iterations > 0 {
            v["iterations"] = json!(n.iterations);
        }
        if let Some(m) = &n.map {
            let done = m.item_states.iter().filter(|s| s.status == NodeStatus::Completed).count();
            v["items"] = json!({"total": m.items.len(), "completed": done, "concurrency": m.concurrency});
        }
        by_id.insert(pn.id.clone(), v.clone());
        nodes.push(v);
    }
    let edges: Vec<Value> = plan
        .edges
        .iter()
        .enumerate()
        .map(|(k, e)| {
            let state = match st.edges[k] {
                Token::Pending => "pending",
                Token::Taken => "taken",
                Token::Skipped => "skipped",
            };
            json!({
                "from": plan.nodes[e.from].id,
                "to": plan.nodes[e.to].id,
                "condition": e.condition.as_ref().map(|c| c.source.clone()),
                "kind": format!("{:?}", e.kind).to_ascii_lowercase(),
                "state": state,
            })
        })
        .collect();
    let mut out = run(rec);
    out["workflow"] = plan.workflow.to_canonical_json();
    out["nodes"] = Value::Array(nodes);
    out["node_executions"] = Value::Object(by_id);
    out["edges"] = Value::Array(edges);
    out["base_workflow_hash"] = json!(rec.workflow_hash);
    out["current_workflow_hash"] = json!(rec.plan_hash());
    out
}

pub fn tag(t: &Tag) -> Value {
    json!({
        "tag": t.name,
        "owner": t.owner,
        "hash": t.hash,
        "cas_id": t.hash,
        "version": t.version,
        "created_by": t.created_by,
        "moved_by": t.moved_by,
        "created_at": ts(Some(t.created_at)),
        "moved_at": ts(Some(t.moved_at)),
    })
}
