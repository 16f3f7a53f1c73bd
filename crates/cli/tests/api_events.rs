//! Event streams: SSE framing, resume, filters, late subscribers, the per-user
//! stream and the paged JSON listing.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use common::{AsyncStub, Frame, Hit, TestServer};

/// a → b → c, and b → d on a condition that is false: 9 events, one of them a skip.
fn chain() -> Value {
    json!({
        "nodes": [
            {"id": "a", "type": "noop", "config": {"output": {"x": 1}}},
            {"id": "b", "type": "noop"},
            {"id": "c", "type": "noop"},
            {"id": "d", "type": "noop"}
        ],
        "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}, {"from": "b", "to": "d", "condition": "output.x > 5"}]
    })
}

fn seqs(frames: &[Frame]) -> Vec<u64> {
    frames.iter().map(|f| f.data["seq"].as_u64().unwrap()).collect()
}

/// Every frame: `id:` = seq, `event:` = type, and the JSON carries the common fields.
fn assert_frames(run_id: &str, frames: &[Frame]) {
    for f in frames {
        let d = &f.data;
        assert_eq!(f.id, d["seq"].to_string(), "{f:?}");
        assert_eq!(f.event, d["type"].as_str().unwrap(), "{f:?}");
        assert_eq!(d["run_id"], run_id, "{f:?}");
        assert!(d["seq"].as_u64().is_some_and(|s| s >= 1), "{f:?}");
        let ts = d["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp: {f:?}"));
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "timestamp {ts}");
        if f.event.starts_with("node_") {
            assert!(d["node_id"].is_string(), "node event without node_id: {d}");
            assert!(d["attempt"].is_u64(), "node event without attempt: {d}");
        }
    }
}

async fn finished_run(srv: &TestServer) -> (String, Vec<Frame>) {
    let id = srv.start_run(&chain(), json!({})).await;
    let all = srv.sse_frames(&format!("/api/v1/runs/{id}/events"), &[]).await;
    (id, all)
}

#[tokio::test]
async fn full_stream_is_gapless_well_framed_and_closes_after_the_terminal_event() {
    let srv = common::start_server(&[]).await;
    let (id, all) = finished_run(&srv).await;
    assert_frames(&id, &all);
    let n = all.len() as u64;
    assert_eq!(seqs(&all), (1..=n).collect::<Vec<_>>());
    assert_eq!(all[0].event, "workflow_started");
    assert_eq!(all.last().unwrap().event, "workflow_completed");
    let kinds: Vec<&str> = all.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(kinds.len(), 9, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "node_started").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "node_completed").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "node_skipped").count(), 1);
    let run = srv.get(&format!("/api/v1/runs/{id}")).await.1;
    assert_eq!(run["last_event_seq"], n);
}

#[tokio::test]
async fn resume_from_k_yields_exactly_the_rest_by_header_and_by_query() {
    let srv = common::start_server(&[]).await;
    let (id, all) = finished_run(&srv).await;
    let n = all.len() as u64;
    for k in [0, 1, 3, n - 1, n] {
        let by_header = srv.sse_frames(&format!("/api/v1/runs/{id}/events"), &[("Last-Event-ID", &k.to_string())]).await;
        assert_eq!(seqs(&by_header), (k + 1..=n).collect::<Vec<_>>(), "Last-Event-ID: {k}");
        let by_query = srv.sse_frames(&format!("/api/v1/runs/{id}/events?last_event_id={k}"), &[]).await;
        assert_eq!(seqs(&by_query), (k + 1..=n).collect::<Vec<_>>(), "?last_event_id={k}");
        // Same bytes as the first read: events are stored once and replayed as stored.
        for f in &by_header {
            assert_eq!(f.data, all[(f.data["seq"].as_u64().unwrap() - 1) as usize].data);
        }
    }
    // The header wins over the query when both are given.
    let both = srv
        .sse_frames(&format!("/api/v1/runs/{id}/events?last_event_id=1"), &[("Last-Event-ID", "5")])
        .await;
    assert_eq!(seqs(&both), (6..=n).collect::<Vec<_>>());
    let (s, v) = srv.get(&format!("/api/v1/runs/{id}/events?last_event_id=abc")).await;
    assert_eq!(s, 400, "{v}");
    common::assert_envelope(&v, "bad_request");
}

