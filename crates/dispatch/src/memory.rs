//! In-process dispatch for the embedded mode.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::*;

struct Leased {
    envelope: Envelope,
    delivery: u32,
    token: u64,
    until: Instant,
}

#[derive(Default)]
struct Inner {
    ready: VecDeque<(Envelope, u32)>,
    leased: HashMap<String, Leased>,
    dead: Vec<Envelope>,
    next_token: u64,
}

pub struct MemoryDispatch {
    opts: Options,
    inner: Mutex<Inner>,
    notify: Notify,
}

impl MemoryDispatch {
    pub fn new(opts: Options) -> MemoryDispatch {
        MemoryDispatch {
            opts,
            inner: Mutex::default(),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves expired leases back to the queue (or to the dead letters).
    fn reclaim(&self, inner: &mut Inner, now: Instant) -> Option<Instant> {
        let expired: Vec<String> = inner.leased.iter().filter(|(_, l)| l.until <= now).map(|(k, _)| k.clone()).collect();
        for k in expired {
            if let Some(l) = inner.leased.remove(&k) {
                if l.delivery >= self.opts.max_deliveries {
                    inner.dead.push(l.envelope);
                } else {
                    inner.ready.push_back((l.envelope, l.delivery));
                }
            }
        }
        inner.leased.values().map(|l| l.until).min()
    }

    fn take(&self, queues: &[String], max: usize) -> (Vec<Lease>, Option<Instant>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let next_expiry = self.reclaim(&mut inner, now);
        let mut out = Vec::new();
        let mut i = 0;
        while i < inner.ready.len() && out.len() < max {
            let matches = queues.is_empty() || queues.iter().any(|q| *q == inner.ready[i].0.queue);
            if !matches {
                i += 1;
                continue;
            }
            let Some((envelope, prior)) = inner.ready.remove(i) else { break };
            inner.next_token += 1;
            let token = inner.next_token;
            let delivery = prior + 1;
            inner.leased.insert(
                envelope.id.clone(),
                Leased {
                    envelope: envelope.clone(),
                    delivery,
                    token,
                    until: now + self.opts.visibility,
                },
            );
            out.push(Lease { envelope, delivery, token });
        }
        let next = inner.leased.values().map(|l| l.until).min().or(next_expiry);
        (out, next)
    }
}

#[async_trait]
impl Dispatch for MemoryDispatch {
    async fn push(&self, entries: Vec<Envelope>) -> Result<()> {
        {
            let mut inner = self.lock();
            for e in entries {
                let queued = inner.leased.contains_key(&e.id) || inner.ready.iter().any(|(q, _)| q.id == e.id);
                if !queued {
                    inner.ready.push_back((e, 0));
                }
            }
        }
        self.notify.notify_waiters();
        self.notify.notify_one();
        Ok(())
    }

    async fn pull(&self, queues: &[String], max: usize, wait: Duration) -> Result<Vec<Lease>> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            let (got, next_expiry) = self.take(queues, max.max(1));
            if !got.is_empty() {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            // Wake for a push, a lease expiring, or the caller's deadline.
            let until = next_expiry.map_or(deadline, |e| e.min(deadline));
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    async fn ack(&self, lease: &Lease) -> Result<()> {
        let mut inner = self.lock();
        match inner.leased.get(&lease.envelope.id) {
            Some(l) if l.token == lease.token => {
                inner.leased.remove(&lease.envelope.id);
                Ok(())
            }
            _ => Err(DispatchError::LeaseLost(lease.envelope.id.clone())),
        }
    }

    async fn extend(&self, lease: &Lease) -> Result<()> {
        let mut inner = self.lock();
        let visibility = self.opts.visibility;
        match inner.leased.get_mut(&lease.envelope.id) {
            Some(l) if l.token == lease.token => {
                l.until = Instant::now() + visibility;
                Ok(())
            }
            _ => Err(DispatchError::LeaseLost(lease.envelope.id.clone())),
        }
    }

    async fn dead_letters(&self) -> Result<Vec<Envelope>> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.reclaim(&mut inner, now);
        Ok(inner.dead.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh(opts: Options) -> Box<MemoryDispatch> {
        Box::new(MemoryDispatch::new(opts))
    }

    crate::dispatch_conformance!(fresh, tokio::time::advance, paused);
}
