//! PII and secret scrubber: replaces secrets with stable placeholders before text leaves the
//! machine, and restores them locally in what comes back.
//!
//! Patterns are data (`patterns/pii.toml`), embedded at build time and self-tested at load: every
//! pattern's `examples` must be scrubbed and its `not` list left alone, so a broken edit fails at
//! startup rather than leaking silently. Obvious documentation placeholders (`ghp_XXXX…`,
//! `AKIAIOSFODNN7EXAMPLE`, `your-api-key-here`) are recognised by rules that are data too
//! (`[placeholders]` in the same file), as is the IBAN country-length table.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;
use zeroize::Zeroize;

use crate::error::PatternError;
use crate::normalize::{ascii_word_boundaries, invisible_kind};

const FILE: &str = "llm/patterns/pii.toml";
/// The embedded pattern file.
pub const PII_PATTERNS_TOML: &str = include_str!("../patterns/pii.toml");

/// Placeholder family; its upper-case name starts the placeholder (`<SECRET_1>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Secret,
    Email,
    Phone,
    Card,
    Iban,
    NationalId,
}

impl PiiKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Secret => "SECRET",
            Self::Email => "EMAIL",
            Self::Phone => "PHONE",
            Self::Card => "CARD",
            Self::Iban => "IBAN",
            Self::NationalId => "NATIONAL_ID",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Check {
    Luhn,
    Entropy,
    Mixed,
    Password,
    Email,
    Phone,
    Iban,
    /// A `.env`/settings value: `password` rules, and short plain numbers (`TTL=3600`) are
    /// settings, not secrets.
    Setting,
}

/// Which placeholder rules a pattern's value is tested against.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PlaceholderMode {
    /// Free text (passwords): only whole-value placeholders and marker words.
    Text,
    /// Machine-made keys: also filler runs, repeats, ascending sequences, low entropy.
    Key,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternFile {
    version: u32,
    #[serde(default)]
    placeholders: PlaceholderRules,
    /// ISO 13616 country code -> IBAN length.
    #[serde(default)]
    iban_lengths: BTreeMap<String, usize>,
    pattern: Vec<RawPattern>,
}

/// What makes a value an obvious placeholder rather than a secret (see `[placeholders]` in
/// `pii.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceholderRules {
    markers: Vec<String>,
    words: Vec<String>,
    references: Vec<String>,
    filler: String,
    max_filler_share: f64,
    max_run: usize,
    max_sequential_share: f64,
    min_body_entropy: f64,
    entropy_min_len: usize,
    stats_min_len: usize,
}

