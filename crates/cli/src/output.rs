//! Printing results: `pretty` for people, `json` for tools, `compact` for one line each.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Pretty,
    Json,
    Compact,
}

pub fn print(fmt: Format, v: &Value) {
    match fmt {
        Format::Json | Format::Pretty => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Format::Compact => println!("{v}"),
    }
}

/// Prints rows of a list: a table for `pretty`, one JSON object per line for `compact`.
pub fn table(fmt: Format, whole: &Value, rows: &[Value], cols: &[(&str, &str)]) {
    match fmt {
        Format::Json => print(fmt, whole),
        Format::Compact => {
            for r in rows {
                println!("{r}");
            }
        }
        Format::Pretty => {
            let cells: Vec<Vec<String>> = rows.iter().map(|r| cols.iter().map(|(_, k)| cell(&r[*k])).collect()).collect();
            let mut widths: Vec<usize> = cols.iter().map(|(h, _)| h.len()).collect();
            for row in &cells {
                for (i, c) in row.iter().enumerate() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
            let line = |vals: Vec<String>| {
                vals.iter()
                    .enumerate()
                    .map(|(i, v)| format!("{v:<w$}", w = widths[i]))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            println!("{}", line(cols.iter().map(|(h, _)| h.to_string()).collect()));
            for row in cells {
                println!("{}", line(row));
            }
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn print_error_details(details: &Value) {
    if let Some(errors) = details.get("errors").and_then(Value::as_array) {
        for e in errors {
            let ptr = e["pointer"].as_str().unwrap_or("");
            eprintln!("  {} {}", if ptr.is_empty() { "/" } else { ptr }, e["message"].as_str().unwrap_or(""));
        }
    }
}
