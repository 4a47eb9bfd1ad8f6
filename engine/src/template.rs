//! Templating (minijinja, strict undefined) and the validation-time check of template
//! references: every `steps.X` must be upstream, every `inputs.X` declared, every `env.X`
//! declared.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use minijinja::value::{Object, Value as JinjaValue, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde::Serialize;

use crate::diag::did_you_mean;
use crate::model::{InputSpec, InputType};

/// What templates see of a finished step.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StepView {
    pub output: String,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

pub const STEP_FIELDS: [&str; 4] = ["output", "stdout", "stderr", "exit_code"];

/// A rendering or evaluation failure, positioned inside the template text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    pub message: String,
    /// Line inside the template (1-based), when known.
    pub line: Option<usize>,
}

pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

/// Fuel bounds the work one template may do, so a hostile loop cannot hang the engine.
const TEMPLATE_FUEL: u64 = 5_000_000;

/// The name shell templates are rendered under; it selects shell quoting as their auto-escape.
const SHELL_TEMPLATE: &str = "shell-step.sh";
const SHELL_ESCAPE: AutoEscape = AutoEscape::Custom("shell");

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_keep_trailing_newline(true);
        env.set_auto_escape_callback(|name| {
            if name == SHELL_TEMPLATE {
                SHELL_ESCAPE
            } else {
                AutoEscape::None
            }
        });
        // In a `shell:` command every interpolated value becomes exactly one shell word: a value
        // is data, never code. `| raw` opts out (the rendered command is classified again);
        // `| words` makes one quoted word per whitespace-separated item or list element.
        env.set_formatter(|out, state, value| {
            if value.kind() == ValueKind::Bool {
                return out
                    .write_str(if value.is_true() { "true" } else { "false" })
                    .map_err(minijinja::Error::from);
            }
            if state.auto_escape() == SHELL_ESCAPE && !value.is_safe() {
                if value.kind() == ValueKind::Number {
                    return write!(out, "{value}").map_err(minijinja::Error::from);
                }
                let quoted = shell_word(&value.to_string())?;
                return out.write_str(&quoted).map_err(minijinja::Error::from);
            }
            minijinja::escape_formatter(out, state, value)
        });
        env.add_filter("raw", |v: JinjaValue| -> JinjaValue {
            if v.kind() == ValueKind::Bool {
                JinjaValue::from_safe_string(if v.is_true() { "true" } else { "false" }.into())
            } else {
                JinjaValue::from_safe_string(v.to_string())
            }
        });
        env.add_filter(
            "quote",
            |v: JinjaValue| -> Result<JinjaValue, minijinja::Error> {
                Ok(JinjaValue::from_safe_string(shell_word(&v.to_string())?))
            },
        );
        env.add_filter(
            "words",
            |v: JinjaValue| -> Result<JinjaValue, minijinja::Error> {
                let items: Vec<String> = match v.as_str() {
                    Some(text) => text.split_whitespace().map(str::to_string).collect(),
                    None => v.try_iter()?.map(|x| x.to_string()).collect(),
                };
                let quoted = items
                    .iter()
                    .map(|w| shell_word(w))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(JinjaValue::from_safe_string(quoted.join(" ")))
            },
        );
        Templates { env }
    }

    /// Render a `shell:` command: interpolated values arrive as single quoted words.
    pub fn render_shell(&self, text: &str, ctx: &JinjaValue) -> Result<String, TemplateError> {
        if !Self::is_template(text) {
            return Ok(text.to_string());
        }
        self.env
            .render_named_str(SHELL_TEMPLATE, text, ctx)
            .map_err(|e| to_error(&e, text))
    }

    /// Whether `text` contains template syntax at all (most strings do not: skip the parser).
    pub fn is_template(text: &str) -> bool {
        text.contains("{{") || text.contains("{%") || text.contains("{#")
    }

    pub fn render(&self, text: &str, ctx: &JinjaValue) -> Result<String, TemplateError> {
        if !Self::is_template(text) {
            return Ok(text.to_string());
        }
        self.env
            .render_str(text, ctx)
            .map_err(|e| to_error(&e, text))
    }

    /// Evaluate an `if:` condition. Accepts a bare expression or one wrapped in `{{ }}`.
    pub fn eval_condition(&self, expr: &str, ctx: &JinjaValue) -> Result<bool, TemplateError> {
        let expr = strip_braces(expr);
        let compiled = self
            .env
            .compile_expression(expr)
            .map_err(|e| to_error(&e, expr))?;
        let v = compiled.eval(ctx).map_err(|e| to_error(&e, expr))?;
        Ok(v.is_true())
    }

    /// Check a template's references against what is declared and upstream. Returns problems as
    /// (message, hint) pairs; an empty list means the template is fine.
    pub fn check(
        &self,
        text: &str,
        is_expression: bool,
        cx: &CheckScope<'_>,
    ) -> Vec<(String, String)> {
        if !is_expression && !Self::is_template(text) {
            return Vec::new();
        }
        let mut problems = Vec::new();
        let source = if is_expression {
            format!("{{{{ {} }}}}", strip_braces(text))
        } else {
            text.to_string()
        };
        // Static pass: sees every branch, but only dotted chains (`steps.a.output`).
        let tmpl = match self.env.template_from_str(&source) {
            Ok(t) => t,
            Err(e) => {
                let err = to_error(&e, &source);
                problems.push((
                    format!("template syntax error: {}", err.message),
                    "check `{{ }}` / `{% %}` pairs and quoting".into(),
                ));
                return problems;
            }
        };
        for var in tmpl.undeclared_variables(true) {
            let mut parts = var.split('.');
            let root = parts.next().unwrap_or_default();
            let name = parts.next();
            let field = parts.next();
            match (root, name) {
                ("steps", Some(id)) => cx.check_step(id, field, &mut problems),
                ("inputs", Some(n)) => cx.check_input(n, &mut problems),
                ("env", Some(n)) => cx.check_env(n, &mut problems),
                ("steps" | "inputs" | "env", None) => {}
                (other, _) if !is_builtin(other) => problems.push((
                    format!("unknown template variable `{other}`"),
                    "templates can use `inputs.NAME`, `steps.ID.output` (or stdout, stderr, exit_code) and `env.NAME`".into(),
                )),
                _ => {}
            }
        }
        // Dynamic pass: render with probes so `steps['my-id']` lookups are seen too.
        let probe = Arc::new(StepsProbe {
            seen: Mutex::new(BTreeSet::new()),
            known: cx.upstream.clone(),
        });
        let ctx = minijinja::context! {
            inputs => cx.placeholder_inputs(),
            env => JinjaValue::from_serialize(cx.env_names.iter().map(|n| (n.clone(), "")).collect::<BTreeMap<_, _>>()),
            steps => JinjaValue::from_dyn_object(probe.clone()),
        };
        let rendered = tmpl.render(&ctx);
        let seen = probe.seen.lock().map(|s| s.clone()).unwrap_or_default();
        for id in &seen {
            cx.check_step(id, None, &mut problems);
        }
        if let Err(e) = rendered
            && e.kind() == ErrorKind::UndefinedError
            && problems.is_empty()
        {
            let err = to_error(&e, &source);
            problems.push((
                format!("template uses an undefined value: {}", err.message),
                format!("step results have the fields {}", STEP_FIELDS.join(", ")),
            ));
        }
        problems.sort();
        problems.dedup();
        problems
    }
}

