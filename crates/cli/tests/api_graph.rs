//! Black-box engine semantics through the HTTP API: joins, branches, loops, retries,
//! map fan-out and subworkflows, with `http` nodes aimed at loopback stubs.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use common::{AsyncStub, Hit, Stub};

fn ok_stub() -> common::Responder {
    Arc::new(|hit: &Hit, _| (200, json!({"path": hit.path})))
}

fn http(id: &str, url: String) -> Value {
    json!({"id": id, "type": "http", "config": {"method": "POST", "url": url, "body": {"from": id}}})
}

fn node<'a>(details: &'a Value, id: &str) -> &'a Value {
    details["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["node_id"] == id))
        .unwrap_or_else(|| panic!("no node {id} in {details}"))
}

fn of_type<'a>(events: &'a [Value], kind: &str, node: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind && e["node_id"] == node).collect()
}

#[tokio::test]
async fn seed_diamond_with_http_nodes_runs_the_join_once_after_both_branches() {
    let stub = Stub::start(ok_stub()).await;
    let srv = common::start_server(&[stub.allow()]).await;
    let wf = json!({
        "nodes": [http("A", stub.url("/a")), http("B", stub.url("/b")), http("C", stub.url("/c")), http("D", stub.url("/d"))],
        "edges": [{"from": "A", "to": "B"}, {"from": "A", "to": "C"}, {"from": "B", "to": "D"}, {"from": "C", "to": "D"}]
    });
    let id = srv.start_run(&wf, json!({})).await;
    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
    assert_eq!(events.last().unwrap()["type"], "workflow_completed");

    for p in ["/a", "/b", "/c", "/d"] {
        assert_eq!(stub.hits(p).len(), 1, "{p} hit count");
    }
    let order: Vec<String> = stub.hits.lock().unwrap().iter().map(|h| h.path.clone()).collect();
    let pos = |p: &str| order.iter().position(|x| x == p).unwrap();
    assert!(
        pos("/d") > pos("/b") && pos("/d") > pos("/c") && pos("/b") > pos("/a") && pos("/c") > pos("/a"),
        "order {order:?}"
    );
    assert_eq!(of_type(&events, "node_completed", "D").len(), 1);
    // D starts only after both B and C completed (event order is commit order).
    let seq = |kind: &str, n: &str| of_type(&events, kind, n)[0]["seq"].as_u64().unwrap();
    assert!(seq("node_started", "D") > seq("node_completed", "B"));
    assert!(seq("node_started", "D") > seq("node_completed", "C"));
    // D sent its own configured body, with no unresolved reference text.
    let d_body: Value = serde_json::from_str(&stub.hits("/d")[0].body).unwrap();
    assert_eq!(d_body, json!({"from": "D"}));

    let run = srv.get(&format!("/api/v1/runs/{id}")).await.1;
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["outputs"]["D"]["body"]["path"], "/d", "{run}");
    let det = srv.details(&id).await;
    assert_eq!(det["status"], "COMPLETED");
    for n in ["A", "B", "C", "D"] {
        let d = node(&det, n);
        assert_eq!(d["status"], "completed", "{d}");
        assert_eq!(d["attempt"], 1, "{d}");
        assert_eq!(d["type"], "http");
        assert!(d["started_at"].is_string() && d["finished_at"].is_string(), "{d}");
        assert!(d["duration_ms"].as_i64().is_some_and(|ms| ms >= 0), "{d}");
        assert_eq!(d["output"]["status_code"], 200, "{d}");
        assert_eq!(det["node_executions"][n]["status"], "completed");
    }
    assert!(det["edges"].as_array().unwrap().iter().all(|e| e["state"] == "taken"), "{}", det["edges"]);
}

