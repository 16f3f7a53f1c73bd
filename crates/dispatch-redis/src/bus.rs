//! [`Bus`] on Redis pub/sub: topic `t` is the channel `{prefix}:bus:{t}`. Pub/sub keeps
//! nothing, so it needs no cleanup; a subscriber whose connection drops reconnects
//! (every 500 ms until Redis is back) and reports `Resync`.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::Client;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use aob_dispatch::{Bus, BusMessage, Result};

use crate::unavailable;

pub struct RedisBus {
    client: Client,
    conn: ConnectionManager,
    prefix: String,
}

impl RedisBus {
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisBus> {
        let client = Client::open(url).map_err(unavailable)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client.clone(), cfg).await.map_err(unavailable)?;
        Ok(RedisBus {
            client,
            conn,
            prefix: prefix.to_string(),
        })
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}:bus:{topic}", self.prefix)
    }
}

async fn open(client: &Client, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let mut ps = client.get_async_pubsub().await?;
    ps.subscribe(channel).await?;
    Ok(ps)
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PUBLISH")
            .arg(self.channel(topic))
            .arg(payload)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<mpsc::Receiver<BusMessage>> {
        let channel = self.channel(topic);
        // The first subscription is made before returning, so "from now on" holds.
        let first = open(&self.client, &channel).await.map_err(unavailable)?;
        let client = self.client.clone();
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(async move {
            let mut ps = Some(first);
            loop {
                if let Some(p) = ps.take() {
                    let mut messages = p.into_on_message();
                    loop {
                        tokio::select! {
                            m = messages.next() => match m {
                                Some(m) => {
                                    if tx.send(BusMessage::Message(m.get_payload_bytes().to_vec())).await.is_err() {
                                        return;
                                    }
                                }
                                None => break,
                            },
                            _ = tx.closed() => return,
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = tx.closed() => return,
                }
                if let Ok(p) = open(&client, &channel).await {
                    ps = Some(p);
                    if tx.send(BusMessage::Resync).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}
