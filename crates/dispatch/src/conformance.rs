//! The conformance suite every [`Dispatch`] backend runs. Use [`dispatch_conformance!`]
//! with an async constructor `fn(Options) -> impl Future<Output = impl Deref<Target = impl Dispatch>>`,
//! the step that lets time pass, and the kind of clock the tests run on:
//!
//! - `paused`: paused tokio time, the step is `tokio::time::advance` (in-process backends,
//!   whose clock is tokio's), with [`opts`] (a 30 s visibility costs nothing);
//! - `real`: the wall clock, the step is `tokio::time::sleep` (backends whose clock is a
//!   server's, e.g. Redis), with [`real_time_opts`] (a short visibility).
//!
//! On real time the checks only ever sleep *past* a visibility timeout to see an entry
//! come back, which is deterministic; the checks that need a lease to stay alive
//! extend it every quarter visibility, so a test thread would have to stall for three
//! quarters of one to fail.
#![allow(clippy::unwrap_used)] // test code: a failed call is a failed check

use std::future::Future;
use std::time::Duration;

use serde_json::json;

use crate::*;

/// Options for checks on paused time.
pub fn opts() -> Options {
    Options {
        visibility: Duration::from_secs(30),
        max_deliveries: 3,
    }
}

/// Options for checks on real time: short enough that a test sleeps past it quickly.
pub fn real_time_opts() -> Options {
    Options {
        visibility: Duration::from_millis(400),
        max_deliveries: 3,
    }
}

fn env(id: &str, queue: &str) -> Envelope {
    Envelope {
        id: id.into(),
        queue: queue.into(),
        payload: json!({"id": id}),
    }
}

const NO_WAIT: Duration = Duration::from_millis(0);

/// Past the visibility timeout, with a margin of one millisecond.
fn past(o: &Options) -> Duration {
    o.visibility + Duration::from_millis(1)
}

pub async fn fifo_and_ack<P, F>(d: &dyn Dispatch, _o: &Options, _pass: P)
where
    P: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    d.push(vec![env("a", "http"), env("b", "http"), env("a", "http")]).await.unwrap();
    let got = d.pull(&[], 10, NO_WAIT).await.unwrap();
    assert_eq!(
        got.iter().map(|l| l.envelope.id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"],
        "duplicate push is a no-op"
    );
    assert!(got.iter().all(|l| l.delivery == 1));
    assert_eq!(got[0].envelope.payload, json!({"id": "a"}));
    d.push(vec![env("a", "http")]).await.unwrap();
    assert!(d.pull(&[], 10, NO_WAIT).await.unwrap().is_empty(), "pushing a leased id is a no-op");
    for l in &got {
        d.ack(l).await.unwrap();
    }
    assert!(d.pull(&[], 10, NO_WAIT).await.unwrap().is_empty());
    assert!(d.ack(&got[0]).await.is_err(), "a second ack of the same lease fails");
    // After the ack the id may be pushed again.
    d.push(vec![env("a", "http")]).await.unwrap();
    let again = d.pull(&[], 10, NO_WAIT).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].envelope.id.as_str(), again[0].delivery), ("a", 1));
    assert_ne!(again[0].token, got[0].token);
    assert!(d.ack(&got[0]).await.is_err(), "the old lease does not ack the re-pushed entry");
    d.ack(&again[0]).await.unwrap();
}

pub async fn queues_are_separate<P, F>(d: &dyn Dispatch, _o: &Options, _pass: P)
where
    P: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    d.push(vec![env("h", "http"), env("t", "transform")]).await.unwrap();
    let got = d.pull(&["transform".to_string()], 10, NO_WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.queue, "transform");
    let got = d.pull(&["http".to_string()], 10, NO_WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.id, "h");
    assert!(d.pull(&["nothing-here".to_string()], 10, NO_WAIT).await.unwrap().is_empty());
}

/// An unacknowledged entry comes back after the visibility timeout; the old holder's
/// lease is then stale and can neither ack nor extend.
pub async fn redelivers_after_visibility<P, F>(d: &dyn Dispatch, o: &Options, pass: P)
where
    P: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    d.push(vec![env("x", "http")]).await.unwrap();
    let first = d.pull(&[], 1, NO_WAIT).await.unwrap().remove(0);
    assert!(d.pull(&[], 1, NO_WAIT).await.unwrap().is_empty());
    pass(past(o)).await;
    let second = d.pull(&[], 1, NO_WAIT).await.unwrap().remove(0);
    assert_eq!(second.envelope.id, "x");
    assert_eq!(second.delivery, 2);
    assert_ne!(first.token, second.token);
    assert!(d.extend(&first).await.is_err(), "a stale lease must not extend");
    assert!(d.ack(&first).await.is_err(), "a stale lease must not ack");
    d.ack(&second).await.unwrap();
    assert!(d.pull(&[], 1, NO_WAIT).await.unwrap().is_empty());
}

