//! Client commands. Each talks to the API and prints data to stdout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::client::{CliError, Client, exit, seg};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum RunCmd {
    /// Start a run from a workflow file (JSON/YAML) or a stored tag.
    Start {
        /// A workflow file, or the name of a tag.
        target: String,
        /// A JSON file with the run inputs.
        #[arg(long)]
        inputs: Option<PathBuf>,
        /// One input, `key=value` (value parsed as JSON when it parses). Repeatable.
        #[arg(long = "input", short = 'i')]
        input: Vec<String>,
        /// Follow the run live until it ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Run against an embedded server started in this process (no `aob serve` needed).
        #[arg(long)]
        local: bool,
        /// Data directory for --local.
        #[arg(long, default_value = "./aob-data")]
        data_dir: PathBuf,
        /// Idempotency key: starting twice with one key starts one run.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show a run.
    Status { run_id: String },
    /// Show a run with per-node state.
    Details { run_id: String },
    /// List runs, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Cancel a run.
    Cancel {
        run_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Pause a run: nothing new is dispatched until resume.
    Pause { run_id: String },
    /// Resume a paused run.
    Resume { run_id: String },
}

#[derive(Subcommand)]
pub enum LogsCmd {
    /// Stream a run's events until it ends (history first).
    Stream {
        run_id: String,
        /// Only events of this node.
        #[arg(long)]
        node: Option<String>,
        /// `all` or `errors` (failures and retries only).
        #[arg(long, default_value = "all")]
        filter: String,
        /// Resume after this event seq.
        #[arg(long)]
        after: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum WorkflowCmd {
    /// Validate a workflow file locally; lists every problem with its JSON pointer.
    Validate { file: PathBuf },
    /// Store a workflow and point a tag at it.
    Create { tag: String, file: PathBuf },
    /// List tags.
    List,
    /// Show a tag's workflow, or one of its past versions.
    Show {
        tag: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Delete a tag (its versions stay addressable by hash).
    Delete { tag: String },
    /// Print the JSON Schema of the workflow format.
    Schema,
    /// Patch a tag with RFC 6902 operations from a JSON/YAML file (a new version).
    Patch {
        tag: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "")]
        description: String,
        /// Refuse (409) unless the tag is at this version.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Every move of a tag: who, when, which version.
    History { tag: String },
    /// Point a tag at one of its past versions (undo/redo).
    Move {
        tag: String,
        #[arg(long)]
        version: u64,
    },
}

#[derive(Subcommand)]
pub enum ArtifactCmd {
    /// Fetch an artifact by id (content hash).
    Get {
        id: String,
        /// Write the content to this file instead of stdout.
        #[arg(long = "out")]
        out: Option<PathBuf>,
    },
}

pub fn read_doc(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).map_err(|e| CliError::Usage(format!("{}: invalid JSON: {e}", path.display())))?
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| CliError::Usage(format!("{}: invalid YAML: {e}", path.display())))?
    };
    Ok(v)
}

fn parse_inputs(file: Option<&PathBuf>, pairs: &[String]) -> anyhow::Result<Value> {
    let mut inputs = match file {
        Some(f) => read_doc(f)?,
        None => json!({}),
    };
    let Some(obj) = inputs.as_object_mut() else {
        return Err(CliError::Usage("inputs must be a JSON object".into()).into());
    };
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| CliError::Usage(format!("--input '{p}' must be key=value")))?;
        obj.insert(k.to_string(), serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string())));
    }
    Ok(inputs)
}

