//! `http_request`: build a [`FetchRequest`] and hand it to the caller's [`Fetcher`].

use serde_json::{Map, Value};

use crate::params::Params;
use crate::value::type_name;
use crate::{FetchRequest, Fetcher};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Request headers a workflow may not set: the hop-by-hop ones (RFC 9110 §7.6.1),
/// which belong to one connection and let a sender smuggle requests past a proxy, and
/// `Host`, which must follow the URL the SSRF guard checked. Also any `Proxy-*`
/// header. Workflow validation refuses them (http nodes and `http_request` steps);
/// the guard (`aob_ssrf::DROPPED_REQUEST_HEADERS`) drops them again at run time.
pub const FORBIDDEN_REQUEST_HEADERS: [&str; 10] = [
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

/// Whether a workflow may not set the request header `name` (case-insensitive).
pub fn forbidden_request_header(name: &str) -> bool {
    let lower = name.trim().to_ascii_lowercase();
    FORBIDDEN_REQUEST_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-")
}

pub(crate) struct HttpRequest {
    method: &'static str,
    url: String,
    params: Option<Value>,
    headers: Vec<(String, String)>,
    body: Option<Value>,
}

impl HttpRequest {
    pub(crate) fn parse(p: &mut Params<'_>) -> Option<Self> {
        let url = p.required_str("url");
        if url.is_some_and(|u| u.trim().is_empty()) {
            p.problem_at("url", "must not be empty");
        }
        // Methods are matched case-insensitively because generated steps often write "get".
        let method = match p.str("method") {
            None => Some("GET"),
            Some(given) => {
                let found = METHODS.iter().find(|m| m.eq_ignore_ascii_case(given)).copied();
                if found.is_none() {
                    p.problem_at("method", format!("must be one of: {}, got `{given}`", METHODS.join(", ")));
                }
                found
            }
        };
        let params = match p.value("params") {
            None => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            // An unresolved reference such as `$input`, substituted by the caller.
            Some(v @ Value::String(s)) if s.starts_with('$') => Some(v.clone()),
            Some(other) => {
                p.problem_at("params", format!("must be an object, got {}", type_name(other)));
                None
            }
        };
        let mut headers = Vec::new();
        match p.value("headers") {
            None => {}
            Some(Value::Object(map)) => {
                for (name, value) in map {
                    if forbidden_request_header(name) {
                        p.problem(
                            &format!("/headers/{}", crate::params::escape(name)),
                            format!("header `{name}` is managed by the HTTP client and may not be set (hop-by-hop headers and Host)"),
                        );
                        continue;
                    }
                    match value {
                        Value::String(v) => headers.push((name.clone(), v.clone())),
                        other => p.problem(
                            &format!("/headers/{}", crate::params::escape(name)),
                            format!("must be a string, got {}", type_name(other)),
                        ),
                    }
                }
            }
            Some(other) => p.problem_at("headers", format!("must be an object of strings, got {}", type_name(other))),
        }
        let body = p.value("body").cloned();
        let method = method?;
        if body.is_some() && matches!(method, "GET" | "DELETE") {
            p.problem_at("body", format!("a {method} request cannot have a body"));
        }
        Some(Self {
            method,
            url: url?.to_owned(),
            params,
            headers,
            body,
        })
    }

    fn request(&self) -> Result<FetchRequest, String> {
        let params = match &self.params {
            None => None,
            Some(Value::Object(map)) => Some(map),
            Some(other) => {
                return Err(format!("`params` must be an object, got {}", crate::value::preview(other)));
            }
        };
        let sends_body = !matches!(self.method, "GET" | "DELETE");
        let (query, body) = match (&self.body, params) {
            (Some(body), params) => (params.map(query_pairs).unwrap_or_default(), Some(body.clone())),
            (None, Some(params)) if sends_body => (Vec::new(), Some(Value::Object(params.clone()))),
            (None, params) => (params.map(query_pairs).unwrap_or_default(), None),
        };
        Ok(FetchRequest {
            method: self.method.to_owned(),
            url: self.url.clone(),
            query,
            headers: self.headers.clone(),
            body,
        })
    }

    pub(crate) async fn run(&self, fetcher: &dyn Fetcher) -> Result<Value, String> {
        let request = self.request()?;
        let method = request.method.clone();
        let url = request.url.clone();
        fetcher.fetch(request).await.map_err(|e| format!("{method} {url} failed: {e}"))
    }
}

/// Query values: scalars as text, arrays as repeated keys, null omitted, objects as JSON.
fn query_pairs(params: &Map<String, Value>) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (key, value) in params {
        match value {
            Value::Null => {}
            Value::Array(items) => {
                for item in items.iter().filter(|i| !i.is_null()) {
                    pairs.push((key.clone(), query_text(item)));
                }
            }
            other => pairs.push((key.clone(), query_text(other))),
        }
    }
    pairs
}

