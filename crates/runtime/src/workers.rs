//! Workers: pull attempts from the dispatch queue, execute them, report back.
//! A lease is kept alive while its attempt runs and acknowledged by the engine
//! loop only after the completion is committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use aob_dispatch::{Dispatch, Lease};
use aob_engine::{Outcome, Task, TaskError};
use aob_exec::Executors;
use aob_model::NodeKind;

use crate::children::ChildRunner;
use crate::cluster::Link;
use crate::service::{Command, Completion, Handle, Options};
use crate::{AttemptJournal, failpoint};

/// In-flight attempts of this process by attempt key, so the engine can abort them.
#[derive(Clone, Default)]
pub struct Running {
    inner: Arc<Mutex<HashMap<String, (AbortHandle, Lease)>>>,
}

impl Running {
    fn insert(&self, key: String, h: AbortHandle, lease: Lease) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (h, lease));
    }

    pub fn remove(&self, key: &str) -> Option<(AbortHandle, Lease)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(key)
    }

    /// Attempts executing or waiting for a slot.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn abort_all(&self) {
        for (_, (h, _)) in self.inner.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            h.abort();
        }
    }
}

/// Where a finished attempt goes. Either way the attempt's lease is acknowledged by
/// the engine that owns the run, after it committed the result.
#[derive(Clone)]
pub(crate) enum Completions {
    /// This process's engine loop.
    Local(mpsc::Sender<Command>),
    /// The run's owner, through its shard's control stream.
    Cluster(Arc<Link>),
}

pub(crate) struct Pool {
    dispatch: Arc<dyn Dispatch>,
    executors: Executors,
    done: Completions,
    running: Running,
    max_tasks: usize,
    visibility: Duration,
    /// Work types pulled; every type when empty.
    queues: Vec<String>,
    slots: Slots,
    /// Crashes an attempt may have been running at before it is failed instead of run.
    crash_limit: u32,
    journal: Option<Arc<AttemptJournal>>,
}

/// Worker slots, shared fairly: `all` bounds the attempts executing in this process,
/// and each tenant may hold at most its share of them, so one tenant's slow attempts
/// never leave another tenant without a slot. An attempt waiting for its tenant's
/// share holds no slot; a `subworkflow` attempt holds none at all (it only waits for
/// its child run, whose own attempts take slots).
#[derive(Clone)]
struct Slots {
    all: Arc<Semaphore>,
    tenants: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    limits: Arc<aob_limits::Limits>,
    max_tasks: usize,
}

/// Attempts pulled but waiting for their tenant's share, at most this many per slot
/// (then the pool stops pulling until they drain).
const PARKED_PER_SLOT: usize = 16;

impl Slots {
    fn tenant(&self, owner: &str) -> Arc<Semaphore> {
        let mut map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        // Tenants with nothing running hold no semaphore for long.
        if map.len() > 10_000 {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        map.entry(owner.to_string())
            .or_insert_with(|| {
                let pct = self.limits.for_tenant(owner).tenant_share_percent as usize;
                Arc::new(Semaphore::new((self.max_tasks * pct / 100).max(1)))
            })
            .clone()
    }

    /// Waits for the tenant's share, then for a slot; `None` for kinds that hold none.
    async fn acquire(&self, task: &Task) -> Option<(tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit)> {
        if task.kind == aob_model::NodeKind::Subworkflow {
            return None;
        }
        let share = self.tenant(&task.owner).acquire_owned().await.ok()?;
        let slot = self.all.clone().acquire_owned().await.ok()?;
        Some((share, slot))
    }
}

impl Pool {
    pub(crate) fn new(
        opts: &Options,
        handle: &Handle,
        dispatch: Arc<dyn Dispatch>,
        guard: aob_ssrf::Guard,
        done: Completions,
        running: Running,
        queues: Vec<String>,
    ) -> Pool {
        let mut executors = Executors::new(guard)
            .with_children(Arc::new(ChildRunner { handle: handle.clone() }))
            .with_limits(opts.limits.clone());
        if let Some(exe) = &opts.jq_sandbox {
            executors = executors.with_jq(Arc::new(aob_exec::sandbox::ProcessJq::new(exe.clone())));
        }
        let max_tasks = opts.max_tasks.max(1);
        Pool {
            slots: Slots {
                all: Arc::new(Semaphore::new(max_tasks)),
                tenants: Default::default(),
                limits: opts.limits.clone(),
                max_tasks,
            },
            dispatch,
            executors,
            done,
            running,
            max_tasks: opts.max_tasks,
            visibility: opts.visibility,
            queues,
            crash_limit: opts.crash_limit,
            journal: opts.journal.clone(),
        }
    }

