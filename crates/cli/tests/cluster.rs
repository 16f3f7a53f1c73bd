//! Scale-out with real processes: several `aob serve` over one PostgreSQL schema and
//! one Redis prefix, with different roles, killed (SIGKILL) and restarted while runs
//! go on (issue 4). Every run must end exactly once, with a gapless log and the same
//! result as in embedded mode.
//!
//! Needs PostgreSQL (`AOB_TEST_DATABASE_URL`) and Redis (`AOB_TEST_REDIS_URL`); the
//! Redis-restart test starts a private `redis-server` on a free port. Unreachable
//! services fail the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{EXAMPLES, database_url, example_inputs as inputs, redis_url};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `aob serve` process of the cluster.
struct Proc {
    name: String,
    roles: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    url: String,
    log: Arc<Mutex<String>>,
}

/// The processes of one test over one PostgreSQL schema and one Redis prefix.
struct Cluster {
    schema: String,
    /// What the processes connect to (the test's PostgreSQL, or a proxy in front of it).
    database: String,
    prefix: String,
    redis: String,
    allow: Vec<String>,
    procs: Vec<Proc>,
    http: reqwest::Client,
}

impl Cluster {
    fn new(redis: String, allow: Vec<String>) -> Cluster {
        Cluster {
            schema: format!("aob_test_{}", uuid::Uuid::new_v4().simple()),
            prefix: format!("aob-test-{}", uuid::Uuid::new_v4().simple()),
            database: database_url(),
            redis,
            allow,
            procs: Vec::new(),
            http: reqwest::Client::new(),
        }
    }