#[tokio::test]
async fn types_filter_keeps_only_the_named_types() {
    let srv = common::start_server(&[]).await;
    let (id, all) = finished_run(&srv).await;
    let only = srv.sse_frames(&format!("/api/v1/runs/{id}/events?types=node_completed"), &[]).await;
    assert_eq!(only.len(), 3);
    assert!(only.iter().all(|f| f.event == "node_completed"));
    let want: Vec<u64> = all
        .iter()
        .filter(|f| f.event == "node_completed")
        .map(|f| f.data["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs(&only), want);
    let two = srv
        .sse_frames(&format!("/api/v1/runs/{id}/events?types=node_skipped,workflow_completed&last_event_id=2"), &[])
        .await;
    assert_eq!(two.iter().map(|f| f.event.as_str()).collect::<Vec<_>>(), ["node_skipped", "workflow_completed"]);
}

#[tokio::test]
async fn live_subscriber_gets_history_then_live_events_then_the_stream_closes() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let stub = AsyncStub::start(Arc::new(move |_: Hit, _| {
        let g = g.clone();
        Box::pin(async move {
            g.notified().await;
            (200, json!({"released": true}))
        })
    }))
    .await;
    let srv = common::start_server(&[stub.allow()]).await;
    let wf = json!({
        "nodes": [{"id": "gate", "type": "http", "config": {"url": stub.url("/gate")}}, {"id": "after", "type": "noop"}],
        "edges": [{"from": "gate", "to": "after"}]
    });
    let id = srv.start_run(&wf, json!({})).await;
    common::wait_for("the gated request", 30, || !stub.hits("/gate").is_empty()).await;
    let mut released = false;
    let frames = srv
        .sse_frames_until(&format!("/api/v1/runs/{id}/events"), &[], 60, |seen| {
            // History is in (the run is held at the gate): now let it finish.
            if !released && seen.iter().any(|f| f.event == "node_started" && f.data["node_id"] == "gate") {
                released = true;
                gate.notify_one();
            }
            false
        })
        .await;
    assert!(released);
    assert_frames(&id, &frames);
    assert_eq!(seqs(&frames), (1..=frames.len() as u64).collect::<Vec<_>>());
    assert_eq!(frames.last().unwrap().event, "workflow_completed");
    assert!(frames.iter().any(|f| f.event == "node_completed" && f.data["node_id"] == "after"));
}

#[tokio::test]
async fn per_user_stream_carries_events_of_every_run() {
    let srv = common::start_server(&[]).await;
    let r1 = srv.start_run(&chain(), json!({})).await;
    let r2 = srv.start_run(&chain(), json!({})).await;
    let frames = srv
        .sse_frames_until("/api/v1/events", &[], 60, |seen| {
            let done = |r: &str| seen.iter().any(|f| f.event == "workflow_completed" && f.data["run_id"] == r);
            done(&r1) && done(&r2)
        })
        .await;
    let mut per_run: HashMap<String, Vec<u64>> = HashMap::new();
    let mut last_id = 0i64;
    for f in &frames {
        let pos: i64 = f.id.parse().unwrap();
        assert!(pos > last_id, "ids must increase: {f:?}");
        last_id = pos;
        assert_eq!(f.event, f.data["type"].as_str().unwrap());
        per_run
            .entry(f.data["run_id"].as_str().unwrap().to_string())
            .or_default()
            .push(f.data["seq"].as_u64().unwrap());
    }
    assert_eq!(per_run.len(), 2, "{per_run:?}");
    for r in [&r1, &r2] {
        let s = &per_run[r.as_str()];
        assert_eq!(*s, (1..=s.len() as u64).collect::<Vec<_>>(), "run {r}");
        assert_eq!(s.len(), 9);
    }
    // Resuming the per-user stream after a position skips what came before it.
    let mid = frames[frames.len() / 2].id.clone();
    let rest = srv
        .sse_frames_until("/api/v1/events", &[("Last-Event-ID", &mid)], 60, |seen| {
            seen.len() == frames.len() - frames.len() / 2 - 1
        })
        .await;
    assert_eq!(
        rest.iter().map(|f| f.id.clone()).collect::<Vec<_>>(),
        frames[frames.len() / 2 + 1..].iter().map(|f| f.id.clone()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn json_event_listing_pages_through_the_log() {
    let srv = common::start_server(&[]).await;
    let (id, all) = finished_run(&srv).await;
    let mut got: Vec<Value> = Vec::new();
    let mut after = 0u64;
    let mut pages = 0;
    loop {
        let (s, page) = srv.get(&format!("/api/v1/runs/{id}/events/list?after={after}&limit=4")).await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        assert!(pages < 10, "paging does not end");
        let evs = page["events"].as_array().unwrap();
        assert!(evs.len() <= 4);
        assert_eq!(page["count"], evs.len());
        got.extend(evs.iter().cloned());
        match page["next_after"].as_u64() {
            Some(n) => {
                assert_eq!(Some(n), evs.last().and_then(|e| e["seq"].as_u64()));
                after = n;
            }
            None => break,
        }
    }
    assert_eq!(got, all.iter().map(|f| f.data.clone()).collect::<Vec<_>>());
    let (_, tail) = srv.get(&format!("/api/v1/runs/{id}/events/list?after=7")).await;
    assert_eq!(
        tail["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![8, 9]
    );
    let (_, filtered) = srv.get(&format!("/api/v1/runs/{id}/events/list?types=node_skipped")).await;
    assert_eq!(filtered["count"], 1);
    let (s, v) = srv.get("/api/v1/runs/nope/events/list").await;
    assert_eq!(s, 404);
    common::assert_envelope(&v, "not_found");
    let (s, v) = srv.get("/api/v1/runs/nope/events").await;
    assert_eq!(s, 404);
    common::assert_envelope(&v, "not_found");
}
