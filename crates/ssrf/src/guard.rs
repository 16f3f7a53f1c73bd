//! The guard and its guarded HTTP client.
//!
//! How each attack is closed:
//! - IP-literal hosts (including the decimal/hex/octal/short forms, which the
//!   `url` crate normalises to IPv4 for http(s)) never reach a resolver, so
//!   they are checked synchronously before sending and on every redirect hop.
//! - Host names are resolved by [`GuardResolver`], installed as reqwest's DNS
//!   resolver. It validates every answer and hands reqwest exactly the
//!   addresses it validated, so reqwest connects to nothing else: there is no
//!   second lookup and therefore no DNS-rebinding window. Any blocked answer,
//!   DNS error or empty answer fails the lookup (fail closed).
//! - Redirects go through a custom policy that re-checks scheme, literal IPs
//!   and the hop count; host-name hops are then validated by the resolver.
//! - No proxy is ever used (a proxy would resolve and connect on our behalf).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::{Host, Url};

use crate::allow::AllowRule;
use crate::error::{FetchError, GuardError};
use crate::ip::is_blocked_ip;

/// Guard configuration. The allow-list is empty by default and nothing turns
/// the guard off.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Destinations that skip the block rules (tests, intranets).
    pub allow: Vec<AllowRule>,
    /// Redirect hops followed before failing with `TooManyRedirects`.
    pub max_redirects: usize,
    /// TCP (and DNS) connect timeout.
    pub connect_timeout: Duration,
    /// Default overall per-request timeout (connect, redirects and body).
    pub request_timeout: Duration,
    /// Default response body cap in bytes.
    pub max_response_bytes: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            max_redirects: 5,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: 10 * 1024 * 1024,
        }
    }
}

/// Pluggable name resolution, so tests can simulate private answers,
/// rebinding and DNS failures.
pub trait Resolver: Send + Sync + 'static {
    fn resolve(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + '_>>;
}

/// The operating system resolver (`getaddrinfo` via tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + '_>> {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// An outbound request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: http::Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
    /// Overrides [`Policy::request_timeout`].
    pub timeout: Option<Duration>,
    /// Overrides [`Policy::max_response_bytes`].
    pub max_response_bytes: Option<usize>,
    /// When false a 3xx response is returned as is.
    pub follow_redirects: bool,
}

impl Request {
    /// A request with no headers or body that follows redirects and uses the
    /// policy's limits.
    pub fn new(method: http::Method, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout: None,
            max_response_bytes: None,
            follow_redirects: true,
        }
    }

    pub fn get(url: impl Into<String>) -> Self {
        Self::new(http::Method::GET, url)
    }
}

/// A fully read response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The URL that produced this response, after redirects.
    pub url: String,
}

/// The SSRF guard. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
    /// Built once per guard so connections are pooled. Building only fails if
    /// the TLS backend cannot initialise; then every request fails (closed)
    /// instead of panicking at construction.
    client: Result<reqwest::Client, String>,
}

struct Inner {
    policy: Policy,
    resolver: Arc<dyn Resolver>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("policy", &self.inner.policy).finish_non_exhaustive()
    }
}

// Per-request state shared with the resolver and the redirect policy, which
// reqwest calls without any request context. reqwest's `Resolve` only sees the
// host name, yet port-specific allow rules need the port being connected to.
// Both hooks run synchronously inside the poll of the request future, i.e. in
// the task that called `send`, so a task-local carries it: `send` sets the
// initial port, the redirect policy updates it before each hop, and the
// resolver reads it when called. If it were ever absent the port counts as
// unknown, which only port-less rules match (fail closed).
tokio::task_local! {
    static HOP: Arc<HopState>;
}

struct HopState {
    port: AtomicU32,
    follow_redirects: bool,
}

const PORT_UNKNOWN: u32 = u32::MAX;

fn port_code(port: Option<u16>) -> u32 {
    port.map_or(PORT_UNKNOWN, u32::from)
}

fn current_port() -> Option<u16> {
    HOP.try_with(|h| h.port.load(Ordering::SeqCst)).ok().and_then(|p| u16::try_from(p).ok())
}

