//! Edge and loop conditions: CEL over `output`, `inputs` and `nodes`.

use aob_limits::{Limits, deep};
use cel::IdedExpr;
use cel::common::ast::{EntryExpr, Expr, IdedEntryExpr, LiteralValue};
use serde_json::Value;

/// A compiled condition. Compile once per workflow version, evaluate per run.
#[derive(Debug)]
pub struct Condition {
    pub source: String,
    program: cel::Program,
    /// Work one evaluation may take (see `cost::estimate`).
    budget: u64,
}

/// Rewrites the seed's `$.x` into `output.x`, leaving string literals alone.
pub fn normalize(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len() + 8);
    let mut quote: Option<char> = None;
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None => {
                if c == '"' || c == '\'' {
                    quote = Some(c);
                    out.push(c);
                } else if c == '$' && chars.peek() == Some(&'.') {
                    chars.next();
                    out.push_str("output.");
                } else {
                    out.push(c);
                }
            }
        }
    }
    out
}

impl Condition {
    /// Compiles within the default [`Limits`].
    pub fn compile(source: &str) -> Result<Condition, String> {
        Condition::compile_with(source, &Limits::default())
    }

    /// Compiles `source` if it stays within `limits`: its length and bracket depth are
    /// checked before the parser sees it, the parser runs on a [`deep`] stack, and the
    /// expression's depth and comprehension nesting are checked on the result.
    pub fn compile_with(source: &str, limits: &Limits) -> Result<Condition, String> {
        if source.len() > limits.expression_bytes {
            return Err(format!(
                "the condition is {} bytes long; the limit is {}",
                source.len(),
                limits.expression_bytes
            ));
        }
        let normalized = normalize(source);
        let nesting = bracket_depth(&normalized);
        if nesting > limits.expression_depth {
            return Err(format!("the condition nests brackets {nesting} deep; the limit is {}", limits.expression_depth));
        }
        let (max_depth, max_nesting) = (limits.expression_depth, limits.cel_comprehension_depth);
        let compiled = deep(move || {
            let program = cel::Program::compile(&normalized).map_err(|e| e.to_string())?;
            let shape = Shape::of(program.expression());
            if shape.depth > max_depth {
                // Dropped here, on the deep stack: a long operator chain is a deep tree.
                return Err(format!("the condition is nested {} levels deep; the limit is {max_depth}", shape.depth));
            }
            if shape.comprehensions > max_nesting {
                return Err(format!(
                    "the condition nests {} comprehensions (all, exists, map, filter); the limit is {max_nesting}",
                    shape.comprehensions
                ));
            }
            Ok(program)
        })
        .map_err(|e| e.to_string())?;
        Ok(Condition {
            source: source.to_string(),
            program: compiled?,
            budget: limits.cel_cost,
        })
    }

    /// Whether the expression reads the variable `name` (`output`, `inputs`, `nodes`):
    /// binding `nodes` copies every output of the run, so callers skip it when unread.
    pub fn uses(&self, name: &str) -> bool {
        self.program.references().has_variable(name)
    }

    /// Evaluates to a bool; anything else is an error naming the condition. The work the
    /// expression could do over this data is estimated first, and refused beyond the budget.
    pub fn eval(&self, output: &Value, inputs: &Value, nodes: &Value) -> Result<bool, String> {
        let data = DataSize::of([output, inputs, nodes]);
        let cost = cost::estimate(self.program.expression(), data);
        if cost > self.budget {
            return Err(format!(
                "condition `{}` would cost about {cost} steps over this data; the limit is {}",
                self.source, self.budget
            ));
        }
        let mut ctx = cel::Context::default();
        for (name, value) in [("output", output), ("inputs", inputs), ("nodes", nodes)] {
            ctx.add_variable(name, value.clone())
                .map_err(|e| format!("condition `{}`: cannot bind {name}: {e}", self.source))?;
        }
        match self.program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("condition `{}` evaluated to {other:?}, not a bool", self.source)),
            Err(e) => Err(format!("condition `{}`: {e}", self.source)),
        }
    }
}

