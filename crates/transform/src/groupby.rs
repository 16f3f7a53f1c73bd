//! `groupby`: one output row per distinct key, in first-seen order, with aggregations.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::params::{Params, escape};
use crate::path::Path;
use crate::value::{canonical_key, cmp_values, expect_array, float_value, number_from_i128, preview, type_name};

const OPS: [&str; 9] = ["count", "sum", "avg", "min", "max", "list", "first", "last", "count_distinct"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    List,
    First,
    Last,
    CountDistinct,
}

struct Aggregation {
    out: String,
    op: Op,
    /// Only `count` may omit the field, meaning "number of rows".
    field: Option<Path>,
}

pub(crate) struct GroupBy {
    by: Vec<Path>,
    aggregations: Vec<Aggregation>,
}

impl GroupBy {
    pub(crate) fn parse(p: &mut Params<'_>) -> Option<Self> {
        let mut by = Vec::new();
        match p.value("by") {
            None => p.problem_at("by", "is required"),
            Some(Value::String(s)) => match Path::parse(s) {
                Ok(path) => by.push(path),
                Err(message) => p.problem_at("by", format!("invalid field path: {message}")),
            },
            Some(Value::Array(items)) if items.is_empty() => p.problem_at("by", "must name at least one field"),
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match item.as_str().map(Path::parse) {
                        Some(Ok(path)) => by.push(path),
                        Some(Err(message)) => p.problem(&format!("/by/{i}"), format!("invalid field path: {message}")),
                        None => p.problem(&format!("/by/{i}"), format!("must be a string, got {}", type_name(item))),
                    }
                }
            }
            Some(other) => p.problem_at("by", format!("must be a field path or an array of them, got {}", type_name(other))),
        }

        let mut aggregations = Vec::new();
        match p.value("aggregations") {
            None => {}
            Some(Value::Object(map)) => {
                for (out, spec) in map {
                    let pointer = format!("/aggregations/{}", escape(out));
                    if by.iter().any(|b| b.as_str() == out) {
                        p.problem(&pointer, format!("`{out}` is also a group-by field"));
                        continue;
                    }
                    let Value::Object(spec) = spec else {
                        p.problem(&pointer, format!("must be an object {{op, field}}, got {}", type_name(spec)));
                        continue;
                    };
                    let mut child = p.nested(&pointer, spec);
                    let aggregation = parse_aggregation(&mut child, out);
                    p.absorb(child);
                    aggregations.extend(aggregation);
                }
            }
            Some(other) => p.problem_at(
                "aggregations",
                format!("must be an object of output name to {{op, field}}, got {}", type_name(other)),
            ),
        }
        Some(Self { by, aggregations })
    }

    pub(crate) fn run(&self, input: Value) -> Result<Value, String> {
        let rows = expect_array(input)?;
        // (key values as first seen, member row indices), in first-seen order.
        let mut groups: Vec<(Vec<Value>, Vec<usize>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            let key: Vec<Value> = self.by.iter().map(|path| path.get(row).cloned().unwrap_or(Value::Null)).collect();
            let canonical = key.iter().map(canonical_key).collect::<Vec<_>>().join("\u{1f}");
            match index.get(&canonical) {
                Some(&g) => {
                    if let Some(group) = groups.get_mut(g) {
                        group.1.push(i);
                    }
                }
                None => {
                    index.insert(canonical, groups.len());
                    groups.push((key, vec![i]));
                }
            }
        }

        let mut out = Vec::with_capacity(groups.len());
        for (key, members) in groups {
            let members: Vec<&Value> = members.iter().filter_map(|&i| rows.get(i)).collect();
            let mut record = Map::new();
            for (path, value) in self.by.iter().zip(key) {
                record.insert(path.as_str().to_owned(), value);
            }
            for aggregation in &self.aggregations {
                let value = aggregate(aggregation, &members).map_err(|e| format!("aggregation `{}`: {e}", aggregation.out))?;
                record.insert(aggregation.out.clone(), value);
            }
            out.push(Value::Object(record));
        }
        Ok(Value::Array(out))
    }
}

