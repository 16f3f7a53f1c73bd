//! Rate limits (per key and route; the workflow-aware run tiers) and idempotency keys.
//!
//! Limits are per minute and refill one token per (60 / limit) seconds, so the tests
//! use limits whose refill is far longer than the few requests they send.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed call is a failed test

mod common;

use serde_json::{Value, json};

fn agents(n: usize) -> Value {
    let nodes: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("agent{i}"), "type": "agent", "config": {"task": "think"}}))
        .collect();
    json!({"nodes": nodes, "edges": []})
}

fn simple() -> Value {
    json!({"nodes": [{"id": "a", "type": "noop", "config": {"output": {"ok": true}}}], "edges": []})
}

async fn member(srv: &common::TestServer, tenant: &str, user: &str) -> reqwest::Client {
    let (s, k) = srv
        .post("/api/v1/keys", &json!({"tenant": tenant, "user": user, "role": "member", "name": user}))
        .await;
    assert_eq!(s, 201, "{k}");
    common::client_with_key(k["key"].as_str().unwrap())
}

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    let h = r.headers().clone();
    (s, h, r.json().await.unwrap_or(Value::Null))
}

fn num(h: &reqwest::header::HeaderMap, name: &str) -> u64 {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn heavy_tier_sixth_run_is_429_with_retry_after_and_creates_nothing() {
    let srv = common::start_server(&[]).await;
    srv.create_workflow("heavy", &agents(3)).await;
    srv.create_workflow("simple", &simple()).await;
    // Runs 1-5, through every way of starting a run.
    for i in 0..5 {
        let (s, v) = match i {
            0 | 1 => srv.post("/api/v1/workflows/heavy/execute", &json!({})).await,
            2 | 3 => srv.post("/api/v1/runs", &json!({"tag": "heavy"})).await,
            _ => srv.post("/api/v1/runs", &json!({"workflow": agents(4)})).await,
        };
        assert_eq!(s, 201, "run {}: {v}", i + 1);
    }
    let (s, h, v) = send(srv.http.post(format!("{}/api/v1/workflows/heavy/execute", srv.url)).json(&json!({}))).await;
    assert_eq!(s, 429, "{v}");
    common::assert_envelope(&v, "rate_limited");
    let d = &v["error"]["details"];
    assert_eq!(
        (d["tier"].as_str(), d["limit"].as_u64(), d["window"].as_str()),
        (Some("heavy"), Some(5), Some("60 seconds"))
    );
    let retry = d["retry_after_seconds"].as_u64().unwrap();
    assert!((1..=12).contains(&retry), "{v}");
    assert_eq!(num(&h, "retry-after"), retry);
    assert_eq!((num(&h, "x-ratelimit-limit"), num(&h, "x-ratelimit-remaining")), (5, 0));
    assert!(num(&h, "x-ratelimit-reset") >= retry);
    // Every way of starting a run is held to the same bucket.
    let (s, v) = srv.post("/api/v1/runs", &json!({"tag": "heavy"})).await;
    assert_eq!(s, 429, "{v}");
    let (s, v) = srv.post("/api/v1/runs", &json!({"workflow": agents(7), "idempotency_key": "later"})).await;
    assert_eq!(s, 429, "{v}");
    // A rejected request with a key is not remembered: it is checked again.
    let (s, h, _) = send(
        srv.http
            .post(format!("{}/api/v1/runs", srv.url))
            .json(&json!({"workflow": agents(7), "idempotency_key": "later"})),
    )
    .await;
    assert_eq!(s, 429);
    assert!(h.get("idempotent-replayed").is_none());

    let (_, list) = srv.get("/api/v1/runs").await;
    assert_eq!(list["count"], 5, "rejected requests created no run: {list}");

    // Other tiers keep their own bucket, and so does every other user.
    let (s, v) = srv.post("/api/v1/workflows/simple/execute", &json!({})).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = srv.post("/api/v1/runs", &json!({"workflow": agents(1)})).await;
    assert_eq!(s, 201, "standard tier: {v}");
    let bob = member(&srv, "acme", "bob").await;
    let (s, _, v) = send(bob.post(format!("{}/api/v1/runs", srv.url)).json(&json!({"workflow": agents(3)}))).await;
    assert_eq!(s, 201, "another tenant's user: {v}");
}

#[tokio::test]
async fn tier_limits_are_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let srv = common::start_server_with(dir, |cfg| {
        cfg.rate_limit.tiers.simple = 2;
        cfg.rate_limit.tiers.heavy = 0; // off
    })
    .await;
    for _ in 0..2 {
        assert_eq!(srv.post("/api/v1/runs", &json!({"workflow": simple()})).await.0, 201);
    }
    let (s, v) = srv.post("/api/v1/runs", &json!({"workflow": simple()})).await;
    assert_eq!((s, v["error"]["details"]["tier"].as_str()), (429, Some("simple")), "{v}");
    assert_eq!(v["error"]["details"]["retry_after_seconds"], 30);
    for _ in 0..8 {
        assert_eq!(srv.post("/api/v1/runs", &json!({"workflow": agents(3)})).await.0, 201);
    }
}