#[tokio::test]
async fn untaken_branch_feeding_a_join_is_skipped_and_the_join_fires_once() {
    let stub = Stub::start(ok_stub()).await;
    let srv = common::start_server(&[stub.allow()]).await;
    let wf = json!({
        "nodes": [
            {"id": "check", "type": "conditional"},
            http("big", stub.url("/big")),
            http("small", stub.url("/small")),
            http("join", stub.url("/join"))
        ],
        "edges": [
            {"from": "check", "to": "big", "condition": "output.amount > 100"},
            {"from": "check", "to": "small", "condition": "output.amount <= 100"},
            {"from": "big", "to": "join"},
            {"from": "small", "to": "join"}
        ]
    });
    let id = srv.start_run(&wf, json!({"amount": 50})).await;
    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
    assert_eq!(events.last().unwrap()["type"], "workflow_completed", "{events:#?}");
    assert_eq!(stub.hits("/big").len(), 0);
    assert_eq!(stub.hits("/small").len(), 1);
    assert_eq!(stub.hits("/join").len(), 1);
    assert_eq!(of_type(&events, "node_skipped", "big").len(), 1);
    assert_eq!(of_type(&events, "node_completed", "join").len(), 1);
    let det = srv.details(&id).await;
    assert_eq!(det["status"], "COMPLETED");
    assert_eq!(node(&det, "big")["status"], "skipped");
    assert_eq!(node(&det, "small")["status"], "completed");
    assert_eq!(node(&det, "join")["status"], "completed");

    // The other way round on the same stored workflow.
    let id = srv.start_run(&wf, json!({"amount": 500})).await;
    assert_eq!(srv.wait_run(&id).await["status"], "COMPLETED");
    assert_eq!(stub.hits("/big").len(), 1);
    assert_eq!(stub.hits("/small").len(), 1);
    assert_eq!(stub.hits("/join").len(), 2);
    assert_eq!(node(&srv.details(&id).await, "small")["status"], "skipped");
}

#[tokio::test]
async fn a_branch_matching_no_edge_completes_with_everything_downstream_skipped() {
    let stub = Stub::start(ok_stub()).await;
    let srv = common::start_server(&[stub.allow()]).await;
    let wf = json!({
        "nodes": [
            {"id": "check", "type": "conditional"},
            http("high", stub.url("/high")),
            http("huge", stub.url("/huge")),
            http("after", stub.url("/after"))
        ],
        "edges": [
            {"from": "check", "to": "high", "condition": "output.amount > 100"},
            {"from": "check", "to": "huge", "condition": "output.amount > 1000"},
            {"from": "high", "to": "after"},
            {"from": "huge", "to": "after"}
        ]
    });
    let id = srv.start_run(&wf, json!({"amount": 5})).await;
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert!(stub.hits.lock().unwrap().is_empty());
    let det = srv.details(&id).await;
    assert_eq!(node(&det, "check")["status"], "completed");
    for n in ["high", "huge", "after"] {
        assert_eq!(node(&det, n)["status"], "skipped", "{n}");
    }
}

#[tokio::test]
async fn loop_retries_the_call_until_success_then_takes_the_break_path() {
    let stub = Stub::start(Arc::new(|hit: &Hit, n| {
        if hit.path == "/call" && n < 2 {
            (200, json!({"status": "error", "n": n}))
        } else {
            (200, json!({"status": "success", "n": n}))
        }
    }))
    .await;
    let srv = common::start_server(&[stub.allow()]).await;
    let wf = json!({
        "nodes": [
            {"id": "call", "type": "http", "config": {"url": stub.url("/call")}},
            {"id": "retry", "type": "loop", "config": {
                "max_iterations": 5, "loop_back_to": "call",
                "condition": "output.body.status != 'success'",
                "break_path": ["ok"], "timeout_path": ["give_up"]
            }},
            {"id": "ok", "type": "http", "config": {"url": stub.url("/ok")}},
            {"id": "give_up", "type": "http", "config": {"url": stub.url("/give_up")}}
        ],
        "edges": [{"from": "call", "to": "retry"}]
    });
    let id = srv.start_run(&wf, json!({})).await;
    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
    assert_eq!(events.last().unwrap()["type"], "workflow_completed", "{events:#?}");
    assert_eq!(stub.hits("/call").len(), 3);
    assert_eq!(stub.hits("/ok").len(), 1);
    assert_eq!(stub.hits("/give_up").len(), 0);
    assert_eq!(of_type(&events, "node_completed", "call").len(), 3);
    // Each iteration is a new activation, so each call has its own idempotency key.
    let keys: std::collections::HashSet<String> = stub.hits("/call").iter().map(|h| h.header("idempotency-key").unwrap().to_string()).collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    let det = srv.details(&id).await;
    assert_eq!(node(&det, "ok")["status"], "completed");
    assert_eq!(node(&det, "give_up")["status"], "skipped");
    assert_eq!(node(&det, "call")["output"]["body"]["status"], "success");
    let done = of_type(&events, "node_completed", "retry");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["data"]["exit"], "break");
}

