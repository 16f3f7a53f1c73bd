//! References between data: `$inputs.<path>`, `$nodes.<id>.<path>`, `$item`, `$index`
//! as whole values, and `${…}` interpolation inside strings (including the seed's
//! `${$nodes.<id>.<path>}`). A reference to a missing value is an error, never the
//! unresolved text.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    Inputs,
    Node(String),
    /// The current element of a `map` node.
    Item,
    /// The position of the current element of a `map` node.
    Index,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    pub root: Root,
    pub path: Vec<String>,
    /// The reference as written, for error messages.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reference {reference}: {message}")]
pub struct RefError {
    pub reference: String,
    pub message: String,
}

/// Where references look their values up.
pub struct Scope<'a> {
    pub inputs: &'a Value,
    pub node: &'a dyn Fn(&str) -> Option<&'a Value>,
    pub item: Option<(&'a Value, usize)>,
}

/// Splits `a.b[0].c` / `a.b.0.c` into segments.
pub fn split_path(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        while let Some(open) = rest.find('[') {
            if open > 0 {
                out.push(rest[..open].to_string());
            }
            match rest[open..].find(']') {
                Some(close) => {
                    let inner = rest[open + 1..open + close].trim_matches(|c| c == '"' || c == '\'');
                    out.push(inner.to_string());
                    rest = &rest[open + close + 1..];
                }
                None => {
                    out.push(rest[open..].to_string());
                    rest = "";
                }
            }
        }
        if !rest.is_empty() {
            out.push(rest.to_string());
        }
    }
    out
}

/// Parses the body of a reference, without the leading `$` (and without `${`/`}`).
/// Accepts `inputs.x`, `nodes.id.x`, `$nodes.id.x`, `item.x`, `index`.
pub fn parse(body: &str) -> Option<Ref> {
    let text = body.trim();
    let stripped = text.strip_prefix('$').unwrap_or(text);
    let segs = split_path(stripped);
    let (first, rest) = segs.split_first()?;
    let (root, path) = match first.as_str() {
        "inputs" | "input" => (Root::Inputs, rest.to_vec()),
        "nodes" => {
            let (id, path) = rest.split_first()?;
            if id.is_empty() {
                return None;
            }
            (Root::Node(id.clone()), path.to_vec())
        }
        "item" => (Root::Item, rest.to_vec()),
        "index" if rest.is_empty() => (Root::Index, Vec::new()),
        _ => return None,
    };
    Some(Ref {
        root,
        path,
        text: format!("${stripped}"),
    })
}

/// A string that is exactly one reference (`$nodes.a.b`), if it is one.
pub fn whole(s: &str) -> Option<Ref> {
    let body = s.strip_prefix('$')?;
    if body.starts_with('{') || body.contains(char::is_whitespace) {
        return None;
    }
    parse(body)
}

/// Every reference in a string: the whole-value form or each `${…}` piece.
pub fn in_string(s: &str) -> Vec<Ref> {
    if let Some(r) = whole(s) {
        return vec![r];
    }
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                if let Some(r) = parse(&after[..end]) {
                    out.push(r);
                }
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
}

