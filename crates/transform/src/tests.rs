//! Pipeline-level tests: dispatch, validation pointers, and multi-step runs with a fake fetcher.

use std::collections::HashMap;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use serde_json::{Value, json};

use crate::{FetchRequest, Fetcher, PRIMITIVES, TransformError, run_pipeline, validate_pipeline};

/// Serves canned JSON by URL and records every request.
#[derive(Default)]
struct FakeFetcher {
    responses: HashMap<String, Value>,
    requests: Mutex<Vec<FetchRequest>>,
}

impl FakeFetcher {
    fn with(url: &str, response: Value) -> Self {
        let mut fake = Self::default();
        fake.responses.insert(url.to_owned(), response);
        fake
    }

    fn requests(&self) -> Vec<FetchRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Fetcher for FakeFetcher {
    fn fetch<'a>(&'a self, req: FetchRequest) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>> {
        let response = self.responses.get(&req.url).cloned().ok_or_else(|| "status 404".to_owned());
        self.requests.lock().unwrap().push(req);
        Box::pin(async move { response })
    }
}

/// The fake fetcher is always ready, so a busy poll with a no-op waker is enough and keeps
/// the crate free of an async runtime dependency.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::yield_now();
    }
}

fn run(steps: Value, input: Value, fetcher: &FakeFetcher) -> Result<Value, TransformError> {
    let steps = steps.as_array().unwrap().clone();
    block_on(run_pipeline(&steps, input, fetcher))
}

fn step_error(err: TransformError) -> (usize, String, String) {
    match err {
        TransformError::Step { index, step, message } => (index, step, message),
    }
}

#[test]
fn multi_step_pipeline_with_fetch() {
    let fetcher = FakeFetcher::with(
        "https://api.example.com/orders",
        json!({"orders": [
            {"id": 1, "customer": "c1", "total": 30, "placed": "2024-03-01T10:00:00Z", "note": "ref ABC-1"},
            {"id": 2, "customer": "c2", "total": 75, "placed": "2024-03-02T11:00:00Z", "note": "ref XYZ-9"},
            {"id": 3, "customer": "c1", "total": 50, "placed": "2024-03-03T12:00:00Z", "note": "none"},
            {"id": 4, "customer": "c3", "total": 5,  "placed": "2024-03-04T13:00:00Z", "note": "ref QQQ-2"}
        ]}),
    );
    let customers = json!([
        {"customer": "c1", "name": "Ann"},
        {"customer": "c2", "name": "Bob"}
    ]);
    let steps = json!([
        {"step": "http_request", "url": "https://api.example.com/orders", "params": {"limit": 10}},
        {"step": "jq_transform", "filter": ".orders"},
        {"step": "table_filter", "condition": {"field": "total", "op": ">=", "value": 10}},
        {"step": "regex_extract", "field": "note", "pattern": "ref (?P<code>[A-Z]+)-(?P<n>\\d+)", "into": "ref"},
        {"step": "parse_date", "field": "placed", "output": "date"},
        {"step": "join", "right": customers, "on": "customer", "how": "left"},
        {"step": "groupby", "by": "customer", "aggregations": {
            "orders": {"op": "count"},
            "spent": {"op": "sum", "field": "total"},
            "name": {"op": "first", "field": "name"},
            "last_day": {"op": "max", "field": "placed"}
        }},
        {"step": "table_sort", "field": "spent", "order": "desc"},
        {"step": "top_k", "k": 1},
        {"step": "table_select", "fields": {"who": "name", "spent": "spent", "days": "last_day"}}
    ]);
    let out = run(steps, Value::Null, &fetcher).unwrap();
    assert_eq!(out, json!([{"who": "Ann", "spent": 80, "days": "2024-03-03"}]));

    let requests = fetcher.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].query, vec![("limit".to_owned(), "10".to_owned())]);
}

#[test]
fn first_step_receives_the_input() {
    let fetcher = FakeFetcher::default();
    let steps = json!([{"step": "top_k", "k": 2}]);
    assert_eq!(run(steps, json!([1, 2, 3]), &fetcher).unwrap(), json!([1, 2]));
    assert_eq!(run(json!([]), json!({"a": 1}), &fetcher).unwrap(), json!({"a": 1}));
}

