//! Every workflow in `examples/` runs to completion against a loopback stub.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed call is a failed test

mod common;

use serde_json::{Value, json};

async fn run(name: &str, inputs: Value) -> (Value, common::Stub) {
    let stub = common::example_stub().await;
    let srv = common::start_server(&[stub.allow()]).await;
    let mut inputs = inputs;
    inputs["base_url"] = json!(format!("http://{}", stub.addr));
    let id = srv.start_run(&common::example(name), inputs).await;
    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
    let run = srv.get(&format!("/api/v1/runs/{id}")).await.1;
    assert_eq!(run["status"], "COMPLETED", "{name}: {run:#}");
    (run, stub)
}

#[tokio::test]
async fn http_chain() {
    let (run, stub) = run("http-chain.yaml", json!({})).await;
    assert_eq!(run["outputs"]["stored"]["received"], json!({"items": [1, 2, 3], "count": 3}));
    let store = stub.hits("/store");
    assert_eq!(store.len(), 1);
    assert_eq!(store[0].header("x-source"), Some("aob"));
    assert!(store[0].header("idempotency-key").is_some());
}

#[tokio::test]
async fn branch_join() {
    let (run, _) = run("branch-join.yaml", json!({})).await;
    assert_eq!(run["outputs"]["result"], json!({"high": {"tier": "gold"}}));
}

#[tokio::test]
async fn loop_retry() {
    let (run, stub) = run("loop-retry.yaml", json!({})).await;
    assert_eq!(stub.hits("/flaky").len(), 3);
    assert_eq!(run["outputs"]["ok"], json!({"result": "done"}));
    assert!(run["outputs"].get("give_up").is_none());
}

#[tokio::test]
async fn map_fanout() {
    let (run, stub) = run("map-fanout.yaml", json!({"ids": [5, 3, 9, 1]})).await;
    assert_eq!(run["outputs"]["names"], json!(["item-5", "item-3", "item-9", "item-1"]));
    assert_eq!(stub.hits.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn transform_pipeline() {
    let (run, _) = run("transform-pipeline.yaml", json!({})).await;
    assert_eq!(run["outputs"]["note"], "top order 410 from ada");
    assert_eq!(run["outputs"]["top"][0]["placed"], "2026-11-22");
}

#[tokio::test]
async fn subworkflow() {
    let (run, _) = run("subworkflow.yaml", json!({"words": ["x", "y"]})).await;
    assert_eq!(run["outputs"]["result"]["shouted"], json!(["X", "Y"]));
}

#[tokio::test]
async fn demo() {
    let (run, _) = run("demo.yaml", json!({})).await;
    assert_eq!(run["outputs"]["customers"][0], json!({"customer": "ada", "spent": 530, "orders": 2}));
}
