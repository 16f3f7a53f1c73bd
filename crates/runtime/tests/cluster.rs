//! Two cluster members in one test process, over one store (SQLite here; the stores
//! pass one conformance suite, fencing included) and in-process control streams and
//! bus: a member that lost its shard lease without noticing cannot commit, and the
//! lease's new holder takes the run over from the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use aob_dispatch::{Bus, Dispatch, MemoryBus, MemoryDispatch};
use aob_engine::{Decision, RunSettings, RunStatus};
use aob_model::Workflow;
use aob_runtime::{Clock, ClusterOptions, Options, Roles, Runtime, RuntimeError, StartRun, SystemClock};
use aob_store::Store;
use aob_store_sqlite::{Options as SqliteOptions, SqliteStore};

struct Shared {
    store: Arc<dyn Store>,
    work: Arc<dyn Dispatch>,
    control: Arc<dyn Dispatch>,
    bus: Arc<dyn Bus>,
    _dir: tempfile::TempDir,
}

fn shared() -> Shared {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("aob.db"))).unwrap();
    let visibility = aob_dispatch::Options {
        visibility: Duration::from_millis(500),
        max_deliveries: 1000,
    };
    Shared {
        store: Arc::new(store),
        work: Arc::new(MemoryDispatch::new(visibility.clone())),
        control: Arc::new(MemoryDispatch::new(visibility)),
        bus: Arc::new(MemoryBus::default()),
        _dir: dir,
    }
}

async fn member(s: &Shared, id: &str, lease_ttl: Duration) -> Runtime {
    let cluster = ClusterOptions {
        id: id.into(),
        roles: Roles::all(),
        addr: "127.0.0.1:0".into(),
        shards: 1,
        lease_ttl,
        call_timeout: Duration::from_secs(2),
        control: s.control.clone(),
        bus: s.bus.clone(),
    };
    let guard = aob_ssrf::Guard::new(aob_ssrf::Policy::default());
    Runtime::start_cluster(Options::default(), cluster, s.store.clone(), s.work.clone(), guard, Arc::new(SystemClock))
        .await
        .unwrap()
}

async fn until_held(rt: &Runtime) {
    for _ in 0..200 {
        if !rt.handle.shards_held().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no shard lease within 2 s");
}

/// A start of `plan` for tenant `t`, without inputs.
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

fn approve(by: &str) -> Decision {
    Decision {
        approved: true,
        comment: None,
        by: by.into(),
        data: json!({}),
    }
}

fn commit_failures(rt: &Runtime) -> u64 {
    let text = rt.handle.metrics.render();
    let line = text.lines().find(|l| l.starts_with("aob_commit_failures_total")).unwrap();
    line.split_whitespace().last().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_lost_its_lease_cannot_commit_and_the_new_holder_takes_over() {
    let s = shared();
    // A long TTL: member A renews only at start, so it keeps believing it holds the
    // shard after the takeover below (a process paused past its lease, then resumed).
    let a = member(&s, "a", Duration::from_secs(60)).await;
    until_held(&a).await;

    let wf = Workflow::from_value(json!({"nodes": [
        {"id": "ask", "type": "hitl", "config": {"message": "ok?"}},
        {"id": "done", "type": "noop"}
    ], "edges": [{"from": "ask", "to": "done"}]}))
    .unwrap();
    let plan = a.handle.register(wf, "t").await.unwrap();
    let run_id = "run-fenced".to_string();
    let st = a.handle.start(start(&run_id, plan)).await.unwrap();
    assert_eq!(st.status, RunStatus::WaitingForApproval);
    let before = s.store.get_run(&run_id).await.unwrap().unwrap();
    let events_before = s.store.events(&run_id, 0, 1000).await.unwrap().len();

    // B takes the shard over as if A's lease had expired (B's clock is past it).
    let later = SystemClock.now_ms() + 120_000;
    let got = s.store.claim_shards("b", &[0], later, 120_000).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].epoch, 2, "a takeover moves the epoch up");

    // A still believes it holds epoch 1: its transition is refused inside the commit.
    let err = a.handle.decide(&run_id, "ask", 0, approve("alice")).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::Unavailable(_) | RuntimeError::NotOwner(_)),
        "unexpected error: {err}"
    );
    assert!(commit_failures(&a) >= 1, "the stale owner's commit was not refused");
    let after = s.store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(after.state.status, RunStatus::WaitingForApproval);
    assert_eq!(after.state.seq, before.state.seq, "the stale owner wrote the run");
    assert_eq!(s.store.events(&run_id, 0, 1000).await.unwrap().len(), events_before);

    // B (the lease holder) starts, recovers the run from the store and finishes it.
    let b = member(&s, "b", Duration::from_secs(60)).await;
    until_held(&b).await;
    assert!(b.handle.decide(&run_id, "ask", 0, approve("bob")).await.unwrap());
    let done = b.handle.wait_terminal(&run_id).await.unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    let events = s.store.events(&run_id, 0, 1000).await.unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "gap or duplicate in the log");
    }
    let decided: Vec<_> = events.iter().filter(|e| e.kind == "approval_decided").collect();
    assert_eq!(decided.len(), 1, "one decision, by the lease holder");
    assert!(decided[0].body.contains("bob"));
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_the_owner_from_a_member_without_the_shard() {
    let s = shared();
    let owner = member(&s, "owner", Duration::from_secs(60)).await;
    until_held(&owner).await;
    // An API-only member: no engine, no worker; its calls go through the control stream.
    let cluster = ClusterOptions {
        id: "front".into(),
        roles: Roles::parse("api").unwrap(),
        addr: "127.0.0.1:0".into(),
        shards: 1,
        lease_ttl: Duration::from_secs(60),
        call_timeout: Duration::from_secs(5),
        control: s.control.clone(),
        bus: s.bus.clone(),
    };
    let guard = aob_ssrf::Guard::new(aob_ssrf::Policy::default());
    let front = Runtime::start_cluster(Options::default(), cluster, s.store.clone(), s.work.clone(), guard, Arc::new(SystemClock))
        .await
        .unwrap();
    let wf = Workflow::from_value(json!({"nodes": [
        {"id": "a", "type": "noop", "config": {"output": {"x": 1}}},
        {"id": "b", "type": "transform", "config": {"pipeline": [{"step": "jq_transform", "filter": "."}]}}
    ], "edges": [{"from": "a", "to": "b"}]}))
    .unwrap();
    let plan = front.handle.register(wf, "t").await.unwrap();
    let mut live = front.handle.hub.subscribe_run("r-front");
    front.handle.start(start("r-front", plan)).await.unwrap();
    let done = front.handle.wait_terminal("r-front").await.unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    // The owner's events reached the front member's hub through the bus, in order.
    let mut seqs = Vec::new();
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(500), live.recv()).await {
        seqs.push(e.event.seq);
        if e.terminal {
            break;
        }
    }
    assert!(!seqs.is_empty(), "no live event crossed the bus");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "live events out of order: {seqs:?}");
    // Cancelling a finished run goes to the owner and comes back as its answer.
    let st = front
        .handle
        .control("r-front", aob_engine::Input::Cancel { reason: "late".into() })
        .await
        .unwrap();
    assert_eq!(st.status, RunStatus::Completed);
    front.shutdown().await;
    owner.shutdown().await;
}
