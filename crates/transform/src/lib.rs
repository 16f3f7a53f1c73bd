//! aob-transform: the ten data pipeline primitives behind the `transform` node type.
//!
//! A pipeline is a JSON array of step objects such as `{"step": "table_sort", "field": "price"}`.
//! Steps run in order and each receives the previous step's output.
//!
//! Layout:
//! - `params`: parameter reading that collects every problem with its JSON pointer;
//!   [`validate_pipeline`] and [`run_pipeline`] share it, so a pipeline that validates
//!   never fails on a parameter at run time.
//! - `path`: dotted field paths; `value`: ordering, equality and grouping keys for JSON.
//! - One module per primitive or family: `http`, `table` (sort, filter, select, top_k),
//!   `groupby`, `join`, `jq`, `regex_extract`, `date`.
//!
//! The crate does no I/O of its own: `http_request` goes through the caller's [`Fetcher`],
//! which is where SSRF guarding, timeouts and size limits live.

mod date;
mod groupby;
mod http;
mod join;
mod jq;
mod params;
mod path;
mod regex_extract;
mod table;
mod value;

pub use http::{FORBIDDEN_REQUEST_HEADERS, forbidden_request_header};

use std::future::Future;
use std::pin::Pin;

use aob_limits::Limits;
use serde_json::Value;

pub use crate::jq::{check as check_jq, run_in_process as run_jq_in_process};
use crate::params::{Params, Problem};
use crate::value::type_name;

/// The primitive names, for schemas and docs.
pub const PRIMITIVES: [&str; 10] = [
    "http_request",
    "table_sort",
    "table_filter",
    "table_select",
    "top_k",
    "groupby",
    "join",
    "jq_transform",
    "regex_extract",
    "parse_date",
];

/// Fetches JSON for the `http_request` primitive. The caller supplies an SSRF-guarded implementation.
pub trait Fetcher: Send + Sync {
    fn fetch<'a>(&'a self, req: FetchRequest) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>>;
}

/// One request made by an `http_request` step.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchRequest {
    /// Upper-case HTTP method: GET, POST, PUT, PATCH or DELETE.
    pub method: String,
    pub url: String,
    /// Query parameters in order; array values appear once per element.
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    /// JSON body; `None` for GET and DELETE.
    pub body: Option<Value>,
}

/// Runs `jq_transform` programs. A jq program can loop or recurse forever and nothing
/// inside jaq can stop it, so a server runs them in a process it can kill (`aob-exec`);
/// [`InProcessJq`] is for tests and tools.
pub trait JqRunner: Send + Sync {
    fn run<'a>(&'a self, filter: &'a str, input: Value, limits: &'a Limits) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>>;
}

/// jq on a deep-stack thread of this process: bounded in size and nesting, not in time.
pub struct InProcessJq;

impl JqRunner for InProcessJq {
    fn run<'a>(&'a self, filter: &'a str, input: Value, limits: &'a Limits) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>> {
        Box::pin(async move { run_jq_in_process(filter, input, limits) })
    }
}

/// What running a pipeline needs from its caller.
pub struct Env<'a> {
    pub fetch: &'a dyn Fetcher,
    pub jq: &'a dyn JqRunner,
    pub limits: &'a Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// A step is invalid or failed while running.
    #[error("pipeline step {index} ({step}): {message}")]
    Step { index: usize, step: String, message: String },
}

/// Static validation of a pipeline definition (a JSON array of step objects). Returns every
/// problem at once, each as (JSON pointer relative to the pipeline array, e.g. `/2/field`,
/// message). Compiles jq filters and regexes so bad ones are reported here.
///
/// A string parameter starting with `$` where a table is expected (`join.right`,
/// `http_request.params`) is accepted as an unresolved reference the caller substitutes
/// before running.
pub fn validate_pipeline(steps: &Value) -> Vec<(String, String)> {
    validate_pipeline_with(steps, &Limits::default())
}

/// [`validate_pipeline`] within `limits` (jq filter size and nesting).
pub fn validate_pipeline_with(steps: &Value, limits: &Limits) -> Vec<(String, String)> {
    let Some(steps) = steps.as_array() else {
        return vec![(String::new(), format!("pipeline must be an array of steps, got {}", type_name(steps)))];
    };
    steps
        .iter()
        .enumerate()
        .flat_map(|(index, step)| {
            let problems = parse_step(step, limits).err().unwrap_or_default();
            problems.into_iter().map(move |(pointer, message)| (format!("/{index}{pointer}"), message))
        })
        .collect()
}

/// Runs the steps in order; each step gets the previous step's output; the first gets `input`.
///
/// Every step is checked before the first one runs, so an invalid later step cannot leave
/// the effects of an earlier `http_request` behind.
pub async fn run_pipeline(steps: &[Value], input: Value, fetch: &dyn Fetcher) -> Result<Value, TransformError> {
    let limits = Limits::default();
    run_pipeline_with(
        steps,
        input,
        &Env {
            fetch,
            jq: &InProcessJq,
            limits: &limits,
        },
    )
    .await
}

