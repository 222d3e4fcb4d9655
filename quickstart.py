"""Set up and run, on a fresh machine with only Python (3.10 to 3.13), on Windows, Linux or macOS.

    python quickstart.py demo     create .venv, install the pinned dependencies (not the test tools), run the demo
    python quickstart.py test     the same with the test tools (the `test` extra: pytest, ruff, mypy and the type
                                  stubs), then run the test suite on two processes (pytest-xdist;
                                  extra args go to pytest: -n 0 runs it in one process, e.g. for --pdb)
    python quickstart.py lint     the same, then check the code with ruff (pyflakes, pycodestyle, import order)
                                  and the types with mypy (configured in pyproject.toml)

The virtual environment is made once, in .venv beside this file, and reinstalled only when pyproject.toml or
constraints.txt change (the test extra is added once, by the first `test` or `lint`). The install uses uv (pinned
below; installed into .venv first, wheels for Windows, macOS and Linux), about ten times faster than pip; when uv
cannot be had, pip does it. Either way the installed modules are compiled to bytecode once, at install (pip does by
default; uv is told to): a Python process that imports Prefect then starts in about 2.5 s instead of 6 s here,
wherever bytecode is not written at import (PYTHONDONTWRITEBYTECODE, read-only folders). Afterwards you can also use
the environment directly (see the README).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
#: the installer (https://pypi.org/project/uv/): a pinned wheel, installed into .venv with pip
UV = "uv==0.9.30"
#: how the environment is installed; part of the install stamp, so a change here reinstalls an existing .venv
RECIPE = b"uv --compile-bytecode; project compiled"
#: the project's own packages, compiled to bytecode (incrementally) before each command
PACKAGES = ("flows", "tasks", "deployments")


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_env(extra: str | None = "test") -> Path:
    """Create .venv and install the project with its pinned dependencies (skipped when up to date). ``extra``: the
    optional dependencies too (``test``: pytest, ruff, mypy and the type stubs; None for the demo, which needs
    none of them). The stamp says which: the demo after the tests installs nothing, the tests after the demo
    only the extra. The Python was checked before (``check_python``)."""
    python = venv_python()
    if not python.exists():
        print(f"Creating a virtual environment in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256(
        b"".join((ROOT / name).read_bytes() for name in ("pyproject.toml", "constraints.txt")) + RECIPE
    ).hexdigest()
    stamp = VENV / ".pipeline-test-installed"
    # "<digest>" (the base) or "<digest> test" (with the test extra), of what is installed now
    installed = stamp.read_text().split() if stamp.exists() else []
    same = installed[:1] == [digest]
    extras = sorted({*(installed[1:] if same else ()), *((extra,) if extra else ())})
    if not same or extras != sorted(installed[1:]):
        install(python, extras)
        stamp.write_text(" ".join([digest, *extras]))
    return python


def install(python: Path, extras: list[str]) -> None:
    """The project and its pinned dependencies (and ``extras``) into .venv: with uv, else (uv not installable
    here) with pip."""
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    project = f"{ROOT}[{','.join(extras)}]" if extras else str(ROOT)
    wanted = ["-c", str(ROOT / "constraints.txt"), "-e", project]
    what = "the pinned dependencies" + (f" and the {', '.join(extras)} extra" if extras else "")
    print(f"Installing {what} with uv and compiling them (first time: one to two minutes) ...", flush=True)
    if subprocess.run([*pip, UV]).returncode == 0 and subprocess.run(
            [str(python), "-m", "uv", "pip", "install", "--quiet", "--compile-bytecode", "--python", str(python),
             *wanted]).returncode == 0:
        return
    print("uv did not work here; installing with pip instead (two or three minutes) ...", flush=True)
    subprocess.run([*pip, *wanted], check=True)


# ------------------------------------------------------------------------------------- the Python, the path
#: the Pythons the pinned dependencies install on (oldest, newest)
SUPPORTED = ((3, 10), (3, 13))
#: set in a run of this script that quickstart started with another Python (so it never starts a third)
RELAUNCHED = "PIPELINE_TEST_QUICKSTART_RELAUNCHED"
#: the longest project path the install works with on Windows without long paths: the deepest file the
#: dependencies install (with its compiled bytecode) lies about 190 characters below the project folder
LONG_PROJECT_PATH = 70


def on_windows() -> bool:
    return os.name == "nt"


def supported(version: tuple[int, int]) -> bool:
    return SUPPORTED[0] <= version <= SUPPORTED[1]


def check_python(argv: list[str]) -> None:
    """Go on only under a supported Python. Else, on Windows, run this script again with the newest supported
    Python that the ``py`` launcher knows (``py -0p``), when there is one; otherwise exit naming what to run."""
    if supported(sys.version_info[:2]):
        return
    here = sys.version.split()[0]
    if on_windows() and not os.environ.get(RELAUNCHED):
        other = launcher_python()
        if other is not None:
            print(f"Python {here} is not supported here (3.10 to 3.13 are): running quickstart.py with {other}",
                  flush=True)
            command = [other, str(Path(__file__).resolve()), *argv]
            sys.exit(subprocess.run(command, env={**os.environ, RELAUNCHED: "1"}).returncode)
    run = "py -3.13 quickstart.py" if on_windows() else "python3.13 quickstart.py"
    sys.exit(f"Python 3.10 to 3.13 is needed; this is {here}. Install Python 3.13 (python.org) and run "
             f"`{run} {' '.join(argv) or 'demo'}`" + (" (the py launcher picks it)." if on_windows() else "."))


def launcher_python() -> str | None:
    """The newest supported Python that the Windows ``py`` launcher lists (``py -0p``), or None."""
    try:
        listing = subprocess.run(["py", "-0p"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return pick_python(listing or "")


def pick_python(listing: str) -> str | None:
    """From ``py -0p``'s lines (`` -V:3.13 *   C:\\...\\python.exe``, older launchers `` -3.13-64  C:\\...``): the
    path of the newest supported version (not a free-threaded ``3.13t`` build, whose wheels may be missing)."""
    found = []
    for line in listing.splitlines():
        match = re.match(r"\s*-(?:V:)?(\d+)\.(\d+)(t?)(?:-\d+)?\s+(?:\*\s+)?(\S.*?)\s*$", line)
        if match and not match.group(3) and supported((int(match.group(1)), int(match.group(2)))):
            found.append(((int(match.group(1)), int(match.group(2))), match.group(4)))
    return max(found)[1] if found else None


def long_path_warning(root: Path = ROOT) -> str | None:
    """On Windows without long paths enabled, a warning when the project's path is so long that the install
    would pass Windows' 260-character limit (MAX_PATH); None otherwise."""
    if not on_windows() or len(str(root)) <= LONG_PROJECT_PATH or long_paths_enabled():
        return None
    return (f"Warning: the project folder's path is {len(str(root))} characters long ({root}). Windows limits a "
            "path to 260 characters unless long paths are enabled, and the install writes files about 190 "
            f"characters below this folder: it may fail. Move the project to a shorter path (at most "
            f"{LONG_PROJECT_PATH} characters, e.g. C:\\pt), or enable long paths (LongPathsEnabled; see "
            "docs/running.md, Windows).")


