//! Edge and loop conditions: CEL over `output`, `inputs` and `nodes`.

use serde_json::Value;

/// A compiled condition. Compile once per workflow version, evaluate per run.
#[derive(Debug)]
pub struct Condition {
    pub source: String,
    program: cel::Program,
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
    pub fn compile(source: &str) -> Result<Condition, String> {
        let normalized = normalize(source);
        let program = cel::Program::compile(&normalized).map_err(|e| e.to_string())?;
        Ok(Condition {
            source: source.to_string(),
            program,
        })
    }

    /// Evaluates to a bool; anything else is an error naming the condition.
    pub fn eval(&self, output: &Value, inputs: &Value, nodes: &Value) -> Result<bool, String> {
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
}
