//! Turning raw shell words into what the rules look at: the static text (quotes removed,
//! escapes resolved), whether anything in it is only known at run time, and which class of path
//! it names.

use std::collections::BTreeSet;
use std::path::Path;

use brush_parser::ParserOptions;
use brush_parser::word::{self, Parameter, ParameterExpr, TildeExpr, WordPiece};

use crate::rules::RuleSet;

/// Stands in for text only known at run time; it cannot appear in a real argument.
pub(crate) const UNKNOWN: char = '\u{1}';

/// One expanded word.
#[derive(Debug, Clone, Default)]
pub(crate) struct Arg {
    /// Static text with `UNKNOWN` where an expansion goes.
    pub text: String,
    /// Some part comes from a parameter, command substitution or a tool (`xargs`, `find -exec`).
    pub dynamic: bool,
    /// Contains unquoted glob characters.
    pub glob: bool,
    /// A process substitution (`<(...)`): the argument is a pipe fed by another command.
    pub procsub: bool,
    /// Command substitutions found in the word, to be analysed as commands in their own right.
    pub substitutions: Vec<String>,
}

impl Arg {
    pub(crate) fn unknown() -> Self {
        Arg {
            text: UNKNOWN.to_string(),
            dynamic: true,
            ..Arg::default()
        }
    }

    /// The text as shown to users: unknown parts print as `…`.
    pub(crate) fn display(&self) -> String {
        self.text.replace(UNKNOWN, "…")
    }

    /// Literal text if the word is fully static.
    pub(crate) fn static_text(&self) -> Option<&str> {
        (!self.dynamic).then_some(self.text.as_str())
    }
}

pub(crate) fn expand(raw: &str, options: &ParserOptions, rules: &RuleSet) -> Arg {
    let mut arg = Arg::default();
    match word::parse(raw, options) {
        Ok(pieces) => {
            for p in pieces {
                push_piece(&mut arg, &p.piece, false, rules);
            }
        }
        // A word the expansion parser rejects is treated as unknown at run time, which is the
        // conservative reading for every rule that looks at arguments.
        Err(_) => {
            arg.text = UNKNOWN.to_string();
            arg.dynamic = true;
        }
    }
    arg
}

fn push_unknown(arg: &mut Arg) {
    arg.text.push(UNKNOWN);
    arg.dynamic = true;
}

fn push_piece(arg: &mut Arg, piece: &WordPiece, quoted: bool, rules: &RuleSet) {
    match piece {
        WordPiece::Text(s) => {
            if !quoted && s.contains(['*', '?', '[']) {
                arg.glob = true;
            }
            arg.text.push_str(s);
        }
        WordPiece::SingleQuotedText(s) => arg.text.push_str(s),
        WordPiece::AnsiCQuotedText(s) => arg.text.push_str(&decode_ansi_c(s)),
        WordPiece::DoubleQuotedSequence(v) | WordPiece::GettextDoubleQuotedSequence(v) => {
            for p in v {
                push_piece(arg, &p.piece, true, rules);
            }
        }
        WordPiece::TildeExpansion(t) => match t {
            TildeExpr::Home => arg.text.push('~'),
            TildeExpr::UserHome(u) => {
                arg.text.push('~');
                arg.text.push_str(u);
            }
            TildeExpr::WorkingDir => arg.text.push('.'),
            _ => push_unknown(arg),
        },
        WordPiece::ParameterExpansion(expr) => {
            let name = match expr {
                ParameterExpr::Parameter {
                    parameter: Parameter::Named(n),
                    indirect: false,
                } => Some(n.as_str()),
                _ => None,
            };
            // Well-known variables keep their meaning for path classes (`$HOME/x` is outside
            // the workspace) but still count as dynamic text.
            match name {
                Some(n) if rules.home_vars.contains(n) => {
                    arg.text.push('~');
                    arg.dynamic = true;
                }
                Some(n) if rules.scratch_vars.contains(n) => {
                    arg.text.push_str("/tmp");
                    arg.dynamic = true;
                }
                Some(n) if rules.workspace_vars.contains(n) => {
                    arg.text.push('.');
                    arg.dynamic = true;
                }
                _ => push_unknown(arg),
            }
        }
        WordPiece::CommandSubstitution(s) => {
            arg.substitutions.push(s.clone());
            push_unknown(arg);
        }
        WordPiece::BackquotedCommandSubstitution(s) => {
            arg.substitutions.push(unescape_backquoted(s));
            push_unknown(arg);
        }
        WordPiece::EscapeSequence(s) => arg.text.push_str(s.strip_prefix('\\').unwrap_or(s)),
        WordPiece::ArithmeticExpression(_) => push_unknown(arg),
    }
}

