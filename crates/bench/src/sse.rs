//! Many SSE subscribers on one busy run.
//!
//! The run starts with a `wait` gate, so every subscriber can connect (with
//! `?last_event_id=0`) and read the short history first; then a loop emits a burst
//! of events. Deliveries are the events after the gate (seq > 2) counted by every
//! subscriber; the clock runs from the first such event any subscriber sees to the
//! last subscriber's terminal event.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::json;

use crate::common::{Bench, Kind, ServerArgs, Stub, cpu_line, fd_limit, gated_loop, per_sec, r3, summarize};

#[derive(Debug, Clone, Args)]
pub struct SseArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Subscribers on the one run.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Loop iterations after the gate (each emits a handful of events).
    #[arg(long, default_value_t = 500)]
    pub iterations: u32,
    /// The loop body: `noop` (the whole burst is one commit) or `http` (one
    /// dispatch and commit per iteration).
    #[arg(long, value_enum, default_value_t = Kind::Noop)]
    pub kind: Kind,
    /// How long the gate holds the run while subscribers connect.
    #[arg(long, default_value_t = 5000)]
    pub gate_ms: u64,
}

/// Events of the history before the gate fires: workflow_started, node_started(gate).
const HISTORY: u64 = 2;

struct Seen {
    first: Option<Instant>,
    end: Option<Instant>,
    live: usize,
    terminal: String,
}

pub async fn sse(a: SseArgs) -> anyhow::Result<()> {
    let need = (a.subscribers as u64) * 2 + 512;
    match fd_limit() {
        Some(l) if l < need => bail!(
            "open-file limit {l} is too low for {} subscribers (client and server sockets live in this process: need about {need}); \
             raise it in the shell first, e.g. `ulimit -n {}`",
            a.subscribers,
            need.next_power_of_two()
        ),
        Some(l) => eprintln!("open-file limit {l} (need about {need})"),
        None => eprintln!("warning: could not read the open-file limit; {} subscribers need about {need}", a.subscribers),
    }
    let mut figures = Vec::new();
    let mut machine = None;
    for kind in a.kind.expand() {
        let stub = Stub::start().await?;
        let b = Bench::start(&a.server, vec![stub.allow()]).await?;
        let tag = format!("bench-sse-{}", kind.as_str());
        b.api
            .put_tag(&tag, &gated_loop(&tag, a.gate_ms, a.iterations, kind, Some(&stub.base())))
            .await?;
        let started = Instant::now();
        let (id, _) = b.api.start(&tag).await?;
        let gate_at = started + Duration::from_millis(a.gate_ms);
        let ready = Arc::new(AtomicUsize::new(0));
        let ready_all = Arc::new(tokio::sync::Notify::new());
        let url = format!("{}/api/v1/runs/{id}/events?last_event_id=0", b.api.url);
        let mut tasks = Vec::with_capacity(a.subscribers);
        for _ in 0..a.subscribers {
            let (http, url, ready, ready_all, n) = (b.api.http.clone(), url.clone(), ready.clone(), ready_all.clone(), a.subscribers);
            tasks.push(tokio::spawn(async move {
                let resp = http.get(&url).send().await?;
                if !resp.status().is_success() {
                    bail!("GET events: HTTP {}", resp.status());
                }
                let mut stream = resp.bytes_stream().eventsource();
                let mut seen = Seen {
                    first: None,
                    end: None,
                    live: 0,
                    terminal: String::new(),
                };
                let mut counted_ready = false;
                while let Some(ev) = stream.next().await {
                    let ev = ev.map_err(|e| anyhow::anyhow!("SSE: {e}"))?;
                    let seq: u64 = ev.id.parse().context("event id is not a seq")?;
                    if !counted_ready {
                        counted_ready = true;
                        if ready.fetch_add(1, Ordering::SeqCst) + 1 == n {
                            ready_all.notify_one();
                        }
                    }
                    if seq > HISTORY {
                        seen.first.get_or_insert_with(Instant::now);
                        seen.live += 1;
                    }
                    if matches!(ev.event.as_str(), "workflow_completed" | "workflow_failed" | "workflow_cancelled") {
                        seen.end = Some(Instant::now());
                        seen.terminal = ev.event;
                        break;
                    }
                }
                anyhow::Ok(seen)
            }));
        }
        let notified = ready_all.notified();
        if ready.load(Ordering::SeqCst) < a.subscribers {
            tokio::time::timeout_at(gate_at.into(), notified).await.ok();
        }
        let connected = started.elapsed();
        let n_ready = ready.load(Ordering::SeqCst);
        if n_ready < a.subscribers || Instant::now() >= gate_at {
            bail!(
                "only {n_ready} of {} subscribers had connected after {connected:?}, before the gate ({} ms) opened: raise --gate-ms",
                a.subscribers,
                a.gate_ms
            );
        }
        eprintln!(
            "sse[{}]: {} subscribers connected and read the history in {:.0} ms",
            kind.as_str(),
            a.subscribers,
            connected.as_secs_f64() * 1e3
        );
        let cpu0 = b.cpu();
        let mut seens = Vec::with_capacity(tasks.len());
        for t in tasks {
            seens.push(t.await??);
        }
        let first = seens
            .iter()
            .filter_map(|s| s.first)
            .min()
            .context("no subscriber saw an event after the gate")?;
        let last = seens.iter().filter_map(|s| s.end).max().context("no subscriber saw the end")?;
        let deliveries: usize = seens.iter().map(|s| s.live).sum();
        let per_sub = seens[0].live;
        if let Some(s) = seens.iter().find(|s| s.live != per_sub || s.terminal != "workflow_completed") {
            bail!(
                "subscribers disagree: one saw {} events ending with '{}', another {per_sub}",
                s.live,
                s.terminal
            );
        }
        let elapsed = last - first;
        let dps = per_sec(deliveries, elapsed);
        // CPU from the end of the connect phase (the gate's wait costs next to nothing),
        // spread over the delivery window.
        let cpu = cpu0.since(deliveries, elapsed);
        // Per-subscriber time from the first live event anywhere to its own end.
        let tails: Vec<Duration> = seens.iter().filter_map(|s| s.end).map(|e| e - first).collect();
        let tail = summarize(&tails);
        eprintln!(
            "sse[{}]: {} subscribers × {per_sub} events = {deliveries} deliveries in {:.3} s → {dps:.0} deliveries/s ({}); subscriber done after {}",
            kind.as_str(),
            a.subscribers,
            elapsed.as_secs_f64(),
            a.server.durability.as_str(),
            tail.line()
        );
        eprintln!("sse[{}]: {} (unit = delivery)", kind.as_str(), cpu_line(&cpu));
        figures.push(
            json!({"kind": kind.as_str(), "subscribers": a.subscribers, "iterations": a.iterations, "events_per_subscriber": per_sub,
                            "deliveries": deliveries, "elapsed_s": r3(elapsed.as_secs_f64()), "deliveries_per_s": r3(dps),
                            "connect_ms": r3(connected.as_secs_f64() * 1e3), "subscriber_done": tail.json(), "cpu": cpu}),
        );
        machine = Some(b.machine.clone());
        b.stop().await;
    }
    if let Some(m) = machine {
        crate::common::emit("sse", &m, Some(a.server.durability), json!({"gate_ms": a.gate_ms, "figures": figures}));
    }
    Ok(())
}
