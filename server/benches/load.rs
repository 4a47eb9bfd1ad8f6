//! A small load tool for a running `secureclaw serve` (scripts/bench-server.sh drives it).
//!
//! ```text
//! load rate URL PATH RPS SECONDS [TOKEN]       open loop: RPS requests a second, latency percentiles
//! load sse URL TASK_ID CLIENTS SECONDS TOKEN   CLIENTS streams of one running task: fan-out spread
//! load first-step URL WORKFLOW_FILE RUNS TOKEN POST tasks + run, then the server's histogram
//! ```
//!
//! Latency in `rate` counts from when a request was due, not when it was sent, so a stalled
//! server shows up in the figures instead of slowing the load down (coordinated omission).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a tool: a panic is its report

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn client(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap()
}

async fn rate(url: &str, path: &str, rps: u64, seconds: u64, token: Option<&str>) {
    let http = client(token);
    let target = format!("{url}{path}");
    let total = rps * seconds;
    let period = Duration::from_secs_f64(1.0 / rps as f64);
    let start = Instant::now();
    let results = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total as usize)));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (http, target, results, errors) = (
            http.clone(),
            target.clone(),
            results.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            match http.get(&target).send().await {
                Ok(res) if res.status().is_success() => {
                    let _ = res.bytes().await;
                    results.lock().unwrap().push(due.elapsed());
                }
                _ => {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let wall = start.elapsed();
    let mut lat = results.lock().unwrap().clone();
    lat.sort();
    println!(
        "GET {path}: {} requests at {rps}/s over {:.1} s: ok {}, errors {}, p50 {}, p99 {}, max {}",
        total,
        wall.as_secs_f64(),
        lat.len(),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
}

/// One stream: the receipt time of each event id.
async fn watch(
    http: reqwest::Client,
    target: String,
    until: Instant,
    connected: Arc<tokio::sync::Barrier>,
) -> Vec<(String, Instant)> {
    let res = http.get(&target).send().await.unwrap();
    assert!(res.status().is_success(), "{target}: {}", res.status());
    connected.wait().await;
    let mut body = res.bytes_stream();
    let mut seen = Vec::new();
    let mut buf = String::new();
    while let Ok(Some(chunk)) = tokio::time::timeout_at(until.into(), body.next()).await {
        let Ok(chunk) = chunk else { break };
        let at = Instant::now();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if let Some(id) = event.lines().find_map(|l| l.strip_prefix("id:")) {
                seen.push((id.trim().to_string(), at));
            }
        }
    }
    seen
}

async fn sse(url: &str, task: &str, clients: usize, seconds: u64, token: &str) {
    let target = format!("{url}/api/v1/tasks/{task}/stream");
    let until = Instant::now() + Duration::from_secs(seconds);
    let connected = Arc::new(tokio::sync::Barrier::new(clients + 1));
    // A client each, so each stream is its own connection, as from separate browsers.
    let streams: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(watch(
                client(Some(token)),
                target.clone(),
                until,
                connected.clone(),
            ))
        })
        .collect();
    connected.wait().await;
    // Events already out when the last stream connected are replays, not fan-out.
    let live_from = Instant::now();
    println!("{clients} streams connected");
    let mut by_event: std::collections::BTreeMap<String, Vec<Instant>> = Default::default();
    for s in streams {
        for (id, at) in s.await.unwrap() {
            by_event.entry(id).or_default().push(at);
        }
    }
    let live: Vec<&Vec<Instant>> = by_event
        .values()
        .filter(|v| v.iter().min().is_some_and(|first| *first > live_from))
        .collect();
    let mut spreads: Vec<Duration> = live
        .iter()
        .filter(|v| v.len() == clients)
        .map(|v| *v.iter().max().unwrap() - *v.iter().min().unwrap())
        .collect();
    spreads.sort();
    println!(
        "{} live events reached all {clients} streams ({} only some; {} replayed on connect, not counted); first-to-last receipt spread p50 {}, p99 {}, max {}",
        spreads.len(),
        live.len() - spreads.len(),
        by_event.len() - live.len(),
        ms(percentile(&spreads, 0.5)),
        ms(percentile(&spreads, 0.99)),
        ms(spreads.last().copied().unwrap_or_default()),
    );
}

async fn first_step(url: &str, workflow: &str, runs: usize, token: &str) {
    let http = client(Some(token));
    let yaml = std::fs::read_to_string(workflow).unwrap();
    for _ in 0..runs {
        let task: serde_json::Value = http
            .post(format!("{url}/api/v1/tasks"))
            .json(&serde_json::json!({"workflow": yaml}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = task["id"].as_str().expect("a task id").to_string();
        let res = http
            .post(format!("{url}/api/v1/tasks/{id}/run"))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "run: {}", res.status());
        // One run at a time: the figure is the server's, not a queue's.
        for _ in 0..600 {
            let t: serde_json::Value = http
                .get(format!("{url}/api/v1/tasks/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let state = t["state"]
                .as_str()
                .or(t["run"]["state"].as_str())
                .unwrap_or("");
            if !matches!(state, "" | "pending" | "running" | "created") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in text
        .lines()
        .filter(|l| l.starts_with("secureclaw_run_to_first_step_seconds"))
    {
        println!("{line}");
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match a(0) {
        "rate" => {
            let token = args.get(5).map(String::as_str);
            rate(
                a(1),
                a(2),
                a(3).parse().unwrap(),
                a(4).parse().unwrap(),
                token,
            )
            .await
        }
        "sse" => {
            sse(
                a(1),
                a(2),
                a(3).parse().unwrap(),
                a(4).parse().unwrap(),
                a(5),
            )
            .await
        }
        "first-step" => first_step(a(1), a(2), a(3).parse().unwrap(), a(4)).await,
        _ => {
            println!("usage: see the top of server/benches/load.rs");
        }
    }
}
