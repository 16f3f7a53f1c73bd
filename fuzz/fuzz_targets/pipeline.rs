//! The ten pipeline primitives on arbitrary pipelines and inputs: `validate_pipeline`
//! then `run_pipeline_with` (with a fetcher that always fails, so `http_request` never
//! reaches the network, and jq in a forked, CPU-bounded child as in the server).
//!
//! Checks the crate's promise that validation and running share one parser: a pipeline
//! that validates never fails at run time as an invalid step, and one that does not
//! validate never runs.
//!
//! Input: `pipeline JSON %% input JSON` (input defaults to a small table).
#![no_main]

use aob_transform::TransformError;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(init: aob_fuzz::init(), |data: &[u8]| {
    let Some(text) = aob_fuzz::text(data) else { return };
    let [pipeline, input] = aob_fuzz::parts::<2>(text);
    let Some(steps) = pipeline.and_then(|p| serde_json::from_str::<Value>(p).ok()) else { return };
    let problems = aob_transform::validate_pipeline(&steps);
    let Value::Array(list) = &steps else {
        assert!(!problems.is_empty(), "a pipeline that is not an array validated");
        return;
    };
    let input = aob_fuzz::json_or(
        input,
        json!([
            {"id": 1, "name": "ada", "total": 120, "placed": "2026-11-20T10:00:00Z", "tags": ["x"]},
            {"id": 2, "name": "bob", "total": 35.5, "placed": "21/11/2026", "tags": []},
            {"id": 3, "name": null, "total": "88", "nested": {"a": [1, 2]}}
        ]),
    );
    let result = aob_fuzz::block_on(aob_fuzz::run_pipeline(list, input));
    match (&result, problems.is_empty()) {
        (Err(TransformError::Step { message, .. }), true) => {
            assert!(!message.starts_with("invalid step"), "a pipeline that validates failed as invalid at run time: {message}");
        }
        (Ok(_), false) => panic!("a pipeline with problems ran: {problems:?}"),
        _ => {}
    }
});
