"""Trends of a suite's cases over its last runs: per case (and matrix row) the pass rate, the p50/p95 duration with a
mark when this run took more than 1.5 × that p95, and a "flaky" mark when the verdict flipped more than once.

The history is read from the suite's earlier evidence packs (:mod:`flows.suite.pack`) in the folder that holds this
run's pack (by default ``evidence/suites/<suite>/``), so it survives a fresh laptop with the packs copied along, and
needs no Prefect server. Reading is bounded: at most ``window - 1`` earlier packs used and ``window`` opened (the
latest by folder name: the default names start with the UTC start time), each pack's manifest.json and
report.json read up to :data:`READ_MAX_BYTES`, report.json checked against its manifest's SHA-256; a pack that
cannot be read is skipped with a note, never a failure. Pure functions: no Prefect, no boto3.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel

from tasks.kit.step import format_duration

#: how many runs (this one included) a trend covers, unless the suite file's ``trend_runs`` says otherwise
TREND_RUNS = 20
#: the most bytes read of an earlier pack's manifest.json or report.json; a larger one is skipped with a note
READ_MAX_BYTES = 4 << 20
#: the most entries of the evidence folder looked at (the folder may hold other things)
LIST_MAX = 5000
#: this run counts as slow when it took more than this many times the p95 of the runs before it
SLOW_FACTOR = 1.5
#: the most notes about skipped packs kept (the rest are counted)
NOTES_MAX = 5
VERDICTS = ("passed", "failed", "not run")
NONE = "–"
SLOW_MARK, FLAKY_MARK = "🐢 slow", "🔀 flaky"
_MANIFEST, _REPORT = "manifest.json", "report.json"
_SUITE_REPORT_SCHEMA = "pipeline-test/suite-report"


@dataclass(frozen=True)
class CaseRun:
    """One run of a case: its verdict and duration."""

    verdict: str
    duration_s: float


@dataclass
class History:
    """The earlier runs of each case (by case name, oldest first), how many packs they came from, and why packs
    were skipped."""

    runs: dict[str, list[CaseRun]] = field(default_factory=dict)
    packs: int = 0
    notes: list[str] = field(default_factory=list)


class CaseTrend(BaseModel):
    """A case's trend over its last runs (this one last)."""

    runs: int
    passed: int
    pass_rate: float
    #: p50/p95 of the durations of the runs before this one (those that ran); None when there is none
    p50_s: float | None = None
    p95_s: float | None = None
    last_s: float
    slow: bool
    flips: int
    flaky: bool
    #: (verdict, duration) of each run, oldest first (for the chart)
    history: list[tuple[str, float]]


class SuiteTrends(BaseModel):
    """Every case's trend (None: fewer than 2 runs), the window, the earlier packs read and the ones skipped."""

    window: int
    packs: int = 0
    notes: list[str] = []
    cases: dict[str, CaseTrend | None] = {}


# ------------------------------------------------------------------------------------------------ reading
def _read_capped(path: Path) -> bytes:
    """A file's bytes; ValueError when it holds more than READ_MAX_BYTES."""
    with open(path, "rb") as handle:
        data = handle.read(READ_MAX_BYTES + 1)
    if len(data) > READ_MAX_BYTES:
        raise ValueError(f"{path.name} is larger than {READ_MAX_BYTES >> 20} MiB")
    return data


def _json(data: bytes, name: str) -> object:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{name} is not JSON ({exc})") from None


def _candidates(parent: Path, exclude: Path | None) -> list[Path]:
    """The folders of ``parent`` that hold a manifest.json, latest name first (at most LIST_MAX entries looked at)."""
    found = []
    skip = exclude.resolve() if exclude is not None else None
    try:
        with os.scandir(parent) as entries:
            for n, entry in enumerate(entries):
                if n >= LIST_MAX:
                    break
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False) and (path / _MANIFEST).is_file() and path.resolve() != skip:
                    found.append(path)
    except OSError:
        return []
    return sorted(found, key=lambda p: p.name, reverse=True)


