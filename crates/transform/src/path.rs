//! Dotted field paths (`a.b.0.c`) used by every record-oriented primitive.

use serde_json::{Map, Value};

use crate::value::type_name;

/// A parsed dotted path. Numeric segments index arrays; on objects they are plain keys,
/// so a key such as `"0"` stays reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Path {
    text: String,
    segments: Vec<String>,
}

impl Path {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".to_owned());
        }
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!("`{text}` has an empty segment"));
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The path as the user wrote it; also used as the output key for projected fields.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The key name when the path is a single top-level key.
    pub(crate) fn single_key(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    /// `None` means the field is missing, which several primitives treat differently from `null`.
    pub(crate) fn get<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        self.segments.iter().try_fold(root, |value, segment| child(value, segment))
    }

    /// Like [`Path::get`], starting from an object's entries.
    pub(crate) fn get_in<'v>(&self, map: &'v Map<String, Value>) -> Option<&'v Value> {
        let (first, rest) = self.segments.split_first()?;
        rest.iter().try_fold(map.get(first)?, |value, segment| child(value, segment))
    }

    /// Writes `new` at this path, creating intermediate objects where the path is missing or null.
    pub(crate) fn set(&self, root: &mut Value, new: Value) -> Result<(), String> {
        let Some((last, parents)) = self.segments.split_last() else {
            return Err("empty path".to_owned());
        };
        let mut current = root;
        for segment in parents {
            current = child_mut(current, segment, &self.text)?;
        }
        if current.is_null() {
            *current = Value::Object(Map::new());
        }
        match current {
            Value::Object(map) => {
                map.insert(last.clone(), new);
                Ok(())
            }
            Value::Array(items) => {
                let len = items.len();
                let slot = last
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| items.get_mut(i))
                    .ok_or_else(|| format!("cannot set `{}`: index `{last}` is out of range for an array of {len}", self.text))?;
                *slot = new;
                Ok(())
            }
            other => Err(format!("cannot set `{}`: the parent is a {}", self.text, type_name(other))),
        }
    }
}

fn child<'v>(value: &'v Value, segment: &str) -> Option<&'v Value> {
    match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

fn child_mut<'v>(value: &'v mut Value, segment: &str, path: &str) -> Result<&'v mut Value, String> {
    if value.is_null() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => Ok(map.entry(segment.to_owned()).or_insert(Value::Null)),
        Value::Array(items) => {
            let len = items.len();
            segment
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get_mut(i))
                .ok_or_else(|| format!("cannot set `{path}`: index `{segment}` is out of range for an array of {len}"))
        }
        other => Err(format!("cannot set `{path}`: `{segment}` is inside a {}", type_name(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(s: &str) -> Path {
        Path::parse(s).unwrap()
    }

    #[test]
    fn parse_rejects_empty_and_empty_segments() {
        assert!(Path::parse("").is_err());
        assert!(Path::parse("a..b").is_err());
        assert!(Path::parse(".a").is_err());
        assert!(Path::parse("a.").is_err());
        assert_eq!(path("a.b").as_str(), "a.b");
    }

    #[test]
    fn get_walks_objects_and_arrays() {
        let v = json!({"a": {"b": [{"c": 1}, {"c": 2}]}, "0": "zero"});
        assert_eq!(path("a.b.1.c").get(&v), Some(&json!(2)));
        assert_eq!(path("0").get(&v), Some(&json!("zero")));
        assert_eq!(path("a.b.5.c").get(&v), None);
        assert_eq!(path("a.b.x").get(&v), None);
        assert_eq!(path("a.b.0.c.d").get(&v), None);
    }

    #[test]
    fn get_distinguishes_null_from_missing() {
        let v = json!({"a": null});
        assert_eq!(path("a").get(&v), Some(&Value::Null));
        assert_eq!(path("b").get(&v), None);
    }

    #[test]
    fn set_creates_intermediate_objects() {
        let mut v = json!({"a": 1});
        path("b.c.d").set(&mut v, json!(true)).unwrap();
        assert_eq!(v, json!({"a": 1, "b": {"c": {"d": true}}}));
        let mut v = json!({"a": null});
        path("a.b").set(&mut v, json!(1)).unwrap();
        assert_eq!(v, json!({"a": {"b": 1}}));
    }

    #[test]
    fn set_into_arrays_and_errors() {
        let mut v = json!({"a": [1, 2]});
        path("a.1").set(&mut v, json!(9)).unwrap();
        assert_eq!(v, json!({"a": [1, 9]}));
        assert!(path("a.2").set(&mut v, json!(9)).is_err());
        assert!(path("a.0.x").set(&mut v, json!(9)).is_err());
        let mut s = json!("text");
        assert!(path("x").set(&mut s, json!(1)).is_err());
    }

    #[test]
    fn single_key() {
        assert_eq!(path("id").single_key(), Some("id"));
        assert_eq!(path("a.id").single_key(), None);
    }
}