#[test]
fn step_errors_carry_index_and_primitive() {
    let fetcher = FakeFetcher::default();
    let steps = json!([
        {"step": "jq_transform", "filter": ".items"},
        {"step": "table_sort", "field": "x"}
    ]);
    let err = run(steps, json!({"items": "oops"}), &fetcher).unwrap_err();
    assert_eq!(err.to_string(), "pipeline step 1 (table_sort): expected an array as input, got string");
    let (index, step, _) = step_error(err);
    assert_eq!((index, step.as_str()), (1, "table_sort"));
}

#[test]
fn fetch_failures_are_step_errors() {
    let fetcher = FakeFetcher::default();
    let steps = json!([{"step": "http_request", "url": "https://nowhere.example"}]);
    let (index, step, message) = step_error(run(steps, Value::Null, &fetcher).unwrap_err());
    assert_eq!((index, step.as_str()), (0, "http_request"));
    assert!(message.contains("https://nowhere.example") && message.contains("404"), "{message}");
}

#[test]
fn invalid_steps_stop_the_pipeline_before_any_fetch() {
    let fetcher = FakeFetcher::with("https://a.example", json!([]));
    let steps = json!([
        {"step": "http_request", "url": "https://a.example"},
        {"step": "top_k", "k": 0}
    ]);
    let (index, step, message) = step_error(run(steps, Value::Null, &fetcher).unwrap_err());
    assert_eq!((index, step.as_str()), (1, "top_k"));
    assert!(message.starts_with("invalid step: /k:"), "{message}");
    assert!(fetcher.requests().is_empty());

    let steps = json!([{"step": "teleport"}]);
    let (_, step, message) = step_error(run(steps, Value::Null, &fetcher).unwrap_err());
    assert_eq!(step, "teleport");
    assert!(message.contains("unknown primitive"), "{message}");
}

#[test]
fn validate_reports_all_problems_with_pointers() {
    let problems = validate_pipeline(&json!([
        {"step": "table_sort", "field": "a", "order": "sideways"},
        {"step": "nope"},
        {"field": "x"},
        "not a step",
        {"step": "jq_transform", "filter": ".a |"},
        {"step": "regex_extract", "pattern": "(", "colour": "red"},
        {"step": 7},
        {"step": "top_k", "k": 3, "description": "metadata keys are allowed"}
    ]));
    let pointers: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        pointers,
        vec!["/0/order", "/1/step", "/2/step", "/3", "/4/filter", "/5/pattern", "/5/colour", "/6/step"]
    );
    let unknown = &problems[1].1;
    for name in PRIMITIVES {
        assert!(unknown.contains(name), "{unknown}");
    }
}

#[test]
fn validate_rejects_non_arrays_and_accepts_valid_pipelines() {
    assert_eq!(validate_pipeline(&json!({"step": "top_k"}))[0].0, "");
    assert!(validate_pipeline(&json!([])).is_empty());
    let every_primitive = json!([
        {"step": "http_request", "url": "$input", "method": "POST", "params": {"a": "$input"}},
        {"step": "table_sort", "field": "a"},
        {"step": "table_filter", "condition": {"field": "a", "op": "exists"}},
        {"step": "table_select", "fields": ["a"]},
        {"step": "top_k", "k": 1},
        {"step": "groupby", "by": "a"},
        {"step": "join", "right": "$nodes.other.output", "on": "a"},
        {"step": "jq_transform", "filter": "."},
        {"step": "regex_extract", "pattern": "a"},
        {"step": "parse_date"}
    ]);
    assert_eq!(validate_pipeline(&every_primitive), Vec::<(String, String)>::new());
}

#[test]
fn pipeline_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let fetcher = FakeFetcher::default();
    let steps = vec![json!({"step": "jq_transform", "filter": "."})];
    let future = run_pipeline(&steps, Value::Null, &fetcher);
    assert_send(&future);
    assert_eq!(block_on(future).unwrap(), Value::Null);
}
