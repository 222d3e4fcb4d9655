"""Many small cases against one running Prefect server: as one suite, against single CLI runs, and the server's work.

    python benchmarks/suite_fanout.py [--cases 20] [--modes single,suite] [--database sqlite[,postgresql]]
                                      [--singles 3] [--max-parallel N] [--db-timeout SECONDS] [--keep]

Starts moto's server on 127.0.0.1 with the demo's fake pipeline (flows.demo.FakePipeline; a landed file appears in
the curated zone D = 2 s later), writes N independent small cases (each lands a file under its own prefix and
waits for the pipeline's copy), starts a real `prefect server start` on a free port (PREFECT_HOME in a temporary
folder; on SQLite, or on PostgreSQL: a throwaway cluster, see benchmarks/pg_server.py), and measures:
- single: ``--singles`` CLI runs of one case, one after another (the slowest is the single-case reference);
- suite: the N cases as one suite, one CLI process (``python -m flows.pipeline_test FOLDER``, the suite's default
  ``max_parallel`` unless ``--max-parallel``);
- sequential: N CLI runs, one after another; concurrent: N CLI runs started together.
Every CLI run goes through benchmarks/api_calls.py, which counts its Prefect API requests by kind. For each mode:
the wall time, cases per minute, lost runs (no evidence pack, or no Completed flow run on the server), `database is
locked` and `QueuePool limit` in the server's log, the server's CPU-seconds per case (its processes' utime + stime
from /proc) and the CLI's (``getrusage(RUSAGE_CHILDREN)``), and the API requests per case by kind. With two
databases (``--database sqlite,postgresql``) it runs everything on each, one after the other, and prints them side
by side. Target: suite wall <= 1.5 x the slowest single CLI run (which includes one process's fixed start cost).
Prints the load average beside the figures (the machine may be shared: CPU-seconds and requests are the steadier
figures there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASE = """case: Fan-out {i:03d}
aws:
  region: us-east-1
variables:
  prefix: "incoming/orders/fanout-{i:03d}/{{{{ flow_run_id }}}}/"
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
    prefix: "curated/orders/fanout-{i:03d}/{{{{ flow_run_id }}}}/"
    count: 1
    wait:
      timeout: 120
"""


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else "load average n/a"


@contextlib.contextmanager
def prefect_server(home: Path, log: Path, db_url: str | None, db_timeout: str) -> Iterator[tuple[str, int]]:
    """`prefect server start` on a free port, its records under ``home``, its output in ``log``."""
    from flows.run.local_server import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_DATABASE_TIMEOUT=db_timeout,
               PREFECT_SERVER_LOG_RETRYABLE_ERRORS="true")  # Prefect hides `database is locked` (a 503) otherwise
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
        yield url, proc.pid
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


_ENTRY = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ", re.M)


def locked_entries(log: str) -> tuple[int, int]:
    """`database is locked` in a server's log: (requests it answered 503, which Prefect's client sent again; the
    others: the server's own services, e.g. its task-run recorder). An entry is a log line and its traceback; the
    ASGI server's copy of a request's error ("Exception in ASGI application") is not counted twice."""
    answered = elsewhere = 0
    starts = [m.start() for m in _ENTRY.finditer(log)] + [len(log)]
    for start, end in zip(starts, starts[1:]):
        entry = log[start:end]
        if "database is locked" not in entry or "Exception in ASGI application" in entry.split("\n", 1)[0]:
            continue
        if "Encountered retryable exception in request" in entry.split("\n", 1)[0]:
            answered += 1
        else:
            elsewhere += 1
    return answered, elsewhere


def cpu_seconds(pid: int) -> float:
    """CPU-seconds (user + system) of a process and its live descendants, and of the children they reaped
    (``/proc/<pid>/stat``: psutil is not needed). 0 where /proc is not (not Linux)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stats: dict[int, tuple[int, float]] = {}  # pid: (ppid, cpu)
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            rest = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        stats[int(entry.parent.name)] = (int(rest[1]), sum(int(v) for v in rest[11:15]) / tick)
    tree, total = {pid}, 0.0
    for _ in range(8):  # a few generations: prefect server start -> uvicorn -> its workers
        tree |= {p for p, (ppid, _) in stats.items() if ppid in tree}
    for p in tree:
        total += stats.get(p, (0, 0.0))[1]
    return total


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def per_case(counts: list[dict[str, Any]], cases: int) -> dict[str, float]:
    """API requests by kind per case, summed over the CLI runs of a mode (a suite's own requests included)."""
    total: dict[str, float] = {}
    for c in counts:
        for kind, n in c.get("kinds", {}).items():
            total[kind] = total.get(kind, 0) + n
        events = sum(c.get("events", {}).values())
        total["events (websocket)"] = total.get("events (websocket)", 0) + events
    return {k: v / max(cases, 1) for k, v in total.items()}


