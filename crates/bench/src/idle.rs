//! The real `aob serve` process: start-up time, idle RSS, RSS per idle waiting run.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use crate::common::{Api, Machine, ServerArgs, aob_bin, free_port, one_wait, r3, rss_kb, spawn_aob, summarize};

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Waiting runs to start (each one `wait` node of one hour).
    #[arg(long, default_value_t = 10_000)]
    pub runs: usize,
    /// Client loops starting the runs.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Start-ups measured (each on a fresh data dir); the last server is the one measured for RSS.
    #[arg(long, default_value_t = 5)]
    pub startups: usize,
    /// Quiet time before each RSS reading.
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
}

pub async fn idle_rss(a: IdleArgs) -> anyhow::Result<()> {
    let bin = aob_bin(&a.server.aob_bin)?;
    let mut startups = Vec::new();
    let mut last = None;
    for i in 0..a.startups.max(1) {
        let dir = a.server.tempdir()?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let api = Api::new(format!("http://{addr}"))?;
        let (proc_, took) = spawn_aob(&bin, a.server.durability, dir.path(), &api, &addr, &[]).await?;
        startups.push(took);
        if i + 1 == a.startups.max(1) {
            last = Some((proc_, dir, api));
        }
    }
    let (proc_, dir, api) = last.context("no start-up")?;
    let api = api.admin(dir.path())?;
    let machine = Machine::probe(dir.path());
    machine.print(Some(a.server.durability));
    eprintln!("binary: {}", bin.display());
    let st = summarize(&startups);
    eprintln!(
        "idle-rss: spawn → first 200 from /health over {} fresh start-ups: {}",
        startups.len(),
        st.line()
    );

    let pid = proc_.0.id();
    tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
    let idle = rss_kb(pid)?;
    eprintln!("idle-rss: idle RSS after start-up and one /health: {:.1} MB", idle as f64 / 1024.0);

    let tag = "bench-idle-wait";
    api.put_tag(tag, &one_wait(tag, 3_600_000)).await?;
    tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
    let before = rss_kb(pid)?;
    let t = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let (api, next, runs) = (api.clone(), next.clone(), a.runs);
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < runs {
                let (id, st) = api.start(tag).await?;
                if st != "RUNNING" {
                    bail!("run {id} is {st}, expected RUNNING (waiting)");
                }
            }
            anyhow::Ok(())
        }));
    }
    for h in tasks {
        h.await??;
    }
    let start_wall = t.elapsed();
    tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
    let after = rss_kb(pid)?;
    let growth_kb = after.saturating_sub(before);
    let per_run = growth_kb as f64 * 1024.0 / a.runs as f64;
    let db_bytes: u64 = std::fs::read_dir(dir.path())?.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    eprintln!(
        "idle-rss: {} waiting runs started in {:.1} s; RSS {:.1} MB → {:.1} MB: {:.0} bytes per idle waiting run (data dir {:.1} MB)",
        a.runs,
        start_wall.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per_run,
        db_bytes as f64 / 1048576.0
    );
    drop(proc_);
    crate::common::emit(
        "idle-rss",
        &machine,
        Some(a.server.durability),
        json!({"binary": bin.display().to_string(), "startup": st.json(), "startup_ms_each": startups.iter().map(|d| r3(d.as_secs_f64() * 1e3)).collect::<Vec<_>>(),
               "idle_rss_mb": r3(idle as f64 / 1024.0), "waiting_runs": a.runs, "rss_before_runs_mb": r3(before as f64 / 1024.0),
               "rss_after_runs_mb": r3(after as f64 / 1024.0), "bytes_per_waiting_run": r3(per_run), "data_dir_mb": r3(db_bytes as f64 / 1048576.0)}),
    );
    Ok(())
}
