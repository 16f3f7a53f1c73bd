//! One run's bad write in a group commit fails that run only: its neighbours in the
//! same commit are written, and the failed run's due timer and applied completion are
//! not lost: once the store takes its write again they take effect, without a restart.
//!
//! The bad write is real: a SQLite trigger refuses updates of the poisoned runs. A
//! frozen clock makes every run's timer due at the same instant, so the engine loop
//! fires them all in one batch (one `commit_each`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde_json::json;

use aob_dispatch::MemoryDispatch;
use aob_engine::{RunSettings, RunState, RunStatus};
use aob_model::Workflow;
use aob_runtime::{Clock, Options, Runtime, StartRun};
use aob_store::Store;
use aob_store_sqlite::{Options as SqliteOptions, SqliteStore};

const DEADLINE: Duration = Duration::from_secs(30);

/// Time moves only when the test says so.
struct Frozen(AtomicI64);

impl Clock for Frozen {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn start(run_id: &str, plan: Arc<aob_engine::Plan>) -> StartRun {
    StartRun {
        run_id: run_id.into(),
        owner: "t".into(),
        plan,
        inputs: json!({}),
        tag: None,
        parent_run_id: None,
        idempotency_key: None,
        settings: RunSettings::default(),
    }
}

fn commit_failures(rt: &Runtime) -> u64 {
    let text = rt.handle.metrics.render();
    let line = text.lines().find(|l| l.starts_with("aob_commit_failures_total")).unwrap();
    line.split_whitespace().last().unwrap().parse().unwrap()
}

async fn terminal(rt: &Runtime, run_id: &str) -> RunState {
    tokio::time::timeout(DEADLINE, rt.handle.wait_terminal(run_id))
        .await
        .unwrap_or_else(|_| panic!("run {run_id} not finished within {DEADLINE:?}"))
        .unwrap()
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while !ok().await {
        assert!(tokio::time::Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_write_fails_only_its_run_and_its_inputs_take_effect_once_the_store_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aob.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(SqliteOptions::new(&path)).unwrap());
    let clock = Arc::new(Frozen(AtomicI64::new(1_800_000_000_000)));
    let guard = aob_ssrf::Guard::new(aob_ssrf::Policy::default());
    let dispatch = Arc::new(MemoryDispatch::new(aob_dispatch::Options::default()));
    let rt = Runtime::start(Options::default(), store.clone(), dispatch, guard, clock.clone());

    let wait = Workflow::from_value(json!({"nodes": [
        {"id": "sleep", "type": "wait", "config": {"duration_ms": 1000}},
        {"id": "after", "type": "noop"}
    ], "edges": [{"from": "sleep", "to": "after"}]}))
    .unwrap();
    let wait = rt.handle.register(wait, "t").await.unwrap();
    let work = Workflow::from_value(json!({"nodes": [
        {"id": "hold", "type": "wait", "config": {"duration_ms": 1000}},
        {"id": "shape", "type": "transform", "config": {"input": {"n": 1}, "pipeline": [{"step": "jq_transform", "filter": ".n"}]}}
    ], "edges": [{"from": "hold", "to": "shape"}]}))
    .unwrap();
    let work = rt.handle.register(work, "t").await.unwrap();

    let good = ["good-1", "good-2", "good-3"];
    for id in good.iter().take(2) {
        assert_eq!(rt.handle.start(start(id, wait.clone())).await.unwrap().status, RunStatus::Running);
    }
    assert_eq!(rt.handle.start(start("bad-wait", wait.clone())).await.unwrap().status, RunStatus::Running);
    assert_eq!(rt.handle.start(start("good-3", wait.clone())).await.unwrap().status, RunStatus::Running);
    assert_eq!(rt.handle.start(start("bad-work", work.clone())).await.unwrap().status, RunStatus::Running);
    let logged = |id: &'static str| {
        let store = store.clone();
        async move { store.events(id, 0, 1000).await.unwrap() }
    };
    let (wait_before, work_before) = (logged("bad-wait").await, logged("bad-work").await);

    // From now on every write of a `bad-*` run fails inside its savepoint.
    let db = rusqlite::Connection::open(&path).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute_batch("CREATE TRIGGER poison BEFORE UPDATE ON runs WHEN OLD.run_id LIKE 'bad-%' BEGIN SELECT RAISE(ABORT, 'poisoned write'); END;")
        .unwrap();
    let failures = commit_failures(&rt);

    // Every timer is due at once: one batch carries the five transitions.
    clock.0.fetch_add(1_000, Ordering::SeqCst);
    for id in good {
        assert_eq!(terminal(&rt, id).await.status, RunStatus::Completed, "{id}");
    }
    // bad-work's timer fired in the same batch; its transform attempt was never
    // dispatched (the transition that dispatches it was not written).
    wait_for("the poisoned writes to fail", async || commit_failures(&rt) > failures).await;
    for (id, before) in [("bad-wait", &wait_before), ("bad-work", &work_before)] {
        let rec = store.get_run(id).await.unwrap().unwrap();
        assert_eq!(rec.state.status, RunStatus::Running, "{id}");
        assert_eq!(&logged(id).await, before, "{id}: a refused write changed the log");
    }

    // The fault goes; the failed runs' timers were re-armed and fire again.
    db.execute_batch("DROP TRIGGER poison;").unwrap();
    clock.0.fetch_add(10_000, Ordering::SeqCst);
    assert_eq!(terminal(&rt, "bad-wait").await.status, RunStatus::Completed);
    assert_eq!(terminal(&rt, "bad-work").await.status, RunStatus::Completed);
    for id in good.iter().chain(&["bad-wait", "bad-work"]) {
        let events = logged(id).await;
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1, "{id}: gap or duplicate in the log");
        }
        let ends = events.iter().filter(|e| e.kind == "workflow_completed").count();
        assert_eq!(ends, 1, "{id}");
    }
    rt.shutdown().await;
}

