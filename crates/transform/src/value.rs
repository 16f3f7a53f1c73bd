//! JSON value helpers shared by the primitives: ordering, equality, grouping keys and messages.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde_json::{Number, Value};

pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A short rendering of a value for error messages, so one huge record cannot flood a log line.
pub(crate) fn preview(value: &Value) -> String {
    const MAX_CHARS: usize = 80;
    let text = value.to_string();
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

pub(crate) fn expect_array(input: Value) -> Result<Vec<Value>, String> {
    match input {
        Value::Array(items) => Ok(items),
        other => Err(format!("expected an array as input, got {}", type_name(&other))),
    }
}

/// Orders values for sorting, min and max. It must be a total order: the standard library's
/// sorts may panic on inconsistent comparators, and data from the outside is arbitrary.
/// Types are ranked boolean < number < string < array < object < null.
pub(crate) fn cmp_values(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => cmp_numbers(x, y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => x
            .iter()
            .zip(y)
            .map(|(l, r)| cmp_values(l, r))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        (Value::Object(x), Value::Object(y)) => {
            // Key order is an accident of the source, so compare as sorted entries.
            let mut xs: Vec<_> = x.iter().collect();
            let mut ys: Vec<_> = y.iter().collect();
            xs.sort_by(|l, r| l.0.cmp(r.0));
            ys.sort_by(|l, r| l.0.cmp(r.0));
            xs.iter()
                .zip(&ys)
                .map(|((lk, lv), (rk, rv))| lk.cmp(rk).then_with(|| cmp_values(lv, rv)))
                .find(|o| o.is_ne())
                .unwrap_or_else(|| xs.len().cmp(&ys.len()))
        }
        _ => type_rank(a).cmp(&type_rank(b)),
    }
}

fn type_rank(value: &Value) -> u8 {
    match value {
        Value::Bool(_) => 0,
        Value::Number(_) => 1,
        Value::String(_) => 2,
        Value::Array(_) => 3,
        Value::Object(_) => 4,
        Value::Null => 5,
    }
}

/// Sort comparator for optional keys: null and missing go last whatever the direction,
/// because "no value" is never the most interesting row of a descending sort.
pub(crate) fn cmp_sort_keys(a: Option<&Value>, b: Option<&Value>, descending: bool) -> Ordering {
    let a = a.filter(|v| !v.is_null());
    let b = b.filter(|v| !v.is_null());
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            let order = cmp_values(x, y);
            if descending { order.reverse() } else { order }
        }
    }
}

enum Num {
    Int(i128),
    Float(f64),
}

fn num(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Num::Int(i128::from(u))
    } else {
        // Without `arbitrary_precision` every JSON number is an i64, u64 or finite f64.
        Num::Float(n.as_f64().unwrap_or(0.0))
    }
}

/// Exact numeric comparison: converting large integers to f64 would make the order
/// non-transitive (two distinct integers could both equal the same float).
pub(crate) fn cmp_numbers(a: &Number, b: &Number) -> Ordering {
    match (num(a), num(b)) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (Num::Int(x), Num::Float(y)) => cmp_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_int_float(y, x).reverse(),
    }
}

fn cmp_int_float(i: i128, f: f64) -> Ordering {
    // i128::MAX as f64 is exactly 2^127, beyond every i128.
    let bound = i128::MAX as f64;
    if f >= bound {
        return Ordering::Less;
    }
    if f < -bound {
        return Ordering::Greater;
    }
    let truncated = f.trunc();
    // Exact: `truncated` is an integer strictly inside the i128 range.
    let whole = truncated as i128;
    i.cmp(&whole).then_with(|| {
        if f > truncated {
            Ordering::Less
        } else if f < truncated {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    })
}

/// JSON equality where `1` equals `1.0` and object key order is irrelevant.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => cmp_numbers(x, y).is_eq(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(l, r)| json_eq(l, r)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|other| json_eq(v, other))),
        _ => a == b,
    }
}

