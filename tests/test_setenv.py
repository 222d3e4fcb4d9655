"""The set-up scripts: setenv.sh is run for real (a temporary PREFECT_HOME); setenv.bat and setenv.ps1 are
checked for their commands, their quoting (no quoted URL reaches Prefect) and their Windows line endings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import toml

from flows.run.prefect_client import CLIENT_RETRIES, SQLITE_SERVER

ROOT = Path(__file__).resolve().parent.parent
BAT, PS1, SH = ROOT / "setenv.bat", ROOT / "setenv.ps1", ROOT / "setenv.sh"
DEFAULT_URL = "http://127.0.0.1:4200/api"
OVERRIDES = ("PIPELINE_TEST_PORT", "PIPELINE_TEST_API_URL", "PIPELINE_TEST_PROFILE")


# ------------------------------------------------------------------------------------ setenv.sh, for real
def sh_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PIPELINE_TEST_"))}
    env.update(PREFECT_HOME=str(home), PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
               PYTHONIOENCODING="utf-8", **extra)
    return env


def profiles(home: Path) -> dict:
    return toml.loads((home / "profiles.toml").read_text(encoding="utf-8"))


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
@pytest.mark.skipif(shutil.which("sh") is None or os.name == "nt", reason="needs a POSIX shell")
def test_setenv_sh_creates_selects_and_points_the_profile(tmp_path: Path) -> None:
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    existing.mkdir()
    # a profile that exists already, with the URL quoted the way the old cmd script left it, and not active
    (existing / "profiles.toml").write_text(
        'active = "default"\n\n[profiles.default]\n\n[profiles.pipeline-test]\n'
        "PREFECT_API_URL = \"'http://127.0.0.1:4200/api'\"\n", encoding="utf-8")
    shell = shutil.which("bash") or "sh"
    # sourced (bash reports the script's own folder even from elsewhere), and run with sh and a port; at once
    sourced = subprocess.Popen(
        [shell, "-c", f'. "{SH}" && printf "HOME_IS=%s\\n" "$PIPELINE_TEST_HOME"'], cwd=tmp_path,
        env=sh_env(fresh), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ran = subprocess.Popen(["sh", str(SH)], cwd=ROOT, env=sh_env(existing, PIPELINE_TEST_PORT="4300"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out1, err1 = sourced.communicate(timeout=120)
    out2, err2 = ran.communicate(timeout=120)
    assert sourced.returncode == 0, out1 + err1
    assert ran.returncode == 0, out2 + err2

    # fresh: the profile was made, selected and pointed at the local server; `prefect config view` shown
    assert "PREFECT_PROFILE='pipeline-test'" in out1
    assert f"PREFECT_API_URL='{DEFAULT_URL}' (from profile)" in out1
    assert f"HOME_IS={ROOT}" in out1 or f"HOME_IS={ROOT.resolve()}" in out1
    config = profiles(fresh)
    assert config["active"] == "pipeline-test"
    assert config["profiles"]["pipeline-test"]["PREFECT_API_URL"] == DEFAULT_URL
    assert config["profiles"]["pipeline-test"]["PREFECT_SERVER_API_PORT"] == "4200"
    assert config["profiles"]["pipeline-test"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert config["profiles"]["pipeline-test"]["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"].endswith(".filesystem")
    for name, value in {**CLIENT_RETRIES, **SQLITE_SERVER}.items():  # the same as the CLI's own defaults
        assert config["profiles"]["pipeline-test"][name] == value, name

    # existing: selected, and its quoted URL replaced by the bare one on the port asked for
    assert "PREFECT_API_URL='http://127.0.0.1:4300/api' (from profile)" in out2
    config = profiles(existing)
    assert config["active"] == "pipeline-test"
    assert config["profiles"]["pipeline-test"]["PREFECT_API_URL"] == "http://127.0.0.1:4300/api"
    assert config["profiles"]["pipeline-test"]["PREFECT_SERVER_API_PORT"] == "4300"
    assert "default" in config["profiles"]  # other profiles are left alone


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
@pytest.mark.skipif(shutil.which("sh") is None or os.name == "nt", reason="needs a POSIX shell")
def test_setenv_sh_without_prefect_says_so_and_fails(tmp_path: Path) -> None:
    env = sh_env(tmp_path)
    env["PATH"] = "/usr/bin:/bin"
    if shutil.which("prefect", path=env["PATH"]):
        pytest.skip("a prefect on the system PATH")
    proc = subprocess.run(["sh", str(SH)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "activate the virtual environment" in proc.stderr


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_setenv_sh_is_posix_with_lf_endings() -> None:
    data = SH.read_bytes()
    assert b"\r" not in data
    if shutil.which("sh"):
        subprocess.run(["sh", "-n", str(SH)], check=True)  # parses as POSIX sh (dash here)


# ------------------------------------------------------------------------------------- the Windows ones
def windows_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data.endswith(b"\r\n"), f"{path.name}: no CRLF at the end"
    assert data.count(b"\n") == data.count(b"\r\n"), f"{path.name}: a line ends with LF only (needs CRLF)"
    data.decode("ascii")  # plain ASCII: no code page surprises in cmd or Windows PowerShell
    return data.decode("ascii").split("\r\n")


def cmd_expand(text: str, variables: dict[str, str], script_dir: str) -> str:
    """cmd's %VAR%, %VAR:~0,-1% and %~dp0 (undefined variables expand to nothing in a script)."""
    text = text.replace("%~dp0", script_dir)

    def one(match: re.Match[str]) -> str:
        name, start, length = match.group(1), match.group(2), match.group(3)
        value = variables.get(name.upper(), "")
        if start is not None:
            end = int(length) if length is not None else None
            value = value[int(start):] if end is None else value[int(start):end] if end < 0 else value[int(start):int(start) + end]
        return value

    return re.sub(r"%([A-Za-z_][A-Za-z0-9_]*)(?::~(-?\d+)(?:,(-?\d+))?)?%", one, text)


