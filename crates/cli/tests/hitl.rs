//! Human approvals through the HTTP API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed call is a failed test

mod common;

use serde_json::{Value, json};

fn approval_flow(timeout: Option<(u64, &str)>) -> Value {
    let mut approve = json!({"id": "approve", "type": "hitl", "config": {"message": "Pay ${inputs.amount}?"}});
    if let Some((ms, policy)) = timeout {
        approve["config"]["timeout_ms"] = json!(ms);
        approve["config"]["on_timeout"] = json!(policy);
    }
    json!({
        "nodes": [
            {"id": "prep", "type": "noop"},
            approve,
            {"id": "charge", "type": "noop", "config": {"output": {"charged": true}}},
            {"id": "notify_reject", "type": "noop", "config": {"output": {"notified": true}}}
        ],
        "edges": [
            {"from": "prep", "to": "approve"},
            {"from": "approve", "to": "charge", "condition": "$.approved == true"},
            {"from": "approve", "to": "notify_reject", "condition": "!output.approved"}
        ]
    })
}

async fn pending(srv: &common::TestServer, run_id: &str) -> Value {
    let (s, v) = srv.get("/api/v1/approvals?status=pending").await;
    assert_eq!(s, 200);
    v["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["run_id"] == run_id)
        .cloned()
        .expect("a pending approval")
}

#[tokio::test]
async fn approve_path_then_second_decision_is_409() {
    let srv = common::start_server(&[]).await;
    let id = srv.start_run(&approval_flow(None), json!({"amount": 50000})).await;
    let run = srv.get(&format!("/api/v1/runs/{id}")).await.1;
    assert_eq!(run["status"], "WAITING_FOR_APPROVAL");
    let a = pending(&srv, &id).await;
    assert_eq!(a["message"], "Pay 50000?");
    assert_eq!(a["node_id"], "approve");
    let details = srv.details(&id).await;
    assert_eq!(details["node_executions"]["approve"]["status"], "waiting_for_approval");

    let path = format!("/api/v1/approvals/{}/decide", a["approval_id"].as_str().unwrap());
    let (s, v) = srv.post(&path, &json!({"decision": "approve", "comment": "LGTM"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "approved");
    let (s, v) = srv.post(&path, &json!({"decision": "reject"})).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "conflict");

    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
    let run = srv.get(&format!("/api/v1/runs/{id}")).await.1;
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["outputs"], json!({"charge": {"charged": true}}));
    let decided = events.iter().find(|e| e["type"] == "approval_decided").unwrap();
    assert_eq!(decided["data"]["approval_id"], a["approval_id"]);
    assert_eq!(decided["data"]["approved_by"], "admin");
    assert_eq!(decided["data"]["comment"], "LGTM");
    let required = events.iter().find(|e| e["type"] == "approval_required").unwrap();
    assert_eq!(required["data"]["approval_id"], a["approval_id"]);
    assert_eq!(events.iter().filter(|e| e["type"] == "node_completed" && e["node_id"] == "charge").count(), 1);
}

#[tokio::test]
async fn reject_path_via_seed_route() {
    let srv = common::start_server(&[]).await;
    let id = srv.start_run(&approval_flow(None), json!({"amount": 1})).await;
    let (s, v) = srv
        .post(
            "/api/approval",
            &json!({"run_id": id, "node_id": "approve", "approved": false, "comment": "too risky"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["outputs"], json!({"notify_reject": {"notified": true}}));
    let d = srv.details(&id).await;
    assert_eq!(d["node_executions"]["charge"]["status"], "skipped");
    assert_eq!(d["node_executions"]["approve"]["output"]["comment"], "too risky");
}

#[tokio::test]
async fn timeout_follows_policy_and_late_decision_is_409() {
    let srv = common::start_server(&[]).await;
    let id = srv.start_run(&approval_flow(Some((300, "reject"))), json!({"amount": 1})).await;
    let a = pending(&srv, &id).await;
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["outputs"], json!({"notify_reject": {"notified": true}}));
    let path = format!("/api/v1/approvals/{}/decide", a["approval_id"].as_str().unwrap());
    let (s, v) = srv.post(&path, &json!({"decision": "approve"})).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["details"]["status"], "timed_out");

    let failing = srv.start_run(&approval_flow(Some((200, "fail"))), json!({"amount": 1})).await;
    let run = srv.wait_run(&failing).await;
    assert_eq!(run["status"], "FAILED");
    assert_eq!(run["error"]["code"], "approval_timeout");
}

#[tokio::test]
async fn restart_while_waiting_loses_nothing() {
    let mut srv = common::start_server(&[]).await;
    let id = srv.start_run(&approval_flow(None), json!({"amount": 7})).await;
    let a = pending(&srv, &id).await;
    srv.stop().await;
    let srv = common::start_server_in(srv.dir, &[]).await;
    let run = srv.get(&format!("/api/v1/runs/{id}")).await.1;
    assert_eq!(run["status"], "WAITING_FOR_APPROVAL");
    let path = format!("/api/v1/approvals/{}/decide", a["approval_id"].as_str().unwrap());
    let (s, _) = srv.post(&path, &json!({"decision": "approve"})).await;
    assert_eq!(s, 200);
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "COMPLETED");
    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
}

