//! The runtime: the I/O shell around the pure engine.
//!
//! One engine loop owns the in-memory state of active runs. It applies inputs with
//! the pure engine, commits every resulting state and its events in one group
//! commit, and only then dispatches tasks and publishes events. Workers execute
//! tasks and send completions back into the loop.
//!
//! Invariants:
//! - nothing is dispatched or published before the transition that caused it is committed;
//! - a run's transitions are applied by exactly one loop, one at a time;
//! - a run with nothing in flight is not kept in memory (only its next timer is).

mod calls;
mod children;
mod clock;
pub mod cluster;
#[doc(hidden)]
pub mod failpoint;
mod hub;
mod journal;
mod metrics;
mod plans;
mod reads;
mod service;
mod workers;

pub use calls::PatchRequest;
pub use clock::{Clock, SystemClock};
pub use cluster::{ClusterOptions, Roles};
pub use hub::{EventHub, HubEvent};
pub use journal::AttemptJournal;
pub use metrics::Metrics;
pub use plans::Plans;
pub use reads::RunReads;
pub use service::{Handle, Options, Runtime, RuntimeError, StartRun};
