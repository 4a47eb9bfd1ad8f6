//! Templating (minijinja, strict undefined) and the validation-time check of template
//! references: every `steps.X` must be upstream, every `inputs.X` declared, every `env.X`
//! declared.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use minijinja::value::{Object, Value as JinjaValue, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde::Serialize;

use crate::diag::{closest_by_edits, did_you_mean};
use crate::model::{InputSpec, InputType};

/// What templates see of a finished step.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct StepView {
    pub output: String,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

pub const STEP_FIELDS: [&str; 4] = ["output", "stdout", "stderr", "exit_code"];

/// The functions an `if:` condition may call to look at what happened upstream, as in GitHub
/// Actions. `cancelled()` is always false: a cancelled run starts nothing more, so no condition
/// is ever evaluated in one.
pub const STATUS_FUNCTIONS: [&str; 4] = ["success", "failure", "always", "cancelled"];

/// Where a condition's context carries the [`UpstreamStatus`] its status functions read.
const STATUS_VAR: &str = "__secureclaw_status";

/// What the steps upstream of one step (transitively, through `needs`) came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UpstreamStatus {
    /// Every one of them succeeded (a failure let through by `continue_on_error` counts).
    pub success: bool,
    /// At least one of them failed (and was not let through by `continue_on_error`).
    pub failure: bool,
}

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

/// Bytes of text one rendering may build, counted over every string it makes (concatenation,
/// repetition, list building, the text-making filters, the rendered output): fuel counts
/// instructions, and a few instructions can double a string until memory runs out.
pub const TEMPLATE_BYTES: u64 = 16 << 20;

const BYTES_USED: &str = "__secureclaw_bytes_used";

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
            bounded::charge(state, bounded::text_len(value, 0))?;
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
        env.add_function("always", |_: &minijinja::State<'_, '_>| true);
        env.add_function("cancelled", |_: &minijinja::State<'_, '_>| false);
        env.add_function("success", |state: &minijinja::State<'_, '_>| {
            upstream_status(state, "success")
        });
        env.add_function("failure", |state: &minijinja::State<'_, '_>| {
            upstream_status(state, "failure")
        });
        bounded::register(&mut env);
        Templates { env }
    }

    /// Render a `shell:` command: interpolated values arrive as single quoted words.
    pub fn render_shell(&self, text: &str, ctx: &JinjaValue) -> Result<String, TemplateError> {
        if !Self::is_template(text) {
            return Ok(text.to_string());
        }
        bounded::render(&self.env, SHELL_TEMPLATE, SHELL_ESCAPE, text, ctx)
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
        bounded::render(&self.env, "<string>", AutoEscape::None, text, ctx)
            .map_err(|e| to_error(&e, text))
    }

    /// Evaluate an `if:` condition. Accepts a bare expression or one wrapped in `{{ }}`.
    pub fn eval_condition(&self, expr: &str, ctx: &JinjaValue) -> Result<bool, TemplateError> {
        self.eval_condition_after(expr, ctx, None)
    }

    /// Evaluate an `if:` condition for a step whose upstream came to `status` (what
    /// `success()` and `failure()` answer; without one, both are true).
    pub fn eval_condition_after(
        &self,
        expr: &str,
        ctx: &JinjaValue,
        status: Option<UpstreamStatus>,
    ) -> Result<bool, TemplateError> {
        let expr = condition_expression(expr);
        let expr = expr.as_ref();
        let ctx = match status {
            Some(s) => minijinja::context! {
                __secureclaw_status => JinjaValue::from_serialize(s),
                ..ctx.clone()
            },
            None => ctx.clone(),
        };
        let ctx = &ctx;
        // Syntax errors are reported against the expression as written.
        self.env
            .compile_expression(expr)
            .map_err(|e| to_error(&e, expr))?;
        let probe = format!("{{% if ({expr}) %}}t{{% endif %}}");
        let v = bounded::render(&self.env, "<condition>", AutoEscape::None, &probe, ctx)
            .map_err(|e| to_error(&e, expr))?;
        Ok(v == "t")
    }

    /// The status functions (`success`, `failure`, `always`, `cancelled`) an `if:` condition
    /// calls; empty when it calls none (it then runs only after success) or does not parse.
    pub fn status_functions(&self, expr: &str) -> BTreeSet<&'static str> {
        self.status_functions_in(expr, true)
    }

    /// The status functions a template (`is_expression`: an `if:` condition) calls.
    pub fn status_functions_in(&self, text: &str, is_expression: bool) -> BTreeSet<&'static str> {
        let source = if is_expression {
            format!("{{{{ {} }}}}", condition_expression(text))
        } else if Self::is_template(text) {
            text.to_string()
        } else {
            return BTreeSet::new();
        };
        let Ok(tmpl) = self.env.template_from_str(&source) else {
            return BTreeSet::new();
        };
        let used = tmpl.undeclared_variables(false);
        STATUS_FUNCTIONS
            .into_iter()
            .filter(|f| used.contains(*f))
            .collect()
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
            format!("{{{{ {} }}}}", condition_expression(text))
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
        self.check_filters_and_tests(&source, &mut problems);
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
                    match closest_by_edits(other, &["inputs", "steps", "env"]) {
                        Some(s) => format!("did you mean `{s}`? templates can use `inputs.NAME`, `steps.ID.output` (or stdout, stderr, exit_code) and `env.NAME`"),
                        None => "templates can use `inputs.NAME`, `steps.ID.output` (or stdout, stderr, exit_code) and `env.NAME`".into(),
                    },
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
        let rendered = bounded::render(&self.env, "<check>", AutoEscape::None, &source, &ctx);
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

