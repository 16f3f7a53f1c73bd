//! Record-table primitives: `table_sort`, `table_filter`, `table_select` and `top_k`.

use std::cmp::Ordering;

use regex::Regex;
use serde_json::{Map, Value};

use crate::params::Params;
use crate::path::Path;
use crate::regex_extract::build_regex;
use crate::value::{cmp_numbers, cmp_sort_keys, expect_array, json_eq, type_name};

/// Stable sort by a field (or by the element itself when no field is given).
pub(crate) fn sort_rows(rows: &mut [Value], field: Option<&Path>, descending: bool) {
    fn key<'v>(row: &'v Value, field: Option<&Path>) -> Option<&'v Value> {
        match field {
            Some(path) => path.get(row),
            None => Some(row),
        }
    }
    rows.sort_by(|a, b| cmp_sort_keys(key(a, field), key(b, field), descending));
}

pub(crate) struct Sort {
    field: Option<Path>,
    descending: bool,
}

impl Sort {
    pub(crate) fn parse(p: &mut Params<'_>) -> Option<Self> {
        let field = p.path("field");
        let descending = p.choice("order", &["asc", "desc"], "asc") == "desc";
        Some(Self { field, descending })
    }

    pub(crate) fn run(&self, input: Value) -> Result<Value, String> {
        let mut rows = expect_array(input)?;
        sort_rows(&mut rows, self.field.as_ref(), self.descending);
        Ok(Value::Array(rows))
    }
}

pub(crate) struct TopK {
    k: usize,
    /// Present when a field or an order was given: sort before taking `k`.
    sort: Option<(Option<Path>, bool)>,
}

impl TopK {
    pub(crate) fn parse(p: &mut Params<'_>) -> Option<Self> {
        let k = match p.value("k") {
            None => {
                p.problem_at("k", "is required");
                None
            }
            Some(v) => match v.as_u64().and_then(|k| usize::try_from(k).ok()) {
                Some(k) if k >= 1 => Some(k),
                _ => {
                    p.problem_at("k", format!("must be an integer >= 1, got {v}"));
                    None
                }
            },
        };
        let field = p.path("field");
        let order_given = p.value("order").is_some();
        // "Top" means largest first, so the default order here is descending.
        let descending = p.choice("order", &["asc", "desc"], "desc") == "desc";
        let sort = (field.is_some() || order_given).then_some((field, descending));
        Some(Self { k: k?, sort })
    }

    pub(crate) fn run(&self, input: Value) -> Result<Value, String> {
        let mut rows = expect_array(input)?;
        if let Some((field, descending)) = &self.sort {
            sort_rows(&mut rows, field.as_ref(), *descending);
        }
        rows.truncate(self.k);
        Ok(Value::Array(rows))
    }
}

pub(crate) struct Select {
    /// (output key, source path) in output order.
    fields: Vec<(String, Path)>,
}

impl Select {
    pub(crate) fn parse(p: &mut Params<'_>) -> Option<Self> {
        let mut fields = Vec::new();
        match p.value("fields") {
            None => p.problem_at("fields", "is required"),
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match item.as_str().map(Path::parse) {
                        Some(Ok(path)) => fields.push((path.as_str().to_owned(), path)),
                        Some(Err(message)) => p.problem(&format!("/fields/{i}"), format!("invalid field path: {message}")),
                        None => p.problem(&format!("/fields/{i}"), format!("must be a string, got {}", type_name(item))),
                    }
                }
            }
            Some(Value::Object(map)) => {
                for (out, source) in map {
                    let pointer = format!("/fields/{}", crate::params::escape(out));
                    match source.as_str().map(Path::parse) {
                        Some(Ok(path)) => fields.push((out.clone(), path)),
                        Some(Err(message)) => p.problem(&pointer, format!("invalid field path: {message}")),
                        None => p.problem(&pointer, format!("must be a field path string, got {}", type_name(source))),
                    }
                }
            }
            Some(other) => p.problem_at(
                "fields",
                format!("must be an array of field paths or an object of output name to path, got {}", type_name(other)),
            ),
        }
        if fields.is_empty() && !p.has_problems() {
            p.problem_at("fields", "must name at least one field");
        }
        Some(Self { fields })
    }

    fn project(&self, record: &Value) -> Value {
        let map: Map<String, Value> = self
            .fields
            .iter()
            .map(|(out, path)| (out.clone(), path.get(record).cloned().unwrap_or(Value::Null)))
            .collect();
        Value::Object(map)
    }

    pub(crate) fn run(&self, input: Value) -> Result<Value, String> {
        match input {
            Value::Array(rows) => Ok(Value::Array(rows.iter().map(|row| self.project(row)).collect())),
            Value::Object(_) => Ok(self.project(&input)),
            other => Err(format!("expected an array of records or a record, got {}", type_name(&other))),
        }
    }
}

