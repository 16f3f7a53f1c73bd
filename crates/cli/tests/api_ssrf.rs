//! The SSRF guard seen from outside: http nodes and the `http_request` transform
//! primitive aimed at loopback, link-local metadata, IPv6 loopback, decimal and hex
//! IP spellings, and a redirect to loopback all fail the run with `security_error`,
//! and the trap listeners behind those addresses never see a connection.

#![allow(clippy::unwrap_used)]

mod common;

use serde_json::{Value, json};

use common::{Redirector, TestServer, Trap};

fn http_wf(url: &str) -> Value {
    json!({"nodes": [{"id": "fetch", "type": "http", "config": {"url": url}}], "edges": []})
}

fn transform_wf(url: &str) -> Value {
    json!({
        "nodes": [{"id": "pipe", "type": "transform", "config": {"pipeline": [
            {"step": "http_request", "url": url},
            {"step": "top_k", "k": 1}
        ]}}],
        "edges": []
    })
}

/// Runs `wf` and asserts it FAILED because `node` hit the SSRF guard.
async fn assert_blocked(srv: &TestServer, wf: &Value, node: &str, target: &str) {
    let id = srv.start_run(wf, json!({})).await;
    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "workflow_failed", "{target}: {events:#?}");
    let failed: Vec<&Value> = events.iter().filter(|e| e["type"] == "node_failed" && e["node_id"] == node).collect();
    assert_eq!(failed.len(), 1, "{target}: {events:#?}");
    assert_eq!(failed[0]["data"]["error"]["code"], "security_error", "{target}: {}", failed[0]);
    // Blocked requests are not retried: the same address would be blocked again.
    assert!(!events.iter().any(|e| e["type"] == "node_retrying"), "{target}: {events:#?}");
    let run = srv.get(&format!("/api/v1/runs/{id}")).await.1;
    assert_eq!(run["status"], "FAILED", "{target}: {run}");
    assert_eq!(run["error"]["code"], "security_error", "{target}: {run}");
    assert_eq!(run["error"]["node_id"], node);
}

struct Targets {
    v4: Trap,
    v6: Option<Trap>,
    redirector: Redirector,
    list: Vec<String>,
}

async fn targets() -> Targets {
    let v4 = Trap::bind("127.0.0.1").await.expect("bind 127.0.0.1");
    let v6 = Trap::bind("[::1]").await;
    let p = v4.port();
    let redirector = Redirector::start(format!("http://127.0.0.1:{p}/")).await;
    let mut list = vec![
        format!("http://127.0.0.1:{p}/"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://2130706433:{p}/"),
        format!("http://0x7f000001:{p}/"),
        format!("http://127.1:{p}/"),
        format!("http://[::ffff:127.0.0.1]:{p}/"),
        format!("http://localhost:{p}/"),
        redirector.url("/go"),
    ];
    // Without IPv6 on the host nothing listens there, but the request must still be refused.
    list.push(format!("http://[::1]:{}/", v6.as_ref().map_or(p, Trap::port)));
    Targets { v4, v6, redirector, list }
}

#[tokio::test]
async fn http_nodes_aimed_at_internal_addresses_fail_with_security_error_and_never_connect() {
    let t = targets().await;
    // Only the redirector is allowed: the guard must still refuse its 302 to loopback.
    let srv = common::start_server(&[t.redirector.allow()]).await;
    for target in &t.list {
        assert_blocked(&srv, &http_wf(target), "fetch", target).await;
    }
    assert_eq!(t.redirector.hits(), 1, "the allowed first hop was made exactly once");
    t.v4.assert_untouched().await;
    if let Some(v6) = &t.v6 {
        v6.assert_untouched().await;
    }
}

#[tokio::test]
async fn the_http_request_primitive_is_guarded_the_same_way() {
    let t = targets().await;
    let srv = common::start_server(&[t.redirector.allow()]).await;
    for target in &t.list {
        assert_blocked(&srv, &transform_wf(target), "pipe", target).await;
    }
    assert_eq!(t.redirector.hits(), 1);
    t.v4.assert_untouched().await;
    if let Some(v6) = &t.v6 {
        v6.assert_untouched().await;
    }
}

#[tokio::test]
async fn allow_listed_stub_is_reachable_and_its_neighbours_are_not() {
    let stub = common::Stub::start(std::sync::Arc::new(|_: &common::Hit, _| (200, json!([{"ok": true}])))).await;
    let trap = Trap::bind("127.0.0.1").await.unwrap();
    let srv = common::start_server(&[stub.allow()]).await;
    // The allow entry is for one port: the same IP on another port stays blocked.
    assert_blocked(&srv, &http_wf(&format!("http://127.0.0.1:{}/", trap.port())), "fetch", "other port").await;
    let id = srv.start_run(&http_wf(&stub.url("/fine")), json!({})).await;
    assert_eq!(srv.wait_run(&id).await["status"], "COMPLETED");
    let id = srv.start_run(&transform_wf(&stub.url("/rows")), json!({})).await;
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["outputs"]["pipe"], json!([{"ok": true}]));
    assert_eq!(stub.hits("/fine").len(), 1);
    assert_eq!(stub.hits("/rows").len(), 1);
    trap.assert_untouched().await;
}
