"""The boto3 type stubs (types-boto3 and its per-service packages) are test-only dependencies: the code imports
them under ``if TYPE_CHECKING:`` only, so an install without the test extra runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: imports every module of flows/ and tasks/ with the stub packages made unimportable, then lists any that loaded
_PROBE = """
import importlib, pkgutil, sys
STUBS = ("types_boto3", "mypy_boto3", "botocore_stubs", "boto3_stubs")

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(STUBS):
            raise ImportError(f"{name} is a test-only stub package")
        return None

sys.meta_path.insert(0, Refuse())
import flows, tasks
for package in (flows, tasks):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
print(sorted(m for m in sys.modules if m.startswith(STUBS)))
"""


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_code_runs_without_the_type_stubs() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
