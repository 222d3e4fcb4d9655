"""A suite's local files outside its cases' folder (a cases/ + data/ layout): ``--files-root`` for every case of a
folder or a suite file, the suite file's ``files_root:`` (relative to it; the flag wins), passed on to the cases
run in this process and to the cases run as runs of a deployment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.cli import main
from flows.spec.load import SpecError
from flows.suite.spec import load_suite


def layout(root: Path, names: tuple[str, ...] = ("orders-a", "orders-b")) -> Path:
    """``root/cases/<name>.yaml`` each landing ``root/data/orders.csv`` (``../data/...``: outside the cases' folder)
    under its own prefix, then expecting it; returns ``root/cases``."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "orders.csv").write_text("id,amount\n1,10\n")
    (root / "cases").mkdir()
    for name in names:
        (root / "cases" / f"{name}.yaml").write_text(yaml.safe_dump({
            "case": name, "steps": [
                {"kind": "upload", "name": "land", "files": ["../data/orders.csv"], "bucket": "root-bucket",
                 "key_prefix": f"in/{name}/", "cleanup": True},
                {"kind": "expect_objects", "name": "landed", "bucket": "root-bucket",
                 "keys": [f"in/{name}/orders.csv"], "wait": {"timeout": 0.3, "initial": 0.05}}]}, sort_keys=False))
    return root / "cases"


def suite_file(root: Path, **fields: Any) -> Path:
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump({"suite": "Layout", "cases": ["cases/*.yaml"], **fields}))
    return path


# ------------------------------------------------------------------------------------------------ validation
def test_files_root_makes_a_folder_of_cases_valid_and_the_message_says_how(tmp_path: Path, capsys) -> None:
    cases = layout(tmp_path / "S")
    assert main([str(cases), "--validate"]) == 2
    err = capsys.readouterr().err
    assert "outside" in err and "for a suite, --files-root DIR or the suite file's files_root" in err
    assert main([str(cases), "--validate", "--files-root", str(tmp_path / "S" / "data")]) == 0
    assert "2 case(s)" in capsys.readouterr().out
    # relative to the working folder, as for one case
    assert main([str(cases), "--validate", "--files-root", "S/data"]) == 0
    assert main([str(cases), "--validate", "--files-root", "S/nothing"]) == 2
    assert "--files-root S/nothing: not a folder" in capsys.readouterr().err


def test_a_suite_file_takes_files_root_from_its_field_or_the_flag(tmp_path: Path, capsys) -> None:
    root = tmp_path / "S"
    layout(root)
    (root / "empty").mkdir()
    suite = suite_file(root)
    assert main([str(suite), "--validate"]) == 2 and "outside" in capsys.readouterr().err
    assert main([str(suite), "--validate", "--files-root", str(root / "data")]) == 0
    # the field, relative to the suite file's folder (not to the working folder)
    suite = suite_file(root, files_root="data")
    plan = load_suite(suite)
    assert plan.files_root == root / "data" and len(plan.cases) == 2
    assert main([str(suite), "--validate"]) == 0
    assert f"local files may also lie under {root / 'data'}" in capsys.readouterr().out
    # the flag wins over the field: the data is not under it, so the cases are invalid again
    assert main([str(suite), "--validate", "--files-root", str(root / "empty")]) == 2
    assert "outside" in capsys.readouterr().err
    suite = suite_file(root, files_root="empty")
    assert main([str(suite), "--validate"]) == 2
    assert main([str(suite), "--validate", "--files-root", str(root / "data")]) == 0
    assert load_suite(suite, files_root=root / "data").files_root == root / "data"


@pytest.mark.parametrize("value, message", [
    ("../data", "files_root '../data' must be relative to the suite file, inside its folder"),
    ("/etc", "files_root '/etc' must be relative to the suite file, inside its folder"),
    ("C:\\data", "must be relative to the suite file, inside its folder"),
    ("nothing", "files_root: 'nothing' is not a folder"),
    ("escape", "files_root: 'escape' resolves to"),
])
def test_a_bad_files_root_field_is_refused(tmp_path: Path, value: str, message: str) -> None:
    root = tmp_path / "S"
    layout(root)
    (root / "escape").symlink_to(tmp_path, target_is_directory=True)  # a folder inside that leads outside
    with pytest.raises(SpecError) as err:
        load_suite(suite_file(root, files_root=value))
    assert any(message in p for p in err.value.problems), err.value.problems


# ------------------------------------------------------------------------------------------------ running
@pytest.fixture
def root_bucket(prefect_harness, clients) -> Any:
    s3 = clients.client("s3")
    s3.create_bucket(Bucket="root-bucket")
    return s3


@pytest.mark.parametrize("how", ["folder and --files-root", "suite file's files_root"])
def test_a_suite_runs_its_cases_with_their_files_under_files_root(root_bucket, tmp_path: Path, capsys,
                                                                  how: str) -> None:
    cases = layout(tmp_path / "S")
    pack = tmp_path / "pack"
    if how == "folder and --files-root":
        args = [str(cases), "--files-root", str(tmp_path / "S" / "data")]
    else:
        args = [str(suite_file(tmp_path / "S", files_root="data"))]
    code = main([*args, "--evidence-dir", str(pack)])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "2 passed, 0 failed" in out.out
    report = json.loads((pack / "report.json").read_text())
    assert {c["case"]: c["status"] for c in report["cases"]} == {"orders-a": "passed", "orders-b": "passed"}
    assert root_bucket.list_objects_v2(Bucket="root-bucket").get("KeyCount") == 0  # every upload undone


def test_a_case_run_as_a_deployment_gets_files_root_relative_to_the_project(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers may run on Linux and have the project at the same relative path: the folder goes to them as a
    POSIX path relative to the working folder (the suite's cases' paths are given the same way)."""
    import prefect.deployments
    from prefect.states import Completed

    from flows.suite.flow import project_path, run_case
    from flows.suite.progress import Progress

    layout(tmp_path / "S")
    plan = load_suite(suite_file(tmp_path / "S", files_root="data", run_as="deployment"))
    sent: list[dict[str, Any]] = []

    class Run:
        id = "7f0c2c2e-1111-4222-8333-944455556666"
        state = Completed()

    def run_deployment(name: str, parameters: dict[str, Any], **_: Any) -> Run:
        sent.append(parameters)
        return Run()

    monkeypatch.setattr(prefect.deployments, "run_deployment", run_deployment)
    outcome = run_case(plan, plan.cases[0], tmp_path / "pack", Progress())
    assert outcome.status == "passed", outcome.reason
    assert sent[0]["files_root"] == "S/data" and sent[0]["spec"].endswith("orders-a.yaml")
    assert project_path(tmp_path / "S" / "data") == "S/data"
    assert project_path(tmp_path.parent) == tmp_path.parent.resolve().as_posix()  # outside: absolute
