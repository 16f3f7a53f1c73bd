//! Node executors: what a dispatched task does. Every outbound request goes through
//! the SSRF guard.
//!
//! Invariant: an executor never panics on user data; every problem becomes a
//! [`TaskError`] with a stable code and a retryable flag.

mod http_node;
mod transform_node;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use aob_engine::{Outcome, Task, TaskError};
use aob_model::NodeKind;

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
}

impl Executors {
    pub fn new(guard: aob_ssrf::Guard) -> Executors {
        Executors { guard, children: None }
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
        match result {
            Ok(v) => Outcome::Ok(v),
            Err(e) => Outcome::Err(e),
        }
    }

    async fn run(&self, task: &Task) -> Result<Value, TaskError> {
        match task.kind {
            NodeKind::Http => http_node::run(&self.guard, task).await,
            NodeKind::Transform => transform_node::run(&self.guard, task).await,
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
