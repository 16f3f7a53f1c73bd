//! Shared test support: a real server on 127.0.0.1:0 over a temp data dir, and a
//! loopback stub HTTP server that records what it receives.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};

use aob_cli::config::Config;
use aob_cli::serve::{self, Server};

pub struct TestServer {
    pub url: String,
    pub http: reqwest::Client,
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
}

/// Starts a server whose SSRF guard allows exactly `allow` (e.g. a stub's `127.0.0.1:port`).
pub async fn start_server(allow: &[String]) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    start_server_in(dir, allow).await
}

pub async fn start_server_in(dir: tempfile::TempDir, allow: &[String]) -> TestServer {
    let allow = allow.to_vec();
    start_server_with(dir, move |cfg| cfg.ssrf.allow = allow).await
}

/// Starts a server on `dir` with the test defaults, then `configure` applied. Tests poll
/// fast, so the per-route rate limit is off unless `configure` turns it on; the run
/// tiers keep their defaults.
pub async fn start_server_with(dir: tempfile::TempDir, configure: impl FnOnce(&mut Config)) -> TestServer {
    let mut cfg = Config {
        addr: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        durability: "process".into(),
        // jq runs in a sandbox process, as under `aob serve`.
        jq_sandbox: Some(env!("CARGO_BIN_EXE_aob").into()),
        ..Default::default()
    };
    cfg.rate_limit.per_route_per_minute = 0;
    configure(&mut cfg);
    let server = serve::start(&cfg).await.unwrap();
    let url = format!("http://{}", server.addr);
    TestServer {
        url,
        http: admin_client(dir.path()),
        server: Some(server),
        dir,
    }
}

/// The bootstrap admin key `aob serve` wrote into the data dir.
pub fn admin_key(data_dir: &std::path::Path) -> String {
    aob_cli::credentials::read_key_file(&serve::admin_key_path(data_dir)).expect("admin.key written on first start")
}

/// A client whose every request carries `key`, as the CLI sends it.
pub fn client_with_key(key: &str) -> reqwest::Client {
    client(Some(key), None)
}

/// A client sending `key` (if any) on every request, with a per-request `timeout` (if any):
/// tests against a process that may hang need one to fail instead of waiting.
pub fn client(key: Option<&str>, timeout: Option<Duration>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(k) = key {
        headers.insert("x-api-key", reqwest::header::HeaderValue::from_str(k).unwrap());
    }
    let mut b = reqwest::Client::builder().no_proxy().default_headers(headers);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().unwrap()
}

/// Every request of a test carries the bootstrap admin key, as the local CLI does.
pub fn admin_client(data_dir: &std::path::Path) -> reqwest::Client {
    client_with_key(&admin_key(data_dir))
}

impl TestServer {
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}{}", self.url, path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.post(format!("{}{}", self.url, path)).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Starts an inline workflow; panics unless 201.
    pub async fn start_run(&self, workflow: &Value, inputs: Value) -> String {
        let (s, v) = self.post("/api/v1/runs", &json!({"workflow": workflow, "inputs": inputs})).await;
        assert_eq!(s, 201, "start failed: {v}");
        v["run_id"].as_str().unwrap().to_string()
    }

    /// Reads the run's SSE stream to its terminal event; returns every event.
    pub async fn events_until_end(&self, run_id: &str, last_event_id: Option<u64>) -> Vec<Value> {
        let mut req = self.http.get(format!("{}/api/v1/runs/{run_id}/events", self.url));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream().eventsource();
        let read = async {
            while let Some(Ok(ev)) = stream.next().await {
                let v: Value = serde_json::from_str(&ev.data).unwrap();
                assert_eq!(ev.id, v["seq"].to_string());
                assert_eq!(ev.event, v["type"].as_str().unwrap());
                out.push(v);
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("run did not finish within 60 s");
        out
    }

    /// Waits for the run to end and returns `GET /api/v1/runs/:id`.
    pub async fn wait_run(&self, run_id: &str) -> Value {
        self.events_until_end(run_id, None).await;
        self.get(&format!("/api/v1/runs/{run_id}")).await.1
    }

    pub async fn details(&self, run_id: &str) -> Value {
        self.get(&format!("/api/v1/runs/{run_id}/details")).await.1
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop.send(());
            let _ = s.serve.await;
            s.runtime.shutdown().await;
        }
    }
}

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Hit {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub type Responder = Arc<dyn Fn(&Hit, usize) -> (u16, Value) + Send + Sync>;

/// A loopback HTTP server answering every request with `respond(hit, n)` where `n`
/// counts earlier hits on the same path.
pub struct Stub {
    pub addr: std::net::SocketAddr,
    pub hits: Arc<Mutex<Vec<Hit>>>,
}

/// Serves `app` on a fresh loopback port in the background.
async fn serve_loopback(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// The SSRF allow-list entry for one loopback server, and nothing else on loopback.
fn allow_entry(addr: std::net::SocketAddr) -> String {
    format!("127.0.0.1:{}", addr.port())
}

/// Reads a stub's request into a [`Hit`], records it, and returns how many earlier
/// hits the same path had.
async fn record(req: axum::extract::Request, hits: &Mutex<Vec<Hit>>) -> (Hit, usize) {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let hit = Hit {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    };
    let mut g = hits.lock().unwrap();
    let n = g.iter().filter(|x| x.path == hit.path).count();
    g.push(hit.clone());
    (hit, n)
}

impl Stub {
    pub async fn start(respond: Responder) -> Stub {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let h = hits.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let hits = h.clone();
            let respond = respond.clone();
            async move {
                let (hit, n) = record(req, &hits).await;
                let (status, body) = respond(&hit, n);
                (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(body))
            }
        });
        let addr = serve_loopback(app).await;
        Stub { addr, hits }
    }

    /// The allow-list entry for this stub, and nothing else on loopback.
    pub fn allow(&self) -> String {
        allow_entry(self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits.lock().unwrap().iter().filter(|h| h.path == path).cloned().collect()
    }
}

/// Asserts seqs are 1..=n without gaps or duplicates.
pub fn assert_gapless(events: &[Value]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1), "gap or duplicate at index {i}: {events:#?}");
    }
}