/// A completion whose run's write fails is kept and applied once the store takes the
/// write: the attempt does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_whose_write_failed_is_applied_later_without_running_the_attempt_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aob.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(SqliteOptions::new(&path)).unwrap());
    let clock = Arc::new(Frozen(AtomicI64::new(1_800_000_000_000)));
    let guard = aob_ssrf::Guard::new(aob_ssrf::Policy::default());
    let dispatch = Arc::new(MemoryDispatch::new(aob_dispatch::Options::default()));
    let rt = Runtime::start(Options::default(), store.clone(), dispatch, guard, clock.clone());
    let wf = Workflow::from_value(json!({"nodes": [
        {"id": "shape", "type": "transform", "config": {"input": {"n": 1}, "pipeline": [{"step": "jq_transform", "filter": ".n"}]}}
    ]}))
    .unwrap();
    let plan = rt.handle.register(wf, "t").await.unwrap();

    // The poison is in place before the start: the insert passes, every update fails,
    // so the attempt's completion cannot be written.
    let db = rusqlite::Connection::open(&path).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute_batch("CREATE TRIGGER poison BEFORE UPDATE ON runs WHEN OLD.run_id = 'r' BEGIN SELECT RAISE(ABORT, 'poisoned write'); END;")
        .unwrap();
    rt.handle.start(start("r", plan)).await.unwrap();
    wait_for("the completion's write to fail", async || commit_failures(&rt) >= 1).await;
    assert_eq!(store.get_run("r").await.unwrap().unwrap().state.status, RunStatus::Running);

    db.execute_batch("DROP TRIGGER poison;").unwrap();
    clock.0.fetch_add(10_000, Ordering::SeqCst);
    let done = terminal(&rt, "r").await;
    assert_eq!(done.status, RunStatus::Completed);
    let events = store.events("r", 0, 1000).await.unwrap();
    let started: Vec<_> = events.iter().filter(|e| e.kind == "node_started").collect();
    assert_eq!(started.len(), 1, "the attempt ran once: {events:#?}");
    assert_eq!(events.iter().filter(|e| e.kind == "node_completed").count(), 1);
    rt.shutdown().await;
}