#[tokio::test]
async fn loop_that_never_succeeds_takes_the_timeout_path() {
    let stub = Stub::start(Arc::new(|_: &Hit, _| (200, json!({"status": "error"})))).await;
    let srv = common::start_server(&[stub.allow()]).await;
    let wf = json!({
        "nodes": [
            {"id": "call", "type": "http", "config": {"url": stub.url("/call")}},
            {"id": "retry", "type": "loop", "config": {
                "max_iterations": 3, "loop_back_to": "call",
                "condition": "output.body.status != 'success'",
                "break_path": ["ok"], "timeout_path": ["give_up"]
            }},
            {"id": "ok", "type": "noop"},
            {"id": "give_up", "type": "noop"}
        ],
        "edges": [{"from": "call", "to": "retry"}]
    });
    let id = srv.start_run(&wf, json!({})).await;
    assert_eq!(srv.wait_run(&id).await["status"], "COMPLETED");
    assert_eq!(stub.hits("/call").len(), 3);
    let det = srv.details(&id).await;
    assert_eq!(node(&det, "ok")["status"], "skipped");
    assert_eq!(node(&det, "give_up")["status"], "completed");
}

#[tokio::test]
async fn node_retry_policy_retries_a_503_with_a_fresh_idempotency_key_per_attempt() {
    let stub = Stub::start(Arc::new(
        |_: &Hit, n| {
            if n == 0 { (503, json!({"busy": true})) } else { (200, json!({"fine": true})) }
        },
    ))
    .await;
    let srv = common::start_server(&[stub.allow()]).await;
    let wf = json!({
        "nodes": [{
            "id": "flaky", "type": "http",
            "config": {"method": "POST", "url": stub.url("/flaky"), "body": {"x": 1}, "fail_on_status": true},
            "retry": {"max_attempts": 3, "backoff_ms": 20, "backoff_multiplier": 1.0}
        }],
        "edges": []
    });
    let id = srv.start_run(&wf, json!({})).await;
    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
    let kinds: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e["node_id"] == "flaky")
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["attempt"].as_u64().unwrap()))
        .collect();
    let want: Vec<(String, u64)> = [("node_started", 1), ("node_retrying", 1), ("node_started", 2), ("node_completed", 2)]
        .iter()
        .map(|(k, a)| (k.to_string(), *a))
        .collect();
    assert_eq!(kinds, want);
    let retrying = &of_type(&events, "node_retrying", "flaky")[0];
    assert_eq!(retrying["data"]["error"]["code"], "http_status", "{retrying}");
    assert!(retrying["data"]["next_attempt_at_ms"].is_i64(), "{retrying}");
    assert_eq!(events.last().unwrap()["type"], "workflow_completed");

    let hits = stub.hits("/flaky");
    assert_eq!(hits.len(), 2);
    let keys: Vec<&str> = hits.iter().map(|h| h.header("idempotency-key").expect("Idempotency-Key header")).collect();
    assert_ne!(keys[0], keys[1]);
    // `<run_id>:<node>:<activation>:<attempt>`: the same attempt always gets the same key.
    for (i, k) in keys.iter().enumerate() {
        let parts: Vec<&str> = k.rsplitn(4, ':').collect();
        assert_eq!(parts.len(), 4, "{k}");
        assert_eq!(parts[3], id, "{k}");
        assert_eq!(parts[0], (i + 1).to_string(), "{k}");
        assert!(parts[1].parse::<u32>().is_ok() && parts[2].parse::<u32>().is_ok(), "{k}");
    }
    assert_eq!(keys[0].rsplit_once(':').unwrap().0, keys[1].rsplit_once(':').unwrap().0);
    let det = srv.details(&id).await;
    assert_eq!(node(&det, "flaky")["attempt"], 2);
    assert_eq!(node(&det, "flaky")["output"]["body"]["fine"], true);
}

