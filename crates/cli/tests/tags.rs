//! Tags and versions: tag patches with an optimistic version check, history, undo/redo
//! by moving the tag, the global namespace, and runs keeping their version.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed call is a failed test

mod common;

use serde_json::{Value, json};

fn base() -> Value {
    json!({
        "nodes": [
            {"id": "a", "type": "noop", "config": {"output": {"v": 1}}},
            {"id": "b", "type": "noop"}
        ],
        "edges": [{"from": "a", "to": "b"}]
    })
}

async fn patch(srv: &common::TestServer, tag: &str, body: &Value) -> (u16, Value) {
    let r = srv
        .http
        .patch(format!("{}/api/v1/workflows/{tag}/patch", srv.url))
        .json(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn patch_moves_the_tag_with_an_optimistic_check_and_versions_0_is_the_original() {
    let srv = common::start_server(&[]).await;
    let created = srv.create_workflow("flow", &base()).await;
    assert_eq!(created["version"], 1);
    let original = created["hash"].clone();

    let ops = json!([
        {"op": "add", "path": "/nodes/-", "value": {"id": "c", "type": "noop", "config": {"output": {"added": true}}}},
        {"op": "add", "path": "/edges/-", "value": {"from": "b", "to": "c"}}
    ]);
    let (s, v) = patch(&srv, "flow", &json!({"operations": ops, "description": "add c", "expected_version": 1})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["tag"].as_str(), v["version"].as_u64(), v["seq"].as_u64(), v["op_count"].as_u64()),
        (Some("flow"), Some(2), Some(1), Some(2))
    );
    assert_eq!(v["description"], "add c");
    assert_eq!(v["previous_hash"], original);
    let patched = v["hash"].clone();
    assert_ne!(patched, original);

    // A stale expected_version is a 409 and changes nothing.
    let (s, v) = patch(
        &srv,
        "flow",
        &json!({"operations": [{"op": "remove", "path": "/edges/1"}], "expected_version": 1}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    common::assert_envelope(&v, "conflict");
    assert_eq!(v["error"]["details"]["current_version"], 2);

    let (_, cur) = srv.get("/api/v1/workflows/flow").await;
    assert_eq!((cur["version"].as_u64(), &cur["hash"]), (Some(2), &patched));
    assert_eq!(cur["workflow"]["nodes"].as_array().unwrap().len(), 3);

    let (s, v0) = srv.get("/api/v1/workflows/flow/versions/0").await;
    assert_eq!(s, 200, "{v0}");
    assert_eq!(v0["hash"], original);
    assert_eq!(v0["op"], "create");
    let ids: Vec<&str> = v0["workflow"]["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b"]);
    let (_, v1) = srv.get("/api/v1/workflows/flow/versions/1").await;
    assert_eq!(
        (v1["hash"].clone(), v1["op"].clone(), v1["description"].clone()),
        (patched.clone(), json!("patch"), json!("add c"))
    );
    assert_eq!(srv.get("/api/v1/workflows/flow/versions/2").await.0, 404);
    assert_eq!(srv.get("/api/v1/workflows/flow/versions/x").await.0, 400);

    let (s, h) = srv.get("/api/v1/workflows/flow/history").await;
    assert_eq!(s, 200, "{h}");
    let rows = h["history"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0]["seq"].as_u64(), rows[0]["op"].as_str(), rows[0]["by"].as_str()),
        (Some(0), Some("create"), Some("admin"))
    );
    assert_eq!(
        (rows[1]["seq"].as_u64(), rows[1]["op"].as_str(), rows[1]["description"].as_str()),
        (Some(1), Some("patch"), Some("add c"))
    );
    assert!(rows[1]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(rows[1]["hash"], patched);
    assert_eq!(rows[1]["current"], true);

    // The patched workflow runs.
    let (s, run) = srv.post("/api/v1/workflows/flow/execute", &json!({})).await;
    assert_eq!(s, 201, "{run}");
    let done = srv.wait_run(run["run_id"].as_str().unwrap()).await;
    assert_eq!(done["outputs"]["c"], json!({"added": true}));
    assert_eq!(done["workflow_hash"], patched);
}

#[tokio::test]
async fn invalid_patches_are_400_with_every_reason_and_change_nothing() {
    let srv = common::start_server(&[]).await;
    srv.create_workflow("flow", &base()).await;
    let cases = [
        // Out-of-range index, and a path that does not exist.
        (json!([{"op": "remove", "path": "/nodes/9"}]), "bad_request"),
        (json!([{"op": "replace", "path": "/nodes/0/nope/deeper", "value": 1}]), "bad_request"),
        // A failing test op.
        (json!([{"op": "test", "path": "/nodes/0/id", "value": "zzz"}]), "bad_request"),
        // Not RFC 6902.
        (json!([{"op": "frobnicate", "path": "/nodes"}]), "bad_request"),
        (json!([]), "bad_request"),
        (json!({"op": "add"}), "bad_request"),
    ];
    for (ops, code) in cases {
        let (s, v) = patch(&srv, "flow", &json!({"operations": ops})).await;
        assert_eq!(s, 400, "{ops}: {v}");
        common::assert_envelope(&v, code);
    }
    // The first operation applies, the second does not: nothing is kept.
    let (s, v) = patch(
        &srv,
        "flow",
        &json!({"operations": [
            {"op": "add", "path": "/nodes/-", "value": {"id": "z", "type": "noop"}},
            {"op": "remove", "path": "/edges/5"}
        ]}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["details"]["errors"][0]["pointer"], "/operations/1");

    // Applies, but the result is not a valid workflow: every problem is reported.
    let (s, v) = patch(
        &srv,
        "flow",
        &json!({"operations": [
            {"op": "add", "path": "/edges/-", "value": {"from": "b", "to": "ghost"}},
            {"op": "add", "path": "/nodes/-", "value": {"id": "a", "type": "noop"}},
            {"op": "replace", "path": "/nodes/1/type", "value": "teleport"}
        ]}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    common::assert_envelope(&v, "validation_failed");
    let errors = v["error"]["details"]["errors"].as_array().unwrap();
    assert!(errors.len() >= 3, "every problem at once: {v}");

    let (_, t) = srv.get("/api/v1/workflows/flow").await;
    assert_eq!(t["version"], 1);
    assert_eq!(srv.get("/api/v1/workflows/flow/history").await.1["count"], 1);
    let (s, v) = patch(&srv, "nope", &json!({"operations": [{"op": "remove", "path": "/edges/0"}]})).await;
    assert_eq!(s, 404, "{v}");
}

#[tokio::test]
async fn move_undoes_and_redoes_and_is_recorded() {
    let srv = common::start_server(&[]).await;
    let v0 = srv.create_workflow("flow", &base()).await["hash"].clone();
    let (_, p1) = patch(
        &srv,
        "flow",
        &json!({"operations": [{"op": "replace", "path": "/nodes/0/config/output/v", "value": 2}]}),
    )
    .await;
    let (_, p2) = patch(
        &srv,
        "flow",
        &json!({"operations": [{"op": "replace", "path": "/nodes/0/config/output/v", "value": 3}]}),
    )
    .await;
    assert_eq!((p1["seq"].as_u64(), p2["seq"].as_u64()), (Some(1), Some(2)));

    // Undo to the original.
    let (s, m) = srv.post("/api/v1/workflows/flow/move", &json!({"version": 0, "expected_version": 3})).await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(
        (m["hash"].clone(), m["version"].clone(), m["seq"].clone(), m["moved_to"].clone()),
        (v0.clone(), json!(4), json!(3), json!(0))
    );
    let (_, run) = srv.post("/api/v1/workflows/flow/execute", &json!({})).await;
    let done = srv.wait_run(run["run_id"].as_str().unwrap()).await;
    assert_eq!(done["outputs"]["b"], json!({"v": 1}));

    // Redo to the second patch.
    let (s, m) = srv.post("/api/v1/workflows/flow/move", &json!({"version": 2})).await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["hash"], p2["hash"]);
    let (_, t) = srv.get("/api/v1/workflows/flow").await;
    assert_eq!(t["workflow"]["nodes"][0]["config"]["output"]["v"], 3);

    let (s, v) = srv.post("/api/v1/workflows/flow/move", &json!({"version": 1, "expected_version": 3})).await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = srv.post("/api/v1/workflows/flow/move", &json!({"version": 42})).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = srv.post("/api/v1/workflows/flow/move", &json!({})).await;
    assert_eq!(s, 400, "{v}");

    let (_, h) = srv.get("/api/v1/workflows/flow/history").await;
    let ops: Vec<&str> = h["history"].as_array().unwrap().iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["create", "patch", "patch", "move", "move"]);
    assert_eq!(h["history"][3]["description"], "moved to version 0");
    assert_eq!(h["history"][4]["hash"], p2["hash"]);
    assert_eq!(h["version"], 5);
}

#[tokio::test]
async fn a_run_keeps_the_version_it_started_with() {
    let srv = common::start_server(&[]).await;
    let wf = json!({
        "nodes": [
            {"id": "pause", "type": "wait", "config": {"duration_ms": 2500}},
            {"id": "after", "type": "noop", "config": {"output": {"v": "old"}}}
        ],
        "edges": [{"from": "pause", "to": "after"}]
    });
    let original = srv.create_workflow("slow", &wf).await["hash"].clone();
    let (s, run) = srv.post("/api/v1/workflows/slow/execute", &json!({})).await;
    assert_eq!(s, 201, "{run}");
    let id = run["run_id"].as_str().unwrap().to_string();
    srv.poll_until(&format!("/api/v1/runs/{id}/details"), 10, |d| {
        d["node_executions"]["pause"]["status"] == "running"
    })
    .await;

    let (s, v) = patch(
        &srv,
        "slow",
        &json!({"operations": [
            {"op": "replace", "path": "/nodes/1/config/output/v", "value": "new"},
            {"op": "replace", "path": "/nodes/0/config/duration_ms", "value": 1}
        ]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, now) = srv.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(now["status"], "RUNNING", "the patch landed while the run waited");

    let done = srv.wait_run(&id).await;
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["outputs"]["after"], json!({"v": "old"}));
    assert_eq!(done["workflow_hash"], original);
    let d = srv.details(&id).await;
    assert_eq!(d["workflow"]["nodes"][1]["config"]["output"]["v"], "old");

    let (_, run2) = srv.post("/api/v1/workflows/slow/execute", &json!({})).await;
    let done2 = srv.wait_run(run2["run_id"].as_str().unwrap()).await;
    assert_eq!(done2["outputs"]["after"], json!({"v": "new"}));
}

#[tokio::test]
async fn global_tags_are_read_by_every_tenant_written_by_admins_and_shadowed() {
    let srv = common::start_server(&[]).await;
    let wf = json!({"nodes": [{"id": "hello", "type": "noop", "config": {"output": {"from": "global"}}}], "edges": []});
    let (s, g) = srv
        .post("/api/v1/workflows", &json!({"tag_name": "shared", "workflow": wf, "global": true}))
        .await;
    assert_eq!(s, 201, "{g}");
    assert_eq!((g["owner"].as_str(), g["global"].as_bool()), (Some("_global_"), Some(true)));

    let (s, k) = srv
        .post("/api/v1/keys", &json!({"tenant": "acme", "user": "bob", "role": "member", "name": "bob"}))
        .await;
    assert_eq!(s, 201, "{k}");
    let bob = common::client_with_key(k["key"].as_str().unwrap());
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = bob.request(method, format!("{}{}", srv.url, path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    use reqwest::Method;

    // Readable by another tenant, in every listing scope but `user`.
    let (s, v) = call(Method::GET, "/api/v1/workflows/shared", None).await;
    assert_eq!(
        (s, v["global"].clone(), v["workflow"]["nodes"][0]["id"].clone()),
        (200, json!(true), json!("hello"))
    );
    let names = |v: &Value| -> Vec<(String, bool)> {
        v["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["tag"].as_str().unwrap().to_string(), w["global"].as_bool().unwrap()))
            .collect()
    };
    assert_eq!(names(&call(Method::GET, "/api/v1/workflows", None).await.1), [("shared".to_string(), true)]);
    assert_eq!(
        names(&call(Method::GET, "/api/v1/workflows?scope=global", None).await.1),
        [("shared".to_string(), true)]
    );
    assert!(names(&call(Method::GET, "/api/v1/workflows?scope=user", None).await.1).is_empty());
    assert_eq!(call(Method::GET, "/api/v1/workflows?scope=everything", None).await.0, 400);
    assert_eq!(call(Method::GET, "/api/v1/workflows/shared/versions/0", None).await.0, 200);
    assert_eq!(call(Method::GET, "/api/v1/workflows/shared/history", None).await.0, 200);

    // Executable: the run is the tenant's own, and so is read access to its workflow.
    let (s, run) = call(Method::POST, "/api/v1/workflows/shared/execute", Some(json!({}))).await;
    assert_eq!(s, 201, "{run}");
    let id = run["run_id"].as_str().unwrap().to_string();
    let mut finished = Value::Null;
    for _ in 0..500 {
        let (s, r) = call(Method::GET, &format!("/api/v1/runs/{id}"), None).await;
        assert_eq!(s, 200);
        if r["status"] == "COMPLETED" {
            finished = r;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(finished["outputs"]["hello"], json!({"from": "global"}), "{finished}");
    assert_eq!(finished["owner"], "acme");
    assert_eq!(
        call(Method::GET, &format!("/api/v1/artifacts/{}", g["hash"].as_str().unwrap()), None).await.0,
        200
    );
    assert_eq!(srv.get(&format!("/api/v1/runs/{id}")).await.0, 404, "not the admin tenant's run");

    // Not writable by a member.
    let (s, v) = call(
        Method::PATCH,
        "/api/v1/workflows/shared/patch",
        Some(json!({"operations": [{"op": "remove", "path": "/nodes/0/config"}]})),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    common::assert_envelope(&v, "forbidden");
    assert_eq!(call(Method::POST, "/api/v1/workflows/shared/move", Some(json!({"version": 0}))).await.0, 403);
    assert_eq!(call(Method::DELETE, "/api/v1/workflows/shared", None).await.0, 403);
    let (s, _) = call(
        Method::POST,
        "/api/v1/workflows",
        Some(json!({"tag_name": "mine", "workflow": wf, "global": true})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = srv.post("/api/v1/keys", &json!({"tenant": "_global_", "user": "x"})).await;
    assert_eq!(s, 400, "no tenant may take the global namespace");

    // A tenant's own tag of the same name shadows the global one.
    let own = json!({"nodes": [{"id": "hello", "type": "noop", "config": {"output": {"from": "acme"}}}], "edges": []});
    let (s, v) = call(Method::POST, "/api/v1/workflows", Some(json!({"tag_name": "shared", "workflow": own}))).await;
    assert_eq!(s, 201, "{v}");
    let (_, v) = call(Method::GET, "/api/v1/workflows/shared", None).await;
    assert_eq!((v["owner"].as_str(), v["global"].as_bool()), (Some("acme"), Some(false)));
    assert_eq!(names(&call(Method::GET, "/api/v1/workflows", None).await.1), [("shared".to_string(), false)]);
    let (_, v) = call(Method::GET, "/api/v1/workflows/shared?scope=global", None).await;
    assert_eq!(v["owner"], "_global_");
    // Its own copy is writable by the member; the global one is untouched.
    let (s, v) = call(
        Method::PATCH,
        "/api/v1/workflows/shared/patch",
        Some(json!({"operations": [{"op": "replace", "path": "/nodes/0/config/output/from", "value": "acme2"}]})),
    )
    .await;
    assert_eq!((s, v["owner"].clone()), (200, json!("acme")), "{v}");

    // Admins write the global tag.
    let (s, v) = patch(
        &srv,
        "shared",
        &json!({"operations": [{"op": "replace", "path": "/nodes/0/config/output/from", "value": "global2"}], "expected_version": 1}),
    )
    .await;
    assert_eq!((s, v["owner"].clone(), v["version"].clone()), (200, json!("_global_"), json!(2)), "{v}");
    let (_, h) = srv.get("/api/v1/workflows/shared/history").await;
    assert_eq!(h["history"][1]["by"], "admin");
}
