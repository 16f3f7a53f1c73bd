//! Workflow definitions: the format, parsing (JSON and YAML), references, conditions,
//! validation, canonical hashing and the published JSON Schema.
//!
//! Invariant: this crate is pure. It does no I/O and reads no clock; everything it
//! knows comes in as arguments.

pub mod condition;
pub mod config;
pub mod hash;
pub mod patch;
pub mod refs;
pub mod schema;
pub mod validate;
mod workflow;

pub use validate::{Issue, Severity, validate};
pub use workflow::{Edge, EdgeOn, Join, Node, NodeKind, OnError, ParseError, RetryPolicy, Workflow};
