//! The dispatch conformance suite and Redis-specific checks, against the Redis at
//! `AOB_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). Each test uses its own key
//! prefix (`aob-test-<uuid>`) and deletes its keys at the end, pass or fail. An
//! unreachable Redis fails the tests; it never skips them.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aob_dispatch::{Dispatch, DispatchError, Envelope, Options};
use aob_dispatch_redis::{GROUP, Limits, RedisDispatch};
use serde_json::json;
use tokio::time::Instant;

const NO_WAIT: Duration = Duration::ZERO;

fn url() -> String {
    std::env::var("AOB_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

fn opts() -> Options {
    aob_dispatch::conformance::real_time_opts()
}

fn env(id: &str, queue: &str) -> Envelope {
    Envelope {
        id: id.into(),
        queue: queue.into(),
        payload: json!({"id": id}),
    }
}

/// One test's key prefix; deletes every key under it when dropped (also on a panic).
struct Keys {
    url: String,
    prefix: String,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            url: url(),
            prefix: format!("aob-test-{}", uuid::Uuid::new_v4()),
        }
    }

    async fn connect(&self, consumer: &str, opts: Options) -> RedisDispatch {
        self.connect_with(consumer, opts, Limits::default()).await
    }

    async fn connect_with(&self, consumer: &str, opts: Options, limits: Limits) -> RedisDispatch {
        match RedisDispatch::connect_with(&self.url, &self.prefix, consumer, opts, limits).await {
            Ok(d) => d,
            Err(e) => panic!("these tests need a Redis at {} (set AOB_TEST_REDIS_URL): {e}", self.url),
        }
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// Every key under the prefix, with its type and PTTL.
    async fn inventory(&self) -> BTreeMap<String, (String, i64)> {
        let mut c = self.redis().await;
        let mut out = BTreeMap::new();
        let mut cursor = "0".to_string();
        loop {
            let (next, keys): (String, Vec<String>) = redis::cmd("SCAN")
                .arg(&cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .unwrap();
            for k in keys {
                let ty: String = redis::cmd("TYPE").arg(&k).query_async(&mut c).await.unwrap();
                let ttl: i64 = redis::cmd("PTTL").arg(&k).query_async(&mut c).await.unwrap();
                out.insert(k, (ty, ttl));
            }
            if next == "0" {
                return out;
            }
            cursor = next;
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let mut cursor = "0".to_string();
        loop {
            let r: redis::RedisResult<(String, Vec<String>)> = redis::cmd("SCAN")
                .arg(&cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query(&mut c);
            let Ok((next, keys)) = r else { return };
            if !keys.is_empty() {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query(&mut c);
            }
            if next == "0" {
                return;
            }
            cursor = next;
        }
    }
}

/// A dispatch on a fresh prefix, for the conformance suite.
struct Fixture {
    d: RedisDispatch,
    _keys: Keys,
}

impl Deref for Fixture {
    type Target = RedisDispatch;
    fn deref(&self) -> &RedisDispatch {
        &self.d
    }
}

async fn fresh(opts: Options) -> Fixture {
    let keys = Keys::new();
    let d = keys.connect("conformance", opts).await;
    Fixture { d, _keys: keys }
}

aob_dispatch::dispatch_conformance!(fresh, tokio::time::sleep, real);

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_hang() {
    let started = Instant::now();
    let r = RedisDispatch::connect("redis://127.0.0.1:1", "aob-test-unreachable", "c", opts()).await;
    match r {
        Err(DispatchError::Unavailable(m)) => assert!(m.contains("cannot connect"), "{m}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// A worker pulls and then its process dies: another process (same prefix, another
/// consumer name) gets the entry once the visibility timeout has passed, even while
/// it is blocked in a pull.
#[tokio::test]
async fn a_consumer_that_disappears_loses_its_entry_to_another() {
    let keys = Keys::new();
    let a = keys.connect("worker-a", opts()).await;
    let b = keys.connect("worker-b", opts()).await;
    a.push(vec![env("x", "http")]).await.unwrap();
    let first = a.pull(&[], 1, NO_WAIT).await.unwrap();
    assert_eq!(first.len(), 1);
    drop(a);
    assert!(b.pull(&[], 1, NO_WAIT).await.unwrap().is_empty(), "not before the visibility timeout");

    let started = Instant::now();
    let got = b.pull(&[], 1, opts().visibility * 4).await.unwrap();
    assert_eq!(got.len(), 1, "the blocked pull picks the expired lease up");
    assert!(
        started.elapsed() < opts().visibility * 2,
        "within a slice of the expiry: {:?}",
        started.elapsed()
    );
    assert_eq!((got[0].envelope.id.as_str(), got[0].delivery), ("x", 2));
    assert!(b.ack(&first[0]).await.is_err(), "the dead worker's lease is stale everywhere");
    b.ack(&got[0]).await.unwrap();

    let mut c = keys.redis().await;
    let len: i64 = redis::cmd("XLEN").arg(keys.key("q:http")).query_async(&mut c).await.unwrap();
    assert_eq!(len, 0, "acked entries are deleted from the stream");
    let pending: (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING").arg(keys.key("q:http")).arg(GROUP).query_async(&mut c).await.unwrap();
    assert_eq!(pending.0, 0);
}

/// The holder whose lease expired and was reclaimed by another process can neither
/// extend nor ack; the new holder can.
#[tokio::test]
async fn a_stale_holder_cannot_ack_or_extend_after_another_process_reclaimed() {
    let keys = Keys::new();
    let a = keys.connect("worker-a", opts()).await;
    let b = keys.connect("worker-b", opts()).await;
    a.push(vec![env("x", "http")]).await.unwrap();
    let la = a.pull(&[], 1, NO_WAIT).await.unwrap().remove(0);
    a.extend(&la).await.unwrap();
    tokio::time::sleep(opts().visibility + Duration::from_millis(1)).await;
    let lb = b.pull(&[], 1, NO_WAIT).await.unwrap().remove(0);
    assert_eq!(lb.delivery, 2);
    assert!(a.extend(&la).await.is_err());
    assert!(a.ack(&la).await.is_err());
    assert!(b.ack(&la).await.is_err(), "the token decides, not the instance");
    b.extend(&lb).await.unwrap();
    a.ack(&lb).await.unwrap();
    assert!(b.ack(&lb).await.is_err(), "acked once");
}

/// After `max_deliveries` expired deliveries (to alternating processes) the entry is in
/// the dead letters, gone from its stream, and its id can be pushed again.
#[tokio::test]
async fn dead_letter_after_max_deliveries_across_processes() {
    let keys = Keys::new();
    let a = keys.connect("worker-a", opts()).await;
    let b = keys.connect("worker-b", opts()).await;
    a.push(vec![env("poison", "http"), env("fine", "transform")]).await.unwrap();
    for n in 1..=opts().max_deliveries {
        let d = if n % 2 == 1 { &a } else { &b };
        let l = d.pull(&["http".to_string()], 1, NO_WAIT).await.unwrap();
        assert_eq!(l.len(), 1, "delivery {n}");
        assert_eq!(l[0].delivery, n);
        tokio::time::sleep(opts().visibility + Duration::from_millis(1)).await;
    }
    // No pull ran since the last expiry: dead_letters finds it by itself.
    let dead = b.dead_letters().await.unwrap();
    assert_eq!(dead, vec![env("poison", "http")]);
    assert_eq!(a.dead_letters().await.unwrap(), dead, "once");

    let mut c = keys.redis().await;
    let len: i64 = redis::cmd("XLEN").arg(keys.key("q:http")).query_async(&mut c).await.unwrap();
    assert_eq!(len, 0);
    let inv = keys.inventory().await;
    assert!(!inv.contains_key(&keys.key("id:poison")), "its dedupe key is gone: {inv:?}");
    assert!(inv[&keys.key("dead")].1 > 0, "the dead letters expire eventually");

    // The other queue was untouched.
    let fine = a.pull(&[], 10, NO_WAIT).await.unwrap();
    assert_eq!(fine.iter().map(|l| l.envelope.id.as_str()).collect::<Vec<_>>(), vec!["fine"]);
    a.ack(&fine[0]).await.unwrap();

    // The same id may be pushed again: a fresh entry, delivery 1.
    a.push(vec![env("poison", "http")]).await.unwrap();
    let again = b.pull(&[], 1, NO_WAIT).await.unwrap();
    assert_eq!((again[0].envelope.id.as_str(), again[0].delivery), ("poison", 1));
    b.ack(&again[0]).await.unwrap();
}

/// Two processes' worth of consumers (two instances, two pull loops each) work one queue
/// concurrently; some holders keep a lease past its visibility without extending, some
/// extend through several visibilities. Per entry, no delivery number is handed out
/// twice, exactly one ack succeeds, and it is the last delivery's: a reclaimed lease is
/// never acked, an extended one is never reclaimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_never_hold_the_same_lease_at_once() {
    let keys = Keys::new();
    let o = Options {
        visibility: Duration::from_millis(400),
        max_deliveries: 100,
    };
    let instances = [
        Arc::new(keys.connect("proc-a", o.clone()).await),
        Arc::new(keys.connect("proc-b", o.clone()).await),
    ];
    const N: usize = 60;
    instances[0].push((0..N).map(|i| env(&format!("e{i}"), "http")).collect()).await.unwrap();

    #[derive(Default)]
    struct Log {
        pulls: Vec<(String, u32, usize)>,
        acks: Vec<(String, u32, bool)>,
        extends_failed: Vec<(String, u32)>,
    }
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let d = instances[w % 2].clone();
        let (log, stop, vis) = (log.clone(), stop.clone(), o.visibility);
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let leases = d.pull(&[], 2, Duration::from_millis(100)).await.unwrap();
                // Each lease is worked on by itself, as the runtime does.
                futures::future::join_all(leases.into_iter().map(|l| {
                    let (d, log) = (d.clone(), log.clone());
                    async move {
                        log.lock().unwrap().pulls.push((l.envelope.id.clone(), l.delivery, w));
                        let n: usize = l.envelope.id[1..].parse().unwrap();
                        if n.is_multiple_of(6) && l.delivery == 1 {
                            // A stalled holder: no heartbeat, past the visibility.
                            tokio::time::sleep(vis + Duration::from_millis(200)).await;
                        } else if n % 6 == 1 {
                            // A long attempt with a heartbeat every quarter visibility.
                            for _ in 0..8 {
                                tokio::time::sleep(vis / 4).await;
                                if d.extend(&l).await.is_err() {
                                    log.lock().unwrap().extends_failed.push((l.envelope.id.clone(), l.delivery));
                                }
                            }
                        } else {
                            tokio::time::sleep(Duration::from_millis((n % 4) as u64 * 5)).await;
                        }
                        let ok = d.ack(&l).await.is_ok();
                        log.lock().unwrap().acks.push((l.envelope.id.clone(), l.delivery, ok));
                    }
                }))
                .await;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = log.lock().unwrap().acks.iter().filter(|a| a.2).count();
        if done >= N || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let log = log.lock().unwrap();
    let mut deliveries: HashMap<&str, Vec<u32>> = HashMap::new();
    for (id, d, _) in &log.pulls {
        deliveries.entry(id.as_str()).or_default().push(*d);
    }
    let mut stalled_reclaimed = 0;
    for i in 0..N {
        let id = format!("e{i}");
        let mut ds = deliveries.get(id.as_str()).cloned().unwrap_or_default();
        ds.sort_unstable();
        let n = ds.len();
        ds.dedup();
        assert_eq!(ds.len(), n, "{id}: a delivery was handed out twice: {:?}", deliveries[id.as_str()]);
        assert_eq!(ds, (1..=n as u32).collect::<Vec<_>>(), "{id}: deliveries are 1..n");
        let ok: Vec<u32> = log.acks.iter().filter(|a| a.0 == id && a.2).map(|a| a.1).collect();
        assert_eq!(ok, vec![n as u32], "{id}: exactly one ack succeeded, the last delivery's");
        if i % 6 == 1 {
            assert_eq!(n, 1, "{id}: an extended lease was reclaimed");
        }
        if i.is_multiple_of(6) && n > 1 {
            stalled_reclaimed += 1;
        }
    }
    assert!(log.extends_failed.is_empty(), "heartbeats failed: {:?}", log.extends_failed);
    assert!(stalled_reclaimed > 0, "no stalled lease was reclaimed; the check proved nothing");
}

/// Every key but the queue streams has a TTL; acked and dead entries leave nothing behind.
#[tokio::test]
async fn every_helper_key_expires() {
    let keys = Keys::new();
    let o = Options {
        visibility: Duration::from_millis(200),
        max_deliveries: 1,
    };
    let d = keys.connect("c", o.clone()).await;
    d.push(vec![env("a", "http"), env("b", "http"), env("c", "transform")]).await.unwrap();
    let got = d.pull(&[], 10, NO_WAIT).await.unwrap();
    assert_eq!(got.len(), 3);
    d.ack(&got[0]).await.unwrap();
    tokio::time::sleep(o.visibility + Duration::from_millis(1)).await;
    assert!(d.pull(&[], 10, NO_WAIT).await.unwrap().is_empty(), "both expired at max deliveries");
    assert_eq!(d.dead_letters().await.unwrap().len(), 2);
    // One more in flight.
    d.push(vec![env("d", "http")]).await.unwrap();
    let l = d.pull(&[], 1, NO_WAIT).await.unwrap().remove(0);
    d.extend(&l).await.unwrap();

    let inv = keys.inventory().await;
    for (k, (ty, ttl)) in &inv {
        if k.starts_with(&keys.key("q:")) {
            assert_eq!(ty, "stream");
        } else {
            assert!(*ttl > 0, "{k} ({ty}) has no TTL");
        }
    }
    for expected in ["queues", "bell", "dead", "id:d", "q:http", "q:transform"] {
        assert!(inv.contains_key(&keys.key(expected)), "{expected} missing: {inv:?}");
    }
    let leases = inv.keys().filter(|k| k.starts_with(&keys.key("lease:"))).count();
    let ids = inv.keys().filter(|k| k.starts_with(&keys.key("id:"))).count();
    assert_eq!((leases, ids), (3, 1), "only the live lease and two stale tokens (which expire): {inv:?}");
    d.ack(&l).await.unwrap();
    let inv = keys.inventory().await;
    assert!(!inv.keys().any(|k| k.starts_with(&keys.key("id:"))), "{inv:?}");
}

/// The janitor deletes group consumers that own nothing (a restarted process gets a new
/// name), and keeps one that still owns a pending entry until that entry is reclaimed.
#[tokio::test]
async fn the_janitor_removes_idle_consumers_that_own_nothing() {
    let keys = Keys::new();
    let eager = Limits {
        janitor_every: Duration::ZERO,
        consumer_idle: Duration::ZERO,
        ..Limits::default()
    };
    let gone = keys.connect("gone", opts()).await;
    gone.push(vec![env("a", "http")]).await.unwrap();
    let l = gone.pull(&[], 1, NO_WAIT).await.unwrap().remove(0);
    gone.ack(&l).await.unwrap();
    drop(gone);
    let holding = keys.connect("holding", opts()).await;
    holding.push(vec![env("b", "http")]).await.unwrap();
    assert_eq!(holding.pull(&[], 1, NO_WAIT).await.unwrap().len(), 1);
    drop(holding);

    let me = keys.connect_with("me", opts(), eager).await;
    assert!(me.pull(&[], 1, NO_WAIT).await.unwrap().is_empty());
    let names = consumers(&keys).await;
    assert!(!names.contains(&"gone".to_string()), "{names:?}");
    assert!(names.contains(&"holding".to_string()), "{names:?}");

    tokio::time::sleep(opts().visibility + Duration::from_millis(1)).await;
    let l = me.pull(&[], 1, NO_WAIT).await.unwrap().remove(0);
    assert_eq!((l.envelope.id.as_str(), l.delivery), ("b", 2));
    me.ack(&l).await.unwrap();
    assert!(me.pull(&[], 1, NO_WAIT).await.unwrap().is_empty());
    assert_eq!(consumers(&keys).await, vec!["me".to_string()]);
}

async fn consumers(keys: &Keys) -> Vec<String> {
    let mut c = keys.redis().await;
    let rows: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(keys.key("q:http"))
        .arg(GROUP)
        .query_async(&mut c)
        .await
        .unwrap();
    let mut names: Vec<String> = rows.iter().map(|r| redis::from_redis_value_ref(&r["name"]).unwrap()).collect();
    names.sort();
    names
}

/// Redis lost the stream (a restart without persistence, a failover): the dedupe key
/// that survived does not swallow the runtime's re-push, and the group comes back.
#[tokio::test]
async fn a_repush_after_redis_lost_the_entry_is_queued_again() {
    let keys = Keys::new();
    let d = keys.connect("c", opts()).await;
    d.push(vec![env("x", "http")]).await.unwrap();
    let mut c = keys.redis().await;
    let _: i64 = redis::cmd("DEL").arg(keys.key("q:http")).query_async(&mut c).await.unwrap();
    assert!(d.pull(&[], 1, NO_WAIT).await.unwrap().is_empty(), "a pull on a lost stream is not an error");
    d.push(vec![env("x", "http")]).await.unwrap();
    let l = d.pull(&[], 1, NO_WAIT).await.unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!((l[0].envelope.id.as_str(), l[0].delivery), ("x", 1));
    d.ack(&l[0]).await.unwrap();
}

/// `MAXLEN ~` keeps a backlog bounded (the oldest entries go; recovery re-pushes them).
#[tokio::test]
async fn stream_length_is_bounded() {
    let keys = Keys::new();
    let d = keys
        .connect_with(
            "c",
            opts(),
            Limits {
                max_len: 100,
                ..Limits::default()
            },
        )
        .await;
    d.push((0..1000).map(|i| env(&format!("e{i}"), "http")).collect()).await.unwrap();
    let mut c = keys.redis().await;
    let len: i64 = redis::cmd("XLEN").arg(keys.key("q:http")).query_async(&mut c).await.unwrap();
    assert!((100..=300).contains(&len), "{len}");
    let got = d.pull(&[], 1, NO_WAIT).await.unwrap();
    assert_ne!(got[0].envelope.id, "e0", "the oldest were trimmed");
}

/// A pull on named queues blocks until a push to one of them, not to another queue.
#[tokio::test]
async fn a_pull_on_named_queues_wakes_on_their_push() {
    let keys = Keys::new();
    let d = keys.connect("c", opts()).await;
    let started = Instant::now();
    let named = ["transform".to_string()];
    let (got, ()) = tokio::join!(d.pull(&named, 1, Duration::from_secs(10)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        d.push(vec![env("h", "http")]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        d.push(vec![env("t", "transform")]).await.unwrap();
    });
    let got = got.unwrap();
    assert_eq!(got.iter().map(|l| l.envelope.id.as_str()).collect::<Vec<_>>(), vec!["t"]);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

/// The bus: two processes' connections see one topic's messages in publish order,
/// topics are separate, and a subscriber whose connection is killed comes back and
/// says `Resync` (what was published meanwhile may be lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_delivers_in_order_across_connections_and_resyncs_after_a_drop() {
    use aob_dispatch::{Bus, BusMessage};
    let keys = Keys::new();
    let a = aob_dispatch_redis::RedisBus::connect(&keys.url, &keys.prefix).await.unwrap();
    let b = aob_dispatch_redis::RedisBus::connect(&keys.url, &keys.prefix).await.unwrap();
    let mut on_b = b.subscribe("events").await.unwrap();
    let mut other = b.subscribe("other").await.unwrap();
    for i in 0..100u8 {
        a.publish("events", vec![i]).await.unwrap();
    }
    for i in 0..100u8 {
        let m = tokio::time::timeout(Duration::from_secs(5), on_b.recv()).await.unwrap();
        assert_eq!(m, Some(BusMessage::Message(vec![i])));
    }
    assert!(other.try_recv().is_err(), "a message crossed topics");

    // Kill every pub/sub connection of the prefix's channel: the subscriber reconnects.
    let client = redis::Client::open(keys.url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut c).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), on_b.recv()).await.unwrap();
    assert_eq!(m, Some(BusMessage::Resync));
    a.publish("events", vec![7]).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), on_b.recv()).await.unwrap();
    assert_eq!(m, Some(BusMessage::Message(vec![7])));
}