/// One POSIX shell word that stands for exactly `text` (quoted only when it has to be).
fn shell_word(text: &str) -> Result<String, minijinja::Error> {
    if text.is_empty() {
        return Ok("''".into());
    }
    shlex::try_quote(text).map(|q| q.into_owned()).map_err(|e| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("this value cannot be passed to a shell: {e}"),
        )
    })
}

fn is_builtin(name: &str) -> bool {
    matches!(
        name,
        "range" | "dict" | "namespace" | "loop" | "true" | "false" | "none"
    )
}

fn strip_braces(expr: &str) -> &str {
    let t = expr.trim();
    t.strip_prefix("{{")
        .and_then(|r| r.strip_suffix("}}"))
        .map(str::trim)
        .unwrap_or(t)
}

fn to_error(e: &minijinja::Error, text: &str) -> TemplateError {
    let line = e.line();
    let col = e.range().map(|r| {
        let before = &text[..r.start.min(text.len())];
        before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1
    });
    let detail = e
        .detail()
        .map(str::to_string)
        .unwrap_or_else(|| e.kind().to_string());
    let message = match (line, col) {
        (Some(l), Some(c)) => format!("{detail} (template line {l}, column {c})"),
        (Some(l), None) => format!("{detail} (template line {l})"),
        _ => detail,
    };
    TemplateError { message, line }
}

/// What a template may refer to, from the point of view of one step.
pub struct CheckScope<'a> {
    pub inputs: &'a BTreeMap<String, InputSpec>,
    pub env_names: BTreeSet<String>,
    pub all_steps: &'a BTreeSet<String>,
    /// Steps that are (transitively) upstream of the step being checked.
    pub upstream: Upstream,
    pub this_step: &'a str,
}

