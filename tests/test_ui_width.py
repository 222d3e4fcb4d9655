"""The evidence fits the Prefect UI at 1400 px: every table of every artifact, in a real browser.

The UI never wraps a table cell, so a table wider than its box hides its last columns, and those are often the
verdict. ``scripts/ui_snapshots.py --check`` runs the demo's scenarios against a real ``prefect server start``
(a passing case, a failing Athena check, a failing content check, recover, a failing suite), opens every artifact
they published in headless Chromium at 1400 px and measures each table against its box.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("heavy-processes")]


def test_every_artifact_table_fits_1400_px(chromium: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "scripts/ui_snapshots.py", "--check", "--no-shots", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    logs = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(tmp_path.glob("*.log")))
    assert done.returncode != 2, f"a scenario did not end as expected:\n{done.stdout}\n{done.stderr}\n{logs}"
    assert "artifact(s) measured at 1400 px" in done.stdout, done.stdout + done.stderr
    measured = int(done.stdout.split(" artifact(s) measured")[0].split()[-1])
    assert measured >= 40, done.stdout  # every step of every scenario: a run that published little proves little
    assert done.returncode == 0, f"tables wider than their box at 1400 px:\n{done.stdout}"