pub async fn run(cmd: RunCmd, client: &Client, fmt: Format) -> anyhow::Result<i32> {
    match cmd {
        RunCmd::Start {
            target,
            inputs,
            input,
            follow,
            local,
            data_dir,
            idempotency_key,
        } => {
            let inputs = parse_inputs(inputs.as_ref(), &input)?;
            let path = PathBuf::from(&target);
            let mut body = if path.is_file() {
                json!({"workflow": read_doc(&path)?})
            } else {
                json!({"tag": target})
            };
            body["inputs"] = inputs;
            if let Some(k) = idempotency_key {
                body["idempotency_key"] = json!(k);
            }
            if local {
                let cfg = crate::config::Config {
                    addr: "127.0.0.1:0".into(),
                    data_dir,
                    // jq in a child of this same binary, as under `aob serve`.
                    jq_sandbox: std::env::current_exe().ok(),
                    ..Default::default()
                };
                let server = crate::serve::start(&cfg).await?;
                let key = crate::credentials::read_key_file(&crate::serve::admin_key_path(&cfg.data_dir));
                let local_client = Client::new(&format!("http://{}", server.addr), key.as_deref());
                let code = start_run(&local_client, &body, follow, fmt).await;
                let _ = server.stop.send(());
                let _ = server.serve.await;
                server.runtime.shutdown().await;
                return code;
            }
            start_run(client, &body, follow, fmt).await
        }
        RunCmd::Status { run_id } => {
            output::print(fmt, &client.get(&format!("/api/v1/runs/{}", seg(&run_id))).await?);
            Ok(exit::OK)
        }
        RunCmd::Details { run_id } => {
            let d = client.get(&format!("/api/v1/runs/{}/details", seg(&run_id))).await?;
            if fmt == Format::Pretty {
                eprintln!("run {} {}", d["run_id"].as_str().unwrap_or(""), d["status"].as_str().unwrap_or(""));
                let rows = d["nodes"].as_array().cloned().unwrap_or_default();
                output::table(
                    fmt,
                    &d,
                    &rows,
                    &[
                        ("NODE", "node_id"),
                        ("TYPE", "type"),
                        ("STATUS", "status"),
                        ("ATTEMPT", "attempt"),
                        ("MS", "duration_ms"),
                    ],
                );
            } else {
                output::print(fmt, &d);
            }
            Ok(exit::OK)
        }
        RunCmd::List { status, tag, limit, cursor } => {
            let mut q = format!("/api/v1/runs?limit={limit}");
            for (k, v) in [("status", status), ("tag", tag), ("cursor", cursor)] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", seg(&v)));
                }
            }
            let v = client.get(&q).await?;
            let rows = v["runs"].as_array().cloned().unwrap_or_default();
            output::table(
                fmt,
                &v,
                &rows,
                &[
                    ("RUN", "run_id"),
                    ("STATUS", "status"),
                    ("TAG", "tag"),
                    ("CREATED", "created_at"),
                    ("COMPLETED", "completed_at"),
                ],
            );
            if let (Format::Pretty, Some(c)) = (fmt, v["next_cursor"].as_str()) {
                eprintln!("more: --cursor {c}");
            }
            Ok(exit::OK)
        }
        RunCmd::Cancel { run_id, reason } => {
            let body = json!({"reason": reason});
            output::print(fmt, &client.post(&format!("/api/v1/runs/{}/cancel", seg(&run_id)), &body).await?);
            Ok(exit::OK)
        }
        RunCmd::Pause { run_id } => {
            output::print(fmt, &client.post(&format!("/api/v1/runs/{}/pause", seg(&run_id)), &json!({})).await?);
            Ok(exit::OK)
        }
        RunCmd::Resume { run_id } => {
            output::print(fmt, &client.post(&format!("/api/v1/runs/{}/resume", seg(&run_id)), &json!({})).await?);
            Ok(exit::OK)
        }
    }
}

async fn start_run(client: &Client, body: &Value, follow: bool, fmt: Format) -> anyhow::Result<i32> {
    let created = client.post("/api/v1/runs", body).await?;
    let run_id = created["run_id"].as_str().unwrap_or_default().to_string();
    if !follow {
        output::print(fmt, &created);
        return Ok(exit::OK);
    }
    eprintln!("run {run_id} started");
    follow_run(client, &run_id, None, None, false).await?;
    let run = client.get(&format!("/api/v1/runs/{}", seg(&run_id))).await?;
    output::print(fmt, &run);
    Ok(if run["status"] == "COMPLETED" { exit::OK } else { exit::FAILED })
}