const OPS: [&str; 14] = [
    "==",
    "!=",
    "<",
    ">",
    "<=",
    ">=",
    "in",
    "not_in",
    "contains",
    "starts_with",
    "ends_with",
    "exists",
    "not_exists",
    "matches",
];

enum Test {
    Eq(Value),
    Ne(Value),
    /// Ordering comparison: passes when the comparison result is one of the listed orderings.
    Cmp(Value, &'static [Ordering]),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Contains(Value),
    StartsWith(String),
    EndsWith(String),
    Exists,
    NotExists,
    Matches(Regex),
}

struct Condition {
    field: Path,
    test: Test,
}

impl Condition {
    fn parse(p: &mut Params<'_>) -> Option<Self> {
        let field = p.required_path("field");
        if p.value("op").is_none() {
            p.problem_at("op", format!("is required; one of: {}", OPS.join(" ")));
        }
        let op = p.str("op");
        let value = p.raw("value");
        let op = op?;
        let test = match op {
            "==" | "!=" => {
                let Some(v) = value else {
                    p.problem_at("value", format!("is required for `{op}`"));
                    return None;
                };
                if op == "==" { Test::Eq(v.clone()) } else { Test::Ne(v.clone()) }
            }
            "<" | ">" | "<=" | ">=" => match value {
                Some(v @ (Value::Number(_) | Value::String(_))) => {
                    let accept: &'static [Ordering] = match op {
                        "<" => &[Ordering::Less],
                        ">" => &[Ordering::Greater],
                        "<=" => &[Ordering::Less, Ordering::Equal],
                        _ => &[Ordering::Greater, Ordering::Equal],
                    };
                    Test::Cmp(v.clone(), accept)
                }
                _ => {
                    p.problem_at("value", format!("must be a number or a string for `{op}`"));
                    return None;
                }
            },
            "in" | "not_in" => match value {
                Some(Value::Array(items)) => {
                    if op == "in" {
                        Test::In(items.clone())
                    } else {
                        Test::NotIn(items.clone())
                    }
                }
                _ => {
                    p.problem_at("value", format!("must be an array for `{op}`"));
                    return None;
                }
            },
            "contains" => match value {
                Some(v) if !v.is_null() => Test::Contains(v.clone()),
                _ => {
                    p.problem_at("value", "is required for `contains`");
                    return None;
                }
            },
            "starts_with" | "ends_with" => match value {
                Some(Value::String(s)) => {
                    if op == "starts_with" {
                        Test::StartsWith(s.clone())
                    } else {
                        Test::EndsWith(s.clone())
                    }
                }
                _ => {
                    p.problem_at("value", format!("must be a string for `{op}`"));
                    return None;
                }
            },
            "exists" => Test::Exists,
            "not_exists" => Test::NotExists,
            "matches" => match value {
                Some(Value::String(pattern)) => match build_regex(pattern) {
                    Ok(re) => Test::Matches(re),
                    Err(message) => {
                        p.problem_at("value", message);
                        return None;
                    }
                },
                _ => {
                    p.problem_at("value", "must be a regular expression string for `matches`");
                    return None;
                }
            },
            other => {
                p.problem_at("op", format!("unknown operator `{other}`; expected one of: {}", OPS.join(" ")));
                return None;
            }
        };
        Some(Self { field: field?, test })
    }

