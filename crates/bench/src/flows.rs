//! W1, W1c, W2, W3: whole runs through the HTTP API, each started by tag and
//! followed until COMPLETED (the POST answer when the start commit already
//! finished the run, else `GET /api/v1/runs/:id` polled without sleeping).

use std::time::Instant;

use clap::Args;
use serde_json::json;

use crate::common::{Bench, Kind, ServerArgs, Stub, closed_loop, cpu_line, fan_join, noop_chain, per_sec, r3, summarize};

#[derive(Debug, Clone, Args)]
pub struct W1Args {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Measured runs.
    #[arg(long, default_value_t = 1000)]
    pub runs: usize,
    /// Nodes in the noop chain.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Runs in flight at once (client loops).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Unmeasured runs first (connections, caches).
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
}

/// W1 with its own defaults: 2,000 runs, 16 in flight.
#[derive(Debug, Clone, Args)]
pub struct W1cArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Measured runs.
    #[arg(long, default_value_t = 2000)]
    pub runs: usize,
    /// Nodes in the noop chain.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Runs in flight at once (client loops).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Unmeasured runs first (connections, caches).
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
}

impl From<W1cArgs> for W1Args {
    fn from(a: W1cArgs) -> W1Args {
        W1Args {
            server: a.server,
            runs: a.runs,
            nodes: a.nodes,
            concurrency: a.concurrency,
            warmup: a.warmup,
        }
    }
}

pub async fn w1(name: &str, a: W1Args) -> anyhow::Result<()> {
    let b = Bench::start(&a.server, vec![]).await?;
    let tag = "bench-w1";
    b.api.put_tag(tag, &noop_chain(tag, a.nodes)).await?;
    closed_loop(&b.api, tag, a.warmup, a.concurrency).await?;
    let (c0, s0) = b.commits().await;
    let cpu0 = b.cpu();
    let (wall, lat) = closed_loop(&b.api, tag, a.runs, a.concurrency).await?;
    let cpu = cpu0.since(a.runs, wall);
    let (c1, s1) = b.commits().await;
    let commits = c1.saturating_sub(c0);
    let commit_ms = if commits > 0 { (s1 - s0) * 1000.0 / commits as f64 } else { 0.0 };
    eprintln!(
        "{name}: {commits} group commits, {:.1} runs per commit, {commit_ms:.2} ms per commit",
        a.runs as f64 / commits.max(1) as f64
    );
    let s = summarize(&lat);
    let rps = per_sec(a.runs, wall);
    eprintln!(
        "{name}: {}-node noop chain, {} runs, {} in flight, {}, wait {}: {rps:.0} runs/s in {:.2} s; per run {}",
        a.nodes,
        a.runs,
        a.concurrency,
        a.server.durability.as_str(),
        a.server.wait.as_str(),
        wall.as_secs_f64(),
        s.line()
    );
    eprintln!("{name}: {} (unit = run)", cpu_line(&cpu));
    b.emit(
        name,
        json!({"wait": a.server.wait.as_str(), "nodes": a.nodes, "runs": a.runs, "concurrency": a.concurrency, "warmup": a.warmup,
               "wall_s": r3(wall.as_secs_f64()), "runs_per_s": r3(rps), "latency": s.json(), "cpu": cpu,
               "commits": commits, "commit_ms": r3(commit_ms)}),
    );
    b.stop().await;
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct W2Args {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Measured runs per configuration.
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Parallel nodes between the start and the join.
    #[arg(long, default_value_t = 50)]
    pub width: usize,
    /// What the parallel nodes are.
    #[arg(long, value_enum, default_value_t = Kind::Both)]
    pub kind: Kind,
    /// Runs in flight; each value is measured separately.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub concurrency: Vec<usize>,
    /// Unmeasured runs before each configuration.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
}

pub async fn w2(a: W2Args) -> anyhow::Result<()> {
    let stub = Stub::start().await?;
    let b = Bench::start(&a.server, vec![stub.allow()]).await?;
    let base = stub.base();
    let mut figures = Vec::new();
    for kind in a.kind.expand() {
        let tag = format!("bench-w2-{}", kind.as_str());
        b.api.put_tag(&tag, &fan_join(&tag, a.width, kind, Some(&base))).await?;
        for &c in &a.concurrency {
            closed_loop(&b.api, &tag, a.warmup, c).await?;
            let cpu0 = b.cpu();
            let (wall, lat) = closed_loop(&b.api, &tag, a.runs, c).await?;
            let cpu = cpu0.since(a.runs, wall);
            let s = summarize(&lat);
            let rps = per_sec(a.runs, wall);
            eprintln!(
                "w2: 1 → {} {} → 1 join, {} runs, {c} in flight, {}, wait {}: {rps:.0} runs/s ({:.0} nodes/s) in {:.2} s; per run {}",
                a.width,
                kind.as_str(),
                a.runs,
                a.server.durability.as_str(),
                a.server.wait.as_str(),
                rps * (a.width + 2) as f64,
                wall.as_secs_f64(),
                s.line()
            );
            eprintln!("w2: {} (unit = run)", cpu_line(&cpu));
            figures.push(
                json!({"kind": kind.as_str(), "concurrency": c, "runs": a.runs, "wall_s": r3(wall.as_secs_f64()),
                                "runs_per_s": r3(rps), "latency": s.json(), "cpu": cpu}),
            );
        }
    }
    b.emit(
        "w2",
        json!({"wait": a.server.wait.as_str(), "width": a.width, "warmup": a.warmup, "figures": figures}),
    );
    b.stop().await;
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct W3Args {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Steps in the noop chain.
    #[arg(long, default_value_t = 40)]
    pub nodes: usize,
    /// Runs of one flow alone (for its median).
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Flows started at once.
    #[arg(long, default_value_t = 10)]
    pub flows: usize,
    /// Rounds of `flows` at once (for the median wall time).
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
}

pub async fn w3(a: W3Args) -> anyhow::Result<()> {
    let b = Bench::start(&a.server, vec![]).await?;
    let tag = "bench-w3";
    b.api.put_tag(tag, &noop_chain(tag, a.nodes)).await?;
    closed_loop(&b.api, tag, a.warmup, 1).await?;
    let (_, lat) = closed_loop(&b.api, tag, a.runs, 1).await?;
    let alone = summarize(&lat);
    eprintln!(
        "w3: {}-step noop chain, one flow alone, {}: {}",
        a.nodes,
        a.server.durability.as_str(),
        alone.line()
    );

    let mut walls = Vec::new();
    for _ in 0..a.rounds {
        let t = Instant::now();
        let all = futures::future::join_all((0..a.flows).map(|_| b.api.run_to_end(tag))).await;
        let wall = t.elapsed();
        for r in all {
            r?;
        }
        walls.push(wall);
    }
    let together = summarize(&walls);
    eprintln!(
        "w3: {} flows at once, wall time for all {} over {} rounds: {}",
        a.flows,
        a.flows,
        a.rounds,
        together.line()
    );
    b.emit(
        "w3",
        json!({"nodes": a.nodes, "one_flow": alone.json(), "flows_at_once": a.flows, "rounds": a.rounds, "wall_for_all": together.json()}),
    );
    b.stop().await;
    Ok(())
}
