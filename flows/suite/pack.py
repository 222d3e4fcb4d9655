"""A suite's results and its evidence pack: index.html (every case's pack linked, the suite's timeline as inline
SVG, no script), report.json, junit.xml (one ``<testsuite>`` per case) and a manifest over all of it, the cases'
own packs (under ``cases/<case>/``) included, so ``pipeline-test verify <suite pack>`` checks the
whole tree and each case's pack still verifies on its own. No Prefect, no boto3.
"""

from __future__ import annotations

import html
import os
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from flows.evidence.pack import folder as pack_folder
from flows.evidence.pack.files import JUNIT_XML, MANIFEST, MANIFEST_SCHEMA, _iso, _utc, pack_files, sha256_file
from flows.evidence.pack.html import CSS, badge
from flows.evidence.pack.junit import _x, junit_totals, testsuite
from flows.evidence.pack.write import _counts, _json_text, _write_text, private_default
from flows.evidence.report import (
    REPORT_JSON,
    SCHEMA_VERSION,
    CaseReport,
    CaseVerdict,
    Counts,
    RerunOf,
    SuiteCaseReport,
    SuiteCounts,
    SuiteReport,
    read_case_report,
)
from flows.evidence.results import CaseResult, StepResult, plural
from flows.suite.trends import SuiteTrends, cells, summary_line
from tasks.kit.status import STATUS, css_class

INDEX_HTML = "index.html"
#: files every suite pack has (besides the manifest)
SUITE_REQUIRED_FILES = (INDEX_HTML, REPORT_JSON, JUNIT_XML)
#: the folder of the cases' own packs inside a suite pack
CASES_DIR = "cases"


class SuiteCaseResult(BaseModel):
    """One case of a suite: its verdict (``not run``: it never started its steps, e.g. the Prefect API refused its
    flow run, or its locks could not be had), and its result when it ran."""

    case: str
    path: str
    status: CaseVerdict
    started_at: datetime
    ended_at: datetime
    flow_run_id: str | None = None
    ui_url: str | None = None
    reason: str | None = None
    #: the case's pack, relative to the suite pack (None when it has none)
    pack: str | None = None
    result: CaseResult | None = None

    @property
    def duration_s(self) -> float:
        return round((self.ended_at - self.started_at).total_seconds(), 3)

    @property
    def failed_step(self) -> StepResult | None:
        return self.result.first_failure if self.result is not None else None

    @property
    def warnings(self) -> int:
        """How many checks of the case warned (``severity: warn``); a case with warnings passes."""
        return self.result.warnings if self.result is not None else 0

    @property
    def why(self) -> str:
        """The failed step and its reason (or why the case did not run); its warnings when it passed with some;
        empty when it passed."""
        step = self.failed_step
        if step is not None:
            return f"step {step.number} '{step.label}' {step.status}: {step.error or ''}"
        if self.reason is None and self.warnings and self.result is not None:
            first = next(s for s in self.result.steps if s.warnings)
            return f"{plural(self.warnings, 'warning')}: step {first.number} '{first.label}': {first.warnings[0]}"
        return self.reason or ""


class SuiteResult(BaseModel):
    """What a suite run returns: every case's verdict; ``passed`` only when every case passed."""

    suite: str
    flow_run_id: str | None = None
    ui_url: str | None = None
    started_at: datetime
    ended_at: datetime
    cases: list[SuiteCaseResult]
    skipped: list[str] = []
    evidence_dir: str | None = None
    #: the suite file or folder as given (what ``--rerun-failed`` runs again)
    source: str | None = None
    rerun_of: RerunOf | None = None
    #: why the suite's evidence pack (or a case's) could not be written: the CLI exits 4
    evidence_error: str | None = None
    #: every case's trend over its last runs, from the suite's earlier packs (:mod:`flows.suite.trends`)
    trends: SuiteTrends | None = None

    @property
    def duration_s(self) -> float:
        return round((self.ended_at - self.started_at).total_seconds(), 3)

    def count(self, status: CaseVerdict) -> int:
        return sum(1 for c in self.cases if c.status == status)

    @property
    def warnings(self) -> int:
        """The warnings of every case (they never fail a case, nor the suite)."""
        return sum(c.warnings for c in self.cases)

    def counts_text(self) -> str:
        """``3 passed, 1 failed, 0 not run`` and, when some warned, ``(2 warnings in 1 case)``."""
        text = f"{self.count('passed')} passed, {self.count('failed')} failed, {self.count('not run')} not run"
        warned = sum(1 for c in self.cases if c.warnings)
        return text + (f" ({plural(self.warnings, 'warning')} in {plural(warned, 'case')})" if warned else "")

    @property
    def passed(self) -> bool:
        return all(c.status == "passed" for c in self.cases)

    @property
    def status(self) -> CaseVerdict:
        return "passed" if self.passed else "failed" if self.count("failed") else "not run"


