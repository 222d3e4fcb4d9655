"""Count the Prefect API calls of one CLI run (a case or a suite), by kind: a counting wrapper around the CLI.

    python benchmarks/api_calls.py OUT.json [CLI ARGUMENTS ...]     e.g. ... calls.json examples/cases/

Runs ``flows.cli.main(CLI ARGUMENTS)`` in this process with every HTTP request to the Prefect API counted (httpx's
``send``, below Prefect's client retries: a retried request counts each time it was sent), and every event sent
over the events websocket (task run states go that way, not as requests), then writes OUT.json:
``{"requests": {"POST /flow_runs/": 21, ...}, "kinds": {"flow runs created": 21, ...}, "events": {...},
"exit_code": 0}``. Requests to anything else (moto, Slack) are not counted. benchmarks/suite_fanout.py uses it.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LOCK = re.compile(r"/v2/concurrency_limits/pipeline-test-lock-[^/]+")
#: the kinds of the docs' table, first match wins: "kind: METHOD path pattern" (METHOD * is any)
KINDS_TEXT = r"""
flow runs created: POST ^/flow_runs/$
flow run state changes: POST ^/flow_runs/\{id\}/set_state$
task runs created: POST ^/task_runs/$
task run state changes: POST ^/task_runs/\{id\}/set_state$
artifacts created: POST ^/artifacts/$
subflow lookups (Prefect's): POST ^/flow_runs/filter \(parent\)$
history reads: POST ^/(artifacts|flow_runs)/filter$
lock calls: * ^/v2/concurrency_limits/
log batches: POST ^/logs/$
flows registered (Prefect's, each run): POST ^/flows/$
client set-up (Prefect's - CSRF token, version, storage, health): GET ^/(csrf-token|admin/|health)
flow and deployment reads: * ^/(flows|deployments)/
flow run reads and updates: * ^/flow_runs/\{id\}$
"""
KINDS: list[tuple[str, str, str]] = [(kind, *rule.split(" ", 1)) for kind, rule in  # type: ignore[misc]
                                     (line.rsplit(": ", 1) for line in KINDS_TEXT.strip().splitlines())]


def route(method: str, path: str, api_path: str, body: bytes = b"") -> str:
    """``POST /flow_runs/{id}/set_state`` from a request's method and URL path (the API's own prefix cut); a lock's
    name is ``{lock}``; Prefect's own read of a subflow's runs (by its parent task run) is ``... (parent)``."""
    if path.startswith(api_path):
        path = path[len(api_path):] or "/"
    path = _LOCK.sub("/v2/concurrency_limits/{lock}", _ID.sub("{id}", path))
    if path == "/flow_runs/filter" and b"parent_task_run_id" in body:
        path += " (parent)"
    return f"{method} {path}"


def kind_of(request: str) -> str:
    method, path = request.split(" ", 1)
    for kind, want, pattern in KINDS:
        if want in ("*", method) and re.search(pattern, path):
            return kind
    return "other"


def install(api_url: str) -> tuple[Counter[str], Counter[str]]:
    """Count every request to ``api_url`` and every event sent, from now on in this process."""
    import httpx
    from prefect.events.clients import PrefectEventsClient

    base = httpx.URL(api_url)
    requests: Counter[str] = Counter()
    events: Counter[str] = Counter()
    lock = threading.Lock()

    def count(request: httpx.Request) -> None:
        if request.url.host == base.host and request.url.port == base.port:
            with lock:
                body = request.content if request.method == "POST" else b""
                requests[route(request.method, request.url.path, base.path.rstrip("/"), body)] += 1

    sync_send, async_send, emit = httpx.Client.send, httpx.AsyncClient.send, PrefectEventsClient._emit

    def send(self: httpx.Client, request: httpx.Request, *args: Any, **kwargs: Any) -> httpx.Response:
        count(request)
        return sync_send(self, request, *args, **kwargs)

    async def asend(self: httpx.AsyncClient, request: httpx.Request, *args: Any, **kwargs: Any) -> httpx.Response:
        count(request)
        return await async_send(self, request, *args, **kwargs)

    async def counted_emit(self: Any, event: Any) -> None:
        with lock:
            events[str(event.event)] += 1
        await emit(self, event)

    httpx.Client.send = send  # type: ignore[method-assign]
    httpx.AsyncClient.send = asend  # type: ignore[method-assign]
    PrefectEventsClient._emit = counted_emit  # type: ignore[method-assign]
    return requests, events


def main(argv: list[str]) -> int:
    out, cli_args = Path(argv[0]), argv[1:]
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise SystemExit("set PREFECT_API_URL: the counts are of a running server's API")
    requests, events = install(api)
    from flows.cli import main as cli

    code = 1
    try:
        code = cli(cli_args)
    finally:
        kinds: Counter[str] = Counter()
        for request, n in requests.items():
            kinds[kind_of(request)] += n
        out.write_text(json.dumps({"requests": dict(requests.most_common()), "kinds": dict(kinds.most_common()),
                                   "events": dict(events.most_common()), "exit_code": code}, indent=1),
                       encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
