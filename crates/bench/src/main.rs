//! `aob-bench`: one subcommand per figure of BENCHMARKS.md (issue 2, item 12).
//!
//! Each subcommand starts what it measures itself (the server in this process on a
//! fresh temp data dir, or the real `aob` binary for `idle-rss`), prints a short
//! human summary to stderr and one JSON line of results to stdout.
//! Build in release: `cargo run --release -p aob-bench -- w1 --durability fsync`.

mod api;
mod common;
mod flows;
mod idle;
mod sse;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aob-bench", about = "aob benchmarks: one subcommand per figure in BENCHMARKS.md")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// W1: a 10-node noop chain, one run at a time, 1,000 runs → runs/s, p50/p99.
    W1(flows::W1Args),
    /// W1c: the W1 chain with 16 runs in flight, 2,000 runs → runs/s.
    W1c(flows::W1cArgs),
    /// W2: 1 → 50 parallel → 1 join, 200 runs, 1 and 16 in flight, noop and http → runs/s.
    W2(flows::W2Args),
    /// W3: a 40-step noop chain: one flow alone (p50) and 10 flows at once (wall time).
    W3(flows::W3Args),
    /// GET /api/v1/runs/:id of a completed run from 32 clients for 10 s → requests/s, p50/p99.
    ApiGet(api::ApiGetArgs),
    /// 2,000 sequential POST /api/v1/runs (1-node noop) → p50/p99.
    PostRuns(api::PostRunsArgs),
    /// 1,000 SSE subscribers on one busy run → deliveries/s.
    Sse(sse::SseArgs),
    /// The real `aob serve`: start-up to first /health, idle RSS, RSS per idle waiting run.
    IdleRss(idle::IdleArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("aob-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Cmd::W1(a) => flows::w1("w1", a).await,
            Cmd::W1c(a) => flows::w1("w1c", a.into()).await,
            Cmd::W2(a) => flows::w2(a).await,
            Cmd::W3(a) => flows::w3(a).await,
            Cmd::ApiGet(a) => api::api_get(a).await,
            Cmd::PostRuns(a) => api::post_runs(a).await,
            Cmd::Sse(a) => sse::sse(a).await,
            Cmd::IdleRss(a) => idle::idle_rss(a).await,
        }
    })
}
