//! Privileges, seen from outside: platform admins (the default tenant's admins) and
//! tenant admins, query-string keys, who reads `/metrics`, what outbound requests may
//! carry, and the modes of the files `aob serve` writes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed call is a failed test

mod common;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use common::{Stub, TestServer};

/// Sends a request with `client` (which carries its key) and returns status and body.
async fn call(client: &reqwest::Client, srv: &TestServer, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = client.request(method, format!("{}{}", srv.url, path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json::<Value>().await.unwrap_or(Value::Null))
}

/// A key created by the platform admin; returns (plaintext, id).
async fn key(srv: &TestServer, tenant: &str, user: &str, role: &str) -> (String, String) {
    let (s, k) = srv
        .post("/api/v1/keys", &json!({"tenant": tenant, "user": user, "role": role, "name": user}))
        .await;
    assert_eq!(s, 201, "{k}");
    (k["key"].as_str().unwrap().to_string(), k["id"].as_str().unwrap().to_string())
}

/// A client that sends no key unless the URL carries one.
fn anonymous() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn tenant_admins_manage_only_their_own_tenants_keys() {
    let srv = common::start_server(&[]).await;
    let (s, me) = srv.get("/api/v1/whoami").await;
    assert_eq!((s, me["tenant"].as_str(), me["role"].as_str()), (200, Some("default"), Some("admin")));
    let root_id = me["key_id"].as_str().unwrap().to_string();
    let (acme_admin, _) = key(&srv, "acme", "alice", "admin").await;
    let (globex_key, globex_id) = key(&srv, "globex", "gina", "admin").await;
    let alice = common::client_with_key(&acme_admin);

    // Another tenant's keys, first or not, are the platform admin's business.
    for tenant in ["default", "globex", "newco"] {
        for role in ["admin", "member"] {
            let (s, v) = call(
                &alice,
                &srv,
                Method::POST,
                "/api/v1/keys",
                Some(json!({"tenant": tenant, "user": "mallory", "role": role})),
            )
            .await;
            assert_eq!(s, 403, "{tenant}/{role}: {v}");
            common::assert_envelope(&v, "forbidden");
        }
    }
    // Its own tenant's keys, admins included, are the tenant admin's.
    let (s, v) = call(&alice, &srv, Method::POST, "/api/v1/keys", Some(json!({"user": "bob", "role": "member"}))).await;
    assert_eq!((s, v["tenant"].as_str()), (201, Some("acme")), "{v}");
    let bob_id = v["id"].as_str().unwrap().to_string();
    let bob = common::client_with_key(v["key"].as_str().unwrap());
    let (s, v) = call(
        &alice,
        &srv,
        Method::POST,
        "/api/v1/keys",
        Some(json!({"tenant": "acme", "user": "carol", "role": "admin"})),
    )
    .await;
    assert_eq!((s, v["tenant"].as_str(), v["role"].as_str()), (201, Some("acme"), Some("admin")), "{v}");
    // Members create no keys at all.
    let (s, v) = call(&bob, &srv, Method::POST, "/api/v1/keys", Some(json!({"user": "bob2"}))).await;
    assert_eq!(s, 403, "{v}");

    // Listing: its own tenant only.
    for q in ["?tenant=default", "?tenant=globex", "?all=true"] {
        let (s, v) = call(&alice, &srv, Method::GET, &format!("/api/v1/keys{q}"), None).await;
        assert_eq!(s, 403, "{q}: {v}");
        common::assert_envelope(&v, "forbidden");
    }
    let (s, v) = call(&alice, &srv, Method::GET, "/api/v1/keys", None).await;
    assert_eq!(s, 200, "{v}");
    let tenants: Vec<&str> = v["keys"].as_array().unwrap().iter().map(|k| k["tenant"].as_str().unwrap()).collect();
    assert_eq!(tenants, ["acme", "acme", "acme"], "{v}");
    assert_eq!(call(&alice, &srv, Method::GET, "/api/v1/keys?tenant=acme", None).await.0, 200);

    // Revoking another tenant's key: as if it did not exist, and it keeps working.
    for id in [&globex_id, &root_id] {
        let (s, v) = call(&alice, &srv, Method::DELETE, &format!("/api/v1/keys/{id}"), None).await;
        assert_eq!(s, 404, "{v}");
        common::assert_envelope(&v, "not_found");
    }
    let globex = common::client_with_key(&globex_key);
    assert_eq!(call(&globex, &srv, Method::GET, "/api/v1/whoami", None).await.0, 200);
    assert_eq!(srv.get("/api/v1/whoami").await.0, 200);
    // Its own tenant's keys it revokes.
    assert_eq!(call(&alice, &srv, Method::DELETE, &format!("/api/v1/keys/{bob_id}"), None).await.0, 200);
    assert_eq!(call(&bob, &srv, Method::GET, "/api/v1/whoami", None).await.0, 401);

    // The platform admin lists across tenants and revokes any tenant's key.
    let (s, v) = srv.get("/api/v1/keys?tenant=acme").await;
    assert_eq!((s, v["count"].as_u64()), (200, Some(3)), "{v}");
    let (s, v) = srv.get("/api/v1/keys?all=true").await;
    assert_eq!(s, 200, "{v}");
    let mut tenants: Vec<&str> = v["keys"].as_array().unwrap().iter().map(|k| k["tenant"].as_str().unwrap()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    assert_eq!(tenants, ["acme", "default", "globex"]);
    let (s, v) = call(&srv.http, &srv, Method::DELETE, &format!("/api/v1/keys/{globex_id}"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(call(&globex, &srv, Method::GET, "/api/v1/whoami", None).await.0, 401);
}

#[tokio::test]
async fn only_platform_admins_write_global_workflows_every_tenant_reads_and_runs_them() {
    let srv = common::start_server(&[]).await;
    let wf = |from: &str| json!({"nodes": [{"id": "hello", "type": "noop", "config": {"output": {"from": from}}}], "edges": []});
    let (s, g) = srv
        .post("/api/v1/workflows", &json!({"tag_name": "shared", "workflow": wf("global"), "global": true}))
        .await;
    assert_eq!((s, g["owner"].as_str()), (201, Some("_global_")), "{g}");
    let (acme_admin, _) = key(&srv, "acme", "alice", "admin").await;
    let (acme_member, _) = key(&srv, "acme", "bob", "member").await;
    let (default_member, _) = key(&srv, "default", "dave", "member").await;
    let alice = common::client_with_key(&acme_admin);

    // Neither a tenant admin nor the default tenant's member writes a global tag.
    for (who, client) in [("acme admin", &alice), ("default member", &common::client_with_key(&default_member))] {
        let attempts = [
            (
                Method::POST,
                "/api/v1/workflows",
                Some(json!({"tag_name": "other", "workflow": wf("x"), "global": true})),
            ),
            (
                Method::PATCH,
                "/api/v1/workflows/shared/patch",
                Some(json!({"operations": [{"op": "replace", "path": "/nodes/0/config/output/from", "value": "hijacked"}]})),
            ),
            (Method::POST, "/api/v1/workflows/shared/move", Some(json!({"version": 0}))),
            (Method::DELETE, "/api/v1/workflows/shared?scope=global", None),
        ];
        for (method, path, body) in attempts {
            let (s, v) = call(client, &srv, method.clone(), path, body).await;
            assert_eq!(s, 403, "{who}: {method} {path}: {v}");
            common::assert_envelope(&v, "forbidden");
        }
    }
    let (s, h) = srv.get("/api/v1/workflows/shared/history").await;
    assert_eq!((s, h["count"].as_u64()), (200, Some(1)), "nothing moved: {h}");
    assert_eq!(srv.get("/api/v1/workflows/other?scope=global").await.0, 404);

    // Every tenant still reads and runs it, as its own run.
    for k in [&acme_admin, &acme_member, &default_member] {
        let c = common::client_with_key(k);
        let (s, v) = call(&c, &srv, Method::GET, "/api/v1/workflows/shared", None).await;
        assert_eq!((s, v["global"].as_bool()), (200, Some(true)), "{v}");
        let (s, run) = call(&c, &srv, Method::POST, "/api/v1/workflows/shared/execute", Some(json!({}))).await;
        assert_eq!(s, 201, "{run}");
        let id = run["run_id"].as_str().unwrap();
        let mut done = Value::Null;
        for _ in 0..1000 {
            let (_, r) = call(&c, &srv, Method::GET, &format!("/api/v1/runs/{id}"), None).await;
            if r["status"] == "COMPLETED" {
                done = r;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(done["outputs"]["hello"], json!({"from": "global"}), "{done}");
    }
    // A tenant admin's own tag of the same name is its own business.
    let (s, v) = call(
        &alice,
        &srv,
        Method::POST,
        "/api/v1/workflows",
        Some(json!({"tag_name": "shared", "workflow": wf("acme")})),
    )
    .await;
    assert_eq!((s, v["owner"].as_str()), (201, Some("acme")), "{v}");

    // The platform admin writes it.
    let (s, v) = call(
        &srv.http,
        &srv,
        Method::PATCH,
        "/api/v1/workflows/shared/patch?scope=global",
        Some(json!({"operations": [{"op": "replace", "path": "/nodes/0/config/output/from", "value": "global2"}]})),
    )
    .await;
    assert_eq!((s, v["owner"].as_str()), (200, Some("_global_")), "{v}");
    let (s, _) = call(
        &srv.http,
        &srv,
        Method::POST,
        "/api/v1/workflows/shared/move?scope=global",
        Some(json!({"version": 0})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(&srv.http, &srv, Method::DELETE, "/api/v1/workflows/shared?scope=global", None).await;
    assert_eq!(s, 200);
    assert_eq!(srv.get("/api/v1/workflows/shared?scope=global").await.0, 404);
}

#[tokio::test]
async fn query_string_keys_work_on_event_streams_only() {
    let srv = common::start_server(&[]).await;
    let admin = common::admin_key(srv.dir.path());
    let plain = anonymous();
    let id = srv.start_run(&json!({"nodes": [{"id": "a", "type": "noop"}]}), json!({})).await;
    srv.wait_run(&id).await;

    // Ordinary routes: refused, with or without a header key next to it.
    for path in [
        "/api/v1/runs".to_string(),
        "/api/v1/whoami".to_string(),
        format!("/api/v1/runs/{id}"),
        format!("/api/v1/runs/{id}/events/list"),
        "/api/v1/keys".to_string(),
    ] {
        let url = format!("{}{path}?api_key={admin}", srv.url);
        for client in [&plain, &srv.http] {
            let r = client.get(&url).send().await.unwrap();
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(s, 401, "{path}: {v}");
            common::assert_envelope(&v, "unauthorized");
        }
    }
    let r = plain
        .post(format!("{}/api/v1/runs?api_key={admin}", srv.url))
        .json(&json!({"workflow": {"nodes": [{"id": "b", "type": "noop"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(srv.get("/api/v1/runs").await.1["runs"].as_array().map(Vec::len), Some(1), "nothing was started");
    // The key in a header still works there.
    assert_eq!(srv.get("/api/v1/whoami").await.0, 200);

    // The SSE streams take it (browsers' EventSource cannot set headers).
    let r = plain.get(format!("{}/api/v1/runs/{id}/events?api_key={admin}", srv.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = tokio::time::timeout(Duration::from_secs(30), r.text()).await.unwrap().unwrap();
    assert!(body.contains("event: workflow_completed"), "{body}");
    let r = plain.get(format!("{}/api/v1/events?api_key={admin}", srv.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    // A wrong key in the query string is still a wrong key.
    let r = plain
        .get(format!("{}/api/v1/runs/{id}/events?api_key=aob_nope_nope", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn metrics_are_for_platform_admins_and_the_scrape_token() {
    const TOKEN: &str = "scrape-0123456789-abcdef";
    let srv = common::start_server_with(tempfile::tempdir().unwrap(), |cfg| {
        cfg.metrics_token = Some(aob_api::auth::ScrapeToken::new(TOKEN));
    })
    .await;
    let admin = common::admin_key(srv.dir.path());
    let (acme_admin, _) = key(&srv, "acme", "alice", "admin").await;
    let (acme_member, _) = key(&srv, "acme", "bob", "member").await;
    let (default_member, _) = key(&srv, "default", "dave", "member").await;
    let url = format!("{}/metrics", srv.url);
    let status = |req: reqwest::RequestBuilder| async move { req.send().await.unwrap().status().as_u16() };

    for (who, k) in [("acme admin", &acme_admin), ("acme member", &acme_member), ("default member", &default_member)] {
        let r = anonymous().get(&url).header("x-api-key", k).send().await.unwrap();
        let s = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(s, 403, "{who}: {v}");
        common::assert_envelope(&v, "forbidden");
    }
    let text = srv.http.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("# TYPE aob_commits_total counter"), "{text}");
    let r = anonymous().get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("# TYPE aob_commits_total counter"));

    assert_eq!(status(anonymous().get(&url)).await, 401);
    assert_eq!(status(anonymous().get(&url).bearer_auth(format!("{TOKEN}x"))).await, 401);
    assert_eq!(status(anonymous().get(&url).bearer_auth(&TOKEN[..TOKEN.len() - 1])).await, 401);
    assert_eq!(status(anonymous().get(format!("{url}?api_key={admin}"))).await, 401);
    assert_eq!(status(anonymous().get(format!("{url}?api_key={TOKEN}"))).await, 401);

    // Without a token configured, the token is just a wrong key; and a weak token is refused.
    let plain = common::start_server(&[]).await;
    assert_eq!(status(anonymous().get(format!("{}/metrics", plain.url)).bearer_auth(TOKEN)).await, 401);
    assert_eq!(status(plain.http.get(format!("{}/metrics", plain.url))).await, 200);
    let weak = aob_cli::config::Config {
        metrics_token: Some(aob_api::auth::ScrapeToken::new("short")),
        ..Default::default()
    };
    assert!(weak.validate().is_err());
}

#[tokio::test]
async fn outbound_requests_never_carry_hop_by_hop_headers_or_a_chosen_host() {
    let stub = Stub::start(std::sync::Arc::new(|_, _| (200, json!({"ok": true})))).await;
    let srv = common::start_server(&[stub.allow()]).await;
    let url = stub.url("/hook");

    // Statically known names are refused at submission, with a pointer to each.
    for (name, value) in [
        ("Host", "metadata.internal"),
        ("Connection", "close"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic eA=="),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
    ] {
        let http = json!({"nodes": [{"id": "call", "type": "http", "config": {"url": url, "headers": {name: value, "X-Ok": "1"}}}]});
        let (s, v) = srv.post("/api/v1/runs", &json!({"workflow": http})).await;
        assert_eq!(s, 400, "{name}: {v}");
        common::assert_envelope(&v, "validation_failed");
        let pointers: Vec<&str> = v["error"]["details"]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["pointer"].as_str().unwrap())
            .collect();
        assert_eq!(pointers, [format!("/nodes/0/config/headers/{name}")], "{v}");

        let transform = json!({"nodes": [{"id": "pipe", "type": "transform", "config": {"pipeline": [
            {"step": "http_request", "url": url, "headers": {name: value}}
        ]}}]});
        let (s, v) = srv.post("/api/v1/workflows", &json!({"tag_name": "t", "workflow": transform})).await;
        assert_eq!(s, 400, "{name}: {v}");
        let pointers: Vec<&str> = v["error"]["details"]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["pointer"].as_str().unwrap())
            .collect();
        assert_eq!(pointers, [format!("/nodes/0/config/pipeline/0/headers/{name}")], "{v}");
    }
    assert!(stub.hits("/hook").is_empty(), "a refused workflow reached the target");

    // What does go out carries the URL's Host and the author's ordinary headers only.
    let wf = json!({"nodes": [
        {"id": "call", "type": "http", "config": {"url": url, "headers": {"X-Ok": "1"}}},
        {"id": "pipe", "type": "transform", "config": {"pipeline": [{"step": "http_request", "url": url, "headers": {"X-Ok": "2"}}]}}
    ], "edges": [{"from": "call", "to": "pipe"}]});
    let id = srv.start_run(&wf, json!({})).await;
    let run = srv.wait_run(&id).await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let hits = stub.hits("/hook");
    assert_eq!(hits.len(), 2);
    for h in &hits {
        assert_eq!(h.header("host"), Some(stub.addr.to_string().as_str()), "{h:?}");
        assert!(h.header("x-ok").is_some(), "{h:?}");
        for gone in [
            "connection",
            "keep-alive",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert_eq!(h.header(gone), None, "{gone} reached the target: {h:?}");
        }
    }
}

#[cfg(unix)]
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_and_its_files_are_the_owners_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fresh/data");
    let cfg = aob_cli::config::Config {
        addr: "127.0.0.1:0".into(),
        data_dir: data.clone(),
        durability: "process".into(),
        ..Default::default()
    };
    let server = aob_cli::serve::start(&cfg).await.unwrap();
    let admin = common::admin_client(&data);
    let r = admin
        .post(format!("http://{}/api/v1/runs", server.addr))
        .json(&json!({"workflow": {"nodes": [{"id": "a", "type": "noop"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(mode(&data), 0o700);
    for f in ["aob.db", "aob.db-wal", "aob.db-shm", "admin.key", "attempts.journal"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    // No temp file of the atomic write is left behind.
    let mut names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["admin.key", "aob.db", "aob.db-shm", "aob.db-wal", "attempts.journal"]);
    let _ = server.stop.send(());
    let _ = server.serve.await;
    server.runtime.shutdown().await;
}

#[cfg(unix)]
#[tokio::test]
async fn admin_key_is_never_written_through_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let victim_mode = mode(&victim);
    std::os::unix::fs::symlink(&victim, data.join("admin.key")).unwrap();
    let cfg = aob_cli::config::Config {
        addr: "127.0.0.1:0".into(),
        data_dir: data.clone(),
        durability: "process".into(),
        ..Default::default()
    };
    let err = match aob_cli::serve::start(&cfg).await {
        Ok(_) => panic!("started with admin.key a symlink"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(mode(&victim), victim_mode, "the link's target was not touched");
    assert!(std::fs::symlink_metadata(data.join("admin.key")).unwrap().file_type().is_symlink());

    // With the link gone, the first start writes a regular, private file.
    std::fs::remove_file(data.join("admin.key")).unwrap();
    let server = aob_cli::serve::start(&cfg).await.unwrap();
    let meta = std::fs::symlink_metadata(data.join("admin.key")).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(mode(&data.join("admin.key")), 0o600);
    let me = common::admin_client(&data)
        .get(format!("http://{}/api/v1/whoami", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status().as_u16(), 200);
    let _ = server.stop.send(());
    let _ = server.serve.await;
    server.runtime.shutdown().await;
}

#[tokio::test]
async fn with_four_eyes_a_patch_author_cannot_approve_their_own_patch() {
    let srv = common::start_server_with(tempfile::tempdir().unwrap(), |cfg| cfg.patches.forbid_self_approval = true).await;
    let held = json!({
        "nodes": [{"id": "prep", "type": "noop"}, {"id": "gate", "type": "hitl", "config": {"message": "go?"}}],
        "edges": [{"from": "prep", "to": "gate"}]
    });
    let (s, v) = srv.post("/api/v1/runs", &json!({"workflow": held, "patch_review": true})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["run_id"].as_str().unwrap().to_string();
    let ops = json!([{"op": "add_node", "node": {"id": "extra", "type": "noop"}}, {"op": "add_edge", "edge": {"from": "gate", "to": "extra"}}]);
    let (s, p) = srv.post(&format!("/api/v1/runs/{id}/patches"), &json!({"operations": ops})).await;
    assert_eq!((s, p["status"].as_str(), p["author"].as_str()), (201, Some("pending"), Some("admin")), "{p}");

    let (s, v) = srv.post(&format!("/api/v1/runs/{id}/patches/1/approve"), &json!({})).await;
    assert_eq!(s, 403, "{v}");
    common::assert_envelope(&v, "forbidden");
    assert_eq!(srv.get(&format!("/api/v1/runs/{id}/patches/1")).await.1["status"], "pending");

    let (reviewer, _) = key(&srv, "default", "rita", "member").await;
    let rita = common::client_with_key(&reviewer);
    let (s, v) = call(&rita, &srv, Method::POST, &format!("/api/v1/runs/{id}/patches/1/approve"), Some(json!({}))).await;
    assert_eq!((s, v["status"].as_str(), v["decided_by"].as_str()), (200, Some("applied"), Some("rita")), "{v}");
}

/// `AOB_METRICS_TOKEN` configures the scrape token, and `aob config dump` never shows it.
#[tokio::test]
async fn the_metrics_token_comes_from_the_environment_and_is_never_dumped() {
    const TOKEN: &str = "dump-me-not-0123456789";
    let cwd = tempfile::tempdir().unwrap();
    let dump = |token: &'static str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_aob"))
            .args(["--output", "json", "config", "dump"])
            .current_dir(cwd.path())
            .env("AOB_METRICS_TOKEN", token)
            .output()
    };
    let o = dump(TOKEN).await.unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out} {}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["metrics_token"], "<redacted>", "{out}");
    assert!(!out.contains(TOKEN), "{out}");
    // A weak token is a configuration error.
    let o = dump("short").await.unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("metrics_token"));
}
