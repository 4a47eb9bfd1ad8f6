//! The lexical injection model: a linear classifier over hashed word and character n-grams of the
//! normalised text, trained on openly licensed injection datasets and the project's own labelled
//! prompts (`scripts/train_injection_model.py lexical`; sources and figures in docs/llm.md).
//!
//! It is in every build: a few hundred kilobytes of weights compiled in, microseconds per
//! sentence. Alone it is the `lexical` detector layer of the rules-only build; with feature `ml`
//! it is the first stage of the semantic cascade, where a unit it scores clearly benign is not
//! given to the transformer at all.
//!
//! Features (the trainer computes exactly the same ones): the text is lower-cased and its white
//! space collapsed to single spaces; keys are `w\0WORD` for every word (`[\p{L}\p{N}_]+`),
//! `b\0WORD WORD` for every pair of adjacent words and `c\0GRAM` for every run of 3, 4 and 5
//! characters of the text with one space added at each end. Each key is hashed with 64-bit
//! FNV-1a and its top `bits` bits pick a bucket; a bucket's value is the sum over its keys of
//! `1 + ln(count)`, and the vector is scaled to unit length. The score is the logit
//! `w · x + bias`.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::detect::{DetectorLayer, Finding, escape_invisible, excerpt};
use crate::normalize::Normalized;
use crate::units::{hidden_texts, learned_score, prefix, scan_units, truncation_finding};

/// Where the shipped weights live in the repository (named in errors).
pub const LEXICAL_FILE: &str = "llm/data/injection-lexical.json";
const LEXICAL_JSON: &str = include_str!("../data/injection-lexical.json");

/// The lexical layer scores at most this much of a normalised text (every unit is scored, and
/// sentences plus pairs are about three times the text); past it a `lexical-truncated` finding
/// with score 0 says so.
pub const MAX_SCAN_BYTES: usize = 256 * 1024;

/// A shipped model file that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct LexicalError {
    pub file: &'static str,
    pub message: String,
}

/// The file as written by the trainer and the calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LexicalFile {
    pub format: u32,
    /// Bucket count is `2^bits`.
    pub bits: u32,
    /// Dequantisation factor of the weights: weight = q × scale.
    pub scale: f32,
    pub bias: f32,
    /// Logit at or above which the `lexical` layer reports a finding (rules-only build).
    pub threshold: f32,
    /// Logit below which the semantic cascade does not ask the transformer (feature `ml`).
    pub dismiss_below: f32,
    /// How the weights and thresholds were made (free text for reviewers).
    pub tuning: String,
    /// Base64 of the i8 weights, one per bucket.
    pub weights: String,
}

/// The loaded model.
#[derive(Debug, Clone)]
pub struct LexicalModel {
    bits: u32,
    weights: Vec<f32>,
    bias: f32,
    threshold: f32,
    dismiss_below: f32,
}

fn word_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // A constant pattern: it compiles, or every test of this module fails.
        #[allow(clippy::expect_used)]
        Regex::new(r"[\p{L}\p{N}_]+").expect("constant pattern")
    })
}

