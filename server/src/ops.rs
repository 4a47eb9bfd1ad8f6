//! `/health` and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse as _, Response};
use secureclaw_engine::record::RunState;
use secureclaw_engine::session::{AppTable, Session};
use serde::Serialize;
use subtle::ConstantTimeEq as _;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::ClientAddr;
use crate::error::{ApiError, Problem};

/// Counters the handlers feed; rendered by `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Runs started through the API (new and resumed).
    pub runs_started: std::sync::atomic::AtomicU64,
    /// Seconds from `POST tasks/{id}/run` to the run's first `step_started`.
    pub run_to_first_step: Histogram,
    /// Seconds a step took from `step_started` to `step_finished`, sandbox spawn included.
    pub step_seconds: Histogram,
    /// Content-Security-Policy violations browsers reported from UI pages.
    pub ui_csp_violations: std::sync::atomic::AtomicU64,
    /// Counts read from the run records, refreshed at most every [`RECORDS_TTL`].
    records: std::sync::Mutex<Option<(std::time::Instant, Arc<RecordCounts>)>>,
}

/// How stale the record-derived counts of `/metrics` may be: reading every run record on each
/// scrape would cost as much as the runs are many.
pub const RECORDS_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// What the run records say, by label.
#[derive(Debug, Default)]
pub struct RecordCounts {
    pub runs_by_state: BTreeMap<String, u64>,
    /// (state, tier) → steps.
    pub steps: BTreeMap<(String, String), u64>,
    /// Gates parked runs wait on.
    pub approvals_waiting: u64,
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
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: String,
    pub version: String,
    /// `connected` when the sealed store answers, else `unavailable`.
    pub database: String,
    /// `anthropic`, `openai`, `ollama`: whether each is configured and which goes first
    /// (`LLM_PROVIDER`). Never a key.
    pub llm_providers: BTreeMap<String, ProviderHealth>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderHealth {
    /// A key is set (Anthropic, OpenAI) or a base URL is given (Ollama).
    pub configured: bool,
    /// `LLM_PROVIDER` names it (planner calls try it first).
    pub selected: bool,
    pub model: String,
}

/// Store and LLM provider health. Open to anyone: it says nothing secret.
#[utoipa::path(get, path = "/health", tag = "ops",
    responses((status = 200, description = "the server is up", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let database = match state.session.app_keys(AppTable::Settings) {
        Ok(_) => "connected",
        Err(_) => "unavailable",
    };
    let llm = &state.config.llm;
    let provider = |name: &str, configured: bool, model: &str| {
        (
            name.to_string(),
            ProviderHealth {
                configured,
                selected: llm.selected == name,
                model: model.to_string(),
            },
        )
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
        llm_providers: [
            provider("anthropic", llm.anthropic_key, &llm.anthropic_model),
            provider("openai", llm.openai_key, &llm.openai_model),
            provider("ollama", llm.ollama_url, &llm.ollama_model),
        ]
        .into_iter()
        .collect(),
    })
}

/// Prometheus text exposition (format 0.0.4). With `SECURECLAW_METRICS_TOKEN` set it wants
/// that token as a bearer token; without, it answers loopback clients only.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "metrics", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "wrong or missing metrics token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "no token configured and the client is not on loopback", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match &state.config.metrics_token {
        Some(want) => {
            let given = crate::auth::bearer(&headers).unwrap_or("");
            if !bool::from(given.as_bytes().ct_eq(want.as_bytes())) {
                return Err(ApiError::unauthorized("/metrics wants the metrics token")
                    .with_hint("send `Authorization: Bearer $SECURECLAW_METRICS_TOKEN`"));
            }
        }
        None if !client.is_loopback() => {
            return Err(ApiError::forbidden(
                "/metrics answers loopback clients only while no metrics token is set",
            )
            .with_hint("set SECURECLAW_METRICS_TOKEN to scrape from elsewhere"));
        }
        None => {}
    }
    let counts = state.metrics.record_counts(&state.session)?;
    let text = render(&state.metrics, &counts, state.session.live_count());
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