impl CheckScope<'_> {
    fn check_step(&self, id: &str, field: Option<&str>, problems: &mut Vec<(String, String)>) {
        if self.upstream.contains(id) {
            if let Some(f) = field
                && !STEP_FIELDS.contains(&f)
            {
                problems.push((
                    format!("`steps.{id}.{f}` is not a step result field"),
                    match did_you_mean(f, STEP_FIELDS) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("step results have {}", STEP_FIELDS.join(", ")),
                    },
                ));
            }
        } else if id == self.this_step {
            problems.push((
                format!("step `{id}` refers to its own result"),
                "a step can only use results of steps it `needs`".into(),
            ));
        } else if self.all_steps.contains(id) {
            problems.push((
                format!("step `{id}` is not upstream of `{}`", self.this_step),
                format!("add `{id}` to `needs` so its result exists when this step runs"),
            ));
        } else {
            problems.push((
                format!("unknown step `{id}` in template"),
                match did_you_mean(id, self.all_steps.iter().map(String::as_str)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "refer to a step id defined in this workflow".into(),
                },
            ));
        }
    }

    fn check_input(&self, name: &str, problems: &mut Vec<(String, String)>) {
        if !self.inputs.contains_key(name) {
            problems.push((
                format!("input `{name}` is not declared"),
                match did_you_mean(name, self.inputs.keys().map(String::as_str)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("declare it under `inputs:` as `{name}: {{ type: string }}`"),
                },
            ));
        }
    }

    fn check_env(&self, name: &str, problems: &mut Vec<(String, String)>) {
        if !self.env_names.contains(name) {
            problems.push((
                format!("environment variable `{name}` is not declared"),
                match did_you_mean(name, self.env_names.iter().map(String::as_str)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "declare it under `env:` (workflow or step); the engine's own environment is never visible".to_string(),
                },
            ));
        }
    }

    fn placeholder_inputs(&self) -> JinjaValue {
        let map: BTreeMap<&str, serde_json::Value> = self
            .inputs
            .iter()
            .map(|(k, spec)| {
                let v = spec.default.clone().unwrap_or(match spec.kind {
                    InputType::String => serde_json::Value::String(String::new()),
                    InputType::Integer | InputType::Number => serde_json::json!(0),
                    InputType::Boolean => serde_json::json!(false),
                    InputType::Array => serde_json::json!([]),
                    InputType::Object => serde_json::json!({}),
                });
                (k.as_str(), v)
            })
            .collect();
        JinjaValue::from_serialize(map)
    }
}

/// Stands in for `steps` during the check: records which ids are looked up.
#[derive(Debug)]
struct StepsProbe {
    seen: Mutex<BTreeSet<String>>,
    known: Upstream,
}

/// The ancestors of one step, as a bitset over step indices plus the shared id index: checking
/// membership is O(1) and building one costs nothing per ancestor (a 1,000-step chain would
/// otherwise copy ~500,000 id strings).
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    pub index: std::sync::Arc<std::collections::HashMap<String, usize>>,
    pub ancestors: std::sync::Arc<fixedbitset::FixedBitSet>,
}

impl Upstream {
    pub fn contains(&self, id: &str) -> bool {
        self.index
            .get(id)
            .is_some_and(|&i| self.ancestors.contains(i))
    }
}

impl Object for StepsProbe {
    fn get_value(self: &Arc<Self>, key: &JinjaValue) -> Option<JinjaValue> {
        let id = key.as_str()?;
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(id.to_string());
        }
        self.known
            .contains(id)
            .then(|| JinjaValue::from_serialize(StepView::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope<'a>(
        inputs: &'a BTreeMap<String, InputSpec>,
        all: &'a BTreeSet<String>,
    ) -> CheckScope<'a> {
        CheckScope {
            inputs,
            env_names: ["TOKEN".to_string()].into(),
            all_steps: all,
            upstream: {
                let index: std::collections::HashMap<String, usize> =
                    [("build", 0), ("find-old", 1), ("later", 2), ("me", 3)]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect();
                let mut ancestors = fixedbitset::FixedBitSet::with_capacity(4);
                ancestors.insert(0);
                ancestors.insert(1);
                Upstream {
                    index: index.into(),
                    ancestors: ancestors.into(),
                }
            },
            this_step: "me",
        }
    }

    #[test]
    fn renders_strictly() {
        let t = Templates::new();
        let ctx = minijinja::context! { inputs => minijinja::context!{ days => 7 } };
        assert_eq!(t.render("{{ inputs.days }} days", &ctx).unwrap(), "7 days");
        assert!(t.render("{{ inputs.nope }}", &ctx).is_err());
        assert!(t.eval_condition("inputs.days > 3", &ctx).unwrap());
        assert!(!t.eval_condition("{{ inputs.days > 30 }}", &ctx).unwrap());
    }

