//! Helpers shared by the fuzz targets: splitting one input into parts, a fetcher that
//! never reaches the network, and a poll loop for the (always ready) pipeline future.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use serde_json::Value;

/// Separates the parts of a structured input (`expression`, then JSON values, …).
/// Seeds under `fuzz/corpus/` use it; the dictionaries carry it so mutations keep it.
pub const SEP: &str = "\n%%\n";

/// Lets libFuzzer report a stack overflow as a crash, with its input saved.
///
/// Without a sanitizer nothing catches a stack overflow: libFuzzer's SIGSEGV handler runs
/// on the overflowed stack, the process dies of the signal and the input is lost.
/// libFuzzer keeps `SA_ONSTACK` when a handler it replaces had it, so this gives the
/// fuzzing thread an alternate signal stack and marks the (default) SIGSEGV disposition
/// `SA_ONSTACK`; it must run before libFuzzer installs its handlers, i.e. in the
/// `init:` block of `fuzz_target!`. The crash then appears as `deadly signal` with a
/// `crash-…` artifact.
pub fn init() {
    signals::alternate_stack_for_segv();
}

#[allow(unsafe_code)]
mod signals {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;

    use serde_json::{Value, json};

    /// Runs `f` in a forked child bounded by [`super::JQ_CHILD_SECONDS`] of CPU; its answer
    /// comes back as JSON through a pipe. A child that dies answers nothing: an error.
    pub(super) fn in_child(f: impl FnOnce() -> Result<Value, String>) -> Result<Value, String> {
        let mut fds = [0i32; 2];
        // SAFETY: plain libc calls; the child only runs `f`, writes to its pipe and
        // leaves with `_exit`, never returning into the fuzzer.
        unsafe {
            if libc::pipe(fds.as_mut_ptr()) != 0 {
                panic!("pipe failed");
            }
            let pid = libc::fork();
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                libc::close(fds[0]);
                let limit = libc::rlimit {
                    rlim_cur: super::JQ_CHILD_SECONDS.into(),
                    rlim_max: (super::JQ_CHILD_SECONDS + 1).into(),
                };
                libc::setrlimit(libc::RLIMIT_CPU, &limit);
                libc::alarm(super::JQ_CHILD_SECONDS * 3);
                let answer = match f() {
                    Ok(v) => json!({"ok": v}),
                    Err(e) => json!({"error": e}),
                };
                let mut out = std::fs::File::from_raw_fd(fds[1]);
                let _ = out.write_all(answer.to_string().as_bytes());
                drop(out);
                libc::_exit(0);
            }
            libc::close(fds[1]);
            let mut text = Vec::new();
            let _ = std::fs::File::from_raw_fd(fds[0]).read_to_end(&mut text);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            match serde_json::from_slice::<Value>(&text) {
                Ok(Value::Object(mut o)) => match (o.remove("ok"), o.remove("error")) {
                    (Some(v), _) => Ok(v),
                    (None, Some(Value::String(e))) => Err(e),
                    _ => panic!("malformed answer from the jq child"),
                },
                _ => Err(format!("jq_crashed: the jq child ended with status {status:#x}")),
            }
        }
    }

    const ALT_STACK_BYTES: usize = 1 << 20;

    pub(super) fn alternate_stack_for_segv() {
        // Leaked on purpose: the stack must live as long as the process.
        let stack: &'static mut [u8] = Box::leak(vec![0u8; ALT_STACK_BYTES].into_boxed_slice());
        // SAFETY: plain libc calls with valid, fully initialised arguments; the stack
        // memory is 'static and never touched from Rust again.
        unsafe {
            let ss = libc::stack_t {
                ss_sp: stack.as_mut_ptr().cast(),
                ss_flags: 0,
                ss_size: ALT_STACK_BYTES,
            };
            assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0, "sigaltstack failed");
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            sa.sa_flags = libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()), 0, "sigaction failed");
        }
    }
}

/// The input as UTF-8 text (every target's entry point takes `&str`).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The first `N` parts of `s`, split on [`SEP`]; missing parts are `None`, the last part
/// keeps any further separators.
pub fn parts<const N: usize>(s: &str) -> [Option<&str>; N] {
    let mut out = [None; N];
    let mut it = s.splitn(N, SEP);
    for slot in &mut out {
        *slot = it.next();
    }
    out
}

/// A part as JSON, or `default` when it is missing or not JSON.
pub fn json_or(part: Option<&str>, default: Value) -> Value {
    part.and_then(|p| serde_json::from_str(p).ok()).unwrap_or(default)
}

/// The `http_request` fetcher of the fuzz targets: every request fails, nothing leaves
/// the process.
pub struct NoNetwork;

impl aob_transform::Fetcher for NoNetwork {
    fn fetch<'a>(&'a self, _req: aob_transform::FetchRequest) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>> {
        Box::pin(async { Err("no network while fuzzing".to_owned()) })
    }
}

/// The server's jq runner, in miniature: like `aob_exec::sandbox::ProcessJq`, each program
/// runs in a child process (here a `fork` of the fuzzer) with a CPU-time bound, because
/// nothing stops a jq program in-process (`def f: f; f`) and unbounded recursion
/// overflows whatever stack runs it. A child killed by a signal (time limit, stack
/// overflow) fails the step, as in the server; validation stays in-process, where it must
/// be robust. The child's coverage is not fed back: jq evaluation is fuzzed blind.
pub struct ForkJq;

/// CPU seconds a forked jq program may use.
pub const JQ_CHILD_SECONDS: u32 = 2;

impl aob_transform::JqRunner for ForkJq {
    fn run<'a>(&'a self, filter: &'a str, input: Value, limits: &'a aob_limits::Limits) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>> {
        Box::pin(async move { signals::in_child(|| aob_transform::run_jq_in_process(filter, input, limits)) })
    }
}

/// `run_pipeline` as the server runs it: `http_request` through [`NoNetwork`], jq through
/// [`ForkJq`], default limits.
pub async fn run_pipeline(steps: &[Value], input: Value) -> Result<Value, aob_transform::TransformError> {
    let limits = aob_limits::Limits::default();
    let env = aob_transform::Env {
        fetch: &NoNetwork,
        jq: &ForkJq,
        limits: &limits,
    };
    aob_transform::run_pipeline_with(steps, input, &env).await
}

/// Runs a future that never waits on anything (the pipeline with [`NoNetwork`]).
/// A future that returns `Pending` would be a bug here, so it panics.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a pipeline without network waited on something"),
    }
}
