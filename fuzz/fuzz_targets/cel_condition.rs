//! CEL edge and loop conditions: `Condition::compile` then `eval` over small JSON values,
//! as the engine does for every conditional edge and loop.
//!
//! Input: `expression %% output JSON %% inputs JSON %% nodes JSON`; a missing or invalid
//! JSON part gets a small default so most inputs reach evaluation.
#![no_main]

use aob_model::condition::Condition;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(init: aob_fuzz::init(), |data: &[u8]| {
    let Some(text) = aob_fuzz::text(data) else { return };
    let [expr, output, inputs, nodes] = aob_fuzz::parts::<4>(text);
    let Some(expr) = expr else { return };
    let Ok(cond) = Condition::compile(expr) else { return };
    let output = aob_fuzz::json_or(output, json!({"body": {"score": 85, "items": [1, 2, 3]}, "approved": true, "n": 1}));
    let inputs = aob_fuzz::json_or(inputs, json!({"mode": "x", "threshold": 100, "tags": ["a"]}));
    let nodes = aob_fuzz::json_or(nodes, json!({"a": {"n": 1, "s": "text"}}));
    let _ = cond.eval(&output, &inputs, &nodes);
});
