//! The OpenAPI document, kept next to the router. When you add a route, add it here
//! and to the route list of `openapi_schema_health_readiness_and_version` in
//! crates/cli/tests/api_runs.rs, which checks that the served document has it.

use serde_json::{Value, json};

fn op(summary: &str, ok: &str) -> Value {
    json!({
        "summary": summary,
        "responses": {
            ok: {"description": "success"},
            "4XX": {"description": "caller mistake", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        }
    })
}

fn with_body(mut v: Value, schema: Value) -> Value {
    v["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema}}});
    v
}

/// A JSON body the route reads when there is one (an empty body is accepted).
fn with_optional_body(mut v: Value, schema: Value) -> Value {
    v["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": schema}}});
    v
}

fn sse(mut v: Value) -> Value {
    // The schema of one event of the stream; `data` is the event as JSON text.
    v["responses"]["200"]["content"] = json!({"text/event-stream": {"schema": {
        "type": "object",
        "required": ["id", "event", "data"],
        "properties": {"id": {"type": "string"}, "event": {"type": "string"}, "data": {"type": "string", "contentMediaType": "application/json"}}
    }}});
    v["parameters"] = json!([
        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
        {"name": "last_event_id", "in": "query", "schema": {"type": "string"}},
        {"name": "types", "in": "query", "description": "comma-separated event types", "schema": {"type": "string"}}
    ]);
    v
}

