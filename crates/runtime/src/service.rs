//! The engine loop (options → service → cheap handle).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use aob_dispatch::{Dispatch, Envelope, Lease};

use aob_engine::{Action, Decision, Input, NodeStatus, Outcome, Plan, RunSettings, RunState, RunStatus, Task, TaskId, apply, in_flight};
use aob_model::NodeKind;

use crate::workers::{Pool, Running};
use aob_model::Workflow;
use aob_store::{Blob, NewRun, PatchRecord, RunWrite, Store, StoreError, stored_events};

use crate::calls::{Answer, Call, PatchRequest, issue_values};
use crate::cluster::{ClusterOptions, Link, ShardChange, Shards};
use crate::workers::Completions;
use crate::{Clock, EventHub, HubEvent, Metrics, Plans, RunReads, failpoint};

#[derive(Debug, Clone)]
pub struct Options {
    /// Tasks executing at once in this process.
    pub max_tasks: usize,
    /// Most commands folded into one group commit.
    pub max_batch: usize,
    /// How long a pulled attempt stays leased without a heartbeat.
    pub visibility: Duration,
    pub limits: Arc<aob_limits::Limits>,
    /// The `aob` binary jq programs run in (`aob __jq`); in this process when `None`.
    pub jq_sandbox: Option<std::path::PathBuf>,
    /// An attempt that was executing during this many process crashes is not run again:
    /// it fails with `attempt_crashed` (not retryable). 0 turns the guard off.
    pub crash_limit: u32,
    /// Embedded mode: the attempts journal in the data dir, which counts the crashes
    /// each attempt was running at (scale-out workers keep none).
    pub journal: Option<Arc<crate::AttemptJournal>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_tasks: 512,
            max_batch: 1024,
            visibility: Duration::from_secs(30),
            limits: Arc::new(aob_limits::Limits::default()),
            jq_sandbox: None,
            crash_limit: 3,
            journal: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("the engine is stopping")]
    Stopped,
    /// This process does not own the run's shard (any more); the call goes to the owner.
    #[error("not the owner: {0}")]
    NotOwner(String),
    /// No engine answered (scale-out: the owner is down, or Redis is).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A patch or replay was refused; `code` names the main reason, `issues` lists all
    /// (as served: `{pointer, code, message, severity}`).
    #[error("{code}: {}", issues.iter().map(|i| format!("{} {}", i["pointer"].as_str().unwrap_or(""), i["message"].as_str().unwrap_or(""))).collect::<Vec<_>>().join("; "))]
    Rejected { code: &'static str, issues: Vec<Value> },
}

/// What it takes to start a run.
#[derive(Debug, Clone)]
pub struct StartRun {
    pub run_id: String,
    pub owner: String,
    pub plan: Arc<Plan>,
    pub inputs: Value,
    pub tag: Option<String>,
    pub parent_run_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub settings: RunSettings,
}

pub(crate) type Answering = oneshot::Sender<Result<Answer, RuntimeError>>;

pub(crate) enum Command {
    /// A call; `redelivered` when it comes from a control entry delivered before
    /// (its first owner may have applied it, then died before acknowledging it).
    Call(Box<Call>, bool, Answering),
    /// An attempt finished.
    Done(Box<Completion>),
    /// Scale-out: shards this process gained (recover their runs) and lost (forget them).
    Shards(ShardChange, oneshot::Sender<()>),
    /// Scale-out: Redis came back and may have lost entries: push every in-flight
    /// attempt again (a push of an entry that still exists is a no-op).
    Redispatch,
}

/// A finished attempt. Its leases are acknowledged once the result is committed: the
/// entry it came in (a local worker's lease on the attempt, or the shard's control
/// entry) and, from a remote worker, that worker's lease on the attempt.
pub(crate) struct Completion {
    pub run_id: String,
    pub task: TaskId,
    pub outcome: Outcome,
    pub lease: Option<Lease>,
    pub work: Option<Lease>,
}

/// Where calls go: the engine loop of this process, or (scale-out) the run's owner.
#[derive(Clone)]
pub(crate) enum Router {
    Local(mpsc::Sender<Command>),
    Cluster(Arc<Link>),
}

/// Sends a call to this process's engine loop and waits for its answer.
pub(crate) async fn call_local(tx: &mpsc::Sender<Command>, call: Call, redelivered: bool) -> Result<Answer, RuntimeError> {
    let (otx, orx) = oneshot::channel();
    tx.send(Command::Call(Box::new(call), redelivered, otx))
        .await
        .map_err(|_| RuntimeError::Stopped)?;
    orx.await.map_err(|_| RuntimeError::Stopped)?
}

/// Cheap to clone: everything the API needs to talk to the engine.
#[derive(Clone)]
pub struct Handle {
    router: Router,
    pub store: Arc<dyn Store>,
    pub hub: EventHub,
    pub plans: Plans,
    pub clock: Arc<dyn Clock>,
    pub reads: RunReads,
    pub metrics: Metrics,
    limits: Arc<aob_limits::Limits>,
}

impl Handle {
    /// The quotas of this server.
    pub fn limits(&self) -> &aob_limits::Limits {
        &self.limits
    }

    /// Validates, stores (content-addressed) and compiles a workflow, and lets `owner` read it.
    pub async fn register(&self, wf: Workflow, owner: &str) -> Result<Arc<Plan>, RuntimeError> {
        let plan = self
            .plans
            .compile(wf)
            .map_err(|issues| RuntimeError::Invalid(issues.iter().map(|i| format!("{}: {}", i.pointer, i.message)).collect::<Vec<_>>().join("; ")))?;
        // Blobs and grants are never deleted, so once stored they need no second write
        // (each would be a commit of its own on the run-start path).
        if self.plans.registered(&plan.hash, owner) {
            return Ok(plan);
        }
        self.store
            .put_blob(Blob {
                hash: plan.hash.clone(),
                kind: "workflow".into(),
                content: plan.workflow.to_canonical_json(),
                created_at: self.clock.now_ms(),
            })
            .await?;
        self.store.grant_blob(&plan.hash, owner).await?;
        self.plans.mark_registered(&plan.hash, owner);
        Ok(plan)
    }

    async fn call(&self, call: Call) -> Result<Answer, RuntimeError> {
        match &self.router {
            Router::Local(tx) => call_local(tx, call, false).await,
            Router::Cluster(link) => link.call(call).await,
        }
    }

    /// Starts a run; returns its state once the start is committed.
    pub async fn start(&self, req: StartRun) -> Result<RunState, RuntimeError> {
        // The loop finds the plan by hash; it is in the cache (and the store) already.
        self.plans.insert(req.plan.clone());
        let settings = req.settings.with_limits(&self.limits.for_tenant(&req.owner));
        self.call(Call::Start {
            run_id: req.run_id,
            owner: req.owner,
            plan_hash: req.plan.hash.clone(),
            inputs: req.inputs,
            tag: req.tag,
            parent_run_id: req.parent_run_id,
            idempotency_key: req.idempotency_key,
            settings,
        })
        .await?
        .state()
    }