def _pack_runs(pack: Path, suite: str) -> tuple[str, dict[str, CaseRun]] | None:
    """An earlier suite pack's start and its cases' runs; None when it is another suite's (or a case's) pack;
    ValueError (or OSError) saying why it cannot be used."""
    manifest = _json(_read_capped(pack / _MANIFEST), _MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("kind") != "suite" or manifest.get("suite") != suite:
        return None
    listed = next((f for f in manifest.get("files") or [] if isinstance(f, dict) and f.get("path") == _REPORT), None)
    if listed is None:
        raise ValueError(f"its manifest does not list {_REPORT}")
    data = _read_capped(pack / _REPORT)
    if hashlib.sha256(data).hexdigest() != listed.get("sha256"):
        raise ValueError(f"{_REPORT} does not match its manifest's SHA-256")
    report = _json(data, _REPORT)
    if not isinstance(report, dict) or report.get("schema") != _SUITE_REPORT_SCHEMA \
            or not isinstance(report.get("cases"), list):
        raise ValueError(f"{_REPORT} is not a suite report")
    runs = {}
    for case in report["cases"]:
        if not isinstance(case, dict) or case.get("status") not in VERDICTS or not isinstance(case.get("case"), str):
            continue
        duration = case.get("duration_s")
        runs[case["case"]] = CaseRun(case["status"], float(duration) if isinstance(duration, (int, float)) else 0.0)
    return str(report.get("started_at") or ""), runs


def read_history(parent: Path, suite: str, window: int = TREND_RUNS, exclude: Path | None = None) -> History:
    """The earlier runs of the suite ``suite`` from its packs in ``parent`` (never ``exclude``, this run's own):
    the latest first, at most ``window - 1`` used and ``window`` opened (another suite's pack is passed over, one
    that cannot be read is skipped with a note)."""
    history = History()
    read: list[tuple[str, str, dict[str, CaseRun]]] = []
    skipped = 0
    for tried, pack in enumerate(_candidates(Path(parent), exclude)):
        if len(read) >= window - 1 or tried >= window:  # at most `window` packs opened
            break
        try:
            found = _pack_runs(pack, suite)
        except (OSError, ValueError, TypeError) as exc:  # json's errors are ValueErrors
            skipped += 1
            if len(history.notes) < NOTES_MAX:
                history.notes.append(f"skipped {pack.name}: {str(exc)[:200]}")
            continue
        if found is not None:
            read.append((found[0], pack.name, found[1]))
    if skipped > len(history.notes):
        history.notes.append(f"and {skipped - len(history.notes)} more pack(s) skipped")
    for _, _, runs in sorted(read, key=lambda r: (r[0], r[1])):  # oldest first, by their start
        for case, run in runs.items():
            history.runs.setdefault(case, []).append(run)
    history.packs = len(read)
    return history


# ------------------------------------------------------------------------------------------------ computing
def percentile(values: Iterable[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * p // 100))  # ceil
    return ordered[int(rank) - 1]


def flips(verdicts: list[str]) -> int:
    """How many times the verdict changed from one run to the next."""
    return sum(1 for a, b in zip(verdicts, verdicts[1:]) if a != b)


def case_trend(earlier: list[CaseRun], last: CaseRun, window: int = TREND_RUNS) -> CaseTrend | None:
    """A case's trend over its last ``window`` runs (``last`` this run); None with fewer than 2 runs."""
    runs = [*earlier[-(window - 1):], last] if window > 1 else [last]
    if len(runs) < 2:
        return None
    before = [r.duration_s for r in runs[:-1] if r.verdict != "not run"]
    p50, p95 = percentile(before, 50), percentile(before, 95)
    passed = sum(1 for r in runs if r.verdict == "passed")
    changed = flips([r.verdict for r in runs])
    return CaseTrend(runs=len(runs), passed=passed, pass_rate=passed / len(runs), p50_s=p50, p95_s=p95,
                     last_s=last.duration_s, flips=changed, flaky=changed > 1,
                     slow=last.verdict != "not run" and p95 is not None and last.duration_s > p95 * SLOW_FACTOR,
                     history=[(r.verdict, r.duration_s) for r in runs])


def suite_trends(cases: Iterable[tuple[str, CaseRun]], history: History, window: int = TREND_RUNS) -> SuiteTrends:
    """Every case's trend: this run's cases (name, run) against the history."""
    return SuiteTrends(window=window, packs=history.packs, notes=history.notes,
                       cases={name: case_trend(history.runs.get(name, []), run, window) for name, run in cases})


# ------------------------------------------------------------------------------------------------ showing
def cells(trend: CaseTrend | None) -> dict[str, str]:
    """A trend's table cells (pass rate, p50 / p95, last, marks): ``–`` for a case with fewer than 2 runs."""
    if trend is None:
        return {"pass rate": NONE, "p50 / p95": NONE, "last": NONE, "marks": NONE}
    spread = NONE if trend.p50_s is None or trend.p95_s is None else \
        f"{format_duration(trend.p50_s)} / {format_duration(trend.p95_s)}"
    marks = [m for m, on in ((SLOW_MARK, trend.slow), (FLAKY_MARK, trend.flaky)) if on]
    return {"pass rate": f"{trend.pass_rate:.0%} ({trend.passed}/{trend.runs})", "p50 / p95": spread,
            "last": format_duration(trend.last_s), "marks": ", ".join(marks) or NONE}


def summary_line(trends: SuiteTrends, slow: str = SLOW_MARK, flaky: str = FLAKY_MARK) -> str:
    """Where the trends come from and what the marks (as shown: ``slow``, ``flaky``) say, in one line (the skipped
    packs' notes included)."""
    line = (f"Over the last {trends.window} runs at most: this run and {trends.packs} earlier suite pack(s) in the "
            f"evidence folder; p50 / p95 of the runs before this one; {slow}: this run took more than "
            f"{SLOW_FACTOR} × that p95; {flaky}: the verdict changed more than once.")
    return line + (" Not read: " + "; ".join(trends.notes) + "." if trends.notes else "")