// ---------------------------------------------------------------------------
// Helpers added for the black-box API tests (tests/api_*.rs).
// ---------------------------------------------------------------------------

/// One SSE frame as received: `id:`, `event:` and the `data:` parsed as JSON.
#[derive(Debug, Clone)]
pub struct Frame {
    pub id: String,
    pub event: String,
    pub data: Value,
}

impl TestServer {
    /// Sends `body` as is with the given content type (`None`: no Content-Type header).
    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{}", self.url, path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST with extra headers.
    pub async fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{}", self.url, path)).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Reads an SSE endpoint (`path` may carry a query) until the server closes the
    /// stream, or until `stop` says enough; panics after `secs` seconds.
    pub async fn sse_frames_until(&self, path: &str, headers: &[(&str, &str)], secs: u64, mut stop: impl FnMut(&[Frame]) -> bool) -> Vec<Frame> {
        let mut req = self.http.get(format!("{}{}", self.url, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "SSE {path} answered {}", resp.status());
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type of {path} is {ct}");
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream().eventsource();
        let read = async {
            while let Some(ev) = stream.next().await {
                let ev = ev.expect("malformed SSE stream");
                let data: Value = serde_json::from_str(&ev.data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {}", ev.data));
                out.push(Frame {
                    id: ev.id,
                    event: ev.event,
                    data,
                });
                if stop(&out) {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(secs), read)
            .await
            .unwrap_or_else(|_| panic!("SSE {path} did not end within {secs} s"));
        out
    }

    /// Reads an SSE endpoint until the server closes it.
    pub async fn sse_frames(&self, path: &str, headers: &[(&str, &str)]) -> Vec<Frame> {
        self.sse_frames_until(path, headers, 60, |_| false).await
    }

    /// Polls `GET path` until `ok` holds for the body; panics after `secs` seconds.
    pub async fn poll_until(&self, path: &str, secs: u64, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, v) = self.get(path).await;
            if ok(&v) {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "condition on {path} not met within {secs} s; last: {v}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stores `workflow` under `tag`; panics unless 201.
    pub async fn create_workflow(&self, tag: &str, workflow: &Value) -> Value {
        let (s, v) = self.post("/api/v1/workflows", &json!({"tag_name": tag, "workflow": workflow})).await;
        assert_eq!(s, 201, "create workflow {tag} failed: {v}");
        v
    }

    /// Every stored event of a run, through the paged JSON listing.
    pub async fn event_list(&self, run_id: &str) -> Vec<Value> {
        let (s, v) = self.get(&format!("/api/v1/runs/{run_id}/events/list?limit=1000")).await;
        assert_eq!(s, 200, "{v}");
        v["events"].as_array().cloned().unwrap_or_default()
    }
}

/// Polls `check` until it holds; panics after `secs` seconds with `what`.
pub async fn wait_for(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asserts the error envelope `{"error": {"code", "message", "details"}}` with `code`.
pub fn assert_envelope(body: &Value, code: &str) {
    let e = &body["error"];
    assert!(e.is_object(), "no error envelope in {body}");
    assert_eq!(e["code"], code, "unexpected error code in {body}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "error without a message: {body}");
    assert!(e.as_object().is_some_and(|o| o.contains_key("details")), "error without details: {body}");
}

pub type AsyncResponder = Arc<dyn Fn(Hit, usize) -> futures::future::BoxFuture<'static, (u16, Value)> + Send + Sync>;

/// Like [`Stub`], but the responder is async (to hold requests open, count overlap,
/// or wait on a gate). Also counts requests in flight and the most seen at once.
pub struct AsyncStub {
    pub addr: std::net::SocketAddr,
    pub hits: Arc<Mutex<Vec<Hit>>>,
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    pub max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl AsyncStub {
    pub async fn start(respond: AsyncResponder) -> AsyncStub {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let (h, inf, mx) = (hits.clone(), in_flight.clone(), max_in_flight.clone());
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (hits, respond, inf, mx) = (h.clone(), respond.clone(), inf.clone(), mx.clone());
            async move {
                let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
                mx.fetch_max(now, Ordering::SeqCst);
                let (hit, n) = record(req, &hits).await;
                let (status, body) = respond(hit, n).await;
                inf.fetch_sub(1, Ordering::SeqCst);
                (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(body))
            }
        });
        let addr = serve_loopback(app).await;
        AsyncStub {
            addr,
            hits,
            in_flight,
            max_in_flight,
        }
    }

    pub fn allow(&self) -> String {
        allow_entry(self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits.lock().unwrap().iter().filter(|h| h.path == path).cloned().collect()
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A loopback server that answers every request with `302 Location: <location>`.
pub struct Redirector {
    pub addr: std::net::SocketAddr,
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl Redirector {
    pub async fn start(location: String) -> Redirector {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        let app = axum::Router::new().fallback(move || {
            let (h, location) = (h.clone(), location.clone());
            async move {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (axum::http::StatusCode::FOUND, [(axum::http::header::LOCATION, location)], "")
            }
        });
        let addr = serve_loopback(app).await;
        Redirector { addr, hits }
    }

    pub fn allow(&self) -> String {
        allow_entry(self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A listener that must never be reached: it counts every accepted connection from
/// the moment it is bound. Not allow-listed by anyone.
pub struct Trap {
    pub addr: std::net::SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    listener: Arc<tokio::net::TcpListener>,
}

impl Trap {
    /// Binds `ip:0`; `None` when the address family is unavailable (e.g. no IPv6).
    pub async fn bind(ip: &str) -> Option<Trap> {
        let listener = Arc::new(tokio::net::TcpListener::bind(format!("{ip}:0")).await.ok()?);
        let addr = listener.local_addr().ok()?;
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (l, a) = (listener.clone(), accepted.clone());
        tokio::spawn(async move {
            while l.accept().await.is_ok() {
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        Some(Trap { addr, accepted, listener })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Asserts nothing connected: no connection was counted, and none is waiting to
    /// be accepted within a short accept timeout.
    pub async fn assert_untouched(&self) {
        let late = tokio::time::timeout(Duration::from_millis(200), self.listener.accept()).await;
        assert!(late.is_err(), "a connection reached the trap at {} after the run ended", self.addr);
        assert_eq!(
            self.accepted.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the trap at {} accepted a connection",
            self.addr
        );
    }
}

/// The endpoints the workflows in `examples/` call. Paths may carry a prefix of the
/// caller's (`/m1/items`, `/m42/items`), so callers sharing one stub keep separate call counts.
pub async fn example_stub() -> Stub {
    Stub::start(Arc::new(example_answer)).await
}

/// What the example endpoints answer to `hit`, the `n`th hit on its path.
pub fn example_answer(hit: &Hit, n: usize) -> (u16, Value) {
    let path = match hit.path.strip_prefix("/m").and_then(|rest| rest.split_once('/')) {
        Some((digits, rest)) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => &hit.path[hit.path.len() - rest.len() - 1..],
        _ => &hit.path,
    };
    match path {
        "/items" => (200, json!({"items": [1, 2, 3]})),
        "/store" => (201, json!({"received": serde_json::from_str::<Value>(&hit.body).unwrap_or(Value::Null)})),
        "/score" => (200, json!({"score": 85})),
        "/flaky" => (200, json!({"status": if n < 2 { "error" } else { "success" }})),
        p if p.starts_with("/item/") => (200, json!({"name": format!("item-{}", &p[6..])})),
        _ => (404, json!({"error": "no route"})),
    }
}

/// Every workflow in `examples/` that the example stub serves.
pub const EXAMPLES: [&str; 7] = [
    "http-chain.yaml",
    "branch-join.yaml",
    "loop-retry.yaml",
    "map-fanout.yaml",
    "transform-pipeline.yaml",
    "subworkflow.yaml",
    "demo.yaml",
];

/// The inputs an example runs with, calling the stub at `base`.
pub fn example_inputs(name: &str, base: &str) -> Value {
    let mut v = match name {
        "map-fanout.yaml" => json!({"ids": [5, 3, 9, 1]}),
        "subworkflow.yaml" => json!({"words": ["x", "y"]}),
        _ => json!({}),
    };
    v["base_url"] = json!(base);
    v
}

/// The PostgreSQL the tests use (`AOB_TEST_DATABASE_URL`).
pub fn database_url() -> String {
    std::env::var("AOB_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The Redis the tests use (`AOB_TEST_REDIS_URL`).
pub fn redis_url() -> String {
    std::env::var("AOB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A workflow from `examples/`.
pub fn example(name: &str) -> Value {
    aob_cli::commands::read_doc(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name)).unwrap()
}
