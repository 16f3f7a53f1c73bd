//! Invalid workflows: 400 `validation_failed` listing every problem with a JSON
//! pointer, the same list from the validate endpoint, and nothing stored.

#![allow(clippy::unwrap_used)]

mod common;

use serde_json::{Value, json};

use common::TestServer;

/// Each broken document, the (code, pointer) it must report.
fn dangling() -> (Value, (&'static str, &'static str)) {
    let wf = json!({
        "nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}],
        "edges": [{"from": "a", "to": "b"}, {"from": "a", "to": "ghost"}]
    });
    (wf, ("dangling_edge", "/edges/1/to"))
}

fn unknown_type() -> (Value, (&'static str, &'static str)) {
    let wf = json!({
        "nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "frobnicate"}],
        "edges": [{"from": "a", "to": "b"}]
    });
    (wf, ("unknown_type", "/nodes/1/type"))
}

fn bad_cel() -> (Value, (&'static str, &'static str)) {
    let wf = json!({
        "nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}],
        "edges": [{"from": "a", "to": "b", "condition": "output.x >"}]
    });
    (wf, ("invalid_condition", "/edges/0/condition"))
}

fn cycle() -> (Value, (&'static str, &'static str)) {
    let wf = json!({
        "nodes": [{"id": "s", "type": "noop"}, {"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}],
        "edges": [{"from": "s", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "a"}]
    });
    (wf, ("cycle", "/edges/2"))
}

/// All four problems in one document.
fn all_four() -> (Value, Vec<(&'static str, &'static str)>) {
    let wf = json!({
        "nodes": [
            {"id": "start", "type": "noop"},
            {"id": "weird", "type": "frobnicate"},
            {"id": "a", "type": "noop"},
            {"id": "b", "type": "noop"}
        ],
        "edges": [
            {"from": "start", "to": "weird"},
            {"from": "start", "to": "ghost"},
            {"from": "start", "to": "a", "condition": "output.x >"},
            {"from": "a", "to": "b"},
            {"from": "b", "to": "a"}
        ]
    });
    let want = vec![
        ("unknown_type", "/nodes/1/type"),
        ("dangling_edge", "/edges/1/to"),
        ("invalid_condition", "/edges/2/condition"),
        ("cycle", "/edges/4"),
    ];
    (wf, want)
}

fn errors(body: &Value) -> Vec<(String, String)> {
    body["error"]["details"]["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no details.errors in {body}"))
        .iter()
        .map(|e| {
            (
                e["code"].as_str().unwrap_or_default().to_string(),
                e["pointer"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn assert_rejected(srv: &TestServer, wf: &Value, want: &[(&str, &str)]) {
    let (s, body) = srv.post("/api/v1/workflows", &json!({"tag_name": "broken", "workflow": wf})).await;
    assert_eq!(s, 400, "{body}");
    common::assert_envelope(&body, "validation_failed");
    let got = errors(&body);
    for (code, ptr) in want {
        assert!(got.iter().any(|(c, p)| c == code && p == ptr), "missing ({code}, {ptr}) in {got:?}");
    }
    assert_eq!(got.len(), want.len(), "unexpected extra errors: {got:?}");
    for e in body["error"]["details"]["errors"].as_array().unwrap() {
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }

    // Starting it inline fails the same way.
    let (s, run_body) = srv.post("/api/v1/runs", &json!({"workflow": wf, "inputs": {}})).await;
    assert_eq!(s, 400, "{run_body}");
    common::assert_envelope(&run_body, "validation_failed");
    assert_eq!(errors(&run_body), got);

    // The validate endpoint answers 200 with the same list.
    let (s, v) = srv.post("/api/v1/workflows/validate", &json!({"workflow": wf})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["valid"], false);
    let listed: Vec<(String, String)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["code"].as_str().unwrap().to_string(), e["pointer"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(listed, got);
    assert_eq!(v["errors"], body["error"]["details"]["errors"]);
}

async fn assert_nothing_stored(srv: &TestServer) {
    let (s, w) = srv.get("/api/v1/workflows").await;
    assert_eq!(s, 200);
    assert_eq!(w["workflows"], json!([]), "{w}");
    assert_eq!(w["count"], 0);
    let (s, r) = srv.get("/api/v1/runs").await;
    assert_eq!(s, 200);
    assert_eq!(r["runs"], json!([]), "{r}");
    let (s, e) = srv.get("/api/v1/workflows/broken").await;
    assert_eq!(s, 404, "{e}");
    common::assert_envelope(&e, "not_found");
}

#[tokio::test]
async fn four_problems_in_one_document_are_all_reported_with_pointers() {
    let srv = common::start_server(&[]).await;
    let (wf, want) = all_four();
    assert_rejected(&srv, &wf, &want).await;
    assert_nothing_stored(&srv).await;
}

#[tokio::test]
async fn each_problem_alone_is_reported() {
    let srv = common::start_server(&[]).await;
    for (wf, want) in [dangling(), unknown_type(), bad_cel(), cycle()] {
        assert_rejected(&srv, &wf, &[want]).await;
    }
    assert_nothing_stored(&srv).await;
}

#[tokio::test]
async fn yaml_text_with_problems_is_reported_too() {
    let srv = common::start_server(&[]).await;
    let yaml = "nodes:\n  - {id: a, type: noop}\n  - {id: b, type: frobnicate}\nedges:\n  - {from: a, to: b}\n  - {from: a, to: nowhere}\n";
    assert_rejected(&srv, &json!(yaml), &[("unknown_type", "/nodes/1/type"), ("dangling_edge", "/edges/1/to")]).await;
    assert_nothing_stored(&srv).await;
}

#[tokio::test]
async fn a_valid_workflow_validates_and_nothing_is_stored() {
    let srv = common::start_server(&[]).await;
    let wf = json!({
        "nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}, {"id": "c", "type": "noop"}],
        "edges": [{"from": "a", "to": "b"}]
    });
    let (s, v) = srv.post("/api/v1/workflows/validate", &json!({"workflow": wf})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["errors"], json!([]));
    // Validation stores nothing either.
    assert_nothing_stored(&srv).await;
}