    /// Cancel, pause or resume; returns the committed state.
    pub async fn control(&self, run_id: &str, input: Input) -> Result<RunState, RuntimeError> {
        let run_id = run_id.to_string();
        let call = match input {
            Input::Cancel { reason } => Call::Cancel { run_id, reason },
            Input::Pause => Call::Pause { run_id },
            Input::Resume => Call::Resume { run_id },
            other => return Err(RuntimeError::Invalid(format!("{other:?} is not a control input"))),
        };
        self.call(call).await?.state()
    }

    /// Decides a waiting approval. `Ok(false)`: the node was no longer waiting (decided,
    /// timed out or cancelled), and nothing changed.
    pub async fn decide(&self, run_id: &str, node_id: &str, activation: u32, decision: Decision) -> Result<bool, RuntimeError> {
        self.call(Call::Decide {
            run_id: run_id.to_string(),
            node_id: node_id.to_string(),
            activation,
            decision,
        })
        .await?
        .applied()
    }

    /// Validates and applies (or, under review, records) a run patch.
    pub async fn patch(&self, run_id: &str, mut request: PatchRequest) -> Result<PatchRecord, RuntimeError> {
        request.prepared = Some(self.prepare_patch(run_id, &request.operations).await?);
        self.call(Call::Patch {
            run_id: run_id.to_string(),
            request,
        })
        .await?
        .patch()
    }

    /// Materializes and validates the workflow a patch makes of the run's current one,
    /// here on the caller's side (the CPU work on a blocking thread), so the engine loop
    /// only checks that the run is still on the same version. The new version is stored
    /// and its plan cached, as any registered workflow.
    async fn prepare_patch(&self, run_id: &str, ops: &[Value]) -> Result<crate::calls::Prepared, RuntimeError> {
        let rec = self.store.get_run(run_id).await?.ok_or_else(|| RuntimeError::NotFound(run_id.to_string()))?;
        let base = self.plans.get(&*self.store, rec.plan_hash()).await?;
        let (plans, ops, owner) = (self.plans.clone(), ops.to_vec(), rec.owner.clone());
        let work = base.clone();
        let plan = tokio::task::spawn_blocking(move || materialize(&plans, &work, &ops))
            .await
            .map_err(|_| RuntimeError::Invalid("patch validation stopped unexpectedly".into()))??;
        self.register(plan.workflow.clone(), &owner).await?;
        Ok(crate::calls::Prepared {
            base: base.hash.clone(),
            result: plan.hash.clone(),
        })
    }

    /// Approves (applies, if it still applies) or rejects a pending patch.
    pub async fn decide_patch(&self, run_id: &str, seq: u64, approve: bool, by: &str, reason: Option<String>) -> Result<PatchRecord, RuntimeError> {
        self.call(Call::PatchDecision {
            run_id: run_id.to_string(),
            seq,
            approve,
            by: by.to_string(),
            reason,
        })
        .await?
        .patch()
    }

    /// Re-runs `node_id` (with an optional config override) of a finished run and
    /// everything downstream of it.
    pub async fn replay(&self, run_id: &str, node_id: &str, config: Option<Value>, by: &str, reason: &str) -> Result<RunState, RuntimeError> {
        self.call(Call::Replay {
            run_id: run_id.to_string(),
            node_id: node_id.to_string(),
            config,
            by: by.to_string(),
            reason: reason.to_string(),
        })
        .await?
        .state()
    }

    /// Scale-out: whether the bus (Redis) answers; always fine in embedded mode.
    pub async fn check_bus(&self) -> Result<(), String> {
        match &self.router {
            Router::Local(_) => Ok(()),
            Router::Cluster(link) => link.opts.bus.publish("ping", vec![]).await.map_err(|e| e.to_string()),
        }
    }

    /// Scale-out: the shards this process holds (empty in embedded mode).
    pub fn shards_held(&self) -> Vec<u32> {
        match &self.router {
            Router::Local(_) => vec![],
            Router::Cluster(link) => link.shards.held().keys().copied().collect(),
        }
    }

    /// A run as stored, served from the read cache when it is finished.
    pub async fn get_run(&self, run_id: &str) -> Result<Option<Arc<aob_store::RunRecord>>, RuntimeError> {
        Ok(self.reads.get(&*self.store, run_id).await?)
    }

    /// Waits until the run is terminal and returns its final state.
    pub async fn wait_terminal(&self, run_id: &str) -> Result<RunState, RuntimeError> {
        let mut rx = self.hub.subscribe_run(run_id);
        loop {
            let rec = self.store.get_run(run_id).await?.ok_or_else(|| RuntimeError::NotFound(run_id.to_string()))?;
            if rec.state.status.is_terminal() {
                return Ok(rec.state);
            }
            // Any event (or a lag, or a quiet while) is a reason to look again; live
            // events from other processes are best-effort, so the store has the last word.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match rx.recv().await {
                        Ok(e) if e.terminal => return,
                        Ok(_) => continue,
                        Err(_) => return,
                    }
                }
            })
            .await;
        }
    }
}