impl Default for PlaceholderRules {
    /// No placeholder rules at all: for pattern files without a `[placeholders]` table.
    fn default() -> Self {
        Self {
            markers: Vec::new(),
            words: Vec::new(),
            references: Vec::new(),
            filler: String::new(),
            max_filler_share: f64::INFINITY,
            max_run: usize::MAX,
            max_sequential_share: f64::INFINITY,
            min_body_entropy: 0.0,
            entropy_min_len: usize::MAX,
            stats_min_len: usize::MAX,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPattern {
    id: String,
    kind: PiiKind,
    regex: String,
    check: Option<Check>,
    min_entropy: Option<f64>,
    placeholders: Option<PlaceholderMode>,
    /// Words that, right before the value, make it something else (`version 06.12.34.56.78`).
    #[serde(default)]
    not_after: Vec<String>,
    /// Endings of the assigned name that make the value a setting (`TOKEN_URL=`).
    #[serde(default)]
    not_names: Vec<String>,
    #[serde(default)]
    examples: Vec<String>,
    #[serde(default)]
    not: Vec<String>,
}

struct PiiPattern {
    id: String,
    kind: PiiKind,
    regex: Regex,
    check: Option<Check>,
    min_entropy: f64,
    placeholders: Option<PlaceholderMode>,
    not_after: Vec<String>,
    not_names: Vec<String>,
}

/// One secret found in a text: where, which pattern, which family. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PiiMatch {
    pub pattern_id: String,
    pub kind: PiiKind,
    /// Byte range of the value in the scanned text.
    pub start: usize,
    pub end: usize,
}

/// The compiled pattern set. Cheap to share (`Scrubber::builtin()` is a process-wide static).
pub struct Scrubber {
    patterns: Vec<PiiPattern>,
    rules: PlaceholderRules,
    iban_lengths: BTreeMap<String, usize>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrubber")
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

impl Scrubber {
    /// Compile and self-test a pattern file in the `pii.toml` schema.
    pub fn from_toml(src: &str) -> Result<Self, PatternError> {
        let file: PatternFile = toml::from_str(src).map_err(|e| PatternError::Parse {
            file: FILE,
            message: e.to_string(),
        })?;
        if file.version != 1 {
            return Err(PatternError::Version {
                file: FILE,
                found: file.version,
            });
        }
        let mut seen = std::collections::HashSet::new();
        let mut patterns = Vec::with_capacity(file.pattern.len());
        let mut tests = Vec::new();
        for raw in file.pattern {
            if !seen.insert(raw.id.clone()) {
                return Err(PatternError::DuplicateId {
                    file: FILE,
                    id: raw.id,
                });
            }
            let regex = Regex::new(&ascii_word_boundaries(&raw.regex)).map_err(|e| {
                PatternError::Regex {
                    file: FILE,
                    id: raw.id.clone(),
                    message: e.to_string(),
                }
            })?;
            if raw.check == Some(Check::Entropy) && raw.min_entropy.is_none() {
                return Err(PatternError::Invalid {
                    file: FILE,
                    id: raw.id,
                    message: "check = \"entropy\" needs min_entropy".into(),
                });
            }
            if raw.examples.is_empty() {
                return Err(PatternError::Invalid {
                    file: FILE,
                    id: raw.id,
                    message: "every pattern needs at least one example".into(),
                });
            }
            tests.push((patterns.len(), raw.examples, raw.not));
            patterns.push(PiiPattern {
                id: raw.id,
                kind: raw.kind,
                regex,
                check: raw.check,
                min_entropy: raw.min_entropy.unwrap_or(0.0),
                placeholders: raw.placeholders,
                not_after: raw.not_after.iter().map(|w| w.to_lowercase()).collect(),
                not_names: raw.not_names.iter().map(|w| w.to_uppercase()).collect(),
            });
        }
        let mut rules = file.placeholders;
        for list in [&mut rules.markers, &mut rules.words, &mut rules.references] {
            for w in list.iter_mut() {
                *w = w.to_lowercase();
            }
        }
        let scrubber = Self {
            patterns,
            rules,
            iban_lengths: file.iban_lengths,
        };
        let mut failures = Vec::new();
        for (i, examples, not) in tests {
            let p = &scrubber.patterns[i];
            for ex in examples {
                if scrubber.matches_of(p, &ex).next().is_none() {
                    failures.push(format!("`{}` misses its example {ex:?}", p.id));
                }
            }
            for ex in not {
                if scrubber.matches_of(p, &ex).next().is_some() {
                    failures.push(format!("`{}` matches its counter-example {ex:?}", p.id));
                }
            }
        }
        if failures.is_empty() {
            Ok(scrubber)
        } else {
            Err(PatternError::SelfTest {
                file: FILE,
                failures,
            })
        }
    }

    /// The built-in patterns (`patterns/pii.toml`), compiled once per process.
    pub fn builtin() -> Result<&'static Scrubber, PatternError> {
        static CELL: OnceLock<Result<Scrubber, String>> = OnceLock::new();
        match CELL.get_or_init(|| Scrubber::from_toml(PII_PATTERNS_TOML).map_err(|e| e.to_string()))
        {
            Ok(s) => Ok(s),
            Err(message) => Err(PatternError::Invalid {
                file: FILE,
                id: "*".into(),
                message: message.clone(),
            }),
        }
    }

    /// Pattern ids, in file order.
    pub fn pattern_ids(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|p| p.id.as_str())
    }

    fn matches_of<'a>(
        &'a self,
        p: &'a PiiPattern,
        text: &'a str,
    ) -> impl Iterator<Item = (usize, usize)> + 'a {
        p.regex.captures_iter(text).filter_map(move |caps| {
            // The first participating group is the value; the rest of the match is context.
            let m = (1..caps.len())
                .find_map(|i| caps.get(i))
                .or_else(|| caps.get(0))?;
            let value = m.as_str();
            if value.starts_with('<') && value.ends_with('>') && is_placeholder(value) {
                return None;
            }
            if !p.not_after.is_empty() && preceded_by(&text[..m.start()], &p.not_after) {
                return None;
            }
            if !p.not_names.is_empty()
                && let Some(whole) = caps.get(0)
                && assigned_name_ends_with(&text[whole.start()..m.start()], &p.not_names)
            {
                return None;
            }
            if let Some(mode) = p.placeholders
                && self.rules.is_placeholder(value, mode)
            {
                return None;
            }
            let len = self.accept(p, value)?;
            Some((m.start(), m.start() + len))
        })
    }

    /// Byte length of the part of `value` that passes the pattern's check, if any. Every check
    /// but `iban` takes the whole value or nothing.
    fn accept(&self, p: &PiiPattern, value: &str) -> Option<usize> {
        let ok = match p.check {
            None => true,
            Some(Check::Luhn) => luhn_valid(value) && !periodic_digits(value),
            Some(Check::Entropy) => {
                value.bytes().any(|b| b.is_ascii_digit()) && shannon_entropy(value) >= p.min_entropy
            }
            Some(Check::Mixed) => {
                value.bytes().any(|b| b.is_ascii_digit())
                    && value.bytes().any(|b| b.is_ascii_alphabetic())
            }
            Some(Check::Password) => plausible_password(value) && !self.rules.is_reference(value),
            Some(Check::Setting) => {
                plausible_password(value)
                    && !self.rules.is_reference(value)
                    && !(value.len() <= 6 && value.bytes().all(|b| b.is_ascii_digit()))
            }
            Some(Check::Email) => plausible_email(value),
            Some(Check::Phone) => plausible_phone(value),
            Some(Check::Iban) => return iban_prefix(value, &self.iban_lengths),
        };
        ok.then_some(value.len())
    }

    /// All secrets in `text`, non-overlapping, in text order.
    pub fn find(&self, text: &str) -> Vec<PiiMatch> {
        let mut all: Vec<(usize, usize, usize)> = Vec::new();
        for (pi, p) in self.patterns.iter().enumerate() {
            all.extend(self.matches_of(p, text).map(|(s, e)| (s, e, pi)));
        }
        // Secrets first (a token inside `https://x:ghp_...@github.com` is a secret, not an
        // email), then earliest start, longer match, pattern listed first.
        all.sort_by(|a, b| {
            let sa = self.patterns[a.2].kind != PiiKind::Secret;
            let sb = self.patterns[b.2].kind != PiiKind::Secret;
            sa.cmp(&sb)
                .then(a.0.cmp(&b.0))
                .then(b.1.cmp(&a.1))
                .then(a.2.cmp(&b.2))
        });
        let mut chosen: std::collections::BTreeMap<usize, (usize, usize)> =
            std::collections::BTreeMap::new();
        for (s, e, pi) in all {
            let before = chosen
                .range(..=s)
                .next_back()
                .is_some_and(|(_, &(end, _))| end > s);
            let after = chosen.range(s..e).next().is_some();
            if before || after {
                continue;
            }
            chosen.insert(s, (e, pi));
        }
        let out: Vec<PiiMatch> = chosen
            .into_iter()
            .map(|(s, (e, pi))| PiiMatch {
                pattern_id: self.patterns[pi].id.clone(),
                kind: self.patterns[pi].kind,
                start: s,
                end: e,
            })
            .collect();
        out
    }

    /// Start a scrub session: placeholders are numbered per session and stay stable within it.
    pub fn session(&self) -> ScrubSession<'_> {
        ScrubSession {
            scrubber: self,
            restorer: Restorer::default(),
        }
    }

    /// Scrub one text in a fresh session.
    pub fn scrub(&self, text: &str) -> (String, Restorer) {
        let mut s = self.session();
        let out = s.scrub(text);
        (out, s.into_restorer())
    }
}

