//! `jq_transform`: run a real jq program through jaq.

use jaq_core::load::{Arena, File, Loader, lex};
use jaq_core::{Compiler, Ctx, Vars, data, load};
use jaq_json::{Num, Val};
use serde::Deserialize as _;
use serde_json::{Number, Value};

use aob_limits::{Limits, deep};

use crate::params::Params;

/// Generators such as `repeat(.)` never end; collecting them must stop somewhere.
const MAX_OUTPUTS: usize = 100_000;

/// Native filters withheld from workflow authors: `env` would expose the server's
/// environment (credentials included) to anyone who can write a workflow.
const DENIED_FUNCTIONS: [&str; 1] = ["env"];

type JqFilter = jaq_core::Filter<data::JustLut<Val>>;

pub(crate) struct JqTransform {
    /// Kept as source: a compiled filter holds `Rc`s, which would make the pipeline
    /// future non-`Send`. Recompiling per run is cheap next to running.
    pub(crate) filter: String,
}

impl JqTransform {
    pub(crate) fn parse(p: &mut Params<'_>, limits: &Limits) -> Option<Self> {
        let filter = p.required_str("filter")?;
        if let Err(message) = check(filter, limits) {
            p.problem_at("filter", message);
            return None;
        }
        Some(Self { filter: filter.to_owned() })
    }
}

/// Checks a filter's size and nesting, then compiles it on a [`deep`] stack: jaq's parser
/// and compiler recurse as deep as the filter nests.
pub fn check(filter: &str, limits: &Limits) -> Result<(), String> {
    precheck(filter, limits)?;
    let code = filter.to_owned();
    deep(move || compile_filter(&code).map(drop)).map_err(|e| e.to_string())?
}

fn precheck(filter: &str, limits: &Limits) -> Result<(), String> {
    if filter.len() > limits.jq_bytes {
        return Err(format!("the jq filter is {} bytes long; the limit is {}", filter.len(), limits.jq_bytes));
    }
    let nesting = nesting(filter);
    if nesting > limits.jq_depth {
        return Err(format!("the jq filter nests {nesting} deep; the limit is {}", limits.jq_depth));
    }
    Ok(())
}

/// Deepest nesting of brackets and `if … end` outside strings and comments. Together with
/// the length limit it bounds how deep jaq's parser recurses (other constructs recurse
/// at most once per token, which the length bounds and the deep stack absorbs).
fn nesting(code: &str) -> usize {
    let bytes = code.as_bytes();
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    let mut word = String::new();
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' {
            // Skip the string, escapes included.
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
        } else if b == b'#' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if b.is_ascii_alphanumeric() || b == b'_' {
            word.push(b as char);
        } else {
            word.clear();
        }
        match b {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        let word_ends = !bytes.get(i + 1).is_some_and(|n| n.is_ascii_alphanumeric() || *n == b'_');
        if word_ends && word == "if" {
            depth += 1;
        } else if word_ends && word == "end" {
            depth = depth.saturating_sub(1);
        }
        max = max.max(depth);
        i += 1;
    }
    max
}

/// Runs a jq program in this process, on a [`deep`] stack. It cannot stop a program
/// that never ends: servers run jq in a sandbox process instead (see `aob-exec`), and
/// this is what that process calls.
pub fn run_in_process(filter: &str, input: Value, limits: &Limits) -> Result<Value, String> {
    precheck(filter, limits)?;
    let (code, max_depth) = (filter.to_owned(), limits.json_depth);
    deep(move || run_compiled(&code, input, max_depth)).map_err(|e| e.to_string())?
}

fn run_compiled(code: &str, input: Value, max_depth: usize) -> Result<Value, String> {
    let filter = compile_filter(code)?;
    let input = Val::deserialize(input).map_err(|e| format!("cannot pass input to jq: {e}"))?;
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
    let mut outputs = Vec::new();
    for result in filter.id.run((ctx, input)) {
        let value = result.map_err(describe_exception)?;
        if outputs.len() >= MAX_OUTPUTS {
            return Err(format!("jq program produced more than {MAX_OUTPUTS} outputs"));
        }
        outputs.push(to_json_at(&value, 0, max_depth)?);
    }
    if outputs.len() == 1 {
        Ok(outputs.pop().unwrap_or(Value::Null))
    } else {
        Ok(Value::Array(outputs))
    }
}

fn compile_filter(code: &str) -> Result<JqFilter, String> {
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|(name, _, _)| !DENIED_FUNCTIONS.contains(name));
    // `Loader::new` refuses `import`/`include`, so a filter cannot read files.
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader.load(&arena, File { code, path: () }).map_err(|errors| {
        let messages: Vec<String> = errors.iter().flat_map(|(file, error)| load_error_messages(file.code, error)).collect();
        format!("invalid jq filter: {}", messages.join("; "))
    })?;
    Compiler::default().with_funs(funs).compile(modules).map_err(|errors| {
        let messages: Vec<String> = errors
            .iter()
            .flat_map(|(file, undefined)| {
                undefined
                    .iter()
                    .map(|(name, kind)| format!("undefined {} `{name}`{}", kind.as_str(), at(file.code, name)))
            })
            .collect();
        format!("invalid jq filter: {}", messages.join("; "))
    })
}

