"""Baselines from history: a value a step measured (an Athena result's row count or a column's sum, the rows of the
objects an ``expect_objects`` step read, a step's duration) compared with the same value in the case's own last N
passing runs.

The history comes from the case's evidence packs (their ``report.json``), not from the Prefect server: a pack is
the run's own record, kept where the case keeps its evidence (a folder the team syncs, or copies to S3), so a fresh
laptop or a new Prefect server (a temporary one per CLI run, by default) still has it; the server's records go with
its database. Every baseline check records its value in its step's details (``details.baselines.<metric>``), so
later runs find it there, with the baseline it was compared to and the runs (pack folders, flow run ids) it came
from.

Bounded: :func:`read_history` runs once per case run, before the steps; it lists the pack folders (and, for a case
that uploads its packs with ``evidence:``, the S3 prefix; names begin with the run's start time, so newest first
without opening them) and reads at most ``2 x N`` report.json files
(N the largest ``runs`` a baseline of the case asks for), each at most :data:`REPORT_MAX_BYTES`, keeping the
passing ones, up to N.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pydantic import BaseModel

from tasks.kit import nesting
from tasks.kit.errors import AWS_ERRORS, aws_error
from tasks.kit.step import Baseline

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

#: the largest report.json read for a baseline (a larger one is passed over, and said so)
REPORT_MAX_BYTES = 16 * 1024 * 1024
#: how many report.json files may be read per run needed (failed runs among the newest are read and passed over)
READS_PER_RUN = 2


def baselines_in(value: Any) -> Iterator[Baseline]:
    """Every :class:`Baseline` in a (step) model, however deep."""
    if isinstance(value, Baseline):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from baselines_in(getattr(value, name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from baselines_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from baselines_in(item)


@dataclass
class PastRun:
    """A passing run of the case, as its pack says: where the pack is, its flow run, and each step's recorded
    baseline values (step label -> metric -> value)."""

    pack: str
    flow_run_id: str | None
    started_at: str | None
    values: dict[str, dict[str, float]]

    def source(self, value: float) -> dict[str, Any]:
        return {"pack": self.pack, "flow_run_id": self.flow_run_id, "started_at": self.started_at, "value": value}


@dataclass
class History:
    """The case's last passing runs (newest first), where they were looked for, and what could not be read."""

    runs: list[PastRun] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)
    read: int = 0
    problems: list[str] = field(default_factory=list)

    def values(self, step: str, metric: str, runs: int) -> list[tuple[float, PastRun]]:
        """The value of ``metric`` of step ``step`` in the newest ``runs`` passing runs that recorded it."""
        found = [(run.values[step][metric], run) for run in self.runs if metric in run.values.get(step, {})]
        return found[:runs]


def _pack_folders(folders: list[Path], own: Path | None) -> list[tuple[str, Path]]:
    """Pack folders (holding a report.json) under ``folders`` with their names (``<UTC time>-<run id>``), newest
    first; a suite's case packs (``<suite>/<run>/cases/<case>``) under the suite run's name."""
    found: dict[Path, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        if folder.name == "cases" and folder.parent.parent.is_dir():  # a suite's pack: its case is in every run
            case = own.name if own is not None else ""
            for run in folder.parent.parent.iterdir():
                candidate = run / "cases" / case
                if case and (candidate / "report.json").is_file():
                    found[candidate] = run.name
            continue
        for pack in folder.iterdir():
            if (pack / "report.json").is_file():
                found[pack] = pack.name
    own_resolved = own.resolve() if own is not None else None
    # by the start time the name begins with; within one second, by when report.json was written
    return [(name, p) for p, name in sorted(found.items(), key=lambda kv: (kv[1][:16], _written(kv[0])),
                                            reverse=True)
            if own_resolved is None or p.resolve() != own_resolved]


def _written(pack: Path) -> float:
    try:
        return (pack / "report.json").stat().st_mtime
    except OSError:
        return 0.0


def s3_pack_folders(client: S3Client, bucket: str, case_prefix: str, max_pages: int = 10) -> list[tuple[str, str]]:
    """The pack folders under ``s3://bucket/<case_prefix>`` (``<time>-<run id>/``, as ``evidence:`` uploads them):
    (name, key prefix), newest first; at most ``max_pages`` listings of 1,000."""
    found = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=case_prefix, Delimiter="/")
    for number, page in enumerate(pages, 1):
        found += [(p["Prefix"][len(case_prefix):].rstrip("/"), p["Prefix"]) for p in page.get("CommonPrefixes", [])]
        if number >= max_pages:
            break
    return sorted(found, reverse=True)


