//! aob-api
