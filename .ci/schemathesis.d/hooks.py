"""Schemathesis hooks for .ci/schemathesis: the API's own contract as checks.

Loaded through SCHEMATHESIS_HOOKS. Every response is also recorded (status, method,
path, and the body of every 4xx/5xx) to $AOB_ST_LOG as one JSON line, so the script can
assert over the whole run afterwards: which routes were reached, no 5xx, and the
error envelope on every error, independently of how schemathesis reports failures.
"""

import json
import os
import threading

import schemathesis

_LOG = os.environ.get("AOB_ST_LOG")
_LOCK = threading.Lock()


def content_type(headers):
    """The Content-Type of schemathesis' (list values) or requests' (str values) headers."""
    value = headers.get("content-type") or headers.get("Content-Type")
    if isinstance(value, list):
        value = value[0] if value else None
    return value


def envelope_problem(status, body_text, content_type):
    """Why an error response is not the documented envelope, or None."""
    if not (content_type or "").startswith("application/json"):
        return f"content type is {content_type!r}, not application/json"
    try:
        body = json.loads(body_text)
    except ValueError as e:
        return f"body is not JSON: {e}"
    if not isinstance(body, dict) or set(body) != {"error"}:
        return "body is not an object with exactly one member `error`"
    err = body["error"]
    if not isinstance(err, dict):
        return "`error` is not an object"
    missing = [k for k in ("code", "message", "details") if k not in err]
    if missing:
        return f"`error` lacks {', '.join(missing)}"
    if not isinstance(err["code"], str) or not err["code"]:
        return "`error.code` is not a non-empty string"
    if not isinstance(err["message"], str):
        return "`error.message` is not a string"
    return None


@schemathesis.check
def error_envelope(ctx, response, case):
    """Every 4xx and 5xx carries {"error": {"code", "message", "details"}}."""
    if response.status_code < 400:
        return None
    problem = envelope_problem(response.status_code, response.text, content_type(response.headers))
    if problem:
        raise AssertionError(f"{response.status_code} without the error envelope: {problem}")
    return None


@schemathesis.hook
def after_call(context, case, response):
    if not _LOG:
        return
    record = {
        "method": case.method.upper(),
        "path": case.operation.path,
        "status": response.status_code,
    }
    if response.status_code >= 400:
        record["envelope_problem"] = envelope_problem(response.status_code, response.text, content_type(response.headers))
        record["body"] = response.text[:500]
    with _LOCK, open(_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def self_test():
    """The envelope check must be able to fail: run by .ci/schemathesis before the server starts."""
    ok = '{"error": {"code": "not_found", "message": "run x not found", "details": null}}'
    assert envelope_problem(404, ok, "application/json") is None
    for body, ctype in [
        (ok, "text/plain; charset=utf-8"),
        ("Failed to parse the request body as JSON", "application/json"),
        ('{"error": {"code": "not_found", "message": "x"}}', "application/json"),
        ('{"error": "not_found"}', "application/json"),
        ('{"error": {"code": "", "message": "x", "details": null}}', "application/json"),
        ('{"message": "x"}', "application/json"),
    ]:
        assert envelope_problem(400, body, ctype) is not None, (body, ctype)


if __name__ == "__main__":
    self_test()
    print("hooks self-test passed")
