//! Reading step parameters while collecting every problem, so validation reports all of them
//! at once and execution uses exactly the same checks.

use serde_json::{Map, Value};

use crate::path::Path;
use crate::value::type_name;

/// A problem as (JSON pointer relative to the step list, message).
pub(crate) type Problem = (String, String);

/// Keys a step may carry for documentation without being a parameter of the primitive.
const METADATA_KEYS: [&str; 5] = ["step", "id", "name", "description", "comment"];

pub(crate) struct Params<'a> {
    obj: &'a Map<String, Value>,
    base: String,
    allow_metadata: bool,
    known: Vec<&'static str>,
    problems: Vec<Problem>,
}

impl<'a> Params<'a> {
    pub(crate) fn step(obj: &'a Map<String, Value>) -> Self {
        Self {
            obj,
            base: String::new(),
            allow_metadata: true,
            known: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Parameters of an object nested inside the step, e.g. one filter condition.
    pub(crate) fn nested(&self, pointer: &str, obj: &'a Map<String, Value>) -> Self {
        Self {
            obj,
            base: format!("{}{pointer}", self.base),
            allow_metadata: false,
            known: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Merges a nested reader's problems, including its unknown keys.
    pub(crate) fn absorb(&mut self, child: Params<'_>) {
        self.problems.extend(child.finish());
    }

    pub(crate) fn pointer(&self, key: &str) -> String {
        format!("{}/{}", self.base, escape(key))
    }

    /// Records a problem at `suffix`, a pointer relative to this reader (e.g. `/k` or `/right/3`).
    pub(crate) fn problem(&mut self, suffix: &str, message: impl Into<String>) {
        self.problems.push((format!("{}{suffix}", self.base), message.into()));
    }

    pub(crate) fn problem_at(&mut self, key: &str, message: impl Into<String>) {
        let pointer = self.pointer(key);
        self.problems.push((pointer, message.into()));
    }

    pub(crate) fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    /// The raw value, with JSON null kept (it is meaningful as a comparison operand).
    pub(crate) fn raw(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.obj.get(key)
    }

    /// The value, where null counts as absent: generated pipelines often write `"field": null`
    /// to mean "not set".
    pub(crate) fn value(&mut self, key: &'static str) -> Option<&'a Value> {
        self.raw(key).filter(|v| !v.is_null())
    }

    pub(crate) fn str(&mut self, key: &'static str) -> Option<&'a str> {
        match self.value(key)? {
            Value::String(s) => Some(s),
            other => {
                let message = format!("must be a string, got {}", type_name(other));
                self.problem_at(key, message);
                None
            }
        }
    }

    pub(crate) fn required_str(&mut self, key: &'static str) -> Option<&'a str> {
        if self.value(key).is_none() {
            self.problem_at(key, "is required");
            return None;
        }
        self.str(key)
    }

    pub(crate) fn bool(&mut self, key: &'static str, default: bool) -> bool {
        match self.value(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                let message = format!("must be a boolean, got {}", type_name(other));
                self.problem_at(key, message);
                default
            }
        }
    }

    /// One of `allowed`, returned as the static spelling so callers can match on it.
    pub(crate) fn choice(&mut self, key: &'static str, allowed: &[&'static str], default: &'static str) -> &'static str {
        let Some(given) = self.str(key) else {
            return default;
        };
        match allowed.iter().find(|a| **a == given) {
            Some(found) => found,
            None => {
                let message = format!("must be one of: {}, got `{given}`", allowed.join(", "));
                self.problem_at(key, message);
                default
            }
        }
    }

    pub(crate) fn path(&mut self, key: &'static str) -> Option<Path> {
        let text = self.str(key)?;
        match Path::parse(text) {
            Ok(path) => Some(path),
            Err(message) => {
                self.problem_at(key, format!("invalid field path: {message}"));
                None
            }
        }
    }

    pub(crate) fn required_path(&mut self, key: &'static str) -> Option<Path> {
        if self.value(key).is_none() {
            self.problem_at(key, "is required");
            return None;
        }
        self.path(key)
    }

    /// Ends reading: any key not asked for is reported, which catches misspelt parameters
    /// that would otherwise silently fall back to a default.
    pub(crate) fn finish(mut self) -> Vec<Problem> {
        let unknown: Vec<&String> = self
            .obj
            .keys()
            .filter(|k| {
                let key = k.as_str();
                let is_metadata = self.allow_metadata && METADATA_KEYS.contains(&key);
                !(self.known.contains(&key) || is_metadata)
            })
            .collect();
        let mut expected: Vec<&str> = Vec::new();
        for key in &self.known {
            if !expected.contains(key) {
                expected.push(key);
            }
        }
        for key in unknown {
            let message = format!("unknown parameter; expected one of: {}", expected.join(", "));
            let pointer = self.pointer(key);
            self.problems.push((pointer, message));
        }
        self.problems
    }
}

/// Escapes a key as one JSON pointer token (RFC 6901).
pub(crate) fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn collects_all_problems_and_unknown_keys() {
        let o = obj(json!({"step": "x", "a": 1, "b": "zz", "typo": true, "description": "ok"}));
        let mut p = Params::step(&o);
        assert_eq!(p.str("a"), None);
        assert_eq!(p.choice("b", &["asc", "desc"], "asc"), "asc");
        assert_eq!(p.required_str("c"), None);
        let problems = p.finish();
        let pointers: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(pointers, vec!["/a", "/b", "/c", "/typo"]);
        assert!(problems[3].1.contains("a, b, c"));
    }

    #[test]
    fn null_counts_as_absent_but_raw_keeps_it() {
        let o = obj(json!({"a": null}));
        let mut p = Params::step(&o);
        assert_eq!(p.value("a"), None);
        assert_eq!(p.raw("a"), Some(&Value::Null));
        assert!(p.finish().is_empty());
    }

    #[test]
    fn nested_pointers_are_prefixed_and_escaped() {
        let outer = obj(json!({}));
        let inner = obj(json!({"x": 1}));
        let mut p = Params::step(&outer);
        let child = p.nested("/aggregations/a~1b", &inner);
        p.absorb(child);
        let problems = p.finish();
        assert_eq!(problems[0].0, "/aggregations/a~1b/x");
        assert_eq!(escape("a/b~c"), "a~1b~0c");
    }

    #[test]
    fn bool_and_paths() {
        let o = obj(json!({"all": "yes", "field": "a..b", "ok": "a.b"}));
        let mut p = Params::step(&o);
        assert!(!p.bool("all", false));
        assert_eq!(p.path("field"), None);
        assert_eq!(p.path("ok").unwrap().as_str(), "a.b");
        assert_eq!(p.required_path("missing"), None);
        assert_eq!(p.finish().len(), 3);
    }
}