fn parse_aggregation(p: &mut Params<'_>, out: &str) -> Option<Aggregation> {
    let op_given = p.value("op").is_some();
    if !op_given {
        p.problem_at("op", format!("is required; one of: {}", OPS.join(", ")));
    }
    let op = match p.choice("op", &OPS, "count") {
        "sum" => Op::Sum,
        "avg" => Op::Avg,
        "min" => Op::Min,
        "max" => Op::Max,
        "list" => Op::List,
        "first" => Op::First,
        "last" => Op::Last,
        "count_distinct" => Op::CountDistinct,
        _ => Op::Count,
    };
    let field = p.path("field");
    if op_given && op != Op::Count && p.value("field").is_none() {
        p.problem_at("field", "is required for this operation");
    }
    Some(Aggregation {
        out: out.to_owned(),
        op,
        field,
    })
}

fn aggregate(aggregation: &Aggregation, members: &[&Value]) -> Result<Value, String> {
    let Some(field) = &aggregation.field else {
        return Ok(Value::from(members.len()));
    };
    // Values of rows where the field is present; null is kept only where it is data (`list`).
    let present = || members.iter().filter_map(|row| field.get(row));
    let non_null = || present().filter(|v| !v.is_null());
    Ok(match aggregation.op {
        Op::Count => Value::from(non_null().count()),
        Op::Sum => sum(non_null(), field)?.0,
        Op::Avg => {
            let (total, count) = sum(non_null(), field)?;
            match (total.as_f64(), count) {
                (_, 0) => Value::Null,
                (Some(total), count) => float_value(total / count as f64),
                (None, _) => Value::Null,
            }
        }
        Op::Min => non_null().min_by(|a, b| cmp_values(a, b)).cloned().unwrap_or(Value::Null),
        Op::Max => non_null().max_by(|a, b| cmp_values(a, b)).cloned().unwrap_or(Value::Null),
        Op::List => Value::Array(present().cloned().collect()),
        Op::First => non_null().next().cloned().unwrap_or(Value::Null),
        Op::Last => non_null().next_back().cloned().unwrap_or(Value::Null),
        Op::CountDistinct => {
            let distinct: HashSet<String> = non_null().map(canonical_key).collect();
            Value::from(distinct.len())
        }
    })
}