/// Every route, in groups: one `json!` literal per group keeps macro recursion shallow.
fn paths(wf: &Value) -> Value {
    let groups = [
        json!({
            "/health": {"get": op("Liveness", "200")},
            "/readiness": {"get": op("Readiness (store reachable)", "200")},
            "/metrics": {"get": op("Prometheus metrics of the engine loop (text format); platform admins or the metrics token (Authorization: Bearer)", "200")},
            "/openapi.json": {"get": op("This document", "200")},
            "/api/v1/version": {"get": op("Server version", "200")},
            "/api/v1/schema/workflow": {"get": op("JSON Schema of workflow documents", "200")},
            "/api/v1/workflows": {
                "post": with_body(op("Store a workflow and point a tag at it", "201"), json!({"type": "object", "required": ["tag_name", "workflow"], "properties": {"tag_name": {"type": "string"}, "workflow": wf, "global": {"type": "boolean"}, "description": {"type": "string"}}})),
                "get": op("List tags", "200")
            }
        }),
        json!({
            "/api/v1/workflows/validate": {"post": with_body(op("Validate a workflow without storing it", "200"), json!({"type": "object", "properties": {"workflow": wf}}))},
            "/api/v1/workflows/{tag}": {"get": op("Get a tag and its workflow (?materialize=)", "200"), "delete": op("Delete a tag", "200")},
            "/api/v1/workflows/{tag}/versions/{seq}": {"get": op("A past version of a tag (0 = original)", "200")},
            "/api/v1/workflows/{tag}/execute": {"post": with_optional_body(op("Start a run of a tag (seed route)", "201"), json!({"type": "object", "properties": {"inputs": {"type": "object"}, "idempotency_key": {"type": "string"}}}))},
            "/api/v1/runs": {
                "post": with_body(op("Start a run from a tag or an inline workflow", "201"), json!({"type": "object", "properties": {"workflow": wf, "tag": {"type": "string"}, "inputs": {"type": "object"}, "idempotency_key": {"type": "string"}, "patch_review": {"type": "boolean"}}})),
                "get": op("List runs (status, tag, cursor, limit)", "200")
            },
            "/api/v1/runs/{id}": {"get": op("A run", "200")}
        }),
        json!({
            "/api/v1/runs/{id}/details": {"get": op("Per-node state, attempts, outputs, timings", "200")},
            "/api/v1/runs/{id}/cancel": {"post": with_optional_body(op("Cancel a run", "200"), json!({"type": "object", "properties": {"reason": {"type": "string"}}}))},
            "/api/v1/runs/{id}/pause": {"post": op("Pause a run", "200")},
            "/api/v1/runs/{id}/resume": {"post": op("Resume a paused run", "200")},
            "/api/v1/runs/{id}/events": {"get": sse(op("SSE stream of a run's events", "200"))},
            "/api/v1/runs/{id}/events/list": {"get": op("A page of a run's events (after, limit, types)", "200")}
        }),
        json!({
            "/api/v1/events": {"get": sse(op("SSE stream of every event of the caller's runs", "200"))},
            "/api/v1/artifacts/{id}": {"get": op("A content-addressed artifact", "200")},
            "/api/v1/keys": {
                "post": with_body(op("Create an API key (admin; another tenant's: platform admin); the key is shown once", "201"), json!({"type": "object", "properties": {"name": {"type": "string"}, "user": {"type": "string"}, "role": {"enum": ["admin", "member"]}, "tenant": {"type": "string"}}})),
                "get": op("List API keys (?tenant= another tenant's, ?all=true every tenant's: platform admins)", "200")
            },
            "/api/v1/keys/{id}": {"delete": op("Revoke an API key", "200")},
            "/api/v1/whoami": {"get": op("The calling key's tenant, user and role", "200")},
            "/api/v1/approvals": {"get": op("Approvals (?status=pending|approved|rejected|timed_out|cancelled)", "200")}
        }),
        json!({
            "/api/v1/approvals/{id}": {"get": op("One approval", "200")},
            "/api/v1/approvals/{id}/decide": {"post": with_body(op("Approve or reject; 409 when already decided", "200"), json!({"type": "object", "required": ["decision"], "properties": {"decision": {"enum": ["approve", "reject"]}, "comment": {"type": "string"}, "data": {}}}))},
            "/api/approval": {"post": with_body(op("Seed route: decide the approval of a run's node", "200"), json!({"type": "object", "required": ["run_id", "node_id", "approved"], "properties": {"run_id": {"type": "string"}, "node_id": {"type": "string"}, "approved": {"type": "boolean"}, "comment": {"type": "string"}, "data": {}}}))},
            "/api/v1/runs/{id}/patches": {
                "post": with_body(op("Patch a running run's graph (RFC 6902 or id-based ops); every problem is a 4xx", "201"), json!({"type": "object", "required": ["operations"], "properties": {"operations": {"type": "array"}, "description": {"type": "string"}, "node_id": {"type": "string"}}})),
                "get": op("A run's patches", "200")
            },
            "/api/v1/runs/{id}/patches/{seq}": {"get": op("One run patch", "200")},
            "/api/v1/runs/{id}/patches/{seq}/approve": {"post": with_optional_body(op("Approve a pending patch (applied if it still applies)", "200"), json!({"type": "object", "properties": {"reason": {"type": "string"}}}))}
        }),
        json!({
            "/api/v1/runs/{id}/patches/{seq}/reject": {"post": with_optional_body(op("Reject a pending patch", "200"), json!({"type": "object", "properties": {"reason": {"type": "string"}}}))},
            "/api/v1/runs/{id}/nodes/{node}/replay": {"post": with_optional_body(op("Re-run a node of a finished run, optionally with a config override", "200"), json!({"type": "object", "properties": {"config": {}, "reason": {"type": "string"}}}))}
        }),
        json!({
            "/api/v1/workflows/{tag}/patch": {"patch": with_body(op("Apply RFC 6902 operations to a tag's workflow and move the tag (409 on a stale expected_version)", "200"), json!({"type": "object", "required": ["operations"], "properties": {"operations": {"type": "array"}, "description": {"type": "string"}, "expected_version": {"type": "integer"}}}))},
            "/api/v1/workflows/{tag}/history": {"get": op("Every move of a tag: op, who, when, hash, description (?scope=)", "200")},
            "/api/v1/workflows/{tag}/move": {"post": with_body(op("Move a tag to the workflow of a history seq (undo/redo)", "200"), json!({"type": "object", "required": ["version"], "properties": {"version": {"type": "integer"}, "expected_version": {"type": "integer"}, "description": {"type": "string"}}}))},
            "/api/v1/ws": {"get": op("WebSocket: subscribe/unsubscribe to runs or all runs, ping/pong; events as {type: event, event}", "101")}
        }),
    ];
    let mut all = serde_json::Map::new();
    for g in groups {
        if let Value::Object(m) = g {
            all.extend(m);
        }
    }
    Value::Object(all)
}

