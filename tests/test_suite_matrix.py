"""A case over a table of sources (a suite's ``matrix``: inline rows, or a CSV/YAML file of them), each row its own
case run, pack and junit testsuite; ``--only``; and ``--rerun-failed PACK``, which runs exactly what failed in a suite
pack as a new suite run linked to it (in-process: Prefect's test harness and moto)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import yaml

from flows.cli import main
from flows.evidence.pack.verify import manifest_sha256, verify
from flows.spec.load import SpecError
from flows.suite.spec import load_suite

JUNIT_XSD = Path(__file__).with_name("junit-10.xsd")


def landing_case(folder: Path, sources: tuple[str, ...] = ("orders", "returns", "refunds")) -> Path:
    """``folder/landing.yaml``: land ``data/<source>.csv`` under ``in/<source>/``, then expect ``expected`` there
    (default: the landed file); one data file per source."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for source in sources:
        (folder / "data" / f"{source}.csv").write_text("id,amount\n1,10\n")
    case = {"case": "Landing", "tags": ["landing"],
            "variables": {"bucket": "matrix-bucket", "source": "orders", "expected": "{{ source }}.csv"},
            "steps": [
                {"kind": "upload", "name": "land", "files": ["data/{{ source }}.csv"], "bucket": "{{ bucket }}",
                 "key_prefix": "in/{{ source }}/", "cleanup": True},
                {"kind": "expect_objects", "name": "landed", "bucket": "{{ bucket }}",
                 "keys": ["in/{{ source }}/{{ expected }}"], "wait": {"timeout": 0.3, "initial": 0.05}}]}
    path = folder / "landing.yaml"
    path.write_text(yaml.safe_dump(case, sort_keys=False))
    return path


