//! `regex_extract`: pull matches out of a string, a list of strings, or a field of each record.

use regex::{Captures, Regex, RegexBuilder};
use serde_json::{Map, Value};

use crate::params::Params;
use crate::path::Path;
use crate::value::type_name;

/// Patterns come from workflow authors (and LLMs), so compiled size is bounded to keep one
/// step from taking megabytes of memory or seconds to compile.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

pub(crate) fn build_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regular expression: {e}"))
}

enum Group {
    Index(usize),
    Name(String),
    /// No group was chosen and the pattern has named groups: return them all as an object.
    AllNamed,
}

pub(crate) struct RegexExtract {
    regex: Regex,
    group: Group,
    all: bool,
    /// With a field, records are updated in place; `into` is where the result is written.
    target: Option<(Path, Path)>,
}

impl RegexExtract {
    pub(crate) fn parse(p: &mut Params<'_>) -> Option<Self> {
        let regex = p
            .required_str("pattern")
            .and_then(|pattern| build_regex(pattern).map_err(|message| p.problem_at("pattern", message)).ok());
        let field = p.path("field");
        let into = p.path("into");
        if into.is_some() && field.is_none() && p.value("field").is_none() {
            p.problem_at("into", "requires `field`");
        }
        let all = p.bool("all", false);
        let group_param = p.value("group");
        let regex = regex?;
        let group = match group_param {
            None if regex.capture_names().flatten().next().is_some() => Group::AllNamed,
            None if regex.captures_len() > 1 => Group::Index(1),
            None => Group::Index(0),
            Some(Value::Number(n)) => match n.as_u64().and_then(|i| usize::try_from(i).ok()) {
                Some(i) if i < regex.captures_len() => Group::Index(i),
                _ => {
                    p.problem_at(
                        "group",
                        format!("group {n} does not exist; the pattern has groups 0 to {}", regex.captures_len() - 1),
                    );
                    return None;
                }
            },
            Some(Value::String(name)) => {
                if regex.capture_names().flatten().any(|n| n == name) {
                    Group::Name(name.clone())
                } else {
                    p.problem_at("group", format!("the pattern has no group named `{name}`"));
                    return None;
                }
            }
            Some(other) => {
                p.problem_at("group", format!("must be a group index or name, got {}", type_name(other)));
                return None;
            }
        };
        let target = match field {
            Some(field) => {
                let into = match into {
                    Some(into) => into,
                    None => Path::parse(&format!("{}_match", field.as_str()))
                        .map_err(|message| p.problem_at("field", message))
                        .ok()?,
                };
                Some((field, into))
            }
            None => None,
        };
        Some(Self { regex, group, all, target })
    }

