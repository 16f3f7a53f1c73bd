//! `aob serve`: the store, the runtime and the API; embedded (SQLite) by default, a
//! cluster member over PostgreSQL and Redis.

use std::sync::Arc;

use anyhow::Context;

use aob_runtime::{Runtime, SystemClock};
use aob_store_sqlite::{Durability, Options as StoreOptions, SqliteStore};

use crate::config::Config;

pub struct Server {
    pub addr: std::net::SocketAddr,
    pub runtime: Runtime,
    pub serve: tokio::task::JoinHandle<std::io::Result<()>>,
    pub stop: tokio::sync::oneshot::Sender<()>,
}

/// Opens the store, recovers runs, binds the listener and starts serving.
pub async fn start(cfg: &Config) -> anyhow::Result<Server> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let durability = if cfg.durability == "process" {
        Durability::Process
    } else {
        Durability::Fsync
    };
    let store: Arc<dyn aob_store::Store> = match &cfg.database_url {
        Some(url) => {
            let opts = aob_store_postgres::Options {
                url: url.clone(),
                max_connections: cfg.database_max_connections,
                schema: cfg.database_schema.clone(),
            };
            Arc::new(aob_store_postgres::PgStore::connect(opts).await.context("connecting to PostgreSQL")?)
        }
        None => Arc::new(
            SqliteStore::open(StoreOptions {
                path: cfg.data_dir.join("aob.db"),
                durability,
                readers: 4,
            })
            .with_context(|| format!("opening store in {}", cfg.data_dir.display()))?,
        ),
    };
    let mut policy = aob_ssrf::Policy::default();
    for a in &cfg.ssrf.allow {
        policy.allow.push(a.parse().map_err(|e| anyhow::anyhow!("ssrf.allow '{a}': {e}"))?);
    }
    let guard = aob_ssrf::Guard::new(policy);
    let clock = Arc::new(SystemClock);
    let started_at = aob_runtime::Clock::now_ms(&*clock);
    // Embedded mode only: the journal is per process, and in scale-out an attempt that
    // killed one worker is redelivered to another, which cannot see that count.
    let journal = if cfg.attempt_crash_limit > 0 && !cfg.clustered() {
        let j = aob_runtime::AttemptJournal::open(&cfg.data_dir).with_context(|| format!("opening the attempts journal in {}", cfg.data_dir.display()))?;
        Some(Arc::new(j))
    } else {
        None
    };
    let opts = aob_runtime::Options {
        max_tasks: cfg.max_tasks,
        visibility: std::time::Duration::from_millis(cfg.visibility_ms),
        crash_limit: cfg.attempt_crash_limit,
        journal,
        ..Default::default()
    };
    let dispatch_opts = aob_dispatch::Options {
        visibility: opts.visibility,
        ..Default::default()
    };
    let roles = aob_runtime::Roles::parse(&cfg.roles).map_err(|e| anyhow::anyhow!("roles: {e}"))?;
    let listener = tokio::net::TcpListener::bind(&cfg.addr)
        .await
        .with_context(|| format!("binding {}", cfg.addr))?;
    let addr = listener.local_addr()?;
    // One name per process start: a restarted process must not inherit a dead one's
    // pending entries (or shard leases) except through reclaim and expiry.
    let member = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let runtime = match (&cfg.redis_url, cfg.clustered()) {
        (Some(url), true) => {
            let work = aob_dispatch_redis::RedisDispatch::connect(url, &cfg.redis_prefix, &member, dispatch_opts)
                .await
                .context("connecting to Redis")?;
            let lease_ttl = std::time::Duration::from_millis(cfg.cluster.lease_ttl_ms);
            // Control entries of a dead engine go to the shard's next owner after one
            // lease TTL. A completion is never dead-lettered: its run would wait for it.
            let control_opts = aob_dispatch::Options {
                visibility: lease_ttl,
                max_deliveries: u32::MAX,
            };
            let control = aob_dispatch_redis::RedisDispatch::connect(url, &format!("{}:ctl", cfg.redis_prefix), &member, control_opts)
                .await
                .context("connecting to Redis")?;
            let bus = aob_dispatch_redis::RedisBus::connect(url, &cfg.redis_prefix)
                .await
                .context("connecting to Redis")?;
            let cluster = aob_runtime::ClusterOptions {
                id: member,
                roles: roles.clone(),
                addr: addr.to_string(),
                shards: cfg.cluster.shards,
                lease_ttl,
                call_timeout: std::time::Duration::from_millis(cfg.cluster.call_timeout_ms),
                control: Arc::new(control),
                bus: Arc::new(bus),
            };
            Runtime::start_cluster(opts, cluster, store, Arc::new(work), guard, clock)
                .await
                .context("joining the cluster")?
        }
        (Some(url), false) => {
            let work = aob_dispatch_redis::RedisDispatch::connect(url, &cfg.redis_prefix, &member, dispatch_opts)
                .await
                .context("connecting to Redis")?;
            Runtime::start(opts, store, Arc::new(work), guard, clock)
        }
        (None, _) => Runtime::start(opts, store, Arc::new(aob_dispatch::MemoryDispatch::new(dispatch_opts)), guard, clock),
    };
    if roles.api {
        bootstrap_admin(&runtime.handle, &cfg.data_dir).await?;
    }
    let keys = if cfg.clustered() {
        // Another API process may revoke a key: trust a cached one for a few seconds only.
        aob_api::auth::Keys::shared(runtime.handle.store.clone(), std::time::Duration::from_secs(5))
    } else {
        aob_api::auth::Keys::new(runtime.handle.store.clone())
    };
    let state = aob_api::AppState::new(runtime.handle.clone(), keys, started_at);
    let api_opts = aob_api::Options {
        body_limit: cfg.body_limit,
        rate_limit: cfg.rate_limit.clone(),
        ws: cfg.ws.clone(),
        limit_clock: None,
        api: roles.api,
        shared_store: cfg.clustered(),
    };
    let app = aob_api::router(state, &api_opts);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve = tokio::spawn(aob_api::serve(listener, app, async move {
        let _ = stopped.await;
    }));
    Ok(Server { addr, runtime, serve, stop })
}

/// The file the first admin key is written to, readable by the owner only.
pub fn admin_key_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("admin.key")
}

/// On the very first start (no key exists), creates an admin key for the default
/// tenant and writes it to `<data-dir>/admin.key` (mode 0600) so the local CLI works at once.
async fn bootstrap_admin(rt: &aob_runtime::Handle, data_dir: &std::path::Path) -> anyhow::Result<()> {
    if !rt.store.list_keys(None).await?.is_empty() {
        return Ok(());
    }
    let now = aob_runtime::Clock::now_ms(&*rt.clock);
    let (plain, key) = aob_api::auth::generate(aob_api::auth::DEFAULT_TENANT, "admin", aob_api::auth::ADMIN, "bootstrap", now);
    let path = admin_key_path(data_dir);
    write_secret(&path, &plain).with_context(|| format!("writing {}", path.display()))?;
    rt.store.put_key(key).await?;
    tracing::info!(path = %path.display(), "created the first admin key");
    Ok(())
}

fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let server = start(&cfg).await?;
    tracing::info!(addr = %server.addr, data_dir = %cfg.data_dir.display(), durability = %cfg.durability, "aob listening");
    eprintln!("aob listening on http://{}", server.addr);
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = server.stop.send(());
    let _ = server.serve.await;
    server.runtime.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
