//! The SSRF corpus of the seed's acceptance scenario 7, through both places a
//! workflow can make a request: `http` nodes and the `http_request` primitive of
//! `transform` nodes. A trap listener proves no connection was ever made.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed call is a failed test

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use aob_engine::{Outcome, Task, TaskId};
use aob_exec::Executors;
use aob_model::NodeKind;
use aob_ssrf::{Guard, Policy, Resolver};

/// A resolver for made-up names: `private.test` answers loopback, `rebind.test`
/// answers an allowed address first and loopback afterwards, anything else fails.
struct TestResolver {
    allowed: IpAddr,
    calls: AtomicUsize,
}

impl Resolver for TestResolver {
    fn resolve(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + '_>> {
        let host = host.to_string();
        Box::pin(async move {
            match host.as_str() {
                "private.test" => Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]),
                "rebind.test" => {
                    let n = self.calls.fetch_add(1, Ordering::SeqCst);
                    Ok(vec![if n == 0 { self.allowed } else { IpAddr::V4(Ipv4Addr::LOCALHOST) }])
                }
                _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
            }
        })
    }
}

/// Counts every connection to a loopback port, from the moment it is bound.
async fn trap() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, hits)
}

/// A loopback server that answers 302 to `location`.
async fn redirector(location: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .or(tokio::net::TcpListener::bind("127.0.0.1:0").await)
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let loc = location.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!("HTTP/1.1 302 Found\r\nLocation: {loc}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

fn task(kind: NodeKind, config: Value) -> Task {
    Task {
        run_id: "r".into(),
        id: TaskId {
            node: 0,
            activation: 0,
            item: None,
            attempt: 1,
        },
        node_id: "n".into(),
        kind,
        config,
        input: Value::Null,
        timeout_ms: Some(5_000),
        owner: String::new(),
    }
}

#[tokio::test]
async fn every_corpus_url_is_blocked_for_nodes_and_primitives_without_connecting() {
    let (port, hits) = trap().await;
    let redirect_port = redirector(format!("http://127.0.0.1:{port}/")).await;
    let redirect_ip = if tokio::net::TcpStream::connect(("127.0.0.2", redirect_port)).await.is_ok() {
        "127.0.0.2"
    } else {
        "127.0.0.1"
    };
    let mut policy = Policy::default();
    // Only the redirector is reachable: it stands in for a public server.
    policy.allow.push(format!("{redirect_ip}:{redirect_port}").parse().unwrap());
    let resolver = Arc::new(TestResolver {
        allowed: redirect_ip.parse().unwrap(),
        calls: AtomicUsize::new(0),
    });
    let exec = Executors::new(Guard::with_resolver(policy, resolver));

    let corpus = [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://10.0.0.5:{port}/"),
        "file:///etc/passwd".to_string(),
        "gopher://x/".to_string(),
        format!("http://2130706433:{port}/"),
        format!("http://0x7f000001:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://private.test:{port}/"),
        format!("http://{redirect_ip}:{redirect_port}/to-loopback"),
        format!("http://rebind.test:{redirect_port}/"),
        format!("http://rebind.test:{port}/"),
        format!("http://nx.test:{port}/"),
    ];
    for url in &corpus {
        let node = task(NodeKind::Http, json!({"url": url}));
        match exec.execute(&node).await {
            Outcome::Err(e) => assert_eq!(e.code, "security_error", "{url}: {e:?}"),
            Outcome::Ok(v) => {
                // The rebinding name's first answer is the allowed redirector, which
                // answers 302 to the trap: the hop must be blocked.
                panic!("{url} was fetched: {v}")
            }
        }
        let primitive = task(NodeKind::Transform, json!({"pipeline": [{"step": "http_request", "url": url}]}));
        match exec.execute(&primitive).await {
            Outcome::Err(e) => assert_eq!(e.code, "security_error", "{url} (primitive): {e:?}"),
            Outcome::Ok(v) => panic!("{url} was fetched by the primitive: {v}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a blocked request reached the trap");
}
