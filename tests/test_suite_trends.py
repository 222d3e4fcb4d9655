"""Trends per case over a suite's last runs (issue #28, item 5): pass rate, p50/p95 duration with a slow mark, a
flaky mark; read from the suite's earlier evidence packs, bounded, skipping (with a note) what cannot be read."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from flows.evidence.pack.verify import verify
from flows.suite import flow as suite_flow
from flows.suite import trends as suite_trends
from flows.suite.pack import SuiteCaseResult, SuiteResult, claim_suite_folder, write_suite_pack
from flows.suite.trends import CaseRun, case_trend, flips, percentile, read_history

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc)
SUITE = "nightly"
#: the earlier runs: (case, verdict, seconds) per run, oldest first
EARLIER = [
    [("orders", "failed", 10.0), ("flaky [eu]", "passed", 2.0), ("flaky [us]", "passed", 2.0)],
    [("orders", "passed", 11.0), ("flaky [eu]", "failed", 2.0), ("flaky [us]", "passed", 2.0)],
    [("orders", "passed", 9.0), ("flaky [eu]", "passed", 2.0), ("flaky [us]", "passed", 2.0)],
    [("orders", "passed", 10.0), ("flaky [eu]", "failed", 2.0), ("flaky [us]", "passed", 2.0)],
]
#: (orders failed once, first: one flip, not flaky; flaky [eu] flips 4 times)
#: the 5th run: orders took 3 × its usual time, a new case has no history
LAST = [("orders", "passed", 30.0), ("flaky [eu]", "passed", 2.0), ("flaky [us]", "passed", 2.1),
        ("new case", "passed", 1.0)]


def _result(n: int, cases: list[tuple[str, str, float]], suite: str = SUITE) -> SuiteResult:
    start = T0 + timedelta(hours=n)
    return SuiteResult(suite=suite, started_at=start, ended_at=start + timedelta(seconds=60), cases=[
        SuiteCaseResult(case=name, path="case.yaml", status=verdict, started_at=start,  # type: ignore[arg-type]
                        ended_at=start + timedelta(seconds=seconds)) for name, verdict, seconds in cases])


def _folder(parent: Path, n: int) -> Path:
    return parent / f"{T0 + timedelta(hours=n):%Y%m%dT%H%M%SZ}-run{n:05d}"


def write_pack(parent: Path, n: int, cases: list[tuple[str, str, float]], suite: str = SUITE) -> Path:
    return write_suite_pack(_result(n, cases, suite), _folder(parent, n))


def finish(parent: Path, n: int, cases: list[tuple[str, str, float]], monkeypatch: pytest.MonkeyPatch,
           window: int = 20) -> tuple[SuiteResult, str, str]:
    """A suite run's end as the suite flow does it (:func:`flows.suite.flow._finish`): the trends read, the pack
    written, the UI report published (captured here); returns the result, its index.html and the report's
    markdown."""
    published: dict[str, str] = {}
    monkeypatch.setattr(suite_flow, "create_table_artifact", lambda **kw: None)
    monkeypatch.setattr(suite_flow, "create_markdown_artifact", lambda **kw: published.update(md=kw["markdown"]))
    monkeypatch.setattr(suite_flow, "this_run_url", lambda: None)
    plan: Any = SimpleNamespace(spec=SimpleNamespace(suite=SUITE, trend_runs=window), skipped=[], source="suite.yaml")
    folder = _folder(parent, n)
    claim = claim_suite_folder(folder)
    start = T0 + timedelta(hours=n)
    done = _result(n, cases).cases
    result = suite_flow._finish(plan, f"run{n:05d}", start, done, folder, claim, logging.getLogger("test"))
    assert result.evidence_error is None and verify(folder) == []
    return result, (folder / "index.html").read_text(encoding="utf-8"), published["md"]


def test_trends_appear_after_5_runs_in_the_pack_and_the_ui_report(tmp_path: Path, monkeypatch) -> None:
    for n, cases in enumerate(EARLIER):
        write_pack(tmp_path, n, cases)
    result, page, markdown = finish(tmp_path, len(EARLIER), LAST, monkeypatch)
    trends = result.trends
    assert trends is not None and trends.packs == 4 and trends.notes == []

    orders = trends.cases["orders"]
    assert orders is not None and (orders.runs, orders.passed) == (5, 4)
    assert (orders.p50_s, orders.p95_s, orders.last_s) == (10.0, 11.0, 30.0) and orders.slow and not orders.flaky
    eu = trends.cases["flaky [eu]"]  # passed, failed, passed, failed, passed: 4 flips
    assert eu is not None and eu.flaky and eu.flips == 4 and not eu.slow and eu.pass_rate == pytest.approx(0.6)
    us = trends.cases["flaky [us]"]  # only runs of the same row count: [us] always passed
    assert us is not None and us.pass_rate == 1.0 and not us.flaky and not us.slow
    assert trends.cases["new case"] is None

    # index.html: a Trends table with a chart per case (inline SVG, no script) and the marks
    assert "<h2>Trends</h2>" in page and "<script" not in page.lower()
    section = page.split("<h2>Trends</h2>", 1)[1].split("</p>", 1)[1]  # the table, after the legend
    assert "80% (4/5)" in section and "10.0 s / 11.0 s" in section and "30.0 s" in section
    assert "60% (3/5)" in section and "100% (5/5)" in section
    assert section.count(">SLOW</span>") == 1 and section.count(">FLAKY</span>") == 1
    assert section.count("<svg") == 3  # the new case has no chart: "–"
    assert 'aria-label="the last 5 runs"' in section and section.count('data-status="failed"') == 3
    row_of_new = section.split("new case", 1)[1].split("</tr>", 1)[0]
    assert row_of_new.count("<td>–</td>") == 5

    # the UI report: the same numbers in a markdown table within the UI's table budget
    trend_part = markdown.split("## Trends", 1)[1]
    assert "4 earlier suite pack(s)" in trend_part
    table = "\n".join(line for line in trend_part.splitlines() if line.startswith("|"))
    assert "80% (4/5)" in table and "10.0 s / 11.0 s" in table and "30.0 s" in table
    assert table.count("🐢 slow") == 1 and table.count("🔀 flaky") == 1
    new_row = next(line for line in trend_part.splitlines() if line.startswith("| new case"))
    assert new_row.count("–") == 4

    # report.json carries the trends too
    report = json.loads((_folder(tmp_path, len(EARLIER)) / "report.json").read_text(encoding="utf-8"))
    assert report["trends"]["cases"]["orders"]["pass_rate"] == 0.8


def test_the_trends_table_fits_the_ui_box_with_long_case_names(tmp_path: Path, monkeypatch) -> None:
    from tasks.kit import markdown as md

    long = [("orders ingestion of the nightly batch [" + "x" * 60 + "]", "passed", 75.0)]
    write_pack(tmp_path, 0, [(long[0][0], "failed", 70.0)])
    _, _, markdown = finish(tmp_path, 1, long, monkeypatch)
    table = [line for line in markdown.split("## Trends", 1)[1].splitlines() if line.startswith("|")]
    widths = [sum(md.shown_chars(c) * md.CHAR_PX + md.COLUMN_PX for c in line.strip("|").split(" | "))
              for line in table]
    assert max(widths) <= md.TABLE_PX


def test_without_history_every_case_shows_a_dash(tmp_path: Path, monkeypatch) -> None:
    result, page, markdown = finish(tmp_path, 0, LAST, monkeypatch)
    assert result.trends is not None and result.trends.packs == 0
    assert all(t is None for t in result.trends.cases.values())
    section = page.split("<h2>Trends</h2>", 1)[1]
    assert "<svg" not in section and "%" not in section.split("</p>", 1)[1]
    rows = [line for line in markdown.split("## Trends", 1)[1].splitlines() if line.startswith("| ") and
            not line.startswith("| case")]
    assert len(rows) == 4 and all(row.count("–") == 4 for row in rows)


def test_a_corrupt_a_tampered_and_an_oversized_pack_are_skipped_with_a_note(tmp_path: Path, monkeypatch) -> None:
    for n, cases in enumerate(EARLIER):
        write_pack(tmp_path, n, cases)
    (_folder(tmp_path, 0) / "manifest.json").write_text("{not json", encoding="utf-8")
    report = _folder(tmp_path, 1) / "report.json"
    report.write_text(report.read_text(encoding="utf-8").replace('"failed"', '"passed"'), encoding="utf-8")
    oversized = _folder(tmp_path, 2) / "report.json"
    with open(oversized, "ab") as handle:  # still JSON, but more than a suite report should ever be
        handle.write(b" " * suite_trends.READ_MAX_BYTES)
    result, page, markdown = finish(tmp_path, len(EARLIER), LAST, monkeypatch)
    trends = result.trends
    assert trends is not None and trends.packs == 1 and len(trends.notes) == 3
    notes = "\n".join(trends.notes)
    assert "skipped 20261201T020000Z-run00000: manifest.json is not JSON" in notes
    assert "skipped 20261201T030000Z-run00001: report.json does not match its manifest's SHA-256" in notes
    assert "skipped 20261201T040000Z-run00002: report.json is larger than 4 MiB" in notes
    orders = trends.cases["orders"]  # this run and the one readable earlier pack
    assert orders is not None and orders.runs == 2 and orders.history[0] == ("passed", 10.0)
    assert "Not read: skipped" in page and "Not read: skipped" in markdown


def test_reading_is_bounded_by_the_window_and_ignores_other_suites(tmp_path: Path) -> None:
    for n in range(6):
        write_pack(tmp_path, n, [("orders", "passed" if n % 2 else "failed", float(n + 1))])
    write_pack(tmp_path, 9, [("orders", "failed", 99.0)], suite="another")
    (tmp_path / "not-a-pack").mkdir()
    history = read_history(tmp_path, SUITE, window=4)
    assert history.packs == 3 and history.notes == []
    assert [r.duration_s for r in history.runs["orders"]] == [4.0, 5.0, 6.0]  # the latest 3, oldest first
    trend = case_trend(history.runs["orders"], CaseRun("passed", 7.0), window=4)
    assert trend is not None and trend.runs == 4 and trend.history[0] == ("passed", 4.0)
    assert read_history(tmp_path / "missing", SUITE).packs == 0


def test_the_trend_arithmetic() -> None:
    assert percentile([], 95) is None and percentile([3.0], 50) == 3.0
    assert percentile([float(n) for n in range(1, 21)], 95) == 19.0 and percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert flips(["passed", "failed", "passed"]) == 2 and flips(["passed", "passed", "failed"]) == 1
    assert case_trend([], CaseRun("passed", 1.0)) is None
    steady = [CaseRun("passed", 10.0)] * 4
    assert case_trend(steady, CaseRun("passed", 15.0)).slow is False  # type: ignore[union-attr]
    assert case_trend(steady, CaseRun("passed", 15.1)).slow is True  # type: ignore[union-attr]
    assert case_trend(steady, CaseRun("not run", 99.0)).slow is False  # type: ignore[union-attr]
    once = case_trend(steady, CaseRun("failed", 10.0))
    assert once is not None and once.flips == 1 and not once.flaky and once.pass_rate == 0.8


def test_at_most_window_packs_are_opened_however_many_cannot_be_read(tmp_path: Path, monkeypatch) -> None:
    for n in range(12):
        folder = write_pack(tmp_path, n, [("orders", "passed", 1.0)])
        (folder / "manifest.json").write_text("[]" if n % 2 else "{", encoding="utf-8")
    opened: list[str] = []
    real = suite_trends._pack_runs
    monkeypatch.setattr(suite_trends, "_pack_runs", lambda pack, suite: opened.append(pack.name) or real(pack, suite))
    history = read_history(tmp_path, SUITE, window=5)
    assert len(opened) == 5 and history.packs == 0
    assert len(history.notes) == 2  # 10 and 8 are not JSON; 11, 9, 7 are no suite's pack: passed over
