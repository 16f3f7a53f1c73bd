//! The conformance suite every [`Store`] backend runs. Use [`store_conformance!`]
//! in the backend's tests with an expression that yields a fresh, empty store.
#![allow(clippy::unwrap_used)] // test code: a failed call is a failed check

use serde_json::json;

use aob_engine::{Event, RunState, RunStatus};

use crate::*;

fn state(run_id: &str, status: RunStatus, seq: u64, at: i64) -> RunState {
    RunState {
        run_id: run_id.into(),
        status,
        inputs: json!({"x": 1}),
        nodes: vec![],
        edges: vec![],
        seq,
        paused: false,
        error: None,
        outputs: None,
        created_at: at,
        started_at: None,
        completed_at: None,
        patch_seq: 0,
        settings: Default::default(),
    }
}

fn event(seq: u64, kind: &str) -> Event {
    Event {
        seq,
        kind: kind.into(),
        node_id: None,
        attempt: None,
        at: 1_700_000_000_000,
        data: json!({}),
    }
}

fn write(run_id: &str, owner: &str, create: bool, status: RunStatus, seqs: std::ops::RangeInclusive<u64>, at: i64) -> RunWrite {
    let events: Vec<Event> = seqs.clone().map(|s| event(s, "node_completed")).collect();
    let st = state(run_id, status, *seqs.end(), at);
    RunWrite {
        create: create.then(|| NewRun {
            owner: owner.into(),
            workflow_hash: "sha256:abc".into(),
            tag: Some("t1".into()),
            parent_run_id: None,
            idempotency_key: Some(format!("key-{run_id}")),
        }),
        state_json: serde_json::to_string(&st).unwrap_or_default(),
        state: st,
        events: stored_events(run_id, &events),
        current_hash: None,
        patches: vec![],
        fence: None,
    }
}

fn fenced(mut w: RunWrite, shard: u32, epoch: u64) -> RunWrite {
    w.fence = Some(Fence { shard, epoch });
    w
}

/// `(shard, owner, epoch, expires_at)` of leases, for compact assertions.
fn leases(l: &[ShardLease]) -> Vec<(u32, &str, u64, i64)> {
    l.iter().map(|l| (l.shard, l.owner.as_str(), l.epoch, l.expires_at)).collect()
}

pub async fn blobs(s: &dyn Store) {
    let b = Blob {
        hash: "sha256:1".into(),
        kind: "workflow".into(),
        content: json!({"nodes": []}),
        created_at: 5,
    };
    s.put_blob(b.clone()).await.unwrap();
    s.put_blob(b.clone()).await.unwrap();
    assert_eq!(s.get_blob("sha256:1").await.unwrap(), Some(b));
    assert_eq!(s.get_blob("sha256:2").await.unwrap(), None);
}

pub async fn tags(s: &dyn Store) {
    let up = |hash: &str, expected: Option<u64>| TagUpdate {
        owner: "alice".into(),
        name: "release/v1".into(),
        hash: hash.into(),
        expected_version: expected,
        by: "alice".into(),
        op: "create".into(),
        at: 10,
        description: Some(format!("to {hash}")),
    };
    let t = s.set_tag(up("h1", Some(0))).await.unwrap();
    assert_eq!(t.version, 1);
    assert!(matches!(s.set_tag(up("h2", Some(0))).await, Err(StoreError::Conflict(_))));
    let t = s.set_tag(up("h2", Some(1))).await.unwrap();
    assert_eq!((t.version, t.hash.as_str()), (2, "h2"));
    assert!(matches!(s.set_tag(up("h3", Some(1))).await, Err(StoreError::Conflict(_))));
    let t = s.set_tag(up("h3", None)).await.unwrap();
    assert_eq!(t.version, 3);
    let h = s.tag_history("alice", "release/v1").await.unwrap();
    assert_eq!(
        h.iter().map(|v| (v.seq, v.hash.as_str())).collect::<Vec<_>>(),
        vec![(0, "h1"), (1, "h2"), (2, "h3")]
    );
    assert_eq!(h[1].description.as_deref(), Some("to h2"));
    assert_eq!(h.last().unwrap().seq, t.version - 1, "the move that made version v has seq v - 1");
    assert_eq!(s.get_tag("bob", "release/v1").await.unwrap(), None);
    assert_eq!(s.list_tags("alice").await.unwrap().len(), 1);
    assert!(s.delete_tag("alice", "release/v1").await.unwrap());
    assert!(!s.delete_tag("alice", "release/v1").await.unwrap());
    assert_eq!(s.get_tag("alice", "release/v1").await.unwrap(), None);
}

