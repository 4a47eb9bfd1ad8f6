//! Shared by the sandbox benches: latency percentiles as the tables print them.

use std::time::Duration;

/// Median and p95 of the samples.
pub fn median_p95(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let median = v[v.len() / 2];
    let p95 = v[((v.len() as f64) * 0.95).ceil() as usize - 1];
    (median, p95)
}

/// `median / p95 ms` with `decimals` digits.
pub fn cell(v: Vec<Duration>, decimals: usize) -> String {
    let (m, p) = median_p95(v);
    format!(
        "{:.decimals$} / {:.decimals$} ms",
        m.as_secs_f64() * 1000.0,
        p.as_secs_f64() * 1000.0
    )
}
