//! `parse_date`: normalise dates found in strings, unix timestamps or record fields.

use chrono::format::StrftimeItems;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat};
use serde_json::{Number, Value};

use crate::params::Params;
use crate::path::Path;
use crate::value::{preview, type_name};

/// Timezone-less formats tried after RFC 3339 and RFC 2822; such values are taken as UTC.
const NAIVE_DATETIME_FORMATS: [&str; 4] = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"];

/// Numbers at least this large are read as milliseconds: as seconds they would be past year 5000.
const MILLIS_THRESHOLD: f64 = 100_000_000_000.0;

#[derive(Clone, Copy)]
enum Output {
    Rfc3339,
    Unix,
    UnixMs,
    Date,
}

pub(crate) struct ParseDate {
    format: Option<String>,
    output: Output,
    /// With a field, records are updated in place; `into` defaults to the field itself.
    target: Option<(Path, Path)>,
}

impl ParseDate {
    pub(crate) fn parse(p: &mut Params<'_>) -> Option<Self> {
        let field = p.path("field");
        let into = p.path("into");
        if into.is_some() && p.value("field").is_none() {
            p.problem_at("into", "requires `field`");
        }
        let format = p.str("format").map(str::to_owned);
        if let Some(format) = &format
            && StrftimeItems::new(format).parse().is_err()
        {
            p.problem_at("format", format!("`{format}` is not a valid strftime format"));
        }
        let output = match p.choice("output", &["rfc3339", "unix", "unix_ms", "date"], "rfc3339") {
            "unix" => Output::Unix,
            "unix_ms" => Output::UnixMs,
            "date" => Output::Date,
            _ => Output::Rfc3339,
        };
        let target = field.map(|field| {
            let into = into.unwrap_or_else(|| field.clone());
            (field, into)
        });
        Some(Self { format, output, target })
    }

