//! Shared test support: a real server on 127.0.0.1:0 over a temp data dir, and a
//! loopback stub HTTP server that records what it receives.
#![allow(dead_code)]

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
    let mut cfg = Config { addr: "127.0.0.1:0".into(), data_dir: dir.path().to_path_buf(), durability: "process".into(), ..Default::default() };
    cfg.ssrf.allow = allow.to_vec();
    let server = serve::start(&cfg).await.unwrap();
    let url = format!("http://{}", server.addr);
    TestServer { url, http: reqwest::Client::builder().no_proxy().build().unwrap(), server: Some(server), dir }
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
        tokio::time::timeout(Duration::from_secs(60), read).await.expect("run did not finish within 60 s");
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

impl Stub {
    pub async fn start(respond: Responder) -> Stub {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let h = hits.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let hits = h.clone();
            let respond = respond.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                let hit = Hit {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().map(str::to_string),
                    headers: parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect(),
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                };
                let n = {
                    let mut g = hits.lock().unwrap();
                    let n = g.iter().filter(|x| x.path == hit.path).count();
                    g.push(hit.clone());
                    n
                };
                let (status, body) = respond(&hit, n);
                (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(body))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Stub { addr, hits }
    }

    /// The allow-list entry for this stub, and nothing else on loopback.
    pub fn allow(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
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
