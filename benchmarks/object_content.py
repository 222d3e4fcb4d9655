"""What expect_objects' content checks cost on a large CSV, beside a plain pass over the same bytes.

    python benchmarks/object_content.py [--rows 100000 300000 1000000]

For each size, a CSV of that many rows (5 columns, ~45 B a row) is written to a temporary file, and read:

- *plain*: ``csv.reader`` over the file and SHA-256 of its bytes, nothing else (the least any check must do);
- *checks*: :func:`tasks.s3.content.check_object` on it, as ``expect_objects`` runs it, with row count,
  columns, three column conditions (``one_of``, ``min``, ``regex``) and ``same_as_upload`` (the SHA-256);
- *checks + unique*: the same and ``unique`` on the first column (a digest per distinct value is kept).

S3 is left out (a stand-in client's ``get_object`` answers the file itself), so the figures are the checks' own:
wall time (best of 3) as a ratio to the plain pass, and the peak of Python's allocations (tracemalloc, in a
separate run, as it slows every allocation) beside the file's size. Expected: the checks' peak flat in the
number of rows (the read buffers), the plain pass's too; with ``unique``, growing with the rows.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.s3.content import LocalFile, check_object
from tasks.s3.content_spec import ObjectContent

COLUMNS = ["order_id", "customer_id", "amount", "currency", "status"]


class LocalS3:
    """Answers get_object with the local file (S3's transport is not what is measured)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803 - boto3's names
        return {"Body": self.path.open("rb")}


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for i in range(rows):
            writer.writerow([i, f"C-{i % 997:03d}", f"{(i * 7) % 10000 / 100:.2f}", "EUR" if i % 3 else "USD",
                             "shipped"])


def plain(path: Path) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
    with path.open(newline="", encoding="utf-8") as fh:
        for _ in csv.reader(fh):
            pass


def checks(path: Path, rows: int, unique: bool) -> Callable[[], None]:
    conditions: dict[str, Any] = {"currency": {"one_of": ["EUR", "USD"]}, "amount": {"min": 0},
                                  "customer_id": {"regex": r"C-\d{3}"}}
    if unique:
        conditions["order_id"] = {"unique": True}
    content = ObjectContent.model_validate({
        "format": "csv", "row_count": rows, "columns": COLUMNS, "conditions": conditions, "conditions_max_mb": 1024,
        "same_as_upload": {"step": "land", "file": path.name}})
    upload = LocalFile.of(path, path.name)
    client = LocalS3(path)

    def run() -> None:
        report = check_object(client, "bench", path.name, path.stat().st_size, content, upload=upload)  # type: ignore[arg-type]
        if not report.passed:
            raise SystemExit(f"the checks failed: {[c.line() for c in report.checks if not c.passed]}")

    return run


def best_of(fn: Callable[[], None], times: int = 3) -> float:
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def peak(fn: Callable[[], None]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    args = parser.parse_args(argv)
    mb = 1024 * 1024
    lines = ["| rows | file | plain pass | checks | checks + unique | peak: plain | peak: checks | "
             "peak: checks + unique |", "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        for rows in args.rows:
            path = Path(folder) / f"orders-{rows}.csv"
            write_csv(path, rows)
            base = lambda: plain(path)  # noqa: E731
            with_checks, with_unique = checks(path, rows, False), checks(path, rows, True)
            t_plain, t_checks, t_unique = best_of(base), best_of(with_checks), best_of(with_unique)
            p_plain, p_checks, p_unique = peak(base), peak(with_checks), peak(with_unique)
            lines.append(f"| {rows:,} | {path.stat().st_size / mb:.1f} MB | {t_plain:.2f} s | {t_checks:.2f} s "
                         f"({t_checks / t_plain:.1f}x) | {t_unique:.2f} s ({t_unique / t_plain:.1f}x) | "
                         f"{p_plain / mb:.2f} MB | {p_checks / mb:.2f} MB | {p_unique / mb:.1f} MB |")
            print(lines[-1], flush=True)
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
