"""The Windows layer, proven on Linux: the branches that only Windows takes, exercised here.

- Stops: on Windows (Python <= 3.13) a blocking wait is not cut short by a signal; the handler runs only once the
  main thread is back in Python code. ``_thread.interrupt_main(signum)`` delivers a signal exactly so on every OS
  (it trips the handler without interrupting a blocking call), so a wait without a timeout fails these tests
  here too. SIGBREAK (Windows only) is stood in for by SIGUSR1.
- Output: Windows writes redirected output in cp1252, which has no ❌ or ≥: the CLI's output through a strict
  cp1252 ``io.TextIOWrapper``.
"""

from __future__ import annotations

import _thread
import io
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pydantic
import pytest
import yaml

from flows import engine
from flows.console import json_text, safe_output
from flows.pipeline_test import _stop_signals_as_interrupts, main, pipeline_test

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
    with pytest.raises(KeyboardInterrupt), _stop_signals_as_interrupts():
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
    with _stop_signals_as_interrupts():
        for signum in engine.STOP_SIGNALS:
            assert callable(signal.getsignal(signum)) and signal.getsignal(signum) is not before[signum]
        with pytest.raises(KeyboardInterrupt, match="SIGUSR1"):
            os.kill(os.getpid(), with_sigbreak)
            time.sleep(5)  # the handler raises as soon as the signal arrives
    assert {s: signal.getsignal(s) for s in engine.STOP_SIGNALS} == before


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
    assert "\\u274c FAIL row count (min): expected \\u2265 5, got 1" in out


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
