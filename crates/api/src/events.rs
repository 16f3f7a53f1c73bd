//! Event streams: SSE per run and per owner, and a JSON page of a run's events.
//!
//! A stream subscribes to live events first, then replays the stored history after
//! the client's position, then forwards live events with a higher seq. A subscriber
//! that falls behind catches up from the store, so it never sees a gap or a duplicate.
//! [`follow_run`] and [`follow_owner`] are that logic, shared with the WebSocket.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use aob_runtime::HubEvent;
use aob_store::{Store, StoredEvent};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::{AppState, runs};

const PAGE: usize = 1000;
/// A quiet follower re-reads the store this often: live events from other processes
/// travel a best-effort bus, so the log has the last word.
const RECHECK: Duration = Duration::from_secs(3);

#[derive(Deserialize, Default)]
pub struct StreamQuery {
    last_event_id: Option<String>,
    types: Option<String>,
}

fn position(headers: &HeaderMap, q: &StreamQuery) -> ApiResult<i64> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.last_event_id.clone());
    match raw {
        None => Ok(0),
        Some(s) if s.trim().is_empty() => Ok(0),
        Some(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("Last-Event-ID '{s}' is not an integer")))
            .map(|v| v.max(0)),
    }
}

fn type_filter(q: &StreamQuery) -> Option<HashSet<String>> {
    q.types
        .as_ref()
        .map(|t| t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
}

fn is_terminal(kind: &str) -> bool {
    matches!(kind, "workflow_completed" | "workflow_failed" | "workflow_cancelled")
}

fn sse_event(id: i64, e: &StoredEvent) -> Event {
    Event::default().id(id.to_string()).event(e.kind.clone()).data(e.body.clone())
}

fn keep_alive() -> KeepAlive {
    KeepAlive::new().interval(Duration::from_secs(15)).text("heartbeat")
}

/// Where a followed stream's events go (an SSE response, a WebSocket subscription).
pub(crate) trait Sink: Send {
    /// Delivers one event; `pos` is the run's seq or the owner log's position. False
    /// ends the stream (the client is gone or too slow).
    fn send(&mut self, pos: i64, e: &StoredEvent) -> impl Future<Output = bool> + Send;
    /// Resolves once nobody listens any more.
    fn closed(&self) -> impl Future<Output = ()> + Send;
}

/// Why a followed stream stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The run's terminal event was delivered (or the run was over already).
    Terminal,
    /// The sink refused an event or closed.
    Closed,
    /// The store failed.
    Failed,
}

/// Follows one run: the history after `after`, then live events with a higher seq.
/// `live` must be subscribed before this is called, so nothing falls between the two;
/// a subscriber that lags or sees a gap catches up from the store, so the sink never
/// sees a gap or a duplicate.
pub(crate) async fn follow_run(store: &dyn Store, mut live: broadcast::Receiver<Arc<HubEvent>>, id: &str, after: u64, sink: &mut impl Sink) -> End {
    let mut last = after;
    let mut rechecked = false;
    'outer: loop {
        loop {
            let page = match store.events(id, last, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(run_id = %id, error = %e, "event stream read failed");
                    return End::Failed;
                }
            };
            let n = page.len();
            for (k, e) in page.iter().enumerate() {
                if !sink.send(e.seq as i64, e).await {
                    return End::Closed;
                }
                last = e.seq;
                // A replayed run has an earlier terminal event in its log: only the
                // last event of the log ends the stream.
                if is_terminal(&e.kind) && k + 1 == n && n < PAGE {
                    return End::Terminal;
                }
            }
            if n < PAGE {
                break;
            }
        }
        // A client resuming at (or past) the terminal event gets nothing from the
        // log, and no live event will ever come: close instead of hanging. The
        // state and its events commit together, so a terminal run's log is complete;
        // if it grew since the read above, read once more (that ends at the terminal
        // event), then close either way.
        if let Ok(Some(rec)) = store.get_run(id).await
            && rec.state.status.is_terminal()
        {
            if rec.state.seq <= last || rechecked {
                return End::Terminal;
            }
            rechecked = true;
            continue 'outer;
        }
        loop {
            tokio::select! {
                r = live.recv() => match r {
                    Ok(h) => {
                        let e = &h.event;
                        if e.seq <= last {
                            continue;
                        }
                        if e.seq > last + 1 {
                            continue 'outer;
                        }
                        if !sink.send(e.seq as i64, e).await {
                            return End::Closed;
                        }
                        last = e.seq;
                        if h.terminal {
                            return End::Terminal;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue 'outer,
                    Err(broadcast::error::RecvError::Closed) => return End::Closed,
                },
                _ = tokio::time::sleep(RECHECK) => continue 'outer,
                _ = sink.closed() => return End::Closed,
            }
        }
    }
}