/// Prints one line per event to stderr until the run's terminal event.
async fn follow_run(client: &Client, run_id: &str, node: Option<&str>, after: Option<u64>, errors_only: bool) -> anyhow::Result<()> {
    let mut path = format!("/api/v1/runs/{}/events", seg(run_id));
    if let Some(a) = after {
        path.push_str(&format!("?last_event_id={a}"));
    }
    let resp = client.stream(&path).await?;
    let started = Instant::now();
    let mut events = resp.bytes_stream().eventsource();
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|e| CliError::Failed(format!("event stream broke: {e}")))?;
        let Ok(e) = serde_json::from_str::<Value>(&ev.data) else { continue };
        let kind = e["type"].as_str().unwrap_or("");
        let node_id = e["node_id"].as_str();
        if node.is_some() && node_id != node && !kind.starts_with("workflow_") {
            continue;
        }
        if errors_only && !matches!(kind, "node_failed" | "node_retrying" | "workflow_failed") {
            if kind.starts_with("workflow_") && kind != "workflow_started" {
                break;
            }
            continue;
        }
        let t = started.elapsed().as_millis();
        let attempt = e["attempt"].as_u64().map(|a| format!(" (attempt {a})")).unwrap_or_default();
        let line = match kind {
            "node_started" => format!("▶ {} started{attempt}", node_id.unwrap_or("?")),
            "node_completed" => format!("✔ {} completed in {}ms", node_id.unwrap_or("?"), e["data"]["duration_ms"]),
            "node_failed" => format!("✘ {} failed: {}", node_id.unwrap_or("?"), e["data"]["error"]["message"].as_str().unwrap_or("")),
            "node_retrying" => format!(
                "↻ {} retrying in {}ms: {}",
                node_id.unwrap_or("?"),
                e["data"]["delay_ms"],
                e["data"]["error"]["message"].as_str().unwrap_or("")
            ),
            "node_skipped" => format!("· {} skipped", node_id.unwrap_or("?")),
            "loop_iteration" => format!("⟲ {} iteration {}", node_id.unwrap_or("?"), e["data"]["iteration"]),
            "workflow_completed" => "run COMPLETED".to_string(),
            "workflow_failed" => format!("run FAILED: {}", e["data"]["error"]["message"].as_str().unwrap_or("")),
            "workflow_cancelled" => "run CANCELLED".to_string(),
            other => other.to_string(),
        };
        eprintln!("[{t:>6}ms] #{} {line}", e["seq"]);
        if matches!(kind, "workflow_completed" | "workflow_failed" | "workflow_cancelled") {
            break;
        }
    }
    Ok(())
}

pub async fn logs(cmd: LogsCmd, client: &Client, _fmt: Format) -> anyhow::Result<i32> {
    match cmd {
        LogsCmd::Stream { run_id, node, filter, after } => {
            let errors_only = match filter.as_str() {
                "all" => false,
                "errors" => true,
                other => return Err(CliError::Usage(format!("--filter must be all or errors, not '{other}'")).into()),
            };
            follow_run(client, &run_id, node.as_deref(), after, errors_only).await?;
            Ok(exit::OK)
        }
    }
}

pub async fn workflow(cmd: WorkflowCmd, client: &Client, fmt: Format) -> anyhow::Result<i32> {
    match cmd {
        WorkflowCmd::Validate { file } => {
            let doc = read_doc(&file)?;
            let issues = match aob_model::validate::parse_and_validate(&doc) {
                Ok((_, w)) => w,
                Err(e) => e,
            };
            let valid = !aob_model::validate::has_errors(&issues);
            match fmt {
                Format::Pretty => {
                    for i in &issues {
                        let sev = if i.severity == aob_model::Severity::Error { "error" } else { "warning" };
                        eprintln!("{sev}: {} [{}] {}", if i.pointer.is_empty() { "/" } else { &i.pointer }, i.code, i.message);
                    }
                    println!("{}", if valid { "valid" } else { "invalid" });
                }
                _ => output::print(fmt, &json!({"valid": valid, "issues": issues})),
            }
            Ok(if valid { exit::OK } else { exit::USAGE })
        }
        WorkflowCmd::Create { tag, file } => {
            let doc = read_doc(&file)?;
            output::print(fmt, &client.post("/api/v1/workflows", &json!({"tag_name": tag, "workflow": doc})).await?);
            Ok(exit::OK)
        }
        WorkflowCmd::List => {
            let v = client.get("/api/v1/workflows").await?;
            let rows = v["workflows"].as_array().cloned().unwrap_or_default();
            output::table(
                fmt,
                &v,
                &rows,
                &[("TAG", "tag"), ("VERSION", "version"), ("HASH", "hash"), ("MOVED", "moved_at")],
            );
            Ok(exit::OK)
        }
        WorkflowCmd::Show { tag, version } => {
            let path = match version {
                Some(v) => format!("/api/v1/workflows/{}/versions/{v}", seg(&tag)),
                None => format!("/api/v1/workflows/{}", seg(&tag)),
            };
            output::print(fmt, &client.get(&path).await?);
            Ok(exit::OK)
        }
        WorkflowCmd::Delete { tag } => {
            output::print(fmt, &client.delete(&format!("/api/v1/workflows/{}", seg(&tag))).await?);
            Ok(exit::OK)
        }
        WorkflowCmd::Schema => {
            output::print(fmt, &aob_model::schema::workflow_schema());
            Ok(exit::OK)
        }
        WorkflowCmd::Patch {
            tag,
            file,
            description,
            expected_version,
        } => {
            let body = json!({"operations": read_doc(&file)?, "description": description, "expected_version": expected_version});
            output::print(fmt, &client.patch(&format!("/api/v1/workflows/{}/patch", seg(&tag)), &body).await?);
            Ok(exit::OK)
        }
        WorkflowCmd::History { tag } => {
            let v = client.get(&format!("/api/v1/workflows/{}/history", seg(&tag))).await?;
            let rows = v["history"].as_array().cloned().unwrap_or_default();
            output::table(
                fmt,
                &v,
                &rows,
                &[
                    ("SEQ", "seq"),
                    ("OP", "op"),
                    ("BY", "by"),
                    ("AT", "at"),
                    ("HASH", "hash"),
                    ("DESCRIPTION", "description"),
                ],
            );
            Ok(exit::OK)
        }
        WorkflowCmd::Move { tag, version } => {
            output::print(
                fmt,
                &client
                    .post(&format!("/api/v1/workflows/{}/move", seg(&tag)), &json!({"version": version}))
                    .await?,
            );
            Ok(exit::OK)
        }
    }
}