def run_bat_sets(lines: list[str], env: dict[str, str], script_dir: str) -> tuple[dict[str, str], list[str]]:
    """Follow the script's `set` lines (plain and `if defined`) as cmd would, and return the variables and
    the expanded `prefect ... config set` commands."""
    variables = {k.upper(): v for k, v in env.items()}
    commands = []
    for raw in lines:
        line = raw.strip()
        cond = re.match(r'(?i)if (not )?defined (\w+) (.*)', line)
        if cond:
            if (cond.group(2).upper() in variables) == bool(cond.group(1)):
                continue
            line = cond.group(3).strip()
        line = re.sub(r"(?i)^endlocal & ", "", line)
        setting = re.match(r'(?i)set "(\w+)=(.*)"$', line)
        if setting:
            variables[setting.group(1).upper()] = cmd_expand(setting.group(2), variables, script_dir)
        elif re.match(r"(?i)prefect .*config set ", line):
            commands.append(cmd_expand(line.split(">")[0].strip(), variables, script_dir))
    return variables, commands


def test_setenv_bat_commands_quoting_and_crlf() -> None:
    lines = windows_lines(BAT)
    code = [l for l in lines if l.strip() and not l.lower().lstrip().startswith(("rem", "@echo"))]
    text = "\r\n".join(code)
    for needed in ("prefect profile create %PT_PROFILE%", "prefect profile use %PT_PROFILE%", "prefect config view",
                   "endlocal & set \"PIPELINE_TEST_HOME=%PT_HOME%\"",
                   # echoed in quotes: a folder name with & in it must not run the rest as a command
                   'echo PIPELINE_TEST_HOME="%PIPELINE_TEST_HOME%"'):
        assert needed in text, needed
    # every `set` is `set "NAME=value"` (quotes around the whole): never set NAME="value" or NAME='value'
    for line in code:
        for match in re.finditer(r"(?i)\bset\s+(\S)", line):
            if "config set" in line.lower():
                continue
            assert match.group(1) == '"', f"unquoted-assignment set: {line}"
        assert not re.search(r"""(?i)\bset\s+"?\w+=['"]""", line), f"quoted value: {line}"
        if re.search(r"(?i)config set", line):
            assert "'" not in line and '"' not in line, f"quotes reach prefect: {line}"

    script_dir = "C:\\Users\\Ana Lima\\pipeline-test\\"
    variables, commands = run_bat_sets(lines, {"PATH": "x"}, script_dir)
    assert variables["PIPELINE_TEST_HOME"] == "C:\\Users\\Ana Lima\\pipeline-test"
    retries = "".join(f" {name}={value}" for name, value in CLIENT_RETRIES.items())
    local = (" PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE="
             "prefect.server.concurrency.lease_storage.filesystem"  # the local server's: no telemetry, leases on disk
             + "".join(f" {name}={value}" for name, value in SQLITE_SERVER.items()) + retries)
    assert "prefect -p pipeline-test config set PREFECT_API_URL=http://127.0.0.1:4200/api PREFECT_SERVER_API_PORT=4200" + local in commands
    _, commands = run_bat_sets(lines, {"PIPELINE_TEST_PORT": "4300", "PIPELINE_TEST_PROFILE": "mine"}, script_dir)
    assert "prefect -p mine config set PREFECT_API_URL=http://127.0.0.1:4300/api PREFECT_SERVER_API_PORT=4300" + local in commands
    _, commands = run_bat_sets(lines, {"PIPELINE_TEST_API_URL": "http://10.0.0.5:4200/api"}, script_dir)
    assert "prefect -p pipeline-test config set PREFECT_API_URL=http://10.0.0.5:4200/api" + retries in commands


def test_setenv_ps1_commands_quoting_and_crlf() -> None:
    lines = windows_lines(PS1)
    code = [l for l in lines if l.strip() and not l.lstrip().startswith("#")]
    text = "\n".join(code)
    for needed in ("prefect profile create $PtProfile", "prefect profile use $PtProfile", "prefect config view",
                   "$env:PIPELINE_TEST_HOME = $PSScriptRoot", '"http://127.0.0.1:${PtPort}/api"'):
        assert needed in text, needed
    sets = [l for l in code if "config set" in l]
    assert sets and all('"PREFECT_API_URL=$PtApiUrl"' in l for l in sets)
    for line in code:
        # PowerShell drops the quotes around a whole argument; a quote after the = would reach Prefect, and
        # single quotes would not expand $PtApiUrl
        assert not re.search(r"""PREFECT_API_URL=['"]""", line) and "'PREFECT_API_URL=" not in line, line
    # $PROFILE is PowerShell's own variable: the script must not overwrite it
    assert not re.search(r"(?i)\$profile\s*=", text)


def test_the_three_scripts_know_the_same_overrides() -> None:
    for path in (BAT, PS1, SH):
        text = path.read_text(encoding="ascii")
        for name in (*OVERRIDES, "PIPELINE_TEST_HOME"):
            assert name in text, f"{path.name} does not handle {name}"
    assert "{{ $PIPELINE_TEST_HOME }}" in (ROOT / "prefect.yaml").read_text()


def test_the_scripts_set_the_clis_own_retry_and_sqlite_defaults() -> None:
    for path in (BAT, PS1, SH):
        text = path.read_text(encoding="ascii")
        for name, value in {**CLIENT_RETRIES, **SQLITE_SERVER}.items():
            assert f"{name}={value}" in text, f"{path.name} does not set {name}={value}"
