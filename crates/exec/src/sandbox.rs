//! jq programs in a process of their own, which the server can stop.
//!
//! Nothing inside jaq can interrupt a program (`def f: f; f`, `last(range(1e18))`), and
//! unbounded recursion in it overflows the stack of whatever thread runs it. So a server
//! runs each `jq_transform` in a child process (`aob __jq`, the same binary): the child
//! caps its own address space and CPU time with rlimits, the parent kills it when the
//! time limit passes, and a child that dies, of a stack overflow or an allocation it
//! was refused, fails only the attempt.
//!
//! Protocol: the parent writes one JSON object `{"filter", "input", "limits"}` to the
//! child's stdin and closes it; the child writes `{"ok": value}` or `{"error": message}`
//! to stdout and exits 0. Anything else is a crash of the program.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use aob_limits::Limits;
use aob_transform::JqRunner;

/// The hidden subcommand of the `aob` binary that runs one jq program.
pub const JQ_SUBCOMMAND: &str = "__jq";

/// Room for the child's own code and its deep-stack thread, on top of `jq_memory_bytes`.
const CHILD_OVERHEAD_BYTES: u64 = aob_limits::DEEP_STACK_BYTES as u64 + (256 << 20);

/// Runs jq programs in child processes of `exe`.
pub struct ProcessJq {
    exe: PathBuf,
}

impl ProcessJq {
    /// `exe` must be an `aob` binary (it answers [`JQ_SUBCOMMAND`]).
    pub fn new(exe: PathBuf) -> ProcessJq {
        ProcessJq { exe }
    }

    async fn run_child(&self, filter: &str, input: Value, limits: &Limits) -> Result<Value, String> {
        let request = json!({"filter": filter, "input": input, "limits": limits}).to_string();
        let mut child = tokio::process::Command::new(&self.exe)
            .arg(JQ_SUBCOMMAND)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("jq_unavailable: cannot start the jq sandbox {}: {e}", self.exe.display()))?;
        let mut stdin = child.stdin.take().ok_or("jq_unavailable: no stdin")?;
        let mut stdout = child.stdout.take().ok_or("jq_unavailable: no stdout")?;
        let limit = Duration::from_millis(limits.jq_timeout_ms);
        let max_out = limits.output_bytes.saturating_add(64);
        let work = async {
            // Writing and reading at once: a child that answers early must not deadlock us.
            let write = async move {
                let _ = stdin.write_all(request.as_bytes()).await;
                drop(stdin);
            };
            let read = async {
                let mut out = Vec::new();
                let mut limited = (&mut stdout).take(max_out as u64);
                limited.read_to_end(&mut out).await.map(|_| out)
            };
            let ((), out) = tokio::join!(write, read);
            let status = child.wait().await;
            (out, status)
        };
        let (out, status) = match tokio::time::timeout(limit, work).await {
            Ok(r) => r,
            // Dropping the future drops the child handle, which kills it (kill_on_drop).
            Err(_) => {
                return Err(format!(
                    "jq_timeout: the jq program ran longer than {} ms and was stopped",
                    limits.jq_timeout_ms
                ));
            }
        };
        let out = out.map_err(|e| format!("jq_unavailable: reading the jq sandbox: {e}"))?;
        match status {
            Ok(s) if s.success() => {}
            _ => {
                return Err("jq_resource_exhausted: the jq program was stopped (it overflowed its stack or used more memory or CPU than allowed)".into());
            }
        }
        if out.len() > limits.output_bytes {
            return Err(format!("output_too_large: the jq output is larger than {} bytes", limits.output_bytes));
        }
        let answer: Value = serde_json::from_slice(&out).map_err(|e| format!("jq_unavailable: unreadable answer from the jq sandbox: {e}"))?;
        match answer {
            Value::Object(mut o) => match (o.remove("ok"), o.remove("error")) {
                (Some(v), _) => Ok(v),
                (None, Some(Value::String(e))) => Err(e),
                _ => Err("jq_unavailable: malformed answer from the jq sandbox".into()),
            },
            _ => Err("jq_unavailable: malformed answer from the jq sandbox".into()),
        }
    }
}

impl JqRunner for ProcessJq {
    fn run<'a>(&'a self, filter: &'a str, input: Value, limits: &'a Limits) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>> {
        Box::pin(self.run_child(filter, input, limits))
    }
}

/// The child's side: read the request from stdin, cap this process, run, answer. Returns
/// the exit code.
pub fn jq_child_main() -> i32 {
    use std::io::{Read, Write};
    let mut text = Vec::new();
    if std::io::stdin().read_to_end(&mut text).is_err() {
        return 2;
    }
    let answer = match serde_json::from_slice::<Value>(&text) {
        Ok(Value::Object(mut req)) => {
            let limits: Limits = req.remove("limits").and_then(|l| serde_json::from_value(l).ok()).unwrap_or_default();
            let filter = req.remove("filter").and_then(|f| f.as_str().map(str::to_owned)).unwrap_or_default();
            let input = req.remove("input").unwrap_or(Value::Null);
            cap_process(&limits);
            match aob_transform::run_jq_in_process(&filter, input, &limits) {
                Ok(v) => json!({"ok": v}),
                Err(e) => json!({"error": e}),
            }
        }
        _ => json!({"error": "jq_unavailable: malformed request"}),
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(answer.to_string().as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => 0,
        Err(_) => 2,
    }
}

/// Address space and CPU time of this (child) process. Failing to set them is not fatal:
/// the parent's wall-clock kill still bounds the program.
fn cap_process(limits: &Limits) {
    let memory = limits.jq_memory_bytes.saturating_add(CHILD_OVERHEAD_BYTES);
    let _ = rlimit::setrlimit(rlimit::Resource::AS, memory, memory);
    let cpu = limits.jq_timeout_ms.div_ceil(1000).saturating_add(1);
    let _ = rlimit::setrlimit(rlimit::Resource::CPU, cpu, cpu);
    // No core dumps of user programs.
    let _ = rlimit::setrlimit(rlimit::Resource::CORE, 0, 0);
}
