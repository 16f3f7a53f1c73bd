//! The bus: best-effort broadcast between processes, for what needs no durability
//! (live events, answers to forwarded commands). A message may be lost (a subscriber
//! that reconnects misses what was published meanwhile, and says so with
//! [`BusMessage::Resync`]); every user can rebuild what it missed from the store.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc};

use crate::Result;

#[derive(Debug, Clone, PartialEq)]
pub enum BusMessage {
    Message(Vec<u8>),
    /// The subscription was interrupted and is back: messages may have been lost.
    Resync,
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<()>;
    /// Messages published to `topic` from now on. The subscription lives until the
    /// receiver is dropped; it survives backend restarts (with a `Resync`).
    async fn subscribe(&self, topic: &str) -> Result<mpsc::Receiver<BusMessage>>;
}

/// The in-process bus: one broadcast channel per topic.
pub struct MemoryBus {
    topics: Mutex<HashMap<String, broadcast::Sender<Vec<u8>>>>,
    capacity: usize,
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus {
            topics: Mutex::default(),
            capacity: 4096,
        }
    }
}

impl MemoryBus {
    fn sender(&self, topic: &str) -> broadcast::Sender<Vec<u8>> {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.entry(topic.to_string()).or_insert_with(|| broadcast::channel(self.capacity).0).clone()
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<()> {
        // No subscriber is not an error: nobody was listening.
        let _ = self.sender(topic).send(payload);
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<mpsc::Receiver<BusMessage>> {
        let mut rx = self.sender(topic).subscribe();
        let (tx, out) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                let msg = match rx.recv().await {
                    Ok(m) => BusMessage::Message(m),
                    Err(broadcast::error::RecvError::Lagged(_)) => BusMessage::Resync,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_messages_in_order_and_topics_are_separate() {
        let bus = MemoryBus::default();
        let mut a = bus.subscribe("a").await.unwrap();
        let mut b = bus.subscribe("b").await.unwrap();
        for i in 0..3u8 {
            bus.publish("a", vec![i]).await.unwrap();
        }
        bus.publish("b", vec![9]).await.unwrap();
        for i in 0..3u8 {
            assert_eq!(a.recv().await, Some(BusMessage::Message(vec![i])));
        }
        assert_eq!(b.recv().await, Some(BusMessage::Message(vec![9])));
    }
}