/// Filter names a template may meet: minijinja's own and this engine's. Only the ones the
/// environment really has are offered as suggestions.
const FILTER_NAMES: &[&str] = &[
    "abs",
    "attr",
    "batch",
    "bool",
    "capitalize",
    "chain",
    "count",
    "d",
    "default",
    "dictsort",
    "e",
    "escape",
    "first",
    "float",
    "format",
    "groupby",
    "indent",
    "int",
    "items",
    "join",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "pprint",
    "quote",
    "raw",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "safe",
    "select",
    "selectattr",
    "slice",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "tojson",
    "trim",
    "unique",
    "upper",
    "urlencode",
    "words",
    "zip",
];

/// Test names (`x is NAME`), as [`FILTER_NAMES`].
const TEST_NAMES: &[&str] = &[
    "boolean",
    "defined",
    "divisibleby",
    "endingwith",
    "eq",
    "equalto",
    "escaped",
    "even",
    "false",
    "filter",
    "float",
    "ge",
    "greaterthan",
    "gt",
    "in",
    "int",
    "integer",
    "iterable",
    "le",
    "lessthan",
    "lower",
    "lt",
    "mapping",
    "ne",
    "none",
    "number",
    "odd",
    "safe",
    "sameas",
    "sequence",
    "startingwith",
    "string",
    "test",
    "true",
    "undefined",
    "upper",
];

impl Templates {
    /// Whether the environment has a filter (`is_filter`) or a test (`!is_filter`) by this name.
    fn knows(&self, name: &str, is_filter: bool) -> bool {
        let probe = if is_filter {
            "name is filter"
        } else {
            "name is test"
        };
        self.env
            .compile_expression(probe)
            .and_then(|e| e.eval(minijinja::context! { name => name }))
            .is_ok_and(|v| v.is_true())
    }

    /// Unknown filters and tests, found in the compiled template so that names in branches a
    /// check rendering would not take are seen too (minijinja itself only notices at run time).
    fn check_filters_and_tests(&self, source: &str, problems: &mut Vec<(String, String)>) {
        for (is_filter, name) in bounded::filter_and_test_names(source) {
            if self.knows(&name, is_filter) {
                continue;
            }
            let (what, names) = if is_filter {
                ("filter", FILTER_NAMES)
            } else {
                ("test", TEST_NAMES)
            };
            let known: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| self.knows(n, is_filter))
                .collect();
            let usage = if is_filter {
                format!("`| {name}`")
            } else {
                format!("`is {name}`")
            };
            problems.push((
                format!("unknown template {what} `{name}` in {usage}"),
                match closest_by_edits(&name, &known) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("known {what}s: {}", known.join(", ")),
                },
            ));
        }
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
    ) || STATUS_FUNCTIONS.contains(&name)
}

/// `success()` or `failure()` of the step whose condition is evaluated. Outside a run (the
/// validation probe) every outcome is possible, so both are true and the whole condition is
/// looked at.
fn upstream_status(state: &minijinja::State<'_, '_>, which: &str) -> bool {
    state
        .lookup(STATUS_VAR)
        .and_then(|s| s.get_attr(which).ok())
        .is_none_or(|v| v.is_undefined() || v.is_true())
}

