//! What every benchmark shares: machine facts, the embedded server, a small API
//! client, workflow shapes, a loopback stub, percentiles and the output format.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use aob_cli::config::Config;
use aob_cli::serve::{self, Server};

// ------------------------------------------------------------------ arguments

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// fsync on every group commit: survives power loss.
    Fsync,
    /// No fsync: survives kill -9 of the process, not power loss.
    Process,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Process => "process",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Store durability of the server under test.
    #[arg(long, value_enum, default_value_t = Durability::Fsync)]
    pub durability: Durability,
    /// Parent directory of the temporary data dir (default: the system temp dir).
    /// Point it at /dev/shm to see what a tmpfs does.
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
    /// How a client learns that a run it started has ended (when the POST answer
    /// is not already terminal): tight `GET /api/v1/runs/:id` polling, or the run's
    /// SSE stream filtered to terminal events.
    #[arg(long, value_enum, default_value_t = Wait::Poll)]
    pub wait: Wait,
    /// Run the server under test as a separate `aob serve` process (the real
    /// binary) instead of inside this process; client and server CPU are then
    /// reported apart. (`idle-rss` always uses the binary.)
    #[arg(long)]
    pub external: bool,
    /// The `aob` binary for `--external` and `idle-rss` (default: `aob` next to this
    /// executable, else target/release/aob).
    #[arg(long)]
    pub aob_bin: Option<PathBuf>,
    /// Scale-out mode: run this many `aob serve` processes over PostgreSQL and Redis
    /// (the first `api,engine,worker`, the others `engine,worker`); the client talks
    /// to the first. 0: the embedded mode.
    #[arg(long, default_value_t = 0)]
    pub cluster: usize,
    /// PostgreSQL for `--cluster` (a fresh schema per benchmark, dropped after).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub database_url: String,
    /// Redis for `--cluster` (a fresh key prefix per benchmark).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Wait {
    Poll,
    Sse,
}

impl Wait {
    pub fn as_str(self) -> &'static str {
        match self {
            Wait::Poll => "poll",
            Wait::Sse => "sse",
        }
    }
}

impl ServerArgs {
    pub fn tempdir(&self) -> anyhow::Result<tempfile::TempDir> {
        let b = tempfile::Builder::new()
            .prefix("aob-bench-")
            .tempdir_in(self.tmp_dir.clone().unwrap_or_else(std::env::temp_dir))?;
        Ok(b)
    }
}

// ------------------------------------------------------------------ machine facts

#[derive(Debug, Clone)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub data_dir: PathBuf,
    pub data_fs: String,
    pub loadavg: String,
}

impl Machine {
    pub fn probe(data_dir: &Path) -> Machine {
        let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        let kernel = read_trim("/proc/sys/kernel/osrelease");
        let loadavg = read_trim("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        Machine {
            nproc,
            kernel,
            data_dir: data_dir.to_path_buf(),
            data_fs: fs_type(data_dir),
            loadavg,
        }
    }

    pub fn tmpfs(&self) -> bool {
        self.data_fs == "tmpfs" || self.data_fs == "ramfs"
    }

    pub fn json(&self) -> Value {
        json!({
            "nproc": self.nproc,
            "kernel": self.kernel,
            "data_dir": self.data_dir.display().to_string(),
            "data_fs": self.data_fs,
            "tmpfs": self.tmpfs(),
            "loadavg_at_start": self.loadavg,
        })
    }

    pub fn print(&self, durability: Option<Durability>) {
        let d = durability.map_or("n/a (no store involved)".to_string(), |d| d.as_str().to_string());
        eprintln!(
            "machine: {} cores, kernel {}, data dir {} on {}{}, load {}; durability: {}",
            self.nproc,
            self.kernel,
            self.data_dir.display(),
            self.data_fs,
            if self.tmpfs() { " (tmpfs: fsync is free)" } else { " (not tmpfs)" },
            self.loadavg,
            d
        );
    }
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// The type of the filesystem holding `path`: the longest mount point prefix in /proc/self/mounts.
pub fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "unknown".into();
    };
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_dev), Some(mnt), Some(ty)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let mnt = mnt.replace("\\040", " ");
        if path.starts_with(&mnt) && best.as_ref().is_none_or(|(len, _)| mnt.len() >= *len) {
            best = Some((mnt.len(), ty.to_string()));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, t)| t)
}

