//! Run patches and node replay through the HTTP API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed call is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

fn held() -> Value {
    json!({
        "nodes": [
            {"id": "prep", "type": "noop"},
            {"id": "analyze", "type": "hitl", "config": {"message": "go?"}},
            {"id": "store", "type": "noop", "config": {"output": {"stored": true}}}
        ],
        "edges": [{"from": "prep", "to": "analyze"}, {"from": "analyze", "to": "store"}]
    })
}

async fn approve_all(srv: &common::TestServer, run_id: &str) {
    let (_, v) = srv.get("/api/v1/approvals?status=pending").await;
    for a in v["approvals"].as_array().unwrap().iter().filter(|a| a["run_id"] == run_id) {
        let (s, b) = srv
            .post(
                &format!("/api/v1/approvals/{}/decide", a["approval_id"].as_str().unwrap()),
                &json!({"decision": "approve"}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
}

#[tokio::test]
async fn a_patch_adds_a_step_that_runs_before_downstream_once() {
    let srv = common::start_server(&[]).await;
    let (s, _) = srv.post("/api/v1/workflows", &json!({"tag_name": "held", "workflow": held()})).await;
    assert_eq!(s, 201);
    let (s, v) = srv.post("/api/v1/runs", &json!({"tag": "held"})).await;
    assert_eq!(s, 201);
    let id = v["run_id"].as_str().unwrap().to_string();
    let ops = json!([
        {"op": "add_node", "node": {"id": "notify", "type": "noop", "config": {"output": {"notified": true}}}},
        {"op": "add_edge", "edge": {"from": "analyze", "to": "notify"}},
        {"op": "add_edge", "edge": {"from": "notify", "to": "store"}}
    ]);
    let (s, p) = srv
        .post(
            &format!("/api/v1/runs/{id}/patches"),
            &json!({"operations": ops, "description": "add notify", "node_id": "analyze"}),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    assert_eq!((p["seq"].as_u64(), p["status"].as_str()), (Some(1), Some("applied")));
    let (s, list) = srv.get(&format!("/api/v1/runs/{id}/patches")).await;
    assert_eq!((s, list["count"].as_u64()), (200, Some(1)));
    let (s, one) = srv.get(&format!("/api/v1/runs/{id}/patches/1")).await;
    assert_eq!((s, one["node_id"].as_str()), (200, Some("analyze")));

    approve_all(&srv, &id).await;
    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
    let pos = |t: &str, n: &str| events.iter().position(|e| e["type"] == t && e["node_id"] == n).unwrap();
    assert!(pos("node_completed", "notify") < pos("node_started", "store"));
    assert_eq!(events.iter().filter(|e| e["type"] == "node_completed" && e["node_id"] == "store").count(), 1);
    assert!(events.iter().any(|e| e["type"] == "patch_applied" && e["data"]["seq"] == 1));
    let d = srv.details(&id).await;
    assert_eq!(d["status"], "COMPLETED");
    assert!(d["workflow"]["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "notify"));
    assert_eq!(d["patches"][0]["description"], "add notify");
    assert_ne!(d["base_workflow_hash"], d["current_workflow_hash"]);
    // The tag still names the original workflow.
    let (_, tag) = srv.get("/api/v1/workflows/held").await;
    assert_eq!(tag["workflow"]["nodes"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn invalid_and_forbidden_patches_are_refused_with_every_reason() {
    let srv = common::start_server(&[]).await;
    let mut wf = held();
    wf["nodes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "a1", "type": "agent", "config": {"task": "t"}}));
    wf["edges"].as_array_mut().unwrap().push(json!({"from": "analyze", "to": "a1"}));
    let id = srv.start_run(&wf, json!({})).await;
    let url = format!("/api/v1/runs/{id}/patches");

    let (s, v) = srv
        .post(
            &url,
            &json!({"operations": [
                {"op": "add_edge", "edge": {"from": "analyze", "to": "ghost"}},
                {"op": "add_node", "node": {"id": "t", "type": "task"}},
                {"op": "add_edge", "edge": {"from": "analyze", "to": "t"}}
            ]}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let errors = v["error"]["details"]["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e["code"] == "dangling_edge"), "{v}");
    assert!(errors.iter().any(|e| e["code"] == "unknown_type"), "{v}");

    let (s, v) = srv
        .post(
            &url,
            &json!({"operations": [{"op": "replace_node_config", "id": "prep", "config": {"output": 1}}]}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "patch_rejected");
    let (s, v) = srv
        .post(&url, &json!({"operations": [{"op": "remove_edge", "from": "analyze", "to": "store"}]}))
        .await;
    assert_eq!(s, 422, "{v}");

    let agents = |from: usize, to: usize| -> Vec<Value> {
        (from..to)
            .flat_map(|i| {
                vec![
                    json!({"op": "add_node", "node": {"id": format!("ag{i}"), "type": "agent", "config": {"task": "t"}}}),
                    json!({"op": "add_edge", "edge": {"from": "analyze", "to": format!("ag{i}")}}),
                ]
            })
            .collect()
    };
    let (s, v) = srv.post(&url, &json!({"operations": agents(2, 6)})).await;
    assert_eq!(s, 201, "5 agents in all is allowed: {v}");
    let (s, v) = srv.post(&url, &json!({"operations": agents(6, 7)})).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "agent_limit_exceeded");
    let (_, list) = srv.get(&format!("/api/v1/runs/{id}/patches")).await;
    assert_eq!(list["count"], 1, "refused patches are not stored");
}

#[tokio::test]
async fn review_mode_holds_patches_until_approved() {
    let srv = common::start_server(&[]).await;
    let (s, v) = srv.post("/api/v1/runs", &json!({"workflow": held(), "patch_review": true})).await;
    assert_eq!(s, 201);
    let id = v["run_id"].as_str().unwrap().to_string();
    let ops = json!([{"op": "add_node", "node": {"id": "extra", "type": "noop"}}, {"op": "add_edge", "edge": {"from": "analyze", "to": "extra"}}]);
    let (s, p) = srv.post(&format!("/api/v1/runs/{id}/patches"), &json!({"operations": ops})).await;
    assert_eq!((s, p["status"].as_str()), (201, Some("pending")), "{p}");
    let d = srv.details(&id).await;
    assert!(!d["workflow"]["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "extra"));
    let (s, p) = srv.post(&format!("/api/v1/runs/{id}/patches/1/approve"), &json!({})).await;
    assert_eq!((s, p["status"].as_str()), (200, Some("applied")), "{p}");
    let (s, _) = srv.post(&format!("/api/v1/runs/{id}/patches/1/reject"), &json!({})).await;
    assert_eq!(s, 409);
    approve_all(&srv, &id).await;
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "COMPLETED");
    assert!(run["outputs"].get("extra").is_some(), "{run}");
}

#[tokio::test]
async fn replay_reruns_a_failed_node_and_completes() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let stub = common::Stub::start(Arc::new(move |_, _| {
        if h.load(Ordering::SeqCst) {
            (200, json!({"ok": true}))
        } else {
            (500, json!({"ok": false}))
        }
    }))
    .await;
    let srv = common::start_server(&[stub.allow()]).await;
    let wf = json!({
        "nodes": [
            {"id": "call", "type": "http", "config": {"url": stub.url("/x"), "fail_on_status": true}},
            {"id": "after", "type": "noop", "config": {"output": {"done": true}}}
        ],
        "edges": [{"from": "call", "to": "after"}]
    });
    let id = srv.start_run(&wf, json!({})).await;
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "FAILED");
    let (s, v) = srv.post(&format!("/api/v1/runs/{id}/nodes/after/replay"), &json!({"reason": "x"})).await;
    assert_eq!(s, 200, "replaying a node whose input never arrived still starts it: {v}");
    let _ = srv.wait_run(&id).await;

    let id = srv.start_run(&wf, json!({})).await;
    assert_eq!(srv.wait_run(&id).await["status"], "FAILED");
    healthy.store(true, Ordering::SeqCst);
    let (s, v) = srv
        .post(&format!("/api/v1/runs/{id}/nodes/call/replay"), &json!({"reason": "upstream fixed"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["outputs"]["after"], json!({"done": true}));
    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
    let replayed = events.iter().find(|e| e["type"] == "node_replayed").unwrap();
    assert_eq!(replayed["data"]["reason"], "upstream fixed");
    assert_eq!(replayed["data"]["by"], "admin");

    // A config override re-runs the node with the new config.
    let (s, v) = srv
        .post(
            &format!("/api/v1/runs/{id}/nodes/after/replay"),
            &json!({"config": {"output": {"done": "again"}}, "reason": "new output"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let run = srv.wait_run(&id).await;
    assert_eq!(run["outputs"]["after"], json!({"done": "again"}));
    // Replaying an active run is refused.
    let held_id = srv.start_run(&held(), json!({})).await;
    let (s, v) = srv.post(&format!("/api/v1/runs/{held_id}/nodes/prep/replay"), &json!({})).await;
    assert_eq!(s, 409, "{v}");
}
