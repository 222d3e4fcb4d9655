"""Tests of expect.reconcile on athena_query: each kind of difference, Athena typing, files, the runner, the pack."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from flows.evidence.pack.files import sha256_file
from flows.evidence.pack.write import STEP_FILES_DIR, write_pack
from flows.evidence.results import CaseResult, StepResult
from tasks.athena import AthenaQueryStep, Column, run_athena_query
from tasks.athena.reconcile import Reconcile, Reconciler
from tasks.kit.aws import ClientFactory
from tasks.kit.errors import CheckFailed, StepError
from tasks.kit.files import StepFile
from tests.helpers import OUTPUT, FakeClock, inject
from tests.helpers import athena_context as context

COLUMNS = [Column("id", "bigint"), Column("amount", "decimal(10,2)"), Column("day", "date"),
           Column("at", "timestamp(3) with time zone"), Column("score", "double"), Column("note", "varchar")]


def actual_row(i: int, **changes: Any) -> dict[str, Any]:
    row = {"id": i, "amount": Decimal(f"{i}.50"), "day": datetime(2024, 1, i % 28 + 1).date(),
           "at": datetime(2024, 1, 1, 12, tzinfo=timezone.utc), "score": i / 3, "note": None if i % 2 else f"n{i}"}
    return {**row, **changes}


def expected_csv(path: Path, count: int, header: list[str] | None = None) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(header or ["id", "amount", "day", "at", "score", "note"])
        for i in range(1, count + 1):
            out.writerow([i, f"{i}.5", f"2024-01-{i % 28 + 1:02d}", "2024-01-01 13:00:00 +01:00",
                          repr(i / 3), "" if i % 2 else f"n{i}"])
    return path


def reconcile(spec: dict[str, Any], rows: list[dict[str, Any]], spec_dir: Path, out: Path | None = None) -> Any:
    reconciler = Reconciler(Reconcile.model_validate(spec), COLUMNS, spec_dir, out)
    for row in rows:
        reconciler.feed(row)
    return reconciler.finish()


def test_equal_data_passes_with_athena_typing(tmp_path: Path) -> None:
    """Decimals '1.5' = 1.50, dates, the same instant in another zone, empty CSV field = NULL, floats as text."""
    expected_csv(tmp_path / "expected.csv", 30)
    report = reconcile({"file": "expected.csv", "key": ["id"]}, [actual_row(i) for i in range(1, 31)], tmp_path)
    assert report.passed and report.counts == {"missing": 0, "unexpected": 0, "differences": 0}
    assert report.expected == report.actual == report.matched == 30
    assert report.check().passed and report.check().line().startswith("✅ PASS reconcile differences: expected 0, got 0")


def test_each_kind_of_difference_is_counted_shown_and_written(tmp_path: Path) -> None:
    expected_csv(tmp_path / "expected.csv", 10)
    rows = [actual_row(i) for i in range(1, 9)]  # 9 and 10 missing
    rows[0] = actual_row(1, amount=Decimal("1.51"))  # decimals exactly
    rows[1] = actual_row(2, note=None)  # NULL is not 'n2'
    rows[2] = actual_row(3, score=1.0 + 1e-9)  # float off by 1e-9, no tolerance
    rows += [actual_row(11), actual_row(12)]  # unexpected
    report = reconcile({"file": "expected.csv", "key": ["id"], "show": 1}, rows, tmp_path, tmp_path / "out")
    assert report.counts == {"missing": 2, "unexpected": 2, "differences": 3}
    assert not report.passed and report.matched == 5
    assert report.first["differences"] == [{"id": 1, "column": "amount", "expected": "1.5", "actual": "1.51"}]
    assert [len(v) for v in report.first.values()] == [1, 1, 1]  # show: 1 of each
    assert report.first["missing"][0]["id"] == 9 and report.first["unexpected"][0]["id"] == 11
    files = {k: list(csv.reader(open(p, encoding="utf-8"))) for k, p in report.files.items()}
    assert [r[0] for r in files["missing"][1:]] == ["9", "10"] and [r[0] for r in files["unexpected"][1:]] == ["11", "12"]
    assert files["differences"][0] == ["id", "column", "expected", "actual"]
    assert files["differences"][1:] == [["1", "amount", "1.5", "1.51"], ["2", "note", "n2", "NULL"],
                                        ["3", "score", "1.0", str(1.0 + 1e-9)]]
    assert report.check().line().startswith("❌ FAIL reconcile differences: expected 0, got 7 (2 missing, 2 unexpected, 3 ")


def test_float_tolerance_mapping_and_inline_rows(tmp_path: Path) -> None:
    rows = [{"ID": 1, "score": 0.3333}, {"ID": 2, "score": 0.6667}]
    spec = {"rows": rows, "key": ["id"], "columns": {"id": "ID"}, "float_tolerance": 0.001}
    report = reconcile(spec, [actual_row(1), actual_row(2)], tmp_path)
    assert report.passed and report.compared == ["id", "score"]  # only the columns the expected data has
    report = reconcile({**spec, "float_tolerance": 0.00001}, [actual_row(1), actual_row(2)], tmp_path)
    assert report.counts["differences"] == 2


def test_jsonl_file_with_exact_decimals(tmp_path: Path) -> None:
    lines = [{"id": i, "amount": float(f"{i}.5"), "at": "2024-01-01T12:00:00Z"} for i in (1, 2)]
    lines[1]["amount"] = 2.499999999999999999  # a JSON float is read as its text: 2.5, exact as a decimal
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    report = reconcile({"file": "e.jsonl", "key": ["id"]}, [actual_row(1), actual_row(2)], tmp_path)
    assert report.passed and report.compared == ["id", "amount", "at"]


def test_duplicate_expected_keys_and_duplicate_actual_rows(tmp_path: Path) -> None:
    with pytest.raises(StepError, match=r"expected row 2 repeats the key \{'id': 1\}"):
        reconcile({"rows": [{"id": 1}, {"id": "1"}], "key": ["id"]}, [], tmp_path)
    report = reconcile({"rows": [{"id": 1}], "key": ["id"]}, [actual_row(1), actual_row(1)], tmp_path)
    assert report.counts == {"missing": 0, "unexpected": 1, "differences": 0}


def test_bad_input_names_the_field_and_columns(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="key column 'nope' is not a result column.*expected data's columns"):
        reconcile({"rows": [{"id": 1}], "key": ["nope"]}, [], tmp_path)
    with pytest.raises(StepError, match="the expected data has no column 'ID'"):
        reconcile({"rows": [{"id": 1}], "key": ["id"], "columns": {"id": "ID"}}, [], tmp_path)
    with pytest.raises(StepError, match="Cannot read expect.reconcile.file gone.csv"):
        reconcile({"file": "gone.csv", "key": ["id"]}, [], tmp_path)
    (tmp_path / "bad.csv").write_text("id,amount\n1\n")
    with pytest.raises(StepError, match="bad.csv line 2: 1 values, but the header names 2 columns"):
        reconcile({"file": "bad.csv", "key": ["id"]}, [], tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n[1]\n')
    with pytest.raises(StepError, match="bad.jsonl line 2 is not a JSON object"):
        reconcile({"file": "bad.jsonl", "key": ["id"]}, [], tmp_path)


@pytest.mark.parametrize("spec, message", [
    ({"key": ["id"]}, "exactly one of file and rows"),
    ({"key": ["id"], "rows": [], "file": "a.csv"}, "exactly one of file and rows"),
    ({"key": [], "rows": []}, "at least 1 item"),
    ({"key": ["id"], "file": "a.txt"}, "give format"),
    ({"key": ["id", "id"], "rows": []}, "key names a column twice"),
    ({"key": ["id"], "rows": [], "float_tolerance": -1}, "greater than or equal to 0"),
])
def test_model_rejects_bad_specs(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Reconcile.model_validate(spec)


def test_runner_reconciles_and_hands_the_diff_files_to_the_pack(athena_clients: ClientFactory,  # noqa: F811
                                                                fake_clock: FakeClock, tmp_path: Path) -> None:
    (tmp_path / "expected.csv").write_text("order_id,total\n1,10.00\n2,20.00\n3,30.00\n")
    inject([("id", "integer"), ("total", "decimal(10,2)")], [["1", "10.00"], ["2", "20.01"], ["4", "40.00"]])
    step = AthenaQueryStep.model_validate({
        "kind": "athena_query", "sql": "SELECT id, total FROM orders", "output_location": OUTPUT,
        "expect": {"reconcile": {"file": "expected.csv", "key": ["id"], "columns": {"id": "order_id"}}},
    })
    ctx = context(athena_clients, tmp_path, fake_clock)
    ctx.scratch_dir = tmp_path / "scratch"
    with pytest.raises(CheckFailed, match=r"reconcile differences: expected 0, got 3 \(1 missing, 1 unexpected, "
                                          "1 differing") as err:
        run_athena_query(step, ctx)
    details = err.value.details["reconcile"]
    assert details["counts"] == {"missing": 1, "unexpected": 1, "differences": 1}
    assert details["first"]["differences"] == [{"id": 2, "column": "total", "expected": "20.00", "actual": "20.01"}]
    markdown = err.value.markdown or ""
    assert "**Reconciliation**" in markdown and "**Values that differ**" in markdown
    names = sorted(f.name for f in err.value.files)
    assert names == ["reconcile/differences.csv", "reconcile/missing.csv", "reconcile/unexpected.csv"]
    for item in err.value.files:
        assert item.sha256 == sha256_file(Path(item.local_path))

    # the pack copies them under steps/<number>/ and its manifest hashes them
    now = datetime(2024, 1, 1, tzinfo=timezone.utc)
    result = CaseResult(case="c", status="failed", started_at=now, ended_at=now, duration_s=0, steps=[
        StepResult(number="1", label="athena", kind="athena_query", status="failed", files=err.value.files)])
    pack = write_pack(result, None, tmp_path / "pack", private=False)
    manifest = json.loads((pack / "manifest.json").read_text())
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    for item in err.value.files:
        path = f"{STEP_FILES_DIR}/1/{item.name}"
        assert listed[path] == item.sha256
    assert (pack / STEP_FILES_DIR / "1" / "reconcile" / "unexpected.csv").read_text() == "id,total\n4,40.00\n"


def test_pack_masks_secrets_and_skips_names_leaving_the_folder(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("id,v\n1,hunter2-secret\n")
    files = [StepFile.of(tmp_path / "d.csv", "r/d.csv"), StepFile.of(tmp_path / "d.csv", "../evil.csv")]
    now = datetime(2024, 1, 1, tzinfo=timezone.utc)
    result = CaseResult(case="c", status="passed", started_at=now, ended_at=now, duration_s=0, steps=[
        StepResult(number="2", label="s", kind="athena_query", status="passed", files=files)])
    pack = write_pack(result, None, tmp_path / "pack", secrets=["hunter2-secret"], private=False)
    assert "hunter2-secret" not in (pack / STEP_FILES_DIR / "2" / "r" / "d.csv").read_text()
    assert not (pack / STEP_FILES_DIR / "evil.csv").exists() and not (tmp_path / "pack" / "evil.csv").exists()


def test_reconcile_file_is_confined_to_the_spec_folder(tmp_path: Path) -> None:
    from flows.spec.load import SpecError, load_spec
    (tmp_path / "case.yaml").write_text(
        "case: c\nsteps:\n  - kind: athena_query\n    sql: SELECT 1\n"
        "    expect:\n      reconcile: {file: ../outside.csv, key: [id]}\n")
    with pytest.raises(SpecError, match="outside"):
        load_spec(tmp_path / "case.yaml")