pub async fn artifact(cmd: ArtifactCmd, client: &Client, fmt: Format) -> anyhow::Result<i32> {
    match cmd {
        ArtifactCmd::Get { id, out } => {
            let v = client.get(&format!("/api/v1/artifacts/{}", seg(&id))).await?;
            match out {
                Some(path) => {
                    std::fs::write(&path, serde_json::to_string_pretty(&v["content"])?).with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => output::print(fmt, &v),
            }
            Ok(exit::OK)
        }
    }
}

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Create a key (admin only); the key is printed once.
    Create {
        #[arg(long, default_value = "key")]
        name: String,
        #[arg(long)]
        user: Option<String>,
        /// admin or member.
        #[arg(long, default_value = "member")]
        role: String,
        /// Tenant (default: yours).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List keys.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id.
    Revoke { id: String },
}

pub async fn keys(cmd: KeysCmd, client: &Client, fmt: Format) -> anyhow::Result<i32> {
    match cmd {
        KeysCmd::Create { name, user, role, tenant } => {
            let v = client
                .post("/api/v1/keys", &json!({"name": name, "user": user, "role": role, "tenant": tenant}))
                .await?;
            if fmt == Format::Pretty {
                eprintln!(
                    "key {} for {}/{} ({}); it is shown only now:",
                    v["id"].as_str().unwrap_or(""),
                    v["tenant"].as_str().unwrap_or(""),
                    v["user"].as_str().unwrap_or(""),
                    v["role"].as_str().unwrap_or("")
                );
                println!("{}", v["key"].as_str().unwrap_or(""));
            } else {
                output::print(fmt, &v);
            }
            Ok(exit::OK)
        }
        KeysCmd::List { tenant } => {
            let path = match tenant {
                Some(t) => format!("/api/v1/keys?tenant={}", seg(&t)),
                None => "/api/v1/keys".to_string(),
            };
            let v = client.get(&path).await?;
            let rows = v["keys"].as_array().cloned().unwrap_or_default();
            output::table(
                fmt,
                &v,
                &rows,
                &[
                    ("ID", "id"),
                    ("TENANT", "tenant"),
                    ("USER", "user"),
                    ("ROLE", "role"),
                    ("NAME", "name"),
                    ("REVOKED", "revoked_at"),
                ],
            );
            Ok(exit::OK)
        }
        KeysCmd::Revoke { id } => {
            output::print(fmt, &client.delete(&format!("/api/v1/keys/{}", seg(&id))).await?);
            Ok(exit::OK)
        }
    }
}

pub async fn login(api_url: &str, key: Option<String>, fmt: Format) -> anyhow::Result<i32> {
    let key = match key {
        Some(k) => k,
        None => {
            eprintln!("paste the API key, then Enter:");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim().to_string()
        }
    };
    if key.is_empty() {
        return Err(CliError::Usage("no key given".into()).into());
    }
    let who = Client::new(api_url, Some(&key)).get("/api/v1/whoami").await?;
    let mut creds = crate::credentials::load();
    creds.servers.insert(api_url.trim_end_matches('/').to_string(), key);
    let path = crate::credentials::save(&creds)?;
    eprintln!("saved to {}", path.display());
    output::print(fmt, &who);
    Ok(exit::OK)
}

pub fn logout(api_url: &str) -> anyhow::Result<i32> {
    let mut creds = crate::credentials::load();
    if creds.servers.remove(api_url.trim_end_matches('/')).is_some() {
        crate::credentials::save(&creds)?;
        eprintln!("logged out of {api_url}");
    } else {
        eprintln!("no saved key for {api_url}");
    }
    Ok(exit::OK)
}

#[derive(Subcommand)]
pub enum PatchCmd {
    /// A run's patches.
    List { run_id: String },
    /// One patch with its operations.
    Show { run_id: String, seq: u64 },
    /// Patch a running run from a JSON file holding the operations array.
    Create {
        run_id: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "")]
        description: String,
        /// The node the patch speaks for (an agent adding steps after itself).
        #[arg(long)]
        node: Option<String>,
    },
    /// Approve a pending patch (it applies if it still can).
    Approve {
        run_id: String,
        seq: u64,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reject a pending patch.
    Reject {
        run_id: String,
        seq: u64,
        #[arg(long)]
        reason: Option<String>,
    },
}