impl Inner {
    /// `None` port: only port-less allow rules can apply.
    fn check_ip(&self, host: &str, ip: IpAddr, port: Option<u16>) -> Result<(), GuardError> {
        if self.policy.allow.iter().any(|r| r.matches(ip, port)) {
            return Ok(());
        }
        match is_blocked_ip(ip) {
            None => Ok(()),
            Some(reason) => {
                tracing::warn!(host, addr = %ip, ?port, reason, "SSRF guard blocked destination");
                Err(GuardError::Blocked {
                    host: host.to_owned(),
                    addr: ip,
                    reason,
                })
            }
        }
    }

    fn check_url(&self, url: &Url) -> Result<(), GuardError> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            tracing::warn!(scheme, "SSRF guard blocked URL scheme");
            return Err(GuardError::Scheme(scheme.to_owned()));
        }
        let port = url.port_or_known_default();
        match url.host() {
            None => Err(GuardError::EmptyHost),
            Some(Host::Domain("")) => Err(GuardError::EmptyHost),
            // Checked again, with the real answers, by the resolver.
            Some(Host::Domain(_)) => Ok(()),
            Some(Host::Ipv4(ip)) => self.check_ip(&ip.to_string(), IpAddr::V4(ip), port),
            Some(Host::Ipv6(ip)) => self.check_ip(&format!("[{ip}]"), IpAddr::V6(ip), port),
        }
    }

    /// Resolves `host` and validates every answer; any failure fails the whole
    /// lookup rather than dropping the bad address, because a name that
    /// answers with internal addresses is not trustworthy at all.
    async fn resolve_checked(&self, host: &str, port: Option<u16>) -> Result<Vec<IpAddr>, GuardError> {
        let dns = |message: String| GuardError::Dns {
            host: host.to_owned(),
            message,
        };
        let mut addrs = self.resolver.resolve(host).await.map_err(|e| {
            tracing::warn!(host, error = %e, "SSRF guard: DNS failure, failing closed");
            dns(e.to_string())
        })?;
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            tracing::warn!(host, "SSRF guard: empty DNS answer, failing closed");
            return Err(dns("no addresses".to_owned()));
        }
        for ip in &addrs {
            self.check_ip(host, *ip, port)?;
        }
        Ok(addrs)
    }
}

/// reqwest DNS hook: resolve once, validate, and return only validated
/// addresses, which are the only ones reqwest will connect to.
struct GuardResolver {
    inner: Arc<Inner>,
}

impl reqwest::dns::Resolve for GuardResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        // Read synchronously: this call happens inside the request's task.
        let port = current_port();
        let inner = Arc::clone(&self.inner);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            match inner.resolve_checked(&host, port).await {
                // Port 0 is replaced by the URL's port by the connector.
                Ok(ips) => Ok(Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0))) as reqwest::dns::Addrs),
                Err(e) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

fn redirect_policy(inner: Arc<Inner>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let follow = HOP.try_with(|h| h.follow_redirects).unwrap_or(true);
        if !follow {
            return attempt.stop();
        }
        // `previous` holds the original URL plus every hop already followed.
        let limit = inner.policy.max_redirects;
        if attempt.previous().len() > limit {
            tracing::warn!(limit, "SSRF guard: too many redirects");
            return attempt.error(GuardError::TooManyRedirects { limit });
        }
        let next = attempt.url();
        if let Err(e) = inner.check_url(next) {
            return attempt.error(e);
        }
        // The resolver must judge the next hop's name against the next hop's
        // port, not the original one.
        let port = port_code(next.port_or_known_default());
        let _ = HOP.try_with(|h| h.port.store(port, Ordering::SeqCst));
        attempt.follow()
    })
}

fn build_client(inner: &Arc<Inner>) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(Arc::new(GuardResolver { inner: Arc::clone(inner) }))
        .redirect(redirect_policy(Arc::clone(inner)))
        .connect_timeout(inner.policy.connect_timeout)
        // Don't leak the previous URL (which may carry tokens) to redirect targets.
        .referer(false)
        .user_agent(concat!("aob/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build HTTP client: {e}"))
}

