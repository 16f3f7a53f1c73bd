//! Scale-out: several `aob` processes over one PostgreSQL store and one Redis.
//!
//! Runs are partitioned into a fixed number of shards (`aob_store::shard_of`). Each
//! engine process holds leases on some shards (`Store::claim_shards`, renewed every
//! third of the lease TTL, rebalanced so every live engine holds about as many) and
//! applies the transitions of those shards' runs only; every write it commits carries
//! the lease's epoch, which the store checks inside the commit, so an owner that was
//! paused past its lease and resumed cannot write over its successor (fencing).
//!
//! Everything addressed to a run goes through its shard's control stream
//! (`shard.{n}` on the control dispatch): calls from API processes (answered on the
//! bus topic `reply.{process}`) and completions from workers. The owner acknowledges an
//! entry only after the state change it caused is committed, so an owner that dies
//! leaves its entries to be redelivered to the next one. Committed events go out on the
//! bus topic `events`; every process feeds them to its local hub (SSE, WebSocket,
//! waiting parents) and drops its cached reads of those runs. The bus is best-effort:
//! followers re-read the store when idle and after a `Resync`, so a lost message delays
//! an event, never loses it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use aob_dispatch::{Bus, BusMessage, Dispatch, Envelope, Lease};
use aob_engine::{Outcome, TaskId};
use aob_store::{Fence, Member, Store, StoredEvent, shard_of};

use crate::calls::{Answer, Call, WireError};
use crate::service::{Command, Completion, call_local};
use crate::{Clock, EventHub, HubEvent, RunReads, RuntimeError};

/// What a process does. Every process serves `/health`, `/readiness` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    /// Serves the HTTP API.
    pub api: bool,
    /// Holds shard leases and applies transitions.
    pub engine: bool,
    /// Executes attempts: `Some(types)` (every type when empty), `None` for no worker.
    pub worker: Option<Vec<String>>,
}

impl Roles {
    pub fn all() -> Roles {
        Roles {
            api: true,
            engine: true,
            worker: Some(vec![]),
        }
    }

    /// `api,engine,worker` or `worker:http,transform` (roles separated by commas; a
    /// worker's types follow a colon, separated by `+` or commas after the colon).
    pub fn parse(s: &str) -> Result<Roles, String> {
        let mut r = Roles {
            api: false,
            engine: false,
            worker: None,
        };
        let mut parts = s.split(',').map(str::trim).filter(|p| !p.is_empty()).peekable();
        if parts.peek().is_none() {
            return Err("no role given (expected api, engine and/or worker)".into());
        }
        while let Some(p) = parts.next() {
            match p.split_once(':') {
                None if p == "api" => r.api = true,
                None if p == "engine" => r.engine = true,
                None if p == "worker" => r.worker = Some(vec![]),
                Some(("worker", types)) => {
                    let mut list: Vec<String> = types.split('+').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
                    // `worker:http,transform`: the types after the colon may be comma-separated.
                    while let Some(next) = parts.peek() {
                        if matches!(*next, "api" | "engine" | "worker") || next.contains(':') {
                            break;
                        }
                        list.push(next.to_string());
                        parts.next();
                    }
                    if list.is_empty() {
                        return Err(format!("role '{p}' names no work type"));
                    }
                    r.worker = Some(list);
                }
                _ => return Err(format!("unknown role '{p}' (expected api, engine, worker or worker:<types>)")),
            }
        }
        Ok(r)
    }

    pub fn names(&self) -> String {
        let mut v = Vec::new();
        if self.api {
            v.push("api".to_string());
        }
        if self.engine {
            v.push("engine".to_string());
        }
        match &self.worker {
            Some(t) if t.is_empty() => v.push("worker".into()),
            Some(t) => v.push(format!("worker:{}", t.join("+"))),
            None => {}
        }
        v.join(",")
    }
}

/// How this process takes part in a cluster.
#[derive(Clone)]
pub struct ClusterOptions {
    /// Unique per process (a restarted process is a new member).
    pub id: String,
    pub roles: Roles,
    /// The HTTP address this process serves, as recorded in the member list.
    pub addr: String,
    /// Shards runs are partitioned into; every process of a cluster must agree.
    pub shards: u32,
    /// A shard lease lasts this long without renewal.
    pub lease_ttl: Duration,
    /// How long a forwarded call waits for the owner's answer.
    pub call_timeout: Duration,
    /// The shard control streams (separate from the work queues).
    pub control: Arc<dyn Dispatch>,
    pub bus: Arc<dyn Bus>,
}

