//! The labelled prompt sets of the semantic layer and the metrics used on them. Shared by
//! `tests/semantic.rs` and `examples/train-semantic.rs` (via `#[path]`), so training and
//! evaluation read the files the same way.
//!
//! TRAIN (tuning, bank, classifier): `tests/data/injection.tsv` + `data/semantic-train.tsv`.
//! EVALUATION (never used for training or thresholds): `tests/data/injection-holdout.tsv` +
//! `tests/data/semantic-eval.tsv`. All rows were written by hand for this project; each row's
//! `source` column says which batch it came from.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub struct Row {
    /// `file:line`
    pub id: String,
    pub attack: bool,
    pub source: String,
    pub category: String,
    pub text: String,
}

/// `\n`, `\t`, `\\` and `\u{HEX}` escapes keep invisible characters reviewable in the files.
pub fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some('u') => {
                assert_eq!(chars.next(), Some('{'));
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
            }
            other => panic!("bad escape \\{other:?} in {s:?}"),
        }
    }
    out
}

pub fn parse(file: &str, raw: &str) -> Vec<Row> {
    let mut lines = raw.lines().enumerate();
    assert_eq!(
        lines.next().map(|(_, l)| l),
        Some("label\tsource\tcategory\ttext")
    );
    lines
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            let cols: Vec<&str> = l.splitn(4, '\t').collect();
            assert_eq!(cols.len(), 4, "{file}:{}: {l}", i + 1);
            assert!(cols[0] == "attack" || cols[0] == "benign", "{l}");
            assert!(!cols[1].is_empty(), "{file}:{}: no source", i + 1);
            Row {
                id: format!("{file}:{}", i + 1),
                attack: cols[0] == "attack",
                source: cols[1].to_owned(),
                category: cols[2].to_owned(),
                text: unescape(cols[3]),
            }
        })
        .collect()
}

pub fn train() -> Vec<Row> {
    let mut rows = parse("injection.tsv", include_str!("../data/injection.tsv"));
    rows.extend(parse(
        "semantic-train.tsv",
        include_str!("../../data/semantic-train.tsv"),
    ));
    rows
}

/// Every evaluation row, including the ones that duplicate a train row once normalised.
pub fn eval_all() -> Vec<Row> {
    let mut rows = parse(
        "injection-holdout.tsv",
        include_str!("../data/injection-holdout.tsv"),
    );
    rows.extend(parse(
        "semantic-eval.tsv",
        include_str!("../data/semantic-eval.tsv"),
    ));
    rows
}

fn key(text: &str) -> String {
    secureclaw_llm::normalize(text).text.trim().to_owned()
}

/// The evaluation set: [`eval_all`] without rows whose normalised text is a train text (two
/// holdout rows are zero-width/full-width spellings of a train row: the same input to the model).
pub fn eval() -> Vec<Row> {
    let train: std::collections::HashSet<String> = train().iter().map(|r| key(&r.text)).collect();
    eval_all()
        .into_iter()
        .filter(|r| !train.contains(&key(&r.text)))
        .collect()
}

/// The lowest threshold (flag when `score >= t`) that keeps the false-positive rate on `benign`
/// at or below `max_fpr`: just above the (⌊max_fpr·n⌋+1)-th highest benign score.
pub fn threshold_at_fpr(benign: &[f32], max_fpr: f64) -> f32 {
    let mut sorted = benign.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let allowed = (max_fpr * sorted.len() as f64).floor() as usize;
    match sorted.get(allowed) {
        Some(s) => s + 1e-6,
        None => f32::NEG_INFINITY,
    }
}

pub fn rate(scores: &[f32], t: f32) -> f64 {
    scores.iter().filter(|&&s| s >= t).count() as f64 / scores.len().max(1) as f64
}

/// Recall at the best threshold with FPR ≤ `max_fpr` when a text counts as flagged if the other
/// layers flagged it (`pre`) or its score reaches the threshold. Returns (recall, fpr, threshold).
pub fn recall_at_fpr_combined(
    attacks: &[(bool, f32)],
    benign: &[(bool, f32)],
    max_fpr: f64,
) -> (f64, f64, f32) {
    let allowed = (max_fpr * benign.len() as f64).floor() as usize;
    let pre_fp = benign.iter().filter(|(p, _)| *p).count();
    let t = if pre_fp > allowed {
        f32::INFINITY
    } else {
        let rest: Vec<f32> = benign.iter().filter(|(p, _)| !p).map(|(_, s)| *s).collect();
        let mut sorted = rest;
        sorted.sort_by(|a, b| b.total_cmp(a));
        match sorted.get(allowed - pre_fp) {
            // Only the other layers score (no scores of our own): nothing more may be flagged.
            Some(s) if *s == f32::NEG_INFINITY => f32::INFINITY,
            Some(s) => s + 1e-6,
            None => f32::NEG_INFINITY,
        }
    };
    let flagged = |xs: &[(bool, f32)]| {
        xs.iter().filter(|(p, s)| *p || *s >= t).count() as f64 / xs.len().max(1) as f64
    };
    (flagged(attacks), flagged(benign), t)
}

/// A split of the merged injection data (`tests/data/injection-split/{val,test}.tsv`, written by
/// `scripts/train_injection_model.py data`): openly licensed sets and the project's own files,
/// near copies of a training text removed. Read at run time (hundreds of kilobytes).
pub fn split(name: &str) -> Vec<Row> {
    let path = format!(
        "{}/tests/data/injection-split/{name}.tsv",
        env!("CARGO_MANIFEST_DIR")
    );
    let raw = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse(&format!("injection-split/{name}.tsv"), &raw)
}

/// The lowest score that flags at most `max_fpr` of `benign` together with `pre_flagged`
/// benign texts that other layers already flag (flag when `score >= t`).
pub fn threshold_with_others(benign_scores: &[f32], pre_flagged: usize, max_fpr: f64) -> f32 {
    let total = benign_scores.len() + pre_flagged;
    let allowed = ((max_fpr * total as f64).floor() as usize).saturating_sub(pre_flagged);
    let mut sorted = benign_scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    match sorted.get(allowed) {
        Some(s) => s + 1e-4,
        None => f32::NEG_INFINITY,
    }
}
