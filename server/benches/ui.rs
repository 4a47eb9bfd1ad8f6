//! The dashboard page with 1,000 tasks, rendered in-process: the data (the page's 50 tasks
//! opened, their run records read) and the whole handler (data and template). Two states:
//! nothing parked (the usual case: only the page's tasks are opened), and one run parked at an
//! approval gate among old tasks (every task is opened to find the waiting ones).
//!
//! ```sh
//! cargo bench -p secureclaw-server --bench ui -- --noplot
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is its report

use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use criterion::{Criterion, criterion_group, criterion_main};
use secureclaw_engine::session::{Access, PassphraseSource, Session, SessionOptions};
use secureclaw_server::app::AppState;
use secureclaw_server::auth::Identity;
use secureclaw_server::config::ServerConfig;
use secureclaw_server::extract::JsonBody;
use secureclaw_server::tasks::routes::{CreateTask, create_task, run_task};
use secureclaw_server::ui::Viewer;
use secureclaw_server::ui::pages::dashboard::{dashboard, dashboard_data};
use secureclaw_server::ui::pages::pager::PageQuery;

const TASKS: usize = 1000;
/// The newest tasks run, so the first page reads a run record for each row.
const RUN: usize = 50;

const WRITE: &str = r#"version: 1
name: bench
steps:
  - id: prepare
    write: { path: prep.txt, content: "prepared\n" }
  - id: show
    needs: [prepare]
    read: { path: prep.txt }
"#;

const GATED: &str = r#"version: 1
name: gated
steps:
  - id: prepare
    write: { path: prep.txt, content: "prepared\n" }
  - id: publish
    needs: [prepare]
    approve: true
    write: { path: published.txt, content: "published\n" }
"#;

fn viewer() -> Viewer {
    Viewer {
        who: Identity {
            user_id: "u-bench".into(),
            username: "bench".into(),
            admin: false,
            roles: Vec::new(),
            session_id: "s-bench".into(),
        },
        csrf: "csrf".into(),
        token: "token".into(),
    }
}

async fn open_state(dir: &std::path::Path) -> AppState {
    let pass = dir.join("pass");
    std::fs::write(&pass, "ui-bench-passphrase").unwrap();
    let session = Session::open(SessionOptions {
        state_dir: dir.join("state"),
        passphrase: PassphraseSource::File(pass),
        access: Access::Write { create: true },
        actor: "bench:ui".into(),
    })
    .unwrap();
    AppState::new(session, ServerConfig::defaults(dir.into()))
        .await
        .unwrap()
}

async fn create(state: &AppState, who: &Identity, yaml: &str) -> String {
    let res = create_task(
        State(state.clone()),
        who.clone(),
        JsonBody(CreateTask {
            instruction: None,
            token_budget: None,
            workflow: Some(yaml.into()),
            inputs: None,
            workspace: None,
        }),
    )
    .await
    .unwrap();
    let res = axum::response::IntoResponse::into_response(res);
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["id"].as_str().unwrap().to_string()
}

async fn run_and_wait(state: &AppState, who: &Identity, id: &str, until: &[&str]) {
    run_task(State(state.clone()), who.clone(), Path(id.to_string()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = dashboard_data(state, who, 1).unwrap();
        let row = d.tasks.iter().chain(d.awaiting.iter()).find(|t| t.id == id);
        if row.is_some_and(|t| until.contains(&t.state.as_str())) {
            return;
        }
        // Older tasks are not on page 1: ask the engine directly.
        if row.is_none() {
            let parked = state.session.parked_runs().unwrap();
            if until.contains(&"awaiting_approval") && !parked.is_empty() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "task {id} never reached {until:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = rt.block_on(open_state(dir.path()));
    let viewer = viewer();
    let who = viewer.who.clone();

    let setup = Instant::now();
    let ids: Vec<String> = rt.block_on(async {
        let mut ids = Vec::with_capacity(TASKS);
        for _ in 0..TASKS {
            ids.push(create(&state, &who, WRITE).await);
        }
        for id in ids.iter().rev().take(RUN) {
            run_and_wait(&state, &who, id, &["succeeded", "failed"]).await;
        }
        ids
    });
    eprintln!(
        "{TASKS} tasks ({RUN} run) set up in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    assert_eq!(ids.len(), TASKS);

    let mut group = c.benchmark_group("ui_dashboard_1000_tasks");
    group.sample_size(10);
    let page = |state: &AppState, viewer: &Viewer| {
        rt.block_on(dashboard(
            State(state.clone()),
            viewer.clone(),
            Query(PageQuery::default()),
        ))
        .unwrap()
    };

    let store = secureclaw_server::tasks::model::TaskStore::new(state.session.clone());
    group.bench_function("task_ids_own", |b| {
        b.iter(|| store.ids(Some(who.user_id.as_str())).unwrap())
    });
    group.bench_function("task_ids_admin", |b| b.iter(|| store.ids(None).unwrap()));
    group.bench_function("open_50_tasks", |b| {
        b.iter(|| {
            for id in ids.iter().take(50) {
                store.load(id).unwrap();
            }
        })
    });
    group.bench_function("data_nothing_parked", |b| {
        b.iter(|| dashboard_data(&state, &who, 1).unwrap())
    });
    group.bench_function("page_nothing_parked", |b| b.iter(|| page(&state, &viewer)));
    group.bench_function("data_page_20_nothing_parked", |b| {
        b.iter(|| dashboard_data(&state, &who, 20).unwrap())
    });

    // One run parked behind an approval gate: the dashboard now looks through every task.
    rt.block_on(async {
        let gated = create(&state, &who, GATED).await;
        run_and_wait(&state, &who, &gated, &["awaiting_approval"]).await;
    });
    assert_eq!(dashboard_data(&state, &who, 1).unwrap().awaiting.len(), 1);
    group.bench_function("data_one_parked", |b| {
        b.iter(|| dashboard_data(&state, &who, 1).unwrap())
    });
    group.bench_function("page_one_parked", |b| b.iter(|| page(&state, &viewer)));
    group.finish();
    rt.block_on(state.session.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