#[tokio::test]
async fn per_route_limit_is_per_key_and_route_and_spares_health() {
    let dir = tempfile::tempdir().unwrap();
    let srv = common::start_server_with(dir, |cfg| cfg.rate_limit.per_route_per_minute = 3).await;
    let url = |p: &str| format!("{}{}", srv.url, p);
    for left in [2, 1, 0] {
        let (s, h, _) = send(srv.http.get(url("/api/v1/whoami"))).await;
        assert_eq!(s, 200);
        assert_eq!((num(&h, "x-ratelimit-limit"), num(&h, "x-ratelimit-remaining")), (3, left));
    }
    let (s, h, v) = send(srv.http.get(url("/api/v1/whoami"))).await;
    assert_eq!(s, 429, "{v}");
    common::assert_envelope(&v, "rate_limited");
    assert_eq!(v["error"]["details"]["scope"], "route");
    assert_eq!(v["error"]["details"]["route"], "GET /api/v1/whoami");
    assert_eq!(num(&h, "retry-after"), 20);
    assert_eq!(num(&h, "x-ratelimit-remaining"), 0);

    // Never limited: health, readiness, the OpenAPI document.
    for _ in 0..10 {
        for p in ["/health", "/readiness", "/openapi.json"] {
            assert_eq!(reqwest::get(url(p)).await.unwrap().status().as_u16(), 200, "{p}");
        }
    }
    // Another route, and another key on the same route, have their own buckets.
    assert_eq!(send(srv.http.get(url("/api/v1/version"))).await.0, 200);
    let runs = (srv.http.get(url("/api/v1/runs/x1")), srv.http.get(url("/api/v1/runs/x2")));
    assert_eq!((send(runs.0).await.0, send(runs.1).await.0), (404, 404), "one bucket per route template");
    let bob = member(&srv, "acme", "bob").await;
    assert_eq!(send(bob.get(url("/api/v1/whoami"))).await.0, 200);
    // Unauthenticated requests are answered 401, not counted.
    assert_eq!(send(reqwest::Client::new().get(url("/api/v1/whoami"))).await.0, 401);
}

