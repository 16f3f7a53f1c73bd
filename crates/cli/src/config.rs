//! Server configuration: defaults < config file < `AOB_*` environment < flags,
//! loaded once in `main` and passed down.

use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address the API listens on.
    pub addr: String,
    /// Where the embedded store lives.
    pub data_dir: PathBuf,
    /// `fsync` (power-loss safe) or `process` (survives kill -9).
    pub durability: String,
    /// Tasks executing at once.
    pub max_tasks: usize,
    /// Largest request body, bytes.
    pub body_limit: usize,
    pub ssrf: Ssrf,
    pub log: Log,
    /// Token buckets: `per_route_per_minute` per API key and route, and run creations
    /// per tenant and user by tier (`tiers.simple|standard|heavy`); 0 turns one off.
    pub rate_limit: aob_api::RateLimits,
    /// WebSocket send queue (`buffer` messages) and how long it may stay full
    /// (`slow_consumer_ms`) before the consumer is dropped.
    pub ws: aob_api::WsOptions,
    /// PostgreSQL instead of the embedded SQLite store (`postgres://…`).
    pub database_url: Option<String>,
    /// Schema for the PostgreSQL tables (default: the connection's `search_path`).
    pub database_schema: Option<String>,
    pub database_max_connections: u32,
    /// Redis Streams instead of the in-process queue for attempts (`redis://…`).
    pub redis_url: Option<String>,
    /// Key prefix for everything aob keeps in Redis.
    pub redis_prefix: String,
    /// What this process does when it is part of a cluster (`database_url` and
    /// `redis_url` both set): `api`, `engine`, `worker` or `worker:<type>+<type>`, comma-separated.
    pub roles: String,
    pub cluster: Cluster,
    /// How long a pulled attempt stays leased without a heartbeat (a dead worker's
    /// attempt is redelivered after this).
    pub visibility_ms: u64,
    /// Quotas on what users send and what their workflows do (OPERATIONS.md, "Limits
    /// and quotas"); `[limits]` in the file, `AOB_LIMITS__<NAME>` in the environment.
    pub limits: aob_limits::Limits,
    /// The `aob` binary that runs jq programs in a process of their own (`aob __jq`).
    /// `aob serve` uses itself; without one, jq runs in the server process and a
    /// program that never ends cannot be stopped.
    pub jq_sandbox: Option<PathBuf>,
    /// A bearer token a metrics scraper may read `/metrics` with (at least 16
    /// characters); without it only platform admins' keys may.
    pub metrics_token: Option<aob_api::auth::ScrapeToken>,
    pub patches: Patches,
    /// Embedded mode: an attempt that was running during this many process crashes
    /// (counted in the data dir's attempts journal) fails with `attempt_crashed` instead
    /// of running again; 0 turns it off.
    pub attempt_crash_limit: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Patches {
    /// Under patch review, refuse (403) a user approving a run patch they wrote.
    pub forbid_self_approval: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Cluster {
    /// Shards runs are partitioned into; every process of a cluster must use the same number.
    pub shards: u32,
    /// How long an engine's shard lease lasts without renewal: the takeover delay when
    /// an engine dies (renewed every third of it).
    pub lease_ttl_ms: u64,
    /// How long a call forwarded to another engine waits for its answer (then 503).
    pub call_timeout_ms: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            shards: 16,
            lease_ttl_ms: 10_000,
            call_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Ssrf {
    /// Addresses outbound requests may reach despite the block rules: `IP`, `CIDR`,
    /// `IP:port`, `[IPv6]:port`. Empty by default; meant for tests and intranets.
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Log {
    /// `pretty` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info,aob_runtime=debug`.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: "pretty".into(),
            level: "info".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./aob-data"),
            durability: "fsync".into(),
            max_tasks: 512,
            body_limit: 4 * 1024 * 1024,
            ssrf: Ssrf::default(),
            log: Log::default(),
            rate_limit: Default::default(),
            ws: Default::default(),
            database_url: None,
            database_schema: None,
            database_max_connections: 16,
            redis_url: None,
            redis_prefix: "aob".into(),
            roles: "api,engine,worker".into(),
            cluster: Cluster::default(),
            visibility_ms: 30_000,
            limits: aob_limits::Limits::default(),
            jq_sandbox: None,
            metrics_token: None,
            patches: Patches::default(),
            attempt_crash_limit: 3,
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durability: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<String>,
}

impl Config {
    pub fn load(file: Option<&PathBuf>, flags: Overrides, ssrf_allow: &[String]) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(f) => {
                if !f.exists() {
                    anyhow::bail!("config file {} does not exist", f.display());
                }
                fig = fig.merge(Toml::file(f));
            }
            None => fig = fig.merge(Toml::file("aob.toml")),
        }
        fig = fig.merge(Env::prefixed("AOB_").split("__").ignore(&["api_url", "failpoints", "admin_key"]));
        fig = fig.merge(Serialized::defaults(flags));
        let mut cfg: Config = fig.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        cfg.ssrf.allow.extend(ssrf_allow.iter().cloned());
        cfg.validate()?;
        Ok(cfg)
    }

    /// PostgreSQL and Redis both set: this process is a member of a cluster.
    pub fn clustered(&self) -> bool {
        self.database_url.is_some() && self.redis_url.is_some()
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !matches!(self.durability.as_str(), "fsync" | "process") {
            anyhow::bail!("durability must be fsync or process, not '{}'", self.durability);
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            anyhow::bail!("log.format must be pretty or json, not '{}'", self.log.format);
        }
        let roles = aob_runtime::Roles::parse(&self.roles).map_err(|e| anyhow::anyhow!("roles: {e}"))?;
        if roles != aob_runtime::Roles::all() && !self.clustered() {
            anyhow::bail!("roles other than api,engine,worker need a cluster: set database_url and redis_url");
        }
        if self.cluster.shards == 0 || self.cluster.shards > 4096 {
            anyhow::bail!("cluster.shards must be between 1 and 4096, not {}", self.cluster.shards);
        }
        if self.cluster.lease_ttl_ms < 300 {
            anyhow::bail!("cluster.lease_ttl_ms must be at least 300");
        }
        if self.visibility_ms < 100 {
            anyhow::bail!("visibility_ms must be at least 100");
        }
        self.limits.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        if self.metrics_token.as_ref().is_some_and(|t| !t.is_strong()) {
            anyhow::bail!("metrics_token must be at least {} characters", aob_api::auth::SCRAPE_TOKEN_MIN_LEN);
        }
        for a in &self.ssrf.allow {
            a.parse::<aob_ssrf::AllowRule>().map_err(|e| anyhow::anyhow!("ssrf.allow entry '{a}': {e}"))?;
        }
        Ok(())
    }
}
