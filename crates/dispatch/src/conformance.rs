//! The conformance suite every [`Dispatch`] backend runs, under paused tokio time
//! where the backend's clock allows it. Use [`dispatch_conformance!`] with an async
//! constructor `fn(Options) -> impl Future<Output = impl Deref<Target = dyn Dispatch>>`.
#![allow(clippy::unwrap_used)] // test code: a failed call is a failed check

use std::time::Duration;

use serde_json::json;

use crate::*;

pub fn opts() -> Options {
    Options { visibility: Duration::from_secs(30), max_deliveries: 3 }
}

fn env(id: &str, queue: &str) -> Envelope {
    Envelope { id: id.into(), queue: queue.into(), payload: json!({"id": id}) }
}

const NO_WAIT: Duration = Duration::from_millis(0);

pub async fn fifo_and_ack(d: &dyn Dispatch) {
    d.push(vec![env("a", "http"), env("b", "http"), env("a", "http")]).await.unwrap();
    let got = d.pull(&[], 10, NO_WAIT).await.unwrap();
    assert_eq!(got.iter().map(|l| l.envelope.id.as_str()).collect::<Vec<_>>(), vec!["a", "b"], "duplicate push is a no-op");
    assert!(got.iter().all(|l| l.delivery == 1));
    for l in &got {
        d.ack(l).await.unwrap();
    }
    assert!(d.pull(&[], 10, NO_WAIT).await.unwrap().is_empty());
}

pub async fn queues_are_separate(d: &dyn Dispatch) {
    d.push(vec![env("h", "http"), env("t", "transform")]).await.unwrap();
    let got = d.pull(&["transform".to_string()], 10, NO_WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.queue, "transform");
    let got = d.pull(&["http".to_string()], 10, NO_WAIT).await.unwrap();
    assert_eq!(got[0].envelope.id, "h");
}

/// An unacknowledged entry comes back after the visibility timeout; the old holder's
/// lease is then stale and cannot ack.
pub async fn redelivers_after_visibility(d: &dyn Dispatch) {
    d.push(vec![env("x", "http")]).await.unwrap();
    let first = d.pull(&[], 1, NO_WAIT).await.unwrap().remove(0);
    assert!(d.pull(&[], 1, NO_WAIT).await.unwrap().is_empty());
    tokio::time::advance(opts().visibility + Duration::from_millis(1)).await;
    let second = d.pull(&[], 1, NO_WAIT).await.unwrap().remove(0);
    assert_eq!(second.envelope.id, "x");
    assert_eq!(second.delivery, 2);
    assert!(d.ack(&first).await.is_err(), "a stale lease must not ack");
    d.ack(&second).await.unwrap();
}

pub async fn extend_keeps_the_lease(d: &dyn Dispatch) {
    d.push(vec![env("long", "http")]).await.unwrap();
    let l = d.pull(&[], 1, NO_WAIT).await.unwrap().remove(0);
    for _ in 0..3 {
        tokio::time::advance(opts().visibility / 2).await;
        d.extend(&l).await.unwrap();
    }
    assert!(d.pull(&[], 1, NO_WAIT).await.unwrap().is_empty());
    d.ack(&l).await.unwrap();
}

pub async fn dead_letters_after_max_deliveries(d: &dyn Dispatch) {
    d.push(vec![env("poison", "http")]).await.unwrap();
    for n in 1..=opts().max_deliveries {
        let l = d.pull(&[], 1, NO_WAIT).await.unwrap();
        assert_eq!(l.len(), 1, "delivery {n}");
        tokio::time::advance(opts().visibility + Duration::from_millis(1)).await;
    }
    assert!(d.pull(&[], 1, NO_WAIT).await.unwrap().is_empty());
    let dead = d.dead_letters().await.unwrap();
    assert_eq!(dead.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), vec!["poison"]);
}

pub async fn pull_waits_for_a_push(d: std::sync::Arc<dyn Dispatch>) {
    let d2 = d.clone();
    let waiter = tokio::spawn(async move { d2.pull(&[], 1, Duration::from_secs(10)).await.unwrap() });
    tokio::task::yield_now().await;
    d.push(vec![env("late", "http")]).await.unwrap();
    let got = waiter.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.id, "late");
}

/// Generates one paused-time `#[tokio::test]` per conformance check.
#[macro_export]
macro_rules! dispatch_conformance {
    ($make:expr) => {
        mod dispatch_conformance {
            use super::*;
            #[tokio::test(start_paused = true)]
            async fn fifo_and_ack() {
                let d = $make($crate::conformance::opts()).await;
                $crate::conformance::fifo_and_ack(&*d).await;
            }
            #[tokio::test(start_paused = true)]
            async fn queues_are_separate() {
                let d = $make($crate::conformance::opts()).await;
                $crate::conformance::queues_are_separate(&*d).await;
            }
            #[tokio::test(start_paused = true)]
            async fn redelivers_after_visibility() {
                let d = $make($crate::conformance::opts()).await;
                $crate::conformance::redelivers_after_visibility(&*d).await;
            }
            #[tokio::test(start_paused = true)]
            async fn extend_keeps_the_lease() {
                let d = $make($crate::conformance::opts()).await;
                $crate::conformance::extend_keeps_the_lease(&*d).await;
            }
            #[tokio::test(start_paused = true)]
            async fn dead_letters_after_max_deliveries() {
                let d = $make($crate::conformance::opts()).await;
                $crate::conformance::dead_letters_after_max_deliveries(&*d).await;
            }
            #[tokio::test(start_paused = true)]
            async fn pull_waits_for_a_push() {
                let d = $make($crate::conformance::opts()).await;
                let d: std::sync::Arc<dyn $crate::Dispatch> = std::sync::Arc::from(d as Box<dyn $crate::Dispatch>);
                $crate::conformance::pull_waits_for_a_push(d).await;
            }
        }
    };
}
