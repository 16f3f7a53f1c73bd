//! API figures: `GET /api/v1/runs/:id` under load, `POST /api/v1/runs` latency.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde_json::json;

use crate::common::{Bench, ServerArgs, cpu_line, noop_chain, per_sec, r3, summarize};

#[derive(Debug, Clone, Args)]
pub struct ApiGetArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Concurrent client loops.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 1)]
    pub warmup_seconds: u64,
}

pub async fn api_get(a: ApiGetArgs) -> anyhow::Result<()> {
    let b = Bench::start(&a.server, vec![]).await?;
    let tag = "bench-get";
    b.api.put_tag(tag, &noop_chain(tag, 1)).await?;
    let (id, st) = b.api.start(tag).await?;
    if st != "COMPLETED" {
        bail!("the 1-node noop run is {st} after its POST, expected COMPLETED");
    }
    let url = format!("{}/api/v1/runs/{id}", b.api.url);
    let hammer = |secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..a.clients)
            .map(|_| {
                let (http, url) = (b.api.http.clone(), url.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let r = http.get(&url).send().await?;
                        let ok = r.status().is_success();
                        let body = r.bytes().await?;
                        if !ok {
                            bail!("GET {url}: {}", String::from_utf8_lossy(&body));
                        }
                        lat.push(t.elapsed());
                    }
                    anyhow::Ok(lat)
                })
            })
            .collect();
        async move {
            let t = Instant::now();
            let mut all = Vec::new();
            for h in tasks {
                all.extend(h.await??);
            }
            anyhow::Ok((t.elapsed(), all))
        }
    };
    hammer(a.warmup_seconds).await?;
    let cpu0 = b.cpu();
    let (wall, lat) = hammer(a.seconds).await?;
    let cpu = cpu0.since(lat.len(), wall);
    let s = summarize(&lat);
    let rps = per_sec(lat.len(), wall);
    eprintln!(
        "api-get: {} clients, {:.1} s, {}: {rps:.0} GET/s; {}",
        a.clients,
        wall.as_secs_f64(),
        a.server.durability.as_str(),
        s.line()
    );
    eprintln!("api-get: {} (unit = request)", cpu_line(&cpu));
    b.emit(
        "api-get",
        json!({"clients": a.clients, "seconds": r3(wall.as_secs_f64()), "requests": lat.len(), "requests_per_s": r3(rps), "latency": s.json(), "cpu": cpu}),
    );
    b.stop().await;
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct PostRunsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Sequential measured requests.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
}

pub async fn post_runs(a: PostRunsArgs) -> anyhow::Result<()> {
    let b = Bench::start(&a.server, vec![]).await?;
    let tag = "bench-post";
    b.api.put_tag(tag, &noop_chain(tag, 1)).await?;
    for _ in 0..a.warmup {
        b.api.start(tag).await?;
    }
    let mut lat = Vec::with_capacity(a.requests);
    let mut not_completed = 0;
    let cpu0 = b.cpu();
    let t0 = Instant::now();
    for _ in 0..a.requests {
        let t = Instant::now();
        let (_, st) = b.api.start(tag).await?;
        lat.push(t.elapsed());
        if st != "COMPLETED" {
            not_completed += 1;
        }
    }
    let wall = t0.elapsed();
    let cpu = cpu0.since(a.requests, wall);
    let s = summarize(&lat);
    eprintln!(
        "post-runs: {} sequential POST /api/v1/runs (1-node noop by tag), {}: {}; {:.0} req/s; {not_completed} answers were not yet COMPLETED",
        a.requests,
        a.server.durability.as_str(),
        s.line(),
        per_sec(a.requests, wall)
    );
    eprintln!("post-runs: {} (unit = request)", cpu_line(&cpu));
    b.emit("post-runs", json!({"requests": a.requests, "latency": s.json(), "requests_per_s": r3(per_sec(a.requests, wall)), "not_completed_in_answer": not_completed, "cpu": cpu}));
    b.stop().await;
    Ok(())
}