#[tokio::test]
async fn another_tenant_sees_nothing() {
    let srv = common::start_server(&[]).await;
    let id = srv.start_run(&approval_flow(None), json!({"amount": 1})).await;
    let a = pending(&srv, &id).await;
    let (s, k) = srv
        .post("/api/v1/keys", &json!({"tenant": "acme", "user": "bob", "role": "member", "name": "bob"}))
        .await;
    assert_eq!(s, 201, "{k}");
    let bob = common::client_with_key(k["key"].as_str().unwrap());
    let get = |p: String| {
        let bob = bob.clone();
        let url = format!("{}{}", srv.url, p);
        async move {
            let r = bob.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(get(format!("/api/v1/runs/{id}")).await.0, 404);
    assert_eq!(get(format!("/api/v1/runs/{id}/details")).await.0, 404);
    assert_eq!(get(format!("/api/v1/runs/{id}/events")).await.0, 404);
    assert_eq!(get(format!("/api/v1/approvals/{}", a["approval_id"].as_str().unwrap())).await.0, 404);
    let (s, v) = get("/api/v1/approvals?status=pending".into()).await;
    assert_eq!((s, v["count"].clone()), (200, json!(0)));
    let r = bob
        .post(format!("{}/api/v1/approvals/{}/decide", srv.url, a["approval_id"].as_str().unwrap()))
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let (s, v) = get("/api/v1/runs".into()).await;
    assert_eq!((s, v["count"].clone()), (200, json!(0)));
    let r = reqwest::Client::new().get(format!("{}/api/v1/runs", srv.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = reqwest::Client::new().get(format!("{}/health", srv.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(pending(&srv, &id).await["status"], "pending");
}

#[tokio::test]
async fn only_listed_approvers_may_decide_and_the_admin_key_file_is_private() {
    let srv = common::start_server(&[]).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(srv.dir.path().join("admin.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let wf = json!({
        "nodes": [
            {"id": "a", "type": "hitl", "config": {"message": "x", "approvers": ["carol"]}},
            {"id": "b", "type": "hitl", "config": {"message": "y", "approvers": ["role:member"]}}
        ],
        "edges": []
    });
    let id = srv.start_run(&wf, json!({})).await;
    let (_, k) = srv.post("/api/v1/keys", &json!({"user": "dave", "role": "member", "name": "dave"})).await;
    let dave = common::client_with_key(k["key"].as_str().unwrap());
    let (_, v) = srv.get("/api/v1/approvals?status=pending").await;
    let by_node = |n: &str| {
        v["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["run_id"] == id && a["node_id"] == n)
            .unwrap()["approval_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let decide = |a: String| {
        let dave = dave.clone();
        let url = format!("{}/api/v1/approvals/{a}/decide", srv.url);
        async move { dave.post(url).json(&json!({"decision": "approve"})).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(decide(by_node("a")).await, 403, "dave is not carol");
    assert_eq!(decide(by_node("b")).await, 200, "dave is a member");
}
