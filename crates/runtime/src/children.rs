//! `subworkflow` nodes: a child run per attempt, with an id derived from the attempt
//! so that a re-dispatched attempt finds its child instead of starting a second one.

use async_trait::async_trait;
use serde_json::{Value, json};

use aob_engine::{RunStatus, Task, TaskError};
use aob_exec::ChildRuns;
use aob_model::Workflow;
use aob_model::config::SubworkflowConfig;

use crate::{Handle, StartRun};

pub struct ChildRunner {
    pub handle: Handle,
}

#[async_trait]
impl ChildRuns for ChildRunner {
    async fn run_child(&self, parent: &Task) -> Result<Value, TaskError> {
        let h = &self.handle;
        let cfg: SubworkflowConfig =
            serde_json::from_value(parent.config.clone()).map_err(|e| TaskError::new("invalid_config", format!("subworkflow config: {e}"), false))?;
        let child_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, parent.idempotency_key().as_bytes()).to_string();
        let store_err = |e: aob_store::StoreError| TaskError::new("store_error", e.to_string(), true);
        if h.store.get_run(&child_id).await.map_err(store_err)?.is_none() {
            let owner = h
                .store
                .get_run(&parent.run_id)
                .await
                .map_err(store_err)?
                .map(|r| r.owner)
                .ok_or_else(|| TaskError::new("not_found", "parent run vanished", false))?;
            let (workflow, tag) = match (&cfg.tag, &cfg.workflow) {
                (Some(tag), _) => {
                    let t = h
                        .store
                        .get_tag(&owner, tag)
                        .await
                        .map_err(store_err)?
                        .ok_or_else(|| TaskError::new("not_found", format!("workflow tag '{tag}' not found"), false))?;
                    let blob = h
                        .store
                        .get_blob(&t.hash)
                        .await
                        .map_err(store_err)?
                        .ok_or_else(|| TaskError::new("not_found", format!("workflow {} not found", t.hash), false))?;
                    (blob.content, Some(tag.clone()))
                }
                (None, Some(wf)) => (wf.clone(), None),
                (None, None) => return Err(TaskError::new("invalid_config", "subworkflow needs tag or workflow", false)),
            };
            let wf = Workflow::from_value(workflow).map_err(|e| TaskError::new("invalid_workflow", e.to_string(), false))?;
            let plan = h
                .register(wf, &owner)
                .await
                .map_err(|e| TaskError::new("invalid_workflow", e.to_string(), false))?;
            let inputs = if cfg.inputs.is_null() { json!({}) } else { cfg.inputs.clone() };
            let start = StartRun {
                run_id: child_id.clone(),
                owner,
                plan,
                inputs,
                tag,
                parent_run_id: Some(parent.run_id.clone()),
                idempotency_key: None,
                settings: Default::default(),
            };
            match h.start(start).await {
                Ok(_) | Err(crate::RuntimeError::Conflict(_)) => {}
                Err(e) => return Err(TaskError::new("child_start_failed", e.to_string(), true)),
            }
        }
        let rec = h
            .wait_terminal(&child_id)
            .await
            .map_err(|e| TaskError::new("child_failed", e.to_string(), true))?;
        match rec.status {
            RunStatus::Completed => Ok(json!({"run_id": child_id, "outputs": rec.outputs.unwrap_or(Value::Null)})),
            other => Err(TaskError::new(
                "child_failed",
                format!("child run {child_id} ended {}: {}", other.as_str(), rec.error.unwrap_or(Value::Null)),
                false,
            )),
        }
    }
}