    fn parse_str(&self, text: &str) -> Option<DateTime<FixedOffset>> {
        let text = text.trim();
        if let Some(format) = &self.format {
            return DateTime::parse_from_str(text, format)
                .ok()
                .or_else(|| NaiveDateTime::parse_from_str(text, format).ok().map(|dt| dt.and_utc().fixed_offset()))
                .or_else(|| {
                    NaiveDate::parse_from_str(text, format)
                        .ok()
                        .map(|d| d.and_time(NaiveTime::MIN).and_utc().fixed_offset())
                });
        }
        DateTime::parse_from_rfc3339(text)
            .ok()
            .or_else(|| DateTime::parse_from_rfc2822(text).ok())
            .or_else(|| {
                NAIVE_DATETIME_FORMATS
                    .iter()
                    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok().map(|dt| dt.and_utc().fixed_offset()))
            })
            .or_else(|| {
                NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .ok()
                    .map(|d| d.and_time(NaiveTime::MIN).and_utc().fixed_offset())
            })
            .or_else(|| {
                // Timestamps often arrive as strings of digits (query strings, CSV exports).
                let digits = text.strip_prefix('-').unwrap_or(text);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                text.parse::<f64>().ok().and_then(from_unix)
            })
    }

    fn convert(&self, value: &Value) -> Result<Value, String> {
        let parsed = match value {
            // Optional dates are common in API data; absence is passed through, not an error.
            Value::Null => return Ok(Value::Null),
            Value::String(s) => self.parse_str(s),
            Value::Number(n) if self.format.is_some() => self.parse_str(&n.to_string()),
            Value::Number(n) => number_to_date(n),
            other => {
                return Err(format!("cannot parse {} {} as a date", type_name(other), preview(other)));
            }
        };
        let Some(dt) = parsed else {
            return Err(match &self.format {
                Some(format) => format!("cannot parse {} as a date with format `{format}`", preview(value)),
                None => format!(
                    "cannot parse {} as a date (tried RFC 3339, RFC 2822, `%Y-%m-%d`, \
                     `%Y-%m-%d %H:%M:%S` and unix seconds or milliseconds)",
                    preview(value)
                ),
            });
        };
        Ok(match self.output {
            Output::Rfc3339 => Value::String(dt.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            Output::Unix => Value::from(dt.timestamp()),
            Output::UnixMs => Value::from(dt.timestamp_millis()),
            Output::Date => Value::String(dt.format("%Y-%m-%d").to_string()),
        })
    }

    pub(crate) fn run(&self, input: Value) -> Result<Value, String> {
        let Some((field, into)) = &self.target else {
            return match input {
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        if item.is_object() {
                            return Err(format!("item {i} is a record: set `field` to choose the date field"));
                        }
                        self.convert(item).map_err(|e| format!("item {i}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array),
                Value::Object(_) => Err("input is a record: set `field` to choose the date field".to_owned()),
                other => self.convert(&other),
            };
        };
        let apply = |record: &mut Value| -> Result<(), String> {
            if !record.is_object() {
                return Err(format!("expected an object, got {}", type_name(record)));
            }
            let converted = match field.get(record) {
                None => Value::Null,
                Some(v) => self.convert(v).map_err(|e| format!("field `{}`: {e}", field.as_str()))?,
            };
            into.set(record, converted)
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

fn number_to_date(n: &Number) -> Option<DateTime<FixedOffset>> {
    match n.as_i64() {
        Some(i) if (i as f64).abs() >= MILLIS_THRESHOLD => DateTime::from_timestamp_millis(i).map(|d| d.fixed_offset()),
        Some(i) => DateTime::from_timestamp(i, 0).map(|d| d.fixed_offset()),
        None => n.as_f64().and_then(from_unix),
    }
}

fn from_unix(f: f64) -> Option<DateTime<FixedOffset>> {
    if !f.is_finite() {
        return None;
    }
    let seconds = if f.abs() >= MILLIS_THRESHOLD { f / 1000.0 } else { f };
    let whole = seconds.floor();
    // `as` saturates, and chrono rejects out-of-range seconds, so huge inputs become None.
    let nanos = ((seconds - whole) * 1e9).round().clamp(0.0, 999_999_999.0) as u32;
    DateTime::from_timestamp(whole as i64, nanos).map(|d| d.fixed_offset())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(step: Value) -> Result<ParseDate, Vec<(String, String)>> {
        let obj = step.as_object().unwrap().clone();
        let mut p = Params::step(&obj);
        let parsed = ParseDate::parse(&mut p);
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
    fn default_formats() {
        let cases = [
            (json!("2024-03-05T10:20:30Z"), "2024-03-05T10:20:30Z"),
            (json!("2024-03-05T10:20:30.5+02:00"), "2024-03-05T10:20:30.500+02:00"),
            (json!("Tue, 5 Mar 2024 10:20:30 +0000"), "2024-03-05T10:20:30Z"),
            (json!("2024-03-05"), "2024-03-05T00:00:00Z"),
            (json!("2024-03-05 10:20:30"), "2024-03-05T10:20:30Z"),
            (json!("2024-03-05T10:20"), "2024-03-05T10:20:00Z"),
            (json!(1_709_634_030), "2024-03-05T10:20:30Z"),
            (json!(1_709_634_030_000i64), "2024-03-05T10:20:30Z"),
            (json!(1_709_634_030.25), "2024-03-05T10:20:30.250Z"),
            (json!("1709634030"), "2024-03-05T10:20:30Z"),
            (json!(" 2024-03-05 "), "2024-03-05T00:00:00Z"),
        ];
        for (input, expected) in cases {
            assert_eq!(run(json!({}), input.clone()).unwrap(), json!(expected), "{input}");
        }
    }

    #[test]
    fn outputs() {
        let input = json!("2024-03-05T10:20:30+01:00");
        assert_eq!(run(json!({"output": "unix"}), input.clone()).unwrap(), json!(1_709_630_430));
        assert_eq!(run(json!({"output": "unix_ms"}), input.clone()).unwrap(), json!(1_709_630_430_000i64));
        assert_eq!(run(json!({"output": "date"}), input).unwrap(), json!("2024-03-05"));
    }

    #[test]
    fn custom_format() {
        let step = json!({"format": "%d/%m/%Y"});
        assert_eq!(run(step.clone(), json!("05/03/2024")).unwrap(), json!("2024-03-05T00:00:00Z"));
        let err = run(step, json!("2024-03-05")).unwrap_err();
        assert!(err.contains("\"2024-03-05\"") && err.contains("%d/%m/%Y"), "{err}");
        let step = json!({"format": "%d.%m.%Y %H:%M %z"});
        assert_eq!(run(step, json!("05.03.2024 10:20 +0100")).unwrap(), json!("2024-03-05T10:20:00+01:00"));
        let step = json!({"format": "%s", "output": "date"});
        assert_eq!(run(step, json!(1_709_634_030)).unwrap(), json!("2024-03-05"));
    }

    #[test]
    fn records_and_into() {
        let input = json!([{"d": "2024-03-05"}, {"d": null}, {}]);
        let out = run(json!({"field": "d", "output": "unix"}), input.clone()).unwrap();
        assert_eq!(out, json!([{"d": 1_709_596_800}, {"d": null}, {"d": null}]));
        let out = run(json!({"field": "d", "into": "meta.day", "output": "date"}), input).unwrap();
        assert_eq!(
            out,
            json!([
                {"d": "2024-03-05", "meta": {"day": "2024-03-05"}},
                {"d": null, "meta": {"day": null}},
                {"meta": {"day": null}}
            ])
        );
        let out = run(json!({"field": "d"}), json!({"d": "2024-03-05"})).unwrap();
        assert_eq!(out, json!({"d": "2024-03-05T00:00:00Z"}));
        assert_eq!(run(json!({"field": "d"}), json!([])).unwrap(), json!([]));
    }

    #[test]
    fn arrays_of_scalars() {
        let out = run(json!({"output": "date"}), json!(["2024-03-05T23:00:00Z", 0, null])).unwrap();
        assert_eq!(out, json!(["2024-03-05", "1970-01-01", null]));
    }

    #[test]
    fn errors_name_the_value() {
        let err = run(json!({}), json!("next tuesday")).unwrap_err();
        assert!(err.contains("\"next tuesday\""), "{err}");
        let err = run(json!({"field": "d"}), json!([{"d": "ok?"}])).unwrap_err();
        assert!(err.contains("record 0") && err.contains("`d`") && err.contains("ok?"), "{err}");
        assert!(run(json!({}), json!(true)).is_err());
        assert!(run(json!({}), json!([{"d": 1}])).unwrap_err().contains("set `field`"));
        assert!(run(json!({}), json!({"d": 1})).is_err());
        assert!(run(json!({"field": "d"}), json!("2024-03-05")).is_err());
        assert!(run(json!({"field": "d"}), json!([3])).unwrap_err().contains("record 0"));
        assert!(run(json!({}), json!(1e300)).is_err());
        assert!(run(json!({}), json!(i64::MAX)).is_err());
        assert!(run(json!({}), json!("-")).is_err());
    }

    #[test]
    fn validation() {
        let pointer = |step: Value| parse(step).err().unwrap()[0].0.clone();
        assert_eq!(pointer(json!({"format": "%Q"})), "/format");
        assert_eq!(pointer(json!({"output": "iso"})), "/output");
        assert_eq!(pointer(json!({"into": "x"})), "/into");
        assert_eq!(pointer(json!({"field": 3})), "/field");
    }
}
