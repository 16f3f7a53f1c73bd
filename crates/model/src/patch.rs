//! Patch operations on a workflow document: RFC 6902 (`add`, `remove`, `replace`,
//! `move`, `copy`, `test` on JSON pointers) and id-based operations that do not
//! depend on array positions (`add_node`, `add_edge`, `remove_edge`, `remove_node`,
//! `replace_node_config`). Operations apply in order; any failure rejects the patch.

use aob_limits::Limits;
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

/// Applies `ops` to `doc` within the default [`Limits`].
pub fn apply(doc: &Value, ops: &[Value]) -> Result<Value, Vec<Issue>> {
    apply_with(doc, ops, &Limits::default())
}

/// Applies `ops` to `doc` and returns the new document, or every problem found. At most
/// `limits.patch_operations` operations; after each one the document must stay within
/// `limits.workflow_bytes` and `limits.json_depth`, so `copy` cannot amplify it.
pub fn apply_with(doc: &Value, ops: &[Value], limits: &Limits) -> Result<Value, Vec<Issue>> {
    if ops.is_empty() {
        return Err(vec![Issue::error("/operations", "invalid_patch", "a patch needs at least one operation")]);
    }
    if ops.len() > limits.patch_operations {
        return Err(vec![Issue::error(
            "/operations",
            "too_large",
            format!("a patch may have at most {} operations, not {}", limits.patch_operations, ops.len()),
        )]);
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
        if let Err(e) = within(&out, limits) {
            // Later operations would work on a document already too big.
            issues.push(Issue::error(format!("/operations/{i}"), e.code(), e.to_string()));
            return Err(issues);
        }
    }
    if issues.is_empty() { Ok(out) } else { Err(issues) }
}

/// Applies RFC 6902 operations one at a time within `limits` (see [`apply_with`]); the
/// error names the failing operation.
pub fn apply_rfc6902(doc: &mut Value, ops: &[Value], limits: &Limits) -> Result<(), Issue> {
    if ops.len() > limits.patch_operations {
        return Err(Issue::error(
            "/operations",
            "too_large",
            format!("a patch may have at most {} operations, not {}", limits.patch_operations, ops.len()),
        ));
    }
    for (i, op) in ops.iter().enumerate() {
        rfc6902(doc, op).map_err(|m| err(i, m))?;
        within(doc, limits).map_err(|e| Issue::error(format!("/operations/{i}"), e.code(), e.to_string()))?;
    }
    Ok(())
}

/// The document's depth and serialized size, measured without allocating it.
pub fn within(doc: &Value, limits: &Limits) -> Result<(), aob_limits::LimitError> {
    limits.check_value("the patched workflow", doc)?;
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let _ = serde_json::to_writer(&mut n, doc);
    if n.0 > limits.workflow_bytes {
        return Err(aob_limits::LimitError::too_large("the patched workflow", n.0, limits.workflow_bytes, "bytes"));
    }
    Ok(())
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

    #[test]
    fn copies_cannot_amplify_a_document() {
        let doc = json!({"nodes": [{"id": "a", "type": "noop", "config": {"output": "x".repeat(10_000)}}], "edges": []});
        let ops: Vec<Value> = (0..60)
            .map(|_| json!({"op": "copy", "from": "/nodes", "path": "/nodes/0/config/more"}))
            .collect();
        let issues = apply(&doc, &ops).unwrap_err();
        assert!(issues.iter().any(|i| i.code == "too_large" || i.code == "too_deep"), "{issues:?}");
        let many: Vec<Value> = (0..500).map(|_| json!({"op": "test", "path": "/edges", "value": []})).collect();
        assert_eq!(apply(&doc, &many).unwrap_err()[0].code, "too_large");
        let mut d = doc.clone();
        let copy: Vec<Value> = (0..40).map(|i| json!({"op": "copy", "from": "", "path": format!("/x{i}")})).collect();
        assert!(apply_rfc6902(&mut d, &copy, &Limits::default()).is_err());
    }
}
