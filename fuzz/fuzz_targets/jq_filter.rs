//! jq filters through the `transform` node's path: `validate_pipeline` on a one-step
//! `jq_transform` pipeline (in-process, as the server validates), then the pipeline runs
//! with jq in a forked, CPU-bounded child, as the server runs it in its jq sandbox
//! (`aob_fuzz::ForkJq`).
//!
//! Input: `filter %% input JSON` (input defaults to a small object).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(init: aob_fuzz::init(), |data: &[u8]| {
    let Some(text) = aob_fuzz::text(data) else { return };
    let [filter, input] = aob_fuzz::parts::<2>(text);
    let Some(filter) = filter else { return };
    let steps = json!([{"step": "jq_transform", "filter": filter}]);
    let problems = aob_transform::validate_pipeline(&steps);
    if !problems.is_empty() {
        return;
    }
    let input = aob_fuzz::json_or(input, json!({"items": [{"id": 1, "v": "a"}, {"id": 2, "v": null}], "n": 3}));
    let Value::Array(steps) = steps else { unreachable!() };
    if let Err(aob_transform::TransformError::Step { message, .. }) =
        aob_fuzz::block_on(aob_fuzz::run_pipeline(&steps, input))
    {
        assert!(!message.starts_with("invalid step"), "a filter that validates failed to parse at run time: {message}");
    }
});
