//! The same server over PostgreSQL (state, events) and Redis Streams (attempts):
//! every example gives the same results and the same event log as the embedded mode.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed call is a failed test

mod common;

use serde_json::{Value, json};

use common::{database_url, redis_url};

/// Drops the test's schema however the test ends.
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, schema) = (database_url(), self.0.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                let _ = rt.block_on(aob_store_postgres::PgStore::drop_schema(&url, &schema));
            }
        })
        .join();
    }
}

/// Outputs, status, and the event log without ids and times, in a comparable order.
async fn outcome(srv: &common::TestServer, name: &str, base_url: &str) -> (Value, Vec<(String, String, u64)>) {
    let id = srv.start_run(&common::example(name), common::example_inputs(name, base_url)).await;
    let events = srv.events_until_end(&id, None).await;
    common::assert_gapless(&events);
    let run = srv.get(&format!("/api/v1/runs/{id}")).await.1;
    let mut log: Vec<(String, String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_string(),
                e["node_id"].as_str().unwrap_or("").to_string(),
                e["attempt"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // Fan-out completions may interleave differently from run to run in either mode.
    log.sort();
    (json!({"status": run["status"], "outputs": run["outputs"]}), log)
}

#[tokio::test]
async fn examples_match_embedded_mode_over_postgres_and_redis() {
    let stub = common::example_stub().await;
    let base = format!("http://{}", stub.addr);
    let schema = Schema(format!("aob_test_{}", uuid::Uuid::new_v4().simple()));
    let prefix = format!("aob-test-{}", uuid::Uuid::new_v4().simple());
    let embedded = common::start_server(&[stub.allow()]).await;
    let allow = stub.allow();
    let (db, redis, s, p) = (database_url(), redis_url(), schema.0.clone(), prefix.clone());
    let scaled = common::start_server_with(tempfile::tempdir().unwrap(), move |cfg| {
        cfg.ssrf.allow = vec![allow];
        cfg.database_url = Some(db);
        cfg.database_schema = Some(s);
        cfg.redis_url = Some(redis);
        cfg.redis_prefix = p;
    })
    .await;
    for name in common::EXAMPLES {
        let a = outcome(&embedded, name, &format!("{base}/m1")).await;
        let b = outcome(&scaled, name, &format!("{base}/m2")).await;
        assert_eq!(a.0["status"], "COMPLETED", "{name}: {}", a.0);
        assert_eq!(a, b, "{name}: embedded and PostgreSQL+Redis differ");
    }
    let _ = prefix;
}
