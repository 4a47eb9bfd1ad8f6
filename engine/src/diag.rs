//! Located diagnostics: every problem with a workflow file names the file, line, column, the
//! instance path inside the document, and says how to fix it.

use std::fmt;
use std::path::{Path, PathBuf};

use annotate_snippets::{AnnotationKind, Element, Group, Level, Renderer, Snippet};
use serde::Serialize;

/// A position in a source file. Lines and columns are 1-based, as editors show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// Which validation layer found the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The file could not be read or is not text.
    Input,
    /// YAML syntax, duplicate keys, size and nesting limits.
    Syntax,
    /// The JSON Schema of the workflow format.
    Schema,
    /// Meaning: ids, `needs`, cycles, templates, inputs, units, policy.
    Semantic,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub location: Location,
    /// Where the offending text ends (just past it), when known; the snippet underlines
    /// `location..end`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<Location>,
    pub layer: Layer,
    /// JSON pointer to the offending value (`/steps/2/needs/0`), empty for the whole document.
    pub path: String,
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(
        file: &Path,
        location: Location,
        layer: Layer,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            location,
            end: None,
            layer,
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// `file:line:col: error: message`, then the offending source line with the span
    /// underlined and the hint beneath it. With `color`, ANSI styles as rustc uses them.
    pub fn render(&self, source: &str, color: bool) -> String {
        self.render_lines(source, &line_starts(source), color)
    }

    /// [`Diagnostic::render`] with the source's line starts computed once for many diagnostics.
    fn render_lines(&self, source: &str, starts: &[usize], color: bool) -> String {
        let header = format!(
            "{}:{}:{}: {} {}",
            self.file.display(),
            self.location.line,
            self.location.column,
            paint(color, "1;31", "error:"),
            paint(color, "1", &self.message)
        );
        let mut elements: Vec<Element<'_>> = Vec::new();
        match source_line(source, starts, self.location.line) {
            Some(line) if !source.is_empty() => {
                let span = underline(line, self.location, self.end);
                let mut annotation = AnnotationKind::Primary.span(span);
                if !self.path.is_empty() {
                    annotation = annotation.label(format!("at {}", self.path));
                }
                elements.push(
                    Snippet::source(line)
                        .line_start(self.location.line)
                        .annotation(annotation)
                        .into(),
                );
            }
            _ if !self.path.is_empty() => elements.push(
                Level::NOTE
                    .with_name(Some("at"))
                    .message(self.path.clone())
                    .into(),
            ),
            _ => {}
        }
        if let Some(hint) = &self.hint {
            elements.push(
                Level::HELP
                    .with_name(Some("hint"))
                    .message(hint.clone())
                    .into(),
            );
        }
        if elements.is_empty() {
            return header;
        }
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let report = [Group::with_level(Level::ERROR).elements(elements)];
        format!("{header}\n{}", renderer.render(&report))
    }
}

