//! Semantic layer cost (feature `ml`, model from scripts/setup-models.sh):
//!
//! - the shipped cascade (n-gram model, then the two-layer student, then the six-layer classifier
//!   for what neither dismissed) on 256-token windows: of benign prose (the project's docs, cut
//!   into windows), of the held-out test split's texts run together (about half attacks), and
//!   one window of plain prose; target p50 < 15 ms per window; and the same windows with the
//!   student passing everything on (the cascade without it);
//! - each classifier alone on one full 256-token window and one 130-token unit;
//! - the lexical model alone on one 256-token window;
//! - the embedding layer (all-MiniLM-L6-v2 + logistic head, the previous default) for comparison:
//! - one full 256-token window (254 tokens + [CLS]/[SEP]) through MiniLM;
//! - one 130-token unit (the longest the layer embeds whole);
//! - the semantic layer alone on a 300-character instruction and on 4 KB of prose;
//! - the whole detector (unicode + regex + semantic) on the instruction;
//! - the command risk model on one command.
//!
//! Prints p50/p95/p99 from a plain timing loop (criterion reports no percentiles), then criterion's
//! means. Without the model files it prints why and measures nothing.
//!
//! `CARGO_TARGET_DIR=/work/target-ml cargo bench -p secureclaw-llm --features ml --bench semantic`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use secureclaw_llm::cascade::CascadeLayer;
use secureclaw_llm::classifier::InjectionClassifier;
use secureclaw_llm::embed::{Embedder, MAX_TOKENS};
use secureclaw_llm::lexical::LexicalModel;
use secureclaw_llm::semantic::{DEFAULT_METHOD, SemanticLayer};
use secureclaw_llm::{CommandRiskModel, Detector, DetectorLayer, normalize};

const INSTRUCTION: &str = "Archive last week's logs from /var/log/app into a tarball under backups/, \
delete the originals older than 14 days, and post a summary to #ops. The deploy key is in the vault \
and the on-call is jane; ignore whitespace changes in the diff. Use gzip -9 and keep the last four archives.";

mod common;

fn percentiles(name: &str, iters: usize, f: impl FnMut()) {
    common::percentiles(name, iters, 3, f);
}

/// Prose of exactly `tokens` tokens.
fn text_of_tokens(e: &Embedder, tokens: usize) -> String {
    let words = "the quarterly report shows revenue grew in every region and the team shipped \
                 the new onboarding flow on schedule while support tickets fell by a third";
    let mut out = String::new();
    for w in words.split(' ').cycle() {
        let candidate = format!("{out} {w}");
        if e.count_tokens(&candidate).unwrap() > tokens {
            break;
        }
        out = candidate;
    }
    assert_eq!(e.count_tokens(&out).unwrap(), tokens);
    out
}

fn prose_4k() -> String {
    let para = "The migration finished on Tuesday. Every service now reads its configuration from the \
new store, and the old files were archived. Latency stayed flat during the switch. Next week we \
remove the compatibility shim and update the runbook. ";
    let mut s = para.repeat(4096 / para.len() + 1);
    s.truncate(4096);
    s
}

fn benches(c: &mut Criterion) {
    let embedder = match Embedder::shared() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("semantic bench skipped: {e}");
            return;
        }
    };
    cascade_benches(&embedder);
    let layer = SemanticLayer::new(Arc::clone(&embedder), DEFAULT_METHOD).unwrap();
    let detector = Detector::builtin().unwrap().with_layer(Arc::new(
        SemanticLayer::new(Arc::clone(&embedder), DEFAULT_METHOD).unwrap(),
    ));
    let risk = CommandRiskModel::new(Arc::clone(&embedder)).unwrap();
    let chunk = text_of_tokens(&embedder, MAX_TOKENS - 2);
    // The layer's largest unit: 128 tokens + [CLS]/[SEP].
    let unit = text_of_tokens(&embedder, 128);
    let t4k = prose_4k();
    let n_instr = normalize(INSTRUCTION);
    let n_4k = normalize(&t4k);
    eprintln!(
        "4 KB prose: {} tokens, {} units scored",
        embedder.count_tokens(&t4k).unwrap(),
        layer.windows(&n_4k).unwrap().len()
    );

    percentiles("embed_one_256_token_window", 200, || {
        black_box(embedder.embed(black_box(&chunk)).unwrap());
    });
    percentiles("embed_one_130_token_unit", 200, || {
        black_box(embedder.embed(black_box(&unit)).unwrap());
    });
    percentiles("semantic_layer_instruction_300", 200, || {
        black_box(layer.scan(INSTRUCTION, black_box(&n_instr)));
    });
    percentiles("detector_all_layers_instruction_300", 200, || {
        black_box(detector.scan(black_box(INSTRUCTION)));
    });
    percentiles("semantic_layer_4k", 30, || {
        black_box(layer.scan(&t4k, black_box(&n_4k)));
    });
    percentiles("risk_model_one_command", 200, || {
        black_box(
            risk.nearest(black_box("python3 -c \"import os; os.remove('x')\""))
                .unwrap(),
        );
    });

    let mut g = c.benchmark_group("semantic");
    g.sample_size(30);
    g.bench_function("embed_256_token_window", |b| {
        b.iter(|| embedder.embed(black_box(&chunk)).unwrap())
    });
    g.throughput(Throughput::Bytes(INSTRUCTION.len() as u64));
    g.bench_function("layer_instruction_300", |b| {
        b.iter(|| layer.scan(INSTRUCTION, black_box(&n_instr)))
    });
    g.finish();
    let mut g = c.benchmark_group("semantic");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(t4k.len() as u64));
    g.bench_function("layer_4k", |b| {
        b.iter(|| layer.scan(&t4k, black_box(&n_4k)))
    });
    g.finish();
}