impl Guard {
    /// A guard using the system resolver.
    pub fn new(policy: Policy) -> Self {
        Self::with_resolver(policy, Arc::new(SystemResolver))
    }

    /// A guard using `resolver` for host names.
    pub fn with_resolver(policy: Policy, resolver: Arc<dyn Resolver>) -> Self {
        let inner = Arc::new(Inner { policy, resolver });
        let client = build_client(&inner);
        if let Err(e) = &client {
            tracing::error!(error = %e, "SSRF guard has no HTTP client; all requests will fail");
        }
        Self { inner, client }
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Whether connecting to `ip:port` is permitted (allow-list, then block rules).
    pub fn check_addr(&self, ip: IpAddr, port: u16) -> Result<(), GuardError> {
        self.inner.check_ip(&ip.to_string(), ip, Some(port))
    }

    /// The synchronous checks: scheme, host presence and IP-literal hosts.
    /// Host names are only validated at resolution time, inside [`Guard::send`].
    pub fn check_url(&self, url: &Url) -> Result<(), GuardError> {
        self.inner.check_url(url)
    }

    /// Resolves `host` through the guard's resolver and validates every answer
    /// for `port`, exactly as a request would.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<IpAddr>, GuardError> {
        self.inner.resolve_checked(host, Some(port)).await
    }

    /// Sends `req` through the guard and reads the whole body (up to the cap).
    pub async fn send(&self, req: Request) -> Result<Response, FetchError> {
        let url = Url::parse(&req.url).map_err(|e| GuardError::InvalidUrl(e.to_string()))?;
        // reqwest never calls the resolver for IP-literal hosts.
        self.inner.check_url(&url)?;
        let client = self.client.as_ref().map_err(|e| FetchError::Transport(e.clone()))?;
        let headers = build_headers(&req.headers)?;
        let limit = req.max_response_bytes.unwrap_or(self.inner.policy.max_response_bytes);
        let total = req.timeout.unwrap_or(self.inner.policy.request_timeout);
        let hop = Arc::new(HopState {
            port: AtomicU32::new(port_code(url.port_or_known_default())),
            follow_redirects: req.follow_redirects,
        });

        let mut builder = client.request(req.method, url).headers(headers);
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        let exchange = HOP.scope(hop, async move {
            let resp = builder.send().await.map_err(|e| FetchError::from_reqwest(&e))?;
            read_response(resp, limit).await
        });
        // One deadline over connect, redirects and the body.
        tokio::time::timeout(total, exchange).await.unwrap_or(Err(FetchError::Timeout))
    }
}

/// Headers a request's author never sets. The hop-by-hop ones (RFC 9110 §7.6.1) govern
/// the connection between the client and the next hop, so a user who sets them can
/// smuggle requests or desynchronise a proxy in front of the target; `Host` chosen
/// apart from the URL would route around the guard's checks on virtual hosts behind
/// an allowed address. `aob_transform::FORBIDDEN_REQUEST_HEADERS` is the same list
/// (validation refuses them at submission); here they are dropped, whatever the caller.
pub const DROPPED_REQUEST_HEADERS: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Whether a request header named `name` is dropped: one of
/// [`DROPPED_REQUEST_HEADERS`], any other `Proxy-*` header, or a header the request's
/// `Connection` header names (those are hop-by-hop by declaration).
fn dropped(name: &str, connection_named: &[String]) -> bool {
    let lower = name.to_ascii_lowercase();
    DROPPED_REQUEST_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") || connection_named.contains(&lower)
}

fn build_headers(pairs: &[(String, String)]) -> Result<HeaderMap, FetchError> {
    let connection_named: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| !t.is_empty())
        .collect();
    let mut map = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if dropped(name, &connection_named) {
            tracing::debug!(header = %name, "dropping a hop-by-hop or Host header from an outbound request");
            continue;
        }
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| FetchError::InvalidRequest(format!("invalid header name '{name}'")))?;
        let v = HeaderValue::from_str(value).map_err(|_| FetchError::InvalidRequest(format!("invalid value for header '{name}'")))?;
        map.append(n, v);
    }
    Ok(map)
}

