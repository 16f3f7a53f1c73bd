//! `jq_transform`: run a real jq program through jaq.

use jaq_core::load::{Arena, File, Loader, lex};
use jaq_core::{Compiler, Ctx, Vars, data, load};
use jaq_json::{Num, Val};
use serde::Deserialize as _;
use serde_json::{Number, Value};

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
    filter: String,
}

impl JqTransform {
    pub(crate) fn parse(p: &mut Params<'_>) -> Option<Self> {
        let filter = p.required_str("filter")?;
        if let Err(message) = compile_filter(filter) {
            p.problem_at("filter", message);
            return None;
        }
        Some(Self { filter: filter.to_owned() })
    }

    pub(crate) fn run(&self, input: Value) -> Result<Value, String> {
        let filter = compile_filter(&self.filter)?;
        let input = Val::deserialize(input).map_err(|e| format!("cannot pass input to jq: {e}"))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
        let mut outputs = Vec::new();
        for result in filter.id.run((ctx, input)) {
            let value = result.map_err(describe_exception)?;
            if outputs.len() >= MAX_OUTPUTS {
                return Err(format!("jq program produced more than {MAX_OUTPUTS} outputs"));
            }
            outputs.push(to_json(&value)?);
        }
        if outputs.len() == 1 {
            Ok(outputs.pop().unwrap_or(Value::Null))
        } else {
            Ok(Value::Array(outputs))
        }
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
/// them recursively must not overflow the stack.
const MAX_DEPTH: usize = 256;

fn to_json(value: &Val) -> Result<Value, String> {
    to_json_at(value, 0)
}

fn to_json_at(value: &Val, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("jq output is nested deeper than {MAX_DEPTH} levels"));
    }
    let to_json = |v: &Val| to_json_at(v, depth + 1);
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
        JqTransform { filter: filter.to_owned() }.run(input)
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
        assert!(jq("reduce range(200) as $_ (null; [.])", json!(null)).is_ok());
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
            let parsed = JqTransform::parse(&mut p);
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
}