/// Deepest `(`/`[`/`{` nesting outside string literals.
fn bracket_depth(expr: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == '\\' {
                    chars.next();
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '(' | '[' | '{' => {
                    depth += 1;
                    max = max.max(depth);
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    max
}

/// The depth of an expression tree and how deeply comprehensions nest in it, found
/// without recursion (the tree may be as deep as the source is long).
struct Shape {
    depth: usize,
    comprehensions: usize,
}

impl Shape {
    fn of(root: &IdedExpr) -> Shape {
        let mut shape = Shape { depth: 0, comprehensions: 0 };
        let mut stack = vec![(root, 1usize, 0usize)];
        while let Some((e, d, c)) = stack.pop() {
            shape.depth = shape.depth.max(d);
            shape.comprehensions = shape.comprehensions.max(c);
            let inner = if matches!(e.expr, Expr::Comprehension(_)) { c + 1 } else { c };
            for child in children(e) {
                stack.push((child, d + 1, inner));
            }
        }
        shape
    }
}

/// The direct sub-expressions of `e`.
fn children(e: &IdedExpr) -> Vec<&IdedExpr> {
    match &e.expr {
        Expr::Call(call) => call.target.as_deref().into_iter().chain(call.args.iter()).collect(),
        Expr::Comprehension(c) => vec![&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result],
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => m.entries.iter().flat_map(entry_children).collect(),
        Expr::Struct(s) => s.entries.iter().flat_map(entry_children).collect(),
        Expr::Select(s) => vec![&*s.operand],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

fn entry_children(entry: &IdedEntryExpr) -> Vec<&IdedExpr> {
    match &entry.expr {
        EntryExpr::StructField(f) => vec![&f.value],
        EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
    }
}

/// The sizes that decide what an expression can cost over some data: the longest
/// collection and the longest string anywhere in it.
#[derive(Debug, Clone, Copy, Default)]
struct DataSize {
    items: u64,
    bytes: u64,
}

impl DataSize {
    fn of<'a>(values: impl IntoIterator<Item = &'a Value>) -> DataSize {
        let mut size = DataSize::default();
        let mut stack: Vec<&Value> = values.into_iter().collect();
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) => size.bytes = size.bytes.max(s.len() as u64),
                Value::Array(items) => {
                    size.items = size.items.max(items.len() as u64);
                    stack.extend(items);
                }
                Value::Object(map) => {
                    size.items = size.items.max(map.len() as u64);
                    stack.extend(map.values());
                }
                _ => {}
            }
        }
        size
    }
}

/// A conservative estimate of the steps an evaluation takes: comprehensions multiply
/// their body by the length of what they iterate, `+` costs the length of what it joins
/// (bytes count 1/64 of a step: copying is cheap next to interpreting). Lengths are
/// bounded by the longest collection and string in the data, or a literal.
mod cost {
    use super::{DataSize, Expr, IdedExpr, LiteralValue, children};

    pub(super) fn estimate(e: &IdedExpr, data: DataSize) -> u64 {
        walk(e, data, "").cost
    }

    /// Functions whose result is a scalar, so nothing they read makes later work longer.
    const SCALAR: [&str; 25] = [
        "_==_",
        "_!=_",
        "_<_",
        "_<=_",
        "_>_",
        "_>=_",
        "_&&_",
        "_||_",
        "!_",
        "-_",
        "_-_",
        "_*_",
        "_/_",
        "_%_",
        "@in",
        "size",
        "contains",
        "startsWith",
        "endsWith",
        "matches",
        "int",
        "uint",
        "double",
        "bool",
        "@not_strictly_false",
    ];

    /// What a sub-expression can produce and what producing it costs.
    #[derive(Clone, Copy, Default)]
    struct Bound {
        items: u64,
        bytes: u64,
        cost: u64,
    }