/// [`run_pipeline`] with the caller's jq runner and limits.
pub async fn run_pipeline_with(steps: &[Value], input: Value, env: &Env<'_>) -> Result<Value, TransformError> {
    let parsed = steps
        .iter()
        .enumerate()
        .map(|(index, raw)| {
            parse_step(raw, env.limits).map_err(|problems| TransformError::Step {
                index,
                step: raw_step_name(raw),
                message: format!("invalid step: {}", join_problems(&problems)),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut current = input;
    for (index, step) in parsed.iter().enumerate() {
        let result = match step {
            Step::HttpRequest(http) => http.run(env.fetch).await,
            Step::JqTransform(jq) => env.jq.run(&jq.filter, current, env.limits).await,
            other => other.run_local(current),
        };
        current = result.map_err(|message| TransformError::Step {
            index,
            step: step.name().to_owned(),
            message,
        })?;
    }
    Ok(current)
}

/// A validated step, ready to run.
enum Step {
    HttpRequest(http::HttpRequest),
    TableSort(table::Sort),
    TableFilter(table::Filter),
    TableSelect(table::Select),
    TopK(table::TopK),
    GroupBy(groupby::GroupBy),
    Join(join::Join),
    JqTransform(jq::JqTransform),
    RegexExtract(regex_extract::RegexExtract),
    ParseDate(date::ParseDate),
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::HttpRequest(_) => "http_request",
            Step::TableSort(_) => "table_sort",
            Step::TableFilter(_) => "table_filter",
            Step::TableSelect(_) => "table_select",
            Step::TopK(_) => "top_k",
            Step::GroupBy(_) => "groupby",
            Step::Join(_) => "join",
            Step::JqTransform(_) => "jq_transform",
            Step::RegexExtract(_) => "regex_extract",
            Step::ParseDate(_) => "parse_date",
        }
    }

    /// Runs every primitive that needs no I/O.
    fn run_local(&self, input: Value) -> Result<Value, String> {
        match self {
            Step::HttpRequest(_) => Err("http_request must be run through a fetcher".to_owned()),
            Step::TableSort(s) => s.run(input),
            Step::TableFilter(s) => s.run(input),
            Step::TableSelect(s) => s.run(input),
            Step::TopK(s) => s.run(input),
            Step::GroupBy(s) => s.run(input),
            Step::Join(s) => s.run(input),
            Step::JqTransform(_) => Err("jq_transform must be run through a jq runner".to_owned()),
            Step::RegexExtract(s) => s.run(input),
            Step::ParseDate(s) => s.run(input),
        }
    }
}

/// Parses one step, returning problems with pointers relative to the step object.
fn parse_step(raw: &Value, limits: &Limits) -> Result<Step, Vec<Problem>> {
    let Some(obj) = raw.as_object() else {
        return Err(vec![(String::new(), format!("step must be an object, got {}", type_name(raw)))]);
    };
    let allowed = PRIMITIVES.join(", ");
    let name = match obj.get("step") {
        Some(Value::String(name)) => name.as_str(),
        Some(other) => {
            return Err(vec![(
                "/step".to_owned(),
                format!("must be a string naming a primitive ({allowed}), got {}", type_name(other)),
            )]);
        }
        None => {
            return Err(vec![("/step".to_owned(), format!("is required; one of: {allowed}"))]);
        }
    };

    let mut p = Params::step(obj);
    let step = match name {
        "http_request" => http::HttpRequest::parse(&mut p).map(Step::HttpRequest),
        "table_sort" => table::Sort::parse(&mut p).map(Step::TableSort),
        "table_filter" => table::Filter::parse(&mut p).map(Step::TableFilter),
        "table_select" => table::Select::parse(&mut p).map(Step::TableSelect),
        "top_k" => table::TopK::parse(&mut p).map(Step::TopK),
        "groupby" => groupby::GroupBy::parse(&mut p).map(Step::GroupBy),
        "join" => join::Join::parse(&mut p).map(Step::Join),
        "jq_transform" => jq::JqTransform::parse(&mut p, limits).map(Step::JqTransform),
        "regex_extract" => regex_extract::RegexExtract::parse(&mut p).map(Step::RegexExtract),
        "parse_date" => date::ParseDate::parse(&mut p).map(Step::ParseDate),
        other => {
            return Err(vec![("/step".to_owned(), format!("unknown primitive `{other}`; expected one of: {allowed}"))]);
        }
    };
    let problems = p.finish();
    match step {
        Some(step) if problems.is_empty() => Ok(step),
        _ if problems.is_empty() => Err(vec![(String::new(), "invalid step".to_owned())]),
        _ => Err(problems),
    }
}

fn raw_step_name(raw: &Value) -> String {
    raw.get("step").and_then(Value::as_str).unwrap_or("unknown").to_owned()
}

fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|(pointer, message)| {
            if pointer.is_empty() {
                message.clone()
            } else {
                format!("{pointer}: {message}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
