//! Counters of the engine loop, rendered in the Prometheus text format by the API's
//! `/metrics`. Plain atomics owned by the runtime handle: no global registry.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Counters {
    pub runs_started: AtomicU64,
    pub runs_completed: AtomicU64,
    pub runs_failed: AtomicU64,
    pub runs_cancelled: AtomicU64,
    pub attempts_dispatched: AtomicU64,
    pub events: AtomicU64,
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    /// Sum of commit durations in microseconds, for the average.
    pub commit_micros: AtomicU64,
    pub runs_in_memory: AtomicU64,
    pub timers: AtomicU64,
}

#[derive(Clone, Default)]
pub struct Metrics(pub Arc<Counters>);

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(c: &AtomicU64, n: u64) {
        c.store(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let c = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        line("aob_runs_started_total", "counter", "Runs started.", &[("", get(&c.runs_started))]);
        line(
            "aob_runs_finished_total",
            "counter",
            "Runs that reached a terminal status.",
            &[
                ("{status=\"COMPLETED\"}", get(&c.runs_completed)),
                ("{status=\"FAILED\"}", get(&c.runs_failed)),
                ("{status=\"CANCELLED\"}", get(&c.runs_cancelled)),
            ],
        );
        line(
            "aob_attempts_dispatched_total",
            "counter",
            "Attempts handed to the dispatch queue.",
            &[("", get(&c.attempts_dispatched))],
        );
        line("aob_events_total", "counter", "Run events committed.", &[("", get(&c.events))]);
        line("aob_commits_total", "counter", "Group commits of the engine loop.", &[("", get(&c.commits))]);
        line(
            "aob_commit_failures_total",
            "counter",
            "Group commits that failed.",
            &[("", get(&c.commit_failures))],
        );
        line("aob_commit_seconds_total", "counter", "Time spent in group commits.", &[("", 0)]);
        // Seconds as a float: the integer sample above keeps the family declared once.
        out.truncate(out.trim_end_matches("aob_commit_seconds_total 0\n").len());
        let _ = writeln!(out, "aob_commit_seconds_total {:.6}", get(&c.commit_micros) as f64 / 1e6);
        let mut line = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        line(
            "aob_runs_in_memory",
            "Runs the engine holds in memory (those with attempts in flight).",
            get(&c.runs_in_memory),
        );
        line(
            "aob_timers",
            "Runs waiting on a timer (retry, wait node, approval timeout, deadline).",
            get(&c.timers),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once() {
        let m = Metrics::default();
        Metrics::add(&m.0.runs_started, 3);
        Metrics::add(&m.0.commit_micros, 1_500_000);
        let text = m.render();
        assert!(text.contains("aob_runs_started_total 3\n"), "{text}");
        assert!(text.contains("aob_commit_seconds_total 1.500000\n"), "{text}");
        assert_eq!(text.matches("# TYPE aob_commit_seconds_total counter").count(), 1);
        assert!(text.contains("aob_runs_finished_total{status=\"FAILED\"} 0"));
    }
}
