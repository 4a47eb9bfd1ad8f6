//! How the cascade's pair bound ([`secureclaw_llm::cascade::PAIR_BOUND`]) was chosen: on the
//! VALIDATION split, at the shipped thresholds, the recall and false-positive rate of the rules
//! plus the cascade, and the bytes of text the transformer reads, for a range of bounds (0 reads
//! every pair of adjacent sentences the n-gram model does not dismiss; above 1 reads none).
//!
//! `cargo run -p secureclaw-llm --release --features ml --example pair-bound` (needs
//! scripts/setup-models.sh). The test split is never read here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/labelled/mod.rs"]
mod labelled;

use secureclaw_llm::cascade::CascadeLayer;
use secureclaw_llm::lexical::LexicalModel;
use secureclaw_llm::units::hidden_texts;
use secureclaw_llm::{Detector, normalize};

const BOUNDS: &[f32] = &[0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.01];

fn main() {
    let val = labelled::split("val");
    let rules = Detector::rules().unwrap();
    let by_rules: Vec<bool> = val.iter().map(|r| rules.scan(&r.text).flagged).collect();
    let cascade = CascadeLayer::builtin().unwrap();
    let dismiss = LexicalModel::builtin().unwrap().dismiss_below();
    let threshold = cascade.threshold();
    let attacks = val.iter().filter(|r| r.attack).count() as f64;
    let benign = val.len() as f64 - attacks;
    println!(
        "validation: {} rows, threshold {threshold:.4}, dismiss below {dismiss:.3}",
        val.len()
    );
    println!("| pair bound | recall | false positives | bytes read by the transformer |");
    println!("|---|---|---|---|");
    for &bound in BOUNDS {
        let (mut tp, mut fp, mut bytes) = (0usize, 0usize, 0usize);
        for (r, &rule) in val.iter().zip(&by_rules) {
            let n = normalize(&r.text);
            let mut texts = vec![n.text.clone()];
            texts.extend(hidden_texts(&n).into_iter().map(|(_, t)| t));
            let mut best = 0f32;
            for t in &texts {
                for u in cascade.unit_scores_with(t, dismiss, bound).unwrap() {
                    if let Some(p) = u.model {
                        best = best.max(p);
                        bytes += u.span.len();
                    }
                }
            }
            let flagged = rule || best >= threshold;
            match (r.attack, flagged) {
                (true, true) => tp += 1,
                (false, true) => fp += 1,
                _ => {}
            }
        }
        println!(
            "| {bound} | {:.4} | {:.2} % | {bytes} |",
            tp as f64 / attacks,
            100.0 * fp as f64 / benign
        );
    }
}
