//! Unicode normalisation for the injection detector.
//!
//! Attackers hide instructions from regexes with look-alike letters, full-width forms, accents,
//! zero-width joiners and invisible tag characters. This folds all of that into plain lower-case
//! text while remembering, for every byte of the result, where it came from, so a verdict can point
//! at the original span.

use std::ops::Range;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Why a character was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InvisibleKind {
    /// U+E0000..U+E007F: can spell out a whole hidden ASCII message.
    Tag,
    /// U+200B..U+200F, U+2060..U+2064, U+FEFF, U+00AD.
    ZeroWidth,
    /// U+202A..U+202E, U+2066..U+2069: reorder what a reviewer sees.
    Bidi,
    /// U+FE00..U+FE0F, U+E0100..U+E01EF.
    VariationSelector,
}

/// A run of consecutive invisible characters in the original text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InvisibleRun {
    pub kind: InvisibleKind,
    /// Byte range in the original text.
    pub span: Range<usize>,
    pub count: usize,
}

/// The normalised view of a text.
#[derive(Debug, Clone)]
pub struct Normalized {
    /// NFKD, combining marks dropped, homoglyphs folded, lower-cased, invisibles removed.
    pub text: String,
    /// Original byte range for every byte of `text`.
    origin: Vec<(u32, u32)>,
    /// Invisible characters that were removed.
    pub invisible: Vec<InvisibleRun>,
    /// ASCII spelled by Unicode tag characters, per run: (original span, decoded text).
    pub tag_payloads: Vec<(Range<usize>, String)>,
    /// Words that mixed Latin letters with Cyrillic/Greek look-alikes (original spans).
    pub homoglyph_words: Vec<Range<usize>>,
}

impl Normalized {
    /// Map a byte range of `text` back to the original text.
    pub fn original_span(&self, r: &Range<usize>) -> Range<usize> {
        if r.start >= r.end || r.start >= self.origin.len() {
            return 0..0;
        }
        let end = r.end.min(self.origin.len());
        let s = self.origin[r.start].0 as usize;
        let e = self.origin[end - 1].1 as usize;
        s..e.max(s)
    }
}

pub fn invisible_kind(c: char) -> Option<InvisibleKind> {
    match c as u32 {
        0xE0000..=0xE007F => Some(InvisibleKind::Tag),
        0x200B..=0x200F | 0x2060..=0x2064 | 0xFEFF | 0x00AD | 0x180E => {
            Some(InvisibleKind::ZeroWidth)
        }
        0x202A..=0x202E | 0x2066..=0x2069 => Some(InvisibleKind::Bidi),
        0xFE00..=0xFE0F | 0xE0100..=0xE01EF => Some(InvisibleKind::VariationSelector),
        _ => None,
    }
}

/// Cyrillic and Greek letters that render like Latin ones (the common subset of Unicode's
/// confusables.txt that matters for English keywords).
pub fn confusable_latin(c: char) -> Option<char> {
    Some(match c {
        'а' | 'α' => 'a',
        'в' | 'β' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ε' | 'ё' => 'e',
        'ɡ' => 'g',
        'һ' | 'η' => 'h',
        'і' | 'ι' | 'ї' => 'i',
        'ј' | 'ϳ' => 'j',
        'κ' | 'к' => 'k',
        'ӏ' => 'l',
        // Not Greek mu: NFKD turns the micro sign into it, and "50µs" is not an attack.
        'м' => 'm',
        'п' => 'n',
        'о' | 'ο' | 'σ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'г' => 'r',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' | 'ц' => 'u',
        'ν' => 'v',
        'ԝ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        'А' | 'Α' => 'a',
        'В' | 'Β' => 'b',
        'С' => 'c',
        'Е' | 'Ε' => 'e',
        'Н' | 'Η' => 'h',
        'І' | 'Ι' => 'i',
        'Ј' => 'j',
        'К' | 'Κ' => 'k',
        'М' | 'Μ' => 'm',
        'Ν' => 'n',
        'О' | 'Ο' => 'o',
        'Р' | 'Ρ' => 'p',
        'Ѕ' => 's',
        'Т' | 'Τ' => 't',
        'Х' | 'Χ' => 'x',
        'У' | 'Υ' => 'y',
        'Ζ' => 'z',
        _ => return None,
    })
}

struct Piece {
    c: char,
    start: u32,
    end: u32,
}

