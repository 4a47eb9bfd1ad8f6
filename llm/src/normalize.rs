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
    /// Text hidden in other encodings (variation-selector bytes, zero-width bits, base64, hex,
    /// percent-encoding), decoded so the pattern layers can read it. Tag characters stay in
    /// `tag_payloads`.
    pub decoded: Vec<Decoded>,
}

/// How a hidden payload was encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// One byte per variation selector: U+FE00..FE0F are 0..15, U+E0100..E01EF are 16..255.
    VariationSelectors,
    /// One bit per zero-width character, two distinct characters alternating, 8 bits a byte.
    ZeroWidthBits,
    /// Standard or URL-safe base64, also when it starts in the middle of a word.
    Base64,
    /// At least eight hex byte pairs, optionally separated by spaces, colons or commas.
    Hex,
    /// Percent-encoded bytes (`%69%67...`).
    Percent,
    /// Text after a right-to-left override (U+202E), in the order a reader sees it.
    BidiReversed,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::VariationSelectors => "variation selectors",
            Encoding::ZeroWidthBits => "zero-width bits",
            Encoding::Base64 => "base64",
            Encoding::Hex => "hex",
            Encoding::Percent => "percent-encoding",
            Encoding::BidiReversed => "right-to-left override",
        }
    }
}

/// Readable text decoded from an encoded part of the input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decoded {
    pub encoding: Encoding,
    /// Byte range of the encoded run in the original text.
    pub span: Range<usize>,
    pub text: String,
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
    let mut decoded = decode_invisible(input, &invisible);
    decode_visible(input, &mut decoded);
    Normalized {
        text,
        origin,
        invisible,
        tag_payloads,
        homoglyph_words,
        decoded,
    }
}

/// Shortest decoded text worth scanning: shorter fragments turn up by chance in random bytes.
const MIN_DECODED_CHARS: usize = 8;
/// Shortest base64 run tried (12 bytes once decoded).
const MIN_BASE64_RUN: usize = 16;
/// Fewest hex digits tried (8 bytes once decoded).
const MIN_HEX_DIGITS: usize = 16;
/// Fewest zero-width characters read as bits (one byte).
const MIN_ZERO_WIDTH_BITS: usize = 8;