async fn read_response(mut resp: reqwest::Response, limit: usize) -> Result<Response, FetchError> {
    let status = resp.status().as_u16();
    let url = resp.url().to_string();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    // Fail early on an honest Content-Length; the streaming check below
    // catches dishonest or absent ones.
    if resp.content_length().is_some_and(|len| len > u64::try_from(limit).unwrap_or(u64::MAX)) {
        return Err(FetchError::TooLarge { limit });
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| FetchError::from_reqwest(&e))? {
        if body.len().saturating_add(chunk.len()) > limit {
            // Dropping `resp` aborts the transfer and closes the connection.
            return Err(FetchError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response {
        status,
        headers,
        body: body.freeze(),
        url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(Policy::default())
    }

    fn check(s: &str) -> Result<(), GuardError> {
        guard().check_url(&Url::parse(s).unwrap())
    }

    #[test]
    fn numeric_host_tricks_are_normalised_and_blocked() {
        for s in [
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://0177.0.0.1/",
            "http://017700000001/",
            "http://0x7f.0x0.0x0.0x1/",
            "http://127.0.0.1./",
            "https://2852039166/", // 169.254.169.254
            "http://0xa9fea9fe/",
            "http://0/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[0:0:0:0:0:ffff:127.0.0.1]/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fe80::1]/",
            "http://10.0.0.5/",
            "http://169.254.169.254/latest/meta-data/",
            "HTTP://127.0.0.1:8080/",
        ] {
            match check(s) {
                Err(GuardError::Blocked { .. }) => {}
                other => panic!("{s}: expected Blocked, got {other:?}"),
            }
        }
    }

    #[test]
    fn numeric_forms_name_the_loopback_address() {
        for s in ["http://2130706433/", "http://0x7f000001/", "http://127.1/"] {
            match check(s) {
                Err(GuardError::Blocked { addr, .. }) => {
                    assert_eq!(addr, IpAddr::from([127, 0, 0, 1]), "{s}")
                }
                other => panic!("{s}: {other:?}"),
            }
        }
    }

    #[test]
    fn schemes_outside_http_are_refused() {
        for s in [
            "file:///etc/passwd",
            "gopher://x",
            "ftp://example.com/",
            "ws://example.com/",
            "data:text/plain,hi",
            "javascript:alert(1)",
        ] {
            assert!(matches!(check(s), Err(GuardError::Scheme(_))), "{s}");
        }
    }

    #[test]
    fn public_literals_and_names_pass_the_sync_check() {
        for s in [
            "http://8.8.8.8/",
            "https://example.com/path/etc/passwd",
            "http://[2606:4700:4700::1111]:8443/",
            "http://user:pw@example.com/",
        ] {
            assert_eq!(check(s), Ok(()), "{s}");
        }
    }

    #[test]
    fn allow_rules_skip_block_rules_per_port() {
        let g = Guard::new(Policy {
            allow: vec!["127.0.0.1:8080".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
            ..Policy::default()
        });
        let lo = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(g.check_addr(lo, 8080), Ok(()));
        assert!(g.check_addr(lo, 8081).is_err());
        assert_eq!(g.check_addr(IpAddr::from([10, 9, 8, 7]), 22), Ok(()));
        assert!(g.check_addr(IpAddr::from([192, 168, 0, 1]), 80).is_err());
        assert_eq!(g.check_url(&Url::parse("http://127.0.0.1:8080/").unwrap()), Ok(()));
        assert!(g.check_url(&Url::parse("http://127.0.0.1/").unwrap()).is_err());
        // The default port counts for port-specific rules.
        let g = Guard::new(Policy {
            allow: vec!["127.0.0.1:80".parse().unwrap()],
            ..Policy::default()
        });
        assert_eq!(g.check_url(&Url::parse("http://127.0.0.1/").unwrap()), Ok(()));
        assert!(g.check_url(&Url::parse("https://127.0.0.1/").unwrap()).is_err());
    }

    #[test]
    fn default_policy_is_sane() {
        let p = Policy::default();
        assert!(p.allow.is_empty());
        assert_eq!(p.max_redirects, 5);
        assert_eq!(p.connect_timeout, Duration::from_secs(10));
        assert_eq!(p.max_response_bytes, 10 * 1024 * 1024);
    }

    #[test]
    fn error_codes_are_stable() {
        let sec = FetchError::from(GuardError::EmptyHost);
        assert!(sec.is_security());
        assert_eq!(sec.code(), "ssrf_blocked");
        assert_eq!(FetchError::Timeout.code(), "timeout");
        assert_eq!(FetchError::TooLarge { limit: 1 }.code(), "response_too_large");
        assert_eq!(FetchError::Transport("x".into()).code(), "transport");
        assert!(!FetchError::Timeout.is_security());
    }

    #[test]
    fn guard_errors_are_found_through_source_chains() {
        #[derive(Debug)]
        struct Wrap(Box<dyn std::error::Error + Send + Sync>);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("outer")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&*self.0)
            }
        }
        let e = Wrap(Box::new(Wrap(Box::new(GuardError::EmptyHost))));
        assert_eq!(crate::find_guard_error(&e), Some(&GuardError::EmptyHost));
        let plain = Wrap(Box::new(io::Error::other("x")));
        assert_eq!(crate::find_guard_error(&plain), None);
    }

    #[tokio::test]
    async fn invalid_urls_and_headers_fail_without_sending() {
        let g = guard();
        for s in ["not a url", "http://", "http://exa mple.com/", ""] {
            let err = g.send(Request::get(s)).await.unwrap_err();
            assert!(err.is_security(), "{s}: {err:?}");
        }
        let mut req = Request::get("http://8.8.8.8/");
        req.headers.push(("bad header".into(), "v".into()));
        let err = g.send(req).await.unwrap_err();
        assert!(matches!(err, FetchError::InvalidRequest(_)), "{err:?}");
    }

    #[test]
    fn hop_by_hop_and_host_headers_are_dropped() {
        let pairs: Vec<(String, String)> = [
            ("Connection", "close, X-Secret-Hop"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic eA=="),
            ("Proxy-Anything", "1"),
            ("TE", "trailers"),
            ("Trailer", "X-T"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "websocket"),
            ("Host", "internal.example"),
            ("x-secret-hop", "1"),
            ("Accept", "application/json"),
            ("X-Custom", "kept"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let map = build_headers(&pairs).unwrap();
        let mut names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "x-custom"]);
    }

    /// What actually goes on the wire to an allowed loopback server: none of the
    /// dropped headers, and the Host of the URL rather than the caller's.
    #[tokio::test]
    async fn dropped_headers_never_reach_the_target() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed before the end of the request head");
                head.extend_from_slice(&buf[..n]);
            }
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&head).to_ascii_lowercase()
        });
        let mut policy = Policy::default();
        policy.allow.push(format!("127.0.0.1:{port}").parse().unwrap());
        let mut req = Request::get(format!("http://127.0.0.1:{port}/x"));
        for (k, v) in [
            ("Host", "metadata.internal"),
            ("Connection", "x-hop"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic eA=="),
            ("TE", "trailers"),
            ("Trailer", "x-t"),
            ("Upgrade", "websocket"),
            ("X-Kept", "yes"),
        ] {
            req.headers.push((k.into(), v.into()));
        }
        let resp = Guard::new(policy).send(req).await.unwrap();
        assert_eq!(resp.status, 200);
        let head = server.await.unwrap();
        assert!(head.contains(&format!("\r\nhost: 127.0.0.1:{port}\r\n")), "{head}");
        assert!(head.contains("\r\nx-kept: yes\r\n"), "{head}");
        for gone in [
            "metadata.internal",
            "x-hop",
            "keep-alive",
            "proxy-",
            "\r\nte:",
            "trailer",
            "upgrade",
            "connection",
        ] {
            assert!(!head.contains(gone), "{gone} reached the target: {head}");
        }
    }
}
