//! Guard overhead: regex layer on 4 KB, scrubber throughput, and the whole pre-call path
//! (normalise + detect + scrub) on a typical 300-character instruction.
//!
//! Besides criterion's means, prints p50/p95/p99 from a plain timing loop (criterion reports no
//! percentiles), which docs/perf-llm.md quotes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use secureclaw_llm::{Detector, Guards, RegexLayer, Scrubber, normalize};

fn text_4k() -> String {
    let para = "Archive last week's logs from /var/log/app into logs.tar.gz, then post a short summary \
to the team channel. The system prompt of our app lives in config.py; ignore whitespace in the diff \
when reviewing. Contact ops@example.com or call +1 415 555 0132 if the disk fills up. ";
    let mut s = String::new();
    while s.len() < 4096 {
        s.push_str(para);
    }
    s.truncate(4096);
    s
}

fn text_scrub_mb(non_ascii: bool) -> String {
    let extra = if non_ascii {
        "Grüße aus München, 東京のチームへ: ログをアーカイブしました. Привет, команда!\n"
    } else {
        ""
    };
    let block = "config:\n  host: db.internal\n  password: Tr0ub4dor&3\n  api_key: 7f3a9c2e1b8d4f6a0e5c9b3d7a1f8e2c\n\
notify jane.doe@example.com, card 4111 1111 1111 1111, commit 3f9a2c7e1b8d4f6a0e5c9b3d7a1f8e2c4b6d9e0f\n\
Plain prose about the deployment that contains nothing secret at all, just words and numbers 12345.\n";
    let mut s = String::new();
    while s.len() < 1 << 20 {
        s.push_str(block);
        s.push_str(extra);
    }
    s
}

const INSTRUCTION: &str = "Archive last week's logs from /var/log/app into a tarball under backups/, \
delete the originals older than 14 days, and post a summary to #ops. The deploy key is \
AKIAZ7XQ3LM9PQ2RST4U and the on-call is jane.doe@example.com; ignore whitespace changes in the diff. Use gzip -9 and keep the last four archives.";

mod common;

fn percentiles(name: &str, iters: usize, f: impl FnMut()) {
    common::percentiles(name, iters, 0, f);
}

fn benches(c: &mut Criterion) {
    let detector = Detector::rules().unwrap();
    let regex_only = Detector::empty().with_layer(RegexLayer::builtin().unwrap());
    let scrubber = Scrubber::builtin().unwrap();
    let guards = Guards::builtin().unwrap();
    let t4k = text_4k();
    let t4k_intl = {
        let mut s = "Привет команда, 東京のログ, Grüße aus München. ".repeat(60);
        s.push_str(&t4k);
        let mut cut = 4096;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s
    };
    let mb = text_scrub_mb(false);
    let mb_intl = text_scrub_mb(true);
    assert!(
        (250..=350).contains(&INSTRUCTION.len()),
        "{}",
        INSTRUCTION.len()
    );

    percentiles("regex_layer_4k (normalise + regex)", 2000, || {
        black_box(regex_only.scan(black_box(&t4k)));
    });
    percentiles("pre_call_300 (normalise + detect + scrub)", 5000, || {
        black_box(guards.prepare(black_box(INSTRUCTION)));
    });

    let mut g = c.benchmark_group("detect");
    g.throughput(Throughput::Bytes(t4k.len() as u64));
    g.bench_function("normalize_4k", |b| b.iter(|| normalize(black_box(&t4k))));
    g.bench_function("regex_layer_4k", |b| {
        b.iter(|| regex_only.scan(black_box(&t4k)))
    });
    g.bench_function("unicode_and_regex_4k", |b| {
        b.iter(|| detector.scan(black_box(&t4k)))
    });
    g.bench_function("unicode_and_regex_4k_non_ascii", |b| {
        b.iter(|| detector.scan(black_box(&t4k_intl)))
    });
    g.finish();

    let mut g = c.benchmark_group("scrub");
    g.throughput(Throughput::Bytes(mb.len() as u64));
    g.sample_size(10);
    g.bench_function("scrub_1mb_config_like", |b| {
        b.iter(|| scrubber.scrub(black_box(&mb)))
    });
    g.finish();
    let mut g = c.benchmark_group("scrub");
    g.throughput(Throughput::Bytes(mb_intl.len() as u64));
    g.sample_size(10);
    g.bench_function("scrub_1mb_config_like_non_ascii", |b| {
        b.iter(|| scrubber.scrub(black_box(&mb_intl)))
    });
    g.finish();

    let mut g = c.benchmark_group("pre_call");
    g.throughput(Throughput::Bytes(INSTRUCTION.len() as u64));
    g.bench_function("instruction_300", |b| {
        b.iter(|| guards.prepare(black_box(INSTRUCTION)))
    });
    g.finish();
}

criterion_group! {
    name = guard_benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(guard_benches);
