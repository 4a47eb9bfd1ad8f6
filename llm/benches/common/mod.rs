//! Shared by the llm benches: a plain timing loop that prints percentiles (criterion reports
//! none), as `PERCENTILES name: n=… p50=… p95=… p99=… max=…` on stderr.

use std::time::{Duration, Instant};

/// Runs `f` `iters` times after `max(iters / 10, min_warmup)` warm-up calls.
pub fn percentiles(name: &str, iters: usize, min_warmup: usize, mut f: impl FnMut()) {
    let mut samples: Vec<Duration> = Vec::with_capacity(iters);
    for _ in 0..(iters / 10).max(min_warmup) {
        f();
    }
    for _ in 0..iters {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    eprintln!(
        "PERCENTILES {name}: n={iters} p50={:?} p95={:?} p99={:?} max={:?}",
        p(0.50),
        p(0.95),
        p(0.99),
        samples[samples.len() - 1]
    );
}
