//! Choose the injection thresholds on the VALIDATION split, through the detector as it runs, and
//! write them into the shipped data files:
//!
//! - `data/injection-lexical.json` `threshold`: the lexical layer of the default build flags at
//!   most 1 % of the validation benign texts together with the unicode and regex layers;
//!   `dismiss_below`: the n-gram logit under which at most 0.2 % of the validation attacks lie
//!   (the cascade does not ask the transformer below it);
//! - `data/injection-classifier.json` (with `--features ml`): the transformer's probability
//!   threshold for at most 1 % validation false positives together with the rule layers, and the
//!   SHA-256 of the model it was chosen for.
//!
//! `cargo run -p secureclaw-llm --release --example calibrate-injection [--features ml]`
//! (the ml part needs scripts/setup-models.sh). The test split is never read here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/labelled/mod.rs"]
mod labelled;

use secureclaw_llm::lexical::{LexicalFile, LexicalModel};
use secureclaw_llm::units::hidden_texts;
use secureclaw_llm::{Detector, normalize};

/// The false-positive budget of the whole detector on validation.
const MAX_FPR: f64 = 0.01;
/// The share of validation attacks the cascade may leave to the n-gram model alone.
const MAX_DISMISSED_ATTACKS: f64 = 0.002;

fn lexical_max(model: &LexicalModel, text: &str) -> f32 {
    let n = normalize(text);
    let mut best = f32::NEG_INFINITY;
    for (_, l) in model.units(&n.text) {
        best = best.max(l);
    }
    for (_, hidden) in hidden_texts(&n) {
        for (_, l) in model.units(&hidden) {
            best = best.max(l);
        }
    }
    best
}

fn main() {
    let root = env!("CARGO_MANIFEST_DIR");
    let val = labelled::split("val");
    let rules = Detector::rules().unwrap();
    let flagged_by_rules: Vec<bool> = val.iter().map(|r| rules.scan(&r.text).flagged).collect();
    let model = LexicalModel::builtin().unwrap();
    let lex: Vec<f32> = val.iter().map(|r| lexical_max(&model, &r.text)).collect();

    let benign_rest: Vec<f32> = val
        .iter()
        .zip(&lex)
        .zip(&flagged_by_rules)
        .filter(|((r, _), f)| !r.attack && !**f)
        .map(|((_, l), _)| *l)
        .collect();
    let rules_fp = val
        .iter()
        .zip(&flagged_by_rules)
        .filter(|(r, f)| !r.attack && **f)
        .count();
    let threshold = labelled::threshold_with_others(&benign_rest, rules_fp, MAX_FPR);
    let mut attack_scores: Vec<f32> = val
        .iter()
        .zip(&lex)
        .filter(|(r, _)| r.attack)
        .map(|(_, l)| *l)
        .collect();
    attack_scores.sort_by(f32::total_cmp);
    let k = (MAX_DISMISSED_ATTACKS * attack_scores.len() as f64).floor() as usize;
    let dismiss_below = attack_scores.get(k).copied().unwrap_or(0.0) - 1e-4;
    let benign_n = val.iter().filter(|r| !r.attack).count();
    let dismissed = benign_rest.iter().filter(|&&l| l < dismiss_below).count();
    println!(
        "validation: {} rows ({} benign); rules flag {rules_fp} benign",
        val.len(),
        benign_n
    );
    println!(
        "lexical threshold {threshold:.4} (logit), dismiss below {dismiss_below:.4}: {dismissed} of {} benign texts never reach the transformer",
        benign_rest.len()
    );

    let path = format!("{root}/data/injection-lexical.json");
    let mut file: LexicalFile =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    file.threshold = threshold;
    file.dismiss_below = dismiss_below;
    let base = file
        .tuning
        .split("; thresholds:")
        .next()
        .unwrap_or_default()
        .to_owned();
    file.tuning = format!(
        "{base}; thresholds: chosen by examples/calibrate-injection.rs on the validation split \
         ({} rows): `threshold` flags <= {:.0} % of its benign texts together with the unicode \
         and regex layers, `dismiss_below` leaves <= {:.1} % of its attacks to this model alone",
        val.len(),
        MAX_FPR * 100.0,
        MAX_DISMISSED_ATTACKS * 100.0
    );
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap() + "\n").unwrap();
    println!("wrote {path}");

    #[cfg(feature = "ml")]
    calibrate_classifier(root, &val, &flagged_by_rules, dismiss_below);
}

#[cfg(feature = "ml")]
fn calibrate_classifier(root: &str, val: &[labelled::Row], rules: &[bool], dismiss_below: f32) {
    use secureclaw_llm::cascade::CascadeLayer;

    let cascade = CascadeLayer::builtin().unwrap();
    let mut probs = Vec::with_capacity(val.len());
    for r in val {
        let n = normalize(&r.text);
        let mut best = 0f32;
        for u in cascade.unit_scores(&n.text, dismiss_below).unwrap() {
            best = best.max(u.model.unwrap_or(0.0));
        }
        for (_, hidden) in hidden_texts(&n) {
            for u in cascade.unit_scores(&hidden, dismiss_below).unwrap() {
                best = best.max(u.model.unwrap_or(0.0));
            }
        }
        probs.push(best);
    }
    let benign_rest: Vec<f32> = val
        .iter()
        .zip(&probs)
        .zip(rules)
        .filter(|((r, _), f)| !r.attack && !**f)
        .map(|((_, p), _)| *p)
        .collect();
    let rules_fp = val
        .iter()
        .zip(rules)
        .filter(|(r, f)| !r.attack && **f)
        .count();
    let threshold = labelled::threshold_with_others(&benign_rest, rules_fp, MAX_FPR).max(0.5);
    let recall = val
        .iter()
        .zip(&probs)
        .zip(rules)
        .filter(|((r, _), _)| r.attack)
        .filter(|((_, p), f)| **f || **p >= threshold)
        .count() as f64
        / val.iter().filter(|r| r.attack).count() as f64;
    println!("classifier threshold {threshold:.4}: validation recall {recall:.4} with the rules");

    let model_path = format!("{root}/models/injection-classifier.onnx");
    let sha = sha256_hex(&std::fs::read(&model_path).unwrap());
    let meta_path = format!("{root}/data/injection-classifier.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["model_sha256"] = sha.into();
    meta["threshold"] = threshold.into();
    std::fs::write(
        &meta_path,
        serde_json::to_string_pretty(&meta).unwrap() + "\n",
    )
    .unwrap();
    println!("wrote {meta_path}");
}

#[cfg(feature = "ml")]
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