def _s3_report(client: S3Client, bucket: str, key: str) -> bytes:
    """The first ``REPORT_MAX_BYTES + 1`` bytes of a report.json in S3 (one ranged GET)."""
    response = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{REPORT_MAX_BYTES}")
    with contextlib.closing(response["Body"]) as body:
        return bytes(body.read(REPORT_MAX_BYTES + 1))


def _past_run(pack: Path | str, case: str, read: Callable[[], bytes] | None = None) -> PastRun | str | None:
    """The passing run a pack holds (None: it did not pass or is another case's), or why it could not be read;
    ``read``: how to read its report.json when it is not a local folder (an S3 pack)."""
    path = f"{pack}report.json" if isinstance(pack, str) else pack / "report.json"
    try:
        if read is not None:
            data = read()
        else:
            with open(path, "rb") as handle:
                data = handle.read(REPORT_MAX_BYTES + 1)
        if len(data) > REPORT_MAX_BYTES:
            return f"{path}: larger than {REPORT_MAX_BYTES // (1024 * 1024)} MiB, passed over"
        report = nesting.loads(data, str(path))
    except (OSError, ValueError) as exc:
        return f"{path}: not readable ({exc})"
    except AWS_ERRORS as exc:
        return f"{path}: not readable ({aws_error('S3 GetObject', str(path), exc).message})"
    if not isinstance(report, dict) or report.get("status") != "passed":
        return None
    if (report.get("case") or {}).get("name") != case:
        return None
    values: dict[str, dict[str, float]] = {}
    for step in report.get("steps") or []:
        recorded = ((step or {}).get("details") or {}).get("baselines") or {}
        if isinstance(recorded, dict):
            values[str(step.get("label"))] = {
                str(k): float(v["value"]) for k, v in recorded.items()
                if isinstance(v, dict) and isinstance(v.get("value"), (int, float))
                and not isinstance(v["value"], bool)}
    run = report.get("run") or {}
    return PastRun(pack=str(pack), flow_run_id=run.get("flow_run_id"), started_at=run.get("started_at"),
                   values=values)


@dataclass(frozen=True)
class S3Packs:
    """Where ``evidence:`` uploads the case's packs: ``s3://bucket/<case_prefix><time>-<run id>/``."""

    client: S3Client
    bucket: str
    case_prefix: str

    def reader(self, key: str) -> Callable[[], bytes]:
        return lambda: _s3_report(self.client, self.bucket, key)


