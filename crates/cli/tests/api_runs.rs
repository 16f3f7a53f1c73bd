//! The native runs and workflows API: starting, reading, listing, idempotency,
//! control (cancel/pause/resume), the error envelope, tags and versions, artifacts,
//! OpenAPI, schema and health endpoints.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use common::{AsyncStub, Hit, TestServer};

fn noop_wf(name: &str) -> Value {
    json!({"name": name, "nodes": [{"id": "only", "type": "noop", "config": {"output": {"echo": "$inputs.msg"}}}], "edges": []})
}

/// A run that fails at once: its only node is refused by the SSRF guard.
fn failing_wf() -> Value {
    json!({"nodes": [{"id": "meta", "type": "http", "config": {"url": "http://169.254.169.254/"}}], "edges": []})
}

fn wait_wf(ms: u64) -> Value {
    json!({
        "nodes": [{"id": "sleep", "type": "wait", "config": {"duration_ms": ms}}, {"id": "after", "type": "noop"}],
        "edges": [{"from": "sleep", "to": "after"}]
    })
}

fn node_status(details: &Value, id: &str) -> String {
    details["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["node_id"] == id))
        .map(|n| n["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn start_by_tag_and_by_seed_route_and_read_the_run() {
    let srv = common::start_server(&[]).await;
    let created = srv.create_workflow("greet", &noop_wf("greet")).await;
    assert_eq!(created["tag"], "greet");
    assert_eq!(created["version"], 1);
    assert!(created["hash"].as_str().unwrap().starts_with("sha256:"), "{created}");

    let (s, v) = srv.post("/api/v1/runs", &json!({"tag": "greet", "inputs": {"msg": "hi"}})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["run_id"].as_str().unwrap().to_string();
    assert!(v["status"].is_string(), "{v}");
    let run = srv.wait_run(&id).await;
    for k in ["run_id", "status", "inputs", "outputs", "error", "created_at", "started_at", "completed_at"] {
        assert!(run.as_object().unwrap().contains_key(k), "GET run lacks {k}: {run}");
    }
    assert_eq!(run["run_id"], id);
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["inputs"], json!({"msg": "hi"}));
    assert_eq!(run["outputs"], json!({"only": {"echo": "hi"}}));
    assert!(run["error"].is_null());
    assert_eq!(run["tag"], "greet");
    for k in ["created_at", "started_at", "completed_at"] {
        assert!(chrono::DateTime::parse_from_rfc3339(run[k].as_str().unwrap()).is_ok(), "{k}: {run}");
    }

    let (s, v) = srv.post("/api/v1/workflows/greet/execute", &json!({"inputs": {"msg": "seed"}})).await;
    assert_eq!(s, 201, "{v}");
    let run = srv.wait_run(v["run_id"].as_str().unwrap()).await;
    assert_eq!(run["outputs"]["only"]["echo"], "seed");
    // The seed route also takes no body at all.
    let (s, v) = srv.post_raw("/api/v1/workflows/greet/execute", None, Vec::new()).await;
    assert_eq!(s, 201, "{v}");
    let run = srv.wait_run(v["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "FAILED", "a missing $inputs.msg reference fails the node: {run}");

    // Unknown tags are 404 on both routes; a body with both workflow and tag is 400.
    let (s, v) = srv.post("/api/v1/runs", &json!({"tag": "nope", "inputs": {}})).await;
    assert_eq!(s, 404, "{v}");
    common::assert_envelope(&v, "not_found");
    let (s, v) = srv.post("/api/v1/workflows/nope/execute", &json!({})).await;
    assert_eq!(s, 404, "{v}");
    common::assert_envelope(&v, "not_found");
    let (s, v) = srv.post("/api/v1/runs", &json!({"tag": "greet", "workflow": noop_wf("x")})).await;
    assert_eq!(s, 400, "{v}");
    common::assert_envelope(&v, "bad_request");
}

#[tokio::test]
async fn list_filters_by_status_and_tag_and_the_cursor_returns_each_run_once() {
    let srv = common::start_server(&[]).await;
    srv.create_workflow("good", &noop_wf("good")).await;
    srv.create_workflow("bad", &failing_wf()).await;
    let mut good = HashSet::new();
    let mut bad = HashSet::new();
    for i in 0..7 {
        let tag = if i % 3 == 0 { "bad" } else { "good" };
        let (s, v) = srv.post("/api/v1/runs", &json!({"tag": tag, "inputs": {"msg": i}})).await;
        assert_eq!(s, 201, "{v}");
        let id = v["run_id"].as_str().unwrap().to_string();
        if tag == "bad" {
            bad.insert(id)
        } else {
            good.insert(id)
        };
    }
    for id in good.iter().chain(bad.iter()) {
        srv.wait_run(id).await;
    }
    let ids = |v: &Value| -> Vec<String> {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_string())
            .collect()
    };

    let (_, failed) = srv.get("/api/v1/runs?status=FAILED").await;
    assert_eq!(ids(&failed).into_iter().collect::<HashSet<_>>(), bad, "{failed}");
    assert!(failed["runs"].as_array().unwrap().iter().all(|r| r["status"] == "FAILED" && r["tag"] == "bad"));
    let (_, completed) = srv.get("/api/v1/runs?status=completed").await;
    assert_eq!(ids(&completed).into_iter().collect::<HashSet<_>>(), good);
    let (_, tagged) = srv.get("/api/v1/runs?tag=good").await;
    assert_eq!(ids(&tagged).into_iter().collect::<HashSet<_>>(), good);
    let (_, both) = srv.get("/api/v1/runs?tag=good&status=FAILED").await;
    assert_eq!(both["runs"], json!([]));

    // Paging: newest first, each run exactly once, then no cursor.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/api/v1/runs?limit=2&cursor={c}"),
            None => "/api/v1/runs?limit=2".to_string(),
        };
        let (s, page) = srv.get(&path).await;
        assert_eq!(s, 200, "{page}");
        let got = ids(&page);
        assert!(got.len() <= 2);
        seen.extend(got);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7, "duplicates in {seen:?}");
    let all: HashSet<String> = good.union(&bad).cloned().collect();
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), all);
    // Paging through one tag only.
    let (_, p1) = srv.get("/api/v1/runs?tag=bad&limit=2").await;
    let c = p1["next_cursor"].as_str().unwrap().to_string();
    let (_, p2) = srv.get(&format!("/api/v1/runs?tag=bad&limit=2&cursor={c}")).await;
    let mut paged: Vec<String> = ids(&p1);
    paged.extend(ids(&p2));
    assert_eq!(paged.len(), 3);
    assert_eq!(paged.into_iter().collect::<HashSet<_>>(), bad);

    let (s, v) = srv.get("/api/v1/runs?status=SLEEPY").await;
    assert_eq!(s, 400, "{v}");
    common::assert_envelope(&v, "bad_request");
    let (s, v) = srv.get("/api/v1/runs?cursor=garbage").await;
    assert_eq!(s, 400, "{v}");
    common::assert_envelope(&v, "bad_request");
}

