//! A step's action after templating, and the tier of what will really run.

use std::collections::BTreeMap;
use std::time::Duration;

use minijinja::value::Value as JinjaValue;
use serde_json::{Value, json};

use crate::model::Step;
use crate::template::Templates;
use crate::validate::NodeRisk;

const DEFAULT_READ_LIMIT: u64 = 16 * 1024 * 1024;
const DEFAULT_HTTP_LIMIT: u64 = 4 * 1024 * 1024;
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A step's action after templating.
#[derive(Debug, Clone)]
pub(super) enum Rendered {
    Read {
        path: Option<String>,
        glob: Option<String>,
        limit: u64,
    },
    Write {
        path: String,
        content: String,
        append: bool,
        mode: Option<String>,
    },
    Patch {
        path: String,
        diff: String,
    },
    Shell {
        command: String,
        env: BTreeMap<String, String>,
    },
    Http {
        url: String,
        headers: Vec<(String, String)>,
        body: Option<String>,
        json: Option<Value>,
        timeout: Duration,
        limit: u64,
    },
}

impl Rendered {
    pub(super) fn summary(&self) -> String {
        match self {
            Rendered::Read { path: Some(p), .. } => format!("read {p}"),
            Rendered::Read { glob, .. } => {
                format!("read glob {}", glob.as_deref().unwrap_or_default())
            }
            Rendered::Write { path, append, .. } => {
                format!("{} {path}", if *append { "append to" } else { "write" })
            }
            Rendered::Patch { path, .. } => format!("patch {path}"),
            Rendered::Shell { command, .. } => command.clone(),
            Rendered::Http { url, .. } => format!("HTTP {url}"),
        }
    }

    pub(super) fn to_json(&self, step: &Step) -> Value {
        match self {
            Rendered::Read { path, glob, .. } => json!({"read": {"path": path, "glob": glob}}),
            Rendered::Write {
                path,
                content,
                append,
                mode,
            } => {
                json!({"write": {"path": path, "bytes": content.len(), "append": append, "mode": mode}})
            }
            Rendered::Patch { path, diff } => json!({"patch": {"path": path, "diff": diff}}),
            Rendered::Shell { command, .. } => json!({"shell": command}),
            Rendered::Http { url, .. } => {
                json!({"http": {"method": step.http.as_ref().map(|h| h.method.as_str()), "url": url}})
            }
        }
    }
}

pub(super) fn env_for(
    wf_env: &BTreeMap<String, String>,
    step: &Step,
    templates: &Templates,
    inputs: &JinjaValue,
    steps: &JinjaValue,
) -> Result<BTreeMap<String, String>, crate::template::TemplateError> {
    let mut env = wf_env.clone();
    let ctx = minijinja::context! { inputs => inputs.clone(), steps => steps.clone(), env => JinjaValue::from_serialize(wf_env) };
    for (k, v) in &step.env {
        env.insert(k.clone(), templates.render(v, &ctx)?);
    }
    Ok(env)
}

pub(super) fn render_step(
    step: &Step,
    t: &Templates,
    ctx: &JinjaValue,
    wf_env: &BTreeMap<String, String>,
    inputs: &JinjaValue,
    steps: &JinjaValue,
) -> Result<Rendered, crate::template::TemplateError> {
    let r = |s: &str| t.render(s, ctx);
    Ok(if let Some(a) = &step.read {
        Rendered::Read {
            path: a.path.as_deref().map(r).transpose()?,
            glob: a.glob.as_deref().map(r).transpose()?,
            limit: a
                .max_bytes
                .as_ref()
                .and_then(|m| m.parse().ok())
                .unwrap_or(DEFAULT_READ_LIMIT),
        }
    } else if let Some(a) = &step.write {
        Rendered::Write {
            path: r(&a.path)?,
            content: r(&a.content)?,
            append: a.append,
            mode: a.mode.clone(),
        }
    } else if let Some(a) = &step.patch {
        Rendered::Patch {
            path: r(&a.path)?,
            diff: r(&a.diff)?,
        }
    } else if let Some(a) = &step.http {
        Rendered::Http {
            url: r(&a.url)?,
            headers: a
                .headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), r(v)?)))
                .collect::<Result<_, crate::template::TemplateError>>()?,
            body: a.body.as_deref().map(r).transpose()?,
            json: a
                .json
                .as_ref()
                .map(|j| render_json(j, t, ctx))
                .transpose()?,
            timeout: a
                .timeout
                .as_ref()
                .and_then(|d| d.parse().ok())
                .unwrap_or(DEFAULT_HTTP_TIMEOUT),
            limit: a
                .max_response
                .as_ref()
                .and_then(|m| m.parse().ok())
                .unwrap_or(DEFAULT_HTTP_LIMIT),
        }
    } else {
        Rendered::Shell {
            command: t.render_shell(step.shell.as_deref().unwrap_or_default(), ctx)?,
            env: env_for(wf_env, step, t, inputs, steps)?,
        }
    })
}

fn render_json(
    v: &Value,
    t: &Templates,
    ctx: &JinjaValue,
) -> Result<Value, crate::template::TemplateError> {
    Ok(match v {
        Value::String(s) => Value::String(t.render(s, ctx)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_json(x, t, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), render_json(x, t, ctx)?)))
                .collect::<Result<_, crate::template::TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// The tier of what will really run (see [`crate::risk::effective_risk`]).
pub(super) fn effective_risk(
    static_risk: &NodeRisk,
    rendered: &Rendered,
    model: Option<&secureclaw_llm::CommandRiskModel>,
) -> NodeRisk {
    let shell = match rendered {
        Rendered::Shell { command, .. } => Some(command.as_str()),
        _ => None,
    };
    crate::risk::effective_risk(static_risk, shell, model)
}
