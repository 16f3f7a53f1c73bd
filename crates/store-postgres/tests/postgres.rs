//! The store conformance suite and PostgreSQL-specific checks, against a real server:
//! `AOB_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`). Every
//! test gets a schema of its own (`aob_test_<random>`), dropped when the test ends, so
//! tests run in parallel without seeing each other. An unreachable server fails the tests.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use aob_engine::{Event, RunState, RunStatus};
use aob_store::*;
use aob_store_postgres::{Options, PgStore};

fn url() -> String {
    std::env::var("AOB_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A store in a schema of its own; the schema is dropped with it (also when the test
/// panics, since `Drop` runs while unwinding).
struct TestStore {
    store: PgStore,
    url: String,
    schema: String,
}

impl Deref for TestStore {
    type Target = PgStore;
    fn deref(&self) -> &PgStore {
        &self.store
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // The test's runtime is blocked in this call: drop the schema from a runtime of
        // our own on another thread.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(PgStore::drop_schema(&url, &schema)).ok()
        })
        .join();
        if !matches!(done, Ok(Some(()))) {
            eprintln!("could not drop test schema {}", self.schema);
        }
    }
}

async fn connect(schema: &str, max_connections: u32) -> TestStore {
    let url = url();
    let opts = Options {
        url: url.clone(),
        max_connections,
        schema: Some(schema.to_string()),
    };
    match PgStore::connect(opts).await {
        Ok(store) => TestStore {
            store,
            url,
            schema: schema.to_string(),
        },
        Err(e) => panic!(
            "PostgreSQL is required for these tests and is not usable: {e}\n\
             (set AOB_TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test)"
        ),
    }
}

fn schema_name() -> String {
    format!("aob_test_{}", uuid::Uuid::new_v4().simple())
}

async fn fresh_with(max_connections: u32) -> TestStore {
    connect(&schema_name(), max_connections).await
}

async fn fresh() -> TestStore {
    fresh_with(4).await
}

aob_store::store_conformance!(fresh());

fn state(run_id: &str, status: RunStatus, seq: u64) -> RunState {
    RunState {
        run_id: run_id.into(),
        status,
        inputs: json!({}),
        nodes: vec![],
        edges: vec![],
        seq,
        paused: false,
        error: None,
        outputs: None,
        created_at: 1,
        started_at: None,
        completed_at: None,
        patch_seq: 0,
        settings: Default::default(),
    }
}

fn write(run_id: &str, owner: &str, create: bool, seqs: std::ops::RangeInclusive<u64>) -> RunWrite {
    let events: Vec<Event> = seqs
        .clone()
        .map(|s| Event {
            seq: s,
            kind: "node_completed".into(),
            node_id: None,
            attempt: None,
            at: 1,
            data: json!({}),
        })
        .collect();
    let st = state(run_id, RunStatus::Running, *seqs.end());
    RunWrite {
        create: create.then(|| NewRun {
            owner: owner.into(),
            workflow_hash: "sha256:abc".into(),
            tag: None,
            parent_run_id: None,
            idempotency_key: None,
        }),
        state_json: serde_json::to_string(&st).unwrap(),
        state: st,
        events: stored_events(run_id, &events),
        current_hash: None,
        patches: vec![],
        fence: None,
    }
}

#[tokio::test]
async fn unreachable_server_is_reported_as_unavailable() {
    let t = Instant::now();
    let opts = Options::new("postgres://postgres@127.0.0.1:1/test");
    match PgStore::connect(opts).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("127.0.0.1:1"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "a refused connection fails fast");
    assert!(matches!(PgStore::connect(Options::new("not a url")).await, Err(StoreError::Backend(_))));
    let mut bad = Options::new(url());
    bad.schema = Some("x; DROP SCHEMA public".into());
    assert!(matches!(PgStore::connect(bad).await, Err(StoreError::Backend(_))));
}