#[tokio::test]
async fn idempotency_key_in_header_or_body_returns_the_same_run() {
    let srv = common::start_server(&[]).await;
    let body = json!({"workflow": noop_wf("idem"), "inputs": {"msg": 1}});
    let (s1, a) = srv.post_with("/api/v1/runs", &[("Idempotency-Key", "key-h")], &body).await;
    let (s2, b) = srv.post_with("/api/v1/runs", &[("Idempotency-Key", "key-h")], &body).await;
    assert_eq!((s1, s2), (201, 201), "{a} {b}");
    assert_eq!(a["run_id"], b["run_id"]);

    let mut with_key = body.clone();
    with_key["idempotency_key"] = json!("key-b");
    let (_, c) = srv.post("/api/v1/runs", &with_key).await;
    let (_, d) = srv.post("/api/v1/runs", &with_key).await;
    assert_eq!(c["run_id"], d["run_id"]);
    assert_ne!(c["run_id"], a["run_id"]);

    // The seed route honours the header too.
    srv.create_workflow("idem", &noop_wf("idem")).await;
    let (_, e) = srv
        .post_with(
            "/api/v1/workflows/idem/execute",
            &[("Idempotency-Key", "key-x")],
            &json!({"inputs": {"msg": 2}}),
        )
        .await;
    let (_, f) = srv
        .post_with(
            "/api/v1/workflows/idem/execute",
            &[("Idempotency-Key", "key-x")],
            &json!({"inputs": {"msg": 2}}),
        )
        .await;
    assert_eq!(e["run_id"], f["run_id"], "{e} {f}");

    // Concurrent duplicates still make one run: each answer is that run, or a 409
    // `conflict` while the first request is still being answered.
    let reqs = (0..4).map(|_| srv.post_with("/api/v1/runs", &[("Idempotency-Key", "key-race")], &body));
    let answers = futures::future::join_all(reqs).await;
    let mut ids: HashSet<String> = HashSet::new();
    for (s, v) in &answers {
        match s {
            201 => {
                ids.insert(v["run_id"].as_str().unwrap().to_string());
            }
            409 => common::assert_envelope(v, "conflict"),
            _ => panic!("unexpected answer {s}: {v}"),
        }
    }
    assert_eq!(ids.len(), 1, "{answers:?}");
    let (s, again) = srv.post_with("/api/v1/runs", &[("Idempotency-Key", "key-race")], &body).await;
    assert_eq!(s, 201, "{again}");
    assert!(ids.contains(again["run_id"].as_str().unwrap()), "{again}");

    // Without a key every POST is a new run.
    let (_, g) = srv.post("/api/v1/runs", &body).await;
    let (_, h) = srv.post("/api/v1/runs", &body).await;
    assert_ne!(g["run_id"], h["run_id"]);
    for id in [&a, &c, &e, &g, &h] {
        srv.wait_run(id["run_id"].as_str().unwrap()).await;
    }
    let (_, list) = srv.get("/api/v1/runs?limit=100").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 6, "{list}");
}

