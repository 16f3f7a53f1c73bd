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
    create_data_dir(&cfg.data_dir).with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
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
    let limits = Arc::new(cfg.limits.clone());
    let opts = aob_runtime::Options {
        max_tasks: cfg.max_tasks,
        visibility: std::time::Duration::from_millis(cfg.visibility_ms),
        limits: limits.clone(),
        jq_sandbox: cfg.jq_sandbox.clone(),
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
        limits,
        metrics_token: cfg.metrics_token.clone(),
        forbid_self_approval: cfg.patches.forbid_self_approval,
    };
    let app = aob_api::router(state, &api_opts);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve = tokio::spawn(aob_api::serve(listener, app, async move {
        let _ = stopped.await;
    }));
    Ok(Server { addr, runtime, serve, stop })
}

/// Creates the data dir readable by the owner only (0700): it holds the database and
/// the first admin key. An existing directory is left as the operator set it up, with a
/// warning when others may read it.
fn create_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(data_dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "the data dir is accessible to other users; 0700 is recommended");
        }
    }
    Ok(())
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

/// Writes a secret file atomically with mode 0600 from its creation: a temp file in the
/// same directory (created exclusively, so it is never opened through a planted
/// symlink), synced, then renamed over `path`. A symlink at `path` is refused: someone
/// who can plant one wants the platform admin key written (or a file clobbered)
/// somewhere else. The rename itself replaces a link planted after the check rather
/// than following it.
pub fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is a symbolic link; refusing to write a secret through it", path.display()),
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "secret".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename is durable once the directory entry is.
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn secrets_are_written_0600_and_never_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("admin.key");
        write_secret(&path, "one").unwrap_or_else(|e| panic!("{e}"));
        write_secret(&path, "two").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read_to_string(&path).ok().as_deref(), Some("two\n"));
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).ok();
        assert_eq!(mode, Some(0o600));
        // Only the secret is left: no temp file stays behind.
        assert_eq!(std::fs::read_dir(dir.path()).map(|d| d.count()).ok(), Some(1));

        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "precious").unwrap_or_else(|e| panic!("{e}"));
        let link = dir.path().join("linked.key");
        std::os::unix::fs::symlink(&target, &link).unwrap_or_else(|e| panic!("{e}"));
        assert!(write_secret(&link, "three").is_err());
        assert_eq!(std::fs::read_to_string(&target).ok().as_deref(), Some("precious"));
        assert!(std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()));
    }

    #[cfg(unix)]
    #[test]
    fn a_new_data_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = dir.path().join("a/b");
        create_data_dir(&data).unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(&data).map(|m| m.permissions().mode() & 0o777).ok();
        assert_eq!(mode, Some(0o700));
    }
}
