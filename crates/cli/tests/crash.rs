//! Crash recovery of the real `aob serve` process (DESIGN §4, issue 2 item 10).
//!
//! Every test runs the `aob` binary on its own temp data dir, kills it (SIGKILL, or
//! an abort at a named failure point), restarts it on the same data dir and checks
//! that every run finishes, that no completion is applied twice (one `node_completed`
//! per node), that the event log is gapless from seq 1, and that effects are
//! at-least-once with stable keys: an attempt re-dispatched after a crash carries the
//! same `Idempotency-Key` as before it.
//!
//! The HTTP stub holds chosen paths until the test opens them, so a kill always lands
//! while the attempts it means to interrupt are in flight: no sleep hopes for timing.
//! The failure-point tests need `--features failpoints` (`name@N` aborts on the Nth
//! hit; see `aob_runtime::failpoint`).

// Test support panics on any unexpected error, helpers included.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------------------------
// A gated loopback stub.

/// One request the stub received.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    key: Option<String>,
    /// Wall clock (unix ms) when the request arrived.
    at_ms: i64,
}

type Status = Arc<dyn Fn(&str, usize) -> u16 + Send + Sync>;

/// Answers `{"path": …}` with `status(path, n)` (n = earlier hits on that path), but
/// only once the path is not blocked: a blocked request is recorded on arrival and
/// then held until the test opens its path.
struct Stub {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    blocked: watch::Sender<BTreeSet<String>>,
}

impl Stub {
    async fn start(blocked: &[&str]) -> Stub {
        Stub::with_status(blocked, Arc::new(|_, _| 200)).await
    }