#[tokio::test]
async fn cancel_a_run_waiting_on_a_timer() {
    let srv = common::start_server(&[]).await;
    let id = srv.start_run(&wait_wf(600_000), json!({})).await;
    srv.poll_until(&format!("/api/v1/runs/{id}/details"), 30, |d| node_status(d, "sleep") == "running")
        .await;
    let (s, v) = srv.post(&format!("/api/v1/runs/{id}/cancel"), &json!({"reason": "test says stop"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "CANCELLED");
    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "workflow_cancelled");
    assert_eq!(last["data"]["reason"], "test says stop");
    let run = srv.get(&format!("/api/v1/runs/{id}")).await.1;
    assert_eq!(run["status"], "CANCELLED");
    assert!(run["completed_at"].is_string());
    let det = srv.details(&id).await;
    assert_eq!(node_status(&det, "sleep"), "cancelled");
    assert_eq!(node_status(&det, "after"), "pending");

    // A finished run cannot be cancelled, paused or resumed again.
    for verb in ["cancel", "pause", "resume"] {
        let (s, v) = srv.post(&format!("/api/v1/runs/{id}/{verb}"), &json!({})).await;
        assert_eq!(s, 409, "{verb}: {v}");
        common::assert_envelope(&v, "invalid_state");
    }
    // Cancel without a body works too.
    let id = srv.start_run(&wait_wf(600_000), json!({})).await;
    let (s, v) = srv.post_raw(&format!("/api/v1/runs/{id}/cancel"), None, Vec::new()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(srv.wait_run(&id).await["status"], "CANCELLED");
}

#[tokio::test]
async fn cancel_of_a_completed_run_is_409() {
    let srv = common::start_server(&[]).await;
    let id = srv.start_run(&noop_wf("done"), json!({"msg": "x"})).await;
    assert_eq!(srv.wait_run(&id).await["status"], "COMPLETED");
    let (s, v) = srv.post(&format!("/api/v1/runs/{id}/cancel"), &json!({})).await;
    assert_eq!(s, 409, "{v}");
    common::assert_envelope(&v, "invalid_state");
    assert_eq!(srv.get(&format!("/api/v1/runs/{id}")).await.1["status"], "COMPLETED");
}

#[tokio::test]
async fn pause_holds_dispatch_and_resume_completes_the_run() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let stub = AsyncStub::start(Arc::new(move |hit: Hit, _| {
        let g = g.clone();
        Box::pin(async move {
            if hit.path == "/first" {
                g.notified().await;
            }
            (200, json!({"path": hit.path}))
        })
    }))
    .await;
    let srv = common::start_server(&[stub.allow()]).await;
    let wf = json!({
        "nodes": [
            {"id": "first", "type": "http", "config": {"url": stub.url("/first")}},
            {"id": "second", "type": "http", "config": {"url": stub.url("/second")}}
        ],
        "edges": [{"from": "first", "to": "second"}]
    });
    let id = srv.start_run(&wf, json!({})).await;
    common::wait_for("the first request", 30, || !stub.hits("/first").is_empty()).await;
    let (s, v) = srv.post(&format!("/api/v1/runs/{id}/pause"), &json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "PAUSED");
    let (s, v) = srv.post(&format!("/api/v1/runs/{id}/pause"), &json!({})).await;
    assert_eq!(s, 409, "pausing twice: {v}");
    common::assert_envelope(&v, "invalid_state");

    // The in-flight attempt finishes while paused; nothing new is dispatched.
    gate.notify_one();
    let det = srv
        .poll_until(&format!("/api/v1/runs/{id}/details"), 30, |d| node_status(d, "first") == "completed")
        .await;
    assert_eq!(det["status"], "PAUSED", "{det}");
    assert_ne!(node_status(&det, "second"), "running");
    assert!(stub.hits("/second").is_empty());
    let events = srv.event_list(&id).await;
    assert!(events.iter().any(|e| e["type"] == "workflow_paused"));
    assert!(!events.iter().any(|e| e["type"] == "node_started" && e["node_id"] == "second"), "{events:#?}");
    assert_eq!(srv.get(&format!("/api/v1/runs/{id}")).await.1["status"], "PAUSED");

    let (s, v) = srv.post(&format!("/api/v1/runs/{id}/resume"), &json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "RUNNING");
    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
    assert_eq!(events.last().unwrap()["type"], "workflow_completed");
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let paused = kinds.iter().position(|k| *k == "workflow_paused").unwrap();
    let resumed = kinds.iter().position(|k| *k == "workflow_resumed").unwrap();
    let second = events.iter().position(|e| e["type"] == "node_started" && e["node_id"] == "second").unwrap();
    assert!(paused < resumed && resumed < second, "{kinds:?}");
    assert_eq!(stub.hits("/second").len(), 1);
    assert_eq!(srv.get(&format!("/api/v1/runs/{id}")).await.1["status"], "COMPLETED");
}

#[tokio::test]
async fn a_timer_that_fires_while_paused_does_not_start_the_next_node_until_resume() {
    let srv = common::start_server(&[]).await;
    let id = srv.start_run(&wait_wf(1000), json!({})).await;
    let (s, v) = srv.post(&format!("/api/v1/runs/{id}/pause"), &json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "PAUSED");
    let det = srv
        .poll_until(&format!("/api/v1/runs/{id}/details"), 30, |d| node_status(d, "sleep") == "completed")
        .await;
    assert_eq!(det["status"], "PAUSED", "{det}");
    assert_ne!(node_status(&det, "after"), "completed", "{det}");
    let (s, v) = srv.post(&format!("/api/v1/runs/{id}/resume"), &json!({})).await;
    assert_eq!(s, 200, "{v}");
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(node_status(&srv.details(&id).await, "after"), "completed");
}

#[tokio::test]
async fn caller_mistakes_get_the_error_envelope() {
    let srv = common::start_server(&[]).await;
    let (s, v) = srv.get("/api/v1/runs/0000-not-a-run").await;
    assert_eq!(s, 404);
    common::assert_envelope(&v, "not_found");
    for p in ["/details", "/cancel", "/pause", "/resume"] {
        let path = format!("/api/v1/runs/0000-not-a-run{p}");
        let (s, v) = if p == "/details" {
            srv.get(&path).await
        } else {
            srv.post(&path, &json!({})).await
        };
        assert_eq!(s, 404, "{path}: {v}");
        common::assert_envelope(&v, "not_found");
    }

    let (s, v) = srv.post_raw("/api/v1/runs", Some("application/json"), b"{\"workflow\": {".to_vec()).await;
    assert_eq!(s, 400, "{v}");
    common::assert_envelope(&v, "invalid_json");
    let (s, v) = srv.post_raw("/api/v1/workflows", Some("application/json"), b"not json".to_vec()).await;
    assert_eq!(s, 400, "{v}");
    common::assert_envelope(&v, "invalid_json");
    let (s, v) = srv
        .post_raw("/api/v1/workflows/greet/execute", Some("application/json"), b"{oops".to_vec())
        .await;
    assert_eq!(s, 400, "{v}");
    common::assert_envelope(&v, "invalid_json");

    let (s, v) = srv.post_raw("/api/v1/runs", Some("text/plain"), b"{}".to_vec()).await;
    assert_eq!(s, 415, "{v}");
    common::assert_envelope(&v, "unsupported_media_type");
    let (s, v) = srv.post_raw("/api/v1/workflows", None, b"{}".to_vec()).await;
    assert_eq!(s, 415, "{v}");
    common::assert_envelope(&v, "unsupported_media_type");

    let big = serde_json::to_vec(&json!({"workflow": noop_wf("big"), "inputs": {"blob": "x".repeat(5 * 1024 * 1024)}})).unwrap();
    let (s, v) = srv.post_raw("/api/v1/runs", Some("application/json"), big.clone()).await;
    assert_eq!(s, 413, "{v}");
    common::assert_envelope(&v, "payload_too_large");
    let (s, v) = srv.post_raw("/api/v1/workflows/greet/execute", Some("application/json"), big).await;
    assert_eq!(s, 413, "{v}");
    common::assert_envelope(&v, "payload_too_large");

    let (s, v) = srv.get("/api/v1/no/such/route").await;
    assert_eq!(s, 404);
    common::assert_envelope(&v, "not_found");
    let (s, v) = srv.get("/nothing-here").await;
    assert_eq!(s, 404);
    common::assert_envelope(&v, "not_found");
    let r = srv.http.delete(format!("{}/api/v1/runs", srv.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    common::assert_envelope(&r.json().await.unwrap(), "method_not_allowed");

    let (s, v) = srv.post("/api/v1/runs", &json!({"workflow": noop_wf("x"), "inputs": [1, 2]})).await;
    assert_eq!(s, 400, "{v}");
    common::assert_envelope(&v, "bad_request");
    let (s, v) = srv.post("/api/v1/workflows", &json!({"workflow": noop_wf("x")})).await;
    assert_eq!(s, 400, "{v}");
    common::assert_envelope(&v, "bad_request");

    // None of that stored anything.
    assert_eq!(srv.get("/api/v1/runs").await.1["runs"], json!([]));
    assert_eq!(srv.get("/api/v1/workflows").await.1["workflows"], json!([]));
}

#[tokio::test]
async fn inputs_are_checked_against_the_workflow_inputs_schema() {
    let srv = common::start_server(&[]).await;
    let mut wf = noop_wf("typed");
    wf["inputs"] = json!({"type": "object", "required": ["msg"], "properties": {"msg": {"type": "string"}}});
    let (s, v) = srv.post("/api/v1/runs", &json!({"workflow": wf, "inputs": {}})).await;
    assert_eq!(s, 400, "{v}");
    common::assert_envelope(&v, "validation_failed");
    assert_eq!(v["error"]["details"]["errors"][0]["pointer"], "/inputs/msg");
    let (s, v) = srv.post("/api/v1/runs", &json!({"workflow": wf, "inputs": {"msg": 5}})).await;
    assert_eq!(s, 400, "{v}");
    let id = srv.start_run(&wf, json!({"msg": "fine"})).await;
    assert_eq!(srv.wait_run(&id).await["status"], "COMPLETED");
}

async fn tag_roundtrip(srv: &TestServer, tag: &str) {
    let enc = tag.replace('/', "%2F");
    let v1 = srv.create_workflow(tag, &noop_wf("one")).await;
    assert_eq!(v1["tag"], tag);
    let v2 = srv.create_workflow(tag, &noop_wf("two")).await;
    assert_eq!(v2["version"], 2, "{v2}");
    assert_ne!(v1["hash"], v2["hash"]);

    let (s, cur) = srv.get(&format!("/api/v1/workflows/{enc}")).await;
    assert_eq!(s, 200, "{cur}");
    assert_eq!(cur["tag"], tag);
    assert_eq!(cur["hash"], v2["hash"]);
    assert_eq!(cur["workflow"]["name"], "two");
    let (_, bare) = srv.get(&format!("/api/v1/workflows/{enc}?materialize=false")).await;
    assert!(!bare.as_object().unwrap().contains_key("workflow"), "{bare}");
    assert_eq!(bare["hash"], v2["hash"]);

    let (s, first) = srv.get(&format!("/api/v1/workflows/{enc}/versions/0")).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["hash"], v1["hash"]);
    assert_eq!(first["workflow"]["name"], "one");
    let (_, second) = srv.get(&format!("/api/v1/workflows/{enc}/versions/1?materialize=false")).await;
    assert_eq!(second["hash"], v2["hash"]);
    assert!(second.get("workflow").is_none());
    let (s, v) = srv.get(&format!("/api/v1/workflows/{enc}/versions/9")).await;
    assert_eq!(s, 404, "{v}");
    common::assert_envelope(&v, "not_found");
    let (s, v) = srv.get(&format!("/api/v1/workflows/{enc}/versions/-1")).await;
    assert_eq!(s, 400, "{v}");
    common::assert_envelope(&v, "bad_request");

    // Runs start from the tag's current version, by body and by the seed route.
    let (s, r) = srv.post(&format!("/api/v1/workflows/{enc}/execute"), &json!({"inputs": {"msg": "m"}})).await;
    assert_eq!(s, 201, "{r}");
    let run = srv.wait_run(r["run_id"].as_str().unwrap()).await;
    assert_eq!(run["workflow_hash"], v2["hash"]);
    assert_eq!(run["tag"], tag);
    let (s, r) = srv.post("/api/v1/runs", &json!({"tag": tag, "inputs": {"msg": "m"}})).await;
    assert_eq!(s, 201, "{r}");
    srv.wait_run(r["run_id"].as_str().unwrap()).await;
    let (_, listed) = srv.get(&format!("/api/v1/runs?tag={enc}")).await;
    assert_eq!(listed["runs"].as_array().unwrap().len(), 2, "{listed}");

    // Both versions are artifacts, addressed by hash.
    for (v, name) in [(&v1, "one"), (&v2, "two")] {
        let (s, a) = srv.get(&format!("/api/v1/artifacts/{}", v["hash"].as_str().unwrap())).await;
        assert_eq!(s, 200, "{a}");
        assert_eq!(a["content"]["name"], name);
        assert_eq!(a["kind"], "workflow");
    }
}

#[tokio::test]
async fn tags_versions_artifacts_and_tag_names_with_slashes() {
    let srv = common::start_server(&[]).await;
    tag_roundtrip(&srv, "plain").await;
    tag_roundtrip(&srv, "team/release/v1").await;
    let (_, list) = srv.get("/api/v1/workflows").await;
    let names: HashSet<&str> = list["workflows"].as_array().unwrap().iter().map(|t| t["tag"].as_str().unwrap()).collect();
    assert_eq!(names, ["plain", "team/release/v1"].into_iter().collect());

    let (s, v) = srv.get("/api/v1/artifacts/sha256:0000").await;
    assert_eq!(s, 404, "{v}");
    common::assert_envelope(&v, "not_found");

    let r = srv
        .http
        .delete(format!("{}/api/v1/workflows/team%2Frelease%2Fv1", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (s, _) = srv.get("/api/v1/workflows/team%2Frelease%2Fv1").await;
    assert_eq!(s, 404);
    let r = srv
        .http
        .delete(format!("{}/api/v1/workflows/team%2Frelease%2Fv1", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn yaml_workflow_text_is_accepted() {
    let srv = common::start_server(&[]).await;
    let yaml = "name: from-yaml\nnodes:\n  - id: a\n    type: noop\n    config:\n      output: {greeting: \"hello ${inputs.who}\"}\n  - id: b\n    type: noop\nedges:\n  - {from: a, to: b}\n";
    let created = srv.create_workflow("yaml", &json!(yaml)).await;
    let (_, got) = srv.get("/api/v1/workflows/yaml").await;
    assert_eq!(got["workflow"]["name"], "from-yaml");
    assert_eq!(got["hash"], created["hash"]);
    let id = srv.start_run(&json!(yaml), json!({"who": "yaml"})).await;
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["outputs"]["b"]["greeting"], "hello yaml");
    // Same content, same address: the inline run used the stored workflow's hash.
    assert_eq!(run["workflow_hash"], created["hash"]);
    let (s, v) = srv.post("/api/v1/workflows/validate", &json!({"workflow": yaml})).await;
    assert_eq!(s, 200);
    assert_eq!(v["valid"], true, "{v}");
    let (s, v) = srv
        .post("/api/v1/workflows", &json!({"tag_name": "broken", "workflow": "nodes: [unclosed"}))
        .await;
    assert_eq!(s, 400, "{v}");
    common::assert_envelope(&v, "validation_failed");
}

#[tokio::test]
async fn openapi_schema_health_readiness_and_version() {
    let srv = common::start_server(&[]).await;
    let (s, spec) = srv.get("/openapi.json").await;
    assert_eq!(s, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let routes: &[(&str, &[&str])] = &[
        ("/health", &["get"]),
        ("/readiness", &["get"]),
        ("/openapi.json", &["get"]),
        ("/api/v1/version", &["get"]),
        ("/api/v1/schema/workflow", &["get"]),
        ("/api/v1/workflows", &["get", "post"]),
        ("/api/v1/workflows/validate", &["post"]),
        ("/api/v1/workflows/{tag}", &["get", "delete"]),
        ("/api/v1/workflows/{tag}/versions/{seq}", &["get"]),
        ("/api/v1/workflows/{tag}/execute", &["post"]),
        ("/api/v1/runs", &["get", "post"]),
        ("/api/v1/runs/{id}", &["get"]),
        ("/api/v1/runs/{id}/details", &["get"]),
        ("/api/v1/runs/{id}/cancel", &["post"]),
        ("/api/v1/runs/{id}/pause", &["post"]),
        ("/api/v1/runs/{id}/resume", &["post"]),
        ("/api/v1/runs/{id}/events", &["get"]),
        ("/api/v1/runs/{id}/events/list", &["get"]),
        ("/api/v1/events", &["get"]),
        ("/api/v1/artifacts/{id}", &["get"]),
    ];
    for (path, methods) in routes {
        for m in *methods {
            assert!(spec["paths"][path][m].is_object(), "openapi lacks {m} {path}");
        }
    }
    let codes: HashSet<&str> = spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for c in [
        "validation_failed",
        "invalid_json",
        "not_found",
        "invalid_state",
        "payload_too_large",
        "unsupported_media_type",
    ] {
        assert!(codes.contains(c), "{c} missing from the documented codes");
    }

    let (s, schema) = srv.get("/api/v1/schema/workflow").await;
    assert_eq!(s, 200);
    assert!(schema["$schema"].as_str().is_some_and(|u| u.contains("json-schema.org")), "{schema}");
    assert!(schema["properties"]["nodes"].is_object(), "{schema}");
    assert!(schema["required"].as_array().unwrap().iter().any(|r| r == "nodes"));

    let (s, h) = srv.get("/health").await;
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")));
    let (s, r) = srv.get("/readiness").await;
    assert_eq!((s, r["status"].as_str()), (200, Some("ready")));
    let (s, v) = srv.get("/api/v1/version").await;
    assert_eq!(s, 200);
    assert_eq!(v["name"], "aob");
    assert!(v["version"].as_str().is_some_and(|x| !x.is_empty()));
    assert_eq!(v["api"], "v1");
}

/// Every `$ref` of `v` (recursively), with the JSON pointer of the object holding it.
fn refs_in(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push((at.to_string(), r.clone()));
            }
            for (k, x) in m {
                refs_in(x, &format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| refs_in(x, &format!("{at}/{i}"), out)),
        _ => {}
    }
}

/// What schema-driven tools (Schemathesis in `.ci/schemathesis`) need from the document:
/// every reference resolves inside it (the workflow schema's `$defs` are components),
/// every path parameter is declared, every operation has an id and documents the error
/// envelope for 4xx, creations link to the operations on what they create, and the
/// request examples are accepted as they are.
#[tokio::test]
async fn openapi_document_is_self_contained_and_its_examples_work() {
    let srv = common::start_server(&[]).await;
    let (s, spec) = srv.get("/openapi.json").await;
    assert_eq!(s, 200);

    let mut refs = Vec::new();
    refs_in(&spec, "", &mut refs);
    assert!(!refs.is_empty());
    for (at, r) in &refs {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{at}: external reference {r}"));
        assert!(spec.pointer(pointer).is_some(), "{at}: {r} does not resolve");
    }
    let error = &spec["components"]["schemas"]["Error"]["properties"]["error"];
    assert_eq!(error["required"], json!(["code", "message", "details"]));

    let mut ids = HashSet::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        let templated: Vec<&str> = path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_string()), "{method} {path}: operationId {id} is not unique");
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for name in &templated {
                assert!(
                    params.iter().any(|p| p["name"] == *name && p["in"] == "path" && p["required"] == true),
                    "{method} {path}: path parameter {name} is not declared"
                );
            }
            assert_eq!(
                op["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
                "{method} {path}: 4xx is not the error envelope"
            );
        }
    }

    let links = &spec["paths"]["/api/v1/runs"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["get_api_v1_runs_id"]["parameters"]["id"], "$response.body#/run_id", "{links}");
    let links = &spec["paths"]["/api/v1/workflows"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["get_api_v1_workflows_tag"]["parameters"]["tag"], "$request.body#/tag_name", "{links}");

    let example = |path: &str, method: &str| spec["paths"][path][method]["requestBody"]["content"]["application/json"]["example"].clone();
    let (s, v) = srv.post("/api/v1/workflows/validate", &example("/api/v1/workflows/validate", "post")).await;
    assert_eq!((s, &v["valid"]), (200, &json!(true)), "{v}");
    let (s, v) = srv.post("/api/v1/workflows", &example("/api/v1/workflows", "post")).await;
    assert_eq!(s, 201, "{v}");
    let (s, run) = srv.post("/api/v1/runs", &example("/api/v1/runs", "post")).await;
    assert_eq!(s, 201, "{run}");
    let id = run["run_id"].as_str().unwrap();
    let (s, v) = srv
        .post(&format!("/api/v1/runs/{id}/patches"), &example("/api/v1/runs/{id}/patches", "post"))
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = srv
        .post(&format!("/api/v1/runs/{id}/cancel"), &example("/api/v1/runs/{id}/cancel", "post"))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = srv
        .post("/api/v1/workflows/example/execute", &example("/api/v1/workflows/{tag}/execute", "post"))
        .await;
    assert_eq!(s, 201, "{v}");
}