/// Query parameters by operation: what each handler's `Query<…>` reads.
fn query_params(method: &str, path: &str) -> Vec<Value> {
    let scope = json!({"name": "scope", "in": "query", "schema": {"enum": ["user", "global", "all"]}, "description": "tags of the caller, global tags, or both (default)"});
    let limit = json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}});
    match (method, path) {
        ("get", "/api/v1/workflows")
        | ("delete", "/api/v1/workflows/{tag}")
        | ("patch", "/api/v1/workflows/{tag}/patch")
        | ("get", "/api/v1/workflows/{tag}/history")
        | ("post", "/api/v1/workflows/{tag}/move") => vec![scope],
        ("get", "/api/v1/workflows/{tag}") | ("get", "/api/v1/workflows/{tag}/versions/{seq}") => vec![
            json!({"name": "materialize", "in": "query", "schema": {"type": "boolean"}, "description": "inline subworkflows"}),
            scope,
        ],
        ("get", "/api/v1/runs") => vec![
            json!({"name": "status", "in": "query", "schema": {"type": "string"}}),
            json!({"name": "tag", "in": "query", "schema": {"type": "string"}}),
            json!({"name": "cursor", "in": "query", "schema": {"type": "string"}}),
            limit,
        ],
        ("get", "/api/v1/runs/{id}/events/list") => vec![
            json!({"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}}),
            limit,
            json!({"name": "types", "in": "query", "description": "comma-separated event types", "schema": {"type": "string"}}),
        ],
        ("get", "/api/v1/approvals") => vec![
            json!({"name": "status", "in": "query", "schema": {"enum": ["pending", "approved", "rejected", "timed_out", "cancelled"]}}),
            limit,
        ],
        ("get", "/api/v1/keys") => vec![json!({"name": "tenant", "in": "query", "schema": {"type": "string"}})],
        _ => vec![],
    }
}

/// One `in: path` parameter per `{name}` of the template; `seq` is a non-negative integer.
fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            let schema = if name == "seq" {
                json!({"type": "integer", "minimum": 0})
            } else {
                json!({"type": "string", "minLength": 1})
            };
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect()
}

/// Routes served without an API key.
const PUBLIC: [&str; 3] = ["/health", "/readiness", "/openapi.json"];

/// Adds what every operation shares: path and query parameters, `Idempotency-Key` on
/// POST and PATCH of the guarded routes, no security on the public ones.
fn complete(paths: &mut Value) {
    let Some(paths) = paths.as_object_mut() else { return };
    for (path, ops) in paths.iter_mut() {
        let Some(ops) = ops.as_object_mut() else { continue };
        for (method, op) in ops.iter_mut() {
            let mut params = path_params(path);
            params.extend(query_params(method, path));
            if let Some(Value::Array(own)) = op.get("parameters") {
                params.extend(own.iter().cloned());
            }
            if matches!(method.as_str(), "post" | "patch") {
                params.push(json!({"name": "Idempotency-Key", "in": "header", "description": "replays the first answer for 24 h", "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]+$"}}));
            }
            if !params.is_empty() {
                op["parameters"] = Value::Array(params);
            }
            if PUBLIC.contains(&path.as_str()) {
                op["security"] = json!([]);
            }
            op["operationId"] = json!(operation_id(method, path));
            if let Some(example) = example(method, path) {
                op["requestBody"]["content"]["application/json"]["example"] = example;
            }
        }
    }
    let ids: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, ops)| ops.as_object().into_iter().flatten().map(move |(m, _)| (m.clone(), path.clone())))
        .collect();
    for (method, path, status, param, prefix, source) in LINKS {
        let links: serde_json::Map<String, Value> = ids
            .iter()
            .filter(|(m, p)| p.starts_with(prefix) && p.contains(&format!("{{{param}}}")) && !(m == method && p == path))
            .map(|(m, p)| (operation_id(m, p), json!({"operationId": operation_id(m, p), "parameters": {param: source}})))
            .collect();
        if let Some(resp) = paths
            .get_mut(path)
            .and_then(|ops| ops.get_mut(method))
            .and_then(|op| op["responses"].get_mut(status))
        {
            resp["links"] = Value::Object(links);
        }
    }
}

/// A valid request body per operation, for readers and for generated tests (a run of
/// the example workflow waits a minute, so there is time to patch, pause or cancel it).
fn example(method: &str, path: &str) -> Option<Value> {
    let wf = json!({
        "name": "example",
        "nodes": [
            {"id": "a", "type": "noop", "config": {"output": {"x": 1}}},
            {"id": "hold", "type": "wait", "config": {"duration_ms": 60000}},
            {"id": "b", "type": "noop"}
        ],
        "edges": [{"from": "a", "to": "hold"}, {"from": "hold", "to": "b"}]
    });
    Some(match (method, path) {
        ("post", "/api/v1/workflows") => json!({"tag_name": "example", "workflow": wf, "description": "first version"}),
        ("post", "/api/v1/workflows/validate") => json!({"workflow": wf}),
        ("post", "/api/v1/runs") => json!({"workflow": wf, "inputs": {"n": 1}}),
        ("post", "/api/v1/workflows/{tag}/execute") => json!({"inputs": {"n": 1}}),
        ("post", "/api/v1/keys") => json!({"name": "ci", "user": "alice", "role": "member"}),
        ("post", "/api/v1/runs/{id}/patches") => json!({
            "operations": [
                {"op": "add_node", "node": {"id": "after", "type": "noop"}},
                {"op": "add_edge", "edge": {"from": "b", "to": "after"}}
            ],
            "description": "one more step"
        }),
        ("patch", "/api/v1/workflows/{tag}/patch") => json!({
            "operations": [{"op": "replace", "path": "/nodes/0/config/output/x", "value": 2}],
            "description": "x is 2"
        }),
        ("post", "/api/v1/workflows/{tag}/move") => json!({"version": 0, "description": "undo"}),
        ("post", "/api/v1/approvals/{id}/decide") => json!({"decision": "approve", "comment": "looks good"}),
        ("post", "/api/v1/runs/{id}/cancel") => json!({"reason": "no longer needed"}),
        _ => return None,
    })
}