    async fn with_status(blocked: &[&str], status: Status) -> Stub {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let (gate, _) = watch::channel(blocked.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
        let (h, g) = (hits.clone(), gate.clone());
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (hits, mut open, status) = (h.clone(), g.subscribe(), status.clone());
            async move {
                let path = req.uri().path().to_string();
                let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
                let n = {
                    let mut g = hits.lock().unwrap();
                    let n = g.iter().filter(|x| x.path == path).count();
                    g.push(Hit {
                        path: path.clone(),
                        key,
                        at_ms: now_ms(),
                    });
                    n
                };
                let _ = open.wait_for(|b| !b.contains(&path)).await;
                let code = axum::http::StatusCode::from_u16(status(&path, n)).unwrap();
                (code, axum::Json(json!({"path": path, "n": n})))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Stub { addr, hits, blocked: gate }
    }

    fn allow(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn open(&self, path: &str) {
        self.blocked.send_modify(|b| {
            b.remove(path);
        });
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits.lock().unwrap().iter().filter(|h| h.path == path).cloned().collect()
    }

    fn count(&self, path: &str) -> usize {
        self.hits(path).len()
    }

    /// Keys seen on `path` for one run (keys are derived from the run id).
    fn keys_for(&self, path: &str, run_id: &str) -> Vec<String> {
        let prefix = format!("{run_id}:");
        self.hits(path).into_iter().filter_map(|h| h.key).filter(|k| k.starts_with(&prefix)).collect()
    }
}

/// A chain of `http` nodes, one per path, each GETting the stub.
fn chain(stub: &Stub, paths: &[&str]) -> Value {
    let nodes: Vec<Value> = paths
        .iter()
        .map(|p| json!({"id": p.trim_start_matches('/'), "type": "http", "config": {"url": stub.url(p)}}))
        .collect();
    let edges: Vec<Value> = paths
        .windows(2)
        .map(|w| json!({"from": w[0].trim_start_matches('/'), "to": w[1].trim_start_matches('/')}))
        .collect();
    json!({"nodes": nodes, "edges": edges})
}

// ---------------------------------------------------------------------------------
// The real server process.

/// Owns the `aob serve` processes of one test over one data dir. Dropping it kills the
/// live process; if the test is failing it also prints every incarnation's stderr.
struct Harness {
    dir: tempfile::TempDir,
    durability: &'static str,
    allow: Vec<String>,
    child: Option<Child>,
    logs: Vec<Arc<Mutex<String>>>,
    url: String,
    http: reqwest::Client,
}

impl Harness {
    fn new(durability: &'static str, allow: &[String]) -> Harness {
        Harness {
            dir: tempfile::tempdir().unwrap(),
            durability,
            allow: allow.to_vec(),
            child: None,
            logs: Vec::new(),
            url: String::new(),
            http: client(None),
        }
    }

    /// Spawns `aob serve` on a fresh port (with `failpoints` armed if given) and waits
    /// until `/health` answers.
    async fn start(&mut self, failpoints: Option<&str>) {
        if let Err(status) = self.try_start(failpoints).await {
            panic!("aob serve exited during startup: {status}");
        }
    }

    /// As `start`, but a process that dies before it is healthy (an armed failure
    /// point hit during recovery) is an answer, not a failure.
    async fn try_start(&mut self, failpoints: Option<&str>) -> Result<(), std::process::ExitStatus> {
        assert!(self.child.is_none(), "a server is already running");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aob"));
        cmd.arg("serve")
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--durability", self.durability]);
        for a in &self.allow {
            cmd.args(["--ssrf-allow", a]);
        }
        // Nothing from the caller's environment (AOB_*, an aob.toml in the cwd) leaks in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AOB_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env_remove("RUST_LOG").env("NO_COLOR", "1").current_dir(self.dir.path());
        if let Some(fp) = failpoints {
            cmd.env("AOB_FAILPOINTS", fp);
        }
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let n = self.logs.len();
        let what = format!("serve #{n}{}", failpoints.map(|f| format!(" AOB_FAILPOINTS={f}")).unwrap_or_default());
        log.lock().unwrap().push_str(&format!("---- {what} on port {port}\n"));
        let out = child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        let err = child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        for stream in [out, err].into_iter().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        self.logs.push(log);
        self.child = Some(child);
        self.url = format!("http://127.0.0.1:{port}");

        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                return Err(status);
            }
            let health = self.http.get(format!("{}/health", self.url)).timeout(Duration::from_secs(1)).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                // The first start writes the bootstrap admin key; every request uses it.
                let key = std::fs::read_to_string(self.dir.path().join("data/admin.key")).ok();
                self.http = client(key.as_deref().map(str::trim));
                return Ok(());
            }
            assert!(Instant::now() < until, "aob serve not healthy within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// kill -9, then reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to die on its own (an armed failure point).
    #[cfg(feature = "failpoints")]
    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < until, "aob serve did not exit at its failure point within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.http.get(format!("{}{}", self.url, path)).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// `POST /api/v1/runs`; an `Err` means the server died before answering.
    async fn try_start_run(&self, workflow: &Value, key: Option<&str>) -> Result<(u16, Value), reqwest::Error> {
        let mut req = self
            .http
            .post(format!("{}/api/v1/runs", self.url))
            .json(&json!({"workflow": workflow, "inputs": {}}));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }

    async fn start_run(&self, workflow: &Value) -> String {
        let (status, body) = self.try_start_run(workflow, None).await.unwrap();
        assert_eq!(status, 201, "start failed: {body}");
        body["run_id"].as_str().unwrap().to_string()
    }

    /// Every stored event of the run, through the paged listing.
    async fn events(&self, run_id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.get(&format!("/api/v1/runs/{run_id}/events/list?after={after}&limit=7")).await;
            out.extend(page["events"].as_array().unwrap().iter().cloned());
            match page["next_after"].as_u64() {
                Some(n) => after = n,
                None => return out,
            }
        }
    }

    /// Polls until an event of `kind` (for `node`) is stored; returns it.
    async fn wait_event(&self, run_id: &str, kind: &str, node: &str) -> Value {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(e) = self.events(run_id).await.into_iter().find(|e| e["type"] == kind && e["node_id"] == node) {
                return e;
            }
            assert!(Instant::now() < until, "no {kind} for {node} in run {run_id} within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `GET /api/v1/runs/:id` until the run is terminal; returns it.
    async fn wait_terminal(&self, run_id: &str) -> Value {
        let until = Instant::now() + DEADLINE;
        loop {
            let run = self.get(&format!("/api/v1/runs/{run_id}")).await;
            if matches!(run["status"].as_str(), Some("COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT")) {
                return run;
            }
            assert!(Instant::now() < until, "run {run_id} not finished within {DEADLINE:?}: {run}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn run_ids(&self) -> Vec<String> {
        let list = self.get("/api/v1/runs?limit=100").await;
        let runs = list["runs"].as_array().unwrap_or_else(|| panic!("unexpected run list: {list}"));
        runs.iter().map(|r| r["run_id"].as_str().unwrap().to_string()).collect()
    }

    /// The run completed with a clean log: seq 1..=n without gap or duplicate, one
    /// `node_completed` and one `node_started` per attempt for every node in `nodes`,
    /// and exactly one terminal event, last. Returns the events.
    async fn assert_completed_once(&self, run_id: &str, nodes: &[&str]) -> Vec<Value> {
        let run = self.wait_terminal(run_id).await;
        assert_eq!(run["status"], "COMPLETED", "run {run_id}: {run}");
        let events = self.events(run_id).await;
        assert_gapless(&events);
        for n in nodes {
            let done = events.iter().filter(|e| e["type"] == "node_completed" && e["node_id"] == *n).count();
            assert_eq!(done, 1, "node {n} of run {run_id} completed {done} times: {events:#?}");
            let mut started: Vec<u64> = events
                .iter()
                .filter(|e| e["type"] == "node_started" && e["node_id"] == *n)
                .map(|e| e["attempt"].as_u64().unwrap())
                .collect();
            let count = started.len();
            started.dedup();
            assert_eq!(started.len(), count, "node {n} of run {run_id}: an attempt started twice: {events:#?}");
        }
        let terminal: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with("workflow_c") || t == "workflow_failed"))
            .collect();
        assert_eq!(terminal.len(), 1, "run {run_id}: {events:#?}");
        assert_eq!(events.last().unwrap()["type"], "workflow_completed");
        events
    }
}

fn client(api_key: Option<&str>) -> reqwest::Client {
    common::client(api_key, Some(Duration::from_secs(10)))
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            for log in &self.logs {
                eprintln!("{}", log.lock().map(|l| l.clone()).unwrap_or_default());
            }
        }
    }
}

/// Seqs are 1..=n: no gap, no duplicate, each event names its run.
fn assert_gapless(events: &[Value]) {
    assert!(!events.is_empty());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1), "gap or duplicate at index {i}: {events:#?}");
    }
}

