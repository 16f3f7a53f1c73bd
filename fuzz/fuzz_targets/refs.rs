//! References: `refs::parse`, `whole`, `in_string`, `split_path`, and `refs::resolve`
//! of a config value against a scope of run inputs, node outputs and a map item, as the
//! engine does when it dispatches a node.
//!
//! Input: `string %% config JSON %% inputs JSON %% node outputs JSON object`. The string is
//! scanned for references and also resolved on its own; the config defaults to the string.
#![no_main]

use aob_model::refs::{self, Scope};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(init: aob_fuzz::init(), |data: &[u8]| {
    let Some(text) = aob_fuzz::text(data) else { return };
    let [s, config, inputs, nodes] = aob_fuzz::parts::<4>(text);
    let Some(s) = s else { return };
    let _ = refs::split_path(s);
    let _ = refs::parse(s);
    let whole = refs::whole(s);
    let found = refs::in_string(s);
    if let Some(w) = &whole {
        assert_eq!(found.as_slice(), std::slice::from_ref(w), "a whole reference is the only one in its string");
    }
    let inputs = aob_fuzz::json_or(inputs, json!({"ticket": "T-1", "n": 3, "list": [1, 2, {"k": "v"}]}));
    let nodes = aob_fuzz::json_or(nodes, json!({"fetch": {"body": {"amount": 120, "items": [1, 2, 3]}}, "a": "x"}));
    let item = json!({"id": 7, "name": "ada"});
    let lookup = |id: &str| nodes.get(id);
    for item in [None, Some((&item, 2usize))] {
        let scope = Scope {
            inputs: &inputs,
            node: &lookup,
            item,
        };
        for r in &found {
            let _ = r.resolve(&scope);
        }
        let resolved = refs::resolve(&Value::String(s.to_owned()), &scope);
        if found.is_empty() && !s.contains("${") {
            assert_eq!(resolved.ok(), Some(Value::String(s.to_owned())), "a string without references resolves to itself");
        }
        let config = aob_fuzz::json_or(config, Value::String(s.to_owned()));
        let _ = refs::resolve(&config, &scope);
        let mut collected = Vec::new();
        refs::collect(&config, "/config", &mut collected);
    }
});
