//! Webhook deliveries through signature checking: what one check costs, so what a core can
//! verify per second before any other work. A 1 KiB JSON body, one current secret, and the
//! same with a rotated-out secret still in its grace period (two keys to try).
//!
//! ```sh
//! cargo bench -p secureclaw-server --bench signature -- --noplot
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is its report

use axum::http::{HeaderMap, HeaderValue};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use secureclaw_engine::model::HookPreset;
use secureclaw_server::hooks::signature::{Scheme, github_signature, names, standard_signature};

fn body() -> Vec<u8> {
    let mut text = String::from("{\"ref\":\"refs/heads/main\",\"pad\":\"");
    while text.len() < 1024 - 2 {
        text.push('x');
    }
    text.push_str("\"}");
    text.into_bytes()
}

fn bench(c: &mut Criterion) {
    let body = body();
    assert_eq!(body.len(), 1024);
    let mut group = c.benchmark_group("webhook_signature");
    group.throughput(Throughput::Elements(1));

    let github = Scheme::new(HookPreset::Github, None);
    let secret = github.generate_secret().unwrap();
    let keys = vec![github.key(&secret).unwrap()];
    let mut h = HeaderMap::new();
    h.insert(
        names::GITHUB_SIGNATURE,
        HeaderValue::from_str(&github_signature(secret.as_bytes(), &body)).unwrap(),
    );
    h.insert(names::GITHUB_DELIVERY, HeaderValue::from_static("d-1"));
    h.insert(names::GITHUB_EVENT, HeaderValue::from_static("push"));
    group.bench_function("github_1KiB", |b| {
        b.iter(|| github.verify(&h, &body, &keys, 0).unwrap())
    });
    // The new secret first, the matching one second: the worst case during a rotation.
    let two = vec![b"the-new-secret-0123456789abcdef".to_vec(), keys[0].clone()];
    group.bench_function("github_1KiB_in_rotation", |b| {
        b.iter(|| github.verify(&h, &body, &two, 0).unwrap())
    });
    let mut forged = h.clone();
    forged.insert(
        names::GITHUB_SIGNATURE,
        HeaderValue::from_str(&github_signature(b"wrong", &body)).unwrap(),
    );
    group.bench_function("github_1KiB_forged", |b| {
        b.iter(|| github.verify(&forged, &body, &keys, 0).unwrap_err())
    });

    let standard = Scheme::new(HookPreset::StandardWebhooks, None);
    let secret = standard.generate_secret().unwrap();
    let key = standard.key(&secret).unwrap();
    let now = 1_700_000_000i64;
    let mut h = HeaderMap::new();
    h.insert(names::STANDARD_ID, HeaderValue::from_static("msg_1"));
    h.insert(
        names::STANDARD_TIMESTAMP,
        HeaderValue::from_str(&now.to_string()).unwrap(),
    );
    h.insert(
        names::STANDARD_SIGNATURE,
        HeaderValue::from_str(&standard_signature(&key, "msg_1", &now.to_string(), &body)).unwrap(),
    );
    let keys = vec![key];
    group.bench_function("standard_webhooks_1KiB", |b| {
        b.iter(|| standard.verify(&h, &body, &keys, now).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