def read_history(folders: list[Path], case: str, runs: int, own: Path | None = None,
                 s3: S3Packs | None = None) -> History:
    """The last ``runs`` passing runs of ``case`` from the packs under ``folders`` (``own``: this run's pack folder,
    left out) and, with ``s3``, the packs uploaded there (a pack in both is read from the folder), newest first,
    reading at most ``READS_PER_RUN x runs`` report.json files."""
    history = History(searched=[str(f) for f in folders])
    packs: dict[str, tuple[str, Path | str, Callable[[], bytes] | None]] = {}
    for name, path in _pack_folders(folders, own):
        packs.setdefault(name, (name, path, None))
    if s3 is not None:
        where = f"s3://{s3.bucket}/{s3.case_prefix}"
        history.searched.append(where)
        try:
            listed = s3_pack_folders(s3.client, s3.bucket, s3.case_prefix)
        except AWS_ERRORS as exc:
            listed = []
            history.problems.append(aws_error("S3 ListObjectsV2", where, exc).message)
        for name, prefix in listed:
            if name not in packs and not (own is not None and own.name == name):
                packs[name] = (name, f"s3://{s3.bucket}/{prefix}", s3.reader(prefix + "report.json"))
    newest = sorted(packs.values(), key=lambda p: (p[0][:16], _written(p[1]) if isinstance(p[1], Path) else 0.0),
                    reverse=True)
    for _, pack, read in newest:
        if len(history.runs) >= runs or history.read >= READS_PER_RUN * runs:
            break
        history.read += 1
        past = _past_run(pack, case, read)
        if isinstance(past, str):
            history.problems.append(past)
        elif past is not None:
            history.runs.append(past)
    return history


@dataclass
class BaselineCheck:
    """One value compared with its baseline: passed, or not (``severity`` says whether that fails the step: too
    few past runs is always a warning)."""

    metric: str
    value: float
    spec: Baseline
    past: list[tuple[float, PastRun]]
    #: the severity of what holds the baseline, when it says none of its own
    inherited: str = "error"

    @property
    def enough(self) -> bool:
        return len(self.past) >= self.spec.runs

    @property
    def mean(self) -> float | None:
        return sum(v for v, _ in self.past) / len(self.past) if self.past else None

    @property
    def bounds(self) -> tuple[float, float] | None:
        mean = self.mean
        if mean is None:
            return None
        margin = abs(mean) * self.spec.within_pct_of_baseline / 100
        return mean - margin, mean + margin

    @property
    def passed(self) -> bool:
        bounds = self.bounds
        return self.enough and bounds is not None and bounds[0] <= self.value <= bounds[1]

    @property
    def severity(self) -> str:
        return (self.spec.severity or self.inherited) if self.enough else "warn"

    @property
    def mark(self) -> str:
        return "✅ PASS" if self.passed else "⚠️ WARN" if self.severity == "warn" else "❌ FAIL"

    def expected(self) -> str:
        """``within 20% of 1,000 (mean of 7 runs): 800 to 1,200``, or why there is no baseline yet."""
        bounds = self.bounds
        if not self.enough:
            return (f"within {self.spec.within_pct_of_baseline:g}% of the mean of {self.spec.runs} passing run(s): "
                    f"only {len(self.past)} found, no baseline yet")
        assert bounds is not None and self.mean is not None
        return (f"within {self.spec.within_pct_of_baseline:g}% of {_num(self.mean)} (mean of {len(self.past)} "
                f"runs): {_num(bounds[0])} to {_num(bounds[1])}")

    def text(self) -> str:
        return f"{self.metric} (baseline): expected {self.expected()}, got {_num(self.value)}"

    def record(self) -> dict[str, Any]:
        """What goes in the step's details (``baselines.<metric>``): the value (later runs' history), the baseline
        and the runs it came from."""
        bounds = self.bounds
        return {"value": self.value, "baseline": self.mean, "within_pct": self.spec.within_pct_of_baseline,
                "low": bounds[0] if bounds else None, "high": bounds[1] if bounds else None,
                "runs_wanted": self.spec.runs, "runs_found": len(self.past), "passed": self.passed,
                "severity": self.severity, "runs": [run.source(value) for value, run in self.past]}


def check(spec: Baseline, step: str, metric: str, value: float, history: History | None,
          severity: str = "error") -> BaselineCheck:
    """``value`` of ``metric`` of step ``step`` against the baseline ``spec`` asks for (no history: no past run);
    ``severity``: that of what holds it, when the baseline says none."""
    past = history.values(step, metric, spec.runs) if history is not None else []
    return BaselineCheck(metric, float(value), spec, past, severity)


def _num(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.3f}".rstrip("0").rstrip(".")
