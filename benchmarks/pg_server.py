"""A throwaway PostgreSQL cluster for benchmarks/suite_fanout.py --db postgres (installs nothing itself).

    python benchmarks/pg_server.py        start one, print its Prefect connection URL, stop it on Enter

Needs Debian's (or Ubuntu's) PostgreSQL server binaries (``apt-get install -y postgresql``: initdb and pg_ctl under
/usr/lib/postgresql/<version>/bin) and asyncpg (a dependency of prefect; ``pip install -e .[team]`` pins it). The
cluster lives in a temporary folder, listens on 127.0.0.1 on a free port, trusts local connections (a benchmark's
throwaway: never a team's server) and is removed at the end. As root, it runs as the ``postgres`` user that
Debian's package creates (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise SystemExit("PostgreSQL's server is not installed: apt-get install -y postgresql")
    return Path(found[-1]).parent


def _as_owner(cmd: list[str]) -> list[str]:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextlib.contextmanager
def postgres(folder: Path | None = None) -> Iterator[str]:
    """Start a throwaway cluster; yields Prefect's connection URL (``postgresql+asyncpg://...``)."""
    binaries = pg_bin()
    made = folder is None
    folder = Path(tempfile.mkdtemp(prefix="pg-bench-")) if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    from flows.run.local_server import free_port

    data, port = folder / "data", free_port()
    run = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    subprocess.run(_as_owner([str(binaries / "initdb"), "-D", str(data), "-U", "prefect", "--auth=trust",
                              "-E", "UTF8"]), **run)  # type: ignore[call-overload]
    subprocess.run(_as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"), "-w",
                              "-o", f"-p {port} -h 127.0.0.1 -k {folder} -c max_connections=200", "start"]),
                   **run)  # type: ignore[call-overload]
    try:
        subprocess.run(_as_owner([str(binaries.parent / "bin" / "createdb") if (binaries / "createdb").exists()
                                  else "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect"]),
                       **run)  # type: ignore[call-overload]
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run(_as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if made:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    with postgres() as url:
        print(f"PREFECT_API_DATABASE_CONNECTION_URL={url}")
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            input("Enter stops it ...")
    sys.exit(0)