/// A scrubbing session: the same value always gets the same placeholder within it, across every
/// text scrubbed (system prompt, messages, repair rounds).
pub struct ScrubSession<'a> {
    scrubber: &'a Scrubber,
    restorer: Restorer,
}

impl fmt::Debug for ScrubSession<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrubSession")
            .field("restorer", &self.restorer)
            .finish()
    }
}

impl ScrubSession<'_> {
    /// Replace every secret in `text`. Invisible characters (zero-width, bidi, tag, variation
    /// selectors) are removed first: they would otherwise split a key so no pattern sees it, and
    /// they carry nothing a remote model needs (tag characters can carry hidden instructions).
    pub fn scrub(&mut self, text: &str) -> String {
        let cleaned;
        let text = if text.chars().any(|c| invisible_kind(c).is_some()) {
            cleaned = text
                .chars()
                .filter(|&c| invisible_kind(c).is_none())
                .collect::<String>();
            cleaned.as_str()
        } else {
            text
        };
        let matches = self.scrubber.find(text);
        if matches.is_empty() {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in &matches {
            out.push_str(&text[last..m.start]);
            out.push_str(&self.restorer.placeholder_for(m.kind, &text[m.start..m.end]));
            last = m.end;
        }
        out.push_str(&text[last..]);
        out
    }

    /// What was replaced so far (kind and pattern per placeholder, never the values).
    pub fn restorer(&self) -> &Restorer {
        &self.restorer
    }

    pub fn into_restorer(self) -> Restorer {
        self.restorer
    }
}

