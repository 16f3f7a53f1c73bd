use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use aob_engine::{Task, TaskError};
use aob_model::config::HttpConfig;
use aob_ssrf::{FetchError, Guard, Request};

const DEFAULT_TIMEOUT_MS: u64 = 30_000;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Maps a fetch failure to an attempt error. Security blocks never retry: the same
/// address will be blocked again.
pub fn guard_error(e: FetchError) -> TaskError {
    let retryable = matches!(e, FetchError::Timeout | FetchError::Transport(_));
    let code = if e.is_security() { "security_error" } else { e.code() };
    TaskError::new(code, e.to_string(), retryable)
}

pub async fn run(guard: &Guard, task: &Task, limits: &aob_limits::Limits) -> Result<Value, TaskError> {
    let cfg: HttpConfig = serde_json::from_value(task.config.clone()).map_err(|e| TaskError::new("invalid_config", format!("http config: {e}"), false))?;
    let method = aob_model::validate::http_method(&cfg.method)
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .ok_or_else(|| TaskError::new("invalid_config", format!("unsupported method {}", cfg.method), false))?;
    let mut url = url::Url::parse(&cfg.url).map_err(|e| TaskError::new("invalid_url", format!("{}: {e}", cfg.url), false))?;
    if !cfg.query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in &cfg.query {
            pairs.append_pair(k, &text(v));
        }
    }
    let mut headers: Vec<(String, String)> = cfg.headers.iter().map(|(k, v)| (k.clone(), text(v))).collect();
    let has = |headers: &[(String, String)], name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    // One key per attempt of this node in this run: a receiver can drop the duplicate
    // that at-least-once dispatch may send after a crash.
    if !has(&headers, "idempotency-key") {
        headers.push(("Idempotency-Key".into(), task.idempotency_key()));
    }
    if !has(&headers, "user-agent") {
        headers.push(("User-Agent".into(), concat!("aob/", env!("CARGO_PKG_VERSION")).into()));
    }
    let body = match cfg.body.as_ref().or(cfg.payload.as_ref()) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            if !has(&headers, "content-type") {
                headers.push(("Content-Type".into(), "text/plain; charset=utf-8".into()));
            }
            Some(bytes::Bytes::from(s.clone()))
        }
        Some(v) => {
            if !has(&headers, "content-type") {
                headers.push(("Content-Type".into(), "application/json".into()));
            }
            Some(bytes::Bytes::from(v.to_string()))
        }
    };
    let timeout = cfg.timeout_ms.or(task.timeout_ms).unwrap_or(DEFAULT_TIMEOUT_MS);
    let req = Request {
        method: method.clone(),
        url: url.to_string(),
        headers,
        body,
        timeout: Some(Duration::from_millis(timeout)),
        // Validation refuses larger values; a workflow stored under a higher limit is capped.
        max_response_bytes: Some(cfg.max_response_bytes.unwrap_or(limits.response_bytes).min(limits.response_bytes)),
        follow_redirects: cfg.follow_redirects,
    };
    let started = Instant::now();
    let resp = guard.send(req).await.map_err(guard_error)?;
    let elapsed = started.elapsed().as_millis() as u64;
    let mut hmap = Map::new();
    for (k, v) in &resp.headers {
        hmap.insert(k.to_ascii_lowercase(), Value::String(v.clone()));
    }
    let body = match serde_json::from_slice::<Value>(&resp.body) {
        Ok(v) => v,
        Err(_) => Value::String(String::from_utf8_lossy(&resp.body).into_owned()),
    };
    if let Some(f) = &cfg.fail_on_status
        && f.fails(resp.status)
    {
        // Server errors and throttling may pass; client errors will not.
        let retryable = resp.status >= 500 || resp.status == 429 || resp.status == 408;
        return Err(TaskError::new(
            "http_status",
            format!("{} {} answered {}", method, resp.url, resp.status),
            retryable,
        ));
    }
    Ok(json!({
        "status_code": resp.status,
        "headers": hmap,
        "body": body,
        "url": resp.url,
        "method": method.as_str(),
        "duration_ms": elapsed,
    }))
}

#[cfg(test)]
mod tests {
    /// Validation refuses exactly the headers the guard drops at run time, so a
    /// workflow that validates never has a header silently removed.
    #[test]
    fn validation_and_the_guard_agree_on_forbidden_headers() {
        let mut refused = aob_transform::FORBIDDEN_REQUEST_HEADERS.to_vec();
        let mut dropped = aob_ssrf::DROPPED_REQUEST_HEADERS.to_vec();
        refused.sort_unstable();
        dropped.sort_unstable();
        assert_eq!(refused, dropped);
        for name in dropped {
            assert!(aob_transform::forbidden_request_header(&name.to_ascii_uppercase()), "{name}");
        }
        assert!(!aob_transform::forbidden_request_header("authorization"));
    }
}
