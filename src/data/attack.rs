//! Attack datasets: records of a harmful goal with its jailbreak, read from JSON or JSONL with a
//! field mapping, turned into safe/unsafe prompt pairs.
//!
//! The default mapping is the seeds' format (FlipAttack, `models/data/flipattack.json`): keep records with
//! `judge_success_gpt4 == 1`; the *safe* prompt is `[system "You are a helpful assistant.",
//! user goal]`, the *unsafe* prompt is `all_prompt` (the full jailbreak conversation).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::DataError;
use super::chat::Message;

/// How the fields of a record map onto a pair. Every key is optional in a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldMap {
    /// Field holding the goal (a string).
    pub goal: String,
    /// Field holding the jailbreak: a list of `{role, content}` or a string (one user turn).
    pub unsafe_messages: String,
    /// Field holding the safe prompt (same forms); empty = the goal as a user turn after
    /// `safe_system`.
    pub safe_messages: String,
    /// System turn before the goal in the default safe prompt; empty = none.
    pub safe_system: String,
    /// Keep only records whose `filter_field` equals `filter_value` (or, with `filter_at_least`,
    /// is a number at least that); empty = keep all. A dotted path reaches into an object
    /// (`judge_result.score`).
    pub filter_field: String,
    /// The value `filter_field` must have.
    pub filter_value: Value,
    /// Keep records whose `filter_field` is a number `>=` this instead (a judge's score: RASA
    /// counts DeepInception and persuasion attacks with a score above 0 as successful).
    pub filter_at_least: Option<f64>,
}

impl Default for FieldMap {
    fn default() -> Self {
        Self {
            goal: "goal".into(),
            unsafe_messages: "all_prompt".into(),
            safe_messages: String::new(),
            safe_system: "You are a helpful assistant.".into(),
            filter_field: "judge_success_gpt4".into(),
            filter_value: Value::from(1),
            filter_at_least: None,
        }
    }
}

/// A goal with its plain (safe) and jailbreak (unsafe) prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    /// Index of the record in the file.
    pub record: usize,
    /// The harmful goal.
    pub goal: String,
    /// The plain prompt, which a safe model refuses.
    pub safe: Vec<Message>,
    /// The jailbreak, which the vulnerable model obeys.
    pub unsafe_: Vec<Message>,
}

/// Read every record of a JSON array or JSONL file.
pub fn read_records(path: &Path) -> Result<Vec<Value>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let malformed = |record: Option<usize>, reason: String| DataError::Field {
        path: path.to_path_buf(),
        record,
        field: String::new(),
        reason,
    };
    let trimmed = text.trim_start();
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    if trimmed.starts_with('{')
        && lines > 1
        && let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&text)
    {
        let keys: Vec<&str> = obj.keys().take(5).map(String::as_str).collect();
        return Err(malformed(
            None,
            format!(
                "found one JSON object (keys: {}), expected a JSON array of records or one record per line (JSONL)",
                keys.join(", ")
            ),
        ));
    }
    if trimmed.starts_with('[') {
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(items)) => Ok(items),
            Ok(_) => Err(malformed(None, "expected a JSON array of records".into())),
            Err(e) => Err(malformed(None, format!("malformed JSON: {e}"))),
        }
    } else {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .map_err(|e| malformed(Some(i), format!("malformed JSON line: {e}")))
            })
            .collect()
    }
}

/// Read the pairs of an attack dataset under `map` (filter applied).
pub fn read_pairs(path: &Path, map: &FieldMap) -> Result<Vec<Pair>, DataError> {
    let records = read_records(path)?;
    let mut pairs = Vec::new();
    for (i, rec) in records.iter().enumerate() {
        let err = |field: &str, reason: String| DataError::Field {
            path: PathBuf::from(path),
            record: Some(i),
            field: field.to_string(),
            reason,
        };
        let obj = rec
            .as_object()
            .ok_or_else(|| err("", "not a JSON object".into()))?;
        // Every record's goal is read, kept or filtered out: evaluation asks every plain goal.
        let goal = match obj.get(&map.goal) {
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(err(&map.goal, "empty goal".into()));
            }
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(err(
                    &map.goal,
                    format!("expected a string, found {}", kind(other)),
                ));
            }
            None => return Err(err(&map.goal, "missing field".into())),
        };
        if !map.filter_field.is_empty() {
            let value = dotted(obj, &map.filter_field)
                .ok_or_else(|| err(&map.filter_field, "missing field".into()))?;
            if let Some(min) = map.filter_at_least {
                let Some(x) = value.as_f64() else {
                    return Err(err(
                        &map.filter_field,
                        format!(
                            "{} {value}, but the filter keeps numbers >= {min} (data.fields.filter_at_least)",
                            kind(value)
                        ),
                    ));
                };
                if x < min {
                    continue;
                }
            } else {
                let number = |v: &Value| v.is_number();
                if kind(value) != kind(&map.filter_value)
                    && !(number(value) && number(&map.filter_value))
                {
                    return Err(err(
                        &map.filter_field,
                        format!(
                            "{} {value}, but the filter keeps {} {} (data.fields.filter_value)",
                            kind(value),
                            kind(&map.filter_value),
                            map.filter_value
                        ),
                    ));
                }
                if !json_eq(value, &map.filter_value) {
                    continue;
                }
            }
        }
        let unsafe_ = messages(obj.get(&map.unsafe_messages), &map.unsafe_messages, &err)?;
        let safe = if map.safe_messages.is_empty() {
            let mut m = Vec::new();
            if !map.safe_system.is_empty() {
                m.push(Message::system(map.safe_system.clone()));
            }
            m.push(Message::user(goal.clone()));
            m
        } else {
            messages(obj.get(&map.safe_messages), &map.safe_messages, &err)?
        };
        pairs.push(Pair {
            record: i,
            goal,
            safe,
            unsafe_,
        });
    }
    Ok(pairs)
}

