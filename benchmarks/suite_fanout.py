"""Many small cases against one running Prefect server: as one suite, one after another, all at once.

    python benchmarks/suite_fanout.py [--cases 20] [--modes suite,sequential,concurrent] [--db sqlite|postgres]
                                      [--max-parallel N] [--db-timeout SECONDS] [--keep]

Starts moto's server on 127.0.0.1 with the demo's fake pipeline (flows.demo.FakePipeline; a landed file appears in
the curated zone D = 2 s later), writes N independent small cases (each lands a file under its own prefix and
waits for the pipeline's copy), starts a real `prefect server start` on a free port (PREFECT_HOME in a temporary
folder; SQLite, or PostgreSQL with ``--db postgres``: see benchmarks/pg_server.py), and measures:
- suite: the N cases as one suite, one CLI process (``python -m flows.pipeline_test FOLDER --max-parallel N``);
- sequential: N CLI runs, one after another (the slowest of them is the single-case reference);
- concurrent: N CLI runs started together.
For each: the wall time, exit codes, lost runs (no evidence pack, or no Completed flow run on the server), and the
count of `database is locked` in the server's log. Target: suite wall <= 1.5 x the slowest single CLI run (which
includes one process's fixed start cost). Prints the load average beside the figures (the machine may be shared).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASE = """case: Fan-out {i:02d}
aws:
  region: us-east-1
variables:
  prefix: "incoming/orders/fanout-{i:02d}/{{{{ flow_run_id }}}}/"
steps:
  - kind: upload
    name: land-file
    files: [orders.csv]
    bucket: demo-landing
    key_prefix: "{{{{ prefix }}}}"
    cleanup: true
  - kind: expect_objects
    name: curated-file-written
    bucket: demo-curated
    prefix: "curated/orders/fanout-{i:02d}/{{{{ flow_run_id }}}}/"
    count: 1
    wait:
      timeout: 120
