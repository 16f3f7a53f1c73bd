//! Patch operations on a workflow document: RFC 6902 (`add`, `remove`, `replace`,
//! `move`, `copy`, `test` on JSON pointers) and id-based operations that do not
//! depend on array positions (`add_node`, `add_edge`, `remove_edge`, `remove_node`,
//! `replace_node_config`). Operations apply in order; any failure rejects the patch.

use serde_json::{Value, json};

use crate::validate::Issue;

fn err(i: usize, message: impl Into<String>) -> Issue {
    Issue::error(format!("/operations/{i}"), "invalid_patch", message)
}

fn arr<'a>(doc: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    if !doc.get(key).is_some_and(Value::is_array) {
        doc[key] = json!([]);
    }
    match doc.get_mut(key) {
        Some(Value::Array(a)) => a,
        _ => unreachable!("just set to an array"),
    }
}

fn str_field<'a>(op: &'a Value, key: &str) -> Option<&'a str> {
    op.get(key).and_then(Value::as_str)
}

/// Applies `ops` to `doc` and returns the new document, or every problem found.
pub fn apply(doc: &Value, ops: &[Value]) -> Result<Value, Vec<Issue>> {
    if ops.is_empty() {
        return Err(vec![Issue::error("/operations", "invalid_patch", "a patch needs at least one operation")]);
    }
    let mut out = doc.clone();
    let mut issues = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let Some(name) = str_field(op, "op") else {
            issues.push(err(i, "every operation needs an `op`"));
            continue;
        };
        let r = match name {
            "add" | "remove" | "replace" | "move" | "copy" | "test" => rfc6902(&mut out, op),
            "add_node" => add_node(&mut out, op),
            "add_edge" => add_edge(&mut out, op),
            "remove_edge" => remove_edge(&mut out, op),
            "remove_node" => remove_node(&mut out, op),
            "replace_node_config" => replace_node_config(&mut out, op),
            other => Err(format!(
                "unknown op '{other}'; expected an RFC 6902 op or add_node, add_edge, remove_edge, remove_node, replace_node_config"
            )),
        };
        if let Err(m) = r {
            issues.push(err(i, m));
        }
    }
    if issues.is_empty() { Ok(out) } else { Err(issues) }
}

fn rfc6902(doc: &mut Value, op: &Value) -> Result<(), String> {
    let p: json_patch::Patch = serde_json::from_value(Value::Array(vec![op.clone()])).map_err(|e| format!("malformed operation: {e}"))?;
    json_patch::patch(doc, &p).map_err(|e| e.to_string())
}

fn add_node(doc: &mut Value, op: &Value) -> Result<(), String> {
    let node = op.get("node").filter(|n| n.is_object()).ok_or("add_node needs a `node` object")?;
    let id = str_field(node, "id").ok_or("the node needs an `id`")?;
    let nodes = arr(doc, "nodes");
    if nodes.iter().any(|n| str_field(n, "id") == Some(id)) {
        return Err(format!("node '{id}' already exists"));
    }
    nodes.push(node.clone());
    Ok(())
}

fn add_edge(doc: &mut Value, op: &Value) -> Result<(), String> {
    let edge = op.get("edge").filter(|e| e.is_object()).ok_or("add_edge needs an `edge` object")?;
    let (from, to) = (
        str_field(edge, "from").ok_or("the edge needs `from`")?,
        str_field(edge, "to").ok_or("the edge needs `to`")?,
    );
    let edges = arr(doc, "edges");
    if edges.iter().any(|e| str_field(e, "from") == Some(from) && str_field(e, "to") == Some(to)) {
        return Err(format!("edge {from} → {to} already exists"));
    }
    edges.push(edge.clone());
    Ok(())
}

fn remove_edge(doc: &mut Value, op: &Value) -> Result<(), String> {
    let (from, to) = (
        str_field(op, "from").ok_or("remove_edge needs `from`")?,
        str_field(op, "to").ok_or("remove_edge needs `to`")?,
    );
    let edges = arr(doc, "edges");
    let before = edges.len();
    edges.retain(|e| !(str_field(e, "from") == Some(from) && str_field(e, "to") == Some(to)));
    if edges.len() == before {
        return Err(format!("no edge {from} → {to}"));
    }
    Ok(())
}

fn remove_node(doc: &mut Value, op: &Value) -> Result<(), String> {
    let id = str_field(op, "id").ok_or("remove_node needs `id`")?.to_string();
    let nodes = arr(doc, "nodes");
    let before = nodes.len();
    nodes.retain(|n| str_field(n, "id") != Some(id.as_str()));
    if nodes.len() == before {
        return Err(format!("no node '{id}'"));
    }
    // Its edges go with it: an edge to nowhere is never what the author meant.
    arr(doc, "edges").retain(|e| str_field(e, "from") != Some(id.as_str()) && str_field(e, "to") != Some(id.as_str()));
    Ok(())
}

fn replace_node_config(doc: &mut Value, op: &Value) -> Result<(), String> {
    let id = str_field(op, "id").ok_or("replace_node_config needs `id`")?;
    let config = op.get("config").ok_or("replace_node_config needs `config`")?;
    let node = arr(doc, "nodes")
        .iter_mut()
        .find(|n| str_field(n, "id") == Some(id))
        .ok_or_else(|| format!("no node '{id}'"))?;
    node["config"] = config.clone();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_based_and_rfc6902_ops() {
        let doc = json!({"nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}], "edges": [{"from": "a", "to": "b"}]});
        let ops = vec![
            json!({"op": "add_node", "node": {"id": "n", "type": "noop"}}),
            json!({"op": "add_edge", "edge": {"from": "a", "to": "n"}}),
            json!({"op": "add_edge", "edge": {"from": "n", "to": "b"}}),
            json!({"op": "remove_edge", "from": "a", "to": "b"}),
            json!({"op": "replace_node_config", "id": "b", "config": {"output": 1}}),
            json!({"op": "add", "path": "/name", "value": "x"}),
        ];
        let out = apply(&doc, &ops).unwrap();
        assert_eq!(out["edges"], json!([{"from": "a", "to": "n"}, {"from": "n", "to": "b"}]));
        assert_eq!(out["nodes"][1]["config"], json!({"output": 1}));
        assert_eq!(out["name"], "x");
        let bad = apply(
            &doc,
            &[
                json!({"op": "remove_edge", "from": "b", "to": "a"}),
                json!({"op": "remove", "path": "/nodes/9"}),
                json!({"op": "frob"}),
            ],
        )
        .unwrap_err();
        assert_eq!(
            bad.iter().map(|i| i.pointer.as_str()).collect::<Vec<_>>(),
            vec!["/operations/0", "/operations/1", "/operations/2"]
        );
        let out = apply(&doc, &[json!({"op": "remove_node", "id": "b"})]).unwrap();
        assert_eq!(out["edges"], json!([]));
    }
}