def matrix_suite(root: Path, matrix: Any, **fields: Any) -> Path:
    landing_case(root / "cases")
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump({"suite": "Sources", "cases": [{"path": "cases/landing.yaml", "matrix": matrix}],
                                    **fields}, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ validation
def test_each_row_is_a_case_named_by_its_id_or_its_values_and_selected_by_tag_and_only(tmp_path: Path) -> None:
    suite = matrix_suite(tmp_path, [{"id": "orders", "source": "orders"},
                                    {"source": "returns", "expected": "returns.csv", "tags": ["nightly"]}],
                         variables={"bucket": "env-bucket"})
    plan = load_suite(suite)
    assert [c.name for c in plan.cases] == ["Landing [orders]", "Landing [returns-returns-csv]"]
    assert [c.row for c in plan.cases] == ["orders", "returns-returns-csv"]
    # the row's values over the suite's variables, over the case's defaults
    assert plan.cases[0].variables == {"bucket": "env-bucket", "source": "orders"}
    assert plan.cases[1].variables == {"bucket": "env-bucket", "source": "returns", "expected": "returns.csv"}
    # a row's tags add to the case's
    assert [c.name for c in load_suite(suite, tags=["nightly"]).cases] == ["Landing [returns-returns-csv]"]
    assert [c.name for c in load_suite(suite, tags=["landing"]).cases] == ["Landing [orders]",
                                                                           "Landing [returns-returns-csv]"]
    only = load_suite(suite, only=["Landing [orders]"])
    assert [c.name for c in only.cases] == ["Landing [orders]"] and len(only.skipped) == 1
    assert len(load_suite(suite, only=["Landing [*"]).cases) == 2
    with pytest.raises(SpecError, match=r"--only 'Landing': no case of the suite has this name"):
        load_suite(suite, only=["Landing"])


def test_a_glob_that_also_matches_a_matrix_case_does_not_run_it_without_a_row(tmp_path: Path) -> None:
    suite = matrix_suite(tmp_path, [{"source": "orders"}])
    data = yaml.safe_load(suite.read_text())
    data["cases"].insert(0, "cases/*.yaml")
    suite.write_text(yaml.safe_dump(data))
    assert [c.name for c in load_suite(suite).cases] == ["Landing [orders]"]


def test_every_bad_row_is_named_before_anything_runs(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: any AWS call would fail
    suite = matrix_suite(tmp_path, [{"id": "ok", "source": "orders"}, {"id": "typo", "sourc": "returns"},
                                    {"id": "no-file", "source": "missing"}, {"id": "ok", "source": "refunds"}])
    assert main([str(suite), "--validate"]) == 2
    err = capsys.readouterr().err
    assert str(suite) in err and "Nothing was run" in err
    assert "cases[0].matrix row 4: row id 'ok' is also another row's" in err
    suite = matrix_suite(tmp_path / "b", [{"id": "ok", "source": "orders"}, {"id": "typo", "sourc": "returns"},
                                          {"id": "bad-value", "source": "../up"}])
    assert main([str(suite), "--evidence-dir", str(tmp_path / "pack")]) == 2
    err = capsys.readouterr().err
    assert "cases[0].matrix row 2: field 'sourc': not a variable of" in err and "(it declares: bucket, " in err
    assert "cases[0].matrix row 3 [bad-value]: " in err and "step 1 'land' (upload): field 'key_prefix'" in err
    assert "row 1" not in err and not (tmp_path / "pack").exists()
    for matrix, message in [([], "1 to 500 rows"), ([{"source": {"a": 1}}], "row 1: field 'source': a value is"),
                            ("../rows.csv", "inside its folder"), ("rows.txt", "must be a .csv/.yaml/.yml/.json")]:
        with pytest.raises(SpecError, match=message):
            load_suite(matrix_suite(tmp_path / str(abs(hash(str(matrix)))), matrix))


def test_rows_from_a_csv_or_yaml_file(tmp_path: Path) -> None:
    suite = matrix_suite(tmp_path, "sources.csv")
    (tmp_path / "sources.csv").write_text("id,source,expected,tags\n"
                                          "o,orders,,nightly\n"
                                          "r,returns,returns.csv,nightly;weekly\n")
    plan = load_suite(suite)
    assert [(c.name, c.variables) for c in plan.cases] == [
        ("Landing [o]", {"source": "orders"}),  # an empty cell sets nothing
        ("Landing [r]", {"source": "returns", "expected": "returns.csv"})]
    assert [c.name for c in load_suite(suite, tags=["weekly"]).cases] == ["Landing [r]"]
    (tmp_path / "sources.csv").write_text("source,sourcee\norders,x\n")
    with pytest.raises(SpecError, match=r"cases\[0\].matrix \(sources.csv\) row 1: field 'sourcee': not a variable"):
        load_suite(suite)
    (tmp_path / "sources.csv").write_text("source\norders,extra\n")
    with pytest.raises(SpecError, match="sources.csv row 1: more cells than columns"):
        load_suite(suite)
    suite = matrix_suite(tmp_path / "y", "rows.yaml")
    (tmp_path / "y" / "rows.yaml").write_text("- {source: orders}\n- {source: refunds, id: r}\n")
    assert [c.name for c in load_suite(suite).cases] == ["Landing [orders]", "Landing [r]"]
    (tmp_path / "y" / "rows.yaml").write_text("source: orders\n")
    with pytest.raises(SpecError, match="rows.yaml must hold a list of 1 to 500 rows"):
        load_suite(suite)


# ------------------------------------------------------------------------------------------------ running
@pytest.fixture
def matrix_bucket(prefect_harness, clients) -> Any:
    s3 = clients.client("s3")
    s3.create_bucket(Bucket="matrix-bucket")
    return s3


def cases_of(pack: Path) -> dict[str, str]:
    return {c["case"]: c["status"] for c in json.loads((pack / "report.json").read_text())["cases"]}


def test_a_matrix_suite_runs_each_row_in_its_own_pack_and_testsuite_and_reruns_exactly_the_failed_row(
        matrix_bucket, tmp_path: Path, capsys) -> None:
    import xmlschema

    suite = matrix_suite(tmp_path, "sources.csv", max_parallel=3)
    rows = tmp_path / "sources.csv"
    rows.write_text("id,source,expected\norders,orders,\nreturns,returns,\nrefunds,refunds,never.csv\n")
    first = tmp_path / "first"
    assert main([str(suite), "--evidence-dir", str(first)]) == 1
    out = capsys.readouterr().out
    assert "FAIL    Landing [refunds]" in out and "PASS    Landing [orders]" in out
    assert cases_of(first) == {"Landing [orders]": "passed", "Landing [returns]": "passed",
                               "Landing [refunds]": "failed"}
    report = json.loads((first / "report.json").read_text())
    assert report["source"] == str(suite) and report["rerun_of"] is None
    assert [c["pack"] for c in report["cases"]] == ["cases/landing-orders", "cases/landing-returns",
                                                    "cases/landing-refunds"]
    for c in report["cases"]:  # each row its own pack, under its own name and with its own values
        assert verify(first / c["pack"]) == []
        case_report = json.loads((first / c["pack"] / "report.json").read_text())
        assert case_report["case"]["name"] == c["case"]
        assert case_report["variables"]["source"] == c["case"].split("[")[1].rstrip("]")
    assert verify(first) == []
    suites = {s.get("name"): s for s in ET.parse(first / "junit.xml").iter("testsuite")}
    assert set(suites) == {"Landing [orders]", "Landing [returns]", "Landing [refunds]"}
    assert suites["Landing [refunds]"].get("failures") == "1" and suites["Landing [orders]"].get("failures") == "0"
    assert [str(e.reason) for e in xmlschema.XMLSchema(str(JUNIT_XSD)).iter_errors(str(first / "junit.xml"))] == []
    assert matrix_bucket.list_objects_v2(Bucket="matrix-bucket").get("KeyCount") == 0

    # the re-run: exactly the failed row, as a new suite run that names the first pack and its manifest
    second = tmp_path / "second"
    assert main(["--rerun-failed", str(first), "--evidence-dir", str(second)]) == 1
    out = capsys.readouterr().out
    assert f"A re-run of the failed cases of {first.resolve()} (manifest sha256 {manifest_sha256(first)})" in out
    assert cases_of(second) == {"Landing [refunds]": "failed"}
    link = json.loads((second / "report.json").read_text())["rerun_of"]
    assert link == {"pack": str(first.resolve()), "manifest_sha256": manifest_sha256(first),
                    "flow_run_id": report["flow_run_id"], "cases": ["Landing [refunds]"]}
    assert "A re-run of the failed cases of the suite pack" in (second / "index.html").read_text()
    assert verify(second) == []

    # the row fixed, the re-run of the re-run passes; then nothing is left to re-run
    rows.write_text("id,source,expected\norders,orders,\nreturns,returns,\nrefunds,refunds,\n")
    third = tmp_path / "third"
    assert main([str(suite), "--rerun-failed", str(second), "--evidence-dir", str(third)]) == 0
    assert cases_of(third) == {"Landing [refunds]": "passed"}
    # its trend: the earlier packs beside it (first, second) read back; only runs of the same row count
    trends = json.loads((third / "report.json").read_text())["trends"]
    assert trends["packs"] == 2 and trends["notes"] == []
    refunds = trends["cases"]["Landing [refunds]"]
    assert [v for v, _ in refunds["history"]] == ["failed", "failed", "passed"] and refunds["flips"] == 1
    assert "33% (1/3)" in (third / "index.html").read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["--rerun-failed", str(third)]) == 0
    assert "Nothing to re-run: every case of suite 'Sources' passed in" in capsys.readouterr().out


def test_rerun_failed_refuses_what_is_not_an_intact_suite_pack(matrix_bucket, tmp_path: Path, capsys) -> None:
    case = landing_case(tmp_path / "cases")
    case_pack = tmp_path / "case-pack"
    assert main([str(case), "--evidence-dir", str(case_pack)]) == 0
    capsys.readouterr()
    assert main(["--rerun-failed", str(case_pack)]) == 2
    assert "not a suite's evidence pack" in capsys.readouterr().err
    assert main(["--rerun-failed", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    suite = matrix_suite(tmp_path / "s", [{"id": "bad", "source": "orders", "expected": "never.csv"}])
    pack = tmp_path / "suite-pack"
    assert main([str(suite), "--evidence-dir", str(pack)]) == 1
    capsys.readouterr()
    other = tmp_path / "s" / "other.yaml"
    other.write_text(yaml.safe_dump({"suite": "Other", "cases": ["cases/landing.yaml"]}))
    assert main([str(other), "--rerun-failed", str(pack)]) == 2
    assert "is a pack of suite 'Sources', not of 'Other'" in capsys.readouterr().err
    assert main([str(suite), "--rerun-failed", str(pack), "--only", "x"]) == 2
    assert "--only and --rerun-failed go separately" in capsys.readouterr().err
    (pack / "junit.xml").write_text("<testsuites/>")
    assert main(["--rerun-failed", str(pack)]) == 2
    err = capsys.readouterr().err
    assert "the pack is not intact" in err and "junit.xml: changed" in err


def test_a_row_run_as_a_deployment_gets_its_name_and_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.deployments
    from prefect.states import Completed

    from flows.suite.flow import run_case
    from flows.suite.progress import Progress

    plan = load_suite(matrix_suite(tmp_path, [{"id": "r", "source": "returns"}], run_as="deployment"))
    sent: list[dict[str, Any]] = []
    run = SimpleNamespace(id="7f0c2c2e-1111-4222-8333-944455556666", state=Completed())
    monkeypatch.setattr(prefect.deployments, "run_deployment",
                        lambda name, parameters, **_: sent.append(parameters) or run)
    outcome = run_case(plan, plan.cases[0], tmp_path / "pack", Progress())
    assert outcome.status == "passed" and outcome.case == "Landing [r]"
    assert sent[0]["case_name"] == "Landing [r]" and sent[0]["variables"] == {"source": "returns"}
    assert sent[0]["evidence_dir"].endswith("landing-r")