#[tokio::test]
async fn idempotency_key_replays_the_first_response() {
    let srv = common::start_server(&[]).await;
    let url = format!("{}/api/v1/runs", srv.url);
    let body = json!({"workflow": simple(), "inputs": {"n": 1}});
    let (s1, h1, first) = send(srv.http.post(&url).header("Idempotency-Key", "k1").json(&body)).await;
    assert_eq!(s1, 201, "{first}");
    assert!(h1.get("idempotent-replayed").is_none());
    let (s2, h2, again) = send(srv.http.post(&url).header("Idempotency-Key", "k1").json(&body)).await;
    assert_eq!((s2, &again), (201, &first), "the first response, replayed");
    assert_eq!(h2["idempotent-replayed"], "true");

    // Same key, another body or another route: 422.
    let (s, _, v) = send(
        srv.http
            .post(&url)
            .header("Idempotency-Key", "k1")
            .json(&json!({"workflow": simple(), "inputs": {"n": 2}})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    common::assert_envelope(&v, "idempotency_mismatch");
    let (s, _, v) = send(
        srv.http
            .post(format!("{}/api/v1/workflows", srv.url))
            .header("Idempotency-Key", "k1")
            .json(&json!({"tag_name": "t", "workflow": simple()})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["details"]["first_request"], "POST /api/v1/runs");

    // The key in the body of a run creation works the same way.
    let keyed = json!({"workflow": simple(), "idempotency_key": "body-key"});
    let (s, _, a) = send(srv.http.post(&url).json(&keyed)).await;
    let (s2, h, b) = send(srv.http.post(&url).json(&keyed)).await;
    assert_eq!((s, s2, &a), (201, 201, &b));
    assert_eq!(h["idempotent-replayed"], "true");
    let (s, _, v) = send(
        srv.http
            .post(&url)
            .json(&json!({"workflow": simple(), "idempotency_key": "body-key", "inputs": {"x": 1}})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(srv.get("/api/v1/runs").await.1["count"], 2);

    // A 4xx answer is remembered too.
    let bad = json!({"workflow": {"nodes": [{"id": "a", "type": "teleport"}], "edges": []}});
    let (s, _, v1) = send(srv.http.post(&url).header("Idempotency-Key", "bad").json(&bad)).await;
    let (s2, h, v2) = send(srv.http.post(&url).header("Idempotency-Key", "bad").json(&bad)).await;
    assert_eq!((s, s2, &v1), (400, 400, &v2));
    assert_eq!(h["idempotent-replayed"], "true");

    // Keys belong to a tenant: another tenant's "k1" is a new request.
    let bob = member(&srv, "acme", "bob").await;
    let (s, _, v) = send(bob.post(&url).header("Idempotency-Key", "k1").json(&body)).await;
    assert_eq!(s, 201, "{v}");
    assert_ne!(v["run_id"], first["run_id"]);
    let (s, _, v) = send(srv.http.post(&url).header("Idempotency-Key", "").json(&body)).await;
    assert_eq!(s, 400, "{v}");
}

#[tokio::test]
async fn every_creating_post_is_idempotent() {
    let srv = common::start_server(&[]).await;
    let post = |path: &str, key: &str, body: Value| {
        let req = srv.http.post(format!("{}{}", srv.url, path)).header("Idempotency-Key", key).json(&body);
        send(req)
    };
    // Workflows: the replay does not move the tag again.
    let wf = json!({"tag_name": "flow", "workflow": simple()});
    let (a, b) = (post("/api/v1/workflows", "w", wf.clone()).await, post("/api/v1/workflows", "w", wf).await);
    assert_eq!((a.0, b.0, &a.2), (201, 201, &b.2));
    assert_eq!(srv.get("/api/v1/workflows/flow").await.1["version"], 1);

    // Execute.
    let (a, b) = (
        post("/api/v1/workflows/flow/execute", "e", json!({})).await,
        post("/api/v1/workflows/flow/execute", "e", json!({})).await,
    );
    assert_eq!((a.0, &a.2), (201, &b.2));

    // Keys: one key is created and its secret is the one shown first.
    let k = json!({"tenant": "acme", "user": "carol", "name": "ci"});
    let (a, b) = (post("/api/v1/keys", "key", k.clone()).await, post("/api/v1/keys", "key", k).await);
    assert_eq!((a.0, &a.2["key"]), (201, &b.2["key"]));
    assert_eq!(srv.get("/api/v1/keys?tenant=acme").await.1["count"], 1);

    // Tag patches: one history entry.
    let p = json!({"operations": [{"op": "replace", "path": "/nodes/0/config/output/ok", "value": false}], "expected_version": 1});
    let patch = || {
        send(
            srv.http
                .patch(format!("{}/api/v1/workflows/flow/patch", srv.url))
                .header("Idempotency-Key", "p")
                .json(&p),
        )
    };
    let (a, b) = (patch().await, patch().await);
    assert_eq!((a.0, b.0, &a.2), (200, 200, &b.2), "the replay is not a stale-version 409");
    assert_eq!(srv.get("/api/v1/workflows/flow/history").await.1["count"], 2);

    // Approval decisions: the replay is the first decision, not a 409.
    let hitl = json!({"nodes": [{"id": "ok", "type": "hitl", "config": {"message": "go?"}}], "edges": []});
    let id = srv.start_run(&hitl, json!({})).await;
    let approval = srv.poll_until("/api/v1/approvals?status=pending", 10, |v| v["count"] == 1).await["approvals"][0]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/v1/approvals/{approval}/decide");
    let (a, b) = (
        post(&path, "d", json!({"decision": "approve"})).await,
        post(&path, "d", json!({"decision": "approve"})).await,
    );
    assert_eq!((a.0, b.0, &a.2), (200, 200, &b.2));
    assert_eq!(post(&path, "d2", json!({"decision": "approve"})).await.0, 409, "a new key is a new decision");
    assert_eq!(srv.wait_run(&id).await["status"], "COMPLETED");
}
