//! Turning `--input name=value` strings into typed input values.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::diag::did_you_mean;
use crate::model::{InputType, Workflow};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("`{0}` is not of the form name=value")]
    Syntax(String),
    #[error("unknown input `{name}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    Unknown {
        name: String,
        suggestion: Option<String>,
    },
    #[error("input `{name}` expects {expected}, got `{value}`")]
    Type {
        name: String,
        expected: &'static str,
        value: String,
    },
    #[error("missing required input `{0}` (pass --input {0}=VALUE)")]
    Missing(String),
}

/// Parse raw `name=value` pairs against the workflow's declared inputs and fill in defaults.
pub fn resolve(wf: &Workflow, raw: &[String]) -> Result<BTreeMap<String, Value>, Vec<InputError>> {
    let mut values = BTreeMap::new();
    let mut errors = Vec::new();
    for pair in raw {
        let Some((name, text)) = pair.split_once('=') else {
            errors.push(InputError::Syntax(pair.clone()));
            continue;
        };
        let Some(spec) = wf.inputs.get(name) else {
            errors.push(InputError::Unknown {
                name: name.into(),
                suggestion: did_you_mean(name, wf.inputs.keys().map(String::as_str))
                    .map(str::to_string),
            });
            continue;
        };
        match parse_value(spec.kind, text) {
            Some(v) => {
                values.insert(name.to_string(), v);
            }
            None => errors.push(InputError::Type {
                name: name.into(),
                expected: spec.kind.as_str(),
                value: text.into(),
            }),
        }
    }
    for (name, spec) in &wf.inputs {
        if values.contains_key(name) {
            continue;
        }
        match &spec.default {
            Some(d) => {
                values.insert(name.clone(), d.clone());
            }
            None => errors.push(InputError::Missing(name.clone())),
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(errors)
    }
}

fn parse_value(kind: InputType, text: &str) -> Option<Value> {
    match kind {
        InputType::String => Some(Value::String(text.to_string())),
        InputType::Integer => text.trim().parse::<i64>().ok().map(Value::from),
        InputType::Number => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        InputType::Boolean => match text.trim() {
            "true" | "yes" | "1" => Some(Value::Bool(true)),
            "false" | "no" | "0" => Some(Value::Bool(false)),
            _ => None,
        },
        InputType::Array => serde_json::from_str::<Value>(text)
            .ok()
            .filter(Value::is_array),
        InputType::Object => serde_json::from_str::<Value>(text)
            .ok()
            .filter(Value::is_object),
    }
}
