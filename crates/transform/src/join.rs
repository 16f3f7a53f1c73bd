//! `join`: merge the input table (left) with an inline right table on a key.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::params::Params;
use crate::path::Path;
use crate::value::{canonical_key, expect_array, type_name};

/// Duplicate keys on both sides multiply; this bounds the output of one careless join.
const MAX_OUTPUT_ROWS: usize = 1_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    Inner,
    Left,
    Right,
    Outer,
}

pub(crate) struct Join {
    /// `Err` holds an unresolved reference (e.g. `$nodes.users.body`) that validation accepts
    /// because the caller substitutes it before running.
    right: Result<Vec<Map<String, Value>>, String>,
    left_on: Path,
    right_on: Path,
    how: How,
    right_prefix: String,
    max_rows: usize,
}

impl Join {
    pub(crate) fn parse(p: &mut Params<'_>) -> Option<Self> {
        let right = match p.value("right") {
            None => {
                p.problem_at("right", "is required (the right table, an array of records)");
                None
            }
            Some(Value::Array(rows)) => {
                let mut records = Vec::with_capacity(rows.len());
                for (i, row) in rows.iter().enumerate() {
                    match row {
                        Value::Object(map) => records.push(map.clone()),
                        other => p.problem(&format!("/right/{i}"), format!("must be an object, got {}", type_name(other))),
                    }
                }
                Some(Ok(records))
            }
            Some(Value::String(reference)) if reference.starts_with('$') => Some(Err(reference.clone())),
            Some(other) => {
                p.problem_at("right", format!("must be an array of records, got {}", type_name(other)));
                None
            }
        };
        let on = p.path("on");
        let left_on = p.path("left_on");
        let right_on = p.path("right_on");
        let on_given = p.value("on").is_some();
        let left_given = p.value("left_on").is_some();
        let right_given = p.value("right_on").is_some();
        if on_given && (left_given || right_given) {
            p.problem_at("on", "give either `on` or `left_on` and `right_on`, not both");
        } else if !(on_given || left_given && right_given) {
            p.problem_at("on", "is required (or both `left_on` and `right_on`)");
        }
        let (left_on, right_on) = if on_given { (on.clone(), on) } else { (left_on, right_on) };
        let how = match p.choice("how", &["inner", "left", "right", "outer"], "inner") {
            "left" => How::Left,
            "right" => How::Right,
            "outer" => How::Outer,
            _ => How::Inner,
        };
        let right_prefix = p.str("right_prefix").unwrap_or("right_").to_owned();
        Some(Self {
            right: right?,
            left_on: left_on?,
            right_on: right_on?,
            how,
            right_prefix,
            max_rows: MAX_OUTPUT_ROWS,
        })
    }