/// Extending every quarter visibility keeps the lease for longer than one visibility.
pub async fn extend_keeps_the_lease<P, F>(d: &dyn Dispatch, o: &Options, pass: P)
where
    P: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    d.push(vec![env("long", "http")]).await.unwrap();
    let l = d.pull(&[], 1, NO_WAIT).await.unwrap().remove(0);
    for _ in 0..6 {
        pass(o.visibility / 4).await;
        d.extend(&l).await.unwrap();
    }
    assert!(d.pull(&[], 1, NO_WAIT).await.unwrap().is_empty());
    d.ack(&l).await.unwrap();
}

pub async fn dead_letters_after_max_deliveries<P, F>(d: &dyn Dispatch, o: &Options, pass: P)
where
    P: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    d.push(vec![env("poison", "http")]).await.unwrap();
    for n in 1..=o.max_deliveries {
        let l = d.pull(&[], 1, NO_WAIT).await.unwrap();
        assert_eq!(l.len(), 1, "delivery {n}");
        assert_eq!(l[0].delivery, n);
        pass(past(o)).await;
    }
    assert!(d.pull(&[], 1, NO_WAIT).await.unwrap().is_empty());
    let dead = d.dead_letters().await.unwrap();
    assert_eq!(dead.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), vec!["poison"]);
    assert_eq!(dead[0].queue, "http");
    assert_eq!(dead[0].payload, json!({"id": "poison"}));
}

/// A pull that waits is woken by a push (it does not sleep out its whole wait).
pub async fn pull_waits_for_a_push<P, F>(d: &dyn Dispatch, _o: &Options, _pass: P)
where
    P: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    let wait = Duration::from_secs(10);
    let started = tokio::time::Instant::now();
    let (got, ()) = tokio::join!(d.pull(&[], 1, wait), async {
        tokio::task::yield_now().await;
        d.push(vec![env("late", "http")]).await.unwrap();
    });
    let got = got.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.id, "late");
    assert!(started.elapsed() < wait, "the push woke the pull");
}

/// Generates one `#[tokio::test]` per conformance check.
///
/// `dispatch_conformance!(make, pass, paused)` runs on paused time with [`opts`];
/// `dispatch_conformance!(make, pass, real)` runs on the wall clock with [`real_time_opts`].
/// `make` is an async `fn(Options) -> impl Deref<Target = impl Dispatch>`; `pass` is an
/// async `fn(Duration)` that lets that much time go by (`tokio::time::advance` or
/// `tokio::time::sleep`).
#[macro_export]
macro_rules! dispatch_conformance {
    ($make:expr) => {
        $crate::dispatch_conformance!($make, tokio::time::advance, paused);
    };
    ($make:expr, $pass:expr, paused) => {
        $crate::dispatch_conformance!(@checks $make, $pass, $crate::conformance::opts(), tokio::test(start_paused = true));
    };
    ($make:expr, $pass:expr, real) => {
        $crate::dispatch_conformance!(@checks $make, $pass, $crate::conformance::real_time_opts(), tokio::test);
    };
    (@checks $make:expr, $pass:expr, $opts:expr, $attr:meta) => {
        mod dispatch_conformance {
            use super::*;
            $crate::dispatch_conformance!(@one $make, $pass, $opts, $attr, fifo_and_ack);
            $crate::dispatch_conformance!(@one $make, $pass, $opts, $attr, queues_are_separate);
            $crate::dispatch_conformance!(@one $make, $pass, $opts, $attr, redelivers_after_visibility);
            $crate::dispatch_conformance!(@one $make, $pass, $opts, $attr, extend_keeps_the_lease);
            $crate::dispatch_conformance!(@one $make, $pass, $opts, $attr, dead_letters_after_max_deliveries);
            $crate::dispatch_conformance!(@one $make, $pass, $opts, $attr, pull_waits_for_a_push);
        }
    };
    (@one $make:expr, $pass:expr, $opts:expr, $attr:meta, $check:ident) => {
        #[$attr]
        async fn $check() {
            let o: $crate::Options = $opts;
            let d = $make(o.clone()).await;
            $crate::conformance::$check(&*d, &o, $pass).await;
        }
    };
}
