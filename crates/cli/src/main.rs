//! `aob`: the server and its command-line client in one binary.
//! Data goes to stdout; progress, diagnostics and errors go to stderr.

use aob_cli::{client, commands, config, output, serve};

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use client::exit;
use output::Format;

#[derive(Parser)]
#[command(name = "aob", version, about = "Durable agentic workflows")]
struct Cli {
    /// Base URL of the aob server.
    #[arg(long, global = true, env = "AOB_API_URL", default_value = "http://127.0.0.1:8080")]
    api_url: String,
    /// API key (default: the key saved by `aob login`, else ./aob-data/admin.key).
    #[arg(long, global = true, env = "AOB_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// How to print results.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Pretty)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: API, engine and workers with the embedded store.
    Serve(ServeArgs),
    /// Start and manage runs.
    #[command(subcommand)]
    Run(commands::RunCmd),
    /// Follow a run's events.
    #[command(subcommand)]
    Logs(commands::LogsCmd),
    /// Validate, store and inspect workflows.
    #[command(subcommand)]
    Workflow(commands::WorkflowCmd),
    /// Read content-addressed artifacts.
    #[command(subcommand)]
    Artifact(commands::ArtifactCmd),
    /// Show the effective server configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Save an API key for this server (verified first).
    Login {
        /// The key; read from stdin when omitted.
        key: Option<String>,
    },
    /// Forget the saved key for this server.
    Logout,
    /// Show who the current key belongs to.
    Whoami,
    /// Approve a pending approval: `<approval-id>` or `<run-id> <node-id>`.
    Approve {
        #[arg(num_args = 1..=2, required = true)]
        target: Vec<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a pending approval: `<approval-id>` or `<run-id> <node-id>`.
    Reject {
        #[arg(num_args = 1..=2, required = true)]
        target: Vec<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// List, show, create and review run patches.
    #[command(subcommand)]
    Patch(commands::PatchCmd),
    /// Re-run a node of a finished run and everything after it.
    Replay {
        run_id: String,
        #[arg(long = "from")]
        node: String,
        /// A JSON/YAML file with a replacement config for the node.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Keys(commands::KeysCmd),
}

#[derive(Args, Clone, Default)]
pub struct ServeArgs {
    /// Listen address.
    #[arg(long)]
    addr: Option<String>,
    /// Data directory of the embedded store.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A TOML config file (default: ./aob.toml if present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// fsync (power-loss safe) or process (survives kill -9, faster).
    #[arg(long)]
    durability: Option<String>,
    /// Keep state in PostgreSQL instead of the embedded SQLite store.
    #[arg(long)]
    database_url: Option<String>,
    /// Dispatch attempts through Redis Streams instead of the in-process queue. With
    /// --database-url too, this process joins a cluster (several `aob serve` share the work).
    #[arg(long)]
    redis_url: Option<String>,
    /// What this process does in a cluster: api, engine, worker or worker:<type>+<type>,
    /// comma-separated (default: all of them).
    #[arg(long)]
    roles: Option<String>,
    /// Allow outbound requests to this IP/CIDR/IP:port despite the SSRF rules (repeatable).
    #[arg(long = "ssrf-allow")]
    ssrf_allow: Vec<String>,
}

impl ServeArgs {
    fn load(&self) -> anyhow::Result<config::Config> {
        let flags = config::Overrides {
            addr: self.addr.clone(),
            data_dir: self.data_dir.clone(),
            durability: self.durability.clone(),
            database_url: self.database_url.clone(),
            redis_url: self.redis_url.clone(),
            roles: self.roles.clone(),
        };
        config::Config::load(self.config.as_ref(), flags, &self.ssrf_allow)
    }
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the merged configuration (defaults, file, AOB_* env, flags).
    Dump(ServeArgs),
}

fn init_tracing(cfg: &config::Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() {
    // The jq sandbox: a child process of the server, answered before anything else starts.
    if std::env::args_os().nth(1).is_some_and(|a| a == aob_exec::sandbox::JQ_SUBCOMMAND) {
        std::process::exit(aob_exec::sandbox::jq_child_main());
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(exit::FAILED);
        }
    };
    let code = rt.block_on(async move {
        let result = tokio::select! {
            r = dispatch(cli) => r,
            _ = tokio::signal::ctrl_c() => Ok(exit::INTERRUPTED),
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                let code = e.downcast_ref::<client::CliError>().map(|c| c.exit_code()).unwrap_or(exit::FAILED);
                eprintln!("error: {e:#}");
                if let Some(client::CliError::Api { details, .. }) = e.downcast_ref::<client::CliError>() {
                    output::print_error_details(details);
                }
                code
            }
        }
    });
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let key = aob_cli::credentials::resolve(cli.api_key.as_deref(), &cli.api_url);
    let client = client::Client::new(&cli.api_url, key.as_deref());
    let fmt = cli.output;
    match cli.command {
        Command::Serve(args) => {
            let mut cfg = args.load()?;
            init_tracing(&cfg);
            if cfg.jq_sandbox.is_none() {
                cfg.jq_sandbox = std::env::current_exe().ok();
            }
            serve::run(cfg).await?;
            Ok(exit::OK)
        }
        Command::Config(ConfigCmd::Dump(args)) => {
            let cfg = args.load()?;
            let mut dump = serde_json::to_value(&cfg)?;
            // A dump is for reading and pasting into tickets: the scrape secret stays out.
            if dump["metrics_token"].is_string() {
                dump["metrics_token"] = serde_json::Value::String("<redacted>".into());
            }
            output::print(fmt, &dump);
            Ok(exit::OK)
        }
        Command::Run(cmd) => commands::run(cmd, &client, fmt).await,
        Command::Logs(cmd) => commands::logs(cmd, &client, fmt).await,
        Command::Workflow(cmd) => commands::workflow(cmd, &client, fmt).await,
        Command::Artifact(cmd) => commands::artifact(cmd, &client, fmt).await,
        Command::Login { key } => commands::login(&cli.api_url, key, fmt).await,
        Command::Logout => commands::logout(&cli.api_url),
        Command::Whoami => {
            output::print(fmt, &client.get("/api/v1/whoami").await?);
            Ok(exit::OK)
        }
        Command::Keys(cmd) => commands::keys(cmd, &client, fmt).await,
        Command::Approve { target, comment } => commands::decide(target, true, comment, &client, fmt).await,
        Command::Reject { target, comment } => commands::decide(target, false, comment, &client, fmt).await,
        Command::Patch(cmd) => commands::patch(cmd, &client, fmt).await,
        Command::Replay { run_id, node, config, reason } => commands::replay(&run_id, &node, config.as_ref(), &reason, &client, fmt).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Catches clashing flags in any subcommand before a user does.
    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
