//! aob-exec