impl Metrics {
    /// The record-derived counts, read again when older than [`RECORDS_TTL`].
    pub fn record_counts(&self, session: &Session) -> Result<Arc<RecordCounts>, ApiError> {
        let now = std::time::Instant::now();
        if let Ok(cache) = self.records.lock()
            && let Some((at, counts)) = cache.as_ref()
            && now.duration_since(*at) < RECORDS_TTL
        {
            return Ok(counts.clone());
        }
        let counts = Arc::new(count_records(session)?);
        if let Ok(mut cache) = self.records.lock() {
            *cache = Some((now, counts.clone()));
        }
        Ok(counts)
    }
}

fn label<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".into(),
    }
}

fn count_records(session: &Session) -> Result<RecordCounts, ApiError> {
    let mut c = RecordCounts::default();
    for run in session.runs()? {
        *c.runs_by_state.entry(label(&run.state)).or_default() += 1;
        for step in &run.steps {
            *c.steps
                .entry((label(&step.state), label(&step.tier)))
                .or_default() += 1;
        }
        if run.state == RunState::AwaitingApproval {
            // A parked run whose park state cannot be read still waits on something.
            let gates = session
                .parked(&run.run_id)
                .map(|(_, park)| park.pending.len() as u64)
                .unwrap_or(1);
            c.approvals_waiting += gates;
        }
    }
    Ok(c)
}

/// The exposition text.
pub fn render(m: &Metrics, c: &RecordCounts, live: usize) -> String {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP secureclaw_runs Recorded runs by state.\n# TYPE secureclaw_runs gauge"
    );
    for (state, n) in &c.runs_by_state {
        let _ = writeln!(out, "secureclaw_runs{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP secureclaw_steps Recorded steps by state and risk tier.\n# TYPE secureclaw_steps gauge"
    );
    for ((state, tier), n) in &c.steps {
        let _ = writeln!(
            out,
            "secureclaw_steps{{state=\"{state}\",tier=\"{tier}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP secureclaw_approvals_waiting Approval gates parked runs wait on.\n# TYPE secureclaw_approvals_waiting gauge\nsecureclaw_approvals_waiting {}",
        c.approvals_waiting
    );
    let _ = writeln!(
        out,
        "# HELP secureclaw_runs_live Runs going on in this process now.\n# TYPE secureclaw_runs_live gauge\nsecureclaw_runs_live {live}"
    );
    let _ = writeln!(
        out,
        "# HELP secureclaw_runs_started_total Runs started through the API since the server started.\n# TYPE secureclaw_runs_started_total counter\nsecureclaw_runs_started_total {}",
        m.runs_started.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP secureclaw_ui_csp_violations_total Content-Security-Policy violations browsers reported from UI pages.\n# TYPE secureclaw_ui_csp_violations_total counter\nsecureclaw_ui_csp_violations_total {}",
        m.ui_csp_violations.load(Relaxed)
    );
    histogram(
        &mut out,
        "secureclaw_run_to_first_step_seconds",
        "Seconds from POST tasks/{id}/run to the run's first step starting.",
        &m.run_to_first_step,
    );
    histogram(
        &mut out,
        "secureclaw_step_seconds",
        "Seconds a step took, sandbox start included.",
        &m.step_seconds,
    );
    out
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    use std::fmt::Write as _;
    let (buckets, sum, count) = h.snapshot();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, n) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_end_in_inf() {
        let m = Metrics::default();
        m.step_seconds.observe(std::time::Duration::from_millis(3));
        m.step_seconds.observe(std::time::Duration::from_secs(2));
        let text = render(&m, &RecordCounts::default(), 0);
        assert!(
            text.contains("secureclaw_step_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("secureclaw_step_seconds_bucket{le=\"2.5\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("secureclaw_step_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("secureclaw_step_seconds_count 2\n"), "{text}");
    }
}
