"""quickstart.py's install: the demo gets the base dependencies, test and lint the test extra, each once."""

from __future__ import annotations

import sys
from pathlib import Path

import quickstart


def test_the_demo_installs_no_test_extra_and_the_stamp_tells_them_apart(tmp_path: Path, monkeypatch) -> None:
    installs: list[list[str]] = []
    monkeypatch.setattr(quickstart, "VENV", tmp_path)
    monkeypatch.setattr(quickstart, "venv_python", lambda: Path(sys.executable))  # .venv "exists"
    monkeypatch.setattr(quickstart, "install", lambda python, extras: installs.append(extras))

    def run(*commands: str) -> list[list[str]]:
        installs.clear()
        for command in commands:
            quickstart.ensure_env(None if command == "demo" else "test")
        return list(installs)

    assert run("demo", "test", "demo", "lint") == [[], ["test"]]  # the extra once, when first needed
    (tmp_path / ".pipeline-test-installed").unlink()
    assert run("test", "demo") == [["test"]]  # the demo then installs nothing
    (tmp_path / ".pipeline-test-installed").write_text("an-older-digest test")
    assert run("demo") == [[]]  # pyproject.toml or constraints.txt changed: reinstalled
