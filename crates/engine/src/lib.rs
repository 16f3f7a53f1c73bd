//! The engine core: a pure state machine over one run.
//!
//! `apply(plan, state, input, now)` mutates the run state and returns the events to
//! append and the actions (dispatch / abort) for the shell to perform after the
//! state and events are committed.
//!
//! Invariants: no I/O, no clock reads, no randomness (jitter is derived from the
//! attempt id), so every transition can be replayed from the same inputs.

mod backoff;
pub mod patch;
mod plan;
mod run;
mod state;

pub use backoff::retry_delay_ms;
pub use plan::{EdgeKind, Plan, PlanEdge, PlanNode};
pub use run::{Action, Decision, Input, Step, apply, approval_id, in_flight};
pub use state::{Event, ItemState, MapState, NodeState, NodeStatus, Outcome, RunSettings, RunState, RunStatus, Task, TaskError, TaskId, Token};