/// Maps placeholders back to the values they replaced. Holds secrets: its `Debug` shows only the
/// placeholders, and the values are zeroed on drop.
#[derive(Default, Clone)]
pub struct Restorer {
    by_value: HashMap<SecretValue, String>,
    by_placeholder: HashMap<String, SecretValue>,
    counters: HashMap<PiiKind, usize>,
}

impl fmt::Debug for Restorer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.by_placeholder.keys().collect();
        names.sort();
        f.debug_struct("Restorer")
            .field("placeholders", &names)
            .finish()
    }
}

impl Restorer {
    fn placeholder_for(&mut self, kind: PiiKind, value: &str) -> String {
        if let Some(p) = self.by_value.get(value) {
            return p.clone();
        }
        let n = self.counters.entry(kind).or_insert(0);
        *n += 1;
        let placeholder = format!("<{}_{}>", kind.label(), n);
        self.by_placeholder
            .insert(placeholder.clone(), SecretValue(value.to_owned()));
        self.by_value
            .insert(SecretValue(value.to_owned()), placeholder.clone());
        placeholder
    }

    /// How many distinct values were replaced.
    pub fn len(&self) -> usize {
        self.by_placeholder.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_placeholder.is_empty()
    }

    /// Placeholder names handed out, sorted.
    pub fn placeholders(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_placeholder.keys().cloned().collect();
        v.sort();
        v
    }