def long_paths_enabled() -> bool:
    """True when Windows allows paths over 260 characters (the LongPathsEnabled registry value is 1)."""
    if sys.platform != "win32":
        return False
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            return bool(winreg.QueryValueEx(key, "LongPathsEnabled")[0])
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "lint"):
        print(__doc__)
        return 2
    check_python(argv)
    warning = long_path_warning()
    if warning:
        print(warning, file=sys.stderr, flush=True)
    python = ensure_env(None if argv[0] == "demo" else "test")
    # the project's own modules too (only what changed since the last time; __pycache__ is ignored by git)
    subprocess.run([str(python), "-m", "compileall", "-q", *PACKAGES], cwd=ROOT, stdout=subprocess.DEVNULL)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUTF8": "1"}
    if argv[0] == "lint":
        # both run, so one report shows every problem; the exit code is 0 only when both pass
        ruff = subprocess.run([str(python), "-m", "ruff", "check", "."], cwd=ROOT, env=env).returncode
        mypy = subprocess.run([str(python), "-m", "mypy"], cwd=ROOT, env=env).returncode
        return ruff or mypy
    command = {"demo": [str(python), "-m", "flows.demo"], "test": [str(python), "-m", "pytest", *argv[1:]]}[argv[0]]
    return subprocess.run(command, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