    fn pick(&self, captures: &Captures<'_>) -> Value {
        let text = |m: Option<regex::Match<'_>>| m.map_or(Value::Null, |m| Value::String(m.as_str().to_owned()));
        match &self.group {
            Group::Index(i) => text(captures.get(*i)),
            Group::Name(name) => text(captures.name(name)),
            Group::AllNamed => Value::Object(
                self.regex
                    .capture_names()
                    .flatten()
                    .map(|name| (name.to_owned(), text(captures.name(name))))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }

    /// No match yields null, or an empty array with `all`.
    fn extract(&self, haystack: &str) -> Value {
        if self.all {
            Value::Array(self.regex.captures_iter(haystack).map(|c| self.pick(&c)).collect())
        } else {
            self.regex.captures(haystack).map_or(Value::Null, |c| self.pick(&c))
        }
    }

    /// Scalars are matched against their text so ids and numbers can be mined too; null and
    /// missing values have nothing to match.
    fn extract_value(&self, value: Option<&Value>) -> Result<Value, String> {
        match value {
            None | Some(Value::Null) => Ok(Value::Null),
            Some(Value::String(s)) => Ok(self.extract(s)),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(self.extract(&v.to_string())),
            Some(other) => Err(format!("cannot match a regular expression against {}", type_name(other))),
        }
    }

    pub(crate) fn run(&self, input: Value) -> Result<Value, String> {
        let Some((field, into)) = &self.target else {
            return match input {
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        self.extract_value(Some(item))
                            .map_err(|e| format!("item {i}: {e} (set `field` to extract from records)"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array),
                Value::Object(_) => Err("input is a record: set `field` to choose the field to extract from".to_owned()),
                other => self.extract_value(Some(&other)),
            };
        };
        let apply = |record: &mut Value| -> Result<(), String> {
            if !record.is_object() {
                return Err(format!("expected an object, got {}", type_name(record)));
            }
            let extracted = self.extract_value(field.get(record)).map_err(|e| format!("field `{}`: {e}", field.as_str()))?;
            into.set(record, extracted)
        };
        match input {
            Value::Array(mut records) => {
                for (i, record) in records.iter_mut().enumerate() {
                    apply(record).map_err(|e| format!("record {i}: {e}"))?;
                }
                Ok(Value::Array(records))
            }
            mut record @ Value::Object(_) => {
                apply(&mut record)?;
                Ok(record)
            }
            other => Err(format!("with `field`, expected a record or an array of records, got {}", type_name(&other))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(step: Value) -> Result<RegexExtract, Vec<(String, String)>> {
        let obj = step.as_object().unwrap().clone();
        let mut p = Params::step(&obj);
        let parsed = RegexExtract::parse(&mut p);
        let problems = p.finish();
        match parsed {
            Some(t) if problems.is_empty() => Ok(t),
            _ => Err(problems),
        }
    }

    fn run(step: Value, input: Value) -> Result<Value, String> {
        parse(step).unwrap().run(input)
    }

    #[test]
    fn string_input_default_group_choice() {
        assert_eq!(run(json!({"pattern": "\\d+"}), json!("ab 12 cd 34")).unwrap(), json!("12"));
        assert_eq!(run(json!({"pattern": "id=(\\w+)"}), json!("x id=abc y")).unwrap(), json!("abc"));
        assert_eq!(
            run(json!({"pattern": "(?P<k>\\w+)=(?P<v>\\d+)?"}), json!("a=1")).unwrap(),
            json!({"k": "a", "v": "1"})
        );
        assert_eq!(
            run(json!({"pattern": "(?P<k>\\w+)=(?P<v>\\d+)?"}), json!("a=")).unwrap(),
            json!({"k": "a", "v": null})
        );
        assert_eq!(run(json!({"pattern": "z"}), json!("abc")).unwrap(), json!(null));
    }

    #[test]
    fn explicit_group_and_all() {
        let step = json!({"pattern": "(\\w)(\\d)", "group": 2, "all": true});
        assert_eq!(run(step, json!("a1 b2 c3")).unwrap(), json!(["1", "2", "3"]));
        let step = json!({"pattern": "(?P<n>\\d)", "group": "n", "all": true});
        assert_eq!(run(step, json!("x")).unwrap(), json!([]));
        let step = json!({"pattern": "(\\w)(\\d)", "group": 0});
        assert_eq!(run(step, json!("a1 b2")).unwrap(), json!("a1"));
    }

    #[test]
    fn records_get_a_match_field() {
        let input = json!([{"t": "order #42"}, {"t": "none"}, {}, {"t": 1234}]);
        let out = run(json!({"pattern": "\\d+", "field": "t"}), input).unwrap();
        assert_eq!(
            out,
            json!([
                {"t": "order #42", "t_match": "42"},
                {"t": "none", "t_match": null},
                {"t_match": null},
                {"t": 1234, "t_match": "1234"}
            ])
        );
        let out = run(
            json!({"pattern": "\\d+", "field": "a.t", "into": "num", "all": true}),
            json!({"a": {"t": "1 2"}}),
        )
        .unwrap();
        assert_eq!(out, json!({"a": {"t": "1 2"}, "num": ["1", "2"]}));
    }

    #[test]
    fn arrays_of_strings_without_field() {
        let out = run(json!({"pattern": "\\d"}), json!(["a1", "b", null])).unwrap();
        assert_eq!(out, json!(["1", null, null]));
        assert_eq!(run(json!({"pattern": "x"}), json!([])).unwrap(), json!([]));
    }

    #[test]
    fn run_errors_are_clear() {
        let err = run(json!({"pattern": "x"}), json!([{"a": 1}])).unwrap_err();
        assert!(err.contains("item 0") && err.contains("field"), "{err}");
        let err = run(json!({"pattern": "x"}), json!({"a": 1})).unwrap_err();
        assert!(err.contains("set `field`"), "{err}");
        let err = run(json!({"pattern": "x", "field": "a"}), json!([{"a": [1]}])).unwrap_err();
        assert!(err.contains("record 0") && err.contains("array"), "{err}");
        let err = run(json!({"pattern": "x", "field": "a"}), json!([1])).unwrap_err();
        assert!(err.contains("record 0"), "{err}");
        assert!(run(json!({"pattern": "x", "field": "a"}), json!("s")).is_err());
    }

    #[test]
    fn validation() {
        let pointer = |step: Value| parse(step).err().unwrap()[0].0.clone();
        assert_eq!(pointer(json!({})), "/pattern");
        assert_eq!(pointer(json!({"pattern": "("})), "/pattern");
        assert_eq!(pointer(json!({"pattern": "(a)", "group": 2})), "/group");
        assert_eq!(pointer(json!({"pattern": "(a)", "group": "nope"})), "/group");
        assert_eq!(pointer(json!({"pattern": "(a)", "group": true})), "/group");
        assert_eq!(pointer(json!({"pattern": "a", "into": "b"})), "/into");
        assert_eq!(pointer(json!({"pattern": "a", "all": 1})), "/all");
    }

    #[test]
    fn oversized_regex_is_rejected() {
        let err = build_regex("\\w{1000}\\w{1000}\\w{1000}").unwrap_err();
        assert!(err.contains("invalid regular expression"), "{err}");
    }
}
