//! Validation and scheduler overhead. Figures go to docs/performance.md.
//!
//! cargo bench -p secureclaw-engine --bench engine

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use secureclaw_engine::events;
use secureclaw_engine::policy::{NoApprover, Policy};
use secureclaw_engine::record::{RunState, RunStore};
use secureclaw_engine::scheduler::{Engine, RunOptions};
use secureclaw_engine::testing::{NoopSandbox, dag_workflow, dag_workflow_of_reads};
use secureclaw_engine::validate::validate_bytes;

fn validate_1000(c: &mut Criterion) {
    let text = dag_workflow(1000);
    c.bench_function("validate 1000-step workflow", |b| {
        b.iter(|| validate_bytes(Path::new("bench.yaml"), text.as_bytes()).map(|v| v.order.len()))
    });
}

/// Runs one generated 1,000-node workflow repeatedly on the no-op backend.
fn bench_run(c: &mut Criterion, name: &str, text: &str, samples: usize) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let wf_path = dir.path().join("wf.yaml");
    std::fs::write(&wf_path, text).unwrap_or_else(|e| panic!("write: {e}"));
    let wf = validate_bytes(&wf_path, text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    let engine = Engine {
        sandbox: Arc::new(NoopSandbox),
        approver: Arc::new(NoApprover),
        policy: Policy::default(),
        events: events::discard(),
        store: Arc::new(RunStore::new(
            secureclaw_vault::Vault::create(
                &dir.path().join("state"),
                "bench",
                &secureclaw_vault::KdfParams {
                    memory_kib: 256,
                    iterations: 1,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}")),
            "bench",
        )),
    };
    let opts = || RunOptions {
        workspace: dir.path().to_path_buf(),
        state_dir: dir.path().join("state"),
        inputs: [("tag".to_string(), serde_json::json!("x"))].into(),
        jobs: 4,
        fail_fast: false,
        base_limits: Default::default(),
        read_only: Vec::new(),
        risk_model: None,
        risk_model_status: String::new(),
        run_id: None,
        resume: None,
        request: serde_json::Value::Null,
        started_by: None,
    };
    // A figure means something only if the run completes every step; the no-op backend
    // isolates nothing, and the run must be recorded so.
    let first = rt
        .block_on(engine.run(&wf, opts(), tokio_util::sync::CancellationToken::new()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.state, RunState::Succeeded, "{:?}", first.message);
    assert_eq!(first.steps.len(), wf.workflow.steps.len());
    assert!(
        !first.isolated,
        "the no-op backend was recorded as isolated"
    );
    let mut group = c.benchmark_group("scheduler");
    group.sample_size(samples);
    group.bench_function(name, |b| {
        b.iter(|| {
            rt.block_on(engine.run(&wf, opts(), tokio_util::sync::CancellationToken::new()))
                .map(|r| r.steps.len())
        })
    });
    group.finish();
}

/// Scheduling alone: `read` steps need neither the sandbox nor workspace capture.
fn schedule_1000_reads(c: &mut Criterion) {
    bench_run(
        c,
        "1000-node DAG of read steps",
        &dag_workflow_of_reads(1000),
        20,
    );
}

/// Shell steps on the no-op backend: scheduling plus each writing step's effect capture and
/// durable vault writes (what a real run pays on top of the sandbox).
fn schedule_1000_shells(c: &mut Criterion) {
    bench_run(
        c,
        "1000-node DAG of shell steps, no-op backend",
        &dag_workflow(1000),
        10,
    );
}

criterion_group!(
    benches,
    validate_1000,
    schedule_1000_reads,
    schedule_1000_shells
);
criterion_main!(benches);