fn ts_ms(e: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// For each run: `path` saw exactly `times` requests, all with the run's key for
/// attempt 1 (activation 0): a re-dispatch repeats the key, it never makes a new one.
fn assert_keys(stub: &Stub, path: &str, runs: &[String], times: usize) {
    for id in runs {
        let keys = stub.keys_for(path, id);
        assert_eq!(keys.len(), times, "{path} for run {id}: {keys:?}");
        let distinct: BTreeSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), 1, "{path} for run {id} saw different keys: {keys:?}");
        assert!(keys[0].ends_with(":1"), "{path} for run {id}: not attempt 1: {keys:?}");
    }
}

// ---------------------------------------------------------------------------------
// SIGKILL mid-flight.

/// Runs `runs` chains /a → /b → /c and kills the process twice: once with every run's
/// /b attempt in flight, once (after the restart) with every /c attempt in flight.
async fn kill_mid_chain(durability: &'static str, runs: usize) {
    let stub = Stub::start(&["/b", "/c"]).await;
    let mut srv = Harness::new(durability, &[stub.allow()]);
    srv.start(None).await;
    let wf = chain(&stub, &["/a", "/b", "/c"]);
    let mut ids = Vec::new();
    for _ in 0..runs {
        ids.push(srv.start_run(&wf).await);
    }

    // Crash 1: /a done and committed for every run, /b in flight.
    wait_until("every /b attempt in flight", || stub.count("/b") == runs).await;
    srv.kill();
    srv.start(None).await;
    // Recovery re-dispatches each /b attempt (same key) before anything is released.
    wait_until("/b re-dispatched", || stub.count("/b") == 2 * runs).await;
    stub.open("/b");

    // Crash 2: /b completed, /c in flight.
    wait_until("every /c attempt in flight", || stub.count("/c") == runs).await;
    srv.kill();
    srv.start(None).await;
    wait_until("/c re-dispatched", || stub.count("/c") == 2 * runs).await;
    stub.open("/c");

    for id in &ids {
        srv.assert_completed_once(id, &["a", "b", "c"]).await;
    }
    // /a's completion was committed before crash 1: it never ran again.
    assert_keys(&stub, "/a", &ids, 1);
    // In-flight attempts ran twice (at-least-once) with one stable key each.
    assert_keys(&stub, "/b", &ids, 2);
    assert_keys(&stub, "/c", &ids, 2);
    // Nothing after the end: no stray request from a late or duplicate dispatch.
    assert_eq!(stub.count("/a") + stub.count("/b") + stub.count("/c"), 5 * runs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_chain_process_durability() {
    kill_mid_chain("process", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_chain_fsync_durability() {
    kill_mid_chain("fsync", 3).await;
}

/// A `wait` node killed mid-wait completes after restart at its persisted due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_wait_keeps_the_timer() {
    let stub = Stub::start(&[]).await;
    let mut srv = Harness::new("process", &[stub.allow()]);
    srv.start(None).await;
    let wf = json!({
        "nodes": [
            {"id": "a", "type": "http", "config": {"url": stub.url("/a")}},
            {"id": "pause", "type": "wait", "config": {"duration_ms": 2000}},
            {"id": "c", "type": "http", "config": {"url": stub.url("/c")}}
        ],
        "edges": [{"from": "a", "to": "pause"}, {"from": "pause", "to": "c"}]
    });
    let id = srv.start_run(&wf).await;
    let started = srv.wait_event(&id, "node_started", "pause").await;
    let due = ts_ms(&started) + 2000;
    srv.kill();
    assert!(now_ms() < due, "the kill came after the wait was due; the test proves nothing");
    assert_eq!(stub.count("/c"), 0);
    srv.start(None).await;

    let events = srv.assert_completed_once(&id, &["a", "pause", "c"]).await;
    let done = events.iter().find(|e| e["type"] == "node_completed" && e["node_id"] == "pause").unwrap();
    // The restarted process kept the persisted schedule (not restart + 2000 ms) and
    // did not fire it early.
    assert_eq!(done["data"]["output"]["waited_until_ms"].as_i64(), Some(due), "{done}");
    assert!(ts_ms(done) >= due, "wait fired early: {done}");
    let c = stub.hits("/c");
    assert_eq!(c.len(), 1);
    assert!(c[0].at_ms >= due);
    assert_keys(&stub, "/a", std::slice::from_ref(&id), 1);
}

/// A node whose retry backoff is pending at the kill resumes its schedule: attempt 2
/// runs at the persisted `next_attempt_at`, and since the process stayed down past
/// it, right after the restart instead of a fresh backoff later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_retry_backoff_resumes_the_schedule() {
    // First request to /flaky fails with 503, the rest succeed.
    let stub = Stub::with_status(&[], Arc::new(|path, n| if path == "/flaky" && n == 0 { 503 } else { 200 })).await;
    let mut srv = Harness::new("process", &[stub.allow()]);
    srv.start(None).await;
    let wf = json!({
        "nodes": [
            {"id": "flaky", "type": "http", "config": {"url": stub.url("/flaky"), "fail_on_status": true},
             "retry": {"max_attempts": 3, "backoff_ms": 3000, "backoff_multiplier": 1.0}},
            {"id": "after", "type": "http", "config": {"url": stub.url("/after")}}
        ],
        "edges": [{"from": "flaky", "to": "after"}]
    });
    let id = srv.start_run(&wf).await;
    let retrying = srv.wait_event(&id, "node_retrying", "flaky").await;
    srv.kill();
    let next = retrying["data"]["next_attempt_at_ms"].as_i64().unwrap();
    let delay = retrying["data"]["delay_ms"].as_i64().unwrap();
    assert!((1500..=3000).contains(&delay), "{retrying}");
    assert!(now_ms() < next, "killed after the retry was due; the test proves nothing");
    assert_eq!(stub.count("/flaky"), 1);
    // Stay down until the retry is due: the restarted process must run it at once.
    tokio::time::sleep(Duration::from_millis((next - now_ms() + 50).max(0) as u64)).await;
    srv.start(None).await;
    let ready = now_ms();

    let events = srv.assert_completed_once(&id, &["flaky", "after"]).await;
    let flaky = stub.hits("/flaky");
    assert_eq!(flaky.len(), 2, "{flaky:?}");
    assert!(flaky[0].key.as_deref().is_some_and(|k| k.ends_with(":1")), "{flaky:?}");
    assert!(flaky[1].key.as_deref().is_some_and(|k| k.ends_with(":2")), "{flaky:?}");
    assert!(flaky[1].at_ms >= next, "retry ran before its persisted time: {flaky:?}");
    assert!(
        flaky[1].at_ms < ready + 1000,
        "retry waited a fresh backoff after restart instead of the persisted one: {flaky:?}, ready at {ready}"
    );
    let retries = events.iter().filter(|e| e["type"] == "node_retrying").count();
    assert_eq!(retries, 1, "{events:#?}");
    let done = events.iter().find(|e| e["type"] == "node_completed" && e["node_id"] == "flaky").unwrap();
    assert_eq!(done["attempt"], 2);
    assert_eq!(stub.count("/after"), 1);
}

/// An attempt with a `timeout_ms` whose process stays down past the attempt's deadline
/// (timeout + the engine's 5 s grace) is re-dispatched on restart, not declared lost
/// by the first tick: the downtime is not the attempt's fault, and with one attempt
/// allowed that verdict would fail the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_longer_than_the_attempt_deadline_does_not_fail_the_attempt() {
    let stub = Stub::start(&["/a"]).await;
    let mut srv = Harness::new("process", &[stub.allow()]);
    srv.start(None).await;
    let wf = json!({
        "nodes": [
            {"id": "a", "type": "http", "config": {"url": stub.url("/a")}, "timeout_ms": 2000},
            {"id": "b", "type": "http", "config": {"url": stub.url("/b")}}
        ],
        "edges": [{"from": "a", "to": "b"}]
    });
    let id = srv.start_run(&wf).await;
    let started = srv.wait_event(&id, "node_started", "a").await;
    wait_until("/a in flight", || stub.count("/a") == 1).await;
    srv.kill();
    // The engine declares an attempt lost at start + timeout + 5 s: stay down past it.
    let lost_at = ts_ms(&started) + 2000 + 5000;
    tokio::time::sleep(Duration::from_millis((lost_at - now_ms() + 100).max(0) as u64)).await;
    srv.start(None).await;
    wait_until("/a re-dispatched", || stub.count("/a") == 2).await;
    stub.open("/a");
    let events = srv.assert_completed_once(&id, &["a", "b"]).await;
    assert!(
        !events.iter().any(|e| e["type"] == "node_retrying" || e["type"] == "node_failed"),
        "{events:#?}"
    );
    assert_keys(&stub, "/a", std::slice::from_ref(&id), 2);
    assert_keys(&stub, "/b", std::slice::from_ref(&id), 1);
}

/// A `map` node killed with two of its four items in flight: after restart those two
/// run again under their own keys, the other two run once, the map completes once
/// with its results in item order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_map_fan_out() {
    let items = ["/m/0", "/m/1", "/m/2", "/m/3"];
    let stub = Stub::start(&items).await;
    let mut srv = Harness::new("process", &[stub.allow()]);
    srv.start(None).await;
    let wf = json!({
        "nodes": [
            {"id": "fan", "type": "map", "config": {
                "items": [0, 1, 2, 3], "concurrency": 2,
                "node": {"type": "http", "config": {"url": format!("{}/${{item}}", stub.url("/m"))}}
            }},
            {"id": "after", "type": "http", "config": {"url": stub.url("/after")}}
        ],
        "edges": [{"from": "fan", "to": "after"}]
    });
    let id = srv.start_run(&wf).await;
    let in_flight = || items.iter().map(|p| stub.count(p)).sum::<usize>();
    wait_until("two items in flight", || in_flight() == 2).await;
    let first: Vec<&str> = items.iter().copied().filter(|p| stub.count(p) == 1).collect();
    srv.kill();
    srv.start(None).await;
    wait_until("both items re-dispatched", || in_flight() == 4).await;
    assert!(first.iter().all(|p| stub.count(p) == 2), "re-dispatch went to other items than were in flight");
    for p in items {
        stub.open(p);
    }
    let events = srv.assert_completed_once(&id, &["fan", "after"]).await;
    let done = events.iter().find(|e| e["type"] == "node_completed" && e["node_id"] == "fan").unwrap();
    let paths: Vec<&str> = done["data"]["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["body"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, items, "{done}");
    let mut all_keys = BTreeSet::new();
    for p in items {
        let keys = stub.keys_for(p, &id);
        let times = if first.contains(&p) { 2 } else { 1 };
        assert_eq!(keys.len(), times, "{p}: {keys:?}");
        assert!(keys.iter().all(|k| *k == keys[0] && k.ends_with(":1")), "{p}: {keys:?}");
        all_keys.insert(keys[0].clone());
    }
    assert_eq!(all_keys.len(), items.len(), "items share a key: {all_keys:?}");
    assert_eq!(stub.count("/after"), 1);
}

/// A parent killed while its child run is mid-flight: both recover, the parent's
/// re-dispatched `subworkflow` attempt finds its child instead of starting a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_subworkflow_reuses_the_child_run() {
    let stub = Stub::start(&["/x"]).await;
    let mut srv = Harness::new("process", &[stub.allow()]);
    srv.start(None).await;
    let wf = json!({
        "nodes": [
            {"id": "a", "type": "http", "config": {"url": stub.url("/a")}},
            {"id": "child", "type": "subworkflow", "config": {"workflow": chain(&stub, &["/x", "/y"])}},
            {"id": "c", "type": "http", "config": {"url": stub.url("/c")}}
        ],
        "edges": [{"from": "a", "to": "child"}, {"from": "child", "to": "c"}]
    });
    let id = srv.start_run(&wf).await;
    wait_until("the child's /x in flight", || stub.count("/x") == 1).await;
    srv.kill();
    srv.start(None).await;
    wait_until("/x re-dispatched", || stub.count("/x") == 2).await;
    stub.open("/x");
    let events = srv.assert_completed_once(&id, &["a", "child", "c"]).await;
    let done = events.iter().find(|e| e["type"] == "node_completed" && e["node_id"] == "child").unwrap();
    let child = done["data"]["output"]["run_id"].as_str().unwrap().to_string();
    let mut runs = srv.run_ids().await;
    runs.sort();
    let mut expected = vec![id.clone(), child.clone()];
    expected.sort();
    assert_eq!(runs, expected, "a second child run was started");
    srv.assert_completed_once(&child, &["x", "y"]).await;
    let child_ids = [child];
    assert_keys(&stub, "/x", &child_ids, 2);
    assert_keys(&stub, "/y", &child_ids, 1);
    assert_keys(&stub, "/a", std::slice::from_ref(&id), 1);
    assert_keys(&stub, "/c", std::slice::from_ref(&id), 1);
}