pub async fn patch(cmd: PatchCmd, client: &Client, fmt: Format) -> anyhow::Result<i32> {
    let v = match cmd {
        PatchCmd::List { run_id } => {
            let v = client.get(&format!("/api/v1/runs/{}/patches", seg(&run_id))).await?;
            let rows = v["patches"].as_array().cloned().unwrap_or_default();
            output::table(
                fmt,
                &v,
                &rows,
                &[
                    ("SEQ", "seq"),
                    ("STATUS", "status"),
                    ("AUTHOR", "author"),
                    ("OPS", "op_count"),
                    ("DESCRIPTION", "description"),
                ],
            );
            return Ok(exit::OK);
        }
        PatchCmd::Show { run_id, seq } => client.get(&format!("/api/v1/runs/{}/patches/{seq}", seg(&run_id))).await?,
        PatchCmd::Create {
            run_id,
            file,
            description,
            node,
        } => {
            let ops = read_doc(&file)?;
            let body = json!({"operations": ops, "description": description, "node_id": node});
            client.post(&format!("/api/v1/runs/{}/patches", seg(&run_id)), &body).await?
        }
        PatchCmd::Approve { run_id, seq, reason } => {
            client
                .post(&format!("/api/v1/runs/{}/patches/{seq}/approve", seg(&run_id)), &json!({"reason": reason}))
                .await?
        }
        PatchCmd::Reject { run_id, seq, reason } => {
            client
                .post(&format!("/api/v1/runs/{}/patches/{seq}/reject", seg(&run_id)), &json!({"reason": reason}))
                .await?
        }
    };
    output::print(fmt, &v);
    Ok(exit::OK)
}

/// `aob approve|reject <approval-id>` or `<run-id> <node-id>`.
pub async fn decide(target: Vec<String>, approve: bool, comment: Option<String>, client: &Client, fmt: Format) -> anyhow::Result<i32> {
    let v = match target.as_slice() {
        [id] => {
            let body = json!({"decision": if approve { "approve" } else { "reject" }, "comment": comment});
            client.post(&format!("/api/v1/approvals/{}/decide", seg(id)), &body).await?
        }
        [run, node] => {
            client
                .post(
                    "/api/approval",
                    &json!({"run_id": run, "node_id": node, "approved": approve, "comment": comment}),
                )
                .await?
        }
        _ => return Err(CliError::Usage("give an approval id, or a run id and a node id".into()).into()),
    };
    output::print(fmt, &v);
    Ok(exit::OK)
}

pub async fn replay(run_id: &str, node: &str, config: Option<&PathBuf>, reason: &str, client: &Client, fmt: Format) -> anyhow::Result<i32> {
    let config = match config {
        Some(f) => Some(read_doc(f)?),
        None => None,
    };
    let v = client
        .post(
            &format!("/api/v1/runs/{}/nodes/{}/replay", seg(run_id), seg(node)),
            &json!({"config": config, "reason": reason}),
        )
        .await?;
    output::print(fmt, &v);
    Ok(exit::OK)
}