fn paint(color: bool, sgr: &str, text: &str) -> String {
    if color {
        format!("\x1b[{sgr}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Byte offsets where each line of `source` starts.
fn line_starts(source: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(source.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// The text of 1-based line `line`, without its line break.
fn source_line<'s>(source: &'s str, starts: &[usize], line: usize) -> Option<&'s str> {
    let start = *starts.get(line.checked_sub(1)?)?;
    let rest = source.get(start..)?;
    let text = &rest[..rest.find('\n').unwrap_or(rest.len())];
    Some(text.strip_suffix('\r').unwrap_or(text))
}

/// Byte offset in `line` of 1-based character column `column` (the line's end past it).
fn column_offset(line: &str, column: usize) -> usize {
    line.char_indices()
        .nth(column.saturating_sub(1))
        .map_or(line.len(), |(i, _)| i)
}

/// The bytes of `line` to underline: `start..end`. A span that is empty, unknown or runs onto
/// later lines (a block) is shortened to the word at the start.
fn underline(line: &str, start: Location, end: Option<Location>) -> std::ops::Range<usize> {
    let from = column_offset(line, start.column);
    let to = end
        .filter(|e| e.line == start.line && *e > start)
        .map(|e| column_offset(line, e.column));
    let to = to.unwrap_or_else(|| {
        let rest = &line[from..];
        let word = rest
            .find(|c: char| c.is_whitespace() || c == ':' || c == ',')
            .unwrap_or(rest.len());
        from + word.max(rest.chars().next().map_or(0, char::len_utf8))
    });
    from..to.max(from)
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file.display(),
            self.location.line,
            self.location.column,
            self.message
        )?;
        if !self.path.is_empty() {
            write!(f, "\n  at: {}", self.path)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// All the problems found in one file, sorted by position.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            (a.location, a.layer, &a.path, &a.message)
                .cmp(&(b.location, b.layer, &b.path, &b.message))
        });
        self.0.dedup();
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Every diagnostic with its source snippet (see [`Diagnostic::render`]), separated by
    /// blank lines.
    pub fn render(&self, source: &str, color: bool) -> String {
        let starts = line_starts(source);
        self.0
            .iter()
            .map(|d| d.render_lines(source, &starts, color))
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// JSON-pointer escaping of one segment (RFC 6901).
pub fn pointer_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// The closest candidate to `word`, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A known name one or two edits away from a misspelt one (`lenght` → `length`). Filter names
/// are short, so [`did_you_mean`]'s similarity score would offer `sort` for `shout`; an edit
/// distance does not.
pub fn closest_by_edits<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let allowed = (name.chars().count() / 4).max(1);
    known
        .iter()
        .map(|k| (strsim::osa_distance(name, k), *k))
        .filter(|(d, _)| *d <= allowed)
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostic(line: usize, column: usize, end: Option<Location>) -> Diagnostic {
        let mut d = Diagnostic::new(
            Path::new("wf.yaml"),
            Location { line, column },
            Layer::Schema,
            "/steps/0/timeout",
            "durations need a unit: `5s`",
        )
        .with_hint("write `5s`");
        d.end = end;
        d
    }

    const SOURCE: &str = "steps:\n  - id: é\n    timeout: 5\n";

    #[test]
    fn renders_the_header_the_line_a_caret_under_the_span_and_the_hint() {
        let d = diagnostic(
            3,
            14,
            Some(Location {
                line: 3,
                column: 15,
            }),
        );
        let text = d.render(SOURCE, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "wf.yaml:3:14: error: durations need a unit: `5s`");
        let shown = lines
            .iter()
            .position(|l| l.ends_with("    timeout: 5"))
            .unwrap();
        let caret = lines[shown + 1];
        assert_eq!(caret.find('^'), Some("3 | ".len() + 13), "{text}");
        assert_eq!(caret.matches('^').count(), 1, "{text}");
        assert!(caret.contains("at /steps/0/timeout"), "{text}");
        assert!(text.contains("hint: write `5s`"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
    }

    #[test]
    fn colour_is_only_added_when_asked_for() {
        let d = diagnostic(3, 14, None);
        assert!(d.render(SOURCE, true).contains('\x1b'));
    }

    #[test]
    fn columns_count_characters_and_unknown_ends_underline_the_word() {
        // Column 9 of line 2 is `é`, two bytes long: the caret must not split it.
        let d = diagnostic(2, 9, None);
        let text = d.render(SOURCE, false);
        let caret = text.lines().find(|l| l.contains('^')).unwrap();
        assert_eq!(caret.matches('^').count(), 1, "{text}");
        // A span ending on a later line (a block) is cut at the end of its first line.
        let d = diagnostic(2, 5, Some(Location { line: 3, column: 1 }));
        let text = d.render(SOURCE, false);
        let caret = text.lines().find(|l| l.contains('^')).unwrap();
        assert_eq!(caret.matches('^').count(), 2, "`id` is underlined: {text}");
    }

    #[test]
    fn a_diagnostic_without_source_keeps_its_hint() {
        let d = diagnostic(1, 1, None);
        let text = d.render("", false);
        assert!(text.starts_with("wf.yaml:1:1: error: "), "{text}");
        assert!(
            text.contains("/steps/0/timeout") && text.contains("write `5s`"),
            "{text}"
        );
    }

    #[test]
    fn diagnostics_render_in_order_separated_by_blank_lines() {
        let ds = Diagnostics(vec![diagnostic(2, 5, None), diagnostic(3, 14, None)]);
        let text = ds.render(SOURCE, false);
        let headers: Vec<&str> = text.lines().filter(|l| l.contains(": error: ")).collect();
        assert_eq!(headers.len(), 2);
        assert!(headers[0].starts_with("wf.yaml:2:5") && headers[1].starts_with("wf.yaml:3:14"));
        assert!(text.contains("\n\n"));
    }
}