/// An `if:` condition as minijinja reads it: without `{{ }}`, and with GitHub's `&&`, `||` and
/// `!` spelled `and`, `or` and `not` (outside string literals; `!=` stays).
fn condition_expression(expr: &str) -> std::borrow::Cow<'_, str> {
    let expr = strip_braces(expr);
    if !expr.contains(['&', '|', '!']) {
        return expr.into();
    }
    let mut out = String::with_capacity(expr.len() + 8);
    let mut quote: Option<char> = None;
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                out.push(c);
            }
            '&' if chars.peek() == Some(&'&') => {
                chars.next();
                out.push_str(" and ");
            }
            '|' if chars.peek() == Some(&'|') => {
                chars.next();
                out.push_str(" or ");
            }
            '!' if chars.peek() != Some(&'=') => out.push_str(" not "),
            _ => out.push(c),
        }
    }
    out.into()
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
        // The range may come from the rendered (defused) form of the text: never slice inside
        // a character.
        let mut end = r.start.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let before = &text[..end];
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
    fn status_functions_answer_what_happened_upstream() {
        let t = Templates::new();
        let ctx =
            minijinja::context! { inputs => minijinja::context!{ notify => true, quiet => false } };
        let failed = UpstreamStatus {
            success: false,
            failure: true,
        };
        let fine = UpstreamStatus {
            success: true,
            failure: false,
        };
        let skipped = UpstreamStatus {
            success: false,
            failure: false,
        };
        let eval =
            |cond: &str, s: UpstreamStatus| t.eval_condition_after(cond, &ctx, Some(s)).unwrap();
        for (cond, after_failure, after_success, after_skip) in [
            ("failure()", true, false, false),
            ("success()", false, true, false),
            ("always()", true, true, true),
            ("{{ failure() }}", true, false, false),
            ("failure() && inputs.notify", true, false, false),
            ("failure() and inputs.quiet", false, false, false),
            ("success() || failure()", true, true, false),
            ("!cancelled() && !success()", true, false, true),
            ("not cancelled()", true, true, true),
            ("always() && inputs.quiet != true", true, true, true),
        ] {
            assert_eq!(eval(cond, failed), after_failure, "{cond} after a failure");
            assert_eq!(eval(cond, fine), after_success, "{cond} after success");
            assert_eq!(eval(cond, skipped), after_skip, "{cond} after a skip");
        }
    }

    #[test]
    fn github_operators_are_translated_outside_string_literals_only() {
        assert_eq!(
            condition_expression("a && !b || c != d"),
            "a  and   not b  or  c != d"
        );
        assert_eq!(
            condition_expression(r#"x == "a && b" or y == 'it\'s !'"#),
            r#"x == "a && b" or y == 'it\'s !'"#
        );
        let t = Templates::new();
        let ctx = minijinja::context! { inputs => minijinja::context!{ s => "a && b" } };
        assert!(
            t.eval_condition(r#"inputs.s == "a && b" && !false"#, &ctx)
                .unwrap()
        );
    }

    #[test]
    fn status_functions_are_found_only_where_they_are_called() {
        let t = Templates::new();
        let found = |e: &str| t.status_functions(e).into_iter().collect::<Vec<_>>();
        assert_eq!(found("failure() && inputs.notify"), ["failure"]);
        assert_eq!(found("always()"), ["always"]);
        assert_eq!(found("!cancelled() or success()"), ["cancelled", "success"]);
        assert!(found("inputs.days > 3").is_empty());
        assert!(found(r#"steps.a.output == "failure()""#).is_empty());
        assert_eq!(
            t.status_functions_in("echo {{ failure() }}", false).len(),
            1
        );
        assert!(t.status_functions_in("echo failure()", false).is_empty());
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

    #[test]
    fn unknown_filters_and_tests_are_found_in_every_branch() {
        let t = Templates::new();
        let inputs = BTreeMap::new();
        let all = BTreeSet::new();
        let cx = scope(&inputs, &all);
        // Known ones, the engine's own included, pass.
        assert!(
            t.check(
                "{{ 'a' | upper | quote }} {{ 'a b' | words }} {% if 1 is odd %}{% endif %}",
                false,
                &cx
            )
            .is_empty()
        );
        let p = t.check("{% if false %}{{ 'x' | lenght }}{% endif %}", false, &cx);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].0.contains("unknown template filter `lenght`"), "{p:?}");
        assert_eq!(p[0].1, "did you mean `length`?");
        // No far-fetched suggestion: the known names are listed instead.
        let p = t.check("{{ 'x' | shout }}", false, &cx);
        assert!(
            p[0].1.starts_with("known filters: ") && p[0].1.contains("quote"),
            "{p:?}"
        );
        let p = t.check("1 is fancy", true, &cx);
        assert!(p[0].0.contains("unknown template test `fancy`"), "{p:?}");
        // A macro's body is compiled apart from the template: it is searched too.
        let p = t.check("{% macro m() %}{{ 1 | nope }}{% endmacro %}", false, &cx);
        assert!(p.iter().any(|(m, _)| m.contains("`nope`")), "{p:?}");
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
    fn templates_that_build_huge_text_hit_the_byte_limit() {
        let t = Templates::new();
        let ctx = minijinja::context! { inputs => minijinja::context!{ big => "y".repeat(1 << 20), lines => "y\n".repeat(100_000), n => 100_000_000 } };
        let bombs = [
            "{% set a = 'x' * 100000000 %}{{ a | length }}",
            "{% set a = 'x' * 10000000 %}{% set b = a ~ a %}{% set c = b ~ b %}{% set d = c ~ c %}{{ d | length }}",
            "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
            "{% set ns = namespace(s='x') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ inputs.big %}{% endfor %}",
            "{{ (['x' * 1000000] * 1000) | join('') | length }}",
            "{{ range(100000) | join(inputs.big) | length }}",
            "{{ inputs.big | replace('y', inputs.big) | length }}",
            "{{ inputs.lines | indent(1000) | length }}",
            "{% set ns = namespace(l=[inputs.big]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | join | length }}",
            "{% for i in range(100000) %}{% for j in range(100) %}{{ inputs.big }}{% endfor %}{% endfor %}",
            "{{ inputs.big * inputs.n }}",
            "{{ ('%s' * 20) | format(inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big, inputs.big) }}",
            "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = ns.l + [inputs.big | upper] %}{% endfor %}",
            "{{ inputs.big | escape | escape | escape | list | length }}",
        ];
        for bomb in bombs {
            let err = match t.render(bomb, &ctx) {
                Err(e) => e,
                Ok(v) => panic!("{bomb} rendered {} bytes", v.len()),
            };
            assert!(
                err.message.contains("MiB of text") || err.message.contains("too large"),
                "{bomb}: {err}"
            );
            let err = t.render_shell(bomb, &ctx).unwrap_err();
            assert!(
                err.message.contains("MiB of text") || err.message.contains("too large"),
                "{bomb}: {err}"
            );
            assert!(
                t.eval_condition(
                    &format!(
                        "({}) is defined",
                        bomb.trim_start_matches("{{").trim_end_matches("}}")
                    ),
                    &ctx
                )
                .is_err()
                    || bomb.starts_with("{%"),
                "{bomb}"
            );
        }
        // Ordinary templates are untouched.
        assert_eq!(t.render("{{ 'ab' ~ 'cd' }} {{ 2 * 3 }} {{ [1] + [2] }} {{ 7 % 4 }} {{ ['a','b'] | join(',') }}", &ctx).unwrap(), "abcd 6 [1, 2] 3 a,b");
        assert_eq!(
            t.render("{{ 'x' * 3 }}{{ 3 * 'y' }}", &ctx).unwrap(),
            "xxxyyy"
        );
        assert!(t.eval_condition("inputs.n > 5", &ctx).unwrap());
    }

    #[test]
    fn errors_in_templates_with_operators_and_wide_characters_are_located_without_panicking() {
        let t = Templates::new();
        let ctx = minijinja::context! { inputs => minijinja::context!{ n => 1 } };
        for text in [
            "héllo wörld {{ 'é' ~ 'ü' ~ inputs.nope }}",
            "日本語 {{ 1 + 'x' }}",
            "{{ '€' * 2 }} {{ inputs.n + }}",
        ] {
            let err = t.render(text, &ctx).unwrap_err();
            assert!(!err.message.is_empty(), "{text}");
            assert!(t.render_shell(text, &ctx).is_err(), "{text}");
        }
        assert_eq!(
            t.render("{{ 'é' ~ 'ü' }} {{ '€' * 2 }}", &ctx).unwrap(),
            "éü €€"
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

/// Rendering with a byte budget. minijinja has no hook on its operators, so the template is
/// compiled here and the instructions that can make big strings from small ones (`~`, `*`, `+`,
/// `%` and the text-making filters) are swapped for calls to functions that charge the size of
/// their result against [`TEMPLATE_BYTES`] before building it.
mod bounded {
    use std::sync::OnceLock;

    use minijinja::machinery::{CodeGenerator, Instruction, Instructions, Vm, WhitespaceConfig};
    use minijinja::value::{Value, ValueKind};
    use minijinja::{AutoEscape, Environment, Error, ErrorKind, State};

    use super::{BYTES_USED, TEMPLATE_BYTES};

    const CONCAT: &str = "__secureclaw_concat";
    const MUL: &str = "__secureclaw_mul";
    const ADD: &str = "__secureclaw_add";
    const REM: &str = "__secureclaw_rem";

    /// Filters whose result can be much larger than their input, or a copy of it: (name, the
    /// function standing in for it, how many times the input's size the result may be).
    const FILTERS: &[(&str, &str, u64)] = &[
        ("join", "__secureclaw_filter_join", 1),
        ("replace", "__secureclaw_filter_replace", 1),
        ("indent", "__secureclaw_filter_indent", 1),
        ("format", "__secureclaw_filter_format", 1),
        ("escape", "__secureclaw_filter_escape", 6),
        ("e", "__secureclaw_filter_e", 6),
        ("tojson", "__secureclaw_filter_tojson", 6),
        ("pprint", "__secureclaw_filter_pprint", 2),
        ("string", "__secureclaw_filter_string", 1),
        ("list", "__secureclaw_filter_list", 32),
        ("reverse", "__secureclaw_filter_reverse", 1),
        ("upper", "__secureclaw_filter_upper", 1),
        ("lower", "__secureclaw_filter_lower", 1),
        ("title", "__secureclaw_filter_title", 1),
        ("capitalize", "__secureclaw_filter_capitalize", 1),
        ("sort", "__secureclaw_filter_sort", 1),
        ("unique", "__secureclaw_filter_unique", 1),
        ("split", "__secureclaw_filter_split", 4),
        ("lines", "__secureclaw_filter_lines", 4),
        ("batch", "__secureclaw_filter_batch", 2),
        ("slice", "__secureclaw_filter_slice", 2),
        ("words", "__secureclaw_filter_words", 4),
        ("quote", "__secureclaw_filter_quote", 4),
        ("raw", "__secureclaw_filter_raw", 1),
    ];

    fn too_big() -> Error {
        Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "the template builds more than {} MiB of text (the limit for one template)",
                TEMPLATE_BYTES >> 20
            ),
        )
    }

    /// Count `bytes` against this rendering's budget.
    pub fn charge(state: &State<'_, '_>, bytes: u64) -> Result<(), Error> {
        let used = state
            .get_temp(BYTES_USED)
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0);
        let total = used.saturating_add(bytes);
        if total > TEMPLATE_BYTES {
            return Err(too_big());
        }
        state.set_temp(BYTES_USED, Value::from(total));
        Ok(())
    }

    /// The length of a value's text, without building it; anything over the budget counts as
    /// the budget plus one.
    pub fn text_len(v: &Value, depth: usize) -> u64 {
        let over = TEMPLATE_BYTES + 1;
        match v.kind() {
            ValueKind::String => v.as_str().map_or(0, |s| s.len() as u64),
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable | ValueKind::Plain => {
                if depth > 32 {
                    return over;
                }
                if let Some(n) = v.len()
                    && n as u64 > TEMPLATE_BYTES
                {
                    return over;
                }
                let Ok(items) = v.try_iter() else {
                    return 64;
                };
                let mut total: u64 = 2;
                for item in items {
                    total = total.saturating_add(text_len(&item, depth + 1) + 2);
                    if v.kind() == ValueKind::Map
                        && let Ok(value) = v.get_item(&item)
                    {
                        total = total.saturating_add(text_len(&value, depth + 1) + 2);
                    }
                    if total > TEMPLATE_BYTES {
                        return over;
                    }
                }
                total
            }
            _ => 32,
        }
    }

    /// The plain environment that performs the real operations once they are paid for.
    fn arith() -> &'static Environment<'static> {
        static ENV: OnceLock<Environment<'static>> = OnceLock::new();
        ENV.get_or_init(|| {
            let mut env = Environment::new();
            env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
            env
        })
    }

    fn operate(op: &str, a: Value, b: Value) -> Result<Value, Error> {
        arith()
            .compile_expression(op)?
            .eval(minijinja::context! { a => a, b => b })
    }

    fn defined(a: &Value, b: &Value) -> Result<(), Error> {
        if a.is_undefined() || b.is_undefined() {
            return Err(Error::new(ErrorKind::UndefinedError, "undefined value"));
        }
        Ok(())
    }

    fn repeat_count(v: &Value) -> Option<u64> {
        (v.kind() == ValueKind::Number)
            .then(|| u64::try_from(v.clone()).ok())
            .flatten()
    }

    pub fn register(env: &mut Environment<'static>) {
        env.add_filter(NO_FOLD, |v: Value| v);
        env.add_function(CONCAT, |state: &State<'_, '_>, a: Value, b: Value| {
            defined(&a, &b)?;
            charge(state, text_len(&a, 0).saturating_add(text_len(&b, 0)))?;
            Ok::<_, Error>(Value::from(format!("{a}{b}")))
        });
        env.add_function(MUL, |state: &State<'_, '_>, a: Value, b: Value| {
            defined(&a, &b)?;
            let size = match (repeat_count(&a), repeat_count(&b)) {
                (Some(n), None) => text_len(&b, 0).saturating_mul(n),
                (None, Some(n)) => text_len(&a, 0).saturating_mul(n),
                _ => 0,
            };
            charge(state, size)?;
            operate("a * b", a, b)
        });
        env.add_function(ADD, |state: &State<'_, '_>, a: Value, b: Value| {
            defined(&a, &b)?;
            if a.kind() != ValueKind::Number || b.kind() != ValueKind::Number {
                charge(state, text_len(&a, 0).saturating_add(text_len(&b, 0)))?;
            }
            operate("a + b", a, b)
        });
        env.add_function(REM, |state: &State<'_, '_>, a: Value, b: Value| {
            defined(&a, &b)?;
            if a.kind() == ValueKind::String {
                charge(state, text_len(&a, 0).saturating_add(text_len(&b, 0)))?;
            }
            operate("a % b", a, b)
        });
        for &(filter, function, factor) in FILTERS {
            env.add_function(
                function,
                move |state: &State<'_, '_>, args: minijinja::value::Rest<Value>| {
                    let mut size: u64 = 0;
                    for a in args.iter() {
                        size = size.saturating_add(text_len(a, 0));
                    }
                    size = size.saturating_mul(factor);
                    // The filters whose output grows with one argument times another.
                    match filter {
                        "join" => {
                            let items = args.first().and_then(Value::len).unwrap_or(0) as u64;
                            let sep = args.get(1).map_or(0, |s| text_len(s, 0));
                            size = size.saturating_add(items.saturating_mul(sep));
                        }
                        "replace" => {
                            if let (Some(s), Some(old), Some(new)) = (
                                args.first().and_then(Value::as_str),
                                args.get(1).and_then(Value::as_str),
                                args.get(2).map(|n| text_len(n, 0)),
                            ) {
                                let hits = if old.is_empty() {
                                    s.chars().count() as u64 + 1
                                } else {
                                    s.matches(old).count() as u64
                                };
                                size = size.saturating_add(hits.saturating_mul(new));
                            }
                        }
                        "indent" => {
                            let lines = args
                                .first()
                                .and_then(Value::as_str)
                                .map_or(1, |s| s.lines().count() as u64 + 1);
                            let width = args.get(1).map_or(0, |w| match w.as_str() {
                                Some(t) => t.len() as u64,
                                None => u64::try_from(w.clone()).unwrap_or(TEMPLATE_BYTES),
                            });
                            size = size.saturating_add(lines.saturating_mul(width));
                        }
                        _ => {}
                    }
                    charge(state, size)?;
                    state.apply_filter(filter, &args)
                },
            );
        }
    }

    /// Swap the size-making instructions for their charging stand-ins.
    fn patch(instructions: &mut Instructions<'_>) {
        for i in 0..instructions.len() {
            let Ok(idx) = u32::try_from(i) else { break };
            let Some(instr) = instructions.get_mut(idx) else {
                continue;
            };
            let swap = match instr {
                Instruction::StringConcat => Some(Instruction::CallFunction(CONCAT, Some(2))),
                Instruction::Mul => Some(Instruction::CallFunction(MUL, Some(2))),
                Instruction::Add => Some(Instruction::CallFunction(ADD, Some(2))),
                Instruction::Rem => Some(Instruction::CallFunction(REM, Some(2))),
                Instruction::ApplyFilter(name, args, _) => FILTERS
                    .iter()
                    .find(|(f, _, _)| f == name)
                    .map(|(_, function, _)| Instruction::CallFunction(function, *args)),
                _ => None,
            };
            if let Some(new) = swap {
                *instr = new;
            }
        }
    }

    const NO_FOLD: &str = "__secureclaw_nofold";

    /// Every filter (`true`) and test (`false`) a template applies, by name, in the order the
    /// template names them; empty when it does not parse (its syntax error is reported apart).
    pub fn filter_and_test_names(source: &str) -> Vec<(bool, String)> {
        let Ok(ast) = minijinja::machinery::parse(
            source,
            "<check>",
            minijinja::syntax::SyntaxConfig,
            whitespace(),
        ) else {
            return Vec::new();
        };
        let mut generator = CodeGenerator::new("<check>", source);
        generator.compile_stmt(&ast);
        let (instructions, blocks) = generator.finish();
        let mut names: Vec<(bool, String)> = Vec::new();
        for list in std::iter::once(&instructions).chain(blocks.values()) {
            for i in 0..list.len() {
                let Ok(idx) = u32::try_from(i) else { break };
                let found = match list.get(idx) {
                    Some(Instruction::ApplyFilter(name, _, _)) => (true, name.to_string()),
                    Some(Instruction::PerformTest(name, _, _)) => (false, name.to_string()),
                    _ => continue,
                };
                if !names.contains(&found) {
                    names.push(found);
                }
            }
        }
        names
    }

    fn whitespace() -> WhitespaceConfig {
        WhitespaceConfig {
            keep_trailing_newline: true,
            lstrip_blocks: false,
            trim_blocks: false,
        }
    }

    /// minijinja folds operations on literals while compiling (`'x' * 100000000 ~ …` would be
    /// built before any instruction runs): when a template uses an operator at all, each literal
    /// is passed through a no-op filter, so nothing is constant and every operation is charged.
    fn defuse(source: &str) -> std::borrow::Cow<'_, str> {
        use minijinja::machinery::Token;
        let Ok(tokens) = minijinja::machinery::tokenize(
            source,
            false,
            minijinja::syntax::SyntaxConfig,
            whitespace(),
        )
        .collect::<Result<Vec<_>, _>>() else {
            return source.into();
        };
        let operators = tokens.iter().any(|(t, _)| {
            matches!(
                t,
                Token::Mul | Token::Tilde | Token::Plus | Token::Mod | Token::Pow | Token::Minus
            )
        });
        if !operators {
            return source.into();
        }
        let mut out = String::with_capacity(source.len() * 2);
        let mut at = 0usize;
        for (token, span) in &tokens {
            if !matches!(
                token,
                Token::Str(_)
                    | Token::String(_)
                    | Token::Int(_)
                    | Token::Int128(_)
                    | Token::Float(_)
            ) {
                continue;
            }
            let (start, end) = (span.start_offset as usize, span.end_offset as usize);
            let (Some(before), Some(literal)) = (source.get(at..start), source.get(start..end))
            else {
                return source.into();
            };
            out.push_str(before);
            out.push('(');
            out.push_str(literal);
            out.push('|');
            out.push_str(NO_FOLD);
            out.push(')');
            at = end;
        }
        out.push_str(source.get(at..).unwrap_or_default());
        out.into()
    }

    pub fn render(
        env: &Environment<'static>,
        name: &str,
        auto_escape: AutoEscape,
        source: &str,
        ctx: &Value,
    ) -> Result<String, Error> {
        let source = &*defuse(source);
        let ast = minijinja::machinery::parse(
            source,
            name,
            minijinja::syntax::SyntaxConfig,
            whitespace(),
        )?;
        let mut generator = CodeGenerator::new(name, source);
        generator.compile_stmt(&ast);
        let (mut instructions, mut blocks) = generator.finish();
        patch(&mut instructions);
        for block in blocks.values_mut() {
            patch(block);
        }
        let mut text = String::new();
        let mut out = minijinja::machinery::make_string_output(&mut text);
        Vm::new(env).eval(&instructions, ctx.clone(), &blocks, &mut out, auto_escape)?;
        Ok(text)
    }
}