/// Follows every run of `owner`: the owner log after position `after`, then, on each
/// live event of the owner (or a lag), the log again from the last position sent.
pub(crate) async fn follow_owner(store: &dyn Store, mut live: broadcast::Receiver<Arc<HubEvent>>, owner: &str, after: i64, sink: &mut impl Sink) -> End {
    let mut last = after;
    // Live events carry no global position, so resync from the log after each wake-up.
    loop {
        loop {
            let page = match store.owner_events(owner, last, PAGE).await {
                Ok(p) => p,
                Err(_) => return End::Failed,
            };
            let n = page.len();
            for (pos, e) in page {
                if !sink.send(pos, &e).await {
                    return End::Closed;
                }
                last = pos;
            }
            if n < PAGE {
                break;
            }
        }
        loop {
            tokio::select! {
                r = live.recv() => match r {
                    Ok(h) if *h.owner == *owner => break,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return End::Closed,
                },
                _ = tokio::time::sleep(RECHECK) => break,
                _ = sink.closed() => return End::Closed,
            }
        }
    }
}

/// An SSE response: `id` is the position, `types` filters.
struct SseSink {
    tx: mpsc::Sender<Result<Event, Infallible>>,
    types: Option<HashSet<String>>,
}

impl Sink for SseSink {
    async fn send(&mut self, pos: i64, e: &StoredEvent) -> bool {
        if self.types.as_ref().is_some_and(|t| !t.contains(&e.kind)) {
            return true;
        }
        self.tx.send(Ok(sse_event(pos, e))).await.is_ok()
    }

    async fn closed(&self) {
        self.tx.closed().await
    }
}

pub async fn run_stream(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let after = position(&headers, &q)? as u64;
    let types = type_filter(&q);
    runs::load(&app, &caller, &id).await?;
    let live = app.rt.hub.subscribe_run(&id);
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(256);
    let store = app.rt.store.clone();
    tokio::spawn(async move {
        follow_run(&*store, live, &id, after, &mut SseSink { tx, types }).await;
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(keep_alive()))
}

/// Every event of every run of the caller; ids are global log positions.
pub async fn owner_stream(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let after = position(&headers, &q)?;
    let types = type_filter(&q);
    let live = app.rt.hub.subscribe_all();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(256);
    let store = app.rt.store.clone();
    let owner = caller.owner.clone();
    tokio::spawn(async move {
        follow_owner(&*store, live, &owner, after, &mut SseSink { tx, types }).await;
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(keep_alive()))
}

#[derive(Deserialize, Default)]
pub struct PageQuery {
    after: Option<u64>,
    limit: Option<usize>,
    types: Option<String>,
}

pub async fn run_page(State(app): State<AppState>, caller: Caller, Path(id): Path<String>, Query(q): Query<PageQuery>) -> ApiResult<axum::Json<Value>> {
    runs::load(&app, &caller, &id).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let after = q.after.unwrap_or(0);
    let page = app.rt.store.events(&id, after, limit).await?;
    let types: Option<HashSet<&str>> = q.types.as_deref().map(|t| t.split(',').map(str::trim).collect());
    let next = if page.len() == limit { page.last().map(|e| e.seq) } else { None };
    let events: Vec<Value> = page
        .iter()
        .filter(|e| types.as_ref().is_none_or(|t| t.contains(e.kind.as_str())))
        .map(|e| serde_json::from_str(&e.body).unwrap_or(Value::Null))
        .collect();
    Ok(axum::Json(json!({"run_id": id, "events": events, "count": events.len(), "next_after": next})))
}
