"""What every command line of pipeline-test shares: the exit codes, the Prefect API a run goes to (the
configured one, else a temporary server), stop signals as interrupts, and `guarded`, which turns what stops a
command into one clear line and its exit code."""

from __future__ import annotations

import contextlib
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from flows.console import json_text
from flows.evidence.pack import folder as pack_folder
from flows.evidence.pack.files import EVIDENCE_ROOT
from flows.run.engine import stop_signals_interrupt
from flows.run.local_server import ServerUnavailable, temporary_server
from flows.run.prefect_client import client_retries
from flows.run.recover import CouldNotRun
from flows.spec.load import SpecError


def on_temporary_server() -> bool:
    """True when no Prefect server is configured, so a CLI run uses a temporary one of its own (gone at the end:
    links to it would lead nowhere). Ask before the run."""
    from prefect.settings import PREFECT_API_URL

    return not PREFECT_API_URL.value()


def temporary_server_hint() -> str:
    """Where a run on the temporary server can be seen afterwards (its records stay in PREFECT_HOME)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    ui = f"http://{settings.server.api.host}:{settings.server.api.port}"  # where `prefect server start` listens
    return (f"Evidence in the UI: this run used a temporary Prefect server; its records are kept in {settings.home}. "
            f"Run `prefect server start` and open {ui} to see the run and its artifacts "
            "(see docs/server-and-deployments.md).")


def parse_vars(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SpecError("--var", [f"--var {pair!r}: expected name=value"])
        out[name.strip()] = value
    return out


#: exit codes of the CLI
EXIT_PASSED, EXIT_FAILED, EXIT_INVALID, EXIT_COULD_NOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


#: the run ended (and undid its changes) but its evidence pack could not be written or uploaded: it proves nothing
EXIT_NO_EVIDENCE = 4


@contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API to run against: ``PREFECT_API_URL`` when set (it must answer), else a temporary server of
    this process's own (see ``flows.run.local_server``). Raises CouldNotRun when there is none."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if url:
        try:
            response = httpx.get(f"{url.rstrip('/')}/health", timeout=10)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise CouldNotRun(f"the Prefect API at {url} did not answer ({type(exc).__name__}: {exc}); start it "
                              "with `prefect server start`, or unset PREFECT_API_URL to use a temporary one") from None
        yield url
        return
    try:
        server = temporary_server()
        url = server.__enter__()
    except ServerUnavailable as exc:
        raise CouldNotRun(str(exc)) from None
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                drain_prefect_workers()  # send the last logs and events while the server is still there
    finally:
        server.__exit__(None, None, None)


def drain_prefect_workers(timeout: float = 5) -> None:
    """Send this process's queued logs and events to the Prefect API now (at most ``timeout`` s each), while the
    server that should get them still runs: a server gone first leaves Prefect's workers retrying against it."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception:
            pass


@contextlib.contextmanager
def stop_signals_as_interrupts() -> Iterator[None]:
    """Every stop signal (``engine.STOP_SIGNALS``: SIGINT, SIGTERM, and SIGBREAK where it exists) ends the run like
    Ctrl+C in every phase (lock wait, ``--recover``, steps, undo, writing the pack): undo, evidence, exit 130. A
    process started in the background by a shell inherits SIGINT ignored: Ctrl+C must still work; and Ctrl+Break
    must not kill the process outright (Python's default for SIGBREAK on Windows). The handlers in place before
    are put back at the end (the CLI's ``main`` may be called in a longer process)."""
    with stop_signals_interrupt():  # a no-op in another thread than the main one
        yield


def check_evidence_dir(folder: Path | None, spec: str, default_parent: Path = EVIDENCE_ROOT,
                       writable: bool = True) -> None:
    """Found before the run, not after it: --evidence-dir (``folder``) must be a new or empty folder (SpecError:
    exit 2); with ``writable``, the pack's folder (``folder``, else under ``default_parent``) must be writable
    (not read-only, not full) and no other run may be writing to it (CouldNotRun: exit 3)."""
    if folder is not None and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "is not a folder" if not folder.is_dir() else "is not empty"
        raise SpecError(spec, [f"--evidence-dir {folder} {what}; give a new or empty folder"])
    if not writable:
        return
    try:
        if folder is not None:
            pack_folder.check_new(folder)
        pack_folder.probe_writable(folder if folder is not None else default_parent)
    except pack_folder.PackFolderError as exc:
        raise CouldNotRun(f"{exc}; nothing was changed (use --no-evidence to run without a pack)") from None


def invalid(exc: SpecError, what: str = "no AWS call was made") -> int:
    """Exit 2: the problems (file, step, field) and that nothing ran."""
    print(str(exc), file=sys.stderr)
    print(f"Nothing was run: {what}.", file=sys.stderr)
    return EXIT_INVALID


def api_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{exc.response.status_code} {exc.response.reason_phrase} on {exc.request.method} {exc.request.url.path}"
    return f"{type(exc).__name__}: {exc}"


def guarded(run: Callable[[], int]) -> int:
    """Run a command against the Prefect API with the exits users are promised: 3 when it cannot run, 130 when
    interrupted (Ctrl+C, SIGTERM), one clear line and no traceback either way."""
    try:
        with stop_signals_as_interrupts(), client_retries(), prefect_api():
            return run()
    except CouldNotRun as exc:
        print(f"Could not run: {exc}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    except (httpx.HTTPStatusError, httpx.TransportError) as exc:
        # the Prefect API refused or dropped a call its client had already retried (e.g. 503 on creating the
        # flow run): nothing ran, or the run could not be recorded; a run that never happened is not a failed case
        print(f"Could not run: the Prefect API did not accept the run ({api_error(exc)}); try again, or see "
              "docs/running.md (Exit codes)", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    except KeyboardInterrupt:
        print("Interrupted: the run was stopped; what it had changed was undone (see the log above) and its "
              "evidence pack is partial.", file=sys.stderr)
        return EXIT_INTERRUPTED


def print_result(result: Any, text: str, as_json: bool, temporary: bool) -> None:
    """A finished run's result on stdout: its JSON (``--json``), or ``text`` and, after a run on a temporary server,
    where its records can be seen; with ``--json``, a pack that could not be written is said on stderr too."""
    print(json_text(result) if as_json else text)
    if temporary and not as_json:
        print(temporary_server_hint())
    if result.evidence_error and as_json:
        print(f"NO EVIDENCE: {result.evidence_error}", file=sys.stderr)
