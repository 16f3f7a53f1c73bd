use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use aob_engine::Plan;
use aob_limits::Limits;
use aob_model::Workflow;
use aob_store::Store;

use crate::RuntimeError;

/// Compiled plans by workflow hash: compiled once per version, shared by every run.
/// The cache is bounded by the size of the definitions it holds (`limits.plan_cache_bytes`);
/// the oldest entries go first (a run holds its plan, so eviction only costs a recompile).
#[derive(Clone)]
pub struct Plans {
    cache: Arc<Mutex<Cache>>,
    /// (hash, owner) pairs whose blob and grant this process has stored.
    registered: Arc<Mutex<std::collections::HashSet<(String, String)>>>,
    /// What a stored workflow may have been validated against (every tenant's widest quota).
    limits: Arc<Limits>,
}

#[derive(Default)]
struct Cache {
    plans: HashMap<String, (Arc<Plan>, usize)>,
    order: VecDeque<String>,
    bytes: usize,
}

impl Cache {
    fn insert(&mut self, plan: Arc<Plan>, max_bytes: usize) {
        if self.plans.contains_key(&plan.hash) {
            return;
        }
        let size = serde_json::to_vec(&plan.workflow).map_or(0, |b| b.len());
        while self.bytes + size > max_bytes {
            let Some(old) = self.order.pop_front() else { break };
            if let Some((_, s)) = self.plans.remove(&old) {
                self.bytes -= s;
            }
        }
        self.bytes += size;
        self.order.push_back(plan.hash.clone());
        self.plans.insert(plan.hash.clone(), (plan, size));
    }
}

impl Default for Plans {
    fn default() -> Self {
        Plans::new(&Limits::default())
    }
}

impl Plans {
    pub fn new(limits: &Limits) -> Plans {
        Plans {
            cache: Default::default(),
            registered: Default::default(),
            limits: Arc::new(limits.widest()),
        }
    }

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
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(plan, self.limits.plan_cache_bytes);
    }

    fn cached(&self, hash: &str) -> Option<Arc<Plan>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).plans.get(hash).map(|(p, _)| p.clone())
    }

    pub fn compile(&self, workflow: Workflow) -> Result<Arc<Plan>, Vec<aob_model::Issue>> {
        let hash = workflow.content_hash();
        if let Some(p) = self.cached(&hash) {
            return Ok(p);
        }
        let plan = Arc::new(Plan::new_with(workflow, &self.limits)?);
        self.insert(plan.clone());
        Ok(plan)
    }

    pub async fn get(&self, store: &dyn Store, hash: &str) -> Result<Arc<Plan>, RuntimeError> {
        if let Some(p) = self.cached(hash) {
            return Ok(p);
        }
        let blob = store.get_blob(hash).await?.ok_or_else(|| RuntimeError::NotFound(format!("workflow {hash}")))?;
        let wf = Workflow::from_value(blob.content).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        self.compile(wf).map_err(|issues| RuntimeError::Invalid(format!("{issues:?}")))
    }

    /// The limits plans are compiled within.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cache_is_bounded_by_bytes() {
        let limits = Limits {
            plan_cache_bytes: 4_000,
            ..Limits::default()
        };
        let plans = Plans::new(&limits);
        for i in 0..50 {
            let wf = Workflow::from_value(json!({"name": format!("w{i}"), "description": "x".repeat(300), "nodes": [{"id": "a", "type": "noop"}]})).unwrap();
            plans.compile(wf).unwrap();
        }
        let cache = plans.cache.lock().unwrap();
        assert!(
            cache.bytes <= 4_000 && cache.plans.len() < 50 && !cache.plans.is_empty(),
            "{} bytes",
            cache.bytes
        );
    }
}