#[tokio::test]
async fn migrations_apply_once_and_reconnecting_keeps_data() {
    let s = fresh().await;
    s.commit(vec![write("m1", "alice", true, 1..=2)]).await.unwrap();
    // A second store (another process, a restart) on the same schema migrates nothing.
    let again = PgStore::connect(Options {
        url: s.url.clone(),
        max_connections: 2,
        schema: Some(s.schema.clone()),
    })
    .await
    .unwrap();
    assert_eq!(again.events("m1", 0, 10).await.unwrap().len(), 2);
    let applied: Vec<i64> = sqlx_core::query_scalar::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(again.pool())
        .await
        .unwrap();
    assert_eq!(applied, (1..=aob_store_postgres::MIGRATIONS.len() as i64).collect::<Vec<_>>());
    again.close().await;
}

#[tokio::test]
async fn schemas_are_isolated() {
    let (a, b) = (fresh().await, fresh().await);
    a.commit(vec![write("iso", "alice", true, 1..=1)]).await.unwrap();
    assert!(a.get_run("iso").await.unwrap().is_some());
    assert!(b.get_run("iso").await.unwrap().is_none());
    b.commit(vec![write("iso", "bob", true, 1..=1)]).await.unwrap();
    assert_eq!(b.get_run("iso").await.unwrap().unwrap().owner, "bob");
}