/// Every reference anywhere in a JSON value, with the JSON pointer of the string holding it.
pub fn collect(value: &Value, pointer: &str, out: &mut Vec<(String, Ref)>) {
    match value {
        Value::String(s) => {
            for r in in_string(s) {
                out.push((pointer.to_string(), r));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect(v, &format!("{pointer}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let key = k.replace('~', "~0").replace('/', "~1");
                collect(v, &format!("{pointer}/{key}"), out);
            }
        }
        _ => {}
    }
}

/// Follows a path into a value. Numeric segments index arrays.
pub fn lookup<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut cur = value;
    for seg in path {
        cur = match cur {
            Value::Object(map) => map.get(seg)?,
            Value::Array(items) => {
                if seg == "#" || seg == "length" {
                    return None;
                }
                items.get(seg.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

impl Ref {
    pub fn resolve(&self, scope: &Scope<'_>) -> Result<Value, RefError> {
        let err = |message: String| RefError {
            reference: self.text.clone(),
            message,
        };
        let (base, what): (&Value, String) = match &self.root {
            Root::Inputs => (scope.inputs, "the run inputs".to_string()),
            Root::Node(id) => match (scope.node)(id) {
                Some(v) => (v, format!("the output of node '{id}'")),
                None => return Err(err(format!("node '{id}' has no output (it has not completed)"))),
            },
            Root::Item => match scope.item {
                Some((v, _)) => (v, "the current map item".to_string()),
                None => return Err(err("$item is only defined inside a map node".to_string())),
            },
            Root::Index => match scope.item {
                Some((_, i)) => return Ok(Value::from(i)),
                None => return Err(err("$index is only defined inside a map node".to_string())),
            },
        };
        // `.length` / `.#` on arrays gives the length, as gjson's `#` did in the seed.
        if let Some((last, head)) = self.path.split_last()
            && (last == "#" || last == "length")
            && let Some(Value::Array(items)) = lookup(base, head)
        {
            return Ok(Value::from(items.len()));
        }
        lookup(base, &self.path)
            .cloned()
            .ok_or_else(|| err(format!("path '{}' not found in {what}", self.path.join("."))))
    }
}

/// Replaces references in a JSON value: whole-value strings by the typed value,
/// `${…}` pieces by their text (strings as is, other values as JSON).
pub fn resolve(value: &Value, scope: &Scope<'_>) -> Result<Value, RefError> {
    match value {
        Value::String(s) => resolve_str(s, scope),
        Value::Array(items) => items.iter().map(|v| resolve(v, scope)).collect::<Result<_, _>>().map(Value::Array),
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), resolve(v, scope)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

fn resolve_str(s: &str, scope: &Scope<'_>) -> Result<Value, RefError> {
    if let Some(r) = whole(s) {
        return r.resolve(scope);
    }
    if !s.contains("${") {
        return Ok(Value::String(s.to_string()));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                match parse(&after[..end]) {
                    Some(r) => match r.resolve(scope)? {
                        Value::String(v) => out.push_str(&v),
                        other => out.push_str(&other.to_string()),
                    },
                    // Not a reference: keep the text exactly as written.
                    None => out.push_str(&rest[start..start + 2 + end + 1]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope_with<'a>(inputs: &'a Value, nodes: &'a dyn Fn(&str) -> Option<&'a Value>) -> Scope<'a> {
        Scope {
            inputs,
            node: nodes,
            item: None,
        }
    }

    #[test]
    fn whole_and_interpolated_references() {
        let inputs = json!({"ticket": "T-1", "n": 3});
        let fetch = json!({"body": {"amount": 120, "items": [1, 2, 3]}});
        let nodes = |id: &str| if id == "fetch" { Some(&fetch) } else { None };
        let scope = scope_with(&inputs, &nodes);
        let cfg = json!({
            "a": "$nodes.fetch.body.items",
            "b": "Refund ${nodes.fetch.body.amount} for ${inputs.ticket}",
            "c": "${$nodes.fetch.body.items[1]}",
            "d": "$inputs.n",
            "e": "cost: ${not.a.ref}",
            "f": "$nodes.fetch.body.items.length",
        });
        let out = resolve(&cfg, &scope).unwrap();
        assert_eq!(out["a"], json!([1, 2, 3]));
        assert_eq!(out["b"], json!("Refund 120 for T-1"));
        assert_eq!(out["c"], json!("2"));
        assert_eq!(out["d"], json!(3));
        assert_eq!(out["e"], json!("cost: ${not.a.ref}"));
        assert_eq!(out["f"], json!(3));
    }

    #[test]
    fn missing_values_are_errors() {
        let inputs = json!({});
        let nodes = |_: &str| None;
        let scope = scope_with(&inputs, &nodes);
        let e = resolve(&json!("$nodes.x.y"), &scope).unwrap_err();
        assert!(e.to_string().contains("node 'x' has no output"), "{e}");
        let e = resolve(&json!("id=${inputs.missing}"), &scope).unwrap_err();
        assert!(e.to_string().contains("path 'missing' not found"), "{e}");
    }

    #[test]
    fn collects_pointers() {
        let mut out = Vec::new();
        collect(&json!({"u": "x/${nodes.a.b}", "l": ["$inputs.q"]}), "/config", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, "/config/u");
        assert_eq!(out[0].1.root, Root::Node("a".into()));
        assert_eq!(out[1].0, "/config/l/0");
    }
}