/// Normalise `input` (see the module docs). Linear in the input length.
pub fn normalize(input: &str) -> Normalized {
    let mut pieces: Vec<Piece> = Vec::with_capacity(input.len());
    let mut invisible: Vec<InvisibleRun> = Vec::new();
    let mut tag_payloads: Vec<(Range<usize>, String)> = Vec::new();
    for (i, c) in input.char_indices() {
        let end = i + c.len_utf8();
        if let Some(kind) = invisible_kind(c) {
            match invisible.last_mut() {
                Some(run) if run.kind == kind && run.span.end == i => {
                    run.span.end = end;
                    run.count += 1;
                }
                _ => invisible.push(InvisibleRun {
                    kind,
                    span: i..end,
                    count: 1,
                }),
            }
            if kind == InvisibleKind::Tag {
                let code = c as u32 - 0xE0000;
                let decoded = char::from_u32(code).filter(|d| d.is_ascii() && !d.is_control());
                match tag_payloads.last_mut() {
                    Some((span, text)) if span.end == i => {
                        span.end = end;
                        text.extend(decoded);
                    }
                    _ => tag_payloads.push((i..end, decoded.into_iter().collect())),
                }
            }
            continue;
        }
        let (s, e) = (to_u32(i), to_u32(end));
        if c.is_ascii() {
            // NFKD is the identity on ASCII; skipping it makes plain text ~10x cheaper.
            pieces.push(Piece {
                c,
                start: s,
                end: e,
            });
            continue;
        }
        for d in std::iter::once(c).nfkd() {
            if is_combining_mark(d) {
                continue;
            }
            pieces.push(Piece {
                c: d,
                start: s,
                end: e,
            });
        }
    }

    // Fold look-alikes only inside words that also contain ASCII letters: "іgnоrе" (Cyrillic і,
    // о, е) becomes "ignore", while genuine Russian or Greek words are left alone.
    let mut homoglyph_words = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        if !pieces[i].c.is_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < pieces.len() && pieces[i].c.is_alphanumeric() {
            i += 1;
        }
        let word = &mut pieces[start..i];
        let has_ascii = word.iter().any(|p| p.c.is_ascii_alphabetic());
        let has_confusable = word.iter().any(|p| confusable_latin(p.c).is_some());
        if has_ascii && has_confusable {
            for p in word.iter_mut() {
                if let Some(l) = confusable_latin(p.c) {
                    p.c = l;
                }
            }
            homoglyph_words.push(word[0].start as usize..word[word.len() - 1].end as usize);
        }
    }

    let mut text = String::with_capacity(pieces.len());
    let mut origin = Vec::with_capacity(pieces.len());
    for p in &pieces {
        if p.c.is_ascii() {
            text.push(p.c.to_ascii_lowercase());
            origin.push((p.start, p.end));
            continue;
        }
        for l in p.c.to_lowercase() {
            text.push(l);
            for _ in 0..l.len_utf8() {
                origin.push((p.start, p.end));
            }
        }
    }
    Normalized {
        text,
        origin,
        invisible,
        tag_payloads,
        homoglyph_words,
    }
}

/// Rewrite `\b` as the ASCII word boundary `(?-u:\b)`. A Unicode `\b` makes the regex crate's
/// fast DFA give up on the first non-ASCII byte, which measured ~10x slower on international
/// text; keywords here are ASCII, so the ASCII boundary means the same for them.
pub fn ascii_word_boundaries(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('b') => out.push_str("(?-u:\\b)"),
            Some(n) => {
                out.push('\\');
                out.push(n);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_boundary_rewrite_skips_escaped_backslashes() {
        assert_eq!(ascii_word_boundaries(r"\bab\\b\s"), r"(?-u:\b)ab\\b\s");
    }

    #[test]
    fn folds_fullwidth_accents_homoglyphs() {
        let n = normalize("Ｉｇｎｏｒｅ ïgnörë іgnоrе Привет");
        assert_eq!(n.text, "ignore ignore ignore привет");
        assert_eq!(n.homoglyph_words.len(), 1);
    }

    #[test]
    fn strips_and_reports_invisibles_and_decodes_tags() {
        let hidden: String = "hi"
            .chars()
            .map(|c| char::from_u32(0xE0000 + c as u32).unwrap())
            .collect();
        let input = format!("ig\u{200B}nore{hidden}\u{202E}x");
        let n = normalize(&input);
        assert_eq!(n.text, "ignorex");
        assert_eq!(n.invisible.len(), 3);
        assert_eq!(n.tag_payloads[0].1, "hi");
        let span = n.original_span(&(0..6));
        assert_eq!(&input[span], "ig\u{200B}nore");
    }
}