/// 64-bit FNV-1a over the key's prefix and text.
fn fnv1a(prefix: &[u8], text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in prefix.iter().chain(text.as_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl LexicalModel {
    /// The compiled-in weights. The file is checked by the crate's tests, so this fails only on
    /// a hand-edited build.
    pub fn builtin() -> Result<Self, LexicalError> {
        static CELL: OnceLock<Result<LexicalModel, LexicalError>> = OnceLock::new();
        CELL.get_or_init(|| Self::parse(LEXICAL_JSON)).clone()
    }

    pub fn parse(json: &str) -> Result<Self, LexicalError> {
        let err = |message: String| LexicalError {
            file: LEXICAL_FILE,
            message,
        };
        let f: LexicalFile = serde_json::from_str(json).map_err(|e| err(e.to_string()))?;
        if f.format != 1 || !(10..=24).contains(&f.bits) {
            return Err(err(format!(
                "format {} with {} bits (expected format 1, 10..=24 bits)",
                f.format, f.bits
            )));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&f.weights)
            .map_err(|e| err(format!("weights: {e}")))?;
        if bytes.len() != 1usize << f.bits {
            return Err(err(format!(
                "{} weights for {} bits (expected {})",
                bytes.len(),
                f.bits,
                1usize << f.bits
            )));
        }
        Ok(Self {
            bits: f.bits,
            weights: bytes
                .into_iter()
                .map(|b| f32::from(b as i8) * f.scale)
                .collect(),
            bias: f.bias,
            threshold: f.threshold,
            dismiss_below: f.dismiss_below,
        })
    }

    /// The flagging threshold of the lexical layer (a logit).
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// The cascade's dismissal bound (a logit).
    pub fn dismiss_below(&self) -> f32 {
        self.dismiss_below
    }

    /// The logit of `text` (normalised text: what the trainer saw).
    pub fn logit(&self, text: &str) -> f32 {
        let lower = text.to_lowercase();
        let collapsed = lower.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut counts: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
        let mut add = |prefix: &[u8], key: &str| {
            *counts.entry(fnv1a(prefix, key)).or_insert(0) += 1;
        };
        let words: Vec<&str> = word_regex()
            .find_iter(&collapsed)
            .map(|m| m.as_str())
            .collect();
        for w in &words {
            add(b"w\0", w);
        }
        let mut pair = String::new();
        for w in words.windows(2) {
            pair.clear();
            pair.push_str(w[0]);
            pair.push(' ');
            pair.push_str(w[1]);
            add(b"b\0", &pair);
        }
        let padded = format!(" {collapsed} ");
        let starts: Vec<usize> = padded
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(padded.len()))
            .collect();
        for n in 3..=5 {
            for i in 0..starts.len().saturating_sub(n) {
                add(b"c\0", &padded[starts[i]..starts[i + n]]);
            }
        }
        // Distinct keys that share a bucket add up, as in the trainer.
        let shift = 64 - self.bits;
        let mut buckets: std::collections::HashMap<usize, f32> = std::collections::HashMap::new();
        for (hash, count) in counts {
            *buckets.entry((hash >> shift) as usize).or_insert(0.0) += 1.0 + (count as f32).ln();
        }
        let norm = buckets.values().map(|v| v * v).sum::<f32>().sqrt();
        if norm == 0.0 {
            return self.bias;
        }
        let dot: f32 = buckets
            .iter()
            .map(|(&i, v)| self.weights.get(i).copied().unwrap_or(0.0) * v)
            .sum();
        dot / norm + self.bias
    }

    /// Every scan unit of a normalised text with its logit.
    pub fn units(&self, text: &str) -> Vec<(Range<usize>, f32)> {
        scan_units(text)
            .into_iter()
            .map(|r| {
                let logit = self.logit(&text[r.clone()]);
                (r, logit)
            })
            .collect()
    }
}

/// `P = sigmoid(logit)`.
pub fn probability(logit: f32) -> f32 {
    1.0 / (1.0 + (-logit).exp())
}

/// The `lexical` [`DetectorLayer`]: one finding per unit at or above the threshold.
#[derive(Debug, Clone)]
pub struct LexicalLayer {
    model: LexicalModel,
    max_bytes: usize,
}

impl LexicalLayer {
    pub fn builtin() -> Result<Arc<Self>, LexicalError> {
        Ok(Arc::new(Self {
            model: LexicalModel::builtin()?,
            max_bytes: MAX_SCAN_BYTES,
        }))
    }

    pub fn model(&self) -> &LexicalModel {
        &self.model
    }
}

/// A unit's logit at or above `threshold` as a finding score ([`learned_score`]: full strength
/// four logits above it).
pub(crate) fn logit_score(logit: f32, threshold: f32) -> f32 {
    learned_score((logit - threshold) / 4.0)
}

impl DetectorLayer for LexicalLayer {
    fn name(&self) -> &str {
        "lexical"
    }

    fn scan(&self, original: &str, input: &Normalized) -> Vec<Finding> {
        let text = prefix(&input.text, self.max_bytes);
        let mut out = Vec::new();
        out.extend(truncation_finding("lexical", original, input, text.len()));
        let threshold = self.model.threshold;
        let mut scored = self.model.units(text);
        for (_, hidden) in hidden_texts(input) {
            let logit = self.model.logit(&hidden);
            if logit >= threshold {
                scored.push((0..text.len(), logit));
            }
        }
        // The best unit speaks for the text; overlapping weaker units add nothing a reader needs.
        if let Some((span, logit)) = scored
            .into_iter()
            .filter(|(_, l)| *l >= threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1))
        {
            let span = input.original_span(&span);
            out.push(Finding {
                layer: "lexical".into(),
                pattern_id: "lexical-classifier".into(),
                matched: escape_invisible(&excerpt(original.get(span.clone()).unwrap_or(""), 200)),
                span,
                score: logit_score(logit, threshold),
                detail: Some(format!(
                    "n-gram model p={:.3} >= {:.3}",
                    probability(logit),
                    probability(threshold)
                )),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        // FNV-1a 64 of "" and "a" (the published test vectors).
        assert_eq!(fnv1a(b"", ""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"", "a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"a", ""), fnv1a(b"", "a"));
    }

    #[test]
    fn shipped_weights_load() {
        let m = LexicalModel::builtin().unwrap();
        assert!(m.dismiss_below <= m.threshold);
        assert!(m.logit("").is_finite());
    }

    #[test]
    fn score_is_half_at_the_threshold() {
        assert_eq!(logit_score(1.0, 1.0), 0.5);
        assert_eq!(logit_score(9.0, 1.0), crate::units::LEARNED_MAX_SCORE);
    }
}
