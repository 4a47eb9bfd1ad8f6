//! Choose the injection thresholds on the VALIDATION split, through the detector as it runs, and
//! write them into the shipped data files:
//!
//! - `data/injection-lexical.json` `threshold`: the lexical layer of the default build flags at
//!   most 1 % of the validation benign texts together with the unicode and regex layers;
//!   `dismiss_below`: the n-gram logit under which at most 0.2 % of the validation attacks lie
//!   (the cascade does not ask the transformer below it);
//! - `data/injection-student.json` (with `--features ml`): the student's dismissal bound: of the
//!   validation attacks only the full model catches, at most 0.2 % are caught by units the
//!   student scores below it;
//! - `data/injection-classifier.json` (with `--features ml`): the full model's probability
//!   threshold, with the student in front of it, for at most 1 % validation false positives
//!   together with the rule layers; and `threshold_at_two_percent`, the same for 2 %, which the
//!   test-split evaluation reports beside it.
//!
//! Each file records the SHA-256 of the model it was chosen for.
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
/// A second operating point of the full model, reported beside the shipped one.
#[cfg(feature = "ml")]
const SECOND_FPR: f64 = 0.02;
/// The share of validation attacks the cascade may leave to the n-gram model alone, and the share
/// of those only the full model catches that the student may dismiss.
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