/// The soft limit on open files of this process.
pub fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

// ------------------------------------------------------------------ API client

#[derive(Clone)]
pub struct Api {
    pub url: String,
    pub http: reqwest::Client,
    pub wait: Wait,
}

impl Api {
    pub fn new(url: String) -> anyhow::Result<Api> {
        Api::with_key(url, None)
    }

    /// A client that sends `X-API-Key: key` with every request.
    pub fn with_key(url: String, key: Option<&str>) -> anyhow::Result<Api> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(k) = key {
            headers.insert("x-api-key", reqwest::header::HeaderValue::from_str(k.trim())?);
        }
        let http = reqwest::Client::builder().no_proxy().tcp_nodelay(true).default_headers(headers).build()?;
        Ok(Api { url, http, wait: Wait::Poll })
    }

    /// The same server, authenticated with the admin key the server bootstrapped into
    /// `<data-dir>/admin.key` on its first start (if it did: servers without API keys
    /// have none).
    pub fn admin(&self, data_dir: &Path) -> anyhow::Result<Api> {
        let key = std::fs::read_to_string(data_dir.join("admin.key")).ok();
        Ok(Api {
            wait: self.wait,
            ..Api::with_key(self.url.clone(), key.as_deref())?
        })
    }

    /// Stores `workflow` under `tag`.
    pub async fn put_tag(&self, tag: &str, workflow: &Value) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}/api/v1/workflows", self.url))
            .json(&json!({"tag_name": tag, "workflow": workflow}))
            .send()
            .await?;
        let status = r.status();
        if !status.is_success() {
            bail!("creating tag {tag}: HTTP {status}: {}", r.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// `POST /api/v1/runs {tag}` → (run_id, status).
    pub async fn start(&self, tag: &str) -> anyhow::Result<(String, String)> {
        let r = self
            .http
            .post(format!("{}/api/v1/runs", self.url))
            .json(&json!({"tag": tag, "inputs": {}}))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status.as_u16() != 201 {
            bail!("starting a run of {tag}: HTTP {status}: {body}");
        }
        let id = body["run_id"].as_str().context("no run_id in the answer")?.to_string();
        let st = body["status"].as_str().unwrap_or("").to_string();
        Ok((id, st))
    }

    /// `GET /api/v1/runs/:id` → status.
    pub async fn status(&self, id: &str) -> anyhow::Result<String> {
        let r = self.http.get(format!("{}/api/v1/runs/{id}", self.url)).send().await?;
        let code = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !code.is_success() {
            bail!("GET run {id}: HTTP {code}: {body}");
        }
        Ok(body["status"].as_str().unwrap_or("").to_string())
    }

    /// Starts a run of `tag` and waits until it is COMPLETED (polling without
    /// sleeping, or on its SSE stream); returns the time from sending the POST to
    /// seeing COMPLETED.
    pub async fn run_to_end(&self, tag: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let (id, mut st) = self.start(tag).await?;
        if self.wait == Wait::Sse && !matches!(st.as_str(), "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT") {
            let end = self.terminal_event(&id).await?;
            if end != "workflow_completed" {
                bail!("run {id} ended with {end}");
            }
            return Ok(t.elapsed());
        }
        loop {
            match st.as_str() {
                "COMPLETED" => return Ok(t.elapsed()),
                "FAILED" | "CANCELLED" | "TIMEOUT" => bail!("run {id} ended {st}"),
                _ => st = self.status(&id).await?,
            }
        }
    }
}

impl Api {
    /// Reads the run's event stream, filtered to terminal events, until one arrives.
    pub async fn terminal_event(&self, id: &str) -> anyhow::Result<String> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let url = format!(
            "{}/api/v1/runs/{id}/events?last_event_id=0&types=workflow_completed,workflow_failed,workflow_cancelled",
            self.url
        );
        let resp = self.http.get(url).send().await?;
        if !resp.status().is_success() {
            bail!("GET events of {id}: HTTP {}", resp.status());
        }
        let mut stream = resp.bytes_stream().eventsource();
        while let Some(ev) = stream.next().await {
            let ev = ev.map_err(|e| anyhow::anyhow!("SSE: {e}"))?;
            if ev.event.starts_with("workflow_") {
                return Ok(ev.event);
            }
        }
        bail!("the event stream of {id} closed without a terminal event")
    }
}

