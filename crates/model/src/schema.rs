//! The published JSON Schema of the workflow format: the document shape from the
//! types themselves, plus one `if type == … then config: …` rule per node type.

use serde_json::{Value, json};

use crate::Workflow;
use crate::config::*;

fn schema_of<T: schemars::JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}

/// The JSON Schema (draft 2020-12) for workflow documents.
pub fn workflow_schema() -> Value {
    let mut root = schema_of::<Workflow>();
    let per_type: Vec<(Vec<&str>, Value)> = vec![
        (vec!["noop", "function", "parallel"], schema_of::<NoopConfig>()),
        (vec!["http"], schema_of::<HttpConfig>()),
        (vec!["agent"], schema_of::<AgentConfig>()),
        (vec!["hitl"], schema_of::<HitlConfig>()),
        (vec!["transform"], schema_of::<TransformConfig>()),
        (vec!["conditional"], schema_of::<ConditionalConfig>()),
        (vec!["loop"], schema_of::<LoopConfig>()),
        (vec!["map"], schema_of::<MapConfig>()),
        (vec!["subworkflow"], schema_of::<SubworkflowConfig>()),
        (vec!["wait"], schema_of::<WaitConfig>()),
        (vec!["aggregate"], json!({"type": "object"})),
    ];
    let mut all_of = Vec::new();
    let defs = root
        .as_object_mut()
        .map(|o| o.entry("$defs").or_insert_with(|| json!({})).clone())
        .unwrap_or_else(|| json!({}));
    let mut defs = defs.as_object().cloned().unwrap_or_default();
    for (names, mut schema) in per_type {
        // Hoist nested definitions so every `$ref` resolves against the root.
        if let Some(obj) = schema.as_object_mut() {
            if let Some(Value::Object(inner)) = obj.remove("$defs") {
                defs.extend(inner);
            }
            obj.remove("$schema");
        }
        let def_name = format!("{}Config", names[0]);
        defs.insert(def_name.clone(), schema);
        all_of.push(json!({
            "if": {"properties": {"type": {"enum": names}}, "required": ["type"]},
            "then": {"properties": {"config": {"$ref": format!("#/$defs/{def_name}")}}}
        }));
    }
    if let Some(node) = defs.get_mut("Node")
        && let Some(obj) = node.as_object_mut()
    {
        obj.insert("allOf".into(), Value::Array(all_of));
        if let Some(Value::Object(props)) = obj.get_mut("properties") {
            props.insert("type".into(), json!({"type": "string", "enum": crate::NodeKind::NAMES}));
        }
    }
    if let Some(obj) = root.as_object_mut() {
        obj.insert("$defs".into(), Value::Object(defs));
        obj.insert("$id".into(), json!("https://aob.dev/schema/workflow.json"));
        obj.insert("title".into(), json!("aob workflow"));
    }
    root
}

#[cfg(test)]
mod tests {
    #[test]
    fn schema_names_every_type() {
        let s = super::workflow_schema();
        let text = s.to_string();
        for t in ["httpConfig", "loopConfig", "mapConfig", "waitConfig"] {
            assert!(text.contains(t), "{t}");
        }
        assert_eq!(s["$defs"]["Node"]["properties"]["type"]["enum"][0], "noop");
    }
}
