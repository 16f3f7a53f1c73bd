//! Workflow text → `Workflow::parse` (JSON or YAML, as `aob validate` and the API's
//! text bodies do), and the text as a JSON value → `parse_and_validate` → `Plan::new`
//! (what `POST /api/v1/workflows` does before storing), plus the content hash.
#![no_main]

use aob_model::Workflow;
use aob_model::validate::parse_and_validate;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(init: aob_fuzz::init(), |data: &[u8]| {
    let Some(text) = aob_fuzz::text(data) else { return };
    if let Ok(wf) = Workflow::parse(text) {
        let _ = aob_model::validate(&wf);
        let _ = wf.content_hash();
    }
    // The API takes the document as JSON; YAML text is turned into a value first.
    let doc: Option<Value> = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).ok()
    } else {
        serde_yaml_ng::from_str(text).ok()
    };
    let Some(doc) = doc else { return };
    if let Ok((wf, _warnings)) = parse_and_validate(&doc) {
        let hash = wf.content_hash();
        // A document that validates must compile: the server registers it right after.
        let plan = aob_engine::Plan::new(wf).unwrap_or_else(|issues| panic!("validated workflow does not compile: {issues:?}"));
        assert_eq!(plan.hash, hash, "plan hash is the workflow's content hash");
    }
});
