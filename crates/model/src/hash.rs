//! Content addressing: a workflow is stored under the sha256 of its canonical form.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Workflow;

/// Recursively sorts object keys so that equal documents serialize to equal bytes.
pub fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::with_capacity(map.len());
            for k in keys {
                out.insert(k.clone(), canonical(&map[k]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// `sha256:<hex>` of the canonical JSON bytes.
pub fn content_hash(value: &Value) -> String {
    let bytes = canonical(value).to_string();
    format!("sha256:{}", hex::encode(Sha256::digest(bytes.as_bytes())))
}

impl Workflow {
    pub fn to_canonical_json(&self) -> Value {
        canonical(&serde_json::to_value(self).unwrap_or(Value::Null))
    }

    pub fn content_hash(&self) -> String {
        content_hash(&serde_json::to_value(self).unwrap_or(Value::Null))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_hash() {
        let a = json!({"b": 1, "a": {"y": 2, "x": [ {"q": 1, "p": 2} ]}});
        let b = json!({"a": {"x": [ {"p": 2, "q": 1} ], "y": 2}, "b": 1});
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&json!({"b": 2})));
    }
}
