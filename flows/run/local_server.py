"""A temporary Prefect server for one CLI run, when no ``PREFECT_API_URL`` is set.

Prefect's own temporary server is a child process in the CLI's process group: Ctrl+C in a terminal (SIGINT to
the whole group) stops it at the same moment as the run, which then spends minutes retrying a server that is
gone before it can record its end. This one runs in a session of its own, so a Ctrl+C reaches only the run,
which undoes its changes, records its end and stops the server itself. It also ends by itself when the CLI dies
(SIGKILL included): it watches its standard input, a pipe from the CLI that closes when the CLI is gone.

Its output goes to a log file of its own under PREFECT_HOME (``temporary-server-logs/``, the newest
:data:`KEPT_LOGS` kept, each at most :data:`LOG_CAP_BYTES`), never to a pipe that nobody reads (a full pipe
would block the server); a server that does not start is reported with the last lines of that file. Servers that
start at once on one PREFECT_HOME take turns on a file lock there while Prefect creates or migrates the database
(concurrent migrations of one SQLite database fail with ``index ... already exists``); once this Prefect
version has set the database up, they start side by side.

    python -m flows.run.local_server PORT      (started by :func:`temporary_server`; not meant to be run by hand)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, AsyncIterator, Iterator, Sequence

import httpx

from flows.run.prefect_client import SQLITE_SERVER

STARTUP_TIMEOUT_S = 120.0
#: the first start on a PREFECT_HOME creates and migrates the database: 100 s seen for five at once on two busy cores
FIRST_STARTUP_TIMEOUT_S = 240.0
#: leases kept on disk (under PREFECT_HOME), not in the server's memory, so they survive the server
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
#: the servers' logs, under PREFECT_HOME: one file per server, the newest KEPT_LOGS kept
LOG_FOLDER = "temporary-server-logs"
KEPT_LOGS = 20
#: a log that reaches this size starts again from empty (with a line saying so): the newest output is kept
LOG_CAP_BYTES = 10 * 1024 * 1024
#: lines of the log quoted when the server does not start
TAIL_LINES = 12
#: the lock the servers of one PREFECT_HOME take turns on while Prefect sets the database up, and what they
#: note once it is set up (for this Prefect version and database), so that later starts need no turn
SETUP_LOCK = "pipeline-test-server-setup.lock"
SETUP_DONE = "pipeline-test-server-setup.json"
SETUP_LOCK_TIMEOUT_S = 230.0


class ServerUnavailable(Exception):
    """The temporary server could not be started (exit 3)."""


def free_port() -> int:
    """A loopback port that nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: the server itself; tests give a stand-in (the port is appended)
SERVER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "flows.run.local_server")


@contextmanager
def temporary_server(command: Sequence[str] = SERVER_COMMAND) -> Iterator[str]:
    """Start a temporary server, yield its API URL, stop it at the end (also on Ctrl+C)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    port = free_port()
    env = {**os.environ, **settings.to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # the resource locks' leases must outlive this server: the next run's server frees a dead run's lease
           "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE}
    env.pop("PREFECT_API_URL", None)
    for name, value in SQLITE_SERVER.items():  # where the user set none (see flows.run.prefect_client)
        env.setdefault(name, value)
    detach = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"  # type: ignore[attr-defined]
              else {"start_new_session": True})
    try:
        log = new_log(Path(settings.home))
        out = log.open("wb")
    except OSError as exc:
        raise ServerUnavailable(f"the temporary Prefect server's log cannot be written in {settings.home} "
                                f"({exc.strerror or exc}); set PREFECT_HOME to a folder you can write") from None
    with out:  # the server's own handle stays open; this one closes once it is started
        proc = subprocess.Popen([*command, str(port)], stdin=subprocess.PIPE, stdout=out, stderr=out, env=env,
                                **detach)
    url = f"http://127.0.0.1:{port}/api"
    timeout = STARTUP_TIMEOUT_S if (Path(settings.home) / SETUP_DONE).exists() else FIRST_STARTUP_TIMEOUT_S
    try:
        _wait_healthy(proc, url, log, timeout)
        yield url
    finally:
        _stop(proc)


def new_log(home: Path) -> Path:
    """A new log file's path for a server starting now, the older ones beyond the newest KEPT_LOGS removed."""
    folder = home / LOG_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    old = sorted(folder.glob("*.log"), key=lambda p: p.name, reverse=True)
    for path in old[KEPT_LOGS - 1:]:
        try:
            path.unlink()
        except OSError:
            pass  # in use (Windows) or gone already
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return folder / f"{stamp}-{os.getpid()}.log"


