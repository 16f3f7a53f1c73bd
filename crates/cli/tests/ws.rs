//! The WebSocket at `/api/v1/ws`: subscriptions to a run (history, then live, in seq
//! order, resumable) and to all of the caller's runs, ping/pong, authentication and
//! tenancy, and slow consumers dropped with a close code.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed call is a failed test

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(srv: &common::TestServer, key: &str) -> String {
    format!("ws://{}/api/v1/ws?api_key={key}", srv.url.trim_start_matches("http://"))
}

async fn connect(srv: &common::TestServer, key: &str) -> Ws {
    tokio_tungstenite::connect_async(ws_url(srv, key)).await.expect("websocket handshake").0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message (control frames skipped); panics after 30 s.
async fn recv(ws: &mut Ws) -> Value {
    let next = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str::<Value>(t.as_str()).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), next).await.expect("no message within 30 s")
}

/// Events of `run_id` until its `end` message.
async fn events_until_end(ws: &mut Ws, run_id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let m = recv(ws).await;
        match m["type"].as_str() {
            Some("event") if m["event"]["run_id"] == run_id => out.push(m["event"].clone()),
            Some("end") if m["run_id"] == run_id => return out,
            _ => panic!("unexpected message {m}"),
        }
    }
}

fn approval_flow() -> Value {
    json!({
        "nodes": [
            {"id": "prep", "type": "noop"},
            {"id": "approve", "type": "hitl", "config": {"message": "go?"}},
            {"id": "done", "type": "noop", "config": {"output": {"ok": true}}}
        ],
        "edges": [{"from": "prep", "to": "approve"}, {"from": "approve", "to": "done"}]
    })
}

fn quick() -> Value {
    json!({"nodes": [{"id": "a", "type": "noop", "config": {"output": {"n": 1}}}, {"id": "b", "type": "noop"}], "edges": [{"from": "a", "to": "b"}]})
}

