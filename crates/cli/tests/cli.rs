//! The `aob` binary against a real server: data on stdout, diagnostics on stderr,
//! documented exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed call is a failed test

mod common;

use std::process::Output;

use serde_json::{Value, json};

async fn aob(srv: &common::TestServer, args: &[&str]) -> Output {
    let key = common::admin_key(srv.dir.path());
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_aob"));
    cmd.args(["--api-url", &srv.url, "--api-key", &key])
        .args(args)
        .env_remove("AOB_API_URL")
        .env_remove("AOB_API_KEY");
    cmd.output().await.unwrap()
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn example(name: &str) -> String {
    format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn workflow_run_and_approval_commands() {
    let srv = common::start_server(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let hitl = dir.path().join("hitl.json");
    std::fs::write(
        &hitl,
        json!({"nodes": [{"id": "ask", "type": "hitl", "config": {"message": "ok?"}}, {"id": "done", "type": "noop"}], "edges": [{"from": "ask", "to": "done"}]}).to_string(),
    )
    .unwrap();
    let hitl = hitl.to_str().unwrap();

    let o = aob(&srv, &["workflow", "validate", &example("branch-join.yaml")]).await;
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "valid");

    let o = aob(&srv, &["-o", "json", "workflow", "create", "ask", hitl]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_out(&o)["tag"], "ask");

    let o = aob(&srv, &["-o", "json", "run", "start", "ask"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run_id = json_out(&o)["run_id"].as_str().unwrap().to_string();

    let o = aob(&srv, &["-o", "json", "approve", &run_id, "ask", "--comment", "fine"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_out(&o)["status"], "approved");
    // A second decision is a 409: a usage-class failure (exit 2).
    let o = aob(&srv, &["reject", &run_id, "ask"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));

    let run = srv.wait_run(&run_id).await;
    assert_eq!(run["status"], "COMPLETED");
    let o = aob(&srv, &["-o", "json", "run", "status", &run_id]).await;
    assert_eq!(json_out(&o)["status"], "COMPLETED");
    let o = aob(&srv, &["-o", "compact", "run", "list"]).await;
    let lines = String::from_utf8_lossy(&o.stdout).lines().count();
    assert_eq!(lines, 1);
    let o = aob(&srv, &["logs", "stream", &run_id]).await;
    assert!(o.status.success());
    assert!(o.stdout.is_empty(), "progress goes to stderr");
    assert!(String::from_utf8_lossy(&o.stderr).contains("run COMPLETED"));
}

#[tokio::test]
async fn follow_mode_prints_progress_and_exit_codes_follow_the_run() {
    let srv = common::start_server(&[]).await;
    let o = aob(&srv, &["-o", "json", "run", "start", &example("transform-pipeline.yaml"), "-f"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rank completed") && err.contains("run COMPLETED"), "{err}");
    assert_eq!(json_out(&o)["status"], "COMPLETED");

    let dir = tempfile::tempdir().unwrap();
    let failing = dir.path().join("f.json");
    std::fs::write(
        &failing,
        json!({"nodes": [{"id": "m", "type": "map", "config": {"items": "$inputs.nope", "node": {"type": "noop"}}}]}).to_string(),
    )
    .unwrap();
    let o = aob(&srv, &["run", "start", failing.to_str().unwrap(), "-f"]).await;
    assert_eq!(o.status.code(), Some(1), "a followed run that fails exits 1");

    let o = aob(&srv, &["run", "status", "no-such-run"]).await;
    assert_eq!(o.status.code(), Some(3));
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        json!({"nodes": [{"id": "a", "type": "task"}], "edges": [{"from": "a", "to": "b"}]}).to_string(),
    )
    .unwrap();
    let o = aob(&srv, &["workflow", "validate", bad.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nodes/0/type") && err.contains("/edges/0/to"), "{err}");
    let o = aob(&srv, &["run", "start", bad.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(2), "the server rejects it with 400");

    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_aob"))
        .args(["--api-url", "http://127.0.0.1:9", "run", "list"])
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(4));
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_aob"))
        .args(["run", "frobnicate"])
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[tokio::test]
async fn workflow_patch_history_and_move_commands() {
    let srv = common::start_server(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("wf.json");
    std::fs::write(&wf, json!({"nodes": [{"id": "a", "type": "noop"}], "edges": []}).to_string()).unwrap();
    let ops = dir.path().join("ops.json");
    std::fs::write(
        &ops,
        json!([{"op": "add", "path": "/nodes/-", "value": {"id": "b", "type": "noop"}}, {"op": "add", "path": "/edges/-", "value": {"from": "a", "to": "b"}}])
            .to_string(),
    )
    .unwrap();
    let o = aob(&srv, &["workflow", "create", "t", wf.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = aob(
        &srv,
        &[
            "-o",
            "json",
            "workflow",
            "patch",
            "t",
            "--file",
            ops.to_str().unwrap(),
            "--description",
            "add b",
            "--expected-version",
            "1",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_out(&o)["version"], 2);
    let o = aob(&srv, &["workflow", "patch", "t", "--file", ops.to_str().unwrap(), "--expected-version", "1"]).await;
    assert_eq!(o.status.code(), Some(2), "a stale version is a 409");
    let o = aob(&srv, &["-o", "json", "workflow", "history", "t"]).await;
    let history = json_out(&o);
    assert_eq!(history["history"].as_array().unwrap().len(), 2, "{history}");
    let o = aob(&srv, &["-o", "json", "workflow", "move", "t", "--version", "0"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = aob(&srv, &["-o", "json", "workflow", "show", "t"]).await;
    assert_eq!(json_out(&o)["workflow"]["nodes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn keys_login_whoami_logout() {
    let srv = common::start_server(&[]).await;
    let o = aob(
        &srv,
        &["-o", "json", "keys", "create", "--tenant", "acme", "--user", "bob", "--name", "bob-laptop"],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let created = json_out(&o);
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("aob_"));

    // login stores the key for this server; later commands find it without --api-key.
    let home = tempfile::tempdir().unwrap();
    let bob = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_aob"));
        cmd.args(["--api-url", &srv.url])
            .args(args)
            .env("XDG_CONFIG_HOME", home.path())
            .env_remove("AOB_API_KEY")
            .env_remove("AOB_API_URL");
        cmd.current_dir(home.path());
        cmd.output()
    };
    let o = bob(&["-o", "json", "login", &key]).await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bob(&["-o", "json", "whoami"]).await.unwrap();
    assert_eq!(json_out(&o)["tenant"], "acme");
    assert_eq!(json_out(&o)["user"], "bob");
    let o = bob(&["-o", "json", "keys", "list"]).await.unwrap();
    assert_eq!(o.status.code(), Some(0));
    let o = bob(&["logout"]).await.unwrap();
    assert!(o.status.success());
    let o = bob(&["whoami"]).await.unwrap();
    assert_eq!(o.status.code(), Some(2), "no key any more: 401");

    let o = aob(&srv, &["-o", "json", "keys", "list", "--tenant", "acme"]).await;
    assert_eq!(json_out(&o)["count"], 1);
    let o = aob(&srv, &["keys", "revoke", created["id"].as_str().unwrap()]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bob(&["--api-key", &key, "whoami"]).await.unwrap();
    assert_eq!(o.status.code(), Some(2), "a revoked key is refused");
}
