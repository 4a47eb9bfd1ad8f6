//! `/health` and `/metrics`.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

/// Counters the handlers feed; rendered by `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Runs started through the API (new and resumed).
    pub runs_started: std::sync::atomic::AtomicU64,
    /// Seconds from `POST tasks/{id}/run` to the run's first `step_started`.
    pub run_to_first_step: Histogram,
    /// Seconds a step took from `step_started` to `step_finished`, sandbox spawn included.
    pub step_seconds: Histogram,
}

/// A Prometheus-style histogram with fixed buckets (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<std::sync::atomic::AtomicU64>,
    sum_micros: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
}

const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bounds: SECONDS_BUCKETS,
            counts: SECONDS_BUCKETS
                .iter()
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            sum_micros: std::sync::atomic::AtomicU64::new(0),
            total: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let secs = d.as_secs_f64();
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
        self.total.fetch_add(1, Relaxed);
    }

    /// (upper bound, cumulative count) per bucket, the sum in seconds, and the count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| (*b, c.load(Relaxed)))
            .collect();
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        (buckets, sum, self.total.load(Relaxed))
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: String,
    pub version: String,
    /// `connected` when the sealed store answers.
    pub database: String,
    /// Provider name → whether it is configured.
    pub llm_providers: serde_json::Map<String, serde_json::Value>,
}

/// Store and LLM provider health.
#[utoipa::path(get, path = "/health", tag = "ops",
    responses((status = 200, description = "the server is up", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let database = match state.session.runs() {
        Ok(_) => "connected",
        Err(_) => "unavailable",
    };
    Json(Health {
        status: if database == "connected" {
            "ok"
        } else {
            "degraded"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        database: database.into(),
        llm_providers: serde_json::Map::new(),
    })
}
