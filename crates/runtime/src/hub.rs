//! Live event fan-out inside one process: a channel per watched run, and one
//! channel for everything (per-owner streams filter it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use aob_store::StoredEvent;

#[derive(Debug, Clone)]
pub struct HubEvent {
    pub owner: Arc<str>,
    pub event: StoredEvent,
    pub terminal: bool,
}

#[derive(Clone)]
pub struct EventHub {
    runs: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<HubEvent>>>>>,
    all: broadcast::Sender<Arc<HubEvent>>,
    capacity: usize,
}

impl EventHub {
    pub fn new(capacity: usize) -> EventHub {
        let (all, _) = broadcast::channel(capacity.max(16));
        EventHub {
            runs: Arc::default(),
            all,
            capacity: capacity.max(16),
        }
    }

    /// Subscribe before reading history, so that nothing falls between the two.
    pub fn subscribe_run(&self, run_id: &str) -> broadcast::Receiver<Arc<HubEvent>> {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.entry(run_id.to_string())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<HubEvent>> {
        self.all.subscribe()
    }

    pub fn publish(&self, events: Vec<Arc<HubEvent>>) {
        if events.is_empty() {
            return;
        }
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if let Some(tx) = runs.get(&e.event.run_id) {
                let _ = tx.send(e.clone());
                // Drop the channel once the run is over and nobody listens.
                if e.terminal && tx.receiver_count() == 0 {
                    runs.remove(&e.event.run_id);
                }
            }
            let _ = self.all.send(e);
        }
        runs.retain(|_, tx| tx.receiver_count() > 0);
    }
}