#[tokio::test]
async fn run_subscription_sends_history_then_live_events_in_order_and_resumes() {
    let srv = common::start_server(&[]).await;
    let id = srv.start_run(&approval_flow(), json!({})).await;
    let pending = srv.poll_until("/api/v1/approvals?status=pending", 10, |v| v["count"] == 1).await;
    let approval = pending["approvals"][0]["approval_id"].as_str().unwrap().to_string();

    let mut ws = connect(&srv, &common::admin_key(srv.dir.path())).await;
    send(&mut ws, json!({"type": "ping", "id": 7})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "pong", "id": 7}));
    send(&mut ws, json!({"type": "subscribe", "run_id": id, "after_seq": 0})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "subscribed", "run_id": id, "after_seq": 0}));
    // History, up to the approval the run waits on.
    let mut got = Vec::new();
    while got.last().is_none_or(|e: &Value| e["type"] != "approval_required") {
        let m = recv(&mut ws).await;
        assert_eq!(m["type"], "event", "{m}");
        got.push(m["event"].clone());
    }
    // Live from here on.
    let (s, v) = srv.post(&format!("/api/v1/approvals/{approval}/decide"), &json!({"decision": "approve"})).await;
    assert_eq!(s, 200, "{v}");
    got.extend(events_until_end(&mut ws, &id).await);
    common::assert_gapless(&got);
    assert_eq!(got.last().unwrap()["type"], "workflow_completed");
    assert_eq!(got, srv.event_list(&id).await, "the stored events, exactly");

    // Resume after seq 3 on the same connection: the rest, then the end.
    send(&mut ws, json!({"type": "subscribe", "run_id": id, "after_seq": 3})).await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    let rest = events_until_end(&mut ws, &id).await;
    assert_eq!(rest.first().unwrap()["seq"], 4);
    assert_eq!(rest, got[3..].to_vec());
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn authentication_tenancy_and_the_all_subscription() {
    let srv = common::start_server(&[]).await;
    let admin = common::admin_key(srv.dir.path());

    // No key, a bad key: the upgrade is refused.
    for url in [ws_url(&srv, "").replace("?api_key=", ""), ws_url(&srv, "aob_nope_nope")] {
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401),
            other => panic!("expected a 401, got {other:?}"),
        }
    }
    // The key in a header works too.
    let mut req = ws_url(&srv, "").replace("?api_key=", "").into_client_request().unwrap();
    req.headers_mut().insert("x-api-key", admin.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");

    let admin_run = srv.start_run(&approval_flow(), json!({})).await;
    let (s, k) = srv
        .post("/api/v1/keys", &json!({"tenant": "acme", "user": "bob", "role": "member", "name": "bob"}))
        .await;
    assert_eq!(s, 201, "{k}");
    let bob_key = k["key"].as_str().unwrap().to_string();
    let mut bob = connect(&srv, &bob_key).await;

    // Another tenant's run does not exist for bob; the connection stays usable.
    send(&mut bob, json!({"type": "subscribe", "run_id": admin_run})).await;
    let e = recv(&mut bob).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["run_id"].as_str()),
        (Some("error"), Some("not_found"), Some(admin_run.as_str())),
        "{e}"
    );
    send(&mut bob, json!({"type": "subscribe", "run_id": "no-such-run"})).await;
    assert_eq!(recv(&mut bob).await["code"], "not_found");
    bob.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(recv(&mut bob).await["code"], "invalid_json");
    send(&mut bob, json!({"type": "dance"})).await;
    assert_eq!(recv(&mut bob).await["code"], "bad_request");
    send(&mut bob, json!({"type": "unsubscribe", "run_id": admin_run})).await;
    assert_eq!(recv(&mut bob).await, json!({"type": "unsubscribed", "subscribed": false, "run_id": admin_run}));

    // All of bob's runs: his events only, with increasing positions.
    send(&mut bob, json!({"type": "subscribe", "all": true})).await;
    assert_eq!(recv(&mut bob).await, json!({"type": "subscribed", "all": true, "after": 0}));
    let other = srv.start_run(&quick(), json!({})).await;
    srv.wait_run(&other).await;
    let bob_http = common::client_with_key(&bob_key);
    let r = bob_http
        .post(format!("{}/api/v1/runs", srv.url))
        .json(&json!({"workflow": quick()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let bob_run = r.json::<Value>().await.unwrap()["run_id"].as_str().unwrap().to_string();
    let mut got = Vec::new();
    let mut last_pos = 0;
    loop {
        let m = recv(&mut bob).await;
        assert_eq!(m["type"], "event", "{m}");
        assert_eq!(m["event"]["run_id"], bob_run.as_str(), "only the caller's runs: {m}");
        let pos = m["position"].as_i64().unwrap();
        assert!(pos > last_pos);
        last_pos = pos;
        got.push(m["event"].clone());
        if m["event"]["type"] == "workflow_completed" {
            break;
        }
    }
    common::assert_gapless(&got);
    send(&mut bob, json!({"type": "unsubscribe", "all": true})).await;
    assert_eq!(recv(&mut bob).await, json!({"type": "unsubscribed", "subscribed": true, "all": true}));
    // Resuming the all-subscription from a position gives what came after it.
    send(&mut bob, json!({"type": "subscribe", "all": true, "after": last_pos - 1})).await;
    assert_eq!(recv(&mut bob).await["type"], "subscribed");
    let m = recv(&mut bob).await;
    assert_eq!(
        (m["position"].as_i64(), m["event"]["type"].as_str()),
        (Some(last_pos), Some("workflow_completed"))
    );
}

#[tokio::test]
async fn a_slow_consumer_is_dropped_with_1008_and_holds_up_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let srv = common::start_server_with(dir, |cfg| {
        cfg.ws.buffer = 2;
        cfg.ws.slow_consumer_ms = 200;
    })
    .await;
    let admin = common::admin_key(srv.dir.path());
    // 20 events of 1 MiB each: far more than socket buffers hold.
    let nodes: Vec<Value> = (0..20)
        .map(|i| json!({"id": format!("n{i}"), "type": "noop", "config": {"output": "$inputs.blob"}}))
        .collect();
    let big = srv.start_run(&json!({"nodes": nodes, "edges": []}), json!({"blob": "x".repeat(1 << 20)})).await;
    srv.poll_until("/api/v1/runs?status=COMPLETED", 30, |v| v["count"] == 1).await;
    let total = srv.get(&format!("/api/v1/runs/{big}")).await.1["last_event_seq"].as_u64().unwrap();

    // A consumer with a tiny receive window that reads nothing.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(srv.server.as_ref().unwrap().addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(ws_url(&srv, &admin), tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    send(&mut slow, json!({"type": "subscribe", "run_id": big})).await;

    // Meanwhile another consumer follows a new run from start to end.
    let mut fast = connect(&srv, &admin).await;
    let id = srv.start_run(&quick(), json!({})).await;
    send(&mut fast, json!({"type": "subscribe", "run_id": id})).await;
    assert_eq!(recv(&mut fast).await["type"], "subscribed");
    let events = events_until_end(&mut fast, &id).await;
    assert_eq!(events.last().unwrap()["type"], "workflow_completed");

    // Long past the 200 ms the slow consumer's queue may stay full, it reads: what was
    // already on its way, then the close frame, and far from every event.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = 0;
    let drain = async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Text(t))) => {
                    let m: Value = serde_json::from_str(t.as_str()).unwrap();
                    if m["type"] == "event" {
                        got += 1;
                    }
                }
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    };
    let frame = tokio::time::timeout(Duration::from_secs(30), drain).await.expect("closed within 30 s");
    let frame = frame.expect("a close frame with a code");
    assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
    assert!((got as u64) < total, "dropped before it got all {total} events (got {got})");
    // The server is fine.
    send(&mut fast, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut fast).await["type"], "pong");
}