    pub(crate) fn run(&self, input: Value) -> Result<Value, String> {
        let right = self
            .right
            .as_ref()
            .map_err(|reference| format!("`right` must be an array of records, got the unresolved reference `{reference}`"))?;
        let left: Vec<Map<String, Value>> = expect_array(input)?
            .into_iter()
            .enumerate()
            .map(|(i, row)| match row {
                Value::Object(map) => Ok(map),
                other => Err(format!("left record {i} must be an object, got {}", type_name(&other))),
            })
            .collect::<Result<_, _>>()?;

        let left_columns = columns(&left);
        // With the same single key on both sides, the key appears once in the output.
        let shared_key = match (self.left_on.single_key(), self.right_on.single_key()) {
            (Some(l), Some(r)) if l == r => Some(l),
            _ => None,
        };
        let left_set: HashSet<&str> = left_columns.iter().map(String::as_str).collect();
        // (right column, output name); colliding names get the prefix.
        let right_columns: Vec<(String, String)> = columns(right)
            .into_iter()
            .filter(|c| Some(c.as_str()) != shared_key)
            .map(|c| {
                let out = if left_set.contains(c.as_str()) {
                    format!("{}{c}", self.right_prefix)
                } else {
                    c.clone()
                };
                (c, out)
            })
            .collect();

        let mut index: HashMap<String, Vec<usize>> = HashMap::new();
        for (j, row) in right.iter().enumerate() {
            if let Some(key) = join_key(&self.right_on, row) {
                index.entry(key).or_default().push(j);
            }
        }

        let keep_left = matches!(self.how, How::Left | How::Outer);
        let keep_right = matches!(self.how, How::Right | How::Outer);
        let mut matched_right = vec![false; right.len()];
        let mut out: Vec<Value> = Vec::new();
        let push = |out: &mut Vec<Value>, row: Map<String, Value>| {
            if out.len() >= self.max_rows {
                return Err(format!("join would produce more than {} rows", self.max_rows));
            }
            out.push(Value::Object(row));
            Ok(())
        };

        for left_row in &left {
            let matches = join_key(&self.left_on, left_row)
                .and_then(|key| index.get(&key))
                .map(Vec::as_slice)
                .unwrap_or_default();
            if matches.is_empty() {
                if keep_left {
                    let mut row = left_row.clone();
                    for (_, name) in &right_columns {
                        row.insert(name.clone(), Value::Null);
                    }
                    push(&mut out, row)?;
                }
                continue;
            }
            for &j in matches {
                let Some(right_row) = right.get(j) else {
                    continue;
                };
                if let Some(flag) = matched_right.get_mut(j) {
                    *flag = true;
                }
                let mut row = left_row.clone();
                for (column, name) in &right_columns {
                    if let Some(value) = right_row.get(column) {
                        row.insert(name.clone(), value.clone());
                    }
                }
                push(&mut out, row)?;
            }
        }

        if keep_right {
            for (right_row, matched) in right.iter().zip(&matched_right) {
                if *matched {
                    continue;
                }
                let mut row: Map<String, Value> = left_columns.iter().map(|c| (c.clone(), Value::Null)).collect();
                if let Some(key) = shared_key {
                    row.insert(key.to_owned(), right_row.get(key).cloned().unwrap_or(Value::Null));
                }
                for (column, name) in &right_columns {
                    if let Some(value) = right_row.get(column) {
                        row.insert(name.clone(), value.clone());
                    }
                }
                push(&mut out, row)?;
            }
        }
        Ok(Value::Array(out))
    }
}

/// Null and missing keys never match, as in SQL.
fn join_key(path: &Path, row: &Map<String, Value>) -> Option<String> {
    path.get_in(row).filter(|v| !v.is_null()).map(canonical_key)
}