    /// Adds a process with `roles`; returns its index.
    async fn add(&mut self, name: &str, roles: &str) -> usize {
        self.procs.push(Proc {
            name: name.into(),
            roles: roles.into(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            url: String::new(),
            log: Arc::default(),
        });
        let i = self.procs.len() - 1;
        self.start(i).await;
        i
    }

    /// Starts (or restarts) process `i` on a fresh port and waits for `/health`.
    async fn start(&mut self, i: usize) {
        let port = free_port();
        let p = &mut self.procs[i];
        assert!(p.child.is_none(), "{} is running", p.name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aob"));
        cmd.arg("serve")
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(p.dir.path().join("data"))
            .args(["--database-url", &self.database])
            .args(["--redis-url", &self.redis])
            .args(["--roles", &p.roles]);
        for a in &self.allow {
            cmd.args(["--ssrf-allow", a]);
        }
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AOB_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("AOB_DATABASE_SCHEMA", &self.schema)
            .env("AOB_REDIS_PREFIX", &self.prefix)
            .env("AOB_CLUSTER__SHARDS", "8")
            .env("AOB_CLUSTER__LEASE_TTL_MS", "2000")
            .env("AOB_CLUSTER__CALL_TIMEOUT_MS", "10000")
            .env("AOB_VISIBILITY_MS", "2000")
            .env("AOB_RATE_LIMIT__PER_ROUTE_PER_MINUTE", "0")
            .env("AOB_RATE_LIMIT__TIERS__SIMPLE", "0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .current_dir(p.dir.path());
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        p.log.lock().unwrap().push_str(&format!("---- {} ({}) on port {port}\n", p.name, p.roles));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = p.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        p.child = Some(child);
        p.url = format!("http://127.0.0.1:{port}");
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.procs[i].child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("{} exited during startup: {status}\n{}", self.procs[i].name, self.logs());
            }
            let ok = self.http.get(format!("{}/health", self.procs[i].url)).send().await;
            if ok.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < until, "{} not healthy in 30 s", self.procs[i].name);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `kill -<sig>` to process `i` (STOP and CONT pause and resume it).
    fn signal(&self, i: usize, sig: &str) {
        let pid = self.procs[i].child.as_ref().expect("not running").id();
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
        assert!(ok.success(), "kill -{sig} {pid}");
    }

    fn logs(&self) -> String {
        self.procs.iter().map(|p| p.log.lock().unwrap().clone()).collect::<Vec<_>>().join("\n")
    }

    /// The API client of process `i`, with the bootstrap admin key (written by the
    /// first API process to start).
    fn api(&self, i: usize) -> Api {
        let key = self
            .procs
            .iter()
            .find_map(|p| std::fs::read_to_string(p.dir.path().join("data/admin.key")).ok())
            .expect("no admin key written");
        Api {
            url: self.procs[i].url.clone(),
            http: common::client_with_key(key.trim()),
        }
    }

    /// Shards each process holds, from `/readiness`.
    async fn shards(&self, i: usize) -> Vec<u64> {
        let r: Value = self
            .http
            .get(format!("{}/readiness", self.procs[i].url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["shards"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
    }

    /// Waits until the processes `engines` together hold every shard, each some.
    async fn until_balanced(&self, engines: &[usize]) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let mut all = Vec::new();
            let mut each = true;
            for &i in engines {
                let s = self.shards(i).await;
                each &= !s.is_empty();
                all.extend(s);
            }
            all.sort_unstable();
            if each && all == (0..8).collect::<Vec<u64>>() {
                return;
            }
            assert!(Instant::now() < until, "shards not balanced in 30 s: {all:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let (url, schema, redis, prefix) = (database_url(), self.schema.clone(), self.redis.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                let _ = rt.block_on(aob_store_postgres::PgStore::drop_schema(&url, &schema));
                let _ = rt.block_on(aob_dispatch_redis::RedisDispatch::purge(&redis, &prefix));
            }
        })
        .join();
    }
}

#[derive(Clone)]
struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> Value {
        let r = self.http.get(format!("{}{path}", self.url)).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn start_run(&self, workflow: &Value, inputs: Value) -> String {
        let r = self
            .http
            .post(format!("{}/api/v1/runs", self.url))
            .json(&json!({"workflow": workflow, "inputs": inputs}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "start failed: {body}");
        body["run_id"].as_str().unwrap().to_string()
    }

    async fn events(&self, run_id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.get(&format!("/api/v1/runs/{run_id}/events/list?after={after}&limit=500")).await;
            out.extend(page["events"].as_array().unwrap().iter().cloned());
            match page["next_after"].as_u64() {
                Some(n) => after = n,
                None => return out,
            }
        }
    }

    async fn wait_terminal(&self, run_id: &str, until: Instant) -> Value {
        loop {
            let run = self.get(&format!("/api/v1/runs/{run_id}")).await;
            if matches!(run["status"].as_str(), Some("COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT")) {
                return run;
            }
            assert!(Instant::now() < until, "run {run_id} not finished in time: {run}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn terminal_count(&self, ids: &[String]) -> usize {
        let mut n = 0;
        for id in ids {
            let run = self.get(&format!("/api/v1/runs/{id}")).await;
            if matches!(run["status"].as_str(), Some("COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT")) {
                n += 1;
            }
        }
        n
    }
}

/// The example endpoints, each answer delayed so kills land on attempts in flight.
async fn slow_stub(delay: Duration) -> common::AsyncStub {
    common::AsyncStub::start(Arc::new(move |hit: common::Hit, n: usize| {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            common::example_answer(&hit, n)
        })
    }))
    .await
}

/// The log is 1..=n, exactly one terminal event and it is last, and no node completed
/// more often than it started.
fn assert_clean_log(run_id: &str, events: &[Value]) {
    common::assert_gapless(events);
    let terminal: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e["type"].as_str(), Some("workflow_completed" | "workflow_failed" | "workflow_cancelled")))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(terminal, vec![events.len() - 1], "run {run_id}: terminal events {terminal:?}");
    let mut started: HashMap<String, usize> = HashMap::new();
    let mut completed: HashMap<String, usize> = HashMap::new();
    for e in events {
        let node = e["node_id"].as_str().unwrap_or("").to_string();
        match e["type"].as_str() {
            Some("node_started") => *started.entry(node).or_default() += 1,
            Some("node_completed") => *completed.entry(node).or_default() += 1,
            _ => {}
        }
    }
    for (node, c) in &completed {
        let s = started.get(node).copied().unwrap_or(0);
        // Inline nodes (noop, loop, conditional) complete without a node_started.
        assert!(s == 0 || *c <= s, "run {run_id}: node {node} completed {c} times, started {s}");
    }
}

