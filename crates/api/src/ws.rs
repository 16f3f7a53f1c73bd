//! `GET /api/v1/ws`: the event streams over one WebSocket.
//!
//! Client messages (JSON text):
//! - `{"type":"subscribe","run_id":"…","after_seq":k}`: the run's events with seq > k
//!   (history first, then live), in seq order; `{"type":"end","run_id"}` after its
//!   terminal event;
//! - `{"type":"subscribe","all":true,"after":p}`: every event of the caller's runs after
//!   owner-log position p (default 0), each with its `position`;
//! - `{"type":"unsubscribe","run_id":"…"}` / `{"type":"unsubscribe","all":true}`;
//! - `{"type":"ping"}` → `{"type":"pong"}`.
//!
//! Events arrive as `{"type":"event","event":<the stored event>}`. Mistakes get
//! `{"type":"error","code","message"}` (another tenant's run is `not_found`) and the
//! connection stays open. Each connection has a bounded send queue; a consumer whose
//! queue stays full for `slow_consumer_ms` is dropped with close code 1008, so it never
//! holds up anyone else.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use aob_store::StoredEvent;

use crate::AppState;
use crate::auth::Caller;
use crate::events::{self, End, Sink};

/// Close code for a consumer that does not keep up (RFC 6455 "policy violation").
pub const SLOW_CONSUMER_CLOSE: u16 = 1008;
/// How long a dropped consumer is given to take the close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Largest client message.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsOptions {
    /// Messages queued per connection before the consumer counts as slow.
    pub buffer: usize,
    /// How long the queue may stay full before the connection is dropped.
    pub slow_consumer_ms: u64,
}

impl Default for WsOptions {
    fn default() -> Self {
        WsOptions {
            buffer: 256,
            slow_consumer_ms: 10_000,
        }
    }
}

pub async fn handler(State(app): State<AppState>, caller: Caller, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_CLIENT_MESSAGE).on_upgrade(move |socket| session(app, caller, socket))
}

/// The connection's outbound side: a bounded queue and the signal that drops it.
#[derive(Clone)]
struct Out {
    tx: mpsc::Sender<Message>,
    kill: CancellationToken,
    slow: Duration,
}

impl Out {
    /// Queues a message; false (and the connection is dropped) when the queue stayed full.
    async fn send(&self, m: Message) -> bool {
        match self.tx.send_timeout(m, self.slow).await {
            Ok(()) => true,
            Err(SendTimeoutError::Timeout(_)) => {
                self.kill.cancel();
                false
            }
            Err(SendTimeoutError::Closed(_)) => false,
        }
    }

    async fn json(&self, v: Value) -> bool {
        self.send(Message::Text(v.to_string().into())).await
    }

    async fn error(&self, code: &str, message: String, extra: Value) -> bool {
        let mut v = json!({"type": "error", "code": code, "message": message});
        if let (Some(o), Value::Object(x)) = (v.as_object_mut(), extra) {
            o.extend(x);
        }
        self.json(v).await
    }
}

/// A subscription's sink: events become `{"type":"event",…}` messages on the connection.
struct WsSink {
    out: Out,
    /// Add the owner-log position (subscriptions to all runs).
    positions: bool,
}

impl Sink for WsSink {
    async fn send(&mut self, pos: i64, e: &StoredEvent) -> bool {
        // The stored body is already one-line JSON: splice it in rather than re-parse it.
        let text = if self.positions {
            format!(r#"{{"type":"event","position":{pos},"event":{}}}"#, e.body)
        } else {
            format!(r#"{{"type":"event","event":{}}}"#, e.body)
        };
        self.out.send(Message::Text(text.into())).await
    }

    async fn closed(&self) {
        tokio::select! {
            _ = self.out.tx.closed() => {}
            _ = self.out.kill.cancelled() => {}
        }
    }
}

#[derive(Deserialize)]
struct ClientMsg {
    #[serde(rename = "type")]
    kind: String,
    run_id: Option<String>,
    #[serde(default)]
    all: bool,
    after_seq: Option<u64>,
    after: Option<i64>,
    id: Option<Value>,
}

async fn session(app: AppState, caller: Caller, socket: WebSocket) {
    let opts = app.guards.opts.ws.clone();
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel::<Message>(opts.buffer.max(1));
    let kill = CancellationToken::new();
    let out = Out {
        tx,
        kill: kill.clone(),
        slow: Duration::from_millis(opts.slow_consumer_ms.max(1)),
    };
    let writer = tokio::spawn(writer(sink, rx, kill.clone()));
    let mut subs: HashMap<String, AbortHandle> = HashMap::new();
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = kill.cancelled() => break,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                if !out.error("bad_request", "messages are JSON text".into(), json!({})).await {
                    break;
                }
                continue;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
        };
        if !handle(&app, &caller, &out, &mut subs, text.as_str()).await {
            break;
        }
    }
    for (_, h) in subs.drain() {
        h.abort();
    }
    drop(out);
    let _ = writer.await;
}

