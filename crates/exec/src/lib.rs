//! Node executors: what a dispatched task does. Every outbound request goes through
//! the SSRF guard.
//!
//! Invariant: an executor never panics on user data; every problem becomes a
//! [`TaskError`] with a stable code and a retryable flag.

mod http_node;
pub mod sandbox;
mod transform_node;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use aob_engine::{Outcome, Task, TaskError};
use aob_limits::Limits;
use aob_model::NodeKind;
use aob_transform::{InProcessJq, JqRunner};

pub use http_node::guard_error;

/// Runs child workflows for `subworkflow` nodes; implemented by the runtime.
#[async_trait]
pub trait ChildRuns: Send + Sync + 'static {
    /// Starts (or finds, when retried with the same attempt) the child run and waits for its end.
    async fn run_child(&self, parent: &Task) -> Result<Value, TaskError>;
}

#[derive(Clone)]
pub struct Executors {
    guard: aob_ssrf::Guard,
    children: Option<Arc<dyn ChildRuns>>,
    limits: Arc<Limits>,
    jq: Arc<dyn JqRunner>,
}

impl Executors {
    /// Default limits, jq in this process (tests and tools; a server sets a sandbox).
    pub fn new(guard: aob_ssrf::Guard) -> Executors {
        Executors {
            guard,
            children: None,
            limits: Arc::new(Limits::default()),
            jq: Arc::new(InProcessJq),
        }
    }

    pub fn with_limits(mut self, limits: Arc<Limits>) -> Executors {
        self.limits = limits;
        self
    }

    /// Where `jq_transform` programs run (a [`sandbox::ProcessJq`] on a server).
    pub fn with_jq(mut self, jq: Arc<dyn JqRunner>) -> Executors {
        self.jq = jq;
        self
    }

    pub fn with_children(mut self, children: Arc<dyn ChildRuns>) -> Executors {
        self.children = Some(children);
        self
    }

    pub fn guard(&self) -> &aob_ssrf::Guard {
        &self.guard
    }

    /// Runs one attempt, bounded by the node's `timeout_ms` when it has one.
    pub async fn execute(&self, task: &Task) -> Outcome {
        let result = match task.timeout_ms {
            Some(ms) => match tokio::time::timeout(std::time::Duration::from_millis(ms), self.run(task)).await {
                Ok(r) => r,
                Err(_) => Err(TaskError::new("timeout", format!("attempt exceeded timeout_ms {ms}"), true)),
            },
            None => self.run(task).await,
        };
        match result.and_then(|v| self.check_output(v)) {
            Ok(v) => Outcome::Ok(v),
            Err(e) => Outcome::Err(e),
        }
    }

    /// An output is stored in the run state and in events: it must be readable back
    /// (depth) and must not grow the store without bound (size).
    fn check_output(&self, v: Value) -> Result<Value, TaskError> {
        if let Err(e) = self.limits.check_value("the output", &v) {
            aob_limits::drop_deep(v);
            return Err(TaskError::new("output_too_deep", e.to_string(), false));
        }
        let size = serde_json::to_vec(&v).map_or(usize::MAX, |b| b.len());
        if size > self.limits.output_bytes {
            return Err(TaskError::new(
                "output_too_large",
                format!("the output is {size} bytes; the limit is {}", self.limits.output_bytes),
                false,
            ));
        }
        Ok(v)
    }

    async fn run(&self, task: &Task) -> Result<Value, TaskError> {
        match task.kind {
            NodeKind::Http => http_node::run(&self.guard, task, &self.limits).await,
            NodeKind::Transform => transform_node::run(&self.guard, task, &self.limits, self.jq.clone()).await,
            // Inline kinds are normally evaluated by the engine; as map steps they run here.
            NodeKind::Noop => Ok(task.config.get("output").cloned().unwrap_or_else(|| task.input.clone())),
            NodeKind::Subworkflow => match &self.children {
                Some(c) => c.run_child(task).await,
                None => Err(TaskError::new("unsupported", "subworkflows need a runtime", false)),
            },
            NodeKind::Agent => Err(TaskError::new(
                "no_llm_provider",
                "agent nodes need an LLM provider; none is configured on this server",
                false,
            )),
            other => Err(TaskError::new("unsupported", format!("{other:?} nodes are not dispatched"), false)),
        }
    }
}
