//! aob-runtime