def log_tail(log: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` non-blank lines of a server's log, each cut at 300 characters, passwords in database
    URLs hidden; empty when there is none."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.rstrip()[:300] for line in text.splitlines() if line.strip()][-lines:]
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", "\n".join(kept))


def _failure(what: str, log: Path) -> ServerUnavailable:
    tail = log_tail(log)
    quoted = ("; the end of its log, " + str(log) + ":\n" + "\n".join("    " + line for line in tail.splitlines())
              if tail else f"; its log, {log}, is empty")
    return ServerUnavailable(f"the temporary Prefect server {what}{quoted}")


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise _failure(f"exited at start (exit code {proc.returncode})", log)
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise _failure(f"did not answer within {timeout:.0f} s", log)


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


# ------------------------------------------------------------------------------------------- in the server
class CappedLog(io.RawIOBase):
    """Writes to a file descriptor (the server's log, shared by its stdout and stderr); a write that would take
    the file past ``cap`` bytes starts it again from empty, after a line saying so."""

    def __init__(self, fd: int, cap: int = LOG_CAP_BYTES) -> None:
        self.fd, self.cap = fd, cap
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        with self.lock:
            try:
                if os.lseek(self.fd, 0, os.SEEK_CUR) + len(data) > self.cap:
                    os.ftruncate(self.fd, 0)
                    os.lseek(self.fd, 0, os.SEEK_SET)
                    os.write(self.fd, f"[the log reached {self.cap} bytes: what came before was dropped]\n".encode())
                os.write(self.fd, data[-self.cap // 2:])
            except OSError:
                pass  # a log that cannot be written must not stop the server
        return len(data)


def _capped_output() -> None:
    """This process's stdout and stderr (Python's; the log file the CLI gave it) through one :class:`CappedLog`."""
    try:
        os.lseek(2, 0, os.SEEK_CUR)
    except OSError:
        return  # not a file (a terminal, a pipe): left as it is
    stream = io.TextIOWrapper(io.BufferedWriter(CappedLog(2)), encoding="utf-8", errors="backslashreplace",
                              line_buffering=True)
    sys.stdout = sys.stderr = stream


@contextmanager
def file_lock(path: Path, timeout: float) -> Iterator[bool]:
    """An exclusive lock on ``path`` between processes (``fcntl.flock``, ``msvcrt.locking`` on Windows), freed by
    the OS when its holder dies (no stale lock); yields False when it was not had within ``timeout`` s."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        had = _try_lock(f)
        deadline = time.monotonic() + timeout
        while not had and time.monotonic() < deadline:
            time.sleep(0.1)
            had = _try_lock(f)
        try:
            yield had
        finally:
            if had:
                _unlock(f)


def _try_lock(f: IO[bytes]) -> bool:
    try:
        if os.name == "nt":
            import msvcrt

            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _unlock(f: IO[bytes]) -> None:
    if os.name == "nt":
        import msvcrt

        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
    else:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _setup_key() -> dict[str, str | None]:
    """What says that the database is set up for this Prefect: its version, the database, the schema's revision
    (read straight from a SQLite database; None for another one, which then always takes its turn)."""
    import prefect
    from prefect.settings import get_current_settings

    secret = get_current_settings().server.database.connection_url
    url = secret.get_secret_value() if secret else ""
    revision = None
    match = re.match(r"sqlite\+aiosqlite:///(.+)$", url)
    if match and Path(match.group(1)).is_file():
        try:
            with contextlib.closing(sqlite3.connect(f"file:{match.group(1)}?mode=ro", uri=True, timeout=5)) as db:
                row = db.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        except sqlite3.Error:
            revision = None
    # the database by its URL's digest: a URL may hold a password, and this is written to a file
    return {"prefect": prefect.__version__, "database": hashlib.sha256(url.encode()).hexdigest(), "revision": revision}


def _set_up_before(home: Path) -> bool:
    """True when a server already set the database up for this Prefect version (it needs no turn on the lock)."""
    key = _setup_key()
    try:
        return key["revision"] is not None and json.loads((home / SETUP_DONE).read_text()) == key
    except (OSError, ValueError):
        return False


async def _start_in_turn(stack: contextlib.AsyncExitStack, start: Any, app: Any, home: Path) -> Any:
    """Prefect's start of the server, holding the set-up lock of ``home`` until it is done."""
    import anyio

    with contextlib.ExitStack() as turn:
        had = await anyio.to_thread.run_sync(turn.enter_context, file_lock(home / SETUP_LOCK, SETUP_LOCK_TIMEOUT_S))
        if not had:
            raise RuntimeError(f"another Prefect server held {home / SETUP_LOCK} for {SETUP_LOCK_TIMEOUT_S:.0f} s "
                               "while setting up the database")
        if not _set_up_before(home):  # still to do: this server does it, holding the lock
            state = await stack.enter_async_context(start(app))
            (home / SETUP_DONE).write_text(json.dumps(_setup_key()))
            return state
    # another server set the database up while this one waited: start side by side, as later starts do
    return await stack.enter_async_context(start(app))


def create_app() -> Any:
    """Prefect's server app, its start (database set-up and migrations, block types, services) taken in turns
    with the other temporary servers of this PREFECT_HOME until the database is set up."""
    from prefect.server.api.server import create_app as prefect_app
    from prefect.settings import get_current_settings

    app = prefect_app()
    start = app.router.lifespan_context
    home = Path(get_current_settings().home)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with contextlib.AsyncExitStack() as stack:
            if _set_up_before(home):
                state = await stack.enter_async_context(start(app))
            else:
                state = await _start_in_turn(stack, start, app, home)
            yield state

    app.router.lifespan_context = lifespan
    return app


def _exit_when_parent_goes() -> None:
    """Block until standard input closes (the CLI ended or died), then end this process at once."""
    try:
        while sys.stdin.buffer.read(1024):
            pass
    finally:
        os._exit(0)


def main(argv: list[str]) -> None:
    _capped_output()
    import uvicorn

    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    uvicorn.run("flows.run.local_server:create_app", factory=True, host="127.0.0.1", port=int(argv[0]),
                log_level="error", lifespan="on")


if __name__ == "__main__":
    main(sys.argv[1:])