fn load_error_messages(code: &str, error: &load::Error<&str>) -> Vec<String> {
    match error {
        load::Error::Io(errors) => errors.iter().map(|(path, message)| format!("cannot load module `{path}`: {message}")).collect(),
        load::Error::Lex(errors) => errors
            .iter()
            .map(|(expect, found)| format!("expected {}{}", lex_expectation(expect), at(code, found)))
            .collect(),
        load::Error::Parse(errors) => errors
            .iter()
            .map(|(expect, found)| {
                let what = if found.is_empty() {
                    "end of input".to_owned()
                } else {
                    format!("`{}`", found.chars().take(20).collect::<String>())
                };
                format!("expected {}, found {what}{}", expect.as_str(), at(code, found))
            })
            .collect(),
    }
}

/// jaq's own `as_str` panics on delimiters it does not know, so this mapping is total.
fn lex_expectation(expect: &lex::Expect<&str>) -> &'static str {
    match expect {
        lex::Expect::Digit => "a digit",
        lex::Expect::Ident => "an identifier",
        lex::Expect::Delim("(") => "a closing parenthesis",
        lex::Expect::Delim("[") => "a closing bracket",
        lex::Expect::Delim("{") => "a closing brace",
        lex::Expect::Delim("\"") => "a closing quote",
        lex::Expect::Delim(_) => "a closing delimiter",
        lex::Expect::Escape => "a string escape sequence",
        lex::Expect::Unicode => "a 4-digit hexadecimal code point",
        lex::Expect::Token => "a token",
        _ => "a token",
    }
}

/// " at offset N" when `part` is a slice of `code`; jaq reports positions only as slices.
fn at(code: &str, part: &str) -> String {
    let start = code.as_ptr() as usize;
    let offset = (part.as_ptr() as usize).checked_sub(start);
    match offset {
        Some(offset) if offset <= code.len() => format!(" at offset {offset}"),
        _ => String::new(),
    }
}

fn describe_exception(exception: jaq_core::Exn<'_, Val>) -> String {
    match exception.get_err() {
        Ok(error) => format!("jq error: {error}"),
        // `unwrap_valr` would call `process::exit` on `halt`; it must only end this step.
        Err(other) => match other.get_halt() {
            Ok(code) => format!("jq program called halt with exit code {code}"),
            Err(_) => "jq program stopped unexpectedly".to_owned(),
        },
    }
}

