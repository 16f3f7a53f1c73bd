//! A read cache of finished runs: `GET /runs/:id` of a finished run is the hot read
//! (clients poll for results) and such a run changes only if it is replayed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aob_store::{RunRecord, Store};

/// Entries kept before the cache starts over; a finished run's record is small.
const CAPACITY: usize = 16_384;

#[derive(Default)]
struct Inner {
    /// Bumped on every invalidation, so a read that raced a commit is not cached.
    generation: u64,
    runs: HashMap<String, Arc<RunRecord>>,
}

#[derive(Clone, Default)]
pub struct RunReads {
    inner: Arc<Mutex<Inner>>,
}

impl RunReads {
    pub async fn get(&self, store: &dyn Store, run_id: &str) -> aob_store::Result<Option<Arc<RunRecord>>> {
        let generation = {
            let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(r) = g.runs.get(run_id) {
                return Ok(Some(r.clone()));
            }
            g.generation
        };
        let Some(rec) = store.get_run(run_id).await? else { return Ok(None) };
        let rec = Arc::new(rec);
        if rec.state.status.is_terminal() {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if g.generation == generation {
                if g.runs.len() >= CAPACITY {
                    g.runs.clear();
                }
                g.runs.insert(run_id.to_string(), rec.clone());
            }
        }
        Ok(Some(rec))
    }

    /// Called by the engine loop after each commit, for every run it changed.
    pub fn invalidate<'a>(&self, run_ids: impl IntoIterator<Item = &'a String>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.generation += 1;
        for id in run_ids {
            g.runs.remove(id);
        }
    }

    /// Forgets everything (the invalidations of other processes may have been lost).
    pub fn clear(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.generation += 1;
        g.runs.clear();
    }
}
