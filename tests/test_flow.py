"""The flow under Prefect's test harness: task runs named after steps, failure handling, artifacts read back."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from flows.evidence.results import CaseFailed, CaseResult, result_of
from flows.pipeline_test import pipeline_test
from tasks.kit.step import format_duration
from tests.helpers import UPLOAD, assert_complete_pack, read_artifacts, read_task_runs
from tests.helpers import flow_spec as spec

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_passing_case_names_task_runs_and_leaves_artifacts(s3, data_dir: Path) -> None:
    s3.create_bucket(Bucket="flow-bucket")
    check = {"kind": "expect_objects", "name": "landed", "bucket": "{{ bucket }}", "prefix": "in/{{ flow_run_id }}/",
             "count": 1, "wait": {"timeout": 5}}
    result = pipeline_test(spec=spec(UPLOAD, check, name="Passing case"), base_dir=str(data_dir))
    assert isinstance(result, CaseResult) and result.passed
    assert [(s.label, s.status) for s in result.steps] == [("land", "passed"), ("landed", "passed"),
                                                           ("cleanup", "passed")]
    # cleanup removed the uploaded object
    assert s3.list_objects_v2(Bucket="flow-bucket").get("KeyCount", 0) == 0
    names = {t.name for t in read_task_runs(result.flow_run_id)}
    assert names == {"land", "landed", "cleanup"}
    artifacts = read_artifacts(result.flow_run_id)
    tables = [a for a in artifacts if a.type == "table" and a.key == "case-passing-case"]
    assert len(tables) == 1
    rows = json.loads(tables[0].data)
    assert [(r["status"], r["step"]) for r in rows] == [("✅ passed", "1 land"), ("✅ passed", "2 landed"),
                                                        ("✅ passed", "end cleanup")]
    assert list(rows[0]) == ["status", "step", "duration", "detail"]  # the verdict first: always in view
    step_md = [a for a in artifacts if a.type == "markdown" and a.key is None and a.data.startswith("## Step")]
    assert len(step_md) == 3 and not any(a.task_run_id for a in step_md)  # one per step, cleanup included: the
    # flow run's, in step order (flows.evidence.ui)
    links = [a for a in artifacts if a.key is None and a.data.startswith("[s3://flow-bucket/in/")]
    assert len(links) == 2  # the uploaded object and the object found
    assert any("## Step 1 · land · ✅ passed" in a.data for a in step_md)
    assert any(a.key == "case-passing-case-report" and "Passing case: ✅ PASSED" in a.data for a in artifacts)
    report = next(a.data for a in artifacts if a.key == "case-passing-case-report")
    # the case's last runs, read back from the server: this one, with its verdict and duration
    history = report[re.search(r"runs? of this case", report).start():]  # type: ignore[union-attr]
    assert "✅ passed | " in history and f"| {format_duration(result.duration_s)} |" in history
    assert "### Evidence pack" in report and "### Who ran it, where" in report and "123456789012" in report
    assert all(a.key is None or set(a.key) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") for a in artifacts)
    assert_complete_pack(result, steps=3)


def test_failed_step_stops_the_case_and_the_flow_run_fails(s3, data_dir: Path) -> None:
    s3.create_bucket(Bucket="flow-bucket")
    missing = {"kind": "expect_objects", "name": "never", "bucket": "{{ bucket }}", "keys": ["nope.csv"],
               "wait": {"timeout": 0.3}}
    after = {"kind": "expect_objects", "name": "after", "bucket": "{{ bucket }}", "keys": ["x"]}
    state = pipeline_test(spec=spec(UPLOAD, missing, after, name="Failing case"), base_dir=str(data_dir),
                          return_state=True)
    assert state.is_failed()
    result = result_of(state)
    assert result is not None and not result.passed
    assert [(s.label, s.status) for s in result.steps] == [
        ("land", "passed"), ("never", "failed"), ("after", "skipped"), ("cleanup", "passed")]
    assert "timed out" in result.steps[1].error
    # the uploaded test data was removed although a later step failed
    assert s3.list_objects_v2(Bucket="flow-bucket").get("KeyCount", 0) == 0
    with pytest.raises(CaseFailed, match="failed at step 2 'never': timed out"):
        state.result()
    assert_complete_pack(result, steps=4)
    table = [a for a in read_artifacts(result.flow_run_id) if a.key == "case-failing-case"][0]
    assert [r["status"] for r in json.loads(table.data)] == ["✅ passed", "❌ failed", "⏭️ skipped", "✅ passed"]


def test_continue_on_failure_and_parallel_groups(s3, data_dir: Path) -> None:
    s3.create_bucket(Bucket="flow-bucket")
    s3.put_object(Bucket="flow-bucket", Key="there.csv", Body=b"1")
    group = {"kind": "parallel", "name": "checks", "steps": [
        {"kind": "expect_objects", "name": "missing", "bucket": "{{ bucket }}", "keys": ["nope.csv"],
         "wait": {"timeout": 0.2}, "continue_on_failure": True},
        {"kind": "expect_objects", "name": "present", "bucket": "{{ bucket }}", "keys": ["there.csv"]},
    ]}
    last = {"kind": "expect_objects", "name": "last", "bucket": "{{ bucket }}", "keys": ["there.csv"]}
    state = pipeline_test(spec=spec(group, last, name="Parallel case"), base_dir=str(data_dir), return_state=True)
    result = result_of(state)
    assert state.is_failed() and result is not None
    assert [(s.number, s.label, s.group, s.status) for s in result.steps] == [
        ("1.1", "missing", "checks", "failed"), ("1.2", "present", "checks", "passed"), ("2", "last", None, "passed")]


def test_unexpected_exception_in_a_step_is_an_error_and_cleanup_still_runs(s3, data_dir, monkeypatch) -> None:
    import tasks.s3.steps

    s3.create_bucket(Bucket="flow-bucket")
    boom = {"kind": "expect_objects", "name": "boom", "bucket": "{{ bucket }}", "keys": ["x"]}

    def explode(*_: Any, **__: Any) -> Any:
        raise RuntimeError("bug in a step")

    monkeypatch.setattr(tasks.s3.steps, "expect_objects", explode)
    state = pipeline_test(spec=spec(UPLOAD, boom, name="Error case"), base_dir=str(data_dir), return_state=True)
    result = result_of(state)
    assert result is not None
    assert [(s.label, s.status) for s in result.steps] == [("land", "passed"), ("boom", "error"),
                                                           ("cleanup", "passed")]
    assert result.steps[1].error == "unexpected RuntimeError: bug in a step"
    assert s3.list_objects_v2(Bucket="flow-bucket").get("KeyCount", 0) == 0


def test_invalid_spec_fails_the_flow_before_any_step(data_dir: Path) -> None:
    bad = spec({"kind": "upload", "files": ["x"], "bucket": "b"})
    state = pipeline_test(spec=bad, base_dir=str(data_dir), return_state=True)
    assert state.is_failed()
    assert "step 1 (upload)" in str(state.message)


def test_evidence_pack_is_uploaded_encrypted_with_a_link_artifact(s3, data_dir: Path) -> None:
    s3.create_bucket(Bucket="flow-bucket")
    s3.create_bucket(Bucket="evidence-bucket")
    check = {"kind": "expect_objects", "name": "listed", "bucket": "{{ bucket }}", "prefix": "none/", "count": 0}
    raw = spec(check, name="Uploaded evidence")
    raw["evidence"] = {"bucket": "evidence-bucket", "prefix": "packs/"}
    result = pipeline_test(spec=raw, base_dir=str(data_dir))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="evidence-bucket")["Contents"]]
    folder = Path(result.evidence_dir)
    prefix = f"packs/uploaded-evidence/{folder.name}/"
    assert sorted(keys) == sorted(prefix + p.name for p in folder.iterdir())
    assert s3.head_object(Bucket="evidence-bucket", Key=prefix + "manifest.json")["ServerSideEncryption"] == "AES256"
    (link,) = [a for a in read_artifacts(result.flow_run_id) if a.key == "case-uploaded-evidence-evidence"]
    assert f"s3://evidence-bucket/{prefix}" in link.data and "manifest sha256" in (link.description or "")