    /// How many times the process died while this attempt ran, as the attempts journal
    /// of the data dir says (embedded mode). Scale-out workers have no such count: a
    /// queue entry's redeliveries are no evidence of a crash (an engine that is slow to
    /// commit leaves finished attempts unacknowledged too, and they are redelivered).
    /// A subworkflow attempt only waits for its child run, which has attempts of its
    /// own: it is never blamed.
    fn crashes(&self, task: &Task) -> u32 {
        match (&self.done, &self.journal) {
            (Completions::Local(_), Some(j)) if task.kind != NodeKind::Subworkflow => j.crashes(&task.idempotency_key()),
            _ => 0,
        }
    }

    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(shutdown).await })
    }

    async fn run(self, shutdown: CancellationToken) {
        let parked_cap = self.max_tasks.max(1) * PARKED_PER_SLOT;
        loop {
            // Pull only when a slot is free and the parked attempts are few.
            let free = tokio::select! {
                p = self.slots.all.clone().acquire_owned() => p,
                _ = shutdown.cancelled() => return,
            };
            drop(free);
            if self.running.len() >= self.max_tasks + parked_cap {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let permits = self.slots.all.available_permits().clamp(1, 256);
            let pulled = tokio::select! {
                r = self.dispatch.pull(&self.queues, permits, Duration::from_secs(1)) => r,
                _ = shutdown.cancelled() => return,
            };
            let leases = match pulled {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "dispatch pull failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            for lease in leases {
                let task: Task = match serde_json::from_value(lease.envelope.payload.clone()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(id = %lease.envelope.id, error = %e, "undecodable task; dropping");
                        let _ = self.dispatch.ack(&lease).await;
                        continue;
                    }
                };
                self.start(task, lease);
            }
        }
    }

    fn start(&self, task: Task, lease: Lease) {
        let key = task.idempotency_key();
        let (done, executors, dispatch, running) = (self.done.clone(), self.executors.clone(), self.dispatch.clone(), self.running.clone());
        let slots = self.slots.clone();
        let crashes = self.crashes(&task);
        let poisoned = self.crash_limit > 0 && crashes >= self.crash_limit;
        // Subworkflow attempts wait for a child run and are never blamed for a crash.
        let journal = self.journal.clone().filter(|_| task.kind != NodeKind::Subworkflow);
        let beat = self.visibility / 3;
        let span = tracing::info_span!("attempt", run_id = %task.run_id, node_id = %task.node_id, attempt = task.id.attempt, item = ?task.id.item);
        let held = lease.clone();
        let h = tokio::spawn(
            async move {
                let outcome = if poisoned {
                    tracing::error!(crashes, "the process died while this attempt ran; failing it instead of running it again");
                    Outcome::Err(TaskError::new(
                        "attempt_crashed",
                        format!("the process died {crashes} times while this attempt was running; it is not run again"),
                        false,
                    ))
                } else {
                    let work = async {
                        let _slot = slots.acquire(&task).await;
                        // In the journal from when it really runs, not while it waits for a slot.
                        let _entered = journal.as_ref().map(|j| j.enter(task.idempotency_key()));
                        #[cfg(feature = "failpoints")]
                        failpoint::in_attempt(&task.node_id);
                        executors.execute(&task).await
                    };
                    tokio::pin!(work);
                    // Keep the lease while the attempt runs (or waits for a slot), however long it takes.
                    loop {
                        tokio::select! {
                            o = &mut work => break o,
                            _ = tokio::time::sleep(beat) => {
                                if let Err(e) = dispatch.extend(&held).await {
                                    tracing::warn!(error = %e, "lease lost while running");
                                }
                            }
                        }
                    }
                };
                failpoint!("after_effect");
                match done {
                    Completions::Local(tx) => {
                        let done = Completion {
                            run_id: task.run_id.clone(),
                            task: task.id,
                            outcome,
                            lease: Some(held),
                            work: None,
                        };
                        let _ = tx.send(Command::Done(Box::new(done))).await;
                    }
                    Completions::Cluster(link) => {
                        running.remove(&task.id.key(&task.run_id));
                        // The owner acknowledges `held` after its commit.
                        if let Err(e) = link.complete(&task.run_id, task.id, outcome, &held).await {
                            tracing::warn!(error = %e, "cannot hand a completion over");
                        }
                    }
                }
            }
            .instrument(span),
        );
        self.running.insert(key, h.abort_handle(), lease);
    }
}
