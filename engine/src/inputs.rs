//! Turning `--input name=value` strings, an input file, stdin and the environment into typed
//! input values; and keeping the values of `secret: true` inputs out of everything recorded.
//!
//! Sources, later ones winning: `--input-file FILE` (a YAML or JSON mapping of name to value;
//! `-` reads it from stdin), then each `--input name=VALUE`, where VALUE may be `@-` (the whole of
//! stdin, one trailing newline dropped), `@env:NAME` (the engine's environment variable NAME) or
//! `@@…` (a literal value starting with `@`). Only the last two keep a secret out of `ps`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::diag::did_you_mean;
use crate::events::{EventSink, RunEvent};
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
    #[error("input `{name}`: environment variable `{var}` is not set (or not UTF-8)")]
    NoEnv { name: String, var: String },
    #[error(
        "stdin can feed only one input source (`@-` or `--input-file -`), and it is used twice"
    )]
    StdinTwice,
    #[error("input file: {0}")]
    File(String),
}

/// Where input values come from, besides the workflow's defaults.
#[derive(Default)]
pub struct InputSources<'a> {
    /// The text of an input file (YAML or JSON mapping), if one was given.
    pub file: Option<String>,
    /// `name=value` pairs, in command-line order.
    pub pairs: &'a [String],
    /// The text of stdin, read at most once, for `@-`.
    pub stdin: Option<&'a mut dyn FnMut() -> std::io::Result<String>>,
}

/// Parse raw `name=value` pairs against the workflow's declared inputs and fill in defaults.
pub fn resolve(wf: &Workflow, raw: &[String]) -> Result<BTreeMap<String, Value>, Vec<InputError>> {
    resolve_sources(
        wf,
        InputSources {
            pairs: raw,
            ..Default::default()
        },
    )
}