    fn holds(&self, record: &Value) -> bool {
        let found = self.field.get(record);
        let Some(got) = found else {
            return matches!(self.test, Test::NotExists);
        };
        match &self.test {
            Test::Exists => true,
            Test::NotExists => false,
            Test::Eq(v) => json_eq(got, v),
            Test::Ne(v) => !json_eq(got, v),
            Test::Cmp(v, accept) => ordered(got, v).is_some_and(|o| accept.contains(&o)),
            Test::In(items) => items.iter().any(|v| json_eq(got, v)),
            Test::NotIn(items) => !items.iter().any(|v| json_eq(got, v)),
            Test::Contains(v) => contains(got, v),
            Test::StartsWith(s) => got.as_str().is_some_and(|g| g.starts_with(s.as_str())),
            Test::EndsWith(s) => got.as_str().is_some_and(|g| g.ends_with(s.as_str())),
            Test::Matches(re) => got.as_str().is_some_and(|g| re.is_match(g)),
        }
    }
}

/// Ordering comparisons only make sense within numbers or within strings; anything else
/// simply fails the condition instead of aborting a whole pipeline over one odd record.
fn ordered(got: &Value, expected: &Value) -> Option<Ordering> {
    match (got, expected) {
        (Value::Number(a), Value::Number(b)) => Some(cmp_numbers(a, b)),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

fn contains(got: &Value, needle: &Value) -> bool {
    match (got, needle) {
        (Value::String(haystack), Value::String(n)) => haystack.contains(n.as_str()),
        (Value::Array(items), n) => items.iter().any(|item| json_eq(item, n)),
        (Value::Object(map), Value::String(key)) => map.contains_key(key),
        _ => false,
    }
}

pub(crate) struct Filter {
    conditions: Vec<Condition>,
    any: bool,
}

impl Filter {
    pub(crate) fn parse(p: &mut Params<'_>) -> Option<Self> {
        let single = p.value("condition");
        let many = p.value("conditions");
        let any = p.choice("mode", &["all", "any"], "all") == "any";
        let mut conditions = Vec::new();
        let mut parse_one = |p: &mut Params<'_>, pointer: String, raw: &Value| match raw {
            Value::Object(obj) => {
                let mut child = p.nested(&pointer, obj);
                let condition = Condition::parse(&mut child);
                p.absorb(child);
                conditions.extend(condition);
            }
            other => p.problem(&pointer, format!("must be an object {{field, op, value}}, got {}", type_name(other))),
        };
        match (single, many) {
            (Some(_), Some(_)) => p.problem_at("conditions", "give either `condition` or `conditions`, not both"),
            (None, None) => p.problem_at("condition", "is required (or `conditions`)"),
            (Some(raw), None) => parse_one(p, "/condition".to_owned(), raw),
            (None, Some(Value::Array(items))) if items.is_empty() => p.problem_at("conditions", "must list at least one condition"),
            (None, Some(Value::Array(items))) => {
                for (i, raw) in items.iter().enumerate() {
                    parse_one(p, format!("/conditions/{i}"), raw);
                }
            }
            (None, Some(other)) => p.problem_at("conditions", format!("must be an array of conditions, got {}", type_name(other))),
        }
        Some(Self { conditions, any })
    }

    pub(crate) fn run(&self, input: Value) -> Result<Value, String> {
        let rows = expect_array(input)?;
        let kept = rows
            .into_iter()
            .filter(|row| {
                if self.any {
                    self.conditions.iter().any(|c| c.holds(row))
                } else {
                    self.conditions.iter().all(|c| c.holds(row))
                }
            })
            .collect();
        Ok(Value::Array(kept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse<T>(step: Value, f: impl FnOnce(&mut Params<'_>) -> Option<T>) -> Result<T, Vec<(String, String)>> {
        let obj = step.as_object().unwrap().clone();
        let mut p = Params::step(&obj);
        let parsed = f(&mut p);
        let problems = p.finish();
        match parsed {
            Some(t) if problems.is_empty() => Ok(t),
            _ => Err(problems),
        }
    }

    fn sort(step: Value, input: Value) -> Result<Value, String> {
        parse(step, Sort::parse).unwrap().run(input)
    }

    fn filter(step: Value, input: Value) -> Value {
        parse(step, Filter::parse).unwrap().run(input).unwrap()
    }

    fn filter_problems(step: Value) -> Vec<(String, String)> {
        parse(step, Filter::parse).err().unwrap()
    }

    #[test]
    fn sort_numbers_asc_and_desc_with_missing_last() {
        let input = json!([{"p": 10}, {"p": 2}, {}, {"p": null}, {"p": 2.5}]);
        let asc = sort(json!({"field": "p"}), input.clone()).unwrap();
        assert_eq!(asc, json!([{"p": 2}, {"p": 2.5}, {"p": 10}, {}, {"p": null}]));
        let desc = sort(json!({"field": "p", "order": "desc"}), input).unwrap();
        assert_eq!(desc, json!([{"p": 10}, {"p": 2.5}, {"p": 2}, {}, {"p": null}]));
    }

    #[test]
    fn sort_is_stable() {
        let input = json!([{"k": 1, "i": 0}, {"k": 0, "i": 1}, {"k": 1, "i": 2}, {"k": 0, "i": 3}]);
        let out = sort(json!({"field": "k"}), input).unwrap();
        let order: Vec<_> = out.as_array().unwrap().iter().map(|r| r["i"].clone()).collect();
        assert_eq!(order, vec![json!(1), json!(3), json!(0), json!(2)]);
        let input = json!([{"k": 1, "i": 0}, {"k": 0, "i": 1}, {"k": 1, "i": 2}]);
        let out = sort(json!({"field": "k", "order": "desc"}), input).unwrap();
        let order: Vec<_> = out.as_array().unwrap().iter().map(|r| r["i"].clone()).collect();
        assert_eq!(order, vec![json!(0), json!(2), json!(1)]);
    }

    #[test]
    fn sort_mixed_types_by_rank_and_strings_lexically() {
        let input = json!([{"v": "b"}, {"v": 3}, {"v": "a"}, {"v": true}, {"v": [1]}, {"v": {"x": 1}}]);
        let out = sort(json!({"field": "v"}), input).unwrap();
        assert_eq!(out, json!([{"v": true}, {"v": 3}, {"v": "a"}, {"v": "b"}, {"v": [1]}, {"v": {"x": 1}}]));
    }

    #[test]
    fn sort_without_field_sorts_scalars_and_handles_empty() {
        assert_eq!(sort(json!({}), json!([3, 1, 2])).unwrap(), json!([1, 2, 3]));
        assert_eq!(sort(json!({"field": "x"}), json!([])).unwrap(), json!([]));
        let nested = sort(json!({"field": "a.b"}), json!([{"a": {"b": 2}}, {"a": {"b": 1}}])).unwrap();
        assert_eq!(nested, json!([{"a": {"b": 1}}, {"a": {"b": 2}}]));
    }

    #[test]
    fn sort_rejects_non_arrays_and_bad_order() {
        let err = sort(json!({"field": "x"}), json!({"a": 1})).unwrap_err();
        assert!(err.contains("expected an array"), "{err}");
        let problems = parse(json!({"field": "x", "order": "up"}), Sort::parse).err().unwrap();
        assert_eq!(problems[0].0, "/order");
    }

    #[test]
    fn filter_comparison_ops() {
        let rows = json!([{"n": 1}, {"n": 5}, {"n": 10}, {"n": "5"}, {}]);
        let cases = [
            ("==", json!(5), json!([{"n": 5}])),
            ("!=", json!(5), json!([{"n": 1}, {"n": 10}, {"n": "5"}])),
            ("<", json!(5), json!([{"n": 1}])),
            ("<=", json!(5), json!([{"n": 1}, {"n": 5}])),
            (">", json!(5), json!([{"n": 10}])),
            (">=", json!(5.0), json!([{"n": 5}, {"n": 10}])),
        ];
        for (op, value, expected) in cases {
            let step = json!({"condition": {"field": "n", "op": op, "value": value}});
            assert_eq!(filter(step, rows.clone()), expected, "op {op}");
        }
    }

    #[test]
    fn filter_string_ops() {
        let rows = json!([{"s": "apple pie"}, {"s": "banana"}, {"s": 7}, {"s": ["apple", "x"]}]);
        let run = |op: &str, value: Value| filter(json!({"condition": {"field": "s", "op": op, "value": value}}), rows.clone());
        assert_eq!(run("contains", json!("pie")), json!([{"s": "apple pie"}]));
        assert_eq!(run("contains", json!("apple")), json!([{"s": "apple pie"}, {"s": ["apple", "x"]}]));
        assert_eq!(run("starts_with", json!("ban")), json!([{"s": "banana"}]));
        assert_eq!(run("ends_with", json!("pie")), json!([{"s": "apple pie"}]));
        assert_eq!(run("matches", json!("^b.n")), json!([{"s": "banana"}]));
        assert_eq!(run("<", json!("b")), json!([{"s": "apple pie"}]));
    }

    #[test]
    fn filter_membership_and_existence() {
        let rows = json!([{"c": "red"}, {"c": "blue"}, {"c": null}, {}]);
        let run = |cond: Value| filter(json!({"condition": cond}), rows.clone());
        assert_eq!(run(json!({"field": "c", "op": "in", "value": ["red", "green"]})), json!([{"c": "red"}]));
        assert_eq!(
            run(json!({"field": "c", "op": "not_in", "value": ["red"]})),
            json!([{"c": "blue"}, {"c": null}])
        );
        assert_eq!(run(json!({"field": "c", "op": "exists"})), json!([{"c": "red"}, {"c": "blue"}, {"c": null}]));
        assert_eq!(run(json!({"field": "c", "op": "not_exists"})), json!([{}]));
        assert_eq!(run(json!({"field": "c", "op": "==", "value": null})), json!([{"c": null}]));
    }

    #[test]
    fn filter_multiple_conditions_all_and_any() {
        let rows = json!([{"a": 1, "b": 1}, {"a": 1, "b": 2}, {"a": 2, "b": 2}]);
        let conditions = json!([
            {"field": "a", "op": "==", "value": 1},
            {"field": "b", "op": "==", "value": 2}
        ]);
        assert_eq!(filter(json!({"conditions": conditions}), rows.clone()), json!([{"a": 1, "b": 2}]));
        assert_eq!(
            filter(json!({"conditions": conditions, "mode": "any"}), rows),
            json!([{"a": 1, "b": 1}, {"a": 1, "b": 2}, {"a": 2, "b": 2}])
        );
    }

    #[test]
    fn filter_non_object_records_lack_fields() {
        let rows = json!([1, "x", null, {"a": 1}]);
        let step = json!({"condition": {"field": "a", "op": "==", "value": 1}});
        assert_eq!(filter(step, rows), json!([{"a": 1}]));
    }

    #[test]
    fn filter_validation_reports_every_problem() {
        let problems = filter_problems(json!({"conditions": [
            {"field": "a", "op": "~~", "value": 1},
            {"field": "", "op": "<", "value": [1]},
            {"field": "b", "op": "in", "value": 3},
            {"field": "b", "op": "matches", "value": "("},
            {"field": "b", "op": "==", "extra": 1},
            "nope"
        ]}));
        let pointers: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            pointers,
            vec![
                "/conditions/0/op",
                "/conditions/1/field",
                "/conditions/1/value",
                "/conditions/2/value",
                "/conditions/3/value",
                "/conditions/4/value",
                "/conditions/4/extra",
                "/conditions/5",
            ]
        );
        assert!(problems[0].1.contains("not_exists"));
        assert_eq!(filter_problems(json!({}))[0].0, "/condition");
        assert_eq!(filter_problems(json!({"conditions": []}))[0].0, "/conditions");
        assert_eq!(
            filter_problems(json!({"condition": {"field": "a", "op": "exists"}, "conditions": []}))[0].0,
            "/conditions"
        );
        assert_eq!(filter_problems(json!({"condition": {"field": "a"}}))[0].0, "/condition/op");
    }

    #[test]
    fn filter_requires_array_input() {
        let f = parse(json!({"condition": {"field": "a", "op": "exists"}}), Filter::parse).unwrap();
        assert!(f.run(json!("x")).is_err());
        assert_eq!(f.run(json!([])).unwrap(), json!([]));
    }

    #[test]
    fn select_list_and_rename_forms() {
        let rows = json!([{"a": 1, "b": {"c": 2}, "z": 0}, {"a": 3}]);
        let s = parse(json!({"fields": ["a", "b.c", "missing"]}), Select::parse).unwrap();
        assert_eq!(
            s.run(rows.clone()).unwrap(),
            json!([{"a": 1, "b.c": 2, "missing": null}, {"a": 3, "b.c": null, "missing": null}])
        );
        let s = parse(json!({"fields": {"id": "a", "inner": "b.c"}}), Select::parse).unwrap();
        assert_eq!(s.run(rows).unwrap(), json!([{"id": 1, "inner": 2}, {"id": 3, "inner": null}]));
        assert_eq!(s.run(json!({"a": 9})).unwrap(), json!({"id": 9, "inner": null}));
        assert_eq!(s.run(json!([])).unwrap(), json!([]));
        assert!(s.run(json!(5)).is_err());
    }

    #[test]
    fn select_validation() {
        let problems = parse(json!({"fields": ["a", 3, "x..y"]}), Select::parse).err().unwrap();
        let pointers: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(pointers, vec!["/fields/1", "/fields/2"]);
        assert_eq!(parse(json!({"fields": []}), Select::parse).err().unwrap()[0].0, "/fields");
        assert_eq!(parse(json!({}), Select::parse).err().unwrap()[0].0, "/fields");
        assert_eq!(parse(json!({"fields": "a"}), Select::parse).err().unwrap()[0].0, "/fields");
        assert_eq!(parse(json!({"fields": {"o": 1}}), Select::parse).err().unwrap()[0].0, "/fields/o");
    }

    #[test]
    fn top_k_plain_and_sorted() {
        let rows = json!([{"s": 1}, {"s": 9}, {"s": 5}]);
        let t = parse(json!({"k": 2}), TopK::parse).unwrap();
        assert_eq!(t.run(rows.clone()).unwrap(), json!([{"s": 1}, {"s": 9}]));
        let t = parse(json!({"k": 2, "field": "s"}), TopK::parse).unwrap();
        assert_eq!(t.run(rows.clone()).unwrap(), json!([{"s": 9}, {"s": 5}]));
        let t = parse(json!({"k": 5, "field": "s", "order": "asc"}), TopK::parse).unwrap();
        assert_eq!(t.run(rows).unwrap(), json!([{"s": 1}, {"s": 5}, {"s": 9}]));
        assert_eq!(t.run(json!([])).unwrap(), json!([]));
        assert!(t.run(json!(null)).is_err());
    }

    #[test]
    fn top_k_validation() {
        for k in [json!(0), json!(-1), json!(1.5), json!("3")] {
            let problems = parse(json!({"k": k}), TopK::parse).err().unwrap();
            assert_eq!(problems[0].0, "/k");
        }
        assert_eq!(parse(json!({}), TopK::parse).err().unwrap()[0].1, "is required");
    }
}
