//! Named failure points (meilisearch style) for crash tests. With the `failpoints`
//! feature, `AOB_FAILPOINTS=spec[,spec…]` makes the process abort when execution
//! reaches a named point, simulating kill -9 at that exact step. A spec is `name`
//! (abort the first time `name` is reached) or `name@N` (abort the Nth time, N ≥ 1;
//! the earlier hits pass), e.g. `before_commit@2` lets the run's start commit and
//! kills the process on the commit of its first completion. Hits are counted per
//! process. Without the feature the macro compiles to nothing.
//!
//! Points: `before_commit` (a batch is applied in memory, nothing written),
//! `after_commit` (the batch is durable, nothing dispatched, published or replied),
//! `after_effect` (a task ran, its completion is not yet sent to the loop).
//!
//! `in_attempt:<node id>` (a poisoned attempt) aborts every time an attempt of that
//! node starts executing, from the Nth hit on with `@N`: it stays armed across
//! restarts as long as the variable is set, which is what a crash loop looks like.

/// One armed point: abort on hit number `nth` of `name`.
#[cfg(any(feature = "failpoints", test))]
#[derive(Debug, PartialEq)]
struct Armed {
    name: String,
    nth: u64,
}

/// Parses `AOB_FAILPOINTS`; a malformed count is a test bug and fails loudly.
#[cfg(any(feature = "failpoints", test))]
fn parse(spec: &str) -> Vec<Armed> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('@') {
            None => Armed { name: s.to_string(), nth: 1 },
            Some((name, n)) => match n.trim().parse::<u64>() {
                Ok(nth) if nth >= 1 => Armed {
                    name: name.trim().to_string(),
                    nth,
                },
                _ => panic!("AOB_FAILPOINTS: bad count in '{s}' (expected name@N, N >= 1)"),
            },
        })
        .collect()
}

#[cfg(feature = "failpoints")]
fn armed() -> &'static [(Armed, std::sync::atomic::AtomicU64)] {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static ARMED: OnceLock<Vec<(Armed, AtomicU64)>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let spec = std::env::var("AOB_FAILPOINTS").unwrap_or_default();
        parse(&spec).into_iter().map(|a| (a, AtomicU64::new(0))).collect()
    })
}

#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::atomic::Ordering;
    for (a, seen) in armed().iter().filter(|(a, _)| a.name == name) {
        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n == a.nth {
            eprintln!("failpoint {name} hit #{n}: aborting");
            std::process::abort();
        }
    }
}

/// An attempt of `node_id` starts executing: aborts if `in_attempt:<node_id>` is armed
/// (on every hit from the Nth on, unlike the other points).
#[cfg(feature = "failpoints")]
pub fn in_attempt(node_id: &str) {
    use std::sync::atomic::Ordering;
    for (a, seen) in armed().iter().filter(|(a, _)| a.name.strip_prefix("in_attempt:") == Some(node_id)) {
        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= a.nth {
            eprintln!("failpoint in_attempt:{node_id} hit #{n}: aborting");
            std::process::abort();
        }
    }
}

#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($name);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_counts() {
        let a = parse(" before_commit , after_effect@3,,");
        assert_eq!(
            a,
            vec![
                Armed {
                    name: "before_commit".into(),
                    nth: 1
                },
                Armed {
                    name: "after_effect".into(),
                    nth: 3
                }
            ]
        );
        assert!(parse("").is_empty());
    }

    #[test]
    #[should_panic(expected = "bad count")]
    fn rejects_a_zero_count() {
        parse("after_commit@0");
    }
}
