//! The API client used by every CLI command, and the exit codes it maps errors to.

use std::time::Duration;

use serde_json::Value;

/// Exit codes (documented in README):
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A server error, or the followed run ended FAILED/CANCELLED/TIMEOUT.
    pub const FAILED: i32 = 1;
    /// Bad usage or input rejected by the server (4xx other than 404).
    pub const USAGE: i32 = 2;
    /// The thing asked for does not exist (404).
    pub const NOT_FOUND: i32 = 3;
    /// The server could not be reached.
    pub const UNREACHABLE: i32 = 4;
    /// Interrupted (Ctrl-C).
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        details: Value,
    },
    #[error("cannot reach the aob server at {url}: {reason} (is `aob serve` running? set --api-url or AOB_API_URL)")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Api { status: 404, .. } => exit::NOT_FOUND,
            CliError::Api { status, .. } if (400..500).contains(status) => exit::USAGE,
            CliError::Api { .. } | CliError::Failed(_) => exit::FAILED,
            CliError::Unreachable { .. } => exit::UNREACHABLE,
            CliError::Usage(_) => exit::USAGE,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client sending `key` (when given) as `X-API-Key` on every request.
    pub fn new(base: &str, key: Option<&str>) -> Client {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(k) = key.and_then(|k| reqwest::header::HeaderValue::from_str(k.trim()).ok()) {
            headers.insert("x-api-key", k);
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .default_headers(headers)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Client {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn unreachable(&self, e: reqwest::Error) -> CliError {
        CliError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        }
    }

    async fn finish(&self, resp: reqwest::Response) -> Result<Value, CliError> {
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| self.unreachable(e))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let err = &body["error"];
            return Err(CliError::Api {
                status,
                code: err["code"].as_str().unwrap_or("error").to_string(),
                message: err["message"].as_str().map(str::to_string).unwrap_or_else(|| format!("HTTP {status}: {body}")),
                details: err["details"].clone(),
            });
        }
        Ok(body)
    }

    /// One request with an optional JSON body; the answer as JSON, or the API error.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let mut req = self.http.request(method, self.url(path)).timeout(Duration::from_secs(30));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        self.finish(resp).await
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, CliError> {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Opens an SSE stream (no overall timeout: streams are long-lived).
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response, CliError> {
        let resp = self
            .http
            .get(self.url(path))
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if resp.status().as_u16() >= 400 {
            return Err(self.finish(resp).await.err().unwrap_or(CliError::Failed("stream failed".into())));
        }
        Ok(resp)
    }
}

/// Percent-encodes one path segment (tags may contain `/`).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