    #[test]
    fn finds_bad_references_in_all_forms() {
        let t = Templates::new();
        let inputs = BTreeMap::from([(
            "days".to_string(),
            InputSpec {
                kind: InputType::Integer,
                default: Some(7.into()),
                description: None,
                secret: false,
            },
        )]);
        let all: BTreeSet<String> = ["build", "find-old", "later", "me"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let cx = scope(&inputs, &all);
        assert!(t.check("{{ steps.build.output }} {{ steps['find-old'].stdout }} {{ inputs.days }} {{ env.TOKEN }}", false, &cx).is_empty());
        let p = t.check("{{ steps.later.output }}", false, &cx);
        assert!(p[0].0.contains("not upstream"), "{p:?}");
        let p = t.check("{{ steps['later'].output }}", false, &cx);
        assert!(p[0].0.contains("not upstream"), "{p:?}");
        let p = t.check("{{ steps.biuld.output }}", false, &cx);
        assert!(p[0].1.contains("build"), "{p:?}");
        let p = t.check("{{ steps.build.outptu }}", false, &cx);
        assert!(p[0].1.contains("output"), "{p:?}");
        let p = t.check("{{ inputs.dayz }}", false, &cx);
        assert!(p[0].1.contains("days"), "{p:?}");
        let p = t.check("{{ env.HOME }}", false, &cx);
        assert!(p[0].0.contains("HOME"), "{p:?}");
        let p = t.check("{{ steps.build.output", false, &cx);
        assert!(p[0].0.contains("syntax"), "{p:?}");
        let p = t.check("steps.later.exit_code == 0", true, &cx);
        assert!(p[0].0.contains("not upstream"), "{p:?}");
    }

    /// Every argument `sh` receives for the rendered command, bracketed.
    fn shell_args(command: &str) -> String {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "set -- {command}; for a; do printf '[%s]' \"$a\"; done"
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn shell_templates_pass_every_value_as_one_literal_word() {
        let t = Templates::new();
        let payloads = [
            "x; touch /tmp/pwned-by-template",
            "$(id)",
            "`id`",
            "a\nid",
            "a && id",
            "it's \"quoted\"",
            "a$IFS$9b",
            "${HOME}",
            "-rf /",
            "*",
            "",
            "  spaced  out  ",
            "a\\b",
            "#comment",
            "x | sh",
        ];
        for p in payloads {
            let p = p.replace("\\n", "\n");
            let ctx = minijinja::context! { inputs => minijinja::context!{ v => p.clone() } };
            let cmd = t.render_shell("{{ inputs.v }}", &ctx).unwrap();
            assert_eq!(
                shell_args(&cmd),
                format!("[{p}]"),
                "{p:?} rendered as {cmd}"
            );
            // Inside a larger command and inside expressions too.
            let cmd = t
                .render_shell(
                    "{% set w = inputs.v %}{{ w ~ '' }} {{ inputs.v | upper }}",
                    &ctx,
                )
                .unwrap();
            assert_eq!(
                shell_args(&cmd),
                format!("[{p}][{}]", p.to_uppercase()),
                "{p:?} rendered as {cmd}"
            );
        }
        assert!(!std::path::Path::new("/tmp/pwned-by-template").exists());
    }

    #[test]
    fn raw_opts_out_and_words_quotes_each_item() {
        let t = Templates::new();
        let ctx = minijinja::context! {
            inputs => minijinja::context!{ cmd => "echo a; echo b", n => 7, on => true, files => vec!["a b", "c;d"] },
            out => "one two\nthree $(id)",
        };
        assert_eq!(
            t.render_shell("{{ inputs.cmd | raw }}", &ctx).unwrap(),
            "echo a; echo b"
        );
        assert_eq!(
            t.render_shell("$(( {{ inputs.n }} + 1 )) {{ inputs.on }}", &ctx)
                .unwrap(),
            "$(( 7 + 1 )) true"
        );
        assert_eq!(
            shell_args(&t.render_shell("{{ inputs.files | words }}", &ctx).unwrap()),
            "[a b][c;d]"
        );
        assert_eq!(
            shell_args(&t.render_shell("{{ out | words }}", &ctx).unwrap()),
            "[one][two][three][$(id)]"
        );
        // Outside `shell:` nothing is quoted.
        assert_eq!(
            t.render("{{ inputs.cmd }}", &ctx).unwrap(),
            "echo a; echo b"
        );
    }

    #[test]
    fn runaway_loops_run_out_of_fuel() {
        let t = Templates::new();
        let ctx = minijinja::context! {};
        let r = t.render(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            &ctx,
        );
        assert!(r.is_err());
    }
}
