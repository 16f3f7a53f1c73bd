use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;

use aob_engine::{Task, TaskError};
use aob_model::config::TransformConfig;
use aob_ssrf::{Guard, Request};
use aob_transform::{FetchRequest, Fetcher};

/// The `http_request` primitive, through the same SSRF guard as http nodes.
struct GuardedFetcher<'a> {
    guard: &'a Guard,
}

impl Fetcher for GuardedFetcher<'_> {
    fn fetch<'a>(&'a self, req: FetchRequest) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>> {
        Box::pin(async move {
            let method = http::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes()).map_err(|e| e.to_string())?;
            let mut url = url::Url::parse(&req.url).map_err(|e| format!("{}: {e}", req.url))?;
            if !req.query.is_empty() {
                let mut pairs = url.query_pairs_mut();
                for (k, v) in &req.query {
                    pairs.append_pair(k, v);
                }
            }
            let mut headers = req.headers.clone();
            let body = req.body.as_ref().map(|b| {
                headers.push(("Content-Type".into(), "application/json".into()));
                bytes::Bytes::from(b.to_string())
            });
            let r = Request {
                method,
                url: url.to_string(),
                headers,
                body,
                timeout: Some(Duration::from_secs(30)),
                max_response_bytes: None,
                follow_redirects: true,
            };
            let resp = self
                .guard
                .send(r)
                .await
                .map_err(|e| format!("{}: {e}", if e.is_security() { "security_error" } else { e.code() }))?;
            if resp.status >= 400 {
                return Err(format!("{} answered {}", resp.url, resp.status));
            }
            serde_json::from_slice(&resp.body).map_err(|e| format!("response of {} is not JSON: {e}", resp.url))
        })
    }
}

pub async fn run(guard: &Guard, task: &Task, limits: &aob_limits::Limits, jq: std::sync::Arc<dyn aob_transform::JqRunner>) -> Result<Value, TaskError> {
    let cfg: TransformConfig =
        serde_json::from_value(task.config.clone()).map_err(|e| TaskError::new("invalid_config", format!("transform config: {e}"), false))?;
    let input = cfg.input.clone().unwrap_or_else(|| task.input.clone());
    // jq and regex work is CPU-bound and synchronous: run it on a blocking thread so
    // one heavy pipeline cannot stall the async workers; http_request steps still
    // await on the runtime through the handle.
    let guard = guard.clone();
    let limits = limits.clone();
    let rt = tokio::runtime::Handle::current();
    let result = tokio::task::spawn_blocking(move || {
        let fetcher = GuardedFetcher { guard: &guard };
        let env = aob_transform::Env {
            fetch: &fetcher,
            jq: &*jq,
            limits: &limits,
        };
        rt.block_on(aob_transform::run_pipeline_with(&cfg.pipeline, input, &env))
    })
    .await
    .map_err(|e| TaskError::new("transform_error", format!("pipeline worker stopped: {e}"), false))?;
    result.map_err(|e| {
        let msg = e.to_string();
        // The jq sandbox prefixes its failures with a stable code.
        let code = ["security_error", "jq_timeout", "jq_resource_exhausted", "jq_unavailable", "output_too_large"]
            .into_iter()
            .find(|c| msg.contains(c))
            .unwrap_or("transform_error");
        // A sandbox that could not start may start next time.
        TaskError::new(code, msg, code == "jq_unavailable")
    })
}