/// The score under which at most [`MAX_DISMISSED_ATTACKS`] of `attack_scores` lie.
fn dismissal_bound(mut attack_scores: Vec<f32>) -> f32 {
    attack_scores.sort_by(f32::total_cmp);
    let k = (MAX_DISMISSED_ATTACKS * attack_scores.len() as f64).floor() as usize;
    attack_scores.get(k).copied().unwrap_or(0.0) - 1e-4
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
    let attack_scores: Vec<f32> = val
        .iter()
        .zip(&lex)
        .filter(|(r, _)| r.attack)
        .map(|(_, l)| *l)
        .collect();
    let dismiss_below = dismissal_bound(attack_scores);
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

/// The student's and the full model's probabilities of every unit of `text` as `cascade` reads
/// it (0 for a unit a stage did not read).
#[cfg(feature = "ml")]
fn unit_probabilities(
    cascade: &secureclaw_llm::cascade::CascadeLayer,
    text: &str,
    dismiss_below: f32,
) -> Vec<(f32, f32)> {
    cascade
        .text_scores(text, dismiss_below)
        .unwrap()
        .iter()
        .map(|u| (u.student.unwrap_or(0.0), u.model.unwrap_or(0.0)))
        .collect()
}

/// The full model's threshold for at most `max_fpr` validation false positives together with
/// the rules, given each text's highest full-model probability; and the recall it gives.
#[cfg(feature = "ml")]
fn full_threshold(val: &[labelled::Row], full: &[f32], rules: &[bool], max_fpr: f64) -> (f32, f64) {
    let benign_rest: Vec<f32> = val
        .iter()
        .zip(full)
        .zip(rules)
        .filter(|((r, _), f)| !r.attack && !**f)
        .map(|((_, p), _)| *p)
        .collect();
    let rules_fp = val
        .iter()
        .zip(rules)
        .filter(|(r, f)| !r.attack && **f)
        .count();
    let threshold = labelled::threshold_with_others(&benign_rest, rules_fp, max_fpr).max(0.5);
    let recall = val
        .iter()
        .zip(full)
        .zip(rules)
        .filter(|((r, _), _)| r.attack)
        .filter(|((_, p), f)| **f || **p >= threshold)
        .count() as f64
        / val.iter().filter(|r| r.attack).count() as f64;
    (threshold, recall)
}

#[cfg(feature = "ml")]
fn calibrate_classifier(root: &str, val: &[labelled::Row], rules: &[bool], dismiss_below: f32) {
    use secureclaw_llm::cascade::CascadeLayer;
    use secureclaw_llm::classifier::ClassifierKind;

    let max_full = |units: &[(f32, f32)]| units.iter().map(|u| u.1).fold(0f32, f32::max);
    // Every unit the n-gram model passes on read by both models: which attacks the full model
    // catches on its own, and how the student scored the units that caught them.
    let every = CascadeLayer::uncalibrated()
        .unwrap()
        .with_student_bound(0.0);
    let units: Vec<Vec<(f32, f32)>> = val
        .iter()
        .map(|r| unit_probabilities(&every, &r.text, dismiss_below))
        .collect();
    let full: Vec<f32> = units.iter().map(|u| max_full(u)).collect();
    let (alone, alone_recall) = full_threshold(val, &full, rules, MAX_FPR);
    // The student's bound: it may lose at most MAX_DISMISSED_ATTACKS of the attacks only the full
    // model catches (an attack the rules flag, or that the full model misses anyway, does not
    // depend on it).
    let caught: Vec<f32> = val
        .iter()
        .zip(&units)
        .zip(rules)
        .filter(|((r, _), rule)| r.attack && !**rule)
        .filter_map(|((_, u), _)| {
            u.iter()
                .filter(|(_, f)| *f >= alone)
                .map(|(s, _)| *s)
                .reduce(f32::max)
        })
        .collect();
    let student_bound = dismissal_bound(caught);
    write_meta(
        root,
        ClassifierKind::Student,
        student_bound,
        None,
        &format!(
            "the first 2 layers of all-MiniLM-L6-v2 fine-tuned with a mean-pooled linear head by \
             scripts/train_injection_model.py on the train split; int8 dynamic quantisation; \
             threshold = dismissal bound, chosen by examples/calibrate-injection.rs on the \
             validation split: of its attacks that only the full model catches, <= {:.1} % are \
             caught by units the student scores below it",
            MAX_DISMISSED_ATTACKS * 100.0
        ),
    );
    println!(
        "full model alone: threshold {alone:.4}, validation recall {alone_recall:.4}; student \
         dismisses below {student_bound:.4}"
    );

    let cascade = every.with_student_bound(student_bound);
    let full: Vec<f32> = val
        .iter()
        .map(|r| max_full(&unit_probabilities(&cascade, &r.text, dismiss_below)))
        .collect();
    let (threshold, recall) = full_threshold(val, &full, rules, MAX_FPR);
    println!("classifier threshold {threshold:.4}: validation recall {recall:.4} with the rules");
    let (second, second_recall) = full_threshold(val, &full, rules, SECOND_FPR);
    println!(
        "at {:.0} % validation false positives: threshold {second:.4}, recall {second_recall:.4}",
        SECOND_FPR * 100.0
    );

    write_meta(
        root,
        ClassifierKind::Full,
        threshold,
        Some(second),
        "all-MiniLM-L6-v2 (6 layers) fine-tuned with a mean-pooled linear head by \
         scripts/train_injection_model.py on the train split; int8 dynamic quantisation; \
         threshold chosen by examples/calibrate-injection.rs on the validation split, with the \
         student in front: <= 1 % of its benign texts flagged together with the unicode and \
         regex layers (`threshold_at_two_percent`: the same for 2 %, reported, not used)",
    );
}

/// Record `threshold` and the SHA-256 of the model it was chosen for in the calibration file of
/// `kind`.
#[cfg(feature = "ml")]
fn write_meta(
    root: &str,
    kind: secureclaw_llm::classifier::ClassifierKind,
    threshold: f32,
    threshold_at_two_percent: Option<f32>,
    tuning: &str,
) {
    // `root` is the crate's directory; the file names are the repository's.
    let meta_path = std::path::Path::new(root)
        .parent()
        .unwrap()
        .join(kind.meta_file());
    let mut meta = serde_json::json!({
        "format": 1,
        "model_sha256": kind.model_sha256(),
        "threshold": threshold,
        "tuning": tuning,
    });
    if let Some(t) = threshold_at_two_percent {
        meta["threshold_at_two_percent"] = serde_json::json!(t);
    }
    std::fs::write(
        &meta_path,
        serde_json::to_string_pretty(&meta).unwrap() + "\n",
    )
    .unwrap();
    println!("wrote {}", meta_path.display());
}