/// Handles one client message; false ends the session.
async fn handle(app: &AppState, caller: &Caller, out: &Out, subs: &mut HashMap<String, AbortHandle>, text: &str) -> bool {
    let m: ClientMsg = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => return out.error("invalid_json", format!("invalid message: {e}"), json!({})).await,
    };
    match (m.kind.as_str(), m.run_id, m.all) {
        ("ping", _, _) => out.json(json!({"type": "pong", "id": m.id})).await,
        ("subscribe", Some(run_id), false) => {
            match app.rt.store.get_run(&run_id).await {
                Ok(Some(r)) if r.owner == caller.owner => {}
                Ok(_) => return out.error("not_found", format!("run {run_id} not found"), json!({"run_id": run_id})).await,
                Err(e) => return out.error("unavailable", e.to_string(), json!({"run_id": run_id})).await,
            }
            let after = m.after_seq.unwrap_or(0);
            // Subscribe to live events before the history is read (inside the task).
            let live = app.rt.hub.subscribe_run(&run_id);
            if let Some(old) = subs.remove(&run_id) {
                old.abort();
            }
            if !out.json(json!({"type": "subscribed", "run_id": run_id, "after_seq": after})).await {
                return false;
            }
            let (store, o, id) = (app.rt.store.clone(), out.clone(), run_id.clone());
            let task = tokio::spawn(async move {
                let mut sink = WsSink {
                    out: o.clone(),
                    positions: false,
                };
                if events::follow_run(&*store, live, &id, after, &mut sink).await == End::Terminal {
                    o.json(json!({"type": "end", "run_id": id})).await;
                }
            });
            subs.insert(run_id, task.abort_handle());
            true
        }
        ("subscribe", None, true) => {
            let after = m.after.unwrap_or(0);
            let live = app.rt.hub.subscribe_all();
            if let Some(old) = subs.remove("*") {
                old.abort();
            }
            if !out.json(json!({"type": "subscribed", "all": true, "after": after})).await {
                return false;
            }
            let (store, o, owner) = (app.rt.store.clone(), out.clone(), caller.owner.clone());
            let task = tokio::spawn(async move {
                events::follow_owner(&*store, live, &owner, after, &mut WsSink { out: o, positions: true }).await;
            });
            subs.insert("*".into(), task.abort_handle());
            true
        }
        ("unsubscribe", run_id, all) if run_id.is_some() != all => {
            let key = run_id.clone().unwrap_or_else(|| "*".into());
            let was = subs.remove(&key).map(|h| h.abort()).is_some();
            let mut v = json!({"type": "unsubscribed", "subscribed": was});
            match run_id {
                Some(r) => v["run_id"] = json!(r),
                None => v["all"] = json!(true),
            }
            out.json(v).await
        }
        ("subscribe" | "unsubscribe", _, _) => out.error("bad_request", "give either run_id or \"all\": true".into(), json!({})).await,
        (other, _, _) => {
            out.error(
                "bad_request",
                format!("unknown message type '{other}' (subscribe, unsubscribe, ping)"),
                json!({}),
            )
            .await
        }
    }
}

/// Writes queued messages to the socket. When the connection is dropped as too slow,
/// it stops taking messages and sends the close frame (after what is already on its way).
async fn writer(mut sink: futures::stream::SplitSink<WebSocket, Message>, mut rx: mpsc::Receiver<Message>, kill: CancellationToken) {
    let slow = loop {
        let m = tokio::select! {
            m = rx.recv() => m,
            _ = kill.cancelled() => break true,
        };
        let Some(m) = m else { break false };
        tokio::select! {
            r = sink.send(m) => if r.is_err() { return },
            _ = kill.cancelled() => break true,
        }
    };
    let frame = if slow {
        tracing::info!("dropping a slow WebSocket consumer");
        CloseFrame {
            code: SLOW_CONSUMER_CLOSE,
            reason: "slow consumer: send buffer stayed full".into(),
        }
    } else {
        CloseFrame { code: 1000, reason: "".into() }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
}
