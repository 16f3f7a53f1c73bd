use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aob_engine::Plan;
use aob_model::Workflow;
use aob_store::Store;

use crate::RuntimeError;

/// Compiled plans by workflow hash: compiled once per version, shared by every run.
#[derive(Clone, Default)]
pub struct Plans {
    cache: Arc<Mutex<HashMap<String, Arc<Plan>>>>,
    /// (hash, owner) pairs whose blob and grant this process has stored.
    registered: Arc<Mutex<std::collections::HashSet<(String, String)>>>,
}

impl Plans {
    pub fn registered(&self, hash: &str, owner: &str) -> bool {
        self.registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(hash.to_string(), owner.to_string()))
    }

    pub fn mark_registered(&self, hash: &str, owner: &str) {
        self.registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((hash.to_string(), owner.to_string()));
    }

    pub fn insert(&self, plan: Arc<Plan>) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(plan.hash.clone(), plan);
    }

    pub fn compile(&self, workflow: Workflow) -> Result<Arc<Plan>, Vec<aob_model::Issue>> {
        let hash = workflow.content_hash();
        if let Some(p) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&hash) {
            return Ok(p.clone());
        }
        let plan = Arc::new(Plan::new(workflow)?);
        self.insert(plan.clone());
        Ok(plan)
    }

    pub async fn get(&self, store: &dyn Store, hash: &str) -> Result<Arc<Plan>, RuntimeError> {
        if let Some(p) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(hash) {
            return Ok(p.clone());
        }
        let blob = store.get_blob(hash).await?.ok_or_else(|| RuntimeError::NotFound(format!("workflow {hash}")))?;
        let wf = Workflow::from_value(blob.content).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        self.compile(wf).map_err(|issues| RuntimeError::Invalid(format!("{issues:?}")))
    }
}
