//! The dispatch seam: a queue of attempts with leases. Delivery is at-least-once:
//! a pulled entry that is not acknowledged within its visibility timeout is
//! delivered again (to any worker), and after `max_deliveries` it moves to the
//! dead letters. Every backend implements [`Dispatch`] and passes [`conformance`].
//!
//! Invariant: the queue is not the source of truth. Attempts are recorded in the
//! run state before they are pushed, so a lost entry is re-pushed by recovery and a
//! duplicate is dropped by the engine (it ignores completions of stale attempts).

mod bus;
pub mod conformance;
mod memory;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use bus::{Bus, BusMessage, MemoryBus};
pub use memory::MemoryDispatch;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("dispatch backend unavailable: {0}")]
    Unavailable(String),
    #[error("unknown or expired lease {0}")]
    LeaseLost(String),
}

pub type Result<T> = std::result::Result<T, DispatchError>;

/// One unit of work on the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per attempt; pushing an id that is already queued or leased is a no-op.
    pub id: String,
    /// The queue (work type) it goes to, e.g. `http`.
    pub queue: String,
    pub payload: serde_json::Value,
}

/// A pulled entry, owned by one worker until acknowledged or expired.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub envelope: Envelope,
    /// 1 on first delivery.
    pub delivery: u32,
    /// Identifies this delivery: a stale holder cannot ack or extend a redelivered entry.
    pub token: u64,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub visibility: Duration,
    pub max_deliveries: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            visibility: Duration::from_secs(60),
            max_deliveries: 5,
        }
    }
}

#[async_trait]
pub trait Dispatch: Send + Sync + 'static {
    async fn push(&self, entries: Vec<Envelope>) -> Result<()>;
    /// Up to `max` entries of `queues` (all queues when empty), waiting up to `wait` for the first.
    async fn pull(&self, queues: &[String], max: usize, wait: Duration) -> Result<Vec<Lease>>;
    /// Done with the entry: it will not be delivered again.
    async fn ack(&self, lease: &Lease) -> Result<()>;
    /// Keeps a long attempt's lease alive for another visibility period.
    async fn extend(&self, lease: &Lease) -> Result<()>;
    /// Entries that exceeded `max_deliveries`, oldest first.
    async fn dead_letters(&self) -> Result<Vec<Envelope>>;
}
