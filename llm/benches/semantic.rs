//! Semantic layer cost (feature `ml`, model from scripts/setup-models.sh):
//!
//! - one full 256-token window (254 tokens + [CLS]/[SEP]) through MiniLM: target p50 < 15 ms;
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
use secureclaw_llm::embed::{Embedder, MAX_TOKENS};
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

criterion_group! {
    name = semantic_benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(semantic_benches);