/// The shards this process holds, with their epochs; shared by the loop, the pump and
/// the API-side router.
#[derive(Clone)]
pub(crate) struct Shards {
    count: u32,
    held: Arc<RwLock<BTreeMap<u32, u64>>>,
}

impl Shards {
    pub(crate) fn new(count: u32) -> Shards {
        Shards {
            count: count.max(1),
            held: Arc::default(),
        }
    }

    pub(crate) fn of(&self, run_id: &str) -> u32 {
        shard_of(run_id, self.count)
    }

    pub(crate) fn owns(&self, run_id: &str) -> bool {
        self.fence(run_id).is_some()
    }

    pub(crate) fn fence(&self, run_id: &str) -> Option<Fence> {
        let shard = self.of(run_id);
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.get(&shard).map(|&epoch| Fence { shard, epoch })
    }

    pub(crate) fn held(&self) -> BTreeMap<u32, u64> {
        self.held.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, shards: BTreeMap<u32, u64>) {
        *self.held.write().unwrap_or_else(|p| p.into_inner()) = shards;
    }
}

/// Shards the loop must pick up (recover their runs) or forget.
#[derive(Debug, Default)]
pub(crate) struct ShardChange {
    pub gained: Vec<u32>,
    pub lost: Vec<u32>,
}

fn control_queue(shard: u32) -> String {
    format!("shard.{shard}")
}

fn reply_topic(process: &str) -> String {
    format!("reply.{process}")
}

const EVENTS: &str = "events";
/// A member not seen for this many lease TTLs is removed from the member list.
const STALE_MEMBER_TTLS: i64 = 30;

/// An entry of a shard's control stream.
#[derive(Serialize, Deserialize)]
#[serde(tag = "wire", rename_all = "snake_case")]
enum Wire {
    Call {
        from: String,
        req: u64,
        call: Box<Call>,
    },
    /// `work`: the worker's lease on the attempt, acknowledged by the owner after its
    /// commit (the worker does not acknowledge it).
    Done {
        run_id: String,
        task: TaskId,
        outcome: Outcome,
        #[serde(default)]
        work: Option<Box<WorkLease>>,
    },
}

/// A worker's lease as it travels with a completion.
#[derive(Serialize, Deserialize)]
struct WorkLease {
    envelope: Envelope,
    delivery: u32,
    token: u64,
}

#[derive(Serialize, Deserialize)]
struct WireReply {
    req: u64,
    result: Result<Answer, WireError>,
}

/// A committed event on the bus.
#[derive(Serialize, Deserialize)]
struct WireEvent {
    owner: String,
    run_id: String,
    seq: u64,
    kind: String,
    body: String,
    terminal: bool,
}

/// This process's end of the cluster: routes calls to the owner of a run's shard,
/// hands completions to it, and carries committed events to every process.
pub(crate) struct Link {
    pub(crate) opts: ClusterOptions,
    /// This process's engine loop, when it has the engine role.
    local: Option<mpsc::Sender<Command>>,
    pub(crate) shards: Shards,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Result<Answer, RuntimeError>>>>,
    next: AtomicU64,
}

impl Link {
    pub(crate) fn new(opts: ClusterOptions, local: Option<mpsc::Sender<Command>>) -> Link {
        let shards = Shards::new(opts.shards);
        Link {
            opts,
            local,
            shards,
            waiting: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }

    /// A call about one run: applied here when this process owns the run's shard,
    /// otherwise forwarded to the owner through the shard's control stream.
    pub(crate) async fn call(&self, call: Call) -> Result<Answer, RuntimeError> {
        if let Some(tx) = &self.local
            && self.shards.owns(call.run_id())
        {
            match call_local(tx, call.clone(), false).await {
                Err(RuntimeError::NotOwner(_)) => {}
                other => return other,
            }
        }
        self.forward(call).await
    }

    async fn forward(&self, call: Call) -> Result<Answer, RuntimeError> {
        let req = self.next.fetch_add(1, Ordering::Relaxed);
        let shard = self.shards.of(call.run_id());
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(req, tx);
        let forget = || {
            self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&req);
        };
        let wire = Wire::Call {
            from: self.opts.id.clone(),
            req,
            call: Box::new(call),
        };
        let payload = serde_json::to_value(&wire).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        let env = Envelope {
            id: format!("call:{}:{req}", self.opts.id),
            queue: control_queue(shard),
            payload,
        };
        if let Err(e) = self.opts.control.push(vec![env]).await {
            forget();
            return Err(RuntimeError::Unavailable(format!("cannot reach the engines: {e}")));
        }
        match tokio::time::timeout(self.opts.call_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            _ => {
                forget();
                Err(RuntimeError::Unavailable(format!(
                    "no engine answered for shard {shard} within {} ms",
                    self.opts.call_timeout.as_millis()
                )))
            }
        }
    }