#[tokio::test]
async fn event_bodies_are_served_byte_for_byte() {
    let s = fresh().await;
    let mut w = write("b1", "alice", true, 1..=1);
    let body = "{\"z\":1,  \"a\" : [3,2,1], \"s\":\"\u{fc}n\u{ef}\\u0000\\n\", \"n\":1.50}";
    w.events[0].body = body.to_string();
    s.commit(vec![w]).await.unwrap();
    assert_eq!(s.events("b1", 0, 10).await.unwrap()[0].body, body);
    assert_eq!(s.owner_events("alice", 0, 10).await.unwrap()[0].1.body, body);
    // Blob content keeps its key order too.
    let content: serde_json::Value = serde_json::from_str(r#"{"zeta":1,"alpha":{"y":2,"b":3}}"#).unwrap();
    s.put_blob(Blob {
        hash: "sha256:o".into(),
        kind: "workflow".into(),
        content: content.clone(),
        created_at: 1,
    })
    .await
    .unwrap();
    let got = s.get_blob("sha256:o").await.unwrap().unwrap().content;
    assert_eq!(got.to_string(), content.to_string());
}

#[tokio::test]
async fn one_batch_collapses_repeated_runs_and_fails_whole() {
    let s = fresh().await;
    // Create and two updates of one run in one batch, with another run in between.
    let mut last = write("c1", "alice", false, 4..=5);
    last.state.status = RunStatus::Completed;
    last.state_json = serde_json::to_string(&last.state).unwrap();
    last.current_hash = Some("sha256:new".into());
    let batch = vec![
        write("c1", "alice", true, 1..=2),
        write("c2", "alice", true, 1..=1),
        write("c1", "alice", false, 3..=3),
        last,
    ];
    s.commit(batch).await.unwrap();
    let r = s.get_run("c1").await.unwrap().unwrap();
    assert_eq!((r.state.seq, r.state.status, r.plan_hash()), (5, RunStatus::Completed, "sha256:new"));
    assert_eq!(
        s.events("c1", 0, 10).await.unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(!s.active_runs().await.unwrap().contains(&"c1".to_string()));
    // Positions follow the batch's order.
    let pos: Vec<(String, u64)> = s
        .owner_events("alice", 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| (e.run_id, e.seq))
        .collect();
    assert_eq!(pos[..4], [("c1".into(), 1), ("c1".into(), 2), ("c2".into(), 1), ("c1".into(), 3)]);
    // An update of a run that does not exist fails the batch and writes nothing.
    let bad = vec![write("c3", "alice", true, 1..=1), write("ghost", "alice", false, 2..=2)];
    assert!(matches!(s.commit(bad).await, Err(StoreError::NotFound(_))));
    assert!(s.get_run("c3").await.unwrap().is_none());
    // So does creating a run that exists.
    assert!(matches!(s.commit(vec![write("c2", "alice", true, 9..=9)]).await, Err(StoreError::Conflict(_))));
    assert_eq!(s.events("c2", 0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn large_batches_commit_in_one_round() {
    let s = fresh().await;
    let batch: Vec<RunWrite> = (0..500).map(|i| write(&format!("big{i}"), "bulk", true, 1..=4)).collect();
    let t = Instant::now();
    s.commit(batch).await.unwrap();
    let took = t.elapsed();
    assert_eq!(s.owner_events("bulk", 0, 10_000).await.unwrap().len(), 2000);
    assert_eq!(s.active_runs().await.unwrap().len(), 500);
    eprintln!("500 runs + 2000 events in one commit: {took:?}");
}

/// Readers that page through `owner_events` while writers commit concurrently see every
/// event exactly once: positions become visible in increasing order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owner_positions_never_skip_under_concurrent_commits() {
    let s = Arc::new(fresh_with(12).await);
    const WRITERS: usize = 8;
    const STEPS: u64 = 25;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let run = format!("w{w}");
            s.commit(vec![write(&run, "race", true, 1..=1)]).await.unwrap();
            for step in 1..STEPS {
                s.commit(vec![write(&run, "race", false, step + 1..=step + 1)]).await.unwrap();
            }
        }));
    }
    let total = WRITERS * STEPS as usize;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (s, done) = (s.clone(), done.clone());
        tokio::spawn(async move {
            let (mut seen, mut cursor) = (HashSet::new(), 0i64);
            loop {
                // Read the flag first: a page read after the writers finished that comes
                // back empty means the reader has caught up for good.
                let finished = done.load(Ordering::SeqCst);
                let page = s.owner_events("race", cursor, 7).await.unwrap();
                if page.is_empty() && finished {
                    return seen.len();
                }
                for (id, e) in page {
                    assert!(id > cursor);
                    cursor = id;
                    assert!(seen.insert((e.run_id, e.seq)), "an event was served twice");
                }
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    assert_eq!(reader.await.unwrap(), total, "the cursor reader missed events");
    for w in 0..WRITERS {
        let seqs: Vec<u64> = s.events(&format!("w{w}"), 0, 100).await.unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=STEPS).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tag_writers_and_idempotency_claims() {
    let s = Arc::new(fresh_with(8).await);
    let up = |expected: Option<u64>, by: String| TagUpdate {
        owner: "o".into(),
        name: "t".into(),
        hash: format!("h-{by}"),
        expected_version: expected,
        by,
        op: "move".into(),
        at: 1,
        description: None,
    };
    // Creating with "must not exist": exactly one wins.
    let creates: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn({
                let (s, u) = (s.clone(), up(Some(0), format!("c{i}")));
                async move { s.set_tag(u).await }
            })
        })
        .collect();
    let mut wins = 0;
    for c in creates {
        match c.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(wins, 1);
    // Unconditional moves all land, each with its own version.
    let moves: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn({
                let (s, u) = (s.clone(), up(None, format!("m{i}")));
                async move { s.set_tag(u).await.unwrap().version }
            })
        })
        .collect();
    let mut versions = Vec::new();
    for m in moves {
        versions.push(m.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (2..=9).collect::<Vec<_>>());
    let h = s.tag_history("o", "t").await.unwrap();
    assert_eq!(h.iter().map(|v| v.seq).collect::<Vec<_>>(), (0..9).collect::<Vec<_>>());

    let claims: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn({
                let s = s.clone();
                let rec = IdempotencyRecord {
                    tenant: "t".into(),
                    key: "k".into(),
                    request: "POST /x".into(),
                    body_hash: "b".into(),
                    status: None,
                    response: None,
                    created_at: 100 + i,
                };
                async move { s.claim_idempotency(rec, 0, 0).await.unwrap() }
            })
        })
        .collect();
    let mut claimed = 0;
    for c in claims {
        if c.await.unwrap().is_none() {
            claimed += 1;
        }
    }
    assert_eq!(claimed, 1, "one request holds the key");
}