"""


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else "load average n/a"


@contextlib.contextmanager
def prefect_server(home: Path, log: Path, db_url: str | None, db_timeout: str) -> Iterator[str]:
    """`prefect server start` on a free port, its records under ``home``, its output in ``log``."""
    from flows.run.local_server import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_DATABASE_TIMEOUT=db_timeout)
    if db_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = db_url
    prefect = Path(sys.executable).parent / "prefect"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"prefect server start exited: see {log}\n" + log.read_text()[-2000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        else:
            raise SystemExit("prefect server start did not answer within 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def completed_runs(api: str) -> int:
    body = {"flows": {"name": {"any_": ["pipeline-test"]}}, "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
    return int(httpx.post(f"{api}/flow_runs/count", json=body, timeout=30).json())


def packs(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("manifest.json")) if folder.exists() else 0


def main(argv: list[str] | None = None) -> int:
    from flows.run.prefect_client import SQLITE_SERVER

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--modes", default="suite,sequential,concurrent")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--delay", type=float, default=2.0, help="D: seconds until the pipeline's output appears")
    parser.add_argument("--db-timeout", default=SQLITE_SERVER["PREFECT_SERVER_DATABASE_TIMEOUT"],
                        help="the server's PREFECT_SERVER_DATABASE_TIMEOUT (default: what setenv and the CLI set)")
    parser.add_argument("--max-parallel", type=int, default=None,
                        help="the suite's --max-parallel (default: every case at once)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (the cases, every evidence pack, the server's log)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    from flows.demo import LANDING_BUCKET, ORDERS_HEADER, SOURCE_PARAMETER, FakePipeline
    from flows.emulator import emulator_env, moto_server, use_emulator

    tmp = Path(tempfile.mkdtemp(prefix="suite-fanout-"))
    cases = tmp / "cases"
    cases.mkdir()
    (cases / "orders.csv").write_text(f"{ORDERS_HEADER}\n1,c1,2026-01-01,10.00,EUR,NEW\n", encoding="utf-8")
    for i in range(1, args.cases + 1):
        (cases / f"fanout_{i:02d}.yaml").write_text(CASE.format(i=i), encoding="utf-8")
    log = tmp / "server.log"
    figures: dict[str, dict[str, float]] = {}
    singles: list[float] = []
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(moto_server())
        stack.enter_context(use_emulator(endpoint))
        pipeline = FakePipeline(endpoint, delay=args.delay)
        pipeline.create_resources()
        pipeline.ssm.put_parameter(Name=SOURCE_PARAMETER, Value=LANDING_BUCKET, Overwrite=True)  # pointed at test
        pipeline.start()
        stack.callback(pipeline.stop)
        db_url = None
        if args.db == "postgres":
            from pg_server import postgres  # benchmarks/pg_server.py, beside this script

            db_url = stack.enter_context(postgres())  # its own temporary folder, owned by its user
        api = stack.enter_context(prefect_server(tmp / "prefect-home", log, db_url, args.db_timeout))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(emulator_env(endpoint), PREFECT_API_URL=api, PREFECT_HOME=str(tmp / "client-home"),
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(ROOT))
        files = sorted(cases.glob("*.yaml"))

        def cli(*cli_args: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-m", "flows.pipeline_test", *cli_args], cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        for mode in modes:
            before_runs, before_locked = completed_runs(api), log.read_text(errors="replace").count(
                "database is locked")
            out = tmp / "evidence" / mode
            t0 = time.monotonic()
            codes: list[int] = []
            errors: list[str] = []
            if mode == "suite":
                proc = cli(str(cases), "--max-parallel", str(args.max_parallel or args.cases),
                           "--evidence-dir", str(out))
                _, err = proc.communicate(timeout=1800)
                codes.append(proc.returncode)
                errors += [err.decode(errors="replace")] if proc.returncode else []
                expected_packs = len(files) + 1  # each case's, and the suite's own
            elif mode == "sequential":
                for i, path in enumerate(files):
                    t = time.monotonic()
                    proc = cli(str(path), "--evidence-dir", str(out / f"{i:02d}"))
                    _, err = proc.communicate(timeout=600)
                    singles.append(time.monotonic() - t)
                    codes.append(proc.returncode)
                    errors += [err.decode(errors="replace")] if proc.returncode else []
                expected_packs = len(files)
            else:
                procs = [cli(str(path), "--evidence-dir", str(out / f"{i:02d}")) for i, path in enumerate(files)]
                for proc in procs:
                    _, err = proc.communicate(timeout=1800)
                    codes.append(proc.returncode)
                    errors += [err.decode(errors="replace")] if proc.returncode else []
                expected_packs = len(files)
            wall = time.monotonic() - t0
            runs = completed_runs(api) - before_runs
            locked = log.read_text(errors="replace").count("database is locked") - before_locked
            found = packs(out)
            figures[mode] = {"wall": wall, "failed": sum(1 for c in codes if c), "lost_packs": expected_packs - found,
                             "lost_runs": len(files) - runs, "locked": locked}
            print(f"{mode:>10}: {wall:6.1f} s wall, exit codes {sorted(set(codes))}, {found} pack(s) "
                  f"({expected_packs - found} missing), {runs} Completed case flow run(s) ({len(files) - runs} lost), "
                  f"{locked} 'database is locked'; {load()}", flush=True)
            for text in errors[:3]:
                print("    " + text.strip().splitlines()[-1] if text.strip() else "    (no message)")
    print(f"{args.cases} cases, D = {args.delay:g} s, server on {args.db} (database timeout {args.db_timeout} s); "
          f"{load()}")
    if singles:
        slowest = max(singles)
        print(f"  single CLI run: slowest {slowest:.1f} s, fastest {min(singles):.1f} s (fixed start cost included)")
        for mode, f in figures.items():
            print(f"  {mode:>10}: {f['wall']:6.1f} s = {f['wall'] / slowest:4.1f} x the slowest single run"
                  + ("  (target <= 1.5 x)" if mode == "suite" else ""))
    if args.keep:
        print(f"  kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