/// Cut `text` into consecutive windows of `tokens` MiniLM tokens (the last, shorter one dropped).
fn token_windows(e: &Embedder, text: &str, tokens: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    let mut current = String::new();
    let mut n = 0;
    for w in words {
        let wt = e.count_tokens(w).unwrap();
        if n + wt > tokens {
            out.push(std::mem::take(&mut current));
            n = 0;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(w);
        n += wt;
    }
    out
}

fn cascade_benches(embedder: &Embedder) {
    let cascade = match CascadeLayer::builtin() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cascade bench skipped: {e}");
            return;
        }
    };
    let classifier = InjectionClassifier::shared().unwrap();
    let lexical = LexicalModel::builtin().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut docs = String::new();
    for f in [
        "README.md",
        "docs/workflow-format.md",
        "docs/sandbox.md",
        "docs/revert.md",
    ] {
        docs.push_str(&std::fs::read_to_string(format!("{root}/{f}")).unwrap());
        docs.push('\n');
    }
    let doc_windows = token_windows(embedder, &docs, MAX_TOKENS - 2);
    let split =
        std::fs::read_to_string(format!("{root}/llm/tests/data/injection-split/test.tsv")).unwrap();
    let mixed: String = split
        .lines()
        .skip(1)
        .filter_map(|l| l.splitn(4, '\t').nth(3))
        .map(|t| format!("{t}\n"))
        .collect();
    let mixed_windows = token_windows(embedder, &mixed, MAX_TOKENS - 2);
    let prose = text_of_tokens(embedder, MAX_TOKENS - 2);
    let unit = text_of_tokens(embedder, 128);

    let per_window = |name: &str, cascade: &CascadeLayer, windows: &[String]| {
        let normalized: Vec<_> = windows.iter().map(|w| normalize(w)).collect();
        let (mut units, mut read, mut asked) = (0usize, 0usize, 0usize);
        let flagged = windows
            .iter()
            .zip(&normalized)
            .filter(|(w, n)| cascade.scan(w, n).iter().any(|f| f.score >= 0.5))
            .count();
        for n in &normalized {
            for u in cascade
                .unit_scores(&n.text, lexical.dismiss_below())
                .unwrap()
            {
                units += 1;
                read += usize::from(u.student.is_some());
                asked += usize::from(u.model.is_some());
            }
        }
        eprintln!(
            "{name}: {} windows of 256 tokens ({flagged} flagged), {units} units, {read} read by \
             the student, {asked} given to the full model",
            windows.len()
        );
        let mut i = 0;
        percentiles(name, normalized.len().max(1), || {
            let k = i % windows.len();
            i += 1;
            black_box(cascade.scan(&windows[k], black_box(&normalized[k])));
        });
    };
    per_window("cascade_per_256_token_window_docs", &cascade, &doc_windows);
    per_window(
        "cascade_per_256_token_window_test_split",
        &cascade,
        &mixed_windows,
    );
    // The same windows with the student passing everything on (the cascade without it).
    let without_student = CascadeLayer::builtin().unwrap().with_student_bound(0.0);
    per_window(
        "cascade_without_student_per_256_token_window_docs",
        &without_student,
        &doc_windows,
    );
    per_window(
        "cascade_without_student_per_256_token_window_test_split",
        &without_student,
        &mixed_windows,
    );
    let n_prose = normalize(&prose);
    percentiles("cascade_one_256_token_window_prose", 200, || {
        black_box(cascade.scan(&prose, black_box(&n_prose)));
    });
    percentiles("classifier_one_256_token_window", 100, || {
        black_box(classifier.probability(black_box(&prose)).unwrap());
    });
    percentiles("classifier_one_130_token_unit", 100, || {
        black_box(classifier.probability(black_box(&unit)).unwrap());
    });
    let student = InjectionClassifier::shared_student().unwrap();
    percentiles("student_one_256_token_window", 100, || {
        black_box(student.probability(black_box(&prose)).unwrap());
    });
    percentiles("student_one_130_token_unit", 100, || {
        black_box(student.probability(black_box(&unit)).unwrap());
    });
    percentiles("lexical_one_256_token_window", 500, || {
        black_box(lexical.logit(black_box(&n_prose.text)));
    });
}

criterion_group! {
    name = semantic_benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(semantic_benches);
