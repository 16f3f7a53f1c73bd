"""Assertions over every response of a Schemathesis run (recorded by hooks.py).

Usage: assert_responses.py OPENAPI_URL RESPONSES_NDJSON
Fails when: a documented operation was never called, any response is a 5xx, or any
4xx lacks the error envelope (judged by hooks.envelope_problem on the whole body when
the response arrived). Prints a per-status summary either way.
"""

import collections
import json
import sys
import urllib.request


def main(spec_url, log_path):
    with urllib.request.urlopen(spec_url, timeout=10) as r:
        spec = json.load(r)
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if m in {"get", "post", "put", "patch", "delete"}}
    # Schemathesis does not call the document it was loaded from; fetching it above is that test.
    documented.discard(("GET", "/openapi.json"))
    seen = collections.Counter()
    statuses = collections.Counter()
    problems = []
    try:
        lines = open(log_path, encoding="utf-8").read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        rec = json.loads(line)
        op = (rec["method"], rec["path"])
        seen[op] += 1
        statuses[rec["status"]] += 1
        if rec["status"] >= 500:
            problems.append(f"{rec['status']} on {op[0]} {op[1]}: {rec.get('body', '')[:300]}")
        elif rec["status"] >= 400:
            why = rec.get("envelope_problem")
            if why:
                problems.append(f"{rec['status']} without the envelope on {op[0]} {op[1]}: {why}: {rec.get('body', '')[:300]}")
    missing = sorted(documented - set(seen))
    print(f"responses: {sum(statuses.values())}; by status: {dict(sorted(statuses.items()))}")
    print(f"operations called: {len(set(seen) & documented)} of {len(documented)}")
    for op in missing:
        problems.append(f"never called: {op[0]} {op[1]}")
    if problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        for p in problems[:100]:
            print("  " + p, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