// ------------------------------------------------------------------ embedded server

/// The server under test, on 127.0.0.1 over a fresh temp data dir: in this process,
/// or with `--external` the real `aob serve` binary.
pub struct Bench {
    pub api: Api,
    pub machine: Machine,
    pub durability: Durability,
    server: Option<Server>,
    process: Option<Proc>,
    /// `--cluster`: the other processes, and the schema to drop at the end.
    members: Vec<Proc>,
    /// Base URLs of every process under test (for their `/metrics`).
    urls: Vec<String>,
    schema: Option<(String, String)>,
    _dirs: Vec<tempfile::TempDir>,
    _dir: tempfile::TempDir,
}

impl Bench {
    pub async fn start(args: &ServerArgs, ssrf_allow: Vec<String>) -> anyhow::Result<Bench> {
        if args.cluster > 0 {
            return Bench::start_cluster(args, ssrf_allow).await;
        }
        let dir = args.tempdir()?;
        let (api, server, process) = if args.external {
            let bin = aob_bin(&args.aob_bin)?;
            let addr = format!("127.0.0.1:{}", free_port()?);
            let api = Api::new(format!("http://{addr}"))?;
            let (p, _) = spawn_aob(&bin, args.durability, dir.path(), &api, &addr, &ssrf_allow).await?;
            eprintln!("server: {} (pid {}), a separate process", bin.display(), p.0.id());
            (api, None, Some(p))
        } else {
            // Through serde so that settings this build does not have are ignored.
            let mut cfg: Config = serde_json::from_value(json!({
                "addr": "127.0.0.1:0",
                "data_dir": dir.path(),
                "durability": args.durability.as_str(),
                "rate_limit": NO_RATE_LIMITS.clone(),
            }))?;
            cfg.ssrf.allow = ssrf_allow;
            cfg.validate()?;
            let server = serve::start(&cfg).await?;
            let api = Api::new(format!("http://{}", server.addr))?;
            (api, Some(server), None)
        };
        let api = Api { wait: args.wait, ..api }.admin(dir.path())?;
        let machine = Machine::probe(dir.path());
        machine.print(Some(args.durability));
        Ok(Bench {
            api,
            machine,
            durability: args.durability,
            server,
            process,
            members: vec![],
            urls: vec![],
            schema: None,
            _dirs: vec![],
            _dir: dir,
        })
    }

