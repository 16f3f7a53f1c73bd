#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed call is a failed test
mod common;

use serde_json::json;

#[tokio::test]
async fn diamond_runs_d_once_and_completes() {
    let srv = common::start_server(&[]).await;
    let wf = json!({
        "nodes": [{"id": "A", "type": "noop"}, {"id": "B", "type": "noop"}, {"id": "C", "type": "noop"}, {"id": "D", "type": "noop"}],
        "edges": [{"from": "A", "to": "B"}, {"from": "A", "to": "C"}, {"from": "B", "to": "D"}, {"from": "C", "to": "D"}]
    });
    let id = srv.start_run(&wf, json!({})).await;
    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
    let d_runs = events.iter().filter(|e| e["type"] == "node_completed" && e["node_id"] == "D").count();
    assert_eq!(d_runs, 1);
    let run = srv.get(&format!("/api/v1/runs/{id}")).await.1;
    assert_eq!(run["status"], "COMPLETED");
}

#[tokio::test]
async fn metrics_count_runs_and_need_a_key() {
    let srv = common::start_server(&[]).await;
    let wf = json!({"nodes": [{"id": "a", "type": "noop"}]});
    let id = srv.start_run(&wf, json!({})).await;
    srv.wait_run(&id).await;
    let text = srv.http.get(format!("{}/metrics", srv.url)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("aob_runs_started_total 1\n"), "{text}");
    assert!(text.contains("aob_runs_finished_total{status=\"COMPLETED\"} 1\n"), "{text}");
    assert!(text.contains("# TYPE aob_commits_total counter"), "{text}");
    let anonymous = reqwest::Client::new().get(format!("{}/metrics", srv.url)).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
}