// ---------------------------------------------------------------------------------
// A full disk.

/// A tmpfs of `size` mounted on `dir` for the test, unmounted when dropped (lazily, so
/// even a server still holding files open cannot keep it mounted).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Writes a file until the file system refuses more (ENOSPC); returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0u8; chunk];
            loop {
                match f.write(&buf) {
                    Ok(n) if n == chunk => {}
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(28) => break,
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

impl Harness {
    async fn commit_failures(&self) -> u64 {
        let text = self.http.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap();
        let line = text.lines().find(|l| l.starts_with("aob_commit_failures_total")).unwrap();
        line.split_whitespace().last().unwrap().parse().unwrap()
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.post(format!("{}{}", self.url, path)).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// The data dir is a small tmpfs; runs wait on a timer, a retry backoff and two
/// approvals (one with a timeout) when a filler takes every free byte. While full,
/// writes answer 507 `storage_full` and change nothing, every due timer fails to
/// commit, and every run stays readable with a gapless log. Once the filler is gone,
/// without a restart, every run completes, the retry ran exactly once more, and new
/// writes succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_loses_nothing_and_every_run_completes_once_space_is_back() {
    let stub = Stub::with_status(&[], Arc::new(|path, n| if path == "/flaky" && n == 0 { 503 } else { 200 })).await;
    let mut srv = Harness::new("fsync", &[stub.allow()]);
    let disk = Tmpfs::mount(&srv.dir.path().join("data"), "16m");
    srv.start(None).await;

    let wait = json!({
        "nodes": [{"id": "pause", "type": "wait", "config": {"duration_ms": 3000}}, {"id": "after", "type": "noop"}],
        "edges": [{"from": "pause", "to": "after"}]
    });
    let retry = json!({
        "nodes": [
            {"id": "flaky", "type": "http", "config": {"url": stub.url("/flaky"), "fail_on_status": true},
             "retry": {"max_attempts": 3, "backoff_ms": 3000, "backoff_multiplier": 1.0}},
            {"id": "after", "type": "noop"}
        ],
        "edges": [{"from": "flaky", "to": "after"}]
    });
    let approval = |timeout: Option<u64>| {
        let mut ask = json!({"id": "ask", "type": "hitl", "config": {"message": "ok?"}});
        if let Some(ms) = timeout {
            ask["config"]["timeout_ms"] = json!(ms);
            ask["config"]["on_timeout"] = json!("reject");
        }
        json!({
            "nodes": [ask, {"id": "yes", "type": "noop"}, {"id": "no", "type": "noop"}],
            "edges": [
                {"from": "ask", "to": "yes", "condition": "$.approved == true"},
                {"from": "ask", "to": "no", "condition": "!output.approved"}
            ]
        })
    };
    let waiting = srv.start_run(&wait).await;
    let retrying = srv.start_run(&retry).await;
    let timing_out = srv.start_run(&approval(Some(3000))).await;
    let deciding = srv.start_run(&approval(None)).await;
    let due = srv.wait_event(&retrying, "node_retrying", "flaky").await["data"]["next_attempt_at_ms"]
        .as_i64()
        .unwrap();
    srv.wait_event(&deciding, "approval_required", "ask").await;
    let approvals = srv.get("/api/v1/approvals?status=pending").await;
    let decide = approvals["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["run_id"] == deciding.as_str())
        .map(|a| format!("/api/v1/approvals/{}/decide", a["approval_id"].as_str().unwrap()))
        .unwrap();
    let runs = [waiting.clone(), retrying.clone(), timing_out.clone(), deciding.clone()];
    let mut logs = BTreeMap::new();
    for id in &runs {
        logs.insert(id.clone(), srv.events(id).await);
    }
    assert!(now_ms() + 1000 < due, "the retry came due before the disk was full; the test proves nothing");

    let filler = disk.fill();
    let failures = srv.commit_failures().await;
    // A new run: refused with the catalog's error, never a 500. (The first writes may
    // still fit in space SQLite had already taken; none can be anything but 201 or 507.)
    let mut refused = None;
    let mut accepted = Vec::new();
    for _ in 0..50 {
        let (status, body) = srv.try_start_run(&wait, None).await.unwrap();
        match status {
            507 => {
                refused = Some(body);
                break;
            }
            201 => accepted.push(body["run_id"].as_str().unwrap().to_string()),
            other => panic!("a write on a full disk answered {other}: {body}"),
        }
    }
    let refused = refused.expect("no write was refused on a full disk");
    assert_eq!(refused["error"]["code"], "storage_full", "{refused}");
    let listed = srv.run_ids().await.len();
    let (status, body) = srv.post(&decide, &json!({"decision": "approve"})).await;
    assert_eq!((status, &body["error"]["code"]), (507, &json!("storage_full")), "{body}");
    assert_eq!(srv.run_ids().await.len(), listed, "a refused start left a run");

    // Every timer comes due while the disk is full: their commits fail, nothing moves.
    let last_due = due.max(now_ms() + 500);
    wait_until("every timer to be due", || now_ms() > last_due + 500).await;
    let until = Instant::now() + DEADLINE;
    while srv.commit_failures().await <= failures {
        assert!(Instant::now() < until, "no commit failed while the disk was full");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &runs {
        let run = srv.get(&format!("/api/v1/runs/{id}")).await;
        assert!(
            matches!(run["status"].as_str(), Some("RUNNING" | "WAITING_FOR_APPROVAL")),
            "{id} moved on a full disk: {run}"
        );
        let events = srv.events(id).await;
        assert_eq!(&events, &logs[id], "{id}: its log changed on a full disk");
    }
    assert_eq!(stub.count("/flaky"), 1, "the retry ran although its commit failed");

    // Space is back; no restart.
    std::fs::remove_file(filler).unwrap();
    let (status, body) = srv.post(&decide, &json!({"decision": "approve"})).await;
    assert_eq!(status, 200, "{body}");
    for id in runs.iter().chain(&accepted) {
        let run = srv.wait_terminal(id).await;
        assert_eq!(run["status"], "COMPLETED", "{id}: {run}");
        assert_gapless(&srv.events(id).await);
    }
    let timed_out = srv.get(&format!("/api/v1/runs/{timing_out}")).await;
    assert_eq!(timed_out["outputs"]["no"]["timed_out"], true, "{timed_out}");
    let decided = srv.get(&format!("/api/v1/runs/{deciding}")).await;
    assert_eq!(decided["outputs"]["yes"]["approved"], true, "{decided}");
    assert_eq!(stub.count("/flaky"), 2, "the retry ran once, after space came back");
    let after = srv.start_run(&wait).await;
    assert_eq!(srv.wait_terminal(&after).await["status"], "COMPLETED");
    assert!(srv.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the server died");
    srv.kill();
    drop(disk);
}

// ---------------------------------------------------------------------------------
// Named failure points: the process aborts at an exact step.

#[cfg(feature = "failpoints")]
mod failpoints {
    use super::*;

    /// Starts one /a → /b → /c run with `failpoints` armed. /a is held until the 201
    /// is in hand, so that the abort cannot race the reply.
    async fn armed_run(failpoints: &str) -> (Stub, Harness, Value, String) {
        let stub = Stub::start(&["/a"]).await;
        let mut srv = Harness::new("process", &[stub.allow()]);
        srv.start(Some(failpoints)).await;
        let wf = chain(&stub, &["/a", "/b", "/c"]);
        let id = srv.start_run(&wf).await;
        stub.open("/a");
        (stub, srv, wf, id)
    }

    async fn expect_abort(srv: &mut Harness) {
        let status = srv.wait_exit().await;
        assert!(!status.success(), "expected an abort, got {status}");
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(6), "expected SIGABRT, got {status}");
        }
    }

    /// The effect ran, its completion never reached the store: after restart the same
    /// attempt runs again with the same key, and completes once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abort_after_effect_reruns_the_attempt_with_the_same_key() {
        let (stub, mut srv, _, id) = armed_run("after_effect").await;
        expect_abort(&mut srv).await;
        assert_eq!(stub.count("/a"), 1);
        assert_eq!(stub.count("/b"), 0);
        srv.start(None).await;
        srv.assert_completed_once(&id, &["a", "b", "c"]).await;
        let ids = [id];
        assert_keys(&stub, "/a", &ids, 2);
        assert_keys(&stub, "/b", &ids, 1);
        assert_keys(&stub, "/c", &ids, 1);
    }

    /// The very first commit (the run's start) never happens: the client got no 201
    /// and, after restart, there is no run at all; the store still works.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abort_before_the_start_commit_leaves_no_run() {
        let stub = Stub::start(&[]).await;
        let mut srv = Harness::new("process", &[stub.allow()]);
        srv.start(Some("before_commit")).await;
        let wf = chain(&stub, &["/a", "/b"]);
        let res = srv.try_start_run(&wf, None).await;
        assert!(res.is_err(), "the start must not be acknowledged: {res:?}");
        expect_abort(&mut srv).await;
        srv.start(None).await;
        assert_eq!(srv.run_ids().await, Vec::<String>::new());
        assert_eq!(stub.count("/a"), 0);
        let id = srv.start_run(&wf).await;
        srv.assert_completed_once(&id, &["a", "b"]).await;
        assert_eq!(srv.run_ids().await, vec![id]);
    }

    /// /a's completion is applied in memory, the commit never happens: after restart
    /// the store still says /a attempt 1 is running, so it runs again with the same key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abort_before_the_completion_commit_reruns_the_attempt() {
        let (stub, mut srv, _, id) = armed_run("before_commit@2").await;
        expect_abort(&mut srv).await;
        srv.start(None).await;
        srv.assert_completed_once(&id, &["a", "b", "c"]).await;
        let ids = [id];
        assert_keys(&stub, "/a", &ids, 2);
        assert_keys(&stub, "/b", &ids, 1);
        assert_keys(&stub, "/c", &ids, 1);
    }

    /// The start is committed but nothing was dispatched and the client got no reply:
    /// after restart recovery dispatches /a, and retrying the POST with the same
    /// `Idempotency-Key` returns that run instead of starting a second one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abort_after_the_start_commit_recovers_the_run() {
        let stub = Stub::start(&[]).await;
        let mut srv = Harness::new("process", &[stub.allow()]);
        srv.start(Some("after_commit")).await;
        let wf = chain(&stub, &["/a", "/b", "/c"]);
        let res = srv.try_start_run(&wf, Some("crash-start-1")).await;
        assert!(res.is_err(), "the process must die before replying: {res:?}");
        expect_abort(&mut srv).await;
        assert_eq!(stub.count("/a"), 0, "nothing may be dispatched before the abort");
        srv.start(None).await;
        let ids = srv.run_ids().await;
        assert_eq!(ids.len(), 1, "{ids:?}");
        let (status, again) = srv.try_start_run(&wf, Some("crash-start-1")).await.unwrap();
        assert_eq!(status, 201, "{again}");
        assert_eq!(again["run_id"].as_str(), Some(ids[0].as_str()), "{again}");
        srv.assert_completed_once(&ids[0], &["a", "b", "c"]).await;
        assert_eq!(srv.run_ids().await, ids);
        assert_keys(&stub, "/a", &ids, 1);
        assert_keys(&stub, "/b", &ids, 1);
        assert_keys(&stub, "/c", &ids, 1);
    }

    /// /a's completion is committed (and /b with it) but /b was never dispatched:
    /// recovery dispatches /b; /a, being durably complete, never runs again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abort_after_the_completion_commit_dispatches_the_next_node() {
        let (stub, mut srv, _, id) = armed_run("after_commit@2").await;
        expect_abort(&mut srv).await;
        assert_eq!(stub.count("/b"), 0);
        srv.start(None).await;
        srv.assert_completed_once(&id, &["a", "b", "c"]).await;
        let ids = [id];
        assert_keys(&stub, "/a", &ids, 1);
        assert_keys(&stub, "/b", &ids, 1);
        assert_keys(&stub, "/c", &ids, 1);
    }

    /// Many runs in flight, the process aborts when the third effect finishes: every
    /// run still completes once, and only attempts whose completion was lost ran twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abort_after_an_effect_among_many_runs() {
        let stub = Stub::start(&["/a"]).await;
        let mut srv = Harness::new("process", &[stub.allow()]);
        srv.start(Some("after_effect@3")).await;
        let wf = chain(&stub, &["/a", "/b"]);
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(srv.start_run(&wf).await);
        }
        wait_until("every /a attempt in flight", || stub.count("/a") == 4).await;
        stub.open("/a");
        expect_abort(&mut srv).await;
        srv.start(None).await;
        for id in &ids {
            srv.assert_completed_once(id, &["a", "b"]).await;
        }
        for id in &ids {
            let a = stub.keys_for("/a", id);
            let distinct: BTreeSet<&String> = a.iter().collect();
            assert!((1..=2).contains(&a.len()) && distinct.len() == 1, "/a for {id}: {a:?}");
            let b = stub.keys_for("/b", id);
            assert!((1..=2).contains(&b.len()) && b.iter().collect::<BTreeSet<_>>().len() == 1, "/b for {id}: {b:?}");
        }
        let per_run: BTreeMap<&String, usize> = ids.iter().map(|id| (id, stub.keys_for("/a", id).len())).collect();
        assert!(per_run.values().any(|&n| n == 2), "some /a effect must have been lost and redone: {per_run:?}");
    }

    /// Polls until the run that is not one of `known` is terminal (then returns it), or
    /// until the process dies (then returns how). Requests that fail because the
    /// process is dying are not errors here.
    async fn poisoned_run_or_exit(srv: &mut Harness, known: &[String]) -> Result<Value, std::process::ExitStatus> {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = srv.child.as_mut().unwrap().try_wait().unwrap() {
                srv.child = None;
                return Err(status);
            }
            let list = srv.http.get(format!("{}/api/v1/runs?limit=100", srv.url)).send().await;
            if let Ok(list) = list
                && let Ok(list) = list.json::<Value>().await
                && let Some(id) = list["runs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["run_id"].as_str())
                    .find(|id| !known.iter().any(|k| k == id))
                && let Ok(r) = srv.http.get(format!("{}/api/v1/runs/{id}", srv.url)).send().await
                && let Ok(run) = r.json::<Value>().await
                && matches!(run["status"].as_str(), Some("COMPLETED" | "FAILED" | "CANCELLED"))
            {
                return Ok(run);
            }
            assert!(Instant::now() < until, "neither an abort nor a finished poisoned run within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An attempt that aborts the process every time it starts (`in_attempt:boom`,
    /// armed in every incarnation) crash-loops the server at most `attempt_crash_limit`
    /// (3) times: then recovery's re-dispatch fails it with `attempt_crashed` instead
    /// of running it, the run fails, and the server stays up. A run that finished
    /// before, one waiting on a timer across the crashes and one started after all
    /// complete.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poisoned_attempt_is_failed_after_the_crash_limit_and_the_server_stays_up() {
        let stub = Stub::start(&[]).await;
        let mut srv = Harness::new("process", &[stub.allow()]);
        let armed = Some("in_attempt:boom");
        srv.start(armed).await;
        let before = srv.start_run(&chain(&stub, &["/a", "/b"])).await;
        srv.assert_completed_once(&before, &["a", "b"]).await;
        let waiting = srv
            .start_run(&json!({
                "nodes": [
                    {"id": "pause", "type": "wait", "config": {"duration_ms": 1500}},
                    {"id": "after", "type": "http", "config": {"url": stub.url("/after")}}
                ],
                "edges": [{"from": "pause", "to": "after"}]
            }))
            .await;
        let poisoned = chain(&stub, &["/boom", "/next"]);
        // The process may die before it answers: the run is found by listing.
        let _ = srv.try_start_run(&poisoned, None).await;
        let known = [before.clone(), waiting.clone()];
        let mut crashes = 0;
        let run = loop {
            let up = match crashes {
                0 => Ok(()),
                _ => srv.try_start(armed).await,
            };
            let status = match up {
                Ok(()) => match poisoned_run_or_exit(&mut srv, &known).await {
                    Ok(run) => break run,
                    Err(status) => status,
                },
                Err(status) => status,
            };
            crashes += 1;
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(status.signal(), Some(6), "crash #{crashes}: expected SIGABRT, got {status}");
            }
            assert!(crashes <= 3, "the poisoned attempt crashed the server {crashes} times (limit 3)");
        };
        assert!(crashes >= 1, "the failure point never fired");
        assert_eq!(run["status"], "FAILED", "{run}");
        assert_eq!(run["error"]["code"], "attempt_crashed", "{run}");
        let id = run["run_id"].as_str().unwrap().to_string();
        let events = srv.events(&id).await;
        assert_gapless(&events);
        let failed = events.iter().find(|e| e["type"] == "node_failed" && e["node_id"] == "boom").unwrap();
        assert_eq!(failed["data"]["error"]["code"], "attempt_crashed", "{failed}");
        assert_eq!(stub.count("/boom"), 0, "the poisoned attempt aborts before its request");
        assert_eq!(stub.count("/next"), 0);

        // Still up, still armed: the runs around it finish, and new ones too.
        srv.assert_completed_once(&waiting, &["pause", "after"]).await;
        let after = srv.start_run(&chain(&stub, &["/c"])).await;
        srv.assert_completed_once(&after, &["c"]).await;
        assert!(srv.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the server died");
    }
}
