"""Spec validation: good specs pass; every bad one names the step and the field."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.spec.load import SpecError, load_spec, parse_spec, render_step
from flows.spec.model import CaseSpec, iter_steps, json_schema
from flows.spec.templating import builtin_values, resolve_variables
from tasks.s3.steps import ExpectObjectsStep, UploadStep


def good() -> dict[str, Any]:
    return {
        "case": "Orders ingest",
        "variables": {"landing": "landing-bucket", "prefix": "in/{{ run_date }}/"},
        "steps": [
            {"kind": "upload", "name": "land", "files": ["data/orders.csv"], "bucket": "{{ landing }}",
             "key_prefix": "{{ prefix }}"},
            {"kind": "parallel", "name": "checks", "steps": [
                {"kind": "expect_objects", "name": "curated", "bucket": "out-bucket", "prefix": "{{ prefix }}"},
                {"kind": "expect_objects", "bucket": "out-bucket", "keys": ["a/{{ case_name }}.csv"]},
            ]},
        ],
    }


@pytest.fixture(autouse=True)
def local_data(tmp_path: Path) -> None:
    """The file good() uploads, in the working folder (each test's own tmp_path), where validation looks."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "orders.csv").write_text("id\n1\n")


def problems(raw: dict[str, Any], **kw: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, **kw)
    return info.value.problems


def test_good_spec_parses_with_numbered_steps() -> None:
    spec = parse_spec(good())
    placed = list(iter_steps(spec))
    assert [(p.number, p.label, p.group) for p in placed] == [
        ("1", "land", None), ("2.1", "curated", "checks"), ("2.2", "expect_objects-2.2", "checks")]
    assert isinstance(placed[0].step, UploadStep) and isinstance(placed[1].step, ExpectObjectsStep)


def test_unknown_key_names_step_and_field() -> None:
    raw = good()
    raw["steps"][0]["buckett"] = "x"
    assert problems(raw) == ["step 1 'land' (upload): field 'buckett': unknown field (not allowed here; check "
                             "the spelling)"]


def test_missing_field_in_parallel_child() -> None:
    raw = good()
    del raw["steps"][1]["steps"][0]["bucket"]
    assert problems(raw) == ["step 2.1 'curated' (expect_objects): field 'bucket': Field required"]


def test_wrong_type() -> None:
    raw = good()
    raw["steps"][1]["steps"][0]["min_count"] = "many"
    (msg,) = problems(raw)
    assert msg.startswith("step 2.1 'curated' (expect_objects): field 'min_count': Input should be a valid integer")


def test_nested_field_path() -> None:
    raw = good()
    raw["steps"][1]["steps"][0]["wait"] = {"timeout": -1}
    (msg,) = problems(raw)
    assert msg.startswith("step 2.1 'curated' (expect_objects): field 'wait.timeout': Input should be greater")


def test_unknown_kind_lists_known_kinds() -> None:
    raw = good()
    raw["steps"].append({"kind": "uplod"})
    (msg,) = problems(raw)
    assert msg.startswith("step 3 (uplod): unknown kind 'uplod' (known kinds: ")
    assert "upload" in msg and "parallel" in msg


def test_unknown_variable_is_an_error() -> None:
    raw = good()
    raw["steps"][0]["key_prefix"] = "in/{{ run_dat }}/"
    (msg,) = problems(raw)
    assert msg.startswith("step 1 'land' (upload): field 'key_prefix': unknown variable run_dat")


def test_variable_may_only_use_earlier_ones() -> None:
    raw = good()
    raw["variables"] = {"a": "{{ b }}", "b": "x", **raw["variables"]}
    (msg,) = problems(raw)
    assert msg.startswith("case: field 'variables.a': unknown variable b")


def test_duplicate_step_name_across_groups() -> None:
    raw = good()
    raw["steps"][1]["steps"][0]["name"] = "land"
    assert problems(raw) == ["step 2.1 'land' (expect_objects): field 'name': 'land' is already used by step 1; "
                             "step names must be unique in a case"]


def test_model_level_rule_names_the_step() -> None:
    raw = good()
    raw["steps"][0]["key"] = "x.csv"
    (msg,) = problems(raw)
    assert msg.startswith("step 1 'land' (upload): give exactly one of 'key'")


def test_credentials_are_refused() -> None:
    raw = good()
    raw["aws"] = {"region": "eu-west-1", "aws_secret_access_key": "abc"}
    (msg,) = problems(raw)
    assert msg.startswith("case: field 'aws.aws_secret_access_key': 'aws_secret_access_key' is an AWS credential")
    assert "credentials never go in a spec" in msg and "abc" not in msg
    raw["aws"] = {"region": "eu-west-1", "password": "abc"}  # under aws:, the wider list
    (msg,) = problems(raw)
    assert msg.startswith("case: field 'aws': credentials never go in a spec (password)") and "abc" not in msg


def test_bad_timezone_and_builtin_shadowing() -> None:
    raw = good()
    raw["timezone"] = "Mars/Olympus"
    raw["variables"]["run_date"] = "x"
    msgs = problems(raw)
    assert any("field 'timezone'" in m and "unknown time zone" in m for m in msgs)
    assert any("variable 'run_date' is built in" in m for m in msgs)


def test_var_override_must_name_a_declared_variable() -> None:
    assert problems(good(), overrides={"landng": "x"})[0].startswith("--var landng: no such variable")
    spec = parse_spec(good(), overrides={"landing": "other-bucket"})
    assert spec.variables["landing"] == "other-bucket"


def test_error_that_shows_only_after_templating() -> None:
    raw = good()
    raw["variables"]["landing"] = "x"  # a bucket name of 1 character, only known after rendering
    (msg,) = problems(raw)
    assert msg.startswith("step 1 'land' (upload): field 'bucket' after templating: an S3 bucket name is 3 to 63")


def test_constraints_wait_for_templates_then_apply() -> None:
    raw = good()
    raw["variables"]["landing"] = "Landing_Bucket"
    (msg,) = problems(raw)
    assert "field 'bucket' after templating: an S3 bucket name" in msg and "'Landing_Bucket'" in msg
    raw["variables"]["landing"] = "landing-bucket"
    raw["steps"][0]["bucket"] = "Not A Bucket"
    (msg,) = problems(raw)
    assert msg.startswith("step 1 'land' (upload): field 'bucket': an S3 bucket name")


def test_render_step_renders_templates_but_not_names() -> None:
    spec = parse_spec(good())
    values = resolve_variables(spec.variables, builtin_values(
        spec.case, "run-1", datetime(2026, 1, 2, 23, 30, tzinfo=timezone.utc), "Asia/Tokyo"))
    step = render_step(spec.steps[0], values)
    assert step.key_prefix == "in/2026-01-03/"  # 08:30 the next day in Tokyo
    assert step.bucket == "landing-bucket" and step.name == "land"


def test_load_yaml_and_json_files(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(good()))
    (tmp_path / "c.json").write_text(json.dumps(good()))
    for name in ("c.yaml", "c.json"):
        spec, folder = load_spec(tmp_path / name)
        assert isinstance(spec, CaseSpec) and folder == tmp_path


def test_unreadable_files_are_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("case: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")


def test_json_schema_covers_every_kind() -> None:
    text = json.dumps(json_schema())
    for kind in ("upload", "expect_objects", "parallel"):
        assert f'"const": "{kind}"' in text or f'"enum": ["{kind}"]' in text


def test_example_case_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    for path in sorted((root / "examples" / "cases").glob("*.yaml")):
        load_spec(path)