/// Column names in first-seen order across all rows.
fn columns(rows: &[Map<String, Value>]) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for row in rows {
        for key in row.keys() {
            if seen.insert(key.as_str()) {
                out.push(key.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(step: Value) -> Result<Join, Vec<(String, String)>> {
        let obj = step.as_object().unwrap().clone();
        let mut p = Params::step(&obj);
        let parsed = Join::parse(&mut p);
        let problems = p.finish();
        match parsed {
            Some(t) if problems.is_empty() => Ok(t),
            _ => Err(problems),
        }
    }

    fn users() -> Value {
        json!([
            {"id": 1, "name": "ann", "team": "t1"},
            {"id": 2, "name": "bob", "team": "t2"},
            {"id": 3, "name": "cy"}
        ])
    }

    fn teams() -> Value {
        json!([
            {"team": "t1", "name": "red"},
            {"team": "t3", "name": "blue"}
        ])
    }

    fn run(how: &str) -> Value {
        parse(json!({"right": teams(), "on": "team", "how": how})).unwrap().run(users()).unwrap()
    }

    #[test]
    fn inner_join_prefixes_colliding_columns() {
        assert_eq!(run("inner"), json!([{"id": 1, "name": "ann", "team": "t1", "right_name": "red"}]));
    }

    #[test]
    fn left_join_fills_right_columns_with_null() {
        assert_eq!(
            run("left"),
            json!([
                {"id": 1, "name": "ann", "team": "t1", "right_name": "red"},
                {"id": 2, "name": "bob", "team": "t2", "right_name": null},
                {"id": 3, "name": "cy", "right_name": null}
            ])
        );
    }

    #[test]
    fn right_and_outer_joins_add_unmatched_right_rows() {
        let unmatched = json!({"id": null, "name": null, "team": "t3", "right_name": "blue"});
        assert_eq!(run("right"), json!([{"id": 1, "name": "ann", "team": "t1", "right_name": "red"}, unmatched]));
        let outer = run("outer");
        assert_eq!(outer.as_array().unwrap().len(), 4);
        assert_eq!(outer[3], unmatched);
    }

    #[test]
    fn different_key_names_duplicates_and_prefix() {
        let left = json!([{"uid": 1, "v": "a"}, {"uid": 1, "v": "b"}, {"uid": null}]);
        let right = json!([{"user": 1, "v": "x"}, {"user": 1, "v": "y"}, {"user": null, "v": "n"}]);
        let j = parse(json!({"right": right, "left_on": "uid", "right_on": "user", "right_prefix": "r."})).unwrap();
        let out = j.run(left).unwrap();
        assert_eq!(
            out,
            json!([
                {"uid": 1, "v": "a", "user": 1, "r.v": "x"},
                {"uid": 1, "v": "a", "user": 1, "r.v": "y"},
                {"uid": 1, "v": "b", "user": 1, "r.v": "x"},
                {"uid": 1, "v": "b", "user": 1, "r.v": "y"}
            ])
        );
    }

    #[test]
    fn nested_keys_and_numeric_equality() {
        let left = json!([{"a": {"id": 1}}]);
        let right = json!([{"ref": {"id": 1.0}, "x": true}]);
        let j = parse(json!({"right": right, "left_on": "a.id", "right_on": "ref.id"})).unwrap();
        assert_eq!(j.run(left).unwrap(), json!([{"a": {"id": 1}, "ref": {"id": 1.0}, "x": true}]));
    }

    #[test]
    fn empty_tables() {
        let j = parse(json!({"right": [], "on": "id", "how": "outer"})).unwrap();
        assert_eq!(j.run(json!([])).unwrap(), json!([]));
        assert_eq!(j.run(json!([{"id": 1}])).unwrap(), json!([{"id": 1}]));
        let j = parse(json!({"right": [{"id": 1}], "on": "id", "how": "right"})).unwrap();
        assert_eq!(j.run(json!([])).unwrap(), json!([{"id": 1}]));
    }

    #[test]
    fn run_errors() {
        let j = parse(json!({"right": [], "on": "id"})).unwrap();
        assert!(j.run(json!({})).unwrap_err().contains("expected an array"));
        assert!(j.run(json!([1])).unwrap_err().contains("left record 0"));
        let j = parse(json!({"right": "$nodes.users.body", "on": "id"})).unwrap();
        assert!(j.run(json!([])).unwrap_err().contains("$nodes.users.body"));
    }

    #[test]
    fn output_is_bounded() {
        let rows: Vec<Value> = (0..4).map(|_| json!({"k": 1})).collect();
        let mut j = parse(json!({"right": rows.clone(), "on": "k"})).unwrap();
        j.max_rows = 16;
        assert_eq!(j.run(Value::Array(rows.clone())).unwrap().as_array().unwrap().len(), 16);
        j.max_rows = 15;
        let err = j.run(Value::Array(rows)).unwrap_err();
        assert!(err.contains("more than 15 rows"), "{err}");
    }

    #[test]
    fn validation() {
        let pointers = |step: Value| -> Vec<String> { parse(step).err().unwrap().into_iter().map(|(p, _)| p).collect() };
        assert_eq!(pointers(json!({"on": "id"})), vec!["/right"]);
        assert_eq!(pointers(json!({"right": 3, "on": "id"})), vec!["/right"]);
        assert_eq!(pointers(json!({"right": [{}, 1], "on": "id"})), vec!["/right/1"]);
        assert_eq!(pointers(json!({"right": []})), vec!["/on"]);
        assert_eq!(pointers(json!({"right": [], "left_on": "a"})), vec!["/on"]);
        assert_eq!(pointers(json!({"right": [], "on": "a", "left_on": "a"})), vec!["/on"]);
        assert_eq!(pointers(json!({"right": [], "on": "a", "how": "cross"})), vec!["/how"]);
    }
}
