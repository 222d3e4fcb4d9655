"""Memory and time of athena_query's result path on large results, and of reconciling them.

    python benchmarks/athena_result_memory.py [--sizes 100000 300000 1000000] [--differences 100]

For each size, an Athena CSV result file of 3 columns (bigint, decimal(12,2), varchar; every value quoted, as
Athena writes them) is generated in a temporary folder, and each measurement runs in its own child process
(so each peak RSS is its own):

- *plain*: a plain ``csv.reader`` + SHA-256 pass over the file (the baseline);
- *step*: the step's result path (:func:`tasks.athena.client.read_results` into the step's
  :class:`~tasks.athena.step.ResultSink`: typed rows, ``min_rows``, two ``first_row`` conditions, preview and
  the result's SHA-256), the file served by a botocore ``StreamingBody`` as S3's ``GetObject`` would;
- *reconcile*: the same plus ``expect.reconcile`` against an expected CSV of the same size with
  ``--differences`` values changed; all of them must be found.

Prints, per size, wall and CPU time and peak RSS of each, and the ratios to the plain pass, with the load
average beside them. Targets at 1,000,000 rows: the step's path peak RSS <= 150 MB and wall <= 2x the plain pass.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rss import peak_rss_mb  # noqa: E402  (benchmarks/rss.py, beside this script)

COLUMNS = [("id", "bigint"), ("amount", "decimal(12,2)"), ("customer", "varchar")]


def amount(i: int) -> str:
    return f"{(i * 37) % 100000}.{i % 100:02d}"


def write_files(folder: Path, rows: int, differences: int) -> tuple[Path, Path]:
    """The result file (Athena's CSV) and the expected CSV (plain, ``differences`` amounts changed)."""
    result, expected = folder / f"result-{rows}.csv", folder / f"expected-{rows}.csv"
    step = max(1, rows // max(1, differences))
    with open(result, "w", encoding="utf-8", newline="") as out, open(expected, "w", encoding="utf-8") as exp:
        out.write('"id","amount","customer"\n')
        exp.write("id,amount,customer\n")
        for i in range(1, rows + 1):
            out.write(f'"{i}","{amount(i)}","customer {i}, Ltd"\n')
            changed = differences and i % step == 0 and i // step <= differences
            exp.write(f'{i},{"0.01" if changed else amount(i)},"customer {i}, Ltd"\n')
    return result, expected


def plain(path: Path) -> int:
    digest, count = hashlib.sha256(), 0
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle):
            digest.update(",".join(row).encode("utf-8"))
            count += 1
    return count - 1


class FakeAthena:
    """GetQueryResults' first page: the metadata and a NextToken, so the result file is read."""

    def get_paginator(self, name: str) -> Any:
        page = {"ResultSet": {"ResultSetMetadata": {"ColumnInfo": [{"Name": n, "Label": n, "Type": t}
                                                                   for n, t in COLUMNS]},
                              "Rows": [{"Data": [{"VarCharValue": n} for n, _ in COLUMNS]}]},
                "NextToken": "more"}

        class Paginator:
            def paginate(self, **_: Any) -> Iterator[dict[str, Any]]:
                yield page

        return Paginator()


class FileS3:
    """GetObject of the local result file as a botocore StreamingBody (what boto3 returns)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803  (boto3's names)
        from botocore.response import StreamingBody
        return {"Body": StreamingBody(open(self.path, "rb"), self.path.stat().st_size)}


def step_path(path: Path, expected: Path | None) -> dict[str, Any]:
    from tasks.athena import AthenaQueryStep
    from tasks.athena.client import read_results
    from tasks.athena.step import ResultSink
    from tasks.kit.aws import ClientFactory
    from tasks.kit.step import StepContext

    expect: dict[str, Any] = {"min_rows": 1, "first_row": {"id": {"equals": 1}, "amount": {"gt": 0}}}
    if expected is not None:
        expect["reconcile"] = {"file": expected.name, "key": ["id"], "show": 20}
    step = AthenaQueryStep.model_validate({"kind": "athena_query", "sql": "SELECT 1", "expect": expect})
    scratch = Path(tempfile.mkdtemp(prefix="bench-scratch-"))
    ctx = StepContext(clients=ClientFactory(), case_name="bench", run_id="r", label="q", spec_dir=path.parent,
                      scratch_dir=scratch)
    execution = {"QueryExecutionId": "q", "StatementType": "DML",
                 "ResultConfiguration": {"OutputLocation": f"s3://bench/{path.name}"}}
    # FakeAthena and FileS3 fake only the calls read_results makes
    athena: Any = FakeAthena()
    s3: Any = FileS3(path)
    sink, info = read_results(athena, s3, execution, lambda cols: ResultSink(step, ctx, cols),
                              logger=logging.getLogger("bench"))
    checks = sink.checks.results()
    out: dict[str, Any] = {"rows": info.rows, "checks_passed": all(c.passed for c in checks),
                           "sha256": sink.digest.hexdigest()}
    if sink.reconciler is not None:
        report = sink.reconciler.finish()
        out["differences"] = report.counts
    return out


def child(args: argparse.Namespace) -> None:
    if args.child != "plain":  # the project's imports (boto3, pydantic) are not timed; their memory counts
        import tasks.athena  # noqa: F401
    wall, cpu = time.perf_counter(), time.process_time()
    path = Path(args.file)
    if args.child == "plain":
        out: dict[str, Any] = {"rows": plain(path)}
    else:
        out = step_path(path, Path(args.expected) if args.child == "reconcile" else None)
    out.update(wall=time.perf_counter() - wall, cpu=time.process_time() - cpu,
               peak_mb=peak_rss_mb())
    print(json.dumps(out))


def measure(kind: str, result: Path, expected: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, "--file", str(result), "--expected", str(expected)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--differences", type=int, default=100)
    parser.add_argument("--child", choices=["plain", "step", "reconcile"], help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--expected", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    header = (f"{'rows':>9} | {'plain s':>7} {'MB':>5} | {'step s':>6} {'x plain':>7} {'cpu x':>5} {'MB':>5} | "
              f"{'reconcile s':>11} {'x plain':>7} {'MB':>5} {'found':>9} | load")
    print(header)
    with tempfile.TemporaryDirectory(prefix="bench-athena-") as folder:
        for rows in args.sizes:
            result, expected = write_files(Path(folder), rows, args.differences)
            base = measure("plain", result, expected)
            step = measure("step", result, expected)
            rec = measure("reconcile", result, expected)
            found = rec["differences"]["differences"]
            assert step["rows"] == base["rows"] == rows and step["checks_passed"]
            assert rec["differences"] == {"missing": 0, "unexpected": 0, "differences": args.differences}, rec
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            print(f"{rows:>9,} | {base['wall']:>7.2f} {base['peak_mb']:>5.0f} | {step['wall']:>6.2f} "
                  f"{step['wall'] / base['wall']:>7.2f} {step['cpu'] / base['cpu']:>5.2f} {step['peak_mb']:>5.0f} | "
                  f"{rec['wall']:>11.2f} {rec['wall'] / base['wall']:>7.2f} {rec['peak_mb']:>5.0f} "
                  f"{found:>5}/{args.differences:<3} | {load}", flush=True)
            result.unlink()
            expected.unlink()


if __name__ == "__main__":
    main()