/// The value at a dotted path (`a.b`) of an object.
fn dotted<'a>(obj: &'a serde_json::Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = obj.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut v = obj.get(parts.next()?)?;
    for part in parts {
        v = v.get(part)?;
    }
    Some(v)
}

/// Numbers compare by value (`1` equals `1.0`), everything else structurally.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The messages in field `field` of record `i` of `path` (a list of `{role, content}` or a string,
/// one user turn), or an error naming the record and the field.
pub fn record_messages(
    rec: &Value,
    field: &str,
    path: &Path,
    i: usize,
) -> Result<Vec<Message>, DataError> {
    let err = |f: &str, reason: String| DataError::Field {
        path: path.to_path_buf(),
        record: Some(i),
        field: f.to_string(),
        reason,
    };
    messages(rec.get(field), field, &err)
}

/// A field holding messages: a list of `{role, content}` or a string (one user turn).
fn messages(
    value: Option<&Value>,
    field: &str,
    err: &dyn Fn(&str, String) -> DataError,
) -> Result<Vec<Message>, DataError> {
    match value {
        None => Err(err(field, "missing field".into())),
        Some(Value::String(s)) if s.trim().is_empty() => Err(err(field, "empty prompt".into())),
        Some(Value::String(s)) => Ok(vec![Message::user(s.clone())]),
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (j, item) in items.iter().enumerate() {
                let at = |key: &str| format!("{field}[{j}].{key}");
                let get = |key: &str| match item.get(key) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(other) => Err(err(
                        &at(key),
                        format!("expected a string, found {}", kind(other)),
                    )),
                    None => Err(err(&at(key), "missing field".into())),
                };
                let role = get("role")?;
                if !matches!(role.as_str(), "system" | "user" | "assistant") {
                    return Err(err(&at("role"), format!("unknown role {role:?}")));
                }
                let content = get("content")?;
                if content.trim().is_empty() {
                    return Err(err(&at("content"), "empty text".into()));
                }
                out.push(Message { role, content });
            }
            if out.is_empty() {
                return Err(err(field, "empty conversation".into()));
            }
            Ok(out)
        }
        Some(other) => Err(err(
            field,
            format!(
                "expected a list of messages or a string, found {}",
                kind(other)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn seeds_format_keeps_successful_jailbreaks() {
        let f = file(
            r#"[{"goal":"g0","all_prompt":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"judge_success_gpt4":1},
                        {"goal":"g1","all_prompt":"x","judge_success_gpt4":0}]"#,
        );
        let pairs = read_pairs(f.path(), &FieldMap::default()).unwrap();
        assert_eq!(pairs.len(), 1);
        assert_eq!(
            pairs[0].safe,
            vec![
                Message::system("You are a helpful assistant."),
                Message::user("g0")
            ]
        );
        assert_eq!(pairs[0].unsafe_.len(), 2);
    }

    #[test]
    fn jsonl_with_mapping_and_errors_name_record_and_field() {
        let map = FieldMap {
            goal: "behavior".into(),
            unsafe_messages: "attack".into(),
            filter_field: String::new(),
            ..FieldMap::default()
        };
        let f = file("{\"behavior\":\"b\",\"attack\":\"a\"}\n{\"behavior\":3,\"attack\":\"a\"}\n");
        let err = read_pairs(f.path(), &map).unwrap_err().to_string();
        assert!(
            err.ends_with("record 1: behavior: expected a string, found a number"),
            "{err}"
        );
        let f = file("{\"behavior\":\"b\",\"attack\":[{\"role\":\"user\"}]}\n");
        let err = read_pairs(f.path(), &map).unwrap_err().to_string();
        assert!(
            err.ends_with("record 0: attack[0].content: missing field"),
            "{err}"
        );
        let f = file("[1, 2");
        assert!(
            read_pairs(f.path(), &map)
                .unwrap_err()
                .to_string()
                .contains("malformed JSON")
        );
        let f = file("{\"behavior\":\" \",\"attack\":\"a\"}\n");
        assert!(
            read_pairs(f.path(), &map)
                .unwrap_err()
                .to_string()
                .ends_with("record 0: behavior: empty goal")
        );
        let f = file("{\"behavior\":\"b\",\"attack\":[{\"role\":\"user\",\"content\":\"\"}]}\n");
        assert!(
            read_pairs(f.path(), &map)
                .unwrap_err()
                .to_string()
                .ends_with("record 0: attack[0].content: empty text")
        );
    }
}