    /// Hands a worker's completion, with the worker's lease on the attempt, to the run's
    /// owner, which acknowledges both after committing the result. On error the attempt
    /// is redelivered when its lease runs out (at-least-once), never lost.
    pub(crate) async fn complete(&self, run_id: &str, task: TaskId, outcome: Outcome, lease: &Lease) -> Result<(), RuntimeError> {
        let key = task.key(run_id);
        let wire = Wire::Done {
            run_id: run_id.to_string(),
            task,
            outcome,
            work: Some(Box::new(WorkLease {
                envelope: lease.envelope.clone(),
                delivery: lease.delivery,
                token: lease.token,
            })),
        };
        let payload = serde_json::to_value(&wire).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        let env = Envelope {
            id: format!("done:{key}"),
            queue: control_queue(self.shards.of(run_id)),
            payload,
        };
        self.opts
            .control
            .push(vec![env])
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("cannot hand the completion over: {e}")))
    }

    /// Gives a control entry this process may not apply (its shard moved) back to the
    /// shard's stream for the next owner. Acknowledged first: if the push then fails,
    /// a forwarded call is lost (its caller gets 503) rather than applied twice, and a
    /// lost completion is re-run when its attempt's deadline passes.
    pub(crate) async fn hand_on(&self, lease: Lease) {
        let control = &self.opts.control;
        let _ = control.ack(&lease).await;
        let mut env = lease.envelope;
        env.id = format!("{}~{}", env.id, lease.delivery);
        if let Err(e) = control.push(vec![env]).await {
            tracing::warn!(error = %e, "cannot hand a control entry on");
        }
    }

    /// Sends committed events to every process (this one included).
    pub(crate) async fn publish(&self, events: &[Arc<HubEvent>]) {
        if events.is_empty() {
            return;
        }
        let wire: Vec<WireEvent> = events
            .iter()
            .map(|h| WireEvent {
                owner: h.owner.to_string(),
                run_id: h.event.run_id.clone(),
                seq: h.event.seq,
                kind: h.event.kind.clone(),
                body: h.event.body.clone(),
                terminal: h.terminal,
            })
            .collect();
        match serde_json::to_vec(&wire) {
            Ok(bytes) => {
                if let Err(e) = self.opts.bus.publish(EVENTS, bytes).await {
                    // Followers re-read the store when idle: late, not lost.
                    tracing::warn!(error = %e, "event publish failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode events"),
        }
    }

    /// Subscribes to answers and events; returns once both subscriptions are made, so
    /// nothing published afterwards is missed.
    pub(crate) async fn listen(self: &Arc<Self>, hub: EventHub, reads: RunReads, shutdown: CancellationToken) -> Result<(), RuntimeError> {
        let unavailable = |e: aob_dispatch::DispatchError| RuntimeError::Unavailable(e.to_string());
        let mut replies = self.opts.bus.subscribe(&reply_topic(&self.opts.id)).await.map_err(unavailable)?;
        let mut events = self.opts.bus.subscribe(EVENTS).await.map_err(unavailable)?;
        let link = self.clone();
        let engine = self.local.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    m = replies.recv() => m,
                    _ = stop.cancelled() => return,
                };
                let Some(BusMessage::Message(bytes)) = m else {
                    if m.is_none() {
                        return;
                    }
                    continue; // a lost answer times its call out
                };
                let Ok(r) = serde_json::from_slice::<WireReply>(&bytes) else { continue };
                let tx = link.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&r.req);
                if let Some(tx) = tx {
                    let _ = tx.send(r.result.map_err(RuntimeError::from));
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    m = events.recv() => m,
                    _ = shutdown.cancelled() => return,
                };
                match m {
                    Some(BusMessage::Message(bytes)) => {
                        let Ok(batch) = serde_json::from_slice::<Vec<WireEvent>>(&bytes) else {
                            continue;
                        };
                        reads.invalidate(batch.iter().map(|e| &e.run_id));
                        hub.publish(
                            batch
                                .into_iter()
                                .map(|e| {
                                    Arc::new(HubEvent {
                                        owner: e.owner.into(),
                                        event: StoredEvent {
                                            run_id: e.run_id,
                                            seq: e.seq,
                                            kind: e.kind,
                                            body: e.body,
                                        },
                                        terminal: e.terminal,
                                    })
                                })
                                .collect(),
                        );
                    }
                    // Redis was away: messages, queued attempts and completions may be
                    // lost. Forget every cached read; the engine pushes its in-flight
                    // attempts again (completions lost with Redis come back that way).
                    Some(BusMessage::Resync) => {
                        reads.clear();
                        if let Some(tx) = &engine {
                            let _ = tx.send(Command::Redispatch).await;
                        }
                    }
                    None => return,
                }
            }
        });
        Ok(())
    }

    /// Engine role: feeds the control streams of the held shards into the loop.
    pub(crate) fn spawn_pump(self: &Arc<Self>, tx: mpsc::Sender<Command>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let link = self.clone();
        tokio::spawn(async move {
            let control = link.opts.control.clone();
            loop {
                let queues: Vec<String> = link.shards.held().keys().map(|&s| control_queue(s)).collect();
                if queues.is_empty() {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
                let pulled = tokio::select! {
                    r = control.pull(&queues, 256, Duration::from_millis(500)) => r,
                    _ = shutdown.cancelled() => return,
                };
                let leases = match pulled {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "control pull failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                for lease in leases {
                    match serde_json::from_value::<Wire>(lease.envelope.payload.clone()) {
                        Ok(Wire::Done { run_id, task, outcome, work }) => {
                            let work = work.map(|w| Lease {
                                envelope: w.envelope,
                                delivery: w.delivery,
                                token: w.token,
                            });
                            let done = Completion {
                                run_id,
                                task,
                                outcome,
                                lease: Some(lease),
                                work,
                            };
                            if tx.send(Command::Done(Box::new(done))).await.is_err() {
                                return;
                            }
                        }
                        Ok(Wire::Call { from, req, call }) => {
                            tokio::spawn(answer(link.clone(), tx.clone(), lease, from, req, *call));
                        }
                        Err(e) => {
                            tracing::error!(id = %lease.envelope.id, error = %e, "undecodable control entry; dropping");
                            let _ = control.ack(&lease).await;
                        }
                    }
                }
            }
        })
    }

    /// Engine role: holds, renews and rebalances shard leases, and tells the loop what
    /// it gained and lost. On shutdown it gives its shards up so others take over at once.
    pub(crate) fn spawn_leases(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        tx: mpsc::Sender<Command>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let link = self.clone();
        tokio::spawn(async move {
            let ttl = link.opts.lease_ttl.as_millis() as i64;
            let started_at = clock.now_ms();
            let mut renewed_at = started_at;
            loop {
                let now = clock.now_ms();
                match link.lease_round(&*store, &tx, now, started_at).await {
                    Ok(()) => renewed_at = now,
                    Err(e) => {
                        tracing::warn!(error = %e, "shard lease renewal failed");
                        // Past two thirds of the TTL without a renewal, someone else may
                        // take over soon: stop applying (fencing would refuse our commits anyway).
                        if now - renewed_at > ttl * 2 / 3 && !link.shards.held().is_empty() {
                            let lost: Vec<u32> = link.shards.held().keys().copied().collect();
                            link.shards.set(BTreeMap::new());
                            tell(&tx, ShardChange { gained: vec![], lost }).await;
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(link.opts.lease_ttl / 3) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            let held: Vec<u32> = link.shards.held().keys().copied().collect();
            link.shards.set(BTreeMap::new());
            if let Err(e) = store.release_shards(&link.opts.id, &held).await {
                tracing::warn!(error = %e, "cannot release shard leases");
            }
            let _ = store.leave(&link.opts.id).await;
        })
    }

    async fn lease_round(&self, store: &dyn Store, tx: &mpsc::Sender<Command>, now: i64, started_at: i64) -> Result<(), RuntimeError> {
        let ttl = self.opts.lease_ttl.as_millis() as i64;
        let me = &self.opts.id;
        store
            .heartbeat(Member {
                id: me.clone(),
                roles: self.opts.roles.names(),
                addr: self.opts.addr.clone(),
                started_at,
                seen_at: now,
            })
            .await?;
        let members = store.members(0).await?;
        // Processes that died without leaving (kill -9) are forgotten after a while,
        // so the table does not grow with every restart.
        for m in members.iter().filter(|m| m.seen_at < now - STALE_MEMBER_TTLS * ttl) {
            store.leave(&m.id).await?;
        }
        let engines = members
            .iter()
            .filter(|m| m.seen_at >= now - ttl && m.roles.split(',').any(|r| r == "engine"))
            .count()
            .max(1) as u32;
        let count = self.shards.count;
        let target = count.div_ceil(engines) as usize;
        let before = self.shards.held();
        let leases = store.shard_leases().await?;
        let taken: HashMap<u32, bool> = leases.iter().map(|l| (l.shard, l.owner != *me && l.expires_at > now)).collect();
        let mut want: Vec<u32> = before.keys().copied().collect();
        for s in 0..count {
            if want.len() >= target {
                break;
            }
            if !before.contains_key(&s) && !taken.get(&s).copied().unwrap_or(false) {
                want.push(s);
            }
        }
        want.sort_unstable();
        let got = store.claim_shards(me, &want, now, ttl).await?;
        let mut after: BTreeMap<u32, u64> = got.iter().map(|l| (l.shard, l.epoch)).collect();
        // Hand the surplus over: more than our share means another engine joined.
        let surplus: Vec<u32> = if after.len() > target {
            after.keys().rev().take(after.len() - target).copied().collect()
        } else {
            vec![]
        };
        for s in &surplus {
            after.remove(s);
        }
        let lost: Vec<u32> = before.iter().filter(|(s, e)| after.get(s) != Some(e)).map(|(s, _)| *s).collect();
        let gained: Vec<u32> = after.iter().filter(|(s, e)| before.get(s) != Some(e)).map(|(s, _)| *s).collect();
        if !lost.is_empty() || !surplus.is_empty() {
            // Stop applying first (the loop forgets the runs), then give the leases up.
            let mut keep = before.clone();
            for s in lost.iter().chain(&surplus) {
                keep.remove(s);
            }
            self.shards.set(keep);
            tell(
                tx,
                ShardChange {
                    gained: vec![],
                    lost: lost.iter().chain(&surplus).copied().collect(),
                },
            )
            .await;
            if !surplus.is_empty() {
                store.release_shards(me, &surplus).await?;
            }
        }
        self.shards.set(after);
        if !gained.is_empty() {
            tracing::info!(?gained, lost = ?lost, released = ?surplus, engines, "shard leases changed");
            tell(tx, ShardChange { gained, lost: vec![] }).await;
        }
        Ok(())
    }
}

async fn tell(tx: &mpsc::Sender<Command>, change: ShardChange) {
    let (done, wait) = oneshot::channel();
    if tx.send(Command::Shards(change, done)).await.is_ok() {
        let _ = wait.await;
    }
}

/// Applies a forwarded call and answers it; the control entry is acknowledged only
/// after the answer (so after the commit). The entry's lease is kept alive meanwhile.
async fn answer(link: Arc<Link>, tx: mpsc::Sender<Command>, lease: Lease, from: String, req: u64, call: Call) {
    let control = link.opts.control.clone();
    let work = call_local(&tx, call, lease.delivery > 1);
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tokio::time::sleep(link.opts.lease_ttl / 3) => {
                let _ = control.extend(&lease).await;
            }
        }
    };
    if let Err(RuntimeError::NotOwner(_) | RuntimeError::Stopped) = result {
        // The shard moved while the call waited: hand it on at once rather than
        // leaving it to be redelivered after a visibility timeout.
        link.hand_on(lease).await;
        return;
    }
    let reply = WireReply {
        req,
        result: result.map_err(|e| WireError::from(&e)),
    };
    if let Ok(bytes) = serde_json::to_vec(&reply)
        && let Err(e) = link.opts.bus.publish(&reply_topic(&from), bytes).await
    {
        tracing::warn!(error = %e, "cannot send an answer");
    }
    let _ = control.ack(&lease).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse() {
        assert_eq!(Roles::parse("api,engine,worker").unwrap(), Roles::all());
        let r = Roles::parse("worker:http,transform").unwrap();
        assert_eq!(r.worker, Some(vec!["http".to_string(), "transform".to_string()]));
        assert!(!r.api && !r.engine);
        let r = Roles::parse("api,worker:http+subworkflow,engine").unwrap();
        assert!(r.api && r.engine);
        assert_eq!(r.worker, Some(vec!["http".to_string(), "subworkflow".to_string()]));
        assert_eq!(r.names(), "api,engine,worker:http+subworkflow");
        assert!(Roles::parse("").is_err());
        assert!(Roles::parse("api,chef").is_err());
        assert!(Roles::parse("worker:").is_err());
    }

    #[test]
    fn shards_fence_only_what_is_held() {
        let s = Shards::new(4);
        let run = "run-1";
        assert!(s.fence(run).is_none());
        s.set(BTreeMap::from([(s.of(run), 7)]));
        assert_eq!(s.fence(run), Some(Fence { shard: s.of(run), epoch: 7 }));
    }
}