pub async fn runs_and_events(s: &dyn Store) {
    s.commit(vec![write("r1", "alice", true, RunStatus::Running, 1..=2, 100)]).await.unwrap();
    s.commit(vec![
        write("r1", "alice", false, RunStatus::Running, 3..=5, 100),
        write("r2", "bob", true, RunStatus::Running, 1..=1, 200),
    ])
    .await
    .unwrap();
    let r = s.get_run("r1").await.unwrap().unwrap();
    assert_eq!((r.owner.as_str(), r.state.seq, r.tag.as_deref()), ("alice", 5, Some("t1")));
    let ev = s.events("r1", 2, 100).await.unwrap();
    assert_eq!(ev.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
    let body: serde_json::Value = serde_json::from_str(&ev[0].body).unwrap();
    assert_eq!(body["run_id"], "r1");
    assert_eq!(body["seq"], 3);
    assert_eq!(s.events("r1", 0, 2).await.unwrap().len(), 2);
    assert_eq!(s.run_by_idempotency_key("alice", "key-r1").await.unwrap().as_deref(), Some("r1"));
    assert_eq!(s.run_by_idempotency_key("bob", "key-r1").await.unwrap(), None);
    assert!(s.get_run("nope").await.unwrap().is_none());
}

/// A batch with a duplicate event seq fails as a whole and changes nothing.
pub async fn commit_is_atomic(s: &dyn Store) {
    s.commit(vec![write("a1", "alice", true, RunStatus::Running, 1..=3, 100)]).await.unwrap();
    let bad = vec![
        write("a2", "alice", true, RunStatus::Running, 1..=1, 100),
        write("a1", "alice", false, RunStatus::Completed, 3..=4, 100),
    ];
    assert!(s.commit(bad).await.is_err());
    assert!(s.get_run("a2").await.unwrap().is_none());
    let r = s.get_run("a1").await.unwrap().unwrap();
    assert_eq!((r.state.seq, r.state.status), (3, RunStatus::Running));
    assert_eq!(s.events("a1", 0, 100).await.unwrap().len(), 3);
}

/// `commit_each`: a write with a duplicate event seq fails alone; the writes before
/// and after it in the same batch are stored, and the failed run is left as it was.
pub async fn commit_each_isolates_writes(s: &dyn Store) {
    s.commit(vec![write("e1", "alice", true, RunStatus::Running, 1..=2, 100)]).await.unwrap();
    assert!(s.commit_each(vec![]).await.is_empty());
    let results = s
        .commit_each(vec![
            write("e2", "alice", true, RunStatus::Running, 1..=1, 100),
            write("e1", "alice", false, RunStatus::Completed, 2..=3, 100),
            write("e3", "alice", true, RunStatus::Completed, 1..=2, 100),
        ])
        .await;
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok(), "{results:?}");
    assert!(matches!(results[1], Err(StoreError::Conflict(_))), "{results:?}");
    assert!(results[2].is_ok(), "{results:?}");
    let r = s.get_run("e1").await.unwrap().unwrap();
    assert_eq!((r.state.seq, r.state.status), (2, RunStatus::Running));
    assert_eq!(s.events("e1", 0, 100).await.unwrap().len(), 2);
    assert_eq!(s.events("e2", 0, 100).await.unwrap().len(), 1);
    assert_eq!(s.get_run("e3").await.unwrap().unwrap().state.status, RunStatus::Completed);
    assert_eq!(s.events("e3", 0, 100).await.unwrap().len(), 2);
}