class SuiteFailed(Exception):
    """A suite with a case that failed or did not run; carries the result (the suite's flow run data)."""

    def __init__(self, result: SuiteResult) -> None:
        super().__init__(f"suite '{result.suite}': {result.count('passed')} passed, {result.count('failed')} "
                         f"failed, {result.count('not run')} not run")
        self.result = result


def result_from_pack(folder: Path) -> CaseResult | None:
    """A case's result read back from its pack's report.json through :class:`CaseReport` (how a suite collects a
    case a worker ran); None when the pack has no readable report."""
    try:
        return CaseResult.from_report(read_case_report(folder))
    except (OSError, ValueError, ValidationError):
        return None


# ------------------------------------------------------------------------------------------------ index.html
BAR, GAP, LABEL_W, CHART_W = 18, 6, 260, 760


def timeline_svg(result: SuiteResult) -> str:
    """The suite's timeline: one bar per case from its start to its end, coloured by verdict (inline SVG)."""
    t0 = min((_utc(c.started_at) for c in result.cases), default=_utc(result.started_at))
    t1 = max((_utc(c.ended_at) for c in result.cases), default=_utc(result.ended_at))
    span = max((t1 - t0).total_seconds(), 0.001)
    height = len(result.cases) * (BAR + GAP) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{LABEL_W + CHART_W + 20}" height="{height}" '
             f'role="img" aria-label="timeline of the suite\'s cases">']
    for i, c in enumerate(result.cases):
        y = i * (BAR + GAP)
        x = LABEL_W + CHART_W * (_utc(c.started_at) - t0).total_seconds() / span
        w = max(CHART_W * c.duration_s / span, 2)
        title = html.escape(f"{c.case}: {c.status}, {c.duration_s:.1f} s", quote=True)
        parts.append(f'<text x="{LABEL_W - 8}" y="{y + BAR - 5}" text-anchor="end" font-size="13">'
                     f'{html.escape(c.case[:40])}</text>')
        parts.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{BAR}" rx="3" '
                     f'fill="{STATUS[c.status].colour}" data-status="{html.escape(c.status)}"><title>{title}</title>'
                     "</rect>")
    axis = len(result.cases) * (BAR + GAP) + 14
    parts.append(f'<text x="{LABEL_W}" y="{axis}" font-size="12">0 s</text>')
    parts.append(f'<text x="{LABEL_W + CHART_W}" y="{axis}" font-size="12" text-anchor="end">{span:.1f} s</text>')
    parts.append("</svg>")
    return "\n".join(parts)


TREND_W, TREND_H = 240, 28
#: the trend marks as index.html shows them (badges: no emoji font needed)
SLOW_BADGE, FLAKY_BADGE = "SLOW", "FLAKY"