/// A string that is equal for two values exactly when `json_eq` holds, for hashing group
/// and join keys.
pub(crate) fn canonical_key(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Number(n) => match num(n) {
            Num::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Num::Float(f) if f.fract() == 0.0 && f.abs() < i128::MAX as f64 => {
                let _ = write!(out, "{}", f as i128);
            }
            Num::Float(f) => {
                let _ = write!(out, "{f:e}");
            }
        },
        Value::Array(items) => {
            out.push('[');
            for item in items {
                write_canonical(item, out);
                out.push(',');
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|l, r| l.0.cmp(r.0));
            out.push('{');
            for (k, v) in entries {
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
                out.push(',');
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Builds a JSON number from an integer sum, falling back to a float beyond u64/i64.
pub(crate) fn number_from_i128(i: i128) -> Value {
    if let Ok(v) = i64::try_from(i) {
        Value::from(v)
    } else if let Ok(v) = u64::try_from(i) {
        Value::from(v)
    } else {
        float_value(i as f64)
    }
}

/// JSON has no NaN or infinity; they become null, as in jq.
pub(crate) fn float_value(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_compare_exactly_across_representations() {
        let big = json!(9_223_372_036_854_775_808u64);
        let max = json!(i64::MAX);
        let float = json!(9.223_372_036_854_776e18);
        assert_eq!(cmp_values(&big, &max), Ordering::Greater);
        assert_eq!(cmp_values(&max, &float), Ordering::Less);
        assert_eq!(cmp_values(&big, &float), Ordering::Equal);
        assert_eq!(cmp_values(&json!(1), &json!(1.0)), Ordering::Equal);
        assert_eq!(cmp_values(&json!(-2), &json!(-2.5)), Ordering::Greater);
        assert_eq!(cmp_values(&json!(2), &json!(2.5)), Ordering::Less);
        assert_eq!(cmp_values(&json!(0), &json!(-0.0)), Ordering::Equal);
        assert_eq!(cmp_values(&json!(1e300), &json!(u64::MAX)), Ordering::Greater);
        assert_eq!(cmp_values(&json!(-1e300), &json!(i64::MIN)), Ordering::Less);
    }

    #[test]
    fn mixed_types_follow_a_fixed_rank() {
        let mut values = vec![json!(null), json!({"a": 1}), json!([1]), json!("s"), json!(3), json!(true)];
        values.sort_by(cmp_values);
        assert_eq!(values, vec![json!(true), json!(3), json!("s"), json!([1]), json!({"a": 1}), json!(null)]);
    }

    #[test]
    fn objects_compare_ignoring_key_order() {
        let a = json!({"a": 1, "b": 2});
        let b = json!({"b": 2, "a": 1});
        assert_eq!(cmp_values(&a, &b), Ordering::Equal);
        assert!(json_eq(&a, &b));
        assert_eq!(canonical_key(&a), canonical_key(&b));
    }

    #[test]
    fn equality_and_keys_agree_on_numbers() {
        assert!(json_eq(&json!(1), &json!(1.0)));
        assert_eq!(canonical_key(&json!(1)), canonical_key(&json!(1.0)));
        assert_ne!(canonical_key(&json!(1)), canonical_key(&json!("1")));
        assert_ne!(canonical_key(&json!(1.5)), canonical_key(&json!(15)));
        assert!(!json_eq(&json!([1, 2]), &json!([1])));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    }

    #[test]
    fn sort_keys_put_missing_and_null_last_in_both_directions() {
        let one = json!(1);
        let null = json!(null);
        for desc in [false, true] {
            assert_eq!(cmp_sort_keys(None, Some(&one), desc), Ordering::Greater);
            assert_eq!(cmp_sort_keys(Some(&null), Some(&one), desc), Ordering::Greater);
            assert_eq!(cmp_sort_keys(Some(&null), None, desc), Ordering::Equal);
        }
    }

    #[test]
    fn preview_truncates_long_values() {
        let long = json!("x".repeat(500));
        assert!(preview(&long).chars().count() <= 81);
        assert_eq!(preview(&json!("é")), "\"é\"");
    }

    #[test]
    fn number_helpers() {
        assert_eq!(number_from_i128(5), json!(5));
        assert_eq!(number_from_i128(i128::from(u64::MAX)), json!(u64::MAX));
        assert!(number_from_i128(i128::MAX).is_f64());
        assert_eq!(float_value(f64::NAN), Value::Null);
    }
}