    /// `--cluster N`: N real `aob serve` processes over one PostgreSQL schema and one
    /// Redis prefix, waiting until the engines have shared the shards out.
    async fn start_cluster(args: &ServerArgs, ssrf_allow: Vec<String>) -> anyhow::Result<Bench> {
        let bin = aob_bin(&args.aob_bin)?;
        let tag = format!("{}", std::process::id());
        let schema = format!("aob_bench_{tag}");
        let prefix = format!("aob-bench-{tag}");
        let mut procs = Vec::new();
        let mut dirs = Vec::new();
        let mut apis = Vec::new();
        for i in 0..args.cluster {
            let dir = args.tempdir()?;
            let addr = format!("127.0.0.1:{}", free_port()?);
            let api = Api::new(format!("http://{addr}"))?;
            let roles = if i == 0 { "api,engine,worker" } else { "engine,worker" };
            let env = [
                ("AOB_DATABASE_URL", args.database_url.as_str()),
                ("AOB_DATABASE_SCHEMA", schema.as_str()),
                ("AOB_REDIS_URL", args.redis_url.as_str()),
                ("AOB_REDIS_PREFIX", prefix.as_str()),
                ("AOB_ROLES", roles),
            ];
            let (p, _) = spawn_aob_with(&bin, args.durability, dir.path(), &api, &addr, &ssrf_allow, &env).await?;
            eprintln!("member {i}: {roles} on {addr} (pid {})", p.0.id());
            procs.push(p);
            apis.push(api);
            dirs.push(dir);
        }
        // Wait until every engine holds a share of the shards.
        let t = Instant::now();
        loop {
            let mut held = Vec::new();
            for a in &apis {
                let r: Value = a.http.get(format!("{}/readiness", a.url)).send().await?.json().await?;
                held.push(r["shards"].as_array().map_or(0, Vec::len));
            }
            if held.iter().all(|&n| n > 0) && held.iter().sum::<usize>() == 16 {
                eprintln!("shards per member: {held:?} after {:.1} s", t.elapsed().as_secs_f64());
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("shards not shared out within 60 s: {held:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let urls = apis.iter().map(|a| a.url.clone()).collect();
        let first = dirs.remove(0);
        let api = Api {
            wait: args.wait,
            ..apis.remove(0)
        }
        .admin(first.path())?;
        let machine = Machine::probe(first.path());
        machine.print(Some(args.durability));
        let mut procs = procs.into_iter();
        let process = procs.next();
        Ok(Bench {
            api,
            machine,
            durability: args.durability,
            server: None,
            process,
            members: procs.collect(),
            urls,
            schema: Some((args.database_url.clone(), schema)),
            _dirs: dirs,
            _dir: first,
        })
    }

    /// The server's pid when it is a separate process.
    pub fn server_pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.0.id())
    }

    /// Group commits of every engine so far, summed over the processes under test:
    /// `(commits, seconds in commit)`, from their `/metrics`.
    pub async fn commits(&self) -> (u64, f64) {
        let urls = if self.urls.is_empty() {
            vec![self.api.url.clone()]
        } else {
            self.urls.clone()
        };
        let (mut n, mut secs) = (0u64, 0f64);
        for u in urls {
            let Ok(r) = self.api.http.get(format!("{u}/metrics")).send().await else {
                continue;
            };
            let text = r.text().await.unwrap_or_default();
            for l in text.lines() {
                let mut it = l.split_whitespace();
                match (it.next(), it.next()) {
                    (Some("aob_commits_total"), Some(v)) => n += v.parse::<u64>().unwrap_or(0),
                    (Some("aob_commit_seconds_total"), Some(v)) => secs += v.parse::<f64>().unwrap_or(0.0),
                    _ => {}
                }
            }
        }
        (n, secs)
    }

    pub fn cpu(&self) -> Cpu {
        Cpu::now(self.server_pid())
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop.send(());
            let _ = s.serve.await;
            s.runtime.shutdown().await;
        }
        self.process.take();
        self.members.clear();
        if let Some((url, schema)) = self.schema.take()
            && let Err(e) = aob_store_postgres::PgStore::drop_schema(&url, &schema).await
        {
            eprintln!("cannot drop schema {schema}: {e}");
        }
    }

    pub fn emit(&self, bench: &str, results: Value) {
        emit(bench, &self.machine, Some(self.durability), results);
    }
}

// ------------------------------------------------------------------ the real binary

/// The API's rate limits, off: a benchmark is one client doing far more than a
/// tenant may (0 turns a limit off).
static NO_RATE_LIMITS: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| json!({"per_route_per_minute": 0, "tiers": {"simple": 0, "standard": 0, "heavy": 0}}));