/// Inside backquotes, `\\`, `` \` `` and `\$` stand for the bare character.
fn unescape_backquoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && matches!(next, '\\' | '`' | '$')
        {
            out.push(next);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

/// `$'...'` bodies: decode the escapes an obfuscator would use to spell a command name
/// (`$'\x72m'` is `rm`).
fn decode_ansi_c(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '\\' || i + 1 >= chars.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let next = chars[i + 1];
        i += 2;
        match next {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'x' => {
                let hex: String = chars[i..]
                    .iter()
                    .take(2)
                    .take_while(|c| c.is_ascii_hexdigit())
                    .collect();
                i += hex.len();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(ch) => out.push(ch),
                    None => out.push('x'),
                }
            }
            '0'..='7' => {
                let mut oct = String::from(next);
                oct.extend(
                    chars[i..]
                        .iter()
                        .take(2)
                        .take_while(|c| ('0'..='7').contains(*c)),
                );
                i += oct.len() - 1;
                if let Some(ch) = u32::from_str_radix(&oct, 8).ok().and_then(char::from_u32) {
                    out.push(ch);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Where the analyser believes the current directory is, for resolving relative paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cwd {
    /// Inside the workspace, this many components below its root.
    Workspace(Vec<String>),
    Outside,
    Unknown,
}

/// Lexically normalise `/`-separated components; `None` when `..` climbs above the start.
fn normalise(start: &[String], rel: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = start.to_vec();
    for comp in rel.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c.to_string()),
        }
    }
    Some(out)
}

fn under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn looks_remote(text: &str) -> bool {
    if let Some((scheme, _)) = text.split_once("://") {
        return !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
    }
    // scp/rsync style `host:path` or `user@host:path`.
    match text.split_once(':') {
        Some((host, _)) => {
            !host.is_empty()
                && !host.starts_with('-')
                && !host.contains(['/', '=', UNKNOWN, ' '])
                && (host.chars().any(|c| c.is_ascii_alphabetic()) || is_ipv4(host))
        }
        None => false,
    }
}

/// `user@1.2.3.4` or `1.2.3.4`: a host given by address (a bare `12:30` is not one).
fn is_ipv4(host: &str) -> bool {
    let addr = host.rsplit('@').next().unwrap_or(host);
    let parts: Vec<&str> = addr.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Classify an absolute, normalised path (components below `/`).
fn classify_absolute(comps: &[String], rules: &RuleSet, classes: &mut BTreeSet<&'static str>) {
    let path = format!("/{}", comps.join("/"));
    if under(&path, &rules.workspace) {
        classes.insert("workspace");
    } else if rules.scratch.iter().any(|s| under(&path, s)) {
        classes.insert("scratch");
    } else if under(&path, "/dev/tcp") || under(&path, "/dev/udp") {
        // Not devices: bash turns these paths into sockets (rule `redirect-network`).
        classes.insert("socket");
    } else if under(&path, "/dev") {
        classes.insert("device");
    } else {
        classes.insert("outside");
    }
}

/// The path classes of one argument, given where the command runs. `workspace_dir` (when the
/// caller knows the real workspace) adds `existing` for paths that are already there.
pub(crate) fn classes(
    arg: &Arg,
    cwd: &Cwd,
    rules: &RuleSet,
    workspace_dir: Option<&Path>,
) -> BTreeSet<&'static str> {
    let mut classes = BTreeSet::new();
    if arg.glob {
        classes.insert("glob");
    }
    if arg.procsub {
        classes.insert("dynamic");
        return classes;
    }
    if looks_remote(&arg.text) {
        classes.insert("remote");
    }
    let (prefix, has_unknown) = match arg.text.find(UNKNOWN) {
        Some(i) => (&arg.text[..i], true),
        None => (arg.text.as_str(), false),
    };
    if arg.dynamic && prefix.is_empty() {
        classes.insert("dynamic");
        return classes;
    }
    // With an unknown suffix only the directory part of the prefix is certain.
    let certain = if has_unknown {
        match prefix.rfind('/') {
            Some(i) => &prefix[..=i],
            None => "",
        }
    } else {
        prefix
    };
    let mut location = BTreeSet::new();
    if certain == "~" || certain.starts_with("~/") || (certain.starts_with('~') && !has_unknown) {
        location.insert("outside");
    } else if let Some(rest) = certain.strip_prefix('/') {
        match normalise(&[], rest) {
            Some(comps) => classify_absolute(&comps, rules, &mut location),
            None => {
                location.insert("outside");
            }
        }
    } else if has_unknown && certain.is_empty() {
        location.insert("dynamic");
    } else {
        match cwd {
            Cwd::Outside => {
                location.insert("outside");
            }
            Cwd::Unknown => {
                location.insert("dynamic");
            }
            Cwd::Workspace(start) => match normalise(start, certain) {
                Some(_) => {
                    location.insert("workspace");
                }
                None => {
                    location.insert("outside");
                }
            },
        }
    }
    if has_unknown && location.contains("workspace") {
        // `build/$X` may still climb out with `..`; only the outside verdict is certain.
        location.clear();
        location.insert("dynamic");
    }
    if !has_unknown
        && location.contains("workspace")
        && let Some(dir) = workspace_dir
        && let Cwd::Workspace(start) = cwd
    {
        let rel = if let Some(r) = prefix.strip_prefix(&rules.workspace) {
            normalise(&[], r)
        } else {
            normalise(start, prefix)
        };
        if let Some(comps) = rel
            && !comps.is_empty()
            && dir.join(comps.join("/")).exists()
        {
            classes.insert("existing");
        }
    }
    classes.extend(location);
    classes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_c_escapes_spell_commands() {
        assert_eq!(decode_ansi_c("\\x72m"), "rm");
        assert_eq!(decode_ansi_c("\\162m"), "rm");
        assert_eq!(decode_ansi_c("a\\tb"), "a\tb");
    }

    #[test]
    fn backquote_unescape() {
        assert_eq!(unescape_backquoted("echo \\`x\\` \\$y"), "echo `x` $y");
    }

    #[test]
    fn normalise_detects_escape() {
        assert_eq!(normalise(&[], "a/../b"), Some(vec!["b".to_string()]));
        assert_eq!(normalise(&[], "../x"), None);
        assert_eq!(
            normalise(&["src".into()], "../x"),
            Some(vec!["x".to_string()])
        );
    }

    #[test]
    fn remote_detection() {
        assert!(looks_remote("deploy@server:/var/www/"));
        assert!(looks_remote("https://example.com/x"));
        assert!(!looks_remote("/etc/hosts"));
        assert!(!looks_remote("a=b:c"));
        assert!(looks_remote("127.0.0.1:/dev/null"));
        assert!(looks_remote("root@10.0.0.2:/srv"));
        assert!(!looks_remote("12:30"));
    }
}