/// Owners racing for the same free shards: each shard goes to exactly one, at epoch 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_give_each_shard_one_owner() {
    let s = Arc::new(fresh_with(8).await);
    let shards: Vec<u32> = (0..16).collect();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (s, shards) = (s.clone(), shards.clone());
            // Different orders: claims still lock rows in shard order, so none deadlocks.
            let shards: Vec<u32> = if i % 2 == 0 { shards } else { shards.into_iter().rev().collect() };
            tokio::spawn(async move { s.claim_shards(&format!("o{i}"), &shards, 1000, 60_000).await.unwrap() })
        })
        .collect();
    let mut won = Vec::new();
    for t in tasks {
        won.extend(t.await.unwrap());
    }
    won.sort_by_key(|l| l.shard);
    assert_eq!(won.iter().map(|l| l.shard).collect::<Vec<_>>(), shards, "every shard claimed exactly once");
    assert!(won.iter().all(|l| l.epoch == 1));
    assert_eq!(s.shard_leases().await.unwrap(), won);
}

/// Once a takeover's claim has returned, the old owner lands nothing more: a commit in
/// flight during the claim holds the lease row `FOR SHARE`, so the claim waits for it,
/// and every later commit sees the new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_of_the_old_owner_lands_after_a_takeover() {
    let s = Arc::new(fresh_with(6).await);
    assert_eq!(s.claim_shards("a", &[3], 0, 1000).await.unwrap()[0].epoch, 1);
    let fence = |mut w: RunWrite, epoch: u64| {
        w.fence = Some(Fence { shard: 3, epoch });
        w
    };
    s.commit(vec![fence(write("t1", "alice", true, 1..=1), 1)]).await.unwrap();
    let old_owner = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut seq = 2;
            loop {
                match s.commit(vec![fence(write("t1", "alice", false, seq..=seq), 1)]).await {
                    Ok(()) => seq += 1,
                    Err(StoreError::Fenced(_)) => return seq - 1,
                    Err(e) => panic!("{e}"),
                }
            }
        })
    };
    while s.get_run("t1").await.unwrap().unwrap().state.seq < 20 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(s.claim_shards("b", &[3], 1000, 1000).await.unwrap()[0].epoch, 2);
    let seen = s.get_run("t1").await.unwrap().unwrap().state.seq;
    let last = old_owner.await.unwrap();
    assert_eq!(last, seen, "a commit of the old owner landed after the takeover returned");
    assert_eq!(s.get_run("t1").await.unwrap().unwrap().state.seq, seen);
    assert_eq!(s.events("t1", 0, 10_000).await.unwrap().len() as u64, seen);
    s.commit(vec![fence(write("t1", "alice", false, seen + 1..=seen + 1), 2)]).await.unwrap();
}

/// A process paused in the middle of a transaction (SIGSTOP, a stalled VM) must not
/// hold its locks, and with them every takeover, until it wakes up: the server ends
/// the idle transaction (`idle_in_transaction_session_timeout`), and the claim goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_does_not_block_a_takeover_for_good() {
    use sqlx_core::executor::Executor;
    let s = fresh().await;
    assert_eq!(s.claim_shards("a", &[0], 1000, 1000).await.unwrap().len(), 1);
    // "a" froze while committing: its transaction holds the lease row FOR SHARE.
    let mut tx = s.pool().begin().await.unwrap();
    (&mut *tx).execute("SELECT 1 FROM shard_leases WHERE shard = 0 FOR SHARE").await.unwrap();
    let t = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(30), s.claim_shards("b", &[0], 5000, 1000))
        .await
        .expect("the takeover waited for the frozen transaction for good")
        .unwrap();
    assert_eq!(got.len(), 1, "b took the shard over");
    assert_eq!(got[0].epoch, 2);
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?}", t.elapsed());
    // The frozen transaction is gone: waking up, it can write nothing more.
    assert!((&mut *tx).execute("SELECT 1").await.is_err(), "the idle transaction was not ended");
}
