"""A temporary Prefect server for one CLI run, when no ``PREFECT_API_URL`` is set.

Prefect's own temporary server is a child process in the CLI's process group: Ctrl+C in a terminal (SIGINT to
the whole group) stops it at the same moment as the run, which then spends minutes retrying a server that is
gone before it can record its end. This one runs in a session of its own, so a Ctrl+C reaches only the run,
which undoes its changes, records its end and stops the server itself. It also ends by itself when the CLI dies
(SIGKILL included): it watches its standard input, a pipe from the CLI that closes when the CLI is gone.

    python -m flows.local_server PORT      (started by :func:`temporary_server`; not meant to be run by hand)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import httpx

from flows.api_client import SQLITE_SERVER

STARTUP_TIMEOUT_S = 90.0
#: leases kept on disk (under PREFECT_HOME), not in the server's memory, so they survive the server
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


class ServerUnavailable(Exception):
    """The temporary server could not be started (exit 3)."""


def free_port() -> int:
    """A loopback port that nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def temporary_server() -> Iterator[str]:
    """Start a temporary server, yield its API URL, stop it at the end (also on Ctrl+C)."""
    from prefect.settings import get_current_settings

    port = free_port()
    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # the resource locks' leases must outlive this server: the next run's server frees a dead run's lease
           "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE}
    env.pop("PREFECT_API_URL", None)
    for name, value in SQLITE_SERVER.items():  # where the user set none (see flows.api_client)
        env.setdefault(name, value)
    detach = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"  # type: ignore[attr-defined]
              else {"start_new_session": True})
    proc = subprocess.Popen([sys.executable, "-m", "flows.local_server", str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, **detach)
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(proc, url)
        yield url
    finally:
        _stop(proc)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip().splitlines()
                raise ServerUnavailable("the temporary Prefect server exited at start"
                                        + (f": {err[-1]}" if err else ""))
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise ServerUnavailable(f"the temporary Prefect server did not answer within {STARTUP_TIMEOUT_S:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        if proc.stdin:
            proc.stdin.close()  # the server's watchdog exits on this alone
        proc.terminate()
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except OSError:
        pass


def _exit_when_parent_goes() -> None:
    """Block until standard input closes (the CLI ended or died), then end this process at once."""
    try:
        while sys.stdin.buffer.read(1024):
            pass
    finally:
        os._exit(0)


def main(argv: list[str]) -> None:
    import uvicorn

    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=int(argv[0]),
                log_level="error", lifespan="on")


if __name__ == "__main__":
    main(sys.argv[1:])