/// jq can build arbitrarily deep values (`reduce range(n) as $_ (null; [.])`); converting
/// them stops at the depth limit, so what comes out can be stored and read back.
fn to_json_at(value: &Val, depth: usize, max_depth: usize) -> Result<Value, String> {
    if depth > max_depth {
        return Err(format!("jq output is nested deeper than {max_depth} levels"));
    }
    let to_json = |v: &Val| to_json_at(v, depth + 1, max_depth);
    Ok(match value {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => number_to_json(n),
        Val::TStr(bytes) | Val::BStr(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        Val::Arr(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Val::Obj(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (key, value) in map.iter() {
                let key = match key {
                    Val::TStr(bytes) | Val::BStr(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    other => {
                        return Err(format!("jq produced an object with non-string key {other}"));
                    }
                };
                out.insert(key, to_json(value)?);
            }
            Value::Object(out)
        }
    })
}

fn number_to_json(n: &Num) -> Value {
    match n {
        Num::Int(i) => i64::try_from(*i).map_or(Value::Null, Value::from),
        // NaN and infinities have no JSON form; jq prints them as null too.
        Num::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        // Big integers and decimal literals go through their decimal text.
        other => other.to_string().parse::<Number>().map_or(Value::Null, Value::Number),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jq(filter: &str, input: Value) -> Result<Value, String> {
        compile_filter(filter)?;
        run_in_process(filter, input, &Limits::default())
    }

    #[test]
    fn single_output_is_returned_as_is() {
        assert_eq!(jq(".a.b", json!({"a": {"b": [1, 2]}})).unwrap(), json!([1, 2]));
        assert_eq!(jq("map(select(.n > 1)) | length", json!([{"n": 1}, {"n": 2}, {"n": 3}])).unwrap(), json!(2));
        assert_eq!(
            jq("{x: .a, y: (.b | ascii_upcase)}", json!({"a": 1, "b": "q"})).unwrap(),
            json!({"x": 1, "y": "Q"})
        );
    }

    #[test]
    fn several_or_no_outputs_become_an_array() {
        assert_eq!(jq(".[] | .id", json!([{"id": 1}, {"id": 2}])).unwrap(), json!([1, 2]));
        assert_eq!(jq("empty", json!(1)).unwrap(), json!([]));
    }

    #[test]
    fn values_round_trip() {
        let input = json!({"s": "é", "f": 1.5, "i": -3, "big": u64::MAX, "n": null, "b": true, "o": {"z": 1, "a": 2}});
        assert_eq!(jq(".", input.clone()).unwrap(), input);
        assert_eq!(jq("1e1000", json!(null)).unwrap(), json!(null));
        assert_eq!(jq("100000000000000000000000", json!(null)).unwrap(), json!(1e23));
        assert_eq!(jq("nan", json!(null)).unwrap(), json!(null));
        assert_eq!(jq("10 / 4", json!(null)).unwrap(), json!(2.5));
    }

    #[test]
    fn standard_library_is_available() {
        assert_eq!(jq("[.[] | tostring] | join(\",\")", json!([1, 2])).unwrap(), json!("1,2"));
        assert_eq!(jq("test(\"^a\")", json!("abc")).unwrap(), json!(true));
        assert_eq!(jq("group_by(.k) | map(length)", json!([{"k": 1}, {"k": 2}, {"k": 1}])).unwrap(), json!([2, 1]));
        assert_eq!(jq("tojson", json!([1])).unwrap(), json!("[1]"));
    }

    #[test]
    fn compile_errors_are_reported() {
        let err = compile_filter(".a |").err().unwrap();
        assert!(err.starts_with("invalid jq filter"), "{err}");
        let err = compile_filter("foo(1)").err().unwrap();
        assert!(err.contains("undefined filter `foo`"), "{err}");
        let err = compile_filter("$x").err().unwrap();
        assert!(err.contains("undefined variable"), "{err}");
        let err = compile_filter("if 1 then 2").err().unwrap();
        assert!(err.contains("expected else or end, found end of input at offset 11"), "{err}");
        let err = compile_filter("{a;}").err().unwrap();
        assert!(err.contains("found `;` at offset 2"), "{err}");
        let err = compile_filter("(1").err().unwrap();
        assert!(err.contains("closing parenthesis"), "{err}");
        let err = compile_filter("\"abc").err().unwrap();
        assert!(err.contains("closing quote"), "{err}");
        assert!(compile_filter("import \"x\" as x; .").is_err());
    }

    #[test]
    fn environment_is_not_exposed() {
        let err = compile_filter("env").err().unwrap();
        assert!(err.contains("undefined filter `env`"), "{err}");
        assert!(compile_filter("$ENV").is_err());
    }

    #[test]
    fn runtime_errors_and_halt_are_step_errors() {
        let err = jq(".a", json!([1])).unwrap_err();
        assert!(err.starts_with("jq error"), "{err}");
        let err = jq("error(\"boom\")", json!(null)).unwrap_err();
        assert!(err.contains("boom"), "{err}");
        let err = jq("halt", json!(null)).unwrap_err();
        assert!(err.contains("halt"), "{err}");
        let err = jq("halt_error", json!("bye")).unwrap_err();
        assert!(err.contains("exit code 5"), "{err}");
    }

    #[test]
    fn endless_generators_are_cut_off() {
        let err = jq("repeat(1)", json!(null)).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn outputs_without_a_json_form_are_rejected() {
        let err = jq("{(1): 2}", json!(null)).unwrap_err();
        assert!(err.contains("non-string key 1"), "{err}");
        let err = jq("reduce range(1000) as $_ (null; [.])", json!(null)).unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
        assert!(jq("reduce range(60) as $_ (null; [.])", json!(null)).is_ok());
    }

    #[test]
    fn undefined_inputs_and_file_access() {
        assert!(compile_filter("input").is_err());
        assert!(compile_filter("inputs").is_err());
        assert!(compile_filter("$__prog_args").is_err());
    }

    #[test]
    fn validation() {
        let check = |step: Value| {
            let obj = step.as_object().unwrap().clone();
            let mut p = Params::step(&obj);
            let parsed = JqTransform::parse(&mut p, &Limits::default());
            (parsed.is_some(), p.finish())
        };
        let (ok, problems) = check(json!({"filter": ".a"}));
        assert!(ok && problems.is_empty());
        let (ok, problems) = check(json!({"filter": ".a | | ."}));
        assert!(!ok);
        assert_eq!(problems[0].0, "/filter");
        let (ok, problems) = check(json!({}));
        assert!(!ok);
        assert_eq!(problems[0].0, "/filter");
    }

    #[test]
    fn hostile_filters_are_refused_or_contained() {
        let limits = Limits::default();
        let brackets = format!("{}.{}", "[".repeat(5_000), "]".repeat(5_000));
        assert!(check(&brackets, &limits).unwrap_err().contains("nests"));
        let ifs = format!("{}1{}", "if true then ".repeat(100), " else 0 end".repeat(100));
        assert!(check(&ifs, &limits).unwrap_err().contains("nests"));
        let long = ".a".repeat(20_000);
        assert!(check(&long, &limits).unwrap_err().contains("bytes long"));
        // A long flat chain is within the limits and compiles on the deep stack.
        let chain = format!("1{}", " + 1".repeat(3_000));
        check(&chain, &limits).unwrap();
        assert_eq!(run_in_process(&chain, json!(null), &limits).unwrap(), json!(3001));
        assert_eq!(nesting(r#""((((" | [(.a)] # ((((("#), 2);
    }
}