def trend_svg(history: list[tuple[str, float]]) -> str:
    """A case's last runs, oldest first: one bar per run, its height the duration, coloured by verdict."""
    longest = max((d for _, d in history), default=0.0) or 1.0
    step = TREND_W / max(len(history), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{TREND_W}" height="{TREND_H}" role="img" '
             f'aria-label="the last {len(history)} runs">']
    for i, (verdict, duration) in enumerate(history):
        h = 3 + (TREND_H - 3) * duration / longest
        title = html.escape(f"run {i + 1}: {verdict}, {duration:.1f} s", quote=True)
        parts.append(f'<rect x="{i * step:.1f}" y="{TREND_H - h:.1f}" width="{max(step - 2, 1):.1f}" height="{h:.1f}" '
                     f'fill="{STATUS[verdict].colour if verdict in STATUS else "#8c959f"}" '
                     f'data-status="{html.escape(verdict)}">'
                     f'<title>{title}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def trends_html(result: SuiteResult) -> list[str]:
    """The Trends section: per case its last runs as a chart, pass rate, p50 / p95, this run's duration, marks."""
    if result.trends is None:
        return []
    e = html.escape
    rows = []
    for c in result.cases:
        trend = result.trends.cases.get(c.case)
        shown = cells(trend)
        chart, marks = "–", "–"
        if trend is not None:
            chart = trend_svg(trend.history)
            marks = " ".join(f"<span class='badge {css}'>{word}</span>" for word, css, on in (
                (SLOW_BADGE, "error", trend.slow), (FLAKY_BADGE, "failed", trend.flaky)) if on) or "–"
        rows.append(f"<tr><td>{e(c.case)}</td><td>{chart}</td>"
                    + "".join(f"<td>{e(shown[k])}</td>" for k in ("pass rate", "p50 / p95", "last"))
                    + f"<td>{marks}</td></tr>")
    legend = summary_line(result.trends, SLOW_BADGE, FLAKY_BADGE)
    return ["<h2>Trends</h2>", f"<p class='muted'>{e(legend)}</p>",
            "<table class='trends'><tr><th>case</th><th>last runs (oldest first)</th><th>pass rate</th>"
            "<th>p50 / p95</th><th>this run</th><th>marks</th></tr>", *rows, "</table>"]


def index_html(result: SuiteResult) -> str:
    """index.html: the verdict, the timeline, and a row per case linking its pack and its flow run."""
    e = html.escape
    rows = []
    for c in result.cases:
        pack = f'<a href="{e(c.pack)}/report.html">pack</a>' if c.pack else "none"
        run = f'<a href="{e(c.ui_url)}">flow run</a>' if c.ui_url else e(c.flow_run_id or "")
        verdict = (f"<span class='badge {css_class('warned')}'>PASSED, {e(plural(c.warnings, 'warning'))}</span>"
                   if c.warnings and c.status == "passed" else badge(c.status))
        rows.append(f"<tr><td>{e(c.case)}</td><td>{verdict}</td>"
                    f"<td>{c.duration_s:.1f} s</td><td>{e(c.why)}</td><td>{pack}</td><td>{run}</td></tr>")
    counts = e(result.counts_text())
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Suite {e(result.suite)}: {e(result.status.upper())}</title><style>{CSS}</style></head><body>",
        f"<h1>Suite {e(result.suite)} {badge(result.status, 'verdict')}</h1>",
        f"<p class='muted'>{counts}; started {e(_iso(result.started_at) or '')}, {result.duration_s:.1f} s; "
        f"flow run {e(result.flow_run_id or '')}</p>",
        *([f"<p>A re-run of the failed cases of the suite pack <code>{e(result.rerun_of.pack)}</code> (manifest "
           f"sha256 <code>{e(result.rerun_of.manifest_sha256)}</code>, flow run "
           f"{e(result.rerun_of.flow_run_id or '')})</p>"] if result.rerun_of else []),
        "<h2>Timeline</h2>", timeline_svg(result),
        "<h2>Cases</h2>",
        "<table><tr><th>case</th><th>verdict</th><th>duration</th><th>failed step and reason</th><th>evidence"
        "</th><th>run</th></tr>", *rows, "</table>",
        *trends_html(result),
        *([f"<p class='muted'>Left out: {e(', '.join(result.skipped))}</p>"] if result.skipped else []),
        f"<p class='muted'>Check this pack with <code>python -m flows.pipeline_test verify &lt;this folder&gt;"
        f"</code> ({e(MANIFEST)} lists every file, the cases' packs included).</p>",
        "</body></html>", ""])


# ------------------------------------------------------------------------------------------------- junit.xml
def suite_junit_xml(result: SuiteResult, reports: dict[str, CaseReport]) -> str:
    """junit.xml: one ``<testsuite>`` per case (its steps the testcases); a case that did not run is one testcase
    in error."""
    root = ET.Element("testsuites", {"name": _x(result.suite)})
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for c in result.cases:
        if c.result is not None:
            counts = _counts(c.result)
            spec = reports[c.case].spec if c.case in reports else None
            suite = testsuite(c.result, counts, spec.sha256 if spec else None, spec.case_sha256 if spec else None)
        else:
            counts = Counts(total=1, error=1)
            suite = ET.Element("testsuite", {"name": _x(c.case), "tests": "1", "failures": "0", "errors": "1",
                                             "time": f"{c.duration_s:.3f}", "skipped": "0",
                                             "timestamp": _utc(c.started_at).strftime("%Y-%m-%dT%H:%M:%S")})
            case = ET.SubElement(suite, "testcase", {"name": "run", "classname": _x(c.case), "time": "0.000"})
            ET.SubElement(case, STATUS["not run"].junit, {"message": _x((c.reason or "not run")[:2000]),
                                          "type": "not run"}).text = _x(c.reason or "")
        root.append(suite)
        for name, n in junit_totals(counts).items():
            if name in totals:
                totals[name] += n
    root.attrib.update({k: str(v) for k, v in totals.items()} | {"time": f"{result.duration_s:.3f}"})
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ----------------------------------------------------------------------------------------------- write it all
def suite_report(result: SuiteResult) -> SuiteReport:
    """The suite pack's report.json."""
    return SuiteReport(
        generated_at=datetime.now(timezone.utc).replace(microsecond=0),
        suite=result.suite, status=result.status, flow_run_id=result.flow_run_id, ui_url=result.ui_url,
        started_at=result.started_at, ended_at=result.ended_at, duration_s=result.duration_s,
        counts=SuiteCounts(passed=result.count("passed"), failed=result.count("failed"),
                           not_run=result.count("not run")),
        warnings=result.warnings,
        skipped_by_tags=result.skipped, source=result.source, rerun_of=result.rerun_of, trends=result.trends,
        cases=[SuiteCaseReport(case=c.case, path=c.path, status=c.status, started_at=c.started_at,
                               ended_at=c.ended_at, duration_s=c.duration_s, flow_run_id=c.flow_run_id,
                               ui_url=c.ui_url, failed_step=c.failed_step.number if c.failed_step else None,
                               reason=c.why or None, pack=c.pack, warnings=c.warnings) for c in result.cases],
    )