fn query_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(step: Value) -> Result<HttpRequest, Vec<(String, String)>> {
        let obj = step.as_object().unwrap().clone();
        let mut p = Params::step(&obj);
        let parsed = HttpRequest::parse(&mut p);
        let problems = p.finish();
        match parsed {
            Some(t) if problems.is_empty() => Ok(t),
            _ => Err(problems),
        }
    }

    fn request(step: Value) -> FetchRequest {
        parse(step).unwrap().request().unwrap()
    }

    #[test]
    fn get_puts_params_in_the_query() {
        let req = request(json!({
            "url": "https://api.example.com/x",
            "params": {"q": "rust", "n": 5, "tags": ["a", "b"], "skip": null, "f": {"a": 1}, "t": true},
            "headers": {"Accept": "application/json"}
        }));
        assert_eq!(
            req,
            FetchRequest {
                method: "GET".into(),
                url: "https://api.example.com/x".into(),
                query: vec![
                    ("q".into(), "rust".into()),
                    ("n".into(), "5".into()),
                    ("tags".into(), "a".into()),
                    ("tags".into(), "b".into()),
                    ("f".into(), "{\"a\":1}".into()),
                    ("t".into(), "true".into()),
                ],
                headers: vec![("Accept".into(), "application/json".into())],
                body: None,
            }
        );
        let req = request(json!({"url": "u", "method": "delete", "params": {"id": 1}}));
        assert_eq!(req.method, "DELETE");
        assert_eq!(req.query, vec![("id".into(), "1".into())]);
    }

    #[test]
    fn post_puts_params_in_the_body_unless_body_is_given() {
        let req = request(json!({"url": "u", "method": "POST", "params": {"a": 1}}));
        assert_eq!(req.body, Some(json!({"a": 1})));
        assert!(req.query.is_empty());
        let req = request(json!({"url": "u", "method": "PATCH", "params": {"a": 1}, "body": [1, 2]}));
        assert_eq!(req.body, Some(json!([1, 2])));
        assert_eq!(req.query, vec![("a".into(), "1".into())]);
        let req = request(json!({"url": "u", "method": "PUT"}));
        assert_eq!(req.body, None);
    }

    #[test]
    fn input_placeholders_pass_through() {
        let req = request(json!({"url": "$input", "method": "POST", "body": {"x": "$input"}}));
        assert_eq!(req.url, "$input");
        assert_eq!(req.body, Some(json!({"x": "$input"})));
        let step = parse(json!({"url": "u", "params": "$input"})).unwrap();
        assert!(step.request().unwrap_err().contains("$input"));
    }

    #[test]
    fn validation() {
        let pointers = |step: Value| -> Vec<String> { parse(step).err().unwrap().into_iter().map(|(p, _)| p).collect() };
        assert_eq!(pointers(json!({})), vec!["/url"]);
        assert_eq!(pointers(json!({"url": " "})), vec!["/url"]);
        assert_eq!(pointers(json!({"url": 3})), vec!["/url"]);
        assert_eq!(pointers(json!({"url": "u", "method": "TRACE"})), vec!["/method"]);
        assert_eq!(pointers(json!({"url": "u", "params": [1]})), vec!["/params"]);
        assert_eq!(pointers(json!({"url": "u", "headers": {"A": 1, "B": "ok"}})), vec!["/headers/A"]);
        assert_eq!(pointers(json!({"url": "u", "headers": "x"})), vec!["/headers"]);
        let mut got = pointers(json!({"url": "u", "headers": {"Host": "x", "transfer-encoding": "chunked", "Proxy-Foo": "1", "Accept": "a"}}));
        got.sort();
        assert_eq!(got, vec!["/headers/Host", "/headers/Proxy-Foo", "/headers/transfer-encoding"]);
        assert_eq!(pointers(json!({"url": "u", "body": {}})), vec!["/body"]);
        assert_eq!(pointers(json!({"url": "u", "timeout": 3})), vec!["/timeout"]);
    }
}