def run_modes(args: argparse.Namespace, database: str, endpoint: str, files: list[Path], cases: Path,
              tmp: Path) -> dict[str, Any]:
    """Every mode against one new server on ``database``; the figures of each."""
    from flows.emulator import emulator_env

    log = tmp / f"server-{database}.log"
    figures: dict[str, Any] = {"modes": {}, "singles": []}
    with contextlib.ExitStack() as stack:
        db_url = None
        if database == "postgresql":
            from pg_server import postgres  # benchmarks/pg_server.py, beside this script

            db_url = stack.enter_context(postgres())  # its own temporary folder, owned by its user
        api, server_pid = stack.enter_context(prefect_server(tmp / f"prefect-home-{database}", log, db_url,
                                                             args.db_timeout))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(emulator_env(endpoint), PREFECT_API_URL=api, PREFECT_HOME=str(tmp / "client-home"),
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(ROOT))
        counted = tmp / "counts" / database
        counted.mkdir(parents=True, exist_ok=True)
        serial = iter(range(1_000_000))

        def cli(*cli_args: str) -> tuple[subprocess.Popen[bytes], Path]:
            out = counted / f"{next(serial):04d}.json"
            with out.with_suffix(".err").open("wb") as err:  # a file, not a pipe: a full pipe would block the run
                return subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "api_calls.py"), str(out),
                                         *cli_args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err), out

        def server_log(text: str) -> int:
            return log.read_text(errors="replace").count(text)

        def locked() -> tuple[int, int]:
            return locked_entries(log.read_text(errors="replace"))

        for mode in args.modes:
            before_runs, before_locked, before_pool = completed_runs(api), locked(), server_log("QueuePool limit")
            before_server, before_client = cpu_seconds(server_pid), client_cpu()
            out = tmp / "evidence" / database / mode
            t0 = time.monotonic()
            runs: list[tuple[subprocess.Popen[bytes], Path]] = []
            errors: list[str] = []
            chosen = files[:args.singles] if mode == "single" else files
            if mode == "suite":
                extra = ["--max-parallel", str(args.max_parallel)] if args.max_parallel else []
                runs.append(cli(str(cases), *extra, "--evidence-dir", str(out)))
                runs[-1][0].wait(timeout=3600)
                expected_packs = len(files) + 1  # each case's, and the suite's own
            elif mode in ("single", "sequential"):
                for i, path in enumerate(chosen):
                    t = time.monotonic()
                    runs.append(cli(str(path), "--evidence-dir", str(out / f"{i:02d}")))
                    runs[-1][0].wait(timeout=600)
                    if mode == "single":
                        figures["singles"].append(time.monotonic() - t)
                expected_packs = len(chosen)
            else:
                runs = [cli(str(path), "--evidence-dir", str(out / f"{i:02d}")) for i, path in enumerate(files)]
                for proc, _ in runs:
                    proc.wait(timeout=3600)
                expected_packs = len(files)
            wall = time.monotonic() - t0
            for proc, path in runs:
                if proc.returncode:
                    errors.append(path.with_suffix(".err").read_text(errors="replace"))
            codes = [proc.returncode for proc, _ in runs]
            n = len(chosen)
            done = completed_runs(api) - before_runs
            found = packs(out)
            counts = [json.loads(path.read_text()) for _, path in runs if path.is_file()]
            figures["modes"][mode] = {
                "wall": wall, "cases": n, "per_minute": n / wall * 60, "failed": sum(1 for c in codes if c),
                "lost_packs": expected_packs - found, "lost_runs": n - done,
                "locked_503": locked()[0] - before_locked[0], "locked": locked()[1] - before_locked[1],
                "pool": server_log("QueuePool limit") - before_pool,
                "server_cpu": (cpu_seconds(server_pid) - before_server) / n,
                "client_cpu": (client_cpu() - before_client) / n, "requests": per_case(counts, n)}
            f = figures["modes"][mode]
            print(f"[{database}] {mode:>10}: {wall:6.1f} s wall for {n} case(s) ({f['per_minute']:.1f}/min), exit "
                  f"codes {sorted(set(codes))}, {found} pack(s) ({f['lost_packs']} missing), {done} Completed case "
                  f"flow run(s) ({f['lost_runs']} lost), 'database is locked' {f['locked']} (and "
                  f"{f['locked_503']} answered 503, sent again), {f['pool']} 'QueuePool limit'; per case: server "
                  f"{f['server_cpu']:.2f} CPU-s, CLI {f['client_cpu']:.2f} CPU-s; {load()}", flush=True)
            for text in errors[:3]:
                print("    " + text.strip().splitlines()[-1] if text.strip() else "    (no message)")
    return figures


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    """The figures of every database side by side, and the API requests per case by kind."""
    print(f"\n{args.cases} cases, D = {args.delay:g} s, database timeout {args.db_timeout} s; {load()}")
    columns = list(results)
    print("| | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))

    def row(label: str, cell: Any) -> None:
        print(f"| {label} | " + " | ".join(cell(results[db]) for db in columns) + " |")

    def mode(name: str, key: str, fmt: str) -> Any:
        return lambda r: fmt.format(r["modes"][name][key]) if name in r["modes"] else "–"

    row("slowest single CLI run", lambda r: f"{max(r['singles']):.1f} s" if r["singles"] else "–")
    for name in [m for m in args.modes if m != "single"]:
        row(f"{name}: wall", mode(name, "wall", "{:.1f} s"))
        row(f"{name}: × the slowest single run", lambda r, name=name: (
            f"{r['modes'][name]['wall'] / max(r['singles']):.2f} ×" if r["singles"] and name in r["modes"] else "–"))
        row(f"{name}: cases per minute", mode(name, "per_minute", "{:.1f}"))
        row(f"{name}: server CPU-s per case", mode(name, "server_cpu", "{:.2f}"))
        row(f"{name}: CLI CPU-s per case", mode(name, "client_cpu", "{:.2f}"))
        row(f"{name}: lost runs", mode(name, "lost_runs", "{}"))
        row(f"{name}: `database is locked` (and requests answered 503 for it, sent again), `QueuePool limit`",
            lambda r, name=name: (f"{r['modes'][name]['locked']} ({r['modes'][name]['locked_503']}), "
                                  f"{r['modes'][name]['pool']}" if name in r["modes"] else "–"))
    print("\nPrefect API requests per case, by kind (a suite's own requests shared out over its cases):")
    heads = [(db, m) for db in columns for m in results[db]["modes"]]
    kinds = sorted({k for db, m in heads for k in results[db]["modes"][m]["requests"]})
    print("| kind | " + " | ".join(f"{m} ({db})" for db, m in heads) + " |\n|---|" + "---|" * len(heads))
    for kind in kinds:
        print(f"| {kind} | " + " | ".join(f"{results[db]['modes'][m]['requests'].get(kind, 0):.2f}"
                                          for db, m in heads) + " |")


def main(argv: list[str] | None = None) -> int:
    from flows.run.prefect_client import SQLITE_SERVER

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--modes", default="single,suite", help="of single, suite, sequential, concurrent")
    parser.add_argument("--database", "--db", default="sqlite",
                        help="sqlite, postgresql, or both (sqlite,postgresql): each on a server of its own")
    parser.add_argument("--singles", type=int, default=3, help="how many single CLI runs (mode single)")
    parser.add_argument("--delay", type=float, default=2.0, help="D: seconds until the pipeline's output appears")
    parser.add_argument("--db-timeout", default=SQLITE_SERVER["PREFECT_SERVER_DATABASE_TIMEOUT"],
                        help="the server's PREFECT_SERVER_DATABASE_TIMEOUT (default: what setenv and the CLI set)")
    parser.add_argument("--max-parallel", type=int, default=None,
                        help="the suite's --max-parallel (default: the suite's own, what the server holds)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (the cases, every evidence pack, the server's log, counts)")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    databases = ["postgresql" if d.strip().startswith("postgres") else d.strip()
                 for d in args.database.split(",") if d.strip()]
    if set(databases) - {"sqlite", "postgresql"} or set(args.modes) - {"single", "suite", "sequential", "concurrent"}:
        parser.error("--database: sqlite and/or postgresql; --modes: single, suite, sequential, concurrent")

    from flows.demo import LANDING_BUCKET, ORDERS_HEADER, SOURCE_PARAMETER, FakePipeline
    from flows.emulator import moto_server, use_emulator

    tmp = Path(tempfile.mkdtemp(prefix="suite-fanout-"))
    cases = tmp / "cases"
    cases.mkdir()
    (cases / "orders.csv").write_text(f"{ORDERS_HEADER}\n1,c1,2026-01-01,10.00,EUR,NEW\n", encoding="utf-8")
    for i in range(1, args.cases + 1):
        (cases / f"fanout_{i:03d}.yaml").write_text(CASE.format(i=i), encoding="utf-8")
    files = sorted(cases.glob("*.yaml"))
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(moto_server())
        stack.enter_context(use_emulator(endpoint))
        pipeline = FakePipeline(endpoint, delay=args.delay)
        pipeline.create_resources()
        pipeline.ssm.put_parameter(Name=SOURCE_PARAMETER, Value=LANDING_BUCKET, Overwrite=True)  # pointed at test
        pipeline.start()
        stack.callback(pipeline.stop)
        for database in databases:
            results[database] = run_modes(args, database, endpoint, files, cases, tmp)
    report(args, results)
    if args.keep:
        print(f"  kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