    /// Put the real values back wherever a placeholder of this session appears. Unknown
    /// placeholders (the model invented `<SECRET_9>`) are left as they are.
    pub fn restore(&self, text: &str) -> String {
        if self.by_placeholder.is_empty() {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find('<') {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            let hit = tail.find('>').and_then(|j| {
                let cand = &tail[..=j];
                self.by_placeholder.get(cand).map(|v| (j, v))
            });
            match hit {
                Some((j, value)) => {
                    out.push_str(&value.0);
                    rest = &tail[j + 1..];
                }
                None => {
                    out.push('<');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// A replaced value: hashable (unlike `Zeroizing<String>`) and zeroed on drop.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SecretValue(String);

impl std::borrow::Borrow<str> for SecretValue {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

fn is_placeholder(v: &str) -> bool {
    let inner = &v[1..v.len() - 1];
    match inner.rsplit_once('_') {
        Some((label, n)) => {
            ["SECRET", "EMAIL", "PHONE", "CARD", "IBAN", "NATIONAL_ID"].contains(&label)
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

impl PlaceholderRules {
    /// `value` is documentation or a template, not a secret.
    fn is_placeholder(&self, value: &str, mode: PlaceholderMode) -> bool {
        let lower = value.to_lowercase();
        if self.markers.iter().any(|m| lower.contains(m.as_str())) {
            return true;
        }
        let body = key_body(value);
        if !self.filler.is_empty()
            && body
                .chars()
                .all(|c| self.filler.contains(c) || c == '-' || c == '_')
        {
            return true;
        }
        // `your-api-key-here`, `REPLACE_WITH_TOKEN`, `changeme`: nothing but template words.
        let mut parts = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .peekable();
        if parts.peek().is_some()
            && parts
                .all(|w| self.words.iter().any(|x| x == w) || w.bytes().all(|b| b.is_ascii_digit()))
            && lower.bytes().any(|b| b.is_ascii_alphabetic())
        {
            return true;
        }
        if mode == PlaceholderMode::Text {
            return false;
        }
        let chars: Vec<char> = body.chars().filter(|&c| c != '-' && c != '_').collect();
        // Statistics on a handful of characters say nothing.
        if chars.len() < self.stats_min_len {
            return false;
        }
        let n = chars.len() as f64;
        let filler = chars.iter().filter(|&&c| self.filler.contains(c)).count() as f64;
        if filler / n >= self.max_filler_share {
            return true;
        }
        let mut run = 1usize;
        let mut longest = 1usize;
        let mut ascending = 0usize;
        for w in chars.windows(2) {
            run = if w[0] == w[1] { run + 1 } else { 1 };
            longest = longest.max(run);
            let (a, b) = (u32::from(w[0]), u32::from(w[1]));
            if b == a + 1 || (w[0] == '9' && w[1] == '0') {
                ascending += 1;
            }
        }
        if longest >= self.max_run {
            return true;
        }
        if chars.len() > 1 && ascending as f64 / (n - 1.0) >= self.max_sequential_share {
            return true;
        }
        chars.len() >= self.entropy_min_len
            && shannon_entropy(&chars.iter().collect::<String>()) < self.min_body_entropy
    }

    /// `os.environ["X"]`, `process.env.X`, `getenv("X")`: where a secret lives, not the secret.
    fn is_reference(&self, value: &str) -> bool {
        let lower = value.trim().to_lowercase();
        if self
            .references
            .iter()
            .any(|r| lower.starts_with(r.as_str()))
        {
            return true;
        }
        // An identifier immediately followed by a call or an index.
        let ident = lower
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .map_or(lower.as_str(), |i| &lower[..i]);
        !ident.is_empty()
            && ident.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && matches!(lower[ident.len()..].chars().next(), Some('(' | '['))
    }
}

/// The random part of a key: vendor prefix segments (`sk-ant-api03-`, `ghp_`, `SG.`) and base64
/// padding removed.
fn key_body(value: &str) -> &str {
    let mut rest = value.trim_end_matches('=');
    for _ in 0..3 {
        let seg = rest
            .char_indices()
            .find(|&(_, c)| !c.is_ascii_alphanumeric())
            .filter(|&(i, c)| (1..=8).contains(&i) && matches!(c, '-' | '_' | '.'));
        match seg {
            Some((i, _)) if rest.len() > i + 1 => rest = &rest[i + 1..],
            _ => break,
        }
    }
    rest
}

/// The last word of `before` (ignoring spaces and `:#`) is one of `words`.
fn preceded_by(before: &str, words: &[String]) -> bool {
    let t = before.trim_end_matches(|c: char| c.is_whitespace() || matches!(c, ':' | '#'));
    let start = t
        .rfind(|c: char| !c.is_alphanumeric())
        .map_or(0, |i| i + t[i..].chars().next().map_or(1, char::len_utf8));
    let word = t[start..].to_lowercase();
    !word.is_empty() && words.contains(&word)
}

/// The name in `context` (`export TOKEN_URL=`, `"token_url": "`) ends with one of `endings`
/// (upper case).
fn assigned_name_ends_with(context: &str, endings: &[String]) -> bool {
    let t = context
        .trim_end_matches(|c: char| c.is_whitespace() || matches!(c, '=' | ':' | '"' | '\'' | '>'));
    let start = t
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let name = t[start..].to_ascii_uppercase();
    endings.iter().any(|e| name.ends_with(e.as_str()))
}

/// 8-15 digits, not a date (`2026.03.15`), not a filler number (`000-0000`, `1111111111`).
fn plausible_phone(v: &str) -> bool {
    let digits: Vec<u8> = v.bytes().filter(u8::is_ascii_digit).collect();
    if !(8..=15).contains(&digits.len()) {
        return false;
    }
    let zeros = digits.iter().filter(|&&d| d == b'0').count();
    if zeros * 2 > digits.len() || digits.iter().all(|&d| d == digits[0]) {
        return false;
    }
    let groups: Vec<&str> = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    // 192.168.100.200
    if groups.len() == 4
        && groups.iter().all(|g| g.len() <= 3)
        && v.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return false;
    }
    if v.starts_with('+') {
        return true;
    }
    // Dates first: 2026.03.15, 2026-03-02, 20260302 (YYYYMMDD), 20260302 1200.
    let year = |g: &str| g.starts_with("19") || g.starts_with("20");
    let month = |g: &str| g.parse::<u32>().is_ok_and(|m| (1..=12).contains(&m));
    let date = match groups.as_slice() {
        [g, ..] if g.len() == 8 => year(g) && month(&g[4..6]),
        [g, m, ..] if g.len() == 4 => year(g) && month(m),
        _ => false,
    };
    // Unix times in seconds or milliseconds: 1717171717, 1717171717123.
    let epoch =
        matches!(groups.as_slice(), [g] if (g.len() == 10 || g.len() == 13) && g.starts_with('1'));
    !(date || epoch)
}

/// The leading part of `value` that is a valid IBAN (ISO 13616: known country, its length,
/// mod-97 == 1), as a byte length; spaces or dashes between groups allowed.
fn iban_prefix(value: &str, lengths: &BTreeMap<String, usize>) -> Option<usize> {
    let country = value.get(..2)?.to_ascii_uppercase();
    let want = *lengths.get(&country)?;
    let mut alnum = String::with_capacity(want);
    let mut end = None;
    for (i, c) in value.char_indices() {
        if c == ' ' || c == '-' {
            continue;
        }
        alnum.push(c.to_ascii_uppercase());
        if alnum.len() == want {
            end = Some(i + c.len_utf8());
            break;
        }
    }
    let end = end?;
    // The value must stop on a group boundary: `DE89 3704 ... 00` and not in the middle of the
    // next word.
    let next = value[end..].chars().next();
    if next.is_some_and(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let rearranged = alnum[4..].chars().chain(alnum[..4].chars());
    let mut rem: u32 = 0;
    for c in rearranged {
        let d = c.to_digit(36)?;
        rem = if d >= 10 {
            (rem * 100 + d) % 97
        } else {
            (rem * 10 + d) % 97
        };
    }
    (rem == 1).then_some(end)
}

/// `4242 4242 4242 4242`, `5555…`: a short block repeated is a published test number.
fn periodic_digits(s: &str) -> bool {
    let d: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
    (1..=4).any(|p| d.len() > p && d.iter().skip(p).zip(&d).all(|(a, b)| a == b))
}

/// Luhn checksum over the digits of `s` (separators ignored), 13-19 digits.
pub fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Shannon entropy in bits per character.
pub fn shannon_entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    let n = f64::from(n);
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

fn plausible_password(v: &str) -> bool {
    let v = v.trim();
    if v.is_empty() {
        return false;
    }
    // References and templates, not values: ${X}, $X, {{ x }}, <your password>, %(x)s, ****.
    if v.starts_with('$') || v.starts_with('{') || v.starts_with('<') || v.starts_with('%') {
        return false;
    }
    if v.chars()
        .all(|c| c == '*' || c == 'x' || c == 'X' || c == '.')
    {
        return false;
    }
    !matches!(
        v.to_ascii_lowercase().as_str(),
        "null" | "none" | "true" | "false" | "required" | "optional" | "string" | "str"
    )
}

fn plausible_email(v: &str) -> bool {
    let Some((local, domain)) = v.rsplit_once('@') else {
        return false;
    };
    if local.eq_ignore_ascii_case("git") {
        return false;
    }
    let lower = domain.to_ascii_lowercase();
    ![".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_patterns_load_and_self_test() {
        let s = Scrubber::builtin().unwrap();
        assert!(s.pattern_ids().count() >= 40);
    }

    #[test]
    fn placeholders_are_stable_and_restorable() {
        let s = Scrubber::builtin().unwrap();
        let mut sess = s.session();
        let a = sess.scrub("mail a@example.com and b@example.org, again a@example.com");
        assert_eq!(a, "mail <EMAIL_1> and <EMAIL_2>, again <EMAIL_1>");
        let b = sess.scrub("reply to b@example.org");
        assert_eq!(b, "reply to <EMAIL_2>");
        let r = sess.into_restorer();
        assert_eq!(
            r.restore("to <EMAIL_2> cc <EMAIL_1> <EMAIL_7>"),
            "to b@example.org cc a@example.com <EMAIL_7>"
        );
        assert!(!format!("{r:?}").contains("example"));
    }

    #[test]
    fn key_body_drops_vendor_prefixes_only() {
        assert_eq!(key_body("sk-ant-api03-XXXX"), "XXXX");
        assert_eq!(key_body("ghp_Ab12Cd34"), "Ab12Cd34");
        assert_eq!(key_body("AKIAXXXXXXXXXXXXXXXX"), "AKIAXXXXXXXXXXXXXXXX");
        assert_eq!(key_body("dGVzdDp0ZXN0=="), "dGVzdDp0ZXN0");
        // A long first segment is part of the key, not a prefix.
        assert_eq!(key_body("123456789012-abc"), "123456789012-abc");
    }

    #[test]
    fn test_card_numbers_are_periodic() {
        assert!(periodic_digits("4242 4242 4242 4242"));
        assert!(periodic_digits("5555555555555555"));
        assert!(!periodic_digits("4111 1111 1111 1111"));
        assert!(!periodic_digits("5500-0000-0000-0004"));
    }

    #[test]
    fn iban_prefix_stops_on_a_group_boundary() {
        let s = Scrubber::builtin().unwrap();
        let v = "DE89 3704 0044 0532 0130 00 BIC";
        assert_eq!(iban_prefix(v, &s.iban_lengths), Some(27));
        assert_eq!(
            iban_prefix("DE89370400440532013000AB", &s.iban_lengths),
            None
        );
        assert_eq!(iban_prefix("ZZ89370400440532013000", &s.iban_lengths), None);
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid("4111 1111 1111 1111"));
        assert!(!luhn_valid("4111 1111 1111 1112"));
    }

    #[test]
    fn broken_pattern_file_is_rejected() {
        let bad = "version = 1\n[[pattern]]\nid = \"x\"\nkind = \"secret\"\nregex = 'abc'\nexamples = [\"xyz\"]\n";
        assert!(matches!(
            Scrubber::from_toml(bad),
            Err(PatternError::SelfTest { .. })
        ));
        let bad = "version = 1\n[[pattern]]\nid = \"x\"\nkind = \"secret\"\nregex = '('\nexamples = [\"xyz\"]\n";
        assert!(matches!(
            Scrubber::from_toml(bad),
            Err(PatternError::Regex { .. })
        ));
    }
}