pub struct Runtime {
    pub handle: Handle,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Runtime {
    /// Starts the embedded runtime (engine loop and workers in this process);
    /// recovery of unfinished runs happens before the first command.
    pub fn start(opts: Options, store: Arc<dyn Store>, dispatch: Arc<dyn Dispatch>, guard: aob_ssrf::Guard, clock: Arc<dyn Clock>) -> Runtime {
        let (tx, rx) = mpsc::channel(65_536);
        let handle = Handle::new(Router::Local(tx.clone()), store, clock, opts.limits.clone());
        let shutdown = CancellationToken::new();
        let running = Running::default();
        let mut tasks = vec![Pool::new(&opts, &handle, dispatch.clone(), guard, Completions::Local(tx), running.clone(), vec![]).spawn(shutdown.clone())];
        let service = Service::new(&opts, handle.clone(), rx, dispatch, running, None);
        tasks.push(tokio::spawn(service.run(shutdown.clone())));
        Runtime { handle, shutdown, tasks }
    }

    /// Starts this process's part of a cluster (see [`crate::cluster`]): the engine
    /// loop with its lease keeper and control pump when it has the engine role, workers
    /// when it has the worker role, and in every case the router and the event relay.
    pub async fn start_cluster(
        opts: Options,
        cluster: ClusterOptions,
        store: Arc<dyn Store>,
        dispatch: Arc<dyn Dispatch>,
        guard: aob_ssrf::Guard,
        clock: Arc<dyn Clock>,
    ) -> Result<Runtime, RuntimeError> {
        let roles = cluster.roles.clone();
        let (tx, rx) = mpsc::channel(65_536);
        let link = Arc::new(Link::new(cluster, roles.engine.then(|| tx.clone())));
        let handle = Handle::new(Router::Cluster(link.clone()), store.clone(), clock.clone(), opts.limits.clone());
        let shutdown = CancellationToken::new();
        link.listen(handle.hub.clone(), handle.reads.clone(), shutdown.clone()).await?;
        let running = Running::default();
        let mut tasks = Vec::new();
        if let Some(types) = roles.worker.clone() {
            let pool = Pool::new(
                &opts,
                &handle,
                dispatch.clone(),
                guard,
                Completions::Cluster(link.clone()),
                running.clone(),
                types,
            );
            tasks.push(pool.spawn(shutdown.clone()));
        }
        if roles.engine {
            let service = Service::new(&opts, handle.clone(), rx, dispatch, running, Some(link.clone()));
            tasks.push(tokio::spawn(service.run(shutdown.clone())));
            tasks.push(link.spawn_pump(tx.clone(), shutdown.clone()));
            tasks.push(link.spawn_leases(store, clock, tx, shutdown.clone()));
        }
        Ok(Runtime { handle, shutdown, tasks })
    }

    /// Stops taking commands and waits for the loop to finish its current batch (and,
    /// in a cluster, for this process's shard leases to be given up).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

impl Handle {
    fn new(router: Router, store: Arc<dyn Store>, clock: Arc<dyn Clock>, limits: Arc<aob_limits::Limits>) -> Handle {
        Handle {
            router,
            store,
            hub: EventHub::new(4096),
            plans: Plans::new(&limits),
            limits,
            clock,
            reads: RunReads::default(),
            metrics: Metrics::default(),
        }
    }
}

/// Matches the engine's grace on attempt deadlines (`DEADLINE_GRACE_MS` in aob-engine).
const RECOVERY_DEADLINE_GRACE_MS: i64 = 5_000;

/// Gives every attempt that recovery re-dispatches a fresh deadline, as a first
/// dispatch would get (`timeout_ms` + grace from now).
///
/// Why: the stored deadline dates from the crashed process's dispatch. If the process
/// stayed down longer than `timeout_ms` + grace, the first tick after the restart
/// (its timer is already due) declared the attempt we had just re-dispatched lost: a
/// needless retry under a new idempotency key, or, with no attempt left, a FAILED run
/// ("attempt timed out (lost or unresponsive worker)") caused only by the downtime.
/// Shown by `sigkill_longer_than_the_attempt_deadline_does_not_fail_the_attempt` in
/// crates/cli/tests/crash.rs. The new deadline reaches the store with the run's next
/// commit; a second crash before that recomputes it here again.
fn refresh_deadlines(plan: &Plan, st: &mut RunState, now: i64) {
    if st.status.is_terminal() {
        return;
    }
    for (i, n) in st.nodes.iter_mut().enumerate() {
        let node = &plan.nodes[i];
        if n.status != NodeStatus::Running || node.kind == NodeKind::Wait {
            continue;
        }
        let Some(timeout) = node.timeout_ms else { continue };
        let fresh = now
            .saturating_add(i64::try_from(timeout).unwrap_or(i64::MAX))
            .saturating_add(RECOVERY_DEADLINE_GRACE_MS);
        let bump = |d: &mut Option<i64>| {
            if let Some(t) = d {
                *t = (*t).max(fresh);
            }
        };
        bump(&mut n.deadline);
        if let Some(m) = n.map.as_mut() {
            for s in m.item_states.iter_mut().filter(|s| s.status == NodeStatus::Running) {
                bump(&mut s.deadline);
            }
        }
    }
}

/// What every caller of a failed group commit is told.
fn batch_error(e: &RuntimeError) -> RuntimeError {
    match e {
        RuntimeError::Conflict(m) => RuntimeError::Conflict(m.clone()),
        RuntimeError::NotOwner(m) => RuntimeError::NotOwner(m.clone()),
        RuntimeError::Unavailable(m) | RuntimeError::Store(StoreError::Unavailable(m)) => RuntimeError::Unavailable(m.clone()),
        RuntimeError::Store(StoreError::Full(m)) => RuntimeError::Store(StoreError::Full(m.clone())),
        other => RuntimeError::Store(StoreError::Backend(other.to_string())),
    }
}

/// What one batch of commands builds up before its group commit.
struct Batch {
    /// The batch's one clock reading: every transition in it happens at this time.
    now: i64,
    /// The runs the batch touches, in first-seen order (the order of their writes).
    order: Vec<String>,
    pending: HashMap<String, Pending>,
    /// Answers that wait for the commit.
    replies: Vec<Reply>,
    /// (owner, idempotency key) → run id, for the starts of this batch.
    keyed: HashMap<(String, String), String>,
}

impl Batch {
    fn new(now: i64) -> Batch {
        Batch {
            now,
            order: Vec::new(),
            pending: HashMap::new(),
            replies: Vec::new(),
            keyed: HashMap::new(),
        }
    }

    /// Records that `id` takes part in this batch, keeping first-seen order; its pending
    /// write.
    fn note(&mut self, id: &str) -> &mut Pending {
        if !self.pending.contains_key(id) {
            self.order.push(id.to_string());
        }
        self.pending.entry(id.to_string()).or_default()
    }
}

struct Live {
    plan: Arc<Plan>,
    state: RunState,
    owner: Arc<str>,
}

#[derive(Default)]
struct Pending {
    create: Option<NewRun>,
    /// Completions applied in this batch: acknowledged once the run's write is
    /// committed, applied again later if it fails.
    done: Vec<Completion>,
    events: Vec<aob_engine::Event>,
    actions: Vec<Action>,
    current_hash: Option<String>,
    patches: Vec<PatchRecord>,
}

enum Reply {
    State(String, Answering),
    /// Whether the input changed the run (a decision on a node no longer waiting does not).
    Applied(String, bool, Answering),
    Patch(Box<PatchRecord>, Answering),
}

impl Reply {
    fn run_id(&self) -> &str {
        match self {
            Reply::State(id, _) | Reply::Applied(id, _, _) => id,
            Reply::Patch(rec, _) => &rec.run_id,
        }
    }
}

/// The first retry of a run whose write failed comes after this long, doubling up to
/// [`RETRY_MAX_MS`]: a full disk or an unreachable database is retried every few
/// seconds, so the run moves on soon after the store is back, without a restart.
const RETRY_FIRST_MS: i64 = 250;
const RETRY_MAX_MS: i64 = 5_000;

fn retry_delay(failures: u32) -> i64 {
    (RETRY_FIRST_MS << failures.saturating_sub(1).min(5)).min(RETRY_MAX_MS)
}

struct Service {
    rx: mpsc::Receiver<Command>,
    handle: Handle,
    /// The work queues (attempts go out, aborted attempts' leases are released here).
    dispatch: Arc<dyn Dispatch>,
    /// Scale-out: the shards held, the control streams (completions are acknowledged
    /// there) and the bus (events go out there).
    link: Option<Arc<Link>>,
    shards: Option<Shards>,
    runs: HashMap<String, Live>,
    timers: BTreeSet<(i64, String)>,
    wake: HashMap<String, i64>,
    running: Running,
    /// Attempts to push once the current batch is committed.
    outbox: Vec<Envelope>,
    max_batch: usize,
    /// Scale-out: how often every in-flight attempt is pushed again (a no-op for an
    /// attempt still queued or leased), so an attempt whose queue entry or completion
    /// Redis lost is re-run even when its node has no deadline.
    sweep: Option<Duration>,
    /// Completions whose run's write failed, by run: applied again (and only then
    /// acknowledged) when the run's retry timer fires.
    deferred: HashMap<String, Vec<Completion>>,
    /// Consecutive failed writes per run (the retry backoff).
    failures: HashMap<String, u32>,
    journal: Option<Arc<crate::AttemptJournal>>,
}

impl Service {
    fn new(opts: &Options, handle: Handle, rx: mpsc::Receiver<Command>, dispatch: Arc<dyn Dispatch>, running: Running, link: Option<Arc<Link>>) -> Service {
        Service {
            rx,
            handle,
            dispatch,
            shards: link.as_ref().map(|l| l.shards.clone()),
            sweep: link.as_ref().map(|_| opts.visibility.max(Duration::from_secs(1))),
            link,
            runs: HashMap::new(),
            timers: BTreeSet::new(),
            wake: HashMap::new(),
            running,
            outbox: Vec::new(),
            max_batch: opts.max_batch.max(1),
            deferred: HashMap::new(),
            failures: HashMap::new(),
            journal: opts.journal.clone(),
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        // In a cluster, runs are recovered shard by shard as leases are gained.
        if self.shards.is_none()
            && let Err(e) = self.recover(|_| true).await
        {
            tracing::error!(error = %e, "recovery failed");
        }
        let mut sweep = tokio::time::interval(self.sweep.unwrap_or(Duration::from_secs(3600)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.reset();
        loop {
            let next = self.timers.first().map(|(t, _)| *t);
            let mut cmds = Vec::new();
            let sleep = async {
                match next {
                    Some(t) => {
                        let wait = (t - self.handle.clock.now_ms()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                c = self.rx.recv() => match c {
                    Some(c) => cmds.push(c),
                    None => break,
                },
                _ = sleep => {}
                _ = sweep.tick(), if self.sweep.is_some() => {
                    let n = self.redispatch().await;
                    tracing::debug!(attempts = n, "swept in-flight attempts");
                    continue;
                }
                _ = shutdown.cancelled() => break,
            }
            while cmds.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => break,
                }
            }
            // Shard changes apply between batches, never in the middle of one.
            let (changes, cmds): (Vec<_>, Vec<_>) = cmds.into_iter().partition(|c| matches!(c, Command::Shards(..)));
            self.process(cmds).await;
            for c in changes {
                if let Command::Shards(change, done) = c {
                    self.shards_changed(change).await;
                    let _ = done.send(());
                }
            }
        }
        self.running.abort_all();
        if let Some(j) = &self.journal {
            j.close();
        }
    }

    async fn load(&mut self, run_id: &str) -> Result<(), RuntimeError> {
        if self.runs.contains_key(run_id) {
            return Ok(());
        }
        let rec = self
            .handle
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(run_id.to_string()))?;
        let plan = self.handle.plans.get(&*self.handle.store, rec.plan_hash()).await?;
        self.runs.insert(
            run_id.to_string(),
            Live {
                plan,
                state: rec.state,
                owner: rec.owner.into(),
            },
        );
        Ok(())
    }

    /// Loads the unfinished runs `pick` selects, re-dispatches their in-flight attempts
    /// and re-arms their timers.
    async fn recover(&mut self, pick: impl Fn(&str) -> bool) -> Result<(), RuntimeError> {
        let ids = self.handle.store.active_runs().await?;
        let mut tasks = Vec::new();
        for id in ids.into_iter().filter(|id| pick(id)) {
            if let Err(e) = self.load(&id).await {
                tracing::error!(run_id = %id, error = %e, "cannot recover run");
                continue;
            }
            let now = self.handle.clock.now_ms();
            let Some(live) = self.runs.get_mut(&id) else { continue };
            refresh_deadlines(&live.plan, &mut live.state, now);
            tasks.extend(in_flight(&live.plan, &live.state));
            let wake = if live.state.status == RunStatus::Queued {
                Some(0)
            } else {
                live.state.next_wake()
            };
            let idle = !live.state.has_tasks_in_flight(&live.plan);
            self.set_timer(&id, wake);
            if idle {
                self.runs.remove(&id);
            }
        }
        tracing::info!(tasks = tasks.len(), runs = self.runs.len(), "recovered in-flight work");
        // Embedded (every run recovered at once): crash counts of attempts no longer in
        // flight are stale.
        if let Some(j) = &self.journal
            && self.shards.is_none()
        {
            j.retain(&tasks.iter().map(Task::idempotency_key).collect());
        }
        for t in tasks {
            self.dispatch(t);
        }
        self.flush_outbox().await;
        Ok(())
    }

    /// Pushes every in-flight attempt of the runs in memory again (a push of an entry
    /// still queued or leased is a no-op); returns how many.
    async fn redispatch(&mut self) -> usize {
        let tasks: Vec<Task> = self.runs.values().flat_map(|l| in_flight(&l.plan, &l.state)).collect();
        let n = tasks.len();
        for t in tasks {
            self.dispatch(t);
        }
        self.flush_outbox().await;
        n
    }

    /// Scale-out: forgets the runs of lost shards, recovers those of gained ones.
    async fn shards_changed(&mut self, change: ShardChange) {
        let Some(sh) = self.shards.clone() else { return };
        if !change.lost.is_empty() {
            let lost: BTreeSet<u32> = change.lost.iter().copied().collect();
            self.runs.retain(|id, _| !lost.contains(&sh.of(id)));
            let timed: Vec<String> = self.wake.keys().filter(|id| lost.contains(&sh.of(id))).cloned().collect();
            for id in timed {
                self.set_timer(&id, None);
            }
            // Their control entries go to the new owner, unacknowledged.
            self.deferred.retain(|id, _| !lost.contains(&sh.of(id)));
            self.failures.retain(|id, _| !lost.contains(&sh.of(id)));
        }
        if !change.gained.is_empty() {
            let gained: BTreeSet<u32> = change.gained.iter().copied().collect();
            if let Err(e) = self.recover(|id| gained.contains(&sh.of(id))).await {
                tracing::error!(error = %e, "recovery of gained shards failed");
            }
        }
    }

    fn set_timer(&mut self, run_id: &str, at: Option<i64>) {
        if let Some(old) = self.wake.remove(run_id) {
            self.timers.remove(&(old, run_id.to_string()));
        }
        if let Some(t) = at {
            self.wake.insert(run_id.to_string(), t);
            self.timers.insert((t, run_id.to_string()));
        }
    }

    async fn process(&mut self, mut cmds: Vec<Command>) {
        let now = self.handle.clock.now_ms();
        // Runs whose write failed are retried when their timer fires: their deferred
        // completions go in first, the tick that follows fires whatever else is due.
        let due: Vec<String> = self.timers.iter().take_while(|(t, _)| *t <= now).map(|(_, id)| id.clone()).collect();
        for id in due {
            if let Some(done) = self.deferred.remove(&id) {
                cmds.extend(done.into_iter().map(|d| Command::Done(Box::new(d))));
            }
        }
        let mut b = Batch::new(now);
        // Leases of completions (acknowledged where they came from) and leases on the
        // work queues (remote workers' attempts, aborted attempts).
        let mut acks: Vec<Lease> = Vec::new();
        let mut work_acks: Vec<Lease> = Vec::new();
        for cmd in cmds {
            match cmd {
                Command::Call(call, redelivered, reply) => {
                    if let Some(sh) = &self.shards
                        && !sh.owns(call.run_id())
                    {
                        let _ = reply.send(Err(RuntimeError::NotOwner(format!("shard {}", sh.of(call.run_id())))));
                        continue;
                    }
                    self.call(*call, redelivered, reply, &mut b).await;
                }
                // Taken out of the batch by `run`, applied between batches.
                Command::Shards(_, done) => {
                    let _ = done.send(());
                }
                Command::Redispatch => {
                    let n = self.redispatch().await;
                    tracing::info!(attempts = n, "re-pushed in-flight attempts after a Redis reconnect");
                }
                Command::Done(done) => {
                    let Completion {
                        run_id,
                        task,
                        outcome,
                        lease,
                        work,
                    } = *done;
                    self.running.remove(&task.key(&run_id));
                    if let Some(sh) = &self.shards
                        && !sh.owns(&run_id)
                    {
                        // The shard moved since the entry was pulled: to its new owner.
                        if let (Some(link), Some(l)) = (&self.link, lease) {
                            link.hand_on(l).await;
                        }
                        continue;
                    }
                    match self.load(&run_id).await {
                        Ok(()) => {}
                        Err(RuntimeError::NotFound(_)) => {
                            tracing::warn!(run_id = %run_id, "completion for an unknown run; dropped");
                            acks.extend(lease);
                            work_acks.extend(work);
                            continue;
                        }
                        Err(e) => {
                            // Not acknowledged, and kept: applied again when the store
                            // answers, so it is not lost to a store that failed for a moment.
                            tracing::warn!(run_id = %run_id, error = %e, "cannot load the run of a completion");
                            self.deferred.entry(run_id.clone()).or_default().push(Completion {
                                run_id: run_id.clone(),
                                task,
                                outcome,
                                lease,
                                work,
                            });
                            self.retry_later(&run_id, now);
                            continue;
                        }
                    }
                    let kept = Completion {
                        run_id: run_id.clone(),
                        task,
                        outcome: outcome.clone(),
                        lease,
                        work,
                    };
                    self.step(&run_id, Input::Done { task, outcome }, &mut b);
                    match b.pending.get_mut(&run_id) {
                        Some(p) => p.done.push(kept),
                        None => {
                            acks.extend(kept.lease);
                            work_acks.extend(kept.work);
                        }
                    }
                }
            }
        }
        while let Some((t, id)) = self.timers.first().cloned() {
            if t > now {
                break;
            }
            self.timers.remove(&(t, id.clone()));
            self.wake.remove(&id);
            match self.load(&id).await {
                Ok(()) => {}
                Err(RuntimeError::NotFound(_)) => continue,
                Err(e) => {
                    // The store is away: the timer is not dropped, it fires again later.
                    tracing::warn!(run_id = %id, error = %e, "cannot load a run whose timer is due");
                    self.retry_later(&id, now);
                    continue;
                }
            }
            let input = match self.runs.get(&id).map(|l| l.state.status) {
                Some(RunStatus::Queued) => Input::Start,
                _ => Input::Tick,
            };
            self.step(&id, input, &mut b);
        }
        let Batch {
            mut order,
            mut pending,
            replies,
            ..
        } = b;
        if order.is_empty() {
            self.finish_replies(replies, &HashMap::new());
            self.ack(acks, work_acks).await;
            return;
        }
        let fenced = self.fence(&order, &pending);

        let mut writes = Vec::with_capacity(order.len());
        // The run of each write, in order.
        let mut written: Vec<String> = Vec::with_capacity(order.len());
        // Rendered once: the same bodies are stored and then published.
        let mut rendered: HashMap<String, Vec<aob_store::StoredEvent>> = HashMap::with_capacity(order.len());
        for id in &order {
            let (Some(live), Some(p)) = (self.runs.get(id), pending.get_mut(id)) else {
                continue;
            };
            if p.create.is_none() && p.events.is_empty() && p.patches.is_empty() {
                continue; // nothing changed (a duplicate or stale input)
            }
            let events = stored_events(id, &p.events);
            rendered.insert(id.clone(), events.clone());
            written.push(id.clone());
            writes.push(RunWrite {
                create: p.create.take(),
                state_json: serde_json::to_string(&live.state).unwrap_or_default(),
                state: live.state.clone(),
                events,
                current_hash: p.current_hash.take(),
                patches: std::mem::take(&mut p.patches),
                fence: fenced.as_ref().ok().and_then(|f| f.get(id).copied()),
            });
        }
        failpoint!("before_commit");
        let began = std::time::Instant::now();
        // One result per run: a bad write fails its own run only.
        let results = match fenced {
            Ok(_) => self.handle.store.commit_each(writes).await,
            Err(e) => written.iter().map(|_| Err(e.clone())).collect(),
        };
        let failed: HashMap<String, StoreError> = written.into_iter().zip(results).filter_map(|(id, r)| r.err().map(|e| (id, e))).collect();
        let m = &self.handle.metrics.0;
        Metrics::add(&m.commits, 1);
        Metrics::add(&m.commit_micros, began.elapsed().as_micros() as u64);
        if !failed.is_empty() {
            Metrics::add(&m.commit_failures, 1);
            self.writes_failed(&failed, &mut pending, now);
        }
        failpoint!("after_commit");
        order.retain(|id| !failed.contains_key(id));
        self.handle.reads.invalidate(order.iter());

        let mut published = Vec::new();
        for id in &order {
            let Some(p) = pending.remove(id) else { continue };
            self.failures.remove(id);
            for d in p.done {
                acks.extend(d.lease);
                work_acks.extend(d.work);
            }
            let Some(live) = self.runs.get(id) else { continue };
            let owner = live.owner.clone();
            let m = &self.handle.metrics.0;
            Metrics::add(&m.events, p.events.len() as u64);
            for e in &p.events {
                match e.kind.as_str() {
                    "workflow_started" => Metrics::add(&m.runs_started, 1),
                    "workflow_completed" => Metrics::add(&m.runs_completed, 1),
                    "workflow_failed" => Metrics::add(&m.runs_failed, 1),
                    "workflow_cancelled" => Metrics::add(&m.runs_cancelled, 1),
                    _ => {}
                }
            }
            Metrics::add(
                &m.attempts_dispatched,
                p.actions.iter().filter(|a| matches!(a, Action::Dispatch(_))).count() as u64,
            );
            for e in rendered.remove(id).unwrap_or_default() {
                let terminal = matches!(e.kind.as_str(), "workflow_completed" | "workflow_failed" | "workflow_cancelled");
                published.push(Arc::new(HubEvent {
                    owner: owner.clone(),
                    event: e,
                    terminal,
                }));
            }
            for a in p.actions {
                match a {
                    Action::Dispatch(t) => self.dispatch(t),
                    Action::Abort(t) => {
                        if let Some((h, lease)) = self.running.remove(&t.key(id)) {
                            h.abort();
                            work_acks.push(lease);
                        }
                    }
                }
            }
        }
        self.flush_outbox().await;
        match &self.link {
            Some(link) => link.publish(&published).await,
            None => self.handle.hub.publish(published),
        }
        self.finish_replies(replies, &failed);
        self.ack(acks, work_acks).await;

        for id in &order {
            let Some(live) = self.runs.get(id) else { continue };
            // Completions still deferred from an earlier failed write go in at once.
            let wake = if self.deferred.contains_key(id) { Some(now) } else { live.state.next_wake() };
            let keep = !live.state.status.is_terminal() && live.state.has_tasks_in_flight(&live.plan);
            self.set_timer(id, wake);
            if !keep {
                self.runs.remove(id);
            }
        }
        Metrics::set(&self.handle.metrics.0.runs_in_memory, self.runs.len() as u64);
        Metrics::set(&self.handle.metrics.0.timers, self.timers.len() as u64);
    }

    /// One call of a batch: applied to the run's state (not yet committed); the answer
    /// waits in `replies` for the commit, or is sent at once when the call fails.
    async fn call(&mut self, call: Call, redelivered: bool, reply: Answering, b: &mut Batch) {
        if let Call::Start { .. } = call {
            return self.start(call, redelivered, reply, b).await;
        }
        let run_id = call.run_id().to_string();
        if let Err(e) = self.load(&run_id).await {
            let _ = reply.send(Err(e));
            return;
        }
        let answered = match call {
            Call::Start { .. } => return,
            Call::Cancel { reason, .. } => {
                self.step(&run_id, Input::Cancel { reason }, b);
                Ok(Reply::State(run_id, reply))
            }
            Call::Pause { .. } => {
                self.step(&run_id, Input::Pause, b);
                Ok(Reply::State(run_id, reply))
            }
            Call::Resume { .. } => {
                self.step(&run_id, Input::Resume, b);
                Ok(Reply::State(run_id, reply))
            }
            Call::Decide {
                node_id, activation, decision, ..
            } => {
                let Some(node) = self.runs.get(&run_id).and_then(|l| l.plan.index.get(&node_id).copied()) else {
                    let _ = reply.send(Err(RuntimeError::NotFound(format!("node {node_id} of run {run_id}"))));
                    return;
                };
                let input = Input::Decide {
                    node: node as u32,
                    activation,
                    decision,
                };
                let applied = self.step(&run_id, input, b) > 0;
                Ok(Reply::Applied(run_id, applied, reply))
            }
            Call::Patch { request, .. } => match self.patch(&run_id, request, b).await {
                Ok(rec) => Ok(Reply::Patch(Box::new(rec), reply)),
                Err(e) => Err((e, reply)),
            },
            Call::PatchDecision { seq, approve, by, reason, .. } => match self.decide_patch(&run_id, seq, approve, by, reason, b).await {
                Ok(rec) => Ok(Reply::Patch(Box::new(rec), reply)),
                Err(e) => Err((e, reply)),
            },
            Call::Replay {
                node_id, config, by, reason, ..
            } => match self.replay(&run_id, &node_id, config, &by, &reason, b).await {
                Ok(()) => Ok(Reply::State(run_id, reply)),
                Err(e) => Err((e, reply)),
            },
        };
        match answered {
            Ok(r) => b.replies.push(r),
            Err((e, reply)) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    async fn start(&mut self, call: Call, redelivered: bool, reply: Answering, b: &mut Batch) {
        let now = b.now;
        let Call::Start {
            run_id,
            owner,
            plan_hash,
            inputs,
            tag,
            parent_run_id,
            idempotency_key,
            settings,
        } = call
        else {
            return;
        };
        if self.runs.contains_key(&run_id) || b.pending.contains_key(&run_id) {
            let _ = reply.send(Err(RuntimeError::Conflict(format!("run {run_id} exists"))));
            return;
        }
        // Scale-out: a forwarded start can be delivered twice (its owner died before
        // acknowledging it); the second must not reach the commit (a duplicate run id
        // fails the whole group commit).
        if redelivered {
            match self.handle.store.get_run(&run_id).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    let _ = reply.send(Err(RuntimeError::Conflict(format!("run {run_id} exists"))));
                    return;
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                    return;
                }
            }
        }
        let plan = match self.handle.plans.get(&*self.handle.store, &plan_hash).await {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        // Two starts with one idempotency key (concurrent POSTs that both passed the
        // API's lookup) must not both reach the commit: the unique index would fail the
        // whole group commit, and with it every other run's transition in the batch.
        // The loop is the only writer of runs, so checking here is enough: a duplicate
        // in this batch answers with the first start's run; one already stored answers
        // Conflict, which the API resolves to the stored run.
        if let Some(k) = &idempotency_key {
            let slot = (owner.clone(), k.clone());
            if let Some(first) = b.keyed.get(&slot) {
                b.replies.push(Reply::State(first.clone(), reply));
                return;
            }
            match self.handle.store.run_by_idempotency_key(&owner, k).await {
                Ok(None) => {}
                Ok(Some(existing)) => {
                    let _ = reply.send(Err(RuntimeError::Conflict(format!("idempotency key already used by run {existing}"))));
                    return;
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                    return;
                }
            }
            b.keyed.insert(slot, run_id.clone());
        }
        let mut state = RunState::new(run_id.clone(), &plan, inputs, now);
        state.settings = settings;
        let step = apply(&plan, &mut state, Input::Start, now);
        let p = b.note(&run_id);
        p.create = Some(NewRun {
            owner: owner.clone(),
            workflow_hash: plan.hash.clone(),
            tag,
            parent_run_id,
            idempotency_key,
        });
        p.events.extend(step.events);
        p.actions.extend(step.actions);
        self.runs.insert(
            run_id.clone(),
            Live {
                plan,
                state,
                owner: owner.as_str().into(),
            },
        );
        b.replies.push(Reply::State(run_id, reply));
    }

    /// Applies one input; returns how many events it produced.
    fn step(&mut self, run_id: &str, input: Input, b: &mut Batch) -> usize {
        let now = b.now;
        let Some(live) = self.runs.get_mut(run_id) else { return 0 };
        let step = apply(&live.plan, &mut live.state, input, now);
        let n = step.events.len();
        let p = b.note(run_id);
        p.events.extend(step.events);
        p.actions.extend(step.actions);
        n
    }

    /// The workflow `ops` make of the run's current one, validated as a plan (bounded by
    /// the limits; patches from the API arrive prepared and skip this).
    fn patched_plan(&self, run_id: &str, ops: &[Value]) -> Result<(Arc<Plan>, Workflow), RuntimeError> {
        let live = self.runs.get(run_id).ok_or_else(|| RuntimeError::NotFound(run_id.to_string()))?;
        let plan = materialize(&self.handle.plans, &live.plan, ops)?;
        let wf = plan.workflow.clone();
        Ok((plan, wf))
    }

    /// The plan of a prepared patch, when the run is still on the version it was made from.
    async fn prepared_plan(&self, run_id: &str, prepared: &crate::calls::Prepared) -> Option<(Arc<Plan>, Workflow)> {
        let live = self.runs.get(run_id)?;
        if live.plan.hash != prepared.base {
            return None;
        }
        let plan = self.handle.plans.get(&*self.handle.store, &prepared.result).await.ok()?;
        let wf = plan.workflow.clone();
        Some((plan, wf))
    }

    /// Moves the run onto `plan` and records the patch as applied.
    async fn apply_patch(&mut self, run_id: &str, wf: Workflow, mut rec: PatchRecord, b: &mut Batch) -> Result<PatchRecord, RuntimeError> {
        let now = b.now;
        let owner = self.runs.get(run_id).map(|l| l.owner.to_string()).unwrap_or_default();
        let plan = self.handle.register(wf, &owner).await?;
        let Some(live) = self.runs.get_mut(run_id) else {
            return Err(RuntimeError::NotFound(run_id.to_string()));
        };
        let mut state = aob_engine::patch::rebase(&live.plan, &live.state, &plan);
        let input = Input::Patched {
            seq: rec.seq,
            by: rec.author.clone(),
            description: rec.description.clone(),
            node_id: rec.node_id.clone(),
            workflow: plan.hash.clone(),
        };
        let step = apply(&plan, &mut state, input, now);
        live.plan = plan.clone();
        live.state = state;
        rec.status = "applied".into();
        rec.result_hash = Some(plan.hash.clone());
        let p = b.note(run_id);
        p.events.extend(step.events);
        p.actions.extend(step.actions);
        p.current_hash = Some(plan.hash.clone());
        p.patches.push(rec.clone());
        Ok(rec)
    }

    async fn patch(&mut self, run_id: &str, req: PatchRequest, b: &mut Batch) -> Result<PatchRecord, RuntimeError> {
        let prepared = match &req.prepared {
            Some(p) => self.prepared_plan(run_id, p).await,
            None => None,
        };
        let (plan, wf) = match prepared {
            Some(done) => done,
            // The run moved on since (another patch): materialize again, within the limits.
            None => self.patched_plan(run_id, &req.operations)?,
        };
        let live = self.runs.get_mut(run_id).ok_or_else(|| RuntimeError::NotFound(run_id.to_string()))?;
        let limit = live.state.settings.agent_limit.map_or(aob_engine::patch::DEFAULT_AGENT_LIMIT, |l| l as usize);
        let issues = aob_engine::patch::check(&live.plan, &live.state, &plan, limit);
        if !issues.is_empty() {
            let code = if issues.iter().any(|i| i.code == "agent_limit_exceeded") {
                "agent_limit_exceeded"
            } else {
                "patch_rejected"
            };
            return Err(RuntimeError::Rejected {
                code,
                issues: issue_values(issues),
            });
        }
        live.state.patch_seq += 1;
        let rec = PatchRecord {
            run_id: run_id.to_string(),
            seq: live.state.patch_seq,
            status: "pending".into(),
            author: req.by,
            description: req.description,
            node_id: req.node_id,
            operations: Value::Array(req.operations),
            base_hash: live.plan.hash.clone(),
            result_hash: None,
            created_at: b.now,
            decided_at: None,
            decided_by: None,
            reason: None,
        };
        if live.state.settings.patch_review {
            let p = b.note(run_id);
            p.patches.push(rec.clone());
            return Ok(rec);
        }
        self.apply_patch(run_id, wf, rec, b).await
    }

    async fn decide_patch(
        &mut self,
        run_id: &str,
        seq: u64,
        approve: bool,
        by: String,
        reason: Option<String>,
        b: &mut Batch,
    ) -> Result<PatchRecord, RuntimeError> {
        let now = b.now;
        let mut rec = self
            .handle
            .store
            .get_patch(run_id, seq)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(format!("patch {seq} of run {run_id}")))?;
        if rec.status != "pending" {
            return Err(RuntimeError::Conflict(format!("patch {seq} is already {}", rec.status)));
        }
        rec.decided_at = Some(now);
        rec.decided_by = Some(by);
        rec.reason = reason;
        let outcome = if approve {
            // Checked again: the run has moved on since the patch was proposed.
            let ops = rec.operations.as_array().cloned().unwrap_or_default();
            self.patched_plan(run_id, &ops).and_then(|(plan, wf)| {
                let live = self.runs.get(run_id).ok_or_else(|| RuntimeError::NotFound(run_id.to_string()))?;
                let limit = live.state.settings.agent_limit.map_or(aob_engine::patch::DEFAULT_AGENT_LIMIT, |l| l as usize);
                let issues = aob_engine::patch::check(&live.plan, &live.state, &plan, limit);
                if issues.is_empty() {
                    Ok(wf)
                } else {
                    Err(RuntimeError::Rejected {
                        code: "patch_rejected",
                        issues: issue_values(issues),
                    })
                }
            })
        } else {
            Err(RuntimeError::Conflict("rejected by reviewer".into()))
        };
        match outcome {
            Ok(wf) => self.apply_patch(run_id, wf, rec, b).await,
            Err(e) => {
                rec.status = "rejected".into();
                if approve {
                    rec.reason = Some(format!("no longer applies: {e}"));
                }
                let p = b.note(run_id);
                p.patches.push(rec.clone());
                Ok(rec)
            }
        }
    }

    async fn replay(&mut self, run_id: &str, node_id: &str, config: Option<Value>, by: &str, reason: &str, b: &mut Batch) -> Result<(), RuntimeError> {
        let live = self.runs.get(run_id).ok_or_else(|| RuntimeError::NotFound(run_id.to_string()))?;
        if !live.state.status.is_terminal() {
            return Err(RuntimeError::Conflict(format!(
                "run {run_id} is {}; only a finished run can be replayed",
                live.state.status.as_str()
            )));
        }
        if !live.plan.index.contains_key(node_id) {
            return Err(RuntimeError::NotFound(format!("node {node_id} of run {run_id}")));
        }
        if let Some(cfg) = config {
            // A config override is a patch of the replayed node only; that node and
            // everything after it re-run, so the finished-node lock does not apply.
            let (_, wf) = self.patched_plan(run_id, &[serde_json::json!({"op": "replace_node_config", "id": node_id, "config": cfg})])?;
            let owner = live.owner.to_string();
            let plan = self.handle.register(wf, &owner).await?;
            let Some(live) = self.runs.get_mut(run_id) else {
                return Err(RuntimeError::NotFound(run_id.to_string()));
            };
            live.state = aob_engine::patch::rebase(&live.plan, &live.state, &plan);
            live.plan = plan.clone();
            let p = b.note(run_id);
            p.current_hash = Some(plan.hash.clone());
        }
        let Some(live) = self.runs.get(run_id) else {
            return Err(RuntimeError::NotFound(run_id.to_string()));
        };
        let node = live.plan.index[node_id] as u32;
        self.step(
            run_id,
            Input::Replay {
                node,
                by: by.to_string(),
                reason: reason.to_string(),
            },
            b,
        );
        Ok(())
    }

    /// The writes of `failed` runs were refused (nothing of them is stored): forget
    /// their in-memory state (the store has the last committed one), keep their
    /// completions for later, and re-arm each run's timer with a backoff, so a timer,
    /// retry or approval timeout that was due fires again once the store takes writes.
    fn writes_failed(&mut self, failed: &HashMap<String, StoreError>, pending: &mut HashMap<String, Pending>, now: i64) {
        let first = failed.values().next().map(ToString::to_string).unwrap_or_default();
        tracing::error!(runs = failed.len(), error = %first, "commit failed for some runs; their inputs are retried");
        for (id, e) in failed {
            self.runs.remove(id);
            let Some(p) = pending.remove(id) else { continue };
            // A run this process no longer owns is its new owner's (which recovers its
            // timers, and gets the unacknowledged completions), and a run whose
            // creation failed does not exist.
            let ours = !matches!(e, StoreError::Fenced(_)) && self.shards.as_ref().is_none_or(|sh| sh.owns(id));
            if !ours || p.create.is_some() {
                continue;
            }
            tracing::debug!(run_id = %id, error = %e, "write of the run failed");
            if !p.done.is_empty() {
                self.deferred.entry(id.clone()).or_default().extend(p.done);
            }
            self.retry_later(id, now);
        }
    }

    /// Re-arms the run's timer after one more failure, with a growing delay.
    fn retry_later(&mut self, run_id: &str, now: i64) {
        let n = self.failures.entry(run_id.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let at = now.saturating_add(retry_delay(*n));
        self.set_timer(run_id, Some(at));
    }

    /// Answers the batch's callers: an error for those whose run's write failed.
    fn finish_replies(&mut self, replies: Vec<Reply>, failed: &HashMap<String, StoreError>) {
        for r in replies {
            let failed = failed.get(r.run_id()).map(|e| match e {
                StoreError::Conflict(m) => RuntimeError::Conflict(m.clone()),
                StoreError::Fenced(m) => RuntimeError::NotOwner(m.clone()),
                other => RuntimeError::Store(other.clone()),
            });
            let (answer, tx) = match r {
                Reply::State(id, tx) => (
                    match self.runs.get(&id) {
                        Some(l) => Ok(Answer::State(Box::new(l.state.clone()))),
                        None => Err(RuntimeError::NotFound(id)),
                    },
                    tx,
                ),
                Reply::Patch(rec, tx) => (Ok(Answer::Patch(rec)), tx),
                Reply::Applied(_, applied, tx) => (Ok(Answer::Applied(applied)), tx),
            };
            let _ = tx.send(match failed {
                Some(e) => Err(batch_error(&e)),
                None => answer,
            });
        }
    }

    fn dispatch(&mut self, mut task: Task) {
        if let Some(live) = self.runs.get(&task.run_id) {
            task.owner = live.owner.to_string();
        }
        let id = task.idempotency_key();
        let queue = format!("{:?}", task.kind).to_ascii_lowercase();
        match serde_json::to_value(&task) {
            Ok(payload) => self.outbox.push(Envelope { id, queue, payload }),
            Err(e) => tracing::error!(error = %e, "cannot encode task"),
        }
    }

    /// Pushes the batch's attempts. A failed push loses nothing: the attempts are in
    /// the committed state, and their deadlines or a restart re-dispatch them.
    async fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.outbox);
        if let Err(e) = self.dispatch.push(entries).await {
            tracing::error!(error = %e, "dispatch push failed");
        }
    }

    /// Acknowledges completions once committed: on the control streams in a cluster,
    /// on the work queue (the local workers' leases) otherwise.
    async fn ack(&self, leases: Vec<Lease>, work: Vec<Lease>) {
        use futures::StreamExt;
        let from = self.link.as_ref().map_or(&self.dispatch, |l| &l.opts.control);
        let pairs = leases.into_iter().map(|l| (from, l)).chain(work.into_iter().map(|l| (&self.dispatch, l)));
        // Concurrently: over a network each ack is a round trip.
        futures::stream::iter(pairs)
            .for_each_concurrent(64, |(d, l)| async move {
                let _ = d.ack(&l).await;
            })
            .await;
    }

    /// The lease each changed run is written under (scale-out). A shard lost since its
    /// call was accepted (the lease keeper dropped it mid-batch) fails the batch, as a
    /// stale fence in the store would: nothing is written without a current lease.
    fn fence(&self, order: &[String], pending: &HashMap<String, Pending>) -> Result<HashMap<String, aob_store::Fence>, StoreError> {
        let Some(sh) = &self.shards else { return Ok(HashMap::new()) };
        let mut out = HashMap::with_capacity(order.len());
        for id in order.iter().filter(|id| pending.contains_key(*id)) {
            match sh.fence(id) {
                Some(f) => {
                    out.insert(id.clone(), f);
                }
                None => return Err(StoreError::Fenced(format!("shard {} is no longer held", sh.of(id)))),
            }
        }
        Ok(out)
    }
}

/// The workflow `ops` make of `base`'s, validated and compiled within the plans' limits.
fn materialize(plans: &Plans, base: &Plan, ops: &[Value]) -> Result<Arc<Plan>, RuntimeError> {
    let doc = serde_json::to_value(&base.workflow).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
    let limits = plans.limits();
    let doc = aob_model::patch::apply_with(&doc, ops, limits).map_err(|issues| RuntimeError::Rejected {
        code: "invalid_patch",
        issues: issue_values(issues),
    })?;
    let (wf, _) = aob_model::validate::parse_and_validate_with(&doc, limits).map_err(|issues| RuntimeError::Rejected {
        code: "validation_failed",
        issues: issue_values(issues),
    })?;
    plans.compile(wf).map_err(|issues| RuntimeError::Rejected {
        code: "validation_failed",
        issues: issue_values(issues),
    })
}
