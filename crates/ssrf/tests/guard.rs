//! End-to-end tests against real loopback listeners. Every "blocked" test
//! proves no connection was made: a trap listener that nobody accepts on would
//! still have a completed connection queued by the kernel, so a short
//! `accept()` after the request returned must time out.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aob_ssrf::{FetchError, Guard, GuardError, Policy, Request, Resolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---------------------------------------------------------------- helpers

/// A listener nobody serves; `assert_untouched` proves no client connected.
struct Trap {
    listener: TcpListener,
    port: u16,
}

impl Trap {
    async fn bind(ip: IpAddr) -> Self {
        Self::try_bind(SocketAddr::new(ip, 0)).await.unwrap()
    }

    async fn try_bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let port = listener.local_addr()?.port();
        Ok(Self { listener, port })
    }

    async fn assert_untouched(self) {
        let accepted = tokio::time::timeout(Duration::from_millis(300), self.listener.accept()).await;
        assert!(accepted.is_err(), "a connection reached the trap listener");
    }
}

enum Reply {
    /// Write these bytes, then close.
    Full(Vec<u8>),
    /// Write these bytes, then hold the connection open without finishing.
    Stall(Vec<u8>),
}

/// A raw HTTP/1.1 server: one request per connection (every reply says
/// `Connection: close`, so the client never pools and always reconnects).
struct Server {
    port: u16,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start(handler: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_on(TcpListener::bind((LO, 0)).await.unwrap(), handler)
    }

    fn start_on(listener: TcpListener, handler: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Self {
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let (acc, reqs) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let (handler, reqs) = (handler.clone(), reqs.clone());
                tokio::spawn(async move { serve_one(stream, &*handler, &reqs).await });
            }
        });
        Self { port, accepted, requests }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn allow(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

async fn serve_one(mut stream: TcpStream, handler: &(dyn Fn(&str) -> Reply + Send + Sync), requests: &Mutex<Vec<String>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let content_length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + content_length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let request = String::from_utf8_lossy(&buf).to_string();
    requests.lock().unwrap().push(request.clone());
    match handler(&request) {
        Reply::Full(bytes) => {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
        Reply::Stall(bytes) => {
            let _ = stream.write_all(&bytes).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }
}

fn path_of(request: &str) -> &str {
    request.split_whitespace().nth(1).unwrap_or("/")
}

fn http(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn redirect(location: &str) -> Reply {
    Reply::Full(http("302 Found", &[("Location", location)], b""))
}

/// Resolves names from a fixed table; everything else is NXDOMAIN.
#[derive(Default)]
struct MapResolver {
    answers: HashMap<String, Vec<IpAddr>>,
    calls: AtomicUsize,
}

impl MapResolver {
    fn with(entries: &[(&str, &[IpAddr])]) -> Arc<Self> {
        Arc::new(Self {
            answers: entries.iter().map(|(h, ips)| (h.to_string(), ips.to_vec())).collect(),
            calls: AtomicUsize::new(0),
        })
    }
}

impl Resolver for MapResolver {
    fn resolve(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + '_>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = self
            .answers
            .get(host)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "NXDOMAIN"));
        Box::pin(async move { answer })
    }
}

/// Answers successive lookups from a script (a rebinding DNS server).
struct SeqResolver {
    script: Mutex<VecDeque<Result<Vec<IpAddr>, String>>>,
    calls: AtomicUsize,
}

impl SeqResolver {
    fn new(script: Vec<Result<Vec<IpAddr>, String>>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into()),
            calls: AtomicUsize::new(0),
        })
    }
}

impl Resolver for SeqResolver {
    fn resolve(&self, _host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + '_>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let next = self.script.lock().unwrap().pop_front().unwrap_or_else(|| Err("script exhausted".into()));
        Box::pin(async move { next.map_err(io::Error::other) })
    }
}

fn policy(allow: &[String]) -> Policy {
    Policy {
        allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
        ..Policy::default()
    }
}

fn guard(allow: &[String]) -> Guard {
    Guard::new(policy(allow))
}

async fn get(g: &Guard, url: &str) -> Result<aob_ssrf::Response, FetchError> {
    g.send(Request::get(url)).await
}

#[track_caller]
fn assert_blocked(res: Result<aob_ssrf::Response, FetchError>) -> GuardError {
    match res {
        Err(e @ FetchError::Security(_)) => {
            assert!(e.is_security());
            assert_eq!(e.code(), "ssrf_blocked");
            match e {
                FetchError::Security(g) => g,
                _ => unreachable!(),
            }
        }
        other => panic!("expected a security error, got {other:?}"),
    }
}