/// Status and outputs of every example in embedded mode: what the cluster must give.
async fn embedded_results(stub: &common::AsyncStub) -> BTreeMap<&'static str, Value> {
    let srv = common::start_server(&[stub.allow()]).await;
    let mut out = BTreeMap::new();
    for (k, name) in EXAMPLES.iter().enumerate() {
        let id = srv
            .start_run(&common::example(name), inputs(name, &stub.url(&format!("/m{}", 90_000 + k))))
            .await;
        let run = srv.wait_run(&id).await;
        assert_eq!(run["status"], "COMPLETED", "{name} in embedded mode: {run}");
        out.insert(*name, json!({"status": run["status"], "outputs": run["outputs"]}));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_finish_200_runs_while_a_worker_then_an_engine_is_killed() {
    let stub = slow_stub(Duration::from_millis(100)).await;
    let expected = embedded_results(&stub).await;
    let mut c = Cluster::new(redis_url(), vec![stub.allow()]);
    let front = c.add("front", "api,engine").await;
    let both = c.add("engine-worker", "engine,worker").await;
    let worker = c.add("worker", "worker").await;
    c.until_balanced(&[front, both]).await;
    // Every process serves health, readiness and metrics whatever its roles.
    for i in [front, both, worker] {
        let api = c.api(i);
        assert!(api.http.get(format!("{}/metrics", api.url)).send().await.unwrap().status().is_success());
        assert!(api.http.get(format!("{}/readiness", api.url)).send().await.unwrap().status().is_success());
    }
    // Only the API process serves the API.
    let w = c.api(worker);
    assert_eq!(w.http.get(format!("{}/api/v1/runs", w.url)).send().await.unwrap().status(), 404);

    let api = c.api(front);
    let mut ids: Vec<(String, &str)> = Vec::new();
    for chunk in (0..200).collect::<Vec<usize>>().chunks(20) {
        let starts = chunk.iter().map(|&k| {
            let api = api.clone();
            let name = EXAMPLES[k % EXAMPLES.len()];
            let base = stub.url(&format!("/m{k}"));
            async move { (api.start_run(&common::example(name), inputs(name, &base)).await, name) }
        });
        ids.extend(futures::future::join_all(starts).await);
    }
    let all: Vec<String> = ids.iter().map(|(id, _)| id.clone()).collect();

    // A worker dies with attempts in flight; it comes back.
    common::wait_for("attempts in flight", 60, || stub.in_flight.load(Ordering::SeqCst) >= 2).await;
    c.kill(worker);
    c.start(worker).await;
    // An engine (which also works) dies; the other engine takes its shards over.
    common::wait_for("attempts in flight", 60, || stub.in_flight.load(Ordering::SeqCst) >= 1).await;
    c.kill(both);
    let left = all.len() - api.terminal_count(&all).await;
    assert!(left > 0, "every run ended before the engine was killed: the kill proved nothing");
    let until = Instant::now() + Duration::from_secs(60);
    while c.shards(front).await.len() < 8 {
        assert!(Instant::now() < until, "the surviving engine did not take every shard over\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.start(both).await;

    let until = Instant::now() + Duration::from_secs(240);
    for (id, name) in &ids {
        let run = api.wait_terminal(id, until).await;
        let got = json!({"status": run["status"], "outputs": run["outputs"]});
        assert_eq!(&got, &expected[name], "run {id} ({name}) differs from embedded mode");
        assert_clean_log(id, &api.events(id).await);
    }
    // The restarted engine gets its share back.
    c.until_balanced(&[front, both]).await;
}

/// An HTTP endpoint that holds every request until the test opens it.
async fn gated_stub() -> (common::AsyncStub, tokio::sync::watch::Sender<bool>) {
    let (open, _) = tokio::sync::watch::channel(false);
    let gate = open.clone();
    let stub = common::AsyncStub::start(Arc::new(move |_hit: common::Hit, _n: usize| {
        let mut rx = gate.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|o| *o).await;
            (200, json!({"ok": true}))
        })
    }))
    .await;
    (stub, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_attempt_has_its_attempt_redelivered_with_the_same_key() {
    let (stub, open) = gated_stub().await;
    let mut c = Cluster::new(redis_url(), vec![stub.allow()]);
    let front = c.add("front", "api,engine").await;
    let worker = c.add("worker", "worker:http").await;
    c.until_balanced(&[front]).await;
    let api = c.api(front);
    let wf = json!({"nodes": [
        {"id": "call", "type": "http", "config": {"url": stub.url("/hold")}},
        {"id": "after", "type": "noop"}
    ], "edges": [{"from": "call", "to": "after"}]});
    let id = api.start_run(&wf, json!({})).await;
    common::wait_for("the worker's request", 30, || stub.hits("/hold").len() == 1).await;
    c.kill(worker);
    c.start(worker).await;
    // The lease runs out (2 s visibility) and the new worker takes the attempt.
    common::wait_for("the redelivered request", 30, || stub.hits("/hold").len() == 2).await;
    open.send_replace(true);
    let run = api.wait_terminal(&id, Instant::now() + Duration::from_secs(30)).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let hits = stub.hits("/hold");
    let keys: Vec<Option<&str>> = hits.iter().map(|h| h.header("idempotency-key")).collect();
    assert!(keys[0].is_some() && keys[0] == keys[1], "a redelivery must carry the same key: {keys:?}");
    let events = api.events(&id).await;
    assert_clean_log(&id, &events);
    let done = events.iter().filter(|e| e["type"] == "node_completed" && e["node_id"] == "call").count();
    assert_eq!(done, 1, "the attempt's completion was applied {done} times");
}

/// A private `redis-server` on a free port, killed and restarted by the test (empty
/// each time: it keeps nothing on disk).
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { port, child: Some(child) }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_work() {
    let stub = slow_stub(Duration::from_millis(300)).await;
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    let mut c = Cluster::new(format!("redis://127.0.0.1:{port}"), vec![stub.allow()]);
    let front = c.add("front", "api,engine").await;
    let _worker = c.add("worker", "worker").await;
    c.until_balanced(&[front]).await;
    let api = c.api(front);
    let mut ids = Vec::new();
    for k in 0..20 {
        ids.push(
            api.start_run(&common::example("http-chain.yaml"), inputs("http-chain.yaml", &stub.url(&format!("/m{k}"))))
                .await,
        );
    }
    common::wait_for("attempts in flight", 30, || stub.in_flight.load(Ordering::SeqCst) >= 2).await;
    // Redis goes away with everything it held (queued and leased attempts, completions
    // on their way) and comes back empty on the same port.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _redis = PrivateRedis::start(redis.port);
    let until = Instant::now() + Duration::from_secs(90);
    for id in &ids {
        let run = api.wait_terminal(id, until).await;
        assert_eq!(run["status"], "COMPLETED", "run {id}: {run}\n{}", c.logs());
        assert_clean_log(id, &api.events(id).await);
    }
    // The engine noticed and pushed its in-flight attempts again.
    assert!(c.logs().contains("re-pushed in-flight attempts"), "no re-push after the restart\n{}", c.logs());
}

/// A TCP proxy in front of PostgreSQL that the test can cut: `down` closes every
/// connection through it and refuses new ones until `up`.
struct Cut {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
}

impl Cut {
    async fn start(target: (String, u16)) -> Cut {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, _) = tokio::sync::watch::channel(true);
        let state = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut alive = state.subscribe();
                if !*alive.borrow() {
                    continue; // dropped: refused
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = alive.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Cut { port, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_means_503_for_writes_cached_reads_served_and_nothing_lost() {
    let db = reqwest::Url::parse(&database_url()).unwrap();
    let cut = Cut::start((db.host_str().unwrap().to_string(), db.port().unwrap_or(5432))).await;
    let mut through = db.clone();
    through.set_port(Some(cut.port)).unwrap();
    let mut c = Cluster::new(redis_url(), vec![]);
    c.database = through.to_string();
    let front = c.add("front", "api,engine,worker").await;
    c.until_balanced(&[front]).await;
    let api = c.api(front);
    let quick = json!({"nodes": [{"id": "a", "type": "noop", "config": {"output": {"x": 1}}}], "edges": []});
    let done = api.start_run(&quick, json!({})).await;
    api.wait_terminal(&done, Instant::now() + Duration::from_secs(30)).await;
    let ask = json!({"nodes": [
        {"id": "ask", "type": "hitl", "config": {"message": "ok?"}},
        {"id": "after", "type": "noop"}
    ], "edges": [{"from": "ask", "to": "after"}]});
    let waiting = api.start_run(&ask, json!({})).await;
    let approvals = api.get("/api/v1/approvals?status=pending").await;
    let approval = approvals["approvals"][0]["approval_id"].as_str().unwrap().to_string();

    cut.set(false);
    let r = api
        .http
        .post(format!("{}/api/v1/runs", api.url))
        .json(&json!({"workflow": quick, "inputs": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "a write while PostgreSQL is down");
    let body: Value = r.json().await.unwrap();
    common::assert_envelope(&body, "unavailable");
    // A finished run this process has read is still served.
    let run = api.get(&format!("/api/v1/runs/{done}")).await;
    assert_eq!(run["status"], "COMPLETED");
    let ready = c.http.get(format!("{}/readiness", api.url)).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    cut.set(true);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let r = api
            .http
            .post(format!("{}/api/v1/approvals/{approval}/decide", api.url))
            .json(&json!({"decision": "approve"}))
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            break;
        }
        assert_eq!(r.status(), 503, "only unavailability may refuse the decision");
        assert!(Instant::now() < until, "PostgreSQL back, but writes still fail");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = api.wait_terminal(&waiting, Instant::now() + Duration::from_secs(30)).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_clean_log(&waiting, &api.events(&waiting).await);
    let again = api.start_run(&quick, json!({})).await;
    api.wait_terminal(&again, Instant::now() + Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_paused_past_its_lease_is_replaced_and_runs_finish_once() {
    let stub = slow_stub(Duration::from_millis(30)).await;
    let expected = embedded_results(&stub).await;
    let mut c = Cluster::new(redis_url(), vec![stub.allow()]);
    let front = c.add("front", "api,engine,worker").await;
    let paused = c.add("paused", "engine").await;
    c.until_balanced(&[front, paused]).await;
    let api = c.api(front);
    let mut ids = Vec::new();
    for k in 0..40 {
        let name = EXAMPLES[k % EXAMPLES.len()];
        ids.push((api.start_run(&common::example(name), inputs(name, &stub.url(&format!("/m{k}")))).await, name));
    }
    common::wait_for("attempts in flight", 30, || stub.in_flight.load(Ordering::SeqCst) >= 1).await;
    // Frozen (a long GC pause, a stalled VM): its leases run out and the front takes
    // its shards over; then it wakes up still believing it owns them.
    c.signal(paused, "STOP");
    let until = Instant::now() + Duration::from_secs(30);
    while c.shards(front).await.len() < 8 {
        assert!(Instant::now() < until, "no takeover of a frozen engine's shards\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.signal(paused, "CONT");
    let until = Instant::now() + Duration::from_secs(120);
    for (id, name) in &ids {
        let run = api.wait_terminal(id, until).await;
        let got = json!({"status": run["status"], "outputs": run["outputs"]});
        assert_eq!(&got, &expected[name], "run {id} ({name}) differs from embedded mode");
        assert_clean_log(id, &api.events(id).await);
    }
    // The woken engine rejoins and gets its share again.
    c.until_balanced(&[front, paused]).await;
}

impl Api {
    /// The same endpoints through the shared test support (SSE reading).
    fn as_server(&self) -> common::TestServer {
        common::TestServer {
            url: self.url.clone(),
            http: self.http.clone(),
            server: None,
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_process_streams_every_event_of_a_run_in_order() {
    let stub = slow_stub(Duration::from_millis(50)).await;
    let mut c = Cluster::new(redis_url(), vec![stub.allow()]);
    let a = c.add("api-a", "api").await;
    let b = c.add("api-b", "api").await;
    let e = c.add("engine", "engine,worker").await;
    c.until_balanced(&[e]).await;
    let (api_a, api_b) = (c.api(a), c.api(b));
    let name = "http-chain.yaml";
    let id = api_a.start_run(&common::example(name), inputs(name, &stub.url("/m1"))).await;
    // Live on both API processes, while the run goes on (neither runs it).
    let path = format!("/api/v1/runs/{id}/events?last_event_id=0");
    let (sa, sb) = (api_a.as_server(), api_b.as_server());
    let (fa, fb) = tokio::join!(sa.sse_frames(&path, &[]), sb.sse_frames(&path, &[]));
    let stored = api_b.events(&id).await;
    assert_clean_log(&id, &stored);
    for frames in [&fa, &fb] {
        let ids: Vec<u64> = frames.iter().map(|f| f.id.parse().unwrap()).collect();
        assert_eq!(ids, (1..=stored.len() as u64).collect::<Vec<_>>(), "a stream skipped or repeated events");
        let kinds: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
        let want: Vec<&str> = stored.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, want);
    }
    // Resume on the other process from the middle: exactly the rest.
    let k = stored.len() / 2;
    let rest = sb.sse_frames(&format!("/api/v1/runs/{id}/events"), &[("Last-Event-ID", &k.to_string())]).await;
    let ids: Vec<u64> = rest.iter().map(|f| f.id.parse().unwrap()).collect();
    assert_eq!(ids, ((k as u64 + 1)..=stored.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_api_process_stops_working_on_the_others() {
    let mut c = Cluster::new(redis_url(), vec![]);
    let a = c.add("api-a", "api,engine,worker").await;
    let b = c.add("api-b", "api").await;
    c.until_balanced(&[a]).await;
    let admin = c.api(a);
    let r = admin
        .http
        .post(format!("{}/api/v1/keys", admin.url))
        .json(&json!({"name": "temp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let (id, plain) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    let on_b = common::client_with_key(plain);
    let whoami = format!("{}/api/v1/whoami", c.procs[b].url);
    assert_eq!(on_b.get(&whoami).send().await.unwrap().status(), 200, "the key works on b (and b caches it)");
    let r = admin.http.delete(format!("{}/api/v1/keys/{id}", admin.url)).send().await.unwrap();
    assert!(r.status().is_success(), "revoke: {}", r.status());
    // b cached the record; it trusts it for a few seconds at most.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let status = on_b.get(&whoami).send().await.unwrap().status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < until, "a revoked key still works on another API process");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