/// `get /api/v1/runs/{id}` → `get_api_v1_runs_id`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_string();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(seg.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').map(|c| c.to_ascii_lowercase()));
    }
    id
}

/// Responses that create something, and where its identifier is: OpenAPI links let
/// clients (and Schemathesis' stateful phase) follow a created resource to the
/// operations on it.
/// (method, path, status, parameter, paths it names, where the value is).
const LINKS: [(&str, &str, &str, &str, &str, &str); 4] = [
    ("post", "/api/v1/workflows", "201", "tag", "/api/v1/workflows/", "$request.body#/tag_name"),
    ("post", "/api/v1/runs", "201", "id", "/api/v1/runs/", "$response.body#/run_id"),
    (
        "post",
        "/api/v1/workflows/{tag}/execute",
        "201",
        "id",
        "/api/v1/runs/",
        "$response.body#/run_id",
    ),
    ("post", "/api/v1/keys", "201", "id", "/api/v1/keys/", "$response.body#/id"),
];

/// The published workflow JSON Schema as an OpenAPI component: its `$defs` become
/// components of their own (references rewritten to `#/components/schemas/…`), and the
/// standalone `$schema`/`$id` go, so every reference resolves inside this document.
fn workflow_component() -> (Value, serde_json::Map<String, Value>) {
    fn rewrite(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get_mut("$ref")
                    && let Some(name) = r.strip_prefix("#/$defs/")
                {
                    *r = format!("#/components/schemas/{name}");
                }
                m.values_mut().for_each(rewrite);
            }
            Value::Array(a) => a.iter_mut().for_each(rewrite),
            _ => {}
        }
    }
    let mut schema = aob_model::schema::workflow_schema();
    let mut defs = serde_json::Map::new();
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("$schema");
        obj.remove("$id");
        if let Some(Value::Object(d)) = obj.remove("$defs") {
            defs = d;
        }
    }
    rewrite(&mut schema);
    for def in defs.values_mut() {
        rewrite(def);
        if_then_to_any_of(def);
    }
    (schema, defs)
}

/// `allOf: [{if: {properties: {type: …}}, then: {properties: …}}, …]` (the per-type
/// `config` of a node) as the equivalent `anyOf` of one branch per type, since the
/// branches' `type`s together cover the `type` enum. OpenAPI tooling generates from
/// `anyOf` but not from `if`/`then`; the published JSON Schema keeps the original form.
fn if_then_to_any_of(def: &mut Value) {
    let Some(Value::Array(items)) = def.get("allOf") else { return };
    let mut branches = Vec::new();
    for item in items {
        let (Some(cond), Some(then)) = (item["if"]["properties"].as_object(), item["then"]["properties"].as_object()) else {
            return;
        };
        if cond.len() != 1 || !cond.contains_key("type") || item.as_object().is_some_and(|o| o.len() != 2) {
            return;
        }
        let mut props = cond.clone();
        props.extend(then.clone());
        branches.push(json!({"properties": props}));
    }
    if let Some(obj) = def.as_object_mut() {
        obj.remove("allOf");
        obj.insert("anyOf".into(), Value::Array(branches));
    }
}

pub fn spec() -> Value {
    let wf = json!({"$ref": "#/components/schemas/Workflow"});
    let mut all = paths(&wf);
    complete(&mut all);
    let (workflow, defs) = workflow_component();
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "aob API", "version": env!("CARGO_PKG_VERSION")},
        "paths": all,
        "security": [{"apiKey": []}, {"bearer": []}],
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"}
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["code", "message", "details"], "properties": {
                        "code": {"type": "string", "enum": crate::error::Code::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>()},
                        "message": {"type": "string"},
                        "details": {}
                    }}}
                },
                "Workflow": workflow
            }
        }
    });
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        for (name, def) in defs {
            schemas.entry(name).or_insert(def);
        }
    }
    doc
}