#[track_caller]
fn assert_blocked_addr(res: Result<aob_ssrf::Response, FetchError>, want: IpAddr) {
    match assert_blocked(res) {
        GuardError::Blocked { addr, .. } => assert_eq!(addr, want),
        other => panic!("expected Blocked({want}), got {other:?}"),
    }
}

// ------------------------------------------------------ blocked, no connect

#[tokio::test]
async fn literal_loopback_is_blocked_without_connecting() {
    let trap = Trap::bind(LO).await;
    let g = guard(&[]);
    assert_blocked_addr(get(&g, &format!("http://127.0.0.1:{}/", trap.port)).await, LO);
    assert_blocked_addr(get(&g, &format!("https://127.0.0.1:{}/", trap.port)).await, LO);
    trap.assert_untouched().await;
}

#[tokio::test]
async fn localhost_name_is_blocked_without_connecting() {
    let trap = Trap::bind(LO).await;
    let g = guard(&[]);
    let err = assert_blocked(get(&g, &format!("http://localhost:{}/", trap.port)).await);
    // With a normal /etc/hosts this is a loopback answer; without one the
    // lookup fails, which must also refuse (fail closed).
    assert!(
        matches!(&err, GuardError::Blocked { host, addr, .. } if host == "localhost" && addr.is_loopback()) || matches!(err, GuardError::Dns { .. }),
        "{err:?}"
    );
    trap.assert_untouched().await;
}

#[tokio::test]
async fn ipv6_loopback_is_blocked_without_connecting() {
    let v6 = IpAddr::from(std::net::Ipv6Addr::LOCALHOST);
    let g = guard(&[]);
    match Trap::try_bind(SocketAddr::new(v6, 0)).await {
        Ok(trap) => {
            assert_blocked_addr(get(&g, &format!("http://[::1]:{}/", trap.port)).await, v6);
            trap.assert_untouched().await;
        }
        // No IPv6 loopback here: the refusal itself is still checked.
        Err(_) => assert_blocked_addr(get(&g, "http://[::1]:8080/").await, v6),
    }
    // Mapped and NAT64 spellings of 127.0.0.1 reach the IPv4 listener.
    let trap = Trap::bind(LO).await;
    for host in ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[64:ff9b::7f00:1]"] {
        assert_blocked(get(&g, &format!("http://{host}:{}/", trap.port)).await);
    }
    trap.assert_untouched().await;
}

#[tokio::test]
async fn numeric_ip_tricks_are_blocked_without_connecting() {
    let trap = Trap::bind(LO).await;
    let g = guard(&[]);
    for host in ["2130706433", "0x7f000001", "0x7f.1", "127.1", "017700000001", "0177.0.0.1", "127.0.0.1."] {
        let url = format!("http://{host}:{}/", trap.port);
        assert_blocked_addr(get(&g, &url).await, LO);
    }
    trap.assert_untouched().await;
}

