//! The rules file: its schema, validation and the compiled form the analyser matches against.
//!
//! Rules are data (`rules/shell.toml`) so they can be reviewed like a policy rather than like
//! code; everything the analyser decides on its own (unparseable input, `curl | sh`, `sudo` on a
//! writing command...) is still named by a `builtin = true` rule so its tier and wording live in
//! the same reviewed file.

use std::collections::{BTreeSet, HashMap, HashSet};

use globset::{GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::Tier;

/// Rule ids the analyser emits itself; the rules file must define each of them.
pub(crate) const BUILTIN_IDS: &[&str] = &[
    "unparseable",
    "empty",
    "default",
    "dynamic-command",
    "dynamic-shell-code",
    "generated-code",
    "pipe-to-shell",
    "elevated-write",
    "recursive-function",
    "run-script",
    "help-query",
];

/// Argument classes a rule may ask for (see `docs/risk.md`).
pub(crate) const ARG_CLASSES: &[&str] = &[
    "workspace",
    "outside",
    "scratch",
    "device",
    "socket",
    "dynamic",
    "glob",
    "remote",
    "existing",
];

/// Where a command's standard input may come from, for the `stdin` condition.
pub(crate) const STDIN_KINDS: &[&str] = &["null", "pipe", "file", "text"];

const REDIRECT_KINDS: &[&str] = &[
    "write",
    "append",
    "clobber",
    "readwrite",
    "read",
    "duplicate",
];

/// Why a rules file was refused. Every variant names the offending rule so a reviewer can fix
/// the data without reading the analyser.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("rules file is not valid TOML for the rules schema: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("unsupported rules file version {0} (expected 1)")]
    Version(u32),
    #[error("rule #{index} has an empty id")]
    EmptyId { index: usize },
    #[error("duplicate rule id `{0}`")]
    DuplicateId(String),
    #[error("rule `{rule}`: {source}")]
    UnknownTier {
        rule: String,
        #[source]
        source: crate::tier::UnknownTier,
    },
    #[error("rule `{0}` has an empty reason")]
    EmptyReason(String),
    #[error(
        "rule `{0}` has no match condition (needs `command` or `redirect`, or `builtin = true`)"
    )]
    NoCondition(String),
    #[error("rule `{0}` sets both `command` and `redirect`")]
    CommandAndRedirect(String),
    #[error("builtin rule `{0}` must not carry match conditions")]
    BuiltinWithConditions(String),
    #[error("rule `{0}` is marked builtin but the analyser never emits it")]
    UnknownBuiltin(String),
    #[error("builtin rule `{0}` is missing from the rules file")]
    MissingBuiltin(String),
    #[error("rule `{rule}`: unknown argument class `{class}`")]
    UnknownArgClass { rule: String, class: String },
    #[error(
        "rule `{rule}`: unknown redirect kind `{kind}` (expected write, append, clobber, readwrite, read, duplicate)"
    )]
    UnknownRedirect { rule: String, kind: String },
    #[error("rule `{rule}`: unknown stdin kind `{kind}` (expected null, pipe, file, text)")]
    UnknownStdin { rule: String, kind: String },
    #[error("rule `{0}`: `action` needs `subcommand`")]
    ActionWithoutSubcommand(String),
    #[error("option_code entry #{index}: bad key pattern `{pattern}`: {source}")]
    BadKeyPattern {
        index: usize,
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("option_code entry #{index} has no options")]
    NoCodeOptions { index: usize },
    #[error("rule `{rule}`: unknown scope `{scope}` (expected all, last, not_first)")]
    UnknownScope { rule: String, scope: String },
    #[error("rule `{rule}`: flag `{flag}` must start with `-`")]
    BadFlag { rule: String, flag: String },
    #[error("rule `{rule}`: bad argument pattern `{pattern}`: {source}")]
    BadPattern {
        rule: String,
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("{section} entry #{index} has no names")]
    EmptyNames { section: &'static str, index: usize },
    #[error("workspace root `{0}` must be an absolute path")]
    BadWorkspace(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: u32,
    workspace: String,
    #[serde(default)]
    scratch: Vec<String>,
    #[serde(default)]
    home_vars: Vec<String>,
    #[serde(default)]
    scratch_vars: Vec<String>,
    #[serde(default)]
    workspace_vars: Vec<String>,
    #[serde(default)]
    noop_commands: Vec<String>,
    #[serde(default)]
    trusted_code_generators: Vec<String>,
    #[serde(default)]
    empty_output_commands: Vec<Vec<String>>,
    #[serde(default)]
    code_env_vars: Vec<String>,
    #[serde(default)]
    subcommand_tools: Vec<String>,
    #[serde(default)]
    wrapper: Vec<RawWrapper>,
    #[serde(default)]
    option_code: Vec<RawOptionCode>,
    #[serde(default)]
    code_runner: Vec<RawCodeRunner>,
    #[serde(default)]
    exec_option: Vec<RawExecOption>,
    #[serde(default)]
    command: Vec<RawCommand>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWrapper {
    names: Vec<String>,
    #[serde(default)]
    value_options: Vec<String>,
    #[serde(default)]
    stop_flags: Vec<String>,
    #[serde(default)]
    elevates: bool,
    #[serde(default)]
    skip_positionals: usize,
    #[serde(default)]
    skip_assignments: bool,
    #[serde(default)]
    appends_dynamic_args: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCodeRunner {
    names: Vec<String>,
    #[serde(default)]
    code_flags: Vec<String>,
    #[serde(default)]
    value_options: Vec<String>,
    #[serde(default)]
    stdin_flags: Vec<String>,
    /// `shell` code is parsed and walked; anything else is only matched by argument patterns.
    #[serde(default)]
    shell: bool,
    /// `eval`/`watch` style: all positional arguments joined form the code.
    #[serde(default)]
    all_args: bool,
    #[serde(default)]
    elevates: bool,
    /// Positional arguments before the code (`ssh HOST cmd...`).
    #[serde(default)]
    skip_positionals: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecOption {
    names: Vec<String>,
    options: Vec<String>,
    terminators: Vec<String>,
    placeholder: String,
}

/// An option whose value is a command line the tool runs (`tar --to-command=CMD`,
/// `git -c core.pager=CMD`, `ssh -o ProxyCommand=CMD`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptionCode {
    names: Vec<String>,
    options: Vec<String>,
    /// The value is code only when it starts with one of these (compared without case), which
    /// is removed first (`exec=`, `ProxyCommand=`, `:!`). Empty: every value is code.
    #[serde(default)]
    prefixes: Vec<String>,
    /// `key=value` values: only keys matching these globs (compared without case) carry code.
    #[serde(default)]
    keys: Vec<String>,
    /// Removed from the start of the code (`!` of a git alias, `|` of `LESSOPEN`).
    #[serde(default)]
    strip: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    names: Vec<String>,
    #[serde(default)]
    value_options: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    tier: String,
    reason: String,
    #[serde(default)]
    builtin: bool,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    subcommand: Vec<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    not_flags: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    not_args: Vec<String>,
    #[serde(default)]
    action: Vec<String>,
    #[serde(default)]
    max_positionals: Option<usize>,
    #[serde(default)]
    stdin: Vec<String>,
    #[serde(default)]
    exclusive: bool,
    #[serde(default)]
    arg_class: Vec<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    redirect: Vec<String>,
    #[serde(default)]
    bare: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    All,
    Last,
    NotFirst,
}

#[derive(Debug)]
pub(crate) struct Rule {
    pub id: String,
    pub tier: Tier,
    pub reason: String,
    pub subcommand: Vec<String>,
    pub flags: Vec<String>,
    pub not_flags: Vec<String>,
    pub args: Option<GlobSet>,
    pub not_args: Option<GlobSet>,
    pub action: Vec<String>,
    pub max_positionals: Option<usize>,
    pub stdin: Vec<String>,
    pub exclusive: bool,
    pub arg_class: BTreeSet<String>,
    pub scope: Scope,
    pub redirect: Vec<String>,
    pub bare: Option<bool>,
}

#[derive(Debug, Clone)]
pub(crate) struct Wrapper {
    pub value_options: HashSet<String>,
    pub stop_flags: Vec<String>,
    pub elevates: bool,
    pub skip_positionals: usize,
    pub skip_assignments: bool,
    pub appends_dynamic_args: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct CodeRunner {
    pub code_flags: Vec<String>,
    pub value_options: HashSet<String>,
    pub stdin_flags: Vec<String>,
    pub shell: bool,
    pub all_args: bool,
    pub elevates: bool,
    pub skip_positionals: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct OptionCode {
    pub options: Vec<String>,
    pub prefixes: Vec<String>,
    pub keys: Option<GlobSet>,
    pub strip: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct ExecOption {
    pub options: Vec<String>,
    pub terminators: Vec<String>,
    pub placeholder: String,
}

/// The validated, indexed rules.
#[derive(Debug)]
pub(crate) struct RuleSet {
    pub workspace: String,
    pub scratch: Vec<String>,
    pub home_vars: HashSet<String>,
    pub scratch_vars: HashSet<String>,
    pub workspace_vars: HashSet<String>,
    pub noop_commands: HashSet<String>,
    pub trusted_code_generators: HashSet<String>,
    pub empty_output_commands: Vec<Vec<String>>,
    pub code_env_vars: HashSet<String>,
    pub subcommand_tools: HashSet<String>,
    pub wrappers: HashMap<String, Wrapper>,
    pub option_code: HashMap<String, Vec<OptionCode>>,
    pub code_runners: HashMap<String, CodeRunner>,
    pub exec_options: HashMap<String, ExecOption>,
    pub value_options: HashMap<String, HashSet<String>>,
    pub rules: Vec<Rule>,
    pub by_command: HashMap<String, Vec<usize>>,
    pub redirect_rules: Vec<usize>,
    pub builtins: HashMap<String, usize>,
}

fn names_of(
    names: Vec<String>,
    section: &'static str,
    index: usize,
) -> Result<Vec<String>, RulesError> {
    if names.is_empty() {
        return Err(RulesError::EmptyNames { section, index });
    }
    Ok(names)
}

fn glob_set(
    patterns: &[String],
    case_insensitive: bool,
) -> Result<Option<GlobSet>, (String, globset::Error)> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        // Literal separators off: `*` must match across `/` in arguments like `of=/dev/sda`.
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .backslash_escape(true)
            .case_insensitive(case_insensitive)
            .build()
            .map_err(|e| (pattern.clone(), e))?;
        builder.add(glob);
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| (patterns.join(", "), e))
}

fn check_flags(rule: &str, flags: &[String]) -> Result<(), RulesError> {
    match flags.iter().find(|f| !f.starts_with('-') || f.len() < 2) {
        Some(flag) => Err(RulesError::BadFlag {
            rule: rule.to_string(),
            flag: flag.clone(),
        }),
        None => Ok(()),
    }
}

impl RuleSet {
    pub(crate) fn parse(text: &str) -> Result<Self, RulesError> {
        let raw: RawFile = toml::from_str(text)?;
        if raw.version != 1 {
            return Err(RulesError::Version(raw.version));
        }
        if !raw.workspace.starts_with('/') {
            return Err(RulesError::BadWorkspace(raw.workspace));
        }

        let mut wrappers = HashMap::new();
        for (i, w) in raw.wrapper.into_iter().enumerate() {
            let wrapper = Wrapper {
                value_options: w.value_options.into_iter().collect(),
                stop_flags: w.stop_flags,
                elevates: w.elevates,
                skip_positionals: w.skip_positionals,
                skip_assignments: w.skip_assignments,
                appends_dynamic_args: w.appends_dynamic_args,
            };
            for name in names_of(w.names, "wrapper", i)? {
                wrappers.insert(name, wrapper.clone());
            }
        }
        let mut code_runners = HashMap::new();
        for (i, c) in raw.code_runner.into_iter().enumerate() {
            let runner = CodeRunner {
                code_flags: c.code_flags,
                value_options: c.value_options.into_iter().collect(),
                stdin_flags: c.stdin_flags,
                shell: c.shell,
                all_args: c.all_args,
                elevates: c.elevates,
                skip_positionals: c.skip_positionals,
            };
            for name in names_of(c.names, "code_runner", i)? {
                code_runners.insert(name, runner.clone());
            }
        }
        let mut option_code: HashMap<String, Vec<OptionCode>> = HashMap::new();
        for (index, o) in raw.option_code.into_iter().enumerate() {
            if o.options.is_empty() {
                return Err(RulesError::NoCodeOptions { index });
            }
            let keys =
                glob_set(&o.keys, true).map_err(|(pattern, source)| RulesError::BadKeyPattern {
                    index,
                    pattern,
                    source,
                })?;
            let entry = OptionCode {
                options: o.options,
                prefixes: o.prefixes,
                keys,
                strip: o.strip,
            };
            for name in names_of(o.names, "option_code", index)? {
                option_code.entry(name).or_default().push(entry.clone());
            }
        }
        let mut exec_options = HashMap::new();
        for (i, e) in raw.exec_option.into_iter().enumerate() {
            let opt = ExecOption {
                options: e.options,
                terminators: e.terminators,
                placeholder: e.placeholder,
            };
            for name in names_of(e.names, "exec_option", i)? {
                exec_options.insert(name, opt.clone());
            }
        }
        let mut value_options: HashMap<String, HashSet<String>> = HashMap::new();
        for (i, c) in raw.command.into_iter().enumerate() {
            for name in names_of(c.names, "command", i)? {
                value_options
                    .entry(name)
                    .or_default()
                    .extend(c.value_options.iter().cloned());
            }
        }

        let mut rules = Vec::with_capacity(raw.rule.len());
        let mut by_command: HashMap<String, Vec<usize>> = HashMap::new();
        let mut redirect_rules = Vec::new();
        let mut builtins = HashMap::new();
        let mut seen = HashSet::new();
        for (index, r) in raw.rule.into_iter().enumerate() {
            if r.id.trim().is_empty() {
                return Err(RulesError::EmptyId { index });
            }
            if !seen.insert(r.id.clone()) {
                return Err(RulesError::DuplicateId(r.id));
            }
            let tier: Tier = r.tier.parse().map_err(|source| RulesError::UnknownTier {
                rule: r.id.clone(),
                source,
            })?;
            if r.reason.trim().is_empty() {
                return Err(RulesError::EmptyReason(r.id));
            }
            let has_conditions = !r.command.is_empty()
                || !r.redirect.is_empty()
                || !r.subcommand.is_empty()
                || !r.flags.is_empty()
                || !r.not_flags.is_empty()
                || !r.args.is_empty()
                || !r.not_args.is_empty()
                || !r.action.is_empty()
                || r.max_positionals.is_some()
                || !r.stdin.is_empty()
                || r.exclusive
                || !r.arg_class.is_empty()
                || r.scope.is_some()
                || r.bare.is_some();
            if r.builtin {
                if has_conditions {
                    return Err(RulesError::BuiltinWithConditions(r.id));
                }
                if !BUILTIN_IDS.contains(&r.id.as_str()) {
                    return Err(RulesError::UnknownBuiltin(r.id));
                }
            } else if r.command.is_empty() && r.redirect.is_empty() {
                return Err(RulesError::NoCondition(r.id));
            }
            if !r.command.is_empty() && !r.redirect.is_empty() {
                return Err(RulesError::CommandAndRedirect(r.id));
            }
            check_flags(&r.id, &r.flags)?;
            check_flags(&r.id, &r.not_flags)?;
            if let Some(class) = r
                .arg_class
                .iter()
                .find(|c| !ARG_CLASSES.contains(&c.as_str()))
            {
                return Err(RulesError::UnknownArgClass {
                    rule: r.id,
                    class: class.clone(),
                });
            }
            if let Some(kind) = r
                .redirect
                .iter()
                .find(|k| !REDIRECT_KINDS.contains(&k.as_str()))
            {
                return Err(RulesError::UnknownRedirect {
                    rule: r.id,
                    kind: kind.clone(),
                });
            }
            if let Some(kind) = r.stdin.iter().find(|k| !STDIN_KINDS.contains(&k.as_str())) {
                return Err(RulesError::UnknownStdin {
                    rule: r.id,
                    kind: kind.clone(),
                });
            }
            if !r.action.is_empty() && r.subcommand.is_empty() {
                return Err(RulesError::ActionWithoutSubcommand(r.id));
            }
            let scope = match r.scope.as_deref() {
                None | Some("all") => Scope::All,
                Some("last") => Scope::Last,
                Some("not_first") => Scope::NotFirst,
                Some(other) => {
                    return Err(RulesError::UnknownScope {
                        rule: r.id,
                        scope: other.to_string(),
                    });
                }
            };
            let pattern_error = |(pattern, source)| RulesError::BadPattern {
                rule: r.id.clone(),
                pattern,
                source,
            };
            let args = glob_set(&r.args, false).map_err(pattern_error)?;
            let not_args = glob_set(&r.not_args, false).map_err(pattern_error)?;
            let idx = rules.len();
            if r.builtin {
                builtins.insert(r.id.clone(), idx);
            }
            for name in &r.command {
                by_command.entry(name.clone()).or_default().push(idx);
            }
            if !r.redirect.is_empty() {
                redirect_rules.push(idx);
            }
            rules.push(Rule {
                id: r.id,
                tier,
                reason: r.reason,
                subcommand: r.subcommand,
                flags: r.flags,
                not_flags: r.not_flags,
                args,
                not_args,
                action: r.action,
                max_positionals: r.max_positionals,
                stdin: r.stdin,
                exclusive: r.exclusive,
                arg_class: r.arg_class.into_iter().collect(),
                scope,
                redirect: r.redirect,
                bare: r.bare,
            });
        }
        if let Some(missing) = BUILTIN_IDS.iter().find(|id| !builtins.contains_key(**id)) {
            return Err(RulesError::MissingBuiltin((*missing).to_string()));
        }

        let workspace = raw.workspace.trim_end_matches('/').to_string();
        Ok(RuleSet {
            workspace: if workspace.is_empty() {
                "/".into()
            } else {
                workspace
            },
            scratch: raw.scratch,
            home_vars: raw.home_vars.into_iter().collect(),
            scratch_vars: raw.scratch_vars.into_iter().collect(),
            workspace_vars: raw.workspace_vars.into_iter().collect(),
            noop_commands: raw.noop_commands.into_iter().collect(),
            trusted_code_generators: raw.trusted_code_generators.into_iter().collect(),
            empty_output_commands: raw.empty_output_commands,
            code_env_vars: raw.code_env_vars.into_iter().collect(),
            subcommand_tools: raw.subcommand_tools.into_iter().collect(),
            wrappers,
            option_code,
            code_runners,
            exec_options,
            value_options,
            rules,
            by_command,
            redirect_rules,
            builtins,
        })
    }

    /// The builtin rule with this id. Validation guarantees every id in `BUILTIN_IDS` exists, so
    /// the fallback only guards against a caller passing an id that is not in that list.
    pub(crate) fn builtin(&self, id: &str) -> (&str, Tier, &str) {
        match self.builtins.get(id).and_then(|i| self.rules.get(*i)) {
            Some(rule) => (rule.id.as_str(), rule.tier, rule.reason.as_str()),
            None => (
                "unparseable",
                Tier::Destructive,
                "internal: unknown builtin rule",
            ),
        }
    }
}