pub async fn listing(s: &dyn Store) {
    for i in 0..5 {
        let status = if i % 2 == 0 { RunStatus::Completed } else { RunStatus::Running };
        s.commit(vec![write(&format!("l{i}"), "carol", true, status, 1..=1, 1000 + i)]).await.unwrap();
    }
    s.commit(vec![write("other", "dave", true, RunStatus::Running, 1..=1, 5000)]).await.unwrap();
    let all = s
        .list_runs(RunFilter {
            owner: Some("carol".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), vec!["l4", "l3", "l2", "l1", "l0"]);
    let page = s
        .list_runs(RunFilter {
            owner: Some("carol".into()),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    let last = &page[1];
    let next = s
        .list_runs(RunFilter {
            owner: Some("carol".into()),
            limit: 10,
            before: Some((last.created_at, last.run_id.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), vec!["l2", "l1", "l0"]);
    let running = s
        .list_runs(RunFilter {
            owner: Some("carol".into()),
            status: Some(RunStatus::Running),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.len(), 2);
    let mut active = s.active_runs().await.unwrap();
    active.sort();
    assert_eq!(active, vec!["l1", "l3", "other"]);
    let ev = s.owner_events("carol", 0, 100).await.unwrap();
    assert_eq!(ev.len(), 5);
    assert!(ev.windows(2).all(|w| w[0].0 < w[1].0));
    let after = s.owner_events("carol", ev[2].0, 100).await.unwrap();
    assert_eq!(after.len(), 2);
}

pub async fn keys_and_grants(s: &dyn Store) {
    let key = |id: &str, tenant: &str| ApiKey {
        id: id.into(),
        tenant: tenant.into(),
        user: "u".into(),
        role: "member".into(),
        name: "ci".into(),
        hash: format!("h-{id}"),
        created_at: 1,
        revoked_at: None,
    };
    s.put_key(key("k1", "t1")).await.unwrap();
    s.put_key(key("k2", "t2")).await.unwrap();
    assert!(s.put_key(key("k1", "t9")).await.is_err(), "key ids are unique");
    assert_eq!(s.get_key("k1").await.unwrap().unwrap().tenant, "t1");
    assert_eq!(s.list_keys(Some("t2")).await.unwrap().len(), 1);
    assert_eq!(s.list_keys(None).await.unwrap().len(), 2);
    assert!(s.revoke_key("k1", 5).await.unwrap());
    assert!(!s.revoke_key("k1", 6).await.unwrap());
    assert!(!s.revoke_key("nope", 6).await.unwrap());
    assert_eq!(s.get_key("k1").await.unwrap().unwrap().revoked_at, Some(5));
    s.grant_blob("sha256:x", "t1").await.unwrap();
    s.grant_blob("sha256:x", "t1").await.unwrap();
    assert!(s.blob_granted("sha256:x", "t1").await.unwrap());
    assert!(!s.blob_granted("sha256:x", "t2").await.unwrap());
}

pub async fn patches(s: &dyn Store) {
    s.commit(vec![write("p1", "alice", true, RunStatus::Running, 1..=1, 100)]).await.unwrap();
    let rec = |seq: u64, status: &str| PatchRecord {
        run_id: "p1".into(),
        seq,
        status: status.into(),
        author: "alice".into(),
        description: "d".into(),
        node_id: Some("a".into()),
        operations: json!([{"op": "add_node"}]),
        base_hash: "sha256:base".into(),
        result_hash: None,
        created_at: 5,
        decided_at: None,
        decided_by: None,
        reason: None,
    };
    let mut w = write("p1", "alice", false, RunStatus::Running, 2..=2, 100);
    w.patches = vec![rec(1, "pending")];
    s.commit(vec![w]).await.unwrap();
    let mut w = write("p1", "alice", false, RunStatus::Running, 3..=3, 100);
    let mut applied = rec(1, "applied");
    applied.result_hash = Some("sha256:new".into());
    w.patches = vec![applied.clone(), rec(2, "rejected")];
    w.current_hash = Some("sha256:new".into());
    s.commit(vec![w]).await.unwrap();
    let all = s.list_patches("p1").await.unwrap();
    assert_eq!(
        all.iter().map(|p| (p.seq, p.status.as_str())).collect::<Vec<_>>(),
        vec![(1, "applied"), (2, "rejected")]
    );
    assert_eq!(s.get_patch("p1", 1).await.unwrap(), Some(applied));
    assert_eq!(s.get_patch("p1", 9).await.unwrap(), None);
    let r = s.get_run("p1").await.unwrap().unwrap();
    assert_eq!((r.workflow_hash.as_str(), r.plan_hash()), ("sha256:abc", "sha256:new"));
}

pub async fn idempotency(s: &dyn Store) {
    let rec = |tenant: &str, key: &str, at: i64| IdempotencyRecord {
        tenant: tenant.into(),
        key: key.into(),
        request: "POST /api/v1/runs".into(),
        body_hash: "b1".into(),
        status: None,
        response: None,
        created_at: at,
    };
    let first = rec("t1", "k", 100);
    assert_eq!(s.claim_idempotency(first.clone(), 0, 0).await.unwrap(), None);
    // In progress: a second claim sees the first.
    let held = s.claim_idempotency(rec("t1", "k", 101), 0, 0).await.unwrap().unwrap();
    assert_eq!((held.status, held.created_at), (None, 100));
    // Keys are per tenant.
    assert_eq!(s.claim_idempotency(rec("t2", "k", 101), 0, 0).await.unwrap(), None);
    s.complete_idempotency(&first, 201, b"{\"a\":1}".to_vec()).await.unwrap();
    let done = s.claim_idempotency(rec("t1", "k", 102), 0, 0).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.response.as_deref(), done.body_hash.as_str()),
        (Some(201), Some(&b"{\"a\":1}"[..]), "b1")
    );
    // Expired: a completed record older than `completed_since` is replaced.
    assert_eq!(s.claim_idempotency(rec("t1", "k", 200), 150, 0).await.unwrap(), None);
    // A stale claim still in progress (its request died) is taken over.
    let taken = rec("t1", "k", 300);
    assert_eq!(s.claim_idempotency(taken.clone(), 0, 250).await.unwrap(), None);
    // Completing or releasing the replaced claim changes nothing.
    s.complete_idempotency(&rec("t1", "k", 200), 500, vec![]).await.unwrap();
    s.release_idempotency(&rec("t1", "k", 200)).await.unwrap();
    assert_eq!(s.claim_idempotency(rec("t1", "k", 301), 0, 0).await.unwrap().unwrap().created_at, 300);
    // Released: the key is free again.
    s.release_idempotency(&taken).await.unwrap();
    assert_eq!(s.claim_idempotency(rec("t1", "k", 400), 0, 0).await.unwrap(), None);
    assert_eq!(s.purge_idempotency(150).await.unwrap(), 1, "t2's record from 101 is purged");
    assert_eq!(s.claim_idempotency(rec("t2", "k", 500), 0, 0).await.unwrap(), None);
}

/// Shard leases: first claim at epoch 1, renewals keep the epoch, takeovers (after
/// expiry or release) move it up by one, an unexpired lease of another owner is left alone.
pub async fn shard_leases(s: &dyn Store) {
    assert!(s.shard_leases().await.unwrap().is_empty());
    let l = s.claim_shards("a", &[3], 1000, 100).await.unwrap();
    assert_eq!(leases(&l), vec![(3, "a", 1, 1100)], "a first claim gets epoch 1");
    let l = s.claim_shards("a", &[3], 1050, 100).await.unwrap();
    assert_eq!(leases(&l), vec![(3, "a", 1, 1150)], "a renewal keeps the epoch and extends the expiry");
    assert!(s.claim_shards("b", &[3], 1149, 100).await.unwrap().is_empty(), "a's lease has not expired");
    assert_eq!(leases(&s.shard_leases().await.unwrap()), vec![(3, "a", 1, 1150)]);
    let l = s.claim_shards("b", &[3], 1150, 100).await.unwrap();
    assert_eq!(leases(&l), vec![(3, "b", 2, 1250)], "expired at expires_at: b takes it over");
    assert!(s.claim_shards("a", &[3], 1160, 100).await.unwrap().is_empty(), "a lost it");
    // Releasing someone else's lease changes nothing; the holder's release frees it at once.
    s.release_shards("a", &[3]).await.unwrap();
    assert!(s.claim_shards("c", &[3], 1170, 100).await.unwrap().is_empty());
    s.release_shards("b", &[3]).await.unwrap();
    let l = s.claim_shards("c", &[3], 1180, 100).await.unwrap();
    assert_eq!(leases(&l), vec![(3, "c", 3, 1280)], "released: c claims it at once");
    // Several shards at once, in shard order; only what c can get.
    s.claim_shards("d", &[5], 1180, 1000).await.unwrap();
    let l = s.claim_shards("c", &[7, 5, 3, 1], 1190, 100).await.unwrap();
    assert_eq!(leases(&l), vec![(1, "c", 1, 1290), (3, "c", 3, 1290), (7, "c", 1, 1290)]);
    assert_eq!(
        leases(&s.shard_leases().await.unwrap()),
        vec![(1, "c", 1, 1290), (3, "c", 3, 1290), (5, "d", 1, 2180), (7, "c", 1, 1290)]
    );
    assert!(s.claim_shards("c", &[], 1190, 100).await.unwrap().is_empty());
    s.release_shards("c", &[]).await.unwrap();
}

/// A stale owner's write is rejected: once another process took the shard over, a
/// commit fenced with the old epoch fails with `Fenced` and writes nothing.
pub async fn fenced_commits(s: &dyn Store) {
    assert_eq!(s.claim_shards("a", &[3], 1000, 100).await.unwrap()[0].epoch, 1);
    s.commit(vec![fenced(write("f1", "alice", true, RunStatus::Running, 1..=1, 100), 3, 1)])
        .await
        .unwrap();
    s.commit(vec![fenced(write("f1", "alice", false, RunStatus::Running, 2..=2, 100), 3, 1)])
        .await
        .unwrap();
    assert_eq!(s.claim_shards("b", &[3], 1100, 100).await.unwrap()[0].epoch, 2);
    let stale = fenced(write("f1", "alice", false, RunStatus::Completed, 3..=3, 100), 3, 1);
    assert!(matches!(s.commit(vec![stale]).await, Err(StoreError::Fenced(_))));
    let r = s.get_run("f1").await.unwrap().unwrap();
    assert_eq!((r.state.seq, r.state.status), (2, RunStatus::Running), "the stale write changed nothing");
    assert_eq!(s.events("f1", 0, 100).await.unwrap().len(), 2);
    s.commit(vec![fenced(write("f1", "alice", false, RunStatus::Running, 3..=3, 100), 3, 2)])
        .await
        .unwrap();
    // One stale fence fails the whole batch, good writes included.
    let mixed = vec![
        fenced(write("f1", "alice", false, RunStatus::Running, 4..=4, 100), 3, 2),
        fenced(write("f2", "alice", true, RunStatus::Running, 1..=1, 100), 3, 1),
    ];
    assert!(matches!(s.commit(mixed).await, Err(StoreError::Fenced(_))));
    assert!(s.get_run("f2").await.unwrap().is_none());
    assert_eq!(s.get_run("f1").await.unwrap().unwrap().state.seq, 3);
    assert_eq!(s.events("f1", 0, 100).await.unwrap().len(), 3);
    // A shard nobody holds a lease on fences everything.
    let unleased = fenced(write("f3", "alice", true, RunStatus::Running, 1..=1, 100), 9, 1);
    assert!(matches!(s.commit(vec![unleased]).await, Err(StoreError::Fenced(_))));
    assert!(s.get_run("f3").await.unwrap().is_none());
    // Releasing keeps the epoch: the holder's writes still pass until someone takes over.
    s.release_shards("b", &[3]).await.unwrap();
    s.commit(vec![fenced(write("f1", "alice", false, RunStatus::Running, 4..=4, 100), 3, 2)])
        .await
        .unwrap();
    // Unfenced writes (embedded mode) are never checked.
    s.commit(vec![write("f1", "alice", false, RunStatus::Completed, 5..=5, 100)]).await.unwrap();
    s.commit(vec![write("f4", "alice", true, RunStatus::Running, 1..=1, 100)]).await.unwrap();
    let r = s.get_run("f1").await.unwrap().unwrap();
    assert_eq!((r.state.seq, r.state.status), (5, RunStatus::Completed));
    assert_eq!(s.events("f1", 0, 100).await.unwrap().len(), 5);
}

pub async fn members(s: &dyn Store) {
    let m = |id: &str, addr: &str, seen_at: i64| Member {
        id: id.into(),
        roles: "api,engine".into(),
        addr: addr.into(),
        started_at: 50,
        seen_at,
    };
    assert!(s.members(0).await.unwrap().is_empty());
    s.heartbeat(m("m2", "10.0.0.2:8080", 200)).await.unwrap();
    s.heartbeat(m("m1", "10.0.0.1:8080", 100)).await.unwrap();
    assert_eq!(s.members(0).await.unwrap(), vec![m("m1", "10.0.0.1:8080", 100), m("m2", "10.0.0.2:8080", 200)]);
    // A heartbeat updates the member in place.
    s.heartbeat(m("m1", "10.0.0.9:8080", 300)).await.unwrap();
    assert_eq!(s.members(0).await.unwrap().len(), 2);
    assert_eq!(
        s.members(200).await.unwrap(),
        vec![m("m1", "10.0.0.9:8080", 300), m("m2", "10.0.0.2:8080", 200)]
    );
    assert_eq!(s.members(201).await.unwrap(), vec![m("m1", "10.0.0.9:8080", 300)], "seen_at >= since");
    s.leave("m1").await.unwrap();
    s.leave("nope").await.unwrap();
    assert_eq!(s.members(0).await.unwrap(), vec![m("m2", "10.0.0.2:8080", 200)]);
}

/// Generates one `#[tokio::test]` per conformance check. `$make` is an async
/// expression yielding a fresh backend (anything that derefs to `dyn Store`).
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        mod store_conformance {
            use super::*;
            #[tokio::test]
            async fn blobs() {
                let s = $make.await;
                $crate::conformance::blobs(&*s).await;
            }
            #[tokio::test]
            async fn tags() {
                let s = $make.await;
                $crate::conformance::tags(&*s).await;
            }
            #[tokio::test]
            async fn runs_and_events() {
                let s = $make.await;
                $crate::conformance::runs_and_events(&*s).await;
            }
            #[tokio::test]
            async fn commit_is_atomic() {
                let s = $make.await;
                $crate::conformance::commit_is_atomic(&*s).await;
            }
            #[tokio::test]
            async fn commit_each_isolates_writes() {
                let s = $make.await;
                $crate::conformance::commit_each_isolates_writes(&*s).await;
            }
            #[tokio::test]
            async fn keys_and_grants() {
                let s = $make.await;
                $crate::conformance::keys_and_grants(&*s).await;
            }
            #[tokio::test]
            async fn patches() {
                let s = $make.await;
                $crate::conformance::patches(&*s).await;
            }
            #[tokio::test]
            async fn idempotency() {
                let s = $make.await;
                $crate::conformance::idempotency(&*s).await;
            }
            #[tokio::test]
            async fn listing() {
                let s = $make.await;
                $crate::conformance::listing(&*s).await;
            }
            #[tokio::test]
            async fn shard_leases() {
                let s = $make.await;
                $crate::conformance::shard_leases(&*s).await;
            }
            #[tokio::test]
            async fn fenced_commits() {
                let s = $make.await;
                $crate::conformance::fenced_commits(&*s).await;
            }
            #[tokio::test]
            async fn members() {
                let s = $make.await;
                $crate::conformance::members(&*s).await;
            }
        }
    };
}