    /// Recursion is bounded by the expression depth checked at compile.
    fn walk(e: &IdedExpr, data: DataSize, accu: &str) -> Bound {
        match &e.expr {
            Expr::Literal(LiteralValue::String(s)) => Bound {
                items: 1,
                bytes: s.inner().len() as u64,
                cost: 1,
            },
            Expr::Literal(LiteralValue::Bytes(b)) => Bound {
                items: 1,
                bytes: b.inner().len() as u64,
                cost: 1,
            },
            Expr::Literal(_) => Bound { items: 1, bytes: 8, cost: 1 },
            // The accumulator's growth is counted by the comprehension that owns it.
            Expr::Ident(name) if !accu.is_empty() && name == accu => Bound { items: 0, bytes: 0, cost: 1 },
            Expr::Ident(_) => Bound {
                items: data.items,
                bytes: data.bytes,
                cost: 1,
            },
            Expr::Comprehension(c) => {
                let range = walk(&c.iter_range, data, accu);
                let init = walk(&c.accu_init, data, accu);
                // Inside, anything may be as long as the range or the data.
                let inner = DataSize {
                    items: data.items.max(range.items),
                    bytes: data.bytes.max(range.bytes),
                };
                let cond = walk(&c.loop_cond, inner, &c.accu_var);
                let step = walk(&c.loop_step, inner, &c.accu_var);
                let rounds = range.items.max(1);
                let items = rounds.saturating_mul(step.items.max(1));
                let bytes = rounds.saturating_mul(step.bytes);
                let result = walk(&c.result, inner, &c.accu_var);
                let per_round = cond.cost.saturating_add(step.cost).saturating_add(1);
                let cost = range
                    .cost
                    .saturating_add(init.cost)
                    .saturating_add(rounds.saturating_mul(per_round))
                    .saturating_add(result.cost)
                    .saturating_add(items)
                    .saturating_add(bytes / 64);
                Bound { items, bytes, cost }
            }
            _ => {
                let mut out = Bound { cost: 1, ..Bound::default() };
                for child in children(e) {
                    let b = walk(child, data, accu);
                    out.items = out.items.saturating_add(b.items);
                    out.bytes = out.bytes.saturating_add(b.bytes);
                    out.cost = out.cost.saturating_add(b.cost);
                }
                if let Expr::Call(call) = &e.expr {
                    if call.func_name == "_+_" {
                        out.cost = out.cost.saturating_add(out.items).saturating_add(out.bytes / 64);
                    } else if SCALAR.contains(&call.func_name.as_str()) {
                        // Their result is a bool or a number, whatever they read.
                        out.items = 1;
                        out.bytes = 8;
                    }
                }
                out.items = out.items.max(1);
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_dollar_dot_means_output() {
        assert_eq!(normalize("$.approved == true"), "output.approved == true");
        assert_eq!(normalize("'$.x' == $.x"), "'$.x' == output.x");
    }

    #[test]
    fn evaluates_over_output_inputs_nodes() {
        let c = Condition::compile("output.body.score >= 80 && inputs.mode == 'x' && nodes.a.n == 1").unwrap();
        let ok = c.eval(&json!({"body": {"score": 85}}), &json!({"mode": "x"}), &json!({"a": {"n": 1}})).unwrap();
        assert!(ok);
        let c = Condition::compile("!output.approved").unwrap();
        assert!(!c.eval(&json!({"approved": true}), &json!({}), &json!({})).unwrap());
        assert!(Condition::compile("output.x >").is_err());
        let c = Condition::compile("output.x").unwrap();
        assert!(c.eval(&json!({"x": 3}), &json!({}), &json!({})).is_err());
    }

    #[test]
    fn hostile_sources_are_refused_before_they_cost_anything() {
        let long = vec!["output.x"; 300_000].join(" || ");
        assert!(Condition::compile(&long).unwrap_err().contains("bytes long"));
        let brackets = format!("{}true{}", "(".repeat(5_000), ")".repeat(5_000));
        assert!(Condition::compile(&brackets).is_err());
        // A chain of operators is a deep tree even without brackets.
        let chain = format!("1{} == 2", " + 1".repeat(1_000));
        assert!(
            Condition::compile(&chain).unwrap_err().contains("levels deep"),
            "{:?}",
            Condition::compile(&chain).err()
        );
        let members = format!("output{}", ".a".repeat(1_500));
        assert!(Condition::compile(&members).is_err());
        let nested = "[1].all(a, [1].all(b, [1].all(c, true)))";
        assert!(Condition::compile(nested).unwrap_err().contains("comprehensions"));
        assert!(Condition::compile("[1].all(a, [1].all(b, a == b))").is_ok());
    }

    #[test]
    fn evaluation_cost_is_checked_against_the_data() {
        let c = Condition::compile("inputs.l.all(a, inputs.l.all(b, a != b || a == b))").unwrap();
        let small = json!({"l": [1, 2, 3]});
        assert!(c.eval(&json!({}), &small, &json!({})).unwrap());
        let big = json!({"l": (0..20_000).collect::<Vec<_>>()});
        assert!(c.eval(&json!({}), &big, &json!({})).unwrap_err().contains("would cost"));
        let amplify = Condition::compile("size(inputs.l.map(x, inputs.s + inputs.s)) > 0").unwrap();
        let data = json!({"l": (0..50_000).collect::<Vec<_>>(), "s": "x".repeat(200_000)});
        assert!(amplify.eval(&json!({}), &data, &json!({})).unwrap_err().contains("would cost"));
        // Ordinary conditions over ordinary data pass.
        let c = Condition::compile("output.items.exists(i, i.score > 5) && size(output.items) < 20000").unwrap();
        let items: Vec<_> = (0..10_000).map(|i| json!({"score": i % 10, "name": format!("item {i}")})).collect();
        assert!(c.eval(&json!({"items": items}), &json!({}), &json!({})).unwrap());
    }

    #[test]
    fn knows_which_variables_it_reads() {
        assert!(Condition::compile("nodes.a.n == 1").unwrap().uses("nodes"));
        assert!(Condition::compile("[1].exists(x, nodes.b.ok)").unwrap().uses("nodes"));
        assert!(!Condition::compile("output.nodes == 1 && inputs.x").unwrap().uses("nodes"));
    }
}