#[tokio::test]
async fn metadata_and_private_literals_are_refused_before_connecting() {
    let g = guard(&[]);
    let started = Instant::now();
    match assert_blocked(get(&g, "http://169.254.169.254/latest/meta-data/").await) {
        GuardError::Blocked { reason, .. } => assert!(reason.contains("metadata"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_blocked(get(&g, "http://10.0.0.5/").await);
    assert_blocked(get(&g, "http://[fd00:ec2::254]/").await);
    assert_blocked(get(&g, "http://0xa9fea9fe/latest/meta-data/").await);
    // Nothing to time out on: the refusal is synchronous.
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn non_http_schemes_are_refused() {
    let g = guard(&[]);
    for url in ["file:///etc/passwd", "gopher://x", "ftp://127.0.0.1/", "dict://x:11211/"] {
        assert!(matches!(assert_blocked(get(&g, url).await), GuardError::Scheme(_)), "{url}");
    }
}

#[tokio::test]
async fn name_with_private_answer_is_blocked_without_connecting() {
    let trap = Trap::bind(LO).await;
    let dns = MapResolver::with(&[
        ("internal.test", &[LO]),
        // One bad answer among good ones poisons the whole lookup.
        ("mixed.test", &[IpAddr::from([8, 8, 8, 8]), LO]),
    ]);
    let g = Guard::with_resolver(policy(&[]), dns.clone());
    match assert_blocked(get(&g, &format!("http://internal.test:{}/", trap.port)).await) {
        GuardError::Blocked { host, addr, .. } => {
            assert_eq!(host, "internal.test");
            assert_eq!(addr, LO);
        }
        other => panic!("{other:?}"),
    }
    assert_blocked_addr(get(&g, &format!("http://mixed.test:{}/", trap.port)).await, LO);
    assert_eq!(dns.calls.load(Ordering::SeqCst), 2);
    trap.assert_untouched().await;
}

#[tokio::test]
async fn unresolvable_names_fail_closed() {
    let trap = Trap::bind(LO).await;
    let dns = SeqResolver::new(vec![Err("SERVFAIL".into()), Ok(vec![])]);
    let g = Guard::with_resolver(policy(&[]), dns.clone());
    let url = format!("http://flaky.test:{}/", trap.port);
    match assert_blocked(get(&g, &url).await) {
        GuardError::Dns { host, message } => {
            assert_eq!(host, "flaky.test");
            assert!(message.contains("SERVFAIL"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(assert_blocked(get(&g, &url).await), GuardError::Dns { .. }));
    trap.assert_untouched().await;

    // And through the real system resolver.
    let g = guard(&[]);
    assert!(matches!(
        assert_blocked(get(&g, "http://does-not-exist.invalid/").await),
        GuardError::Dns { .. }
    ));
}

#[tokio::test]
async fn port_specific_allow_rule_only_opens_that_port() {
    let server = Server::start(|_| Reply::Full(http("200 OK", &[], b"ok"))).await;
    let trap = Trap::bind(LO).await;
    let dns = MapResolver::with(&[("svc.test", &[LO])]);
    let g = Guard::with_resolver(policy(&[server.allow()]), dns);

    // Literal and name both reach the allowed port…
    assert_eq!(get(&g, &server.url("/")).await.unwrap().body, "ok");
    let by_name = format!("http://svc.test:{}/", server.port);
    assert_eq!(get(&g, &by_name).await.unwrap().body, "ok");
    assert_eq!(server.accepted(), 2);

    // …but not any other port on the same address.
    assert_blocked_addr(get(&g, &format!("http://127.0.0.1:{}/", trap.port)).await, LO);
    assert_blocked_addr(get(&g, &format!("http://svc.test:{}/", trap.port)).await, LO);
    trap.assert_untouched().await;
}

// -------------------------------------------------------------- rebinding

#[tokio::test]
async fn rebinding_answers_are_each_validated_and_only_validated_addresses_are_used() {
    // "Public" stand-in: 127.0.0.1 on one allow-listed port. The rebinding
    // target is 127.0.0.2 on the same port number, which is not allowed.
    let listener = TcpListener::bind((LO, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = Server::start_on(listener, |_| Reply::Full(http("200 OK", &[], b"first")));
    let rebind_ip = IpAddr::from([127, 0, 0, 2]);
    // Best effort: if 127.0.0.2 can't be bound here, the refusal is still checked.
    let trap = Trap::try_bind(SocketAddr::new(rebind_ip, port)).await.ok();

    let dns = SeqResolver::new(vec![Ok(vec![LO]), Ok(vec![rebind_ip])]);
    let g = Guard::with_resolver(policy(&[format!("127.0.0.1:{port}")]), dns.clone());
    let url = format!("http://rebind.test:{port}/");

    let first = get(&g, &url).await.unwrap();
    assert_eq!(first.body, "first");
    // reqwest connected to the validated first answer, exactly once.
    assert_eq!(server.accepted(), 1);
    assert_eq!(dns.calls.load(Ordering::SeqCst), 1);

    // The server closed the connection, so the next request must look the
    // name up again; the new (private) answer is validated too.
    assert_blocked_addr(get(&g, &url).await, rebind_ip);
    assert_eq!(dns.calls.load(Ordering::SeqCst), 2);
    assert_eq!(server.accepted(), 1);
    if let Some(trap) = trap {
        trap.assert_untouched().await;
    }
}

#[tokio::test]
async fn rebinding_within_a_redirect_chain_is_caught() {
    let listener = TcpListener::bind((LO, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = Server::start_on(listener, move |_| redirect(&format!("http://rebind.test:{port}/again")));
    let metadata = IpAddr::from([169, 254, 169, 254]);
    let dns = SeqResolver::new(vec![Ok(vec![LO]), Ok(vec![metadata])]);
    let g = Guard::with_resolver(policy(&[format!("127.0.0.1:{port}")]), dns.clone());
    assert_blocked_addr(get(&g, &format!("http://rebind.test:{port}/")).await, metadata);
    assert_eq!(server.accepted(), 1);
    assert_eq!(dns.calls.load(Ordering::SeqCst), 2);
}

// -------------------------------------------------------------- redirects

async fn redirect_server(trap_port: u16) -> Server {
    Server::start(move |req| match path_of(req) {
        "/to-literal" => redirect(&format!("http://127.0.0.1:{trap_port}/")),
        "/to-decimal" => redirect(&format!("http://2130706433:{trap_port}/")),
        "/to-hex" => redirect(&format!("http://0x7f000001:{trap_port}/")),
        "/to-name" => redirect(&format!("http://internal.test:{trap_port}/")),
        "/to-v6" => redirect(&format!("http://[::ffff:127.0.0.1]:{trap_port}/")),
        "/to-metadata" => redirect("http://169.254.169.254/latest/meta-data/"),
        "/to-file" => redirect("file:///etc/passwd"),
        "/to-gopher" => redirect("gopher://x/"),
        "/loop" => redirect("/loop"),
        "/hop" => redirect("/final"),
        "/final" => Reply::Full(http("200 OK", &[], b"done")),
        _ => Reply::Full(http("404 Not Found", &[], b"")),
    })
    .await
}

#[tokio::test]
async fn redirects_to_internal_targets_are_blocked_without_connecting() {
    let trap = Trap::bind(LO).await;
    let server = redirect_server(trap.port).await;
    let dns = MapResolver::with(&[("internal.test", &[LO])]);
    let g = Guard::with_resolver(policy(&[server.allow()]), dns);

    for path in ["/to-literal", "/to-decimal", "/to-hex", "/to-name"] {
        assert_blocked_addr(get(&g, &server.url(path)).await, LO);
    }
    assert_blocked_addr(get(&g, &server.url("/to-v6")).await, "::ffff:127.0.0.1".parse().unwrap());
    assert_blocked_addr(get(&g, &server.url("/to-metadata")).await, IpAddr::from([169, 254, 169, 254]));
    assert!(matches!(assert_blocked(get(&g, &server.url("/to-gopher")).await), GuardError::Scheme(_)));
    // `file:///…` is not even a valid HTTP URI, so reqwest's redirect layer
    // can't follow it and hands back the 3xx untouched; either outcome is safe.
    match get(&g, &server.url("/to-file")).await {
        Ok(resp) => assert_eq!(resp.status, 302),
        Err(e) => assert!(matches!(e, FetchError::Security(GuardError::Scheme(_))), "{e:?}"),
    }
    trap.assert_untouched().await;
}

#[tokio::test]
async fn redirect_limits_and_opt_out() {
    let trap = Trap::bind(LO).await;
    let server = redirect_server(trap.port).await;
    let g = guard(&[server.allow()]);

    // Allowed hops are followed and the final URL is reported.
    let resp = get(&g, &server.url("/hop")).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "done");
    assert_eq!(resp.url, server.url("/final"));

    // A loop stops after max_redirects hops.
    let before = server.accepted();
    assert_eq!(assert_blocked(get(&g, &server.url("/loop")).await), GuardError::TooManyRedirects { limit: 5 });
    assert_eq!(server.accepted() - before, 6, "initial request + 5 hops");

    // Opting out returns the 3xx itself, even one pointing inside.
    let mut req = Request::get(server.url("/to-literal"));
    req.follow_redirects = false;
    let resp = g.send(req).await.unwrap();
    assert_eq!(resp.status, 302);
    assert!(resp.headers.iter().any(|(k, v)| k == "location" && v.contains(&trap.port.to_string())));
    trap.assert_untouched().await;

    // max_redirects = 0 refuses the first hop.
    let g0 = Guard::new(Policy {
        max_redirects: 0,
        ..policy(&[server.allow()])
    });
    assert_eq!(assert_blocked(get(&g0, &server.url("/hop")).await), GuardError::TooManyRedirects { limit: 0 });
}

// ----------------------------------------------------------- positive path

#[tokio::test]
async fn allow_listed_server_returns_json_and_receives_the_request() {
    let server = Server::start(|_| Reply::Full(http("200 OK", &[("Content-Type", "application/json")], br#"{"ok":true,"items":[1,2,3]}"#))).await;
    let g = guard(&[server.allow()]);
    let mut req = Request::new(http::Method::POST, server.url("/api?q=1"));
    req.headers.push(("X-Test".into(), "yes".into()));
    req.headers.push(("Content-Type".into(), "application/json".into()));
    req.body = Some(bytes::Bytes::from_static(br#"{"in":1}"#));
    let resp = g.send(req).await.unwrap();

    assert_eq!(resp.status, 200);
    assert_eq!(resp.url, server.url("/api?q=1"));
    assert!(resp.headers.iter().any(|(k, v)| k == "content-type" && v == "application/json"));
    let json: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(json, serde_json::json!({"ok": true, "items": [1, 2, 3]}));

    let seen = server.requests.lock().unwrap()[0].clone();
    assert!(seen.starts_with("POST /api?q=1 HTTP/1.1\r\n"), "{seen}");
    assert!(seen.to_ascii_lowercase().contains("x-test: yes"), "{seen}");
    assert!(seen.ends_with(r#"{"in":1}"#), "{seen}");
}

#[tokio::test]
async fn allowed_address_with_nothing_listening_is_a_transport_error() {
    let port = TcpListener::bind((LO, 0)).await.unwrap().local_addr().unwrap().port();
    // The listener is dropped: the port is (almost certainly) closed now.
    let g = guard(&[format!("127.0.0.1:{port}")]);
    let err = get(&g, &format!("http://127.0.0.1:{port}/")).await.unwrap_err();
    assert!(matches!(err, FetchError::Transport(_)), "{err:?}");
    assert_eq!(err.code(), "transport");
    assert!(!err.is_security());
}

// ------------------------------------------------------------------ limits

#[tokio::test]
async fn response_size_cap_aborts_large_bodies() {
    const LIMIT: usize = 64 * 1024;
    let big = vec![b'x'; 1024 * 1024];
    let exact = vec![b'y'; LIMIT];
    let server = Server::start(move |req| match path_of(req) {
        "/declared" => Reply::Full(http("200 OK", &[], &big)),
        // No Content-Length: the body runs until close, so only the
        // streaming check can stop it.
        "/undeclared" => {
            let mut out = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
            out.extend_from_slice(&big);
            Reply::Full(out)
        }
        _ => Reply::Full(http("200 OK", &[], &exact)),
    })
    .await;
    let g = guard(&[server.allow()]);
    for path in ["/declared", "/undeclared"] {
        let mut req = Request::get(server.url(path));
        req.max_response_bytes = Some(LIMIT);
        let err = g.send(req).await.unwrap_err();
        assert_eq!(err, FetchError::TooLarge { limit: LIMIT }, "{path}");
        assert_eq!(err.code(), "response_too_large");
        assert!(err.to_string().contains("65536"), "{err}");
    }
    let mut req = Request::get(server.url("/exact"));
    req.max_response_bytes = Some(LIMIT);
    assert_eq!(g.send(req).await.unwrap().body.len(), LIMIT);

    // The policy default applies when the request doesn't override it.
    let small = Guard::new(Policy {
        max_response_bytes: 1000,
        ..policy(&[server.allow()])
    });
    assert_eq!(get(&small, &server.url("/undeclared")).await.unwrap_err(), FetchError::TooLarge { limit: 1000 });
}

#[tokio::test]
async fn slow_servers_trip_the_request_timeout() {
    let server = Server::start(|req| match path_of(req) {
        // Never answers.
        "/silent" => Reply::Stall(Vec::new()),
        // Sends headers, then stalls mid-body.
        _ => Reply::Stall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial".to_vec()),
    })
    .await;
    let g = guard(&[server.allow()]);
    for path in ["/silent", "/mid-body"] {
        let mut req = Request::get(server.url(path));
        req.timeout = Some(Duration::from_millis(300));
        let started = Instant::now();
        let err = g.send(req).await.unwrap_err();
        assert_eq!(err, FetchError::Timeout, "{path}");
        assert_eq!(err.code(), "timeout");
        assert!(started.elapsed() < Duration::from_secs(5), "{path}");
    }
    // The policy's default timeout applies too.
    let g = Guard::new(Policy {
        request_timeout: Duration::from_millis(300),
        ..policy(&[server.allow()])
    });
    assert_eq!(get(&g, &server.url("/silent")).await.unwrap_err(), FetchError::Timeout);
}