/// `bytes` as text when they read as text: valid UTF-8 that is mostly printable with some
/// letters, or failing that the printable ASCII stretches of at least [`MIN_DECODED_CHARS`].
fn text_like(bytes: &[u8]) -> Option<String> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        let n = s.chars().count();
        let printable = s
            .chars()
            .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
            .count();
        let letters = s.chars().filter(|c| c.is_alphabetic()).count();
        if n >= MIN_DECODED_CHARS / 2 && printable * 10 >= n * 9 && letters * 2 >= n {
            return Some(s.to_owned());
        }
    }
    let mut out = String::new();
    for run in bytes.split(|b| !(b.is_ascii_graphic() || *b == b' ')) {
        let letters = run.iter().filter(|b| b.is_ascii_alphabetic()).count();
        if run.len() >= MIN_DECODED_CHARS && letters * 2 >= run.len() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.extend(run.iter().map(|&b| b as char));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Payloads spelled by variation-selector runs and zero-width bit runs.
fn decode_invisible(input: &str, runs: &[InvisibleRun]) -> Vec<Decoded> {
    let mut out = Vec::new();
    for run in runs {
        let Some(chars) = input.get(run.span.clone()) else {
            continue;
        };
        match run.kind {
            InvisibleKind::VariationSelector if run.count >= 2 => {
                let bytes: Vec<u8> = chars
                    .chars()
                    .filter_map(|c| match c as u32 {
                        v @ 0xFE00..=0xFE0F => u8::try_from(v - 0xFE00).ok(),
                        v @ 0xE0100..=0xE01EF => u8::try_from(v - 0xE0100 + 16).ok(),
                        _ => None,
                    })
                    .collect();
                if let Some(text) = text_like(&bytes) {
                    out.push(Decoded {
                        encoding: Encoding::VariationSelectors,
                        span: run.span.clone(),
                        text,
                    });
                }
            }
            InvisibleKind::ZeroWidth if run.count >= MIN_ZERO_WIDTH_BITS => {
                let mut symbols: Vec<char> = chars.chars().collect();
                symbols.sort_unstable();
                symbols.dedup();
                if symbols.len() != 2 {
                    continue;
                }
                for one in [symbols[1], symbols[0]] {
                    let bits: Vec<u8> = chars.chars().map(|c| u8::from(c == one)).collect();
                    let bytes: Vec<u8> = bits
                        .chunks_exact(8)
                        .map(|b| b.iter().fold(0u8, |acc, bit| (acc << 1) | bit))
                        .collect();
                    if let Some(text) = text_like(&bytes) {
                        out.push(Decoded {
                            encoding: Encoding::ZeroWidthBits,
                            span: run.span.clone(),
                            text,
                        });
                        break;
                    }
                }
            }
            InvisibleKind::Bidi if chars.contains('\u{202E}') => {
                let rest = input.get(run.span.end..).unwrap_or_default();
                let governed = rest.split(['\n', '\u{202C}']).next().unwrap_or_default();
                if governed.chars().any(|c| c.is_ascii_alphabetic()) {
                    out.push(Decoded {
                        encoding: Encoding::BidiReversed,
                        span: run.span.start..run.span.end + governed.len(),
                        text: governed.chars().rev().collect(),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

fn base64_value(b: u8) -> Option<u8> {
    Some(match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'+' | b'-' => 62,
        b'/' | b'_' => 63,
        _ => return None,
    })
}

/// Decode base64 digits (no padding), four at a time; a trailing group of 2 or 3 gives 1 or 2
/// bytes.
fn base64_decode(digits: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let v: Vec<u32> = chunk
            .iter()
            .filter_map(|&b| base64_value(b).map(u32::from))
            .collect();
        if v.len() < 2 {
            break;
        }
        let n = v
            .iter()
            .chain(std::iter::repeat(&0))
            .take(4)
            .fold(0u32, |acc, x| (acc << 6) | x);
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..v.len()]);
    }
    out
}

/// Base64, hex and percent-encoded runs of the visible text that decode to readable text.
fn decode_visible(input: &str, out: &mut Vec<Decoded>) {
    let b = input.as_bytes();
    // Base64. A payload glued to the end of an ordinary word ("config=xyzSWdub3Jl...") starts at
    // an unknown offset, so each of the four alignments is tried and the longest text wins.
    let mut i = 0;
    while i < b.len() {
        if base64_value(b[i]).is_none() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && base64_value(b[i]).is_some() {
            i += 1;
        }
        let run = &b[start..i];
        if run.len() < MIN_BASE64_RUN || !run.iter().any(u8::is_ascii_digit) && !mixed_case(run) {
            continue;
        }
        let best = (0..4)
            .filter_map(|off| text_like(&base64_decode(&run[off..])))
            .max_by_key(String::len);
        if let Some(text) = best {
            out.push(Decoded {
                encoding: Encoding::Base64,
                span: start..i,
                text,
            });
        }
    }
    // Hex byte pairs, optionally separated by single spaces, colons or commas.
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_hexdigit() || (i > 0 && b[i - 1].is_ascii_alphanumeric()) {
            i += 1;
            continue;
        }
        let start = i;
        let mut digits = Vec::new();
        let mut end = i;
        let mut j = i;
        loop {
            let run_start = j;
            while j < b.len() && b[j].is_ascii_hexdigit() {
                j += 1;
            }
            if (j - run_start) % 2 == 1 || j == run_start {
                break;
            }
            digits.extend_from_slice(&b[run_start..j]);
            end = j;
            if j + 1 < b.len() && matches!(b[j], b' ' | b':' | b',') && b[j + 1].is_ascii_hexdigit()
            {
                j += 1;
            } else {
                break;
            }
        }
        let ends_word = end >= b.len() || !b[end].is_ascii_alphanumeric();
        if digits.len() >= MIN_HEX_DIGITS && ends_word {
            let bytes: Vec<u8> = digits
                .chunks_exact(2)
                .filter_map(|p| {
                    std::str::from_utf8(p)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect();
            if let Some(text) = text_like(&bytes) {
                out.push(Decoded {
                    encoding: Encoding::Hex,
                    span: start..end,
                    text,
                });
            }
        }
        i = end.max(start + 1);
    }
    // Percent-encoding: each whitespace-free token with a few escapes, decoded on its own.
    let is_escape = |k: usize| {
        b[k] == b'%'
            && b.get(k + 1..k + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    };
    let mut start = 0;
    while start < b.len() {
        let end = b[start..]
            .iter()
            .position(u8::is_ascii_whitespace)
            .map_or(b.len(), |p| start + p);
        let token = start..end;
        start = end + 1;
        if token.clone().filter(|&k| is_escape(k)).count() < 3 {
            continue;
        }
        let mut bytes = Vec::with_capacity(token.len());
        let mut k = token.start;
        while k < token.end {
            let hex = b
                .get(k + 1..k + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (b[k], hex) {
                (b'%', Some(v)) if k + 3 <= token.end => {
                    bytes.push(v);
                    k += 3;
                }
                (c, _) => {
                    bytes.push(c);
                    k += 1;
                }
            }
        }
        out.push(Decoded {
            encoding: Encoding::Percent,
            span: token,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
}

fn mixed_case(run: &[u8]) -> bool {
    run.iter().any(u8::is_ascii_uppercase) && run.iter().any(u8::is_ascii_lowercase)
}

/// Leetspeak folded back to letters (`1gn0r3 4ll` -> `ignore all`) in words that mix letters
/// with digits, `$` or `!` (not `@`: every e-mail address would qualify); `None` when no word
/// does. Every substitution is one ASCII byte for
/// one ASCII byte, so byte offsets (and [`Normalized::original_span`]) stay valid.
pub fn fold_leet(text: &str) -> Option<String> {
    let leet = |c: u8| -> Option<u8> {
        Some(match c {
            b'0' => b'o',
            b'1' | b'!' => b'i',
            b'3' => b'e',
            b'4' => b'a',
            b'5' | b'$' => b's',
            b'7' => b't',
            b'9' => b'g',
            _ => return None,
        })
    };
    let bytes = text.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let is_word = |c: u8| c.is_ascii_alphanumeric() || leet(c).is_some();
        if !is_word(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_word(bytes[i]) {
            i += 1;
        }
        // A trailing `!` is punctuation, not a letter.
        let mut end = i;
        while end > start && bytes[end - 1] == b'!' {
            end -= 1;
        }
        let word = &bytes[start..end];
        let letters = word.iter().filter(|c| c.is_ascii_alphabetic()).count();
        let subs = word.iter().filter(|c| leet(**c).is_some()).count();
        if letters == 0 || subs == 0 {
            continue;
        }
        let buf = out.get_or_insert_with(|| bytes.to_vec());
        for k in start..end {
            if let Some(l) = leet(bytes[k]) {
                buf[k] = l;
            }
        }
    }
    out.and_then(|v| String::from_utf8(v).ok())
}

/// Fold the non-ASCII literals of a pattern the way [`normalize`] folds text (NFKD, combining
/// marks dropped, lower case), so patterns can be written in natural spelling ("すべて",
/// "이전") and still meet the normalised text. ASCII, and so all regex syntax, is unchanged.
pub fn fold_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if c.is_ascii() {
            out.push(c);
            continue;
        }
        for d in std::iter::once(c).nfkd() {
            if !is_combining_mark(d) {
                out.extend(d.to_lowercase());
            }
        }
    }
    out
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