/// Sums numbers exactly while they are integers and switches to floats otherwise.
/// Non-numbers are an error: silently skipping "12.5" would produce a wrong total.
fn sum<'v>(values: impl Iterator<Item = &'v Value>, field: &Path) -> Result<(Value, usize), String> {
    let mut int_total: Option<i128> = Some(0);
    let mut float_total = 0.0_f64;
    let mut count = 0;
    for value in values {
        let Value::Number(n) = value else {
            return Err(format!("field `{}` has non-numeric value {}", field.as_str(), preview(value)));
        };
        count += 1;
        float_total += n.as_f64().unwrap_or(0.0);
        let as_int = n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
        int_total = match (int_total, as_int) {
            (Some(total), Some(i)) => total.checked_add(i),
            _ => None,
        };
    }
    let total = match int_total {
        Some(total) => number_from_i128(total),
        None => float_value(float_total),
    };
    Ok((total, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(step: Value) -> Result<GroupBy, Vec<(String, String)>> {
        let obj = step.as_object().unwrap().clone();
        let mut p = Params::step(&obj);
        let parsed = GroupBy::parse(&mut p);
        let problems = p.finish();
        match parsed {
            Some(t) if problems.is_empty() => Ok(t),
            _ => Err(problems),
        }
    }

    fn run(step: Value, input: Value) -> Result<Value, String> {
        parse(step).unwrap().run(input)
    }

    fn sales() -> Value {
        json!([
            {"region": "eu", "product": "a", "amount": 10, "rep": "x"},
            {"region": "us", "product": "a", "amount": 5.5, "rep": "y"},
            {"region": "eu", "product": "b", "amount": 2, "rep": "x"},
            {"region": "eu", "product": "a", "amount": null, "rep": "z"},
            {"product": "c", "amount": 1}
        ])
    }

    #[test]
    fn all_operations() {
        let step = json!({"by": "region", "aggregations": {
            "n": {"op": "count"},
            "n_amount": {"op": "count", "field": "amount"},
            "total": {"op": "sum", "field": "amount"},
            "mean": {"op": "avg", "field": "amount"},
            "lo": {"op": "min", "field": "amount"},
            "hi": {"op": "max", "field": "amount"},
            "amounts": {"op": "list", "field": "amount"},
            "first_rep": {"op": "first", "field": "rep"},
            "last_rep": {"op": "last", "field": "rep"},
            "reps": {"op": "count_distinct", "field": "rep"}
        }});
        let out = run(step, sales()).unwrap();
        assert_eq!(
            out,
            json!([
                {"region": "eu", "n": 3, "n_amount": 2, "total": 12, "mean": 6.0, "lo": 2, "hi": 10,
                 "amounts": [10, 2, null], "first_rep": "x", "last_rep": "z", "reps": 2},
                {"region": "us", "n": 1, "n_amount": 1, "total": 5.5, "mean": 5.5, "lo": 5.5, "hi": 5.5,
                 "amounts": [5.5], "first_rep": "y", "last_rep": "y", "reps": 1},
                {"region": null, "n": 1, "n_amount": 1, "total": 1, "mean": 1.0, "lo": 1, "hi": 1,
                 "amounts": [1], "first_rep": null, "last_rep": null, "reps": 0}
            ])
        );
    }

    #[test]
    fn multiple_keys_and_numeric_key_equality() {
        let input = json!([
            {"a": 1, "b": "x"}, {"a": 1.0, "b": "x"}, {"a": 1, "b": "y"}, {"a": "1", "b": "x"}
        ]);
        let out = run(json!({"by": ["a", "b"], "aggregations": {"n": {"op": "count"}}}), input).unwrap();
        assert_eq!(
            out,
            json!([
                {"a": 1, "b": "x", "n": 2},
                {"a": 1, "b": "y", "n": 1},
                {"a": "1", "b": "x", "n": 1}
            ])
        );
    }

    #[test]
    fn without_aggregations_and_empty_input() {
        let out = run(json!({"by": "g"}), json!([{"g": 2}, {"g": 1}, {"g": 2}])).unwrap();
        assert_eq!(out, json!([{"g": 2}, {"g": 1}]));
        assert_eq!(run(json!({"by": "g"}), json!([])).unwrap(), json!([]));
        assert!(run(json!({"by": "g"}), json!({})).is_err());
    }

    #[test]
    fn empty_aggregates() {
        let step = json!({"by": "g", "aggregations": {
            "s": {"op": "sum", "field": "v"}, "a": {"op": "avg", "field": "v"},
            "mn": {"op": "min", "field": "v"}, "l": {"op": "list", "field": "v"}
        }});
        let out = run(step, json!([{"g": 1}])).unwrap();
        assert_eq!(out, json!([{"g": 1, "s": 0, "a": null, "mn": null, "l": []}]));
    }

    #[test]
    fn min_max_over_mixed_types_and_strings() {
        let step = json!({"by": "g", "aggregations": {
            "mn": {"op": "min", "field": "v"}, "mx": {"op": "max", "field": "v"}
        }});
        let out = run(step, json!([{"g": 1, "v": "b"}, {"g": 1, "v": 3}, {"g": 1, "v": "a"}])).unwrap();
        assert_eq!(out, json!([{"g": 1, "mn": 3, "mx": "b"}]));
    }

    #[test]
    fn sum_errors_on_non_numbers_and_handles_overflow() {
        let step = json!({"by": "g", "aggregations": {"s": {"op": "sum", "field": "v"}}});
        let err = run(step.clone(), json!([{"g": 1, "v": "12"}])).unwrap_err();
        assert!(err.contains("aggregation `s`") && err.contains("\"12\""), "{err}");
        let out = run(step, json!([{"g": 1, "v": u64::MAX}, {"g": 1, "v": u64::MAX}])).unwrap();
        assert_eq!(out[0]["s"].as_f64().unwrap(), 2.0 * u64::MAX as f64);
    }

    #[test]
    fn validation() {
        let pointers = |step: Value| -> Vec<String> { parse(step).err().unwrap().into_iter().map(|(p, _)| p).collect() };
        assert_eq!(pointers(json!({})), vec!["/by"]);
        assert_eq!(pointers(json!({"by": []})), vec!["/by"]);
        assert_eq!(pointers(json!({"by": ["a", 1]})), vec!["/by/1"]);
        assert_eq!(pointers(json!({"by": 3})), vec!["/by"]);
        assert_eq!(
            pointers(json!({"by": "a", "aggregations": {
                "x": {"op": "median", "field": "v"},
                "y": {"op": "sum"},
                "a": {"op": "count"},
                "z": 3,
                "w/1": {"field": "v", "bogus": 1}
            }})),
            vec![
                "/aggregations/x/op",
                "/aggregations/y/field",
                "/aggregations/a",
                "/aggregations/z",
                "/aggregations/w~11/op",
                "/aggregations/w~11/bogus"
            ]
        );
        assert_eq!(pointers(json!({"by": "a", "aggregations": []})), vec!["/aggregations"]);
    }
}