/// Resolve every input from the file, the pairs (which win), and the defaults.
pub fn resolve_sources(
    wf: &Workflow,
    mut sources: InputSources<'_>,
) -> Result<BTreeMap<String, Value>, Vec<InputError>> {
    let mut values = BTreeMap::new();
    let mut errors = Vec::new();
    let mut stdin_used = false;
    let unknown = |name: &str| InputError::Unknown {
        name: name.into(),
        suggestion: did_you_mean(name, wf.inputs.keys().map(String::as_str)).map(str::to_string),
    };
    if let Some(text) = &sources.file {
        match file_values(text) {
            Err(e) => errors.push(e),
            Ok(map) => {
                for (name, v) in map {
                    let Some(spec) = wf.inputs.get(&name) else {
                        errors.push(unknown(&name));
                        continue;
                    };
                    let typed = match &v {
                        Value::String(text) => parse_value(spec.kind, text),
                        other => spec.kind.accepts(other).then(|| other.clone()),
                    };
                    match typed {
                        Some(t) => {
                            values.insert(name, t);
                        }
                        None => errors.push(InputError::Type {
                            expected: spec.kind.as_str(),
                            value: if spec.secret {
                                marker(&name)
                            } else {
                                v.to_string()
                            },
                            name,
                        }),
                    }
                }
            }
        }
    }
    for pair in sources.pairs {
        let Some((name, text)) = pair.split_once('=') else {
            errors.push(InputError::Syntax(pair.clone()));
            continue;
        };
        let Some(spec) = wf.inputs.get(name) else {
            errors.push(unknown(name));
            continue;
        };
        let text: String = if text == "@-" {
            if stdin_used {
                errors.push(InputError::StdinTwice);
                continue;
            }
            stdin_used = true;
            match sources.stdin.as_mut().map(|read| read()) {
                Some(Ok(t)) => strip_one_newline(t),
                Some(Err(e)) => {
                    errors.push(InputError::File(format!("reading stdin: {e}")));
                    continue;
                }
                None => {
                    errors.push(InputError::File("stdin is not available here".into()));
                    continue;
                }
            }
        } else if let Some(var) = text.strip_prefix("@env:") {
            match std::env::var(var) {
                Ok(v) => v,
                Err(_) => {
                    errors.push(InputError::NoEnv {
                        name: name.into(),
                        var: var.into(),
                    });
                    continue;
                }
            }
        } else if let Some(literal) = text.strip_prefix("@@") {
            format!("@{literal}")
        } else {
            text.to_string()
        };
        match parse_value(spec.kind, &text) {
            Some(v) => {
                values.insert(name.to_string(), v);
            }
            None => errors.push(InputError::Type {
                name: name.into(),
                expected: spec.kind.as_str(),
                value: if spec.secret { marker(name) } else { text },
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

/// An input file: a YAML (or JSON) mapping of input names to values.
fn file_values(text: &str) -> Result<serde_json::Map<String, Value>, InputError> {
    let doc = crate::yaml::parse(text, crate::yaml::YamlLimits::default()).map_err(|errs| {
        InputError::File(
            errs.iter()
                .map(|e| format!("line {}: {}", e.location.line, e.message))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    match doc.value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(serde_json::Map::new()),
        _ => Err(InputError::File(
            "expected a mapping of input names to values, e.g. `token: abc`".into(),
        )),
    }
}

fn strip_one_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

/// What a secret input's value is replaced with wherever it would be recorded or shown.
pub fn marker(name: &str) -> String {
    format!("[secret:{name}]")
}

/// The values of `secret: true` inputs, and how to take them out of text and JSON.
#[derive(Debug, Default, Clone)]
pub struct Secrets {
    /// (text to find, marker), longest first so a secret containing another is replaced whole.
    needles: Vec<(String, String)>,
    names: Vec<String>,
}

impl Secrets {
    pub fn new(wf: &Workflow, values: &BTreeMap<String, Value>) -> Self {
        let mut needles = Vec::new();
        let mut names = Vec::new();
        for (name, spec) in &wf.inputs {
            if !spec.secret {
                continue;
            }
            let Some(v) = values.get(name) else { continue };
            names.push(name.clone());
            let mut texts = Vec::new();
            leaves(v, &mut texts);
            if !v.is_string() {
                texts.push(v.to_string());
            }
            for t in texts {
                if t.is_empty() {
                    continue;
                }
                // As it appears in a rendered `shell:` command, too.
                if let Ok(q) = shlex::try_quote(&t)
                    && q != t
                {
                    needles.push((q.into_owned(), marker(name)));
                }
                needles.push((t, marker(name)));
            }
        }
        needles.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        needles.dedup();
        Secrets { needles, names }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (needle, mark) in &self.needles {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), mark);
            }
        }
        out
    }

    pub fn scrub_json(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.scrub(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.scrub_json(x)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| (self.scrub(k), self.scrub_json(x)))
                    .collect(),
            ),
            other if self.is_empty() => other.clone(),
            other => {
                let text = other.to_string();
                let scrubbed = self.scrub(&text);
                if scrubbed == text {
                    other.clone()
                } else {
                    Value::String(scrubbed)
                }
            }
        }
    }

    /// The inputs as recorded: each secret input's value replaced by its marker.
    pub fn recorded_inputs(&self, values: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
        values
            .iter()
            .map(|(k, v)| {
                let v = if self.names.contains(k) {
                    Value::String(marker(k))
                } else {
                    self.scrub_json(v)
                };
                (k.clone(), v)
            })
            .collect()
    }

    pub fn scrub_event(&self, event: &RunEvent) -> RunEvent {
        let mut e = event.clone();
        match &mut e {
            RunEvent::StepStarted { summary, .. } => *summary = self.scrub(summary),
            RunEvent::StepRetrying { reason, .. } => *reason = self.scrub(reason),
            RunEvent::StepFinished { reason, .. } => {
                *reason = reason.as_deref().map(|r| self.scrub(r));
            }
            RunEvent::ApprovalNeeded {
                reason, summary, ..
            } => {
                *reason = self.scrub(reason);
                *summary = self.scrub(summary);
            }
            RunEvent::Warning { message } => *message = self.scrub(message),
            RunEvent::RunFinished { message, .. } => {
                *message = message.as_deref().map(|m| self.scrub(m));
            }
            RunEvent::Output { text, .. } => *text = self.scrub(text),
            RunEvent::Egress { reason, .. } | RunEvent::RevertStep { detail: reason, .. } => {
                *reason = reason.as_deref().map(|r| self.scrub(r));
            }
            RunEvent::RunStarted { .. }
            | RunEvent::RunResumed { .. }
            | RunEvent::RunRetried { .. }
            | RunEvent::ApprovalDecided { .. }
            | RunEvent::UntrustedContentFlagged { .. }
            | RunEvent::RunParked { .. }
            | RunEvent::RevertStarted { .. }
            | RunEvent::RevertFinished { .. } => {}
        }
        e
    }

    /// An event sink that forwards every event with the secrets taken out.
    pub fn wrap(self: Arc<Self>, sink: EventSink) -> EventSink {
        if self.is_empty() {
            return sink;
        }
        Arc::new(move |e| sink(&self.scrub_event(e)))
    }
}

fn leaves(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| leaves(x, out)),
        Value::Object(o) => o.values().for_each(|x| leaves(x, out)),
        _ => {}
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
