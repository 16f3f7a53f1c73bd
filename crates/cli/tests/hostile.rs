//! Hostile input against the real `aob serve` process, as tenants' member keys would
//! send it: deep nesting, huge graphs and expressions, recursion, amplification. Every
//! test fails if the server process dies, and checks that another tenant's simple run
//! still starts within a second while the hostile input is being handled.
// Helpers outside `#[test]` functions: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);

struct Server {
    dir: tempfile::TempDir,
    child: Child,
    log: Arc<Mutex<String>>,
    url: String,
    admin: reqwest::Client,
}

fn client(key: &str) -> reqwest::Client {
    common::client(Some(key), Some(Duration::from_secs(30)))
}

impl Server {
    /// `aob serve` on a fresh port and data dir, with `env` (`AOB_LIMITS__…`) set.
    async fn start(env: &[(&str, &str)]) -> Server {
        Server::start_with(env, &[]).await
    }

    async fn start_with(env: &[(&str, &str)], args: &[String]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aob"));
        cmd.arg("serve")
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--durability", "process"])
            .args(args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AOB_") {
                cmd.env_remove(&k);
            }
        }
        // Tests poll fast; the per-route buckets would throttle them, not the hostile input.
        cmd.env("AOB_RATE_LIMIT__PER_ROUTE_PER_MINUTE", "0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env_remove("RUST_LOG").env("NO_COLOR", "1").current_dir(dir.path());
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let url = format!("http://127.0.0.1:{port}");
        let probe = reqwest::Client::builder().no_proxy().build().unwrap();
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("aob serve exited during startup: {status}\n{}", log.lock().unwrap());
            }
            if probe.get(format!("{url}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < until, "aob serve not healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let key = std::fs::read_to_string(dir.path().join("data/admin.key")).unwrap();
        Server {
            admin: client(key.trim()),
            dir,
            child,
            log,
            url,
        }
    }

    /// A new key of `role` for `tenant`, made by the platform admin.
    async fn key(&self, tenant: &str, role: &str) -> reqwest::Client {
        let r = self
            .admin
            .post(format!("{}/api/v1/keys", self.url))
            .json(&json!({"tenant": tenant, "user": format!("{tenant}-user"), "role": role, "name": "t"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        client(body["key"].as_str().unwrap())
    }

    /// Resident memory of the server process, MiB.
    fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        kib / 1024
    }

    /// Fails the test if the process is gone.
    fn assert_alive(&mut self, after: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("aob serve died after {after}: {status}\n{}", self.log.lock().unwrap());
        }
    }

    async fn send(&mut self, who: &reqwest::Client, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = who
            .request(method, format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        self.assert_alive(path);
        let r = r.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&mut self, who: &reqwest::Client, path: &str, body: &Value) -> (u16, Value) {
        self.send(who, reqwest::Method::POST, path, serde_json::to_vec(body).unwrap()).await
    }

    async fn start_run(&mut self, who: &reqwest::Client, workflow: &Value, inputs: Value) -> String {
        let (status, body) = self.post(who, "/api/v1/runs", &json!({"workflow": workflow, "inputs": inputs})).await;
        assert_eq!(status, 201, "{body}");
        body["run_id"].as_str().unwrap().to_string()
    }

    async fn wait_terminal(&mut self, who: &reqwest::Client, run_id: &str) -> Value {
        let until = Instant::now() + DEADLINE;
        loop {
            let r = who.get(format!("{}/api/v1/runs/{run_id}", self.url)).send().await;
            self.assert_alive("polling a run");
            let run: Value = r.unwrap().json().await.unwrap();
            if matches!(run["status"].as_str(), Some("COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT")) {
                return run;
            }
            assert!(Instant::now() < until, "run {run_id} not finished: {run}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Another tenant's one-node run starts (201) within a second.
    async fn bystander_starts_quickly(&mut self, other: &reqwest::Client) {
        let began = Instant::now();
        let (status, body) = self
            .post(
                other,
                "/api/v1/runs",
                &json!({"workflow": {"nodes": [{"id": "a", "type": "noop"}]}, "inputs": {}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let took = began.elapsed();
        assert!(took < Duration::from_secs(1), "another tenant's run took {took:?} to start");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log.lock().map(|l| l.clone()).unwrap_or_default());
        }
        let _ = &self.dir;
    }
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn chain(n: usize) -> Value {
    let nodes: Vec<Value> = (0..n).map(|i| json!({"id": format!("n{i}"), "type": "noop"})).collect();
    let edges: Vec<Value> = (1..n).map(|i| json!({"from": format!("n{}", i - 1), "to": format!("n{i}")})).collect();
    json!({"nodes": nodes, "edges": edges})
}

fn jq_workflow(filter: &str) -> Value {
    json!({"nodes": [{"id": "t", "type": "transform", "config": {"pipeline": [{"step": "jq_transform", "filter": filter}]}}]})
}

fn edge_workflow(condition: &str) -> Value {
    json!({"nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}], "edges": [{"from": "a", "to": "b", "condition": condition}]})
}

/// Deep nesting, huge graphs and huge expressions at submission: a clear 4xx, every time,
/// on every route that parses a workflow, and the server keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_documents_get_a_4xx_and_nothing_else() {
    let mut srv = Server::start(&[]).await;
    let mallory = srv.key("acme", "member").await;
    let bob = srv.key("bravo", "member").await;

    let cases: Vec<(&str, Value)> = vec![
        ("jq nested brackets", jq_workflow(&format!("{}.{}", "[".repeat(5_000), "]".repeat(5_000)))),
        (
            "jq nested ifs",
            jq_workflow(&format!("{}1{}", "if true then ".repeat(3_000), " else 0 end".repeat(3_000))),
        ),
        ("a 5,000-node chain", chain(5_000)),
        ("a CEL condition of 300,000 terms", edge_workflow(&vec!["output.x"; 300_000].join(" || "))),
        ("a deep CEL member chain", edge_workflow(&format!("output{}", ".a".repeat(3_000)))),
        ("a deep CEL operator chain", edge_workflow(&format!("1{} == 2", " + 1".repeat(1_500)))),
        (
            "nested CEL comprehensions",
            edge_workflow("[1,2].all(a, [1,2].all(b, [1,2].all(c, [1,2].all(d, true))))"),
        ),
        (
            "a huge loop",
            json!({"nodes": [{"id": "s", "type": "noop"}, {"id": "l", "type": "loop", "config": {"max_iterations": 100_000_000u64, "loop_back_to": "s"}}], "edges": [{"from": "s", "to": "l"}]}),
        ),
    ];
    for (what, wf) in &cases {
        for path in ["/api/v1/workflows/validate", "/api/v1/runs", "/api/v1/workflows"] {
            let body = match path {
                "/api/v1/workflows" => json!({"tag_name": "evil", "workflow": wf}),
                "/api/v1/runs" => json!({"workflow": wf, "inputs": {}}),
                _ => json!({"workflow": wf}),
            };
            let (status, resp) = srv.post(&mallory, path, &body).await;
            if path.ends_with("validate") && status == 200 {
                assert_eq!(resp["valid"], false, "{what}: {resp}");
            } else {
                assert!((400..500).contains(&status), "{what} on {path}: {status} {resp}");
                assert!(resp["error"]["code"].is_string(), "{what}: no error envelope: {resp}");
            }
        }
        srv.bystander_starts_quickly(&bob).await;
    }

    // A body nested far deeper than any parser recurses safely.
    for depth in [127, 10_000, 1_000_000] {
        let body = format!(
            r#"{{"workflow": {{"nodes": [{{"id": "a", "type": "noop", "config": {{"output": {}}}}}]}}, "inputs": {{}}}}"#,
            nested(depth)
        );
        let (status, resp) = srv.send(&mallory, reqwest::Method::POST, "/api/v1/runs", body.into_bytes()).await;
        assert_eq!(status, 400, "depth {depth}: {resp}");
    }
    // Inputs nested near the limit are stored and can always be read back.
    let deep_inputs: Value = serde_json::from_str(&format!(r#"{{"x": {}}}"#, nested(60))).unwrap();
    let id = srv.start_run(&mallory, &json!({"nodes": [{"id": "a", "type": "noop"}]}), deep_inputs).await;
    let run = srv.wait_terminal(&mallory, &id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let too_deep: Value = serde_json::from_str(&format!(r#"{{"x": {}}}"#, nested(125))).unwrap();
    let (status, _) = srv
        .post(
            &mallory,
            "/api/v1/runs",
            &json!({"workflow": {"nodes": [{"id": "a", "type": "noop"}]}, "inputs": too_deep}),
        )
        .await;
    assert_eq!(status, 400);
    // YAML text nested deeply is refused the same way.
    let yaml = format!("nodes:\n  - id: a\n    type: noop\n    config:\n      output: {}\n", nested(200));
    let (status, resp) = srv.post(&mallory, "/api/v1/workflows/validate", &json!({"workflow": yaml})).await;
    assert!(status == 400 || resp["valid"] == false, "{status} {resp}");

    // Amplification through a tag patch: copying the document into itself.
    let (status, _) = srv
        .post(
            &mallory,
            "/api/v1/workflows",
            &json!({"tag_name": "small", "workflow": {"nodes": [{"id": "a", "type": "noop", "config": {"output": "x".repeat(4_000)}}]}}),
        )
        .await;
    assert_eq!(status, 201);
    let ops: Vec<Value> = (0..40)
        .map(|i| json!({"op": "copy", "from": "", "path": format!("/nodes/0/config/c{i}")}))
        .collect();
    let began = Instant::now();
    let (status, resp) = srv
        .send(
            &mallory,
            reqwest::Method::PATCH,
            "/api/v1/workflows/small/patch",
            serde_json::to_vec(&json!({"operations": ops})).unwrap(),
        )
        .await;
    assert!((400..500).contains(&status), "{status} {resp}");
    assert!(began.elapsed() < Duration::from_secs(10), "the patch took {:?}", began.elapsed());
    srv.bystander_starts_quickly(&bob).await;
}

/// Runs whose work would never end, or would grow without bound, fail with a stable code;
/// the server stays up and other tenants' runs start meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_runs_fail_with_stable_codes() {
    let mut srv = Server::start(&[("AOB_LIMITS__JQ_TIMEOUT_MS", "3000"), ("AOB_LIMITS__EVENTS_PER_RUN", "2000")]).await;
    let mallory = srv.key("acme", "member").await;
    let bob = srv.key("bravo", "member").await;

    let cases: Vec<(&str, Value, Value, &[&str])> = vec![
        (
            "recursion in jq",
            jq_workflow("def f: 1 + f; f"),
            json!({}),
            &["jq_resource_exhausted", "jq_timeout"],
        ),
        (
            "an endless jq loop",
            jq_workflow("def f: f; f"),
            json!({}),
            &["jq_timeout", "jq_resource_exhausted"],
        ),
        (
            "a jq memory bomb",
            jq_workflow("[range(1e12)] | length"),
            json!({}),
            &["jq_resource_exhausted", "jq_timeout"],
        ),
        (
            "a deeply nested jq value",
            jq_workflow("reduce range(100000) as $i (0; [.])"),
            json!({}),
            &["transform_error"],
        ),
        (
            "a deep path write",
            jq_workflow("setpath([range(5000) | \"k\"]; 1)"),
            json!({}),
            &["transform_error"],
        ),
        (
            "a costly CEL comprehension",
            edge_workflow("inputs.l.all(a, inputs.l.all(b, a != b || a == b))"),
            json!({"l": (0..20_000).collect::<Vec<_>>()}),
            &["condition_error"],
        ),
        (
            "a map over too many items",
            json!({"nodes": [{"id": "m", "type": "map", "config": {"items": "$inputs.l", "node": {"type": "noop"}}}]}),
            json!({"l": (0..20_000).collect::<Vec<_>>()}),
            &["too_many_items"],
        ),
        (
            "a loop beyond the event quota",
            json!({"nodes": [{"id": "s", "type": "noop"}, {"id": "l", "type": "loop", "config": {"max_iterations": 10_000, "loop_back_to": "s"}}], "edges": [{"from": "s", "to": "l"}]}),
            json!({}),
            &["event_limit_exceeded"],
        ),
    ];
    for (what, wf, inputs, codes) in cases {
        let id = srv.start_run(&mallory, &wf, inputs).await;
        srv.bystander_starts_quickly(&bob).await;
        let run = srv.wait_terminal(&mallory, &id).await;
        assert_eq!(run["status"], "FAILED", "{what}: {run}");
        let text = run.to_string();
        assert!(codes.iter().any(|c| text.contains(c)), "{what}: expected one of {codes:?} in {run}");
        // The work stayed bounded: jq's memory is its sandbox's, not the server's.
        let rss = srv.rss_mib();
        assert!(rss < 1024, "{what}: the server grew to {rss} MiB");
    }
    // A long loop yields between transitions: others start while it runs.
    let long = json!({"nodes": [{"id": "s", "type": "noop"}, {"id": "l", "type": "loop", "config": {"max_iterations": 400, "loop_back_to": "s"}}], "edges": [{"from": "s", "to": "l"}]});
    let id = srv.start_run(&mallory, &long, json!({})).await;
    srv.bystander_starts_quickly(&bob).await;
    assert_eq!(srv.wait_terminal(&mallory, &id).await["status"], "COMPLETED");

    // Nothing was left to crash-loop on: a restart comes up and serves.
    let _ = srv.child.kill();
    let _ = srv.child.wait();
    let data = srv.dir.path().join("data");
    let mut again = Command::new(env!("CARGO_BIN_EXE_aob"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    again
        .arg("serve")
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    srv.child = again.spawn().unwrap();
    srv.url = format!("http://127.0.0.1:{port}");
    let until = Instant::now() + DEADLINE;
    while !reqwest::get(format!("{}/health", srv.url)).await.is_ok_and(|r| r.status().is_success()) {
        srv.assert_alive("a restart");
        assert!(Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.bystander_starts_quickly(&bob).await;
    srv.assert_alive("the restart");
}

/// A loopback HTTP server that answers every request after `delay`.
async fn slow_server(delay: Duration) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = sock.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
            });
        }
    });
    addr
}

/// One tenant's slow attempts and parked subworkflows fill far more than the worker
/// slots; another tenant's runs still go through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_starve_another() {
    let slow = slow_server(Duration::from_secs(20)).await;
    let fast = slow_server(Duration::from_millis(0)).await;
    let args: Vec<String> = [slow, fast].iter().flat_map(|a| ["--ssrf-allow".to_string(), a.to_string()]).collect();
    let mut srv = Server::start_with(&[("AOB_MAX_TASKS", "8")], &args).await;
    let mallory = srv.key("acme", "member").await;
    let bob = srv.key("bravo", "member").await;

    // 40 slow calls and 40 child runs that wait, against 8 worker slots.
    let calls = json!({"nodes": [{"id": "m", "type": "map", "config": {
        "items": (0..40).collect::<Vec<_>>(), "concurrency": 40,
        "node": {"type": "http", "config": {"url": format!("http://{slow}/slow")}}}}]});
    let children = json!({"nodes": [{"id": "m", "type": "map", "config": {
        "items": (0..40).collect::<Vec<_>>(), "concurrency": 40,
        "node": {"type": "subworkflow", "config": {"workflow": {"nodes": [{"id": "w", "type": "wait", "config": {"duration_ms": 60000}}]}}}}}]});
    let hogs = [
        srv.start_run(&mallory, &calls, json!({})).await,
        srv.start_run(&mallory, &children, json!({})).await,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;

    let quick = json!({"nodes": [{"id": "h", "type": "http", "config": {"url": format!("http://{fast}/fast")}}]});
    for _ in 0..3 {
        let began = Instant::now();
        let id = srv.start_run(&bob, &quick, json!({})).await;
        let run = srv.wait_terminal(&bob, &id).await;
        assert_eq!(run["status"], "COMPLETED", "{run}");
        let took = began.elapsed();
        assert!(took < Duration::from_secs(5), "another tenant's one-call run took {took:?}");
    }
    for id in hogs {
        let r = mallory.post(format!("{}/api/v1/runs/{id}/cancel", srv.url)).send().await.unwrap();
        assert!(r.status().is_success());
    }
    srv.assert_alive("the starvation attempt");
}
