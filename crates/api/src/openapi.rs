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

fn sse(mut v: Value) -> Value {
    v["responses"]["200"]["content"] = json!({"text/event-stream": {"schema": {"type": "string"}}});
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
                "post": with_body(op("Store a workflow and point a tag at it", "201"), json!({"type": "object", "required": ["tag_name", "workflow"], "properties": {"tag_name": {"type": "string"}, "workflow": wf}})),
                "get": op("List tags", "200")
            }
        }),
        json!({
            "/api/v1/workflows/validate": {"post": with_body(op("Validate a workflow without storing it", "200"), json!({"type": "object", "properties": {"workflow": wf}}))},
            "/api/v1/workflows/{tag}": {"get": op("Get a tag and its workflow (?materialize=)", "200"), "delete": op("Delete a tag", "200")},
            "/api/v1/workflows/{tag}/versions/{seq}": {"get": op("A past version of a tag (0 = original)", "200")},
            "/api/v1/workflows/{tag}/execute": {"post": with_body(op("Start a run of a tag (seed route)", "201"), json!({"type": "object", "properties": {"inputs": {"type": "object"}}}))},
            "/api/v1/runs": {
                "post": with_body(op("Start a run from a tag or an inline workflow", "201"), json!({"type": "object", "properties": {"workflow": wf, "tag": {"type": "string"}, "inputs": {"type": "object"}, "idempotency_key": {"type": "string"}}})),
                "get": op("List runs (status, tag, cursor, limit)", "200")
            },
            "/api/v1/runs/{id}": {"get": op("A run", "200")}
        }),
        json!({
            "/api/v1/runs/{id}/details": {"get": op("Per-node state, attempts, outputs, timings", "200")},
            "/api/v1/runs/{id}/cancel": {"post": op("Cancel a run", "200")},
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
            "/api/v1/runs/{id}/patches/{seq}/approve": {"post": op("Approve a pending patch (applied if it still applies)", "200")}
        }),
        json!({
            "/api/v1/runs/{id}/patches/{seq}/reject": {"post": op("Reject a pending patch", "200")},
            "/api/v1/runs/{id}/nodes/{node}/replay": {"post": with_body(op("Re-run a node of a finished run, optionally with a config override", "200"), json!({"type": "object", "properties": {"config": {}, "reason": {"type": "string"}}}))}
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

pub fn spec() -> Value {
    let wf = json!({"$ref": "#/components/schemas/Workflow"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "aob API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths(&wf),
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
                    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string", "enum": crate::error::Code::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>()},
                        "message": {"type": "string"},
                        "details": {}
                    }}}
                },
                "Workflow": aob_model::schema::workflow_schema()
            }
        }
    })
}