/// The same for `aob serve`, through its `AOB_*` environment layer.
const NO_RATE_LIMITS_ENV: [(&str, &str); 4] = [
    ("AOB_RATE_LIMIT__PER_ROUTE_PER_MINUTE", "0"),
    ("AOB_RATE_LIMIT__TIERS__SIMPLE", "0"),
    ("AOB_RATE_LIMIT__TIERS__STANDARD", "0"),
    ("AOB_RATE_LIMIT__TIERS__HEAVY", "0"),
];

/// The `aob` binary: `given`, else `aob` next to this executable, else target/release/aob.
pub fn aob_bin(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let p = match given {
        Some(p) => p.clone(),
        None => {
            let sibling = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("aob")));
            match sibling {
                Some(s) if s.exists() => s,
                _ => PathBuf::from("target/release/aob"),
            }
        }
    };
    if !p.exists() {
        bail!(
            "no aob binary at {}: build it with `cargo build --release -p aob-cli` or pass --aob-bin",
            p.display()
        );
    }
    Ok(p)
}

/// A child process, killed when dropped, so an error never leaves a server behind.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    line.split_whitespace()
        .nth(1)
        .context("malformed VmRSS")?
        .parse()
        .context("VmRSS is not a number")
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Spawns `aob serve` on `addr` over `dir` and polls `/health` without sleeping;
/// returns the process and the time from spawn to the first 200.
pub async fn spawn_aob(bin: &Path, durability: Durability, dir: &Path, api: &Api, addr: &str, ssrf_allow: &[String]) -> anyhow::Result<(Proc, Duration)> {
    spawn_aob_with(bin, durability, dir, api, addr, ssrf_allow, &[]).await
}

