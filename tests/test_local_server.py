"""The CLI's temporary Prefect server (flows/run/local_server.py): its log file (never an unread pipe), what a failed
start says, the set-up lock, and many CLIs starting at once on a fresh PREFECT_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from flows.emulator import emulator_env
from flows.run import local_server

ROOT = Path(__file__).resolve().parent.parent

#: a stand-in server: writes ``NOISE`` bytes to stderr first (a pipe nobody read filled at about 64 KiB and blocked
#: it there), then answers /api/health until its stdin closes; ``FAIL`` set: says why on stderr and exits 3
FAKE_SERVER = textwrap.dedent("""
    import http.server, os, sys, threading
    port = int(sys.argv[-1])
    if os.environ.get("FAKE_FAIL"):
        sys.stderr.write("Traceback (most recent call last):\\n  File 'x', line 1\\n")
        sys.stderr.write("sqlite3.OperationalError: index ix_flow_run__state_type already exists\\n")
        sys.exit(3)
    line = b"database is locked " * 50 + b"\\n"
    for _ in range(int(os.environ["FAKE_NOISE"]) // len(line) + 1):
        os.write(2, line)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"true")
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()
""")


@pytest.fixture
def prefect_home(tmp_path: Path) -> Iterator[Path]:
    from prefect.settings import PREFECT_HOME, temporary_settings

    home = tmp_path / "home"
    with temporary_settings({PREFECT_HOME: home}):
        yield home


def fake_server(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    return [sys.executable, str(script)]


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_a_server_that_writes_megabytes_to_stderr_does_not_block(prefect_home, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_NOISE", str(2 * 1024 * 1024))
    with local_server.temporary_server(fake_server(tmp_path)) as url:
        assert url.startswith("http://127.0.0.1:")
    [log] = (prefect_home / local_server.LOG_FOLDER).glob("*.log")
    assert log.stat().st_size > 2 * 1024 * 1024  # all of it went to the file


@pytest.mark.e2e  # starts a process (tests/fixtures/tiers.py)
def test_a_failed_start_quotes_the_real_error_and_names_the_log(prefect_home, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(local_server.ServerUnavailable) as failed:
        with local_server.temporary_server(fake_server(tmp_path)):
            pytest.fail("the server started")
    message = str(failed.value)
    [log] = (prefect_home / local_server.LOG_FOLDER).glob("*.log")
    assert "exited at start (exit code 3)" in message
    assert "index ix_flow_run__state_type already exists" in message
    assert str(log) in message


def test_the_log_tail_hides_database_passwords(tmp_path) -> None:
    log = tmp_path / "server.log"
    log.write_text("\n".join(f"line {i}" for i in range(100))
                   + "\nconnect to postgresql+asyncpg://prefect:hunter2-pw@db:5432/prefect failed\n")
    tail = local_server.log_tail(log, lines=3)
    assert tail.splitlines() == ["line 98", "line 99",
                                 "connect to postgresql+asyncpg://prefect:***@db:5432/prefect failed"]


def test_the_log_is_capped_and_keeps_the_newest_output(tmp_path) -> None:
    path = tmp_path / "server.log"
    with path.open("wb") as f:
        log = local_server.CappedLog(f.fileno(), cap=1000)
        for i in range(100):
            log.write(f"line {i:03d} ".encode() * 5 + b"\n")
    text = path.read_text()
    assert len(text) <= 1000 + 100
    assert text.startswith("[the log reached 1000 bytes") and "line 099" in text and "line 000" not in text


def test_old_logs_are_removed_beyond_the_newest(tmp_path) -> None:
    folder = tmp_path / local_server.LOG_FOLDER
    folder.mkdir()
    for i in range(local_server.KEPT_LOGS + 5):
        (folder / f"20260101T0000{i:02d}.000000Z-1.log").write_text("x")
    new = local_server.new_log(tmp_path)
    kept = sorted(p.name for p in folder.glob("*.log"))
    assert len(kept) == local_server.KEPT_LOGS - 1  # and the new one, once written
    assert kept[-1] == f"20260101T0000{local_server.KEPT_LOGS + 4:02d}.000000Z-1.log" and not new.exists()


def test_the_set_up_lock_is_one_holder_at_a_time(tmp_path) -> None:
    lock = tmp_path / "home" / local_server.SETUP_LOCK
    with local_server.file_lock(lock, timeout=0) as first:
        with local_server.file_lock(lock, timeout=0.3) as second:
            assert first and not second
    with local_server.file_lock(lock, timeout=0) as again:
        assert again


@pytest.mark.e2e
@pytest.mark.xdist_group("heavy-processes")
def test_five_clis_at_once_on_a_fresh_prefect_home_all_pass(moto_endpoint, emulated_s3, tmp_path) -> None:
    """A newcomer's first parallel runs: each CLI starts its own temporary server on one new PREFECT_HOME (no
    database yet), so their servers create and migrate it at the same moment; before the set-up lock 3 of 5
    exited 3 ("index ... already exists")."""
    from tests.helpers import write_cli_case as write_case

    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    env.update(emulator_env(moto_endpoint), PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8")

    def run(i: int) -> subprocess.CompletedProcess[str]:
        folder = tmp_path / f"cli-{i}"
        folder.mkdir()
        spec = write_case(folder, f"fresh-home-{i}")
        return subprocess.run([sys.executable, "-m", "flows.pipeline_test", str(spec), "--no-evidence"], cwd=folder,
                              env=env, capture_output=True, text=True, timeout=300)

    for i in range(5):
        emulated_s3.create_bucket(Bucket=f"fresh-home-{i}")
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(run, range(5)))
    for proc in results:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Case 'CLI case' PASSED" in proc.stdout
    assert len(list((home / local_server.LOG_FOLDER).glob("*.log"))) == 5



def test_a_home_that_cannot_be_written_is_a_clear_refusal(prefect_home, monkeypatch) -> None:
    def read_only(home: Path) -> Path:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(local_server, "new_log", read_only)
    with pytest.raises(local_server.ServerUnavailable, match="cannot be written .*Permission denied"):
        with local_server.temporary_server():
            pytest.fail("the server started")


def test_a_database_set_up_before_needs_no_turn_on_the_lock(prefect_home) -> None:
    """Once a server noted the set-up (this Prefect, this database, its schema's revision), later starts go side
    by side; a database replaced or migrated since (another revision) takes its turn again."""
    import json
    import sqlite3

    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, temporary_settings

    db = prefect_home / "prefect.db"
    prefect_home.mkdir()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num TEXT)")
        conn.execute("INSERT INTO alembic_version VALUES ('rev-1')")
    conn.close()
    with temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{db}"}):
        assert not local_server._set_up_before(prefect_home)  # nothing noted yet
        key = local_server._setup_key()
        assert key["revision"] == "rev-1" and str(db) not in json.dumps(key)
        (prefect_home / local_server.SETUP_DONE).write_text(json.dumps(key))
        assert local_server._set_up_before(prefect_home)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE alembic_version SET version_num = 'rev-2'")
        conn.close()
        assert not local_server._set_up_before(prefect_home)