def case_reports(folder: Path, result: SuiteResult) -> dict[str, CaseReport]:
    """The report.json of every case pack in the suite pack, by case name (a pack without a readable one is left
    out)."""
    found = {}
    for c in result.cases:
        if c.pack and (folder / c.pack / REPORT_JSON).is_file():
            try:
                found[c.case] = read_case_report(folder / c.pack)
            except (OSError, ValueError):
                continue
    return found


def claim_suite_folder(folder: Path, private: bool | None = None, logger: Any = None) -> pack_folder.PackClaim:
    """Claim a suite's pack folder before any case starts (new or empty, writable, no other run writing to it;
    PackFolderError says why not) and create it, so its cases write their packs under ``cases/``."""
    private = private_default() if private is None else private
    taken = pack_folder.claim(folder, private, logger)
    try:
        Path(folder).mkdir(mode=0o700 if private else 0o777, exist_ok=True)
        if private:
            pack_folder.restrict_to_owner(Path(folder), logger)
    except OSError as exc:
        taken.abandon()
        raise pack_folder.PackFolderError(f"evidence folder {folder} cannot be written ({exc})") from None
    return taken


def write_suite_pack(result: SuiteResult, folder: Path, private: bool | None = None,
                     claim: pack_folder.PackClaim | None = None) -> Path:
    """Write the suite's files into ``folder`` (which may already hold the cases' packs under ``cases/``) and the
    manifest over every file, last.

    The suite's own files are written in ``claim``'s temporary folder (see :func:`claim_suite_folder`; without
    one, a temporary folder is claimed here), then moved into ``folder``, the manifest last: on any failure the
    suite's files already moved are removed again (the cases' packs, each whole, stay) and the error is raised."""
    folder = Path(folder)
    private = private_default() if private is None else private
    if claim is None:
        claim = claim_suite_folder(folder, private) if not folder.exists() or not any(folder.iterdir()) else \
            pack_folder.claim_staging(folder, private)
    moved: list[Path] = []
    try:
        for c in result.cases:  # a case pack without its manifest (a run cut short) is not linked as a pack
            if c.pack and not (folder / c.pack / MANIFEST).is_file():
                c.pack = None
        files = {INDEX_HTML: index_html(result), REPORT_JSON: _json_text(suite_report(result).to_json()),
                 JUNIT_XML: suite_junit_xml(result, case_reports(folder, result))}
        for name, text in files.items():
            _write_text(claim.staging / name, text, private)
        for name in files:
            moved.append(folder / name)
            os.replace(claim.staging / name, folder / name)
        manifest = {
            "schema": MANIFEST_SCHEMA, "schema_version": SCHEMA_VERSION, "kind": "suite", "algorithm": "sha256",
            "created_at": _iso(datetime.now(timezone.utc)), "suite": result.suite, "flow_run_id": result.flow_run_id,
            "status": result.status,
            "files": [{"path": n, "size": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)}
                      for n in pack_files(folder) if n != MANIFEST],
        }
        _write_text(claim.staging / MANIFEST, _json_text(manifest), private)
        moved.append(folder / MANIFEST)
        os.replace(claim.staging / MANIFEST, folder / MANIFEST)
    except BaseException:
        for path in moved:
            try:
                path.unlink()
            except OSError:
                pass
        raise
    finally:
        claim.abandon()
    return folder