/// [`spawn_aob`] with extra `AOB_*` settings.
pub async fn spawn_aob_with(
    bin: &Path,
    durability: Durability,
    dir: &Path,
    api: &Api,
    addr: &str,
    ssrf_allow: &[String],
    env: &[(&str, &str)],
) -> anyhow::Result<(Proc, Duration)> {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--addr", addr, "--data-dir"])
        .arg(dir)
        .args(["--durability", durability.as_str()])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for a in ssrf_allow {
        cmd.args(["--ssrf-allow", a]);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("AOB_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in NO_RATE_LIMITS_ENV.iter().chain(env) {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let child = Proc(cmd.spawn().with_context(|| format!("spawning {}", bin.display()))?);
    let health = format!("{}/health", api.url);
    loop {
        let answer = api.http.get(&health).timeout(Duration::from_secs(2)).send().await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            return Ok((child, t.elapsed()));
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("aob serve did not answer /health within 30 s");
        }
    }
}

/// One JSON line on stdout.
pub fn emit(bench: &str, machine: &Machine, durability: Option<Durability>, results: Value) {
    let line = json!({
        "bench": bench,
        "durability": durability.map(Durability::as_str),
        "command": std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        "machine": machine.json(),
        "results": results,
    });
    println!("{line}");
}

// ------------------------------------------------------------------ load drivers

/// `runs` runs of `tag`, `concurrency` client loops each with one run in flight.
/// Returns the wall time and every run's latency.
pub async fn closed_loop(api: &Api, tag: &str, runs: usize, concurrency: usize) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (api, tag, next) = (api.clone(), tag.to_string(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < runs {
                lat.push(api.run_to_end(&tag).await?);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(runs);
    for h in tasks {
        all.extend(h.await??);
    }
    Ok((t.elapsed(), all))
}

// ------------------------------------------------------------------ statistics

pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// Percentiles in milliseconds, nearest-rank on the sorted samples.
pub fn summarize(samples: &[Duration]) -> Summary {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    if n == 0 {
        return Summary {
            n,
            p50: 0.0,
            p99: 0.0,
            mean: 0.0,
            min: 0.0,
            max: 0.0,
        };
    }
    let pct = |p: f64| ms[(((p / 100.0) * n as f64).ceil() as usize).clamp(1, n) - 1];
    Summary {
        n,
        p50: pct(50.0),
        p99: pct(99.0),
        mean: ms.iter().sum::<f64>() / n as f64,
        min: ms[0],
        max: ms[n - 1],
    }
}

impl Summary {
    pub fn json(&self) -> Value {
        json!({"n": self.n, "p50_ms": r3(self.p50), "p99_ms": r3(self.p99), "mean_ms": r3(self.mean), "min_ms": r3(self.min), "max_ms": r3(self.max)})
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {:.3} ms, p99 {:.3} ms (mean {:.3}, min {:.3}, max {:.3}, n={})",
            self.p50, self.p99, self.mean, self.min, self.max, self.n
        )
    }
}

/// Rounds to 3 decimals for the JSON line.
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

// ------------------------------------------------------------------ workflow shapes

/// `n` noop nodes in a line.
pub fn noop_chain(name: &str, n: usize) -> Value {
    let nodes: Vec<Value> = (0..n).map(|i| json!({"id": format!("n{i}"), "type": "noop"})).collect();
    let edges: Vec<Value> = (1..n).map(|i| json!({"from": format!("n{}", i - 1), "to": format!("n{i}")})).collect();
    json!({"name": name, "nodes": nodes, "edges": edges})
}

/// What the parallel / looped nodes do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Evaluated inline by the engine: no dispatch at all.
    Noop,
    /// An `http` GET to an in-process loopback stub: every node is dispatched to a worker.
    Http,
    /// Both, one after the other.
    Both,
}

impl Kind {
    pub fn expand(self) -> Vec<Kind> {
        match self {
            Kind::Both => vec![Kind::Noop, Kind::Http],
            k => vec![k],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Noop => "noop",
            Kind::Http => "http",
            Kind::Both => "both",
        }
    }
}

fn step(id: &str, kind: Kind, stub: Option<&str>) -> Value {
    match (kind, stub) {
        (Kind::Http, Some(base)) => {
            json!({"id": id, "type": "http", "config": {"method": "GET", "url": format!("{base}/{id}")}})
        }
        _ => json!({"id": id, "type": "noop"}),
    }
}

/// start → `width` parallel nodes → join.
pub fn fan_join(name: &str, width: usize, kind: Kind, stub: Option<&str>) -> Value {
    let mut nodes = vec![json!({"id": "start", "type": "noop"})];
    let mut edges = Vec::new();
    for i in 0..width {
        let id = format!("p{i}");
        nodes.push(step(&id, kind, stub));
        edges.push(json!({"from": "start", "to": id}));
        edges.push(json!({"from": id, "to": "join"}));
    }
    nodes.push(json!({"id": "join", "type": "noop"}));
    json!({"name": name, "nodes": nodes, "edges": edges})
}

/// A `wait` gate of `gate_ms`, then a loop running `body` `iterations` times, then `done`.
pub fn gated_loop(name: &str, gate_ms: u64, iterations: u32, kind: Kind, stub: Option<&str>) -> Value {
    json!({
        "name": name,
        "nodes": [
            {"id": "gate", "type": "wait", "config": {"duration_ms": gate_ms}},
            step("body", kind, stub),
            {"id": "again", "type": "loop", "config": {"max_iterations": iterations, "loop_back_to": "body", "break_path": ["done"], "timeout_path": ["done"]}},
            {"id": "done", "type": "noop"}
        ],
        "edges": [{"from": "gate", "to": "body"}, {"from": "body", "to": "again"}]
    })
}

/// One `wait` node.
pub fn one_wait(name: &str, ms: u64) -> Value {
    json!({"name": name, "nodes": [{"id": "w", "type": "wait", "config": {"duration_ms": ms}}], "edges": []})
}

// ------------------------------------------------------------------ loopback stub

/// A loopback HTTP server answering every request with `{"ok": true}`.
pub struct Stub {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Stub {
    pub async fn start() -> anyhow::Result<Stub> {
        let app = axum::Router::new().fallback(|| async { axum::Json(json!({"ok": true})) });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Stub { addr, task })
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The SSRF allow-list entry that lets the server reach this stub.
    pub fn allow(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ------------------------------------------------------------------ CPU accounting

/// CPU time in clock ticks (USER_HZ = 100 on Linux): of this process (the client,
/// and the server too unless it is external), of the external server, and of the
/// store's writer thread wherever the server runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    own: u64,
    server: Option<(u32, u64)>,
    writer: u64,
}

const TICKS_PER_S: f64 = 100.0;

/// (thread name, utime + stime) from a /proc stat file.
fn stat_ticks(path: &Path) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let (open, close) = (s.find('(')?, s.rfind(')')?);
    let comm = s[open + 1..close].to_string();
    let f: Vec<&str> = s[close + 1..].split_whitespace().collect();
    Some((comm, f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
}

fn writer_ticks(proc_dir: &str) -> u64 {
    let mut writer = 0;
    if let Ok(dir) = std::fs::read_dir(format!("{proc_dir}/task")) {
        for e in dir.flatten() {
            if let Some((comm, t)) = stat_ticks(&e.path().join("stat")) {
                // Thread names are cut to 15 bytes: "aob-sqlite-writ".
                if comm.starts_with("aob-sqlite-wri") {
                    writer += t;
                }
            }
        }
    }
    writer
}

impl Cpu {
    pub fn now(server_pid: Option<u32>) -> Cpu {
        let own = stat_ticks(Path::new("/proc/self/stat")).map_or(0, |(_, t)| t);
        match server_pid {
            Some(pid) => {
                let dir = format!("/proc/{pid}");
                let server = stat_ticks(&Path::new(&dir).join("stat")).map_or(0, |(_, t)| t);
                Cpu {
                    own,
                    server: Some((pid, server)),
                    writer: writer_ticks(&dir),
                }
            }
            None => Cpu {
                own,
                server: None,
                writer: writer_ticks("/proc/self"),
            },
        }
    }

    /// CPU used since `self`, per unit of work, and how many cores were busy on average.
    pub fn since(self, units: usize, wall: Duration) -> Value {
        let now = Cpu::now(self.server.map(|(pid, _)| pid));
        let secs = |a: u64, b: u64| a.saturating_sub(b) as f64 / TICKS_PER_S;
        let own = secs(now.own, self.own);
        let writer = secs(now.writer, self.writer);
        let server = match (now.server, self.server) {
            (Some((_, a)), Some((_, b))) => Some(secs(a, b)),
            _ => None,
        };
        let total = own + server.unwrap_or(0.0);
        let per = |s: f64| r3(s * 1e3 / units.max(1) as f64);
        let mut v = json!({
            "server": if server.is_some() { "external process" } else { "in this process" },
            "cpu_s": r3(total),
            "cores_busy": r3(total / wall.as_secs_f64().max(1e-9)),
            "cpu_ms_per_unit": per(total),
            "store_writer_cpu_ms_per_unit": per(writer),
        });
        if let Some(sv) = server {
            v["server_cpu_ms_per_unit"] = json!(per(sv));
            v["client_cpu_ms_per_unit"] = json!(per(own));
        }
        v
    }
}

/// One stderr line for a `Cpu::since` value.
pub fn cpu_line(v: &Value) -> String {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let split = match v.get("server_cpu_ms_per_unit") {
        Some(_) => format!(
            " (server process {:.3} ms, client {:.3} ms)",
            f("server_cpu_ms_per_unit"),
            f("client_cpu_ms_per_unit")
        ),
        None => " (client and server in one process)".to_string(),
    };
    format!(
        "CPU: {:.2} of {} cores busy; {:.3} ms per unit{split}, of which the store writer thread {:.3} ms",
        f("cores_busy"),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        f("cpu_ms_per_unit"),
        f("store_writer_cpu_ms_per_unit")
    )
}