#[tokio::test]
async fn map_fans_out_with_the_concurrency_limit_and_keeps_item_order() {
    let stub = AsyncStub::start(Arc::new(|hit: Hit, _| {
        Box::pin(async move {
            // A bounded hold so that requests overlap and the limit can be measured.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let body: Value = serde_json::from_str(&hit.body).unwrap_or(Value::Null);
            (200, json!({"echo": body["i"].as_i64().unwrap_or(-1) * 10, "index": body["idx"]}))
        })
    }))
    .await;
    let srv = common::start_server(&[stub.allow()]).await;
    let wf = json!({
        "nodes": [{
            "id": "fan", "type": "map",
            "config": {
                "items": "$inputs.items",
                "concurrency": 2,
                "node": {"type": "http", "config": {"method": "POST", "url": stub.url("/item"), "body": {"i": "$item", "idx": "$index"}}}
            }
        }],
        "edges": []
    });
    let items = [7, 3, 9, 1, 4, 6];
    let id = srv.start_run(&wf, json!({"items": items})).await;
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(stub.hits("/item").len(), items.len());
    assert!(stub.max_in_flight() <= 2, "stub saw {} requests at once", stub.max_in_flight());
    assert_eq!(stub.max_in_flight(), 2, "items never ran in parallel");
    let out = run["outputs"]["fan"].as_array().unwrap_or_else(|| panic!("{run}"));
    assert_eq!(out.len(), items.len());
    for (k, v) in items.iter().enumerate() {
        assert_eq!(out[k]["body"]["echo"], json!(v * 10), "item {k}: {}", out[k]);
        assert_eq!(out[k]["body"]["index"], json!(k));
    }
    let det = srv.details(&id).await;
    assert_eq!(node(&det, "fan")["items"]["total"], 6);
    assert_eq!(node(&det, "fan")["items"]["completed"], 6);
}

#[tokio::test]
async fn subworkflows_inline_and_by_tag_return_child_outputs_and_are_listed_with_their_parent() {
    let stub = Stub::start(Arc::new(|hit: &Hit, _| {
        (200, json!({"got": serde_json::from_str::<Value>(&hit.body).unwrap_or(Value::Null)}))
    }))
    .await;
    let srv = common::start_server(&[stub.allow()]).await;
    let child = json!({
        "nodes": [{"id": "call", "type": "http", "config": {"method": "POST", "url": stub.url("/child"), "body": {"x": "$inputs.x"}}}],
        "outputs": {"x_seen": "$nodes.call.body.got.x"}
    });
    srv.create_workflow("child-wf", &child).await;
    let parent = json!({
        "nodes": [
            {"id": "inline", "type": "subworkflow", "config": {
                "workflow": {"nodes": [{"id": "c1", "type": "noop", "config": {"output": {"doubled": "$inputs.v"}}}]},
                "inputs": {"v": "$inputs.v"}
            }},
            {"id": "by_tag", "type": "subworkflow", "config": {"tag": "child-wf", "inputs": {"x": "${inputs.v}-tagged"}}}
        ],
        "edges": [{"from": "inline", "to": "by_tag"}]
    });
    let id = srv.start_run(&parent, json!({"v": 21})).await;
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let det = srv.details(&id).await;
    let inline = &node(&det, "inline")["output"];
    assert_eq!(inline["outputs"]["c1"]["doubled"], 21, "{inline}");
    assert_eq!(run["outputs"]["by_tag"]["outputs"]["x_seen"], "21-tagged", "{run}");
    assert_eq!(stub.hits("/child").len(), 1);

    let children: Vec<&str> = [inline["run_id"].as_str().unwrap(), run["outputs"]["by_tag"]["run_id"].as_str().unwrap()].to_vec();
    let (s, list) = srv.get("/api/v1/runs?limit=50").await;
    assert_eq!(s, 200);
    let runs = list["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{list}");
    for c in &children {
        let r = runs
            .iter()
            .find(|r| r["run_id"] == *c)
            .unwrap_or_else(|| panic!("child {c} not listed: {list}"));
        assert_eq!(r["parent_run_id"], id, "{r}");
        assert_eq!(r["status"], "COMPLETED");
        let full = srv.get(&format!("/api/v1/runs/{c}")).await.1;
        assert_eq!(full["parent_run_id"], id);
    }
    let top = runs.iter().find(|r| r["run_id"] == id).unwrap();
    assert!(top["parent_run_id"].is_null(), "{top}");
    let tagged = srv.get("/api/v1/runs?tag=child-wf").await.1;
    assert_eq!(tagged["runs"].as_array().unwrap().len(), 1, "{tagged}");
    assert_eq!(tagged["runs"][0]["run_id"], children[1]);
}
