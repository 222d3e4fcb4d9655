"""The spec reference (docs/reference.md) and spec.schema.json are generated from the models: they must be current;
and the documentation (README.md, docs/*.md) holds together: links and anchors resolve, every page is reachable
from the README, and every Python command it quotes names a module or file that exists."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from flows.spec import reference as docs
from tasks.kit.step import REGISTRY


def test_spec_reference_and_schema_are_current() -> None:
    assert docs.main(["--check"]) == 0, "run `python -m flows.spec.reference` and commit the result"


def test_every_field_of_every_kind_is_documented() -> None:
    reference = docs.REFERENCE.read_text(encoding="utf-8")
    for kind in REGISTRY.values():
        assert f"## Step `{kind.kind}`" in reference
        for name, info in kind.model.model_fields.items():
            assert f"| `{name}` |" in reference
            assert info.description or name == "kind", f"{kind.kind}.{name} has no description"


# ------------------------------------------------------------------------------------------- links resolve
def test_anchors_follow_githubs_rules() -> None:
    assert docs.github_anchor("S3: `upload` and `expect_objects`") == "s3-upload-and-expect_objects"
    assert docs.github_anchor("Local Prefect server, on Windows first") == "local-prefect-server-on-windows-first"
    assert docs.github_anchor("`aws`") == "aws"
    assert docs.github_anchor("Step `set_parameters`") == "step-set_parameters"
    assert docs.github_anchor("A [linked](https://x.org) *bold* -- C++ & Ünïcode") == "a-linked-bold----c--ünïcode"
    page = "# Title\n## Usage\n```bash\n# not a heading\n```\n## Usage\n### Usage\n## Usage-1\n<a name=\"here\"></a>\n"
    assert docs.heading_anchors(page) == ["title", "usage", "usage-1", "usage-2", "usage-1-1", "here"]


def test_link_targets_skip_code() -> None:
    page = ("See [a](#a), ![img](pics/x.png) and [`b.yaml`](examples/b.yaml \"title\").\n"
            "`[not](#a-link)` here\n```md\n[nor](#this)\n```\n[ref]: docs/c.md#part\n")
    assert docs.link_targets(page) == ["#a", "pics/x.png", "examples/b.yaml", "docs/c.md#part"]


def test_the_generator_refuses_a_link_to_no_heading(monkeypatch: pytest.MonkeyPatch) -> None:
    section = f"{docs.START}\n### `aws`\n[AwsSettings](#aws) [EvidenceSettings](#evidencesettings)\n{docs.END}"
    monkeypatch.setattr(docs, "reference", lambda: section)
    with pytest.raises(SystemExit, match="#evidencesettings, which is no single heading of docs/reference.md"):
        docs.updated_page(f"# Title\n{docs.START}{docs.END}\n")


def test_the_generated_section_is_in_docs_reference_not_the_readme() -> None:
    assert docs.START in docs.REFERENCE.read_text(encoding="utf-8")
    assert docs.START not in docs.README.read_text(encoding="utf-8")


def test_the_staleness_check_sees_an_edited_reference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stale = tmp_path / "reference.md"
    stale.write_text(docs.REFERENCE.read_text(encoding="utf-8").replace("| `case` |", "| `kase` |"), encoding="utf-8")
    monkeypatch.setattr(docs, "REFERENCE", stale)
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    assert docs.main(["--check"]) == 1


def test_the_reports_schemas_are_generated_from_their_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """flows/evidence/pack/report.schema.json and suite-report.schema.json are the models' schemas; an edited one is stale."""
    from flows.evidence import report as report_model

    assert json.loads(report_model.SCHEMA_FILE.read_text(encoding="utf-8")) == report_model.case_report_schema()
    assert json.loads(report_model.SUITE_SCHEMA_FILE.read_text(encoding="utf-8")) == \
        report_model.suite_report_schema()
    for name in ("SCHEMA_FILE", "SUITE_SCHEMA_FILE"):
        with monkeypatch.context() as patch:
            stale = tmp_path / f"{name}.json"
            stale.write_text(getattr(docs, name).read_text(encoding="utf-8").replace('"schema_version"', '"v"'),
                             encoding="utf-8")
            patch.setattr(docs, name, stale)
            patch.setattr(docs, "ROOT", tmp_path)
            assert docs.main(["--check"]) == 1


def _docs_pages() -> list[Path]:
    return sorted((docs.ROOT / "docs").glob("**/*.md"))


def _markdown_pages() -> list[Path]:
    return [docs.README, *_docs_pages(), *sorted((docs.ROOT / "deployments").glob("*.md"))]


def test_the_docs_pages_are_checked_and_each_is_linked_from_the_readme() -> None:
    pages = _docs_pages()
    assert docs.REFERENCE in pages and len(pages) >= 8, "the docs/ pages are missing: the link tests would check nothing"
    linked = {(docs.README.parent / t.partition("#")[0]).resolve()
              for t in docs.link_targets(docs.README.read_text(encoding="utf-8")) if t.startswith("docs/")}
    assert [p.relative_to(docs.ROOT).as_posix() for p in pages if p.resolve() not in linked] == []


@pytest.mark.parametrize("page", _markdown_pages(), ids=lambda p: p.relative_to(docs.ROOT).as_posix())
def test_every_in_page_and_relative_link_resolves(page: Path) -> None:
    """Every ``#anchor`` names a heading of the page, and every relative link a file of the repository (and,
    with ``#anchor`` on a markdown file, one of its headings); anchors as GitHub computes them."""
    broken = []
    for target in docs.link_targets(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ...: not checked here
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / unquote(path)).resolve() if path else page
        if not file.exists() or docs.ROOT not in (file, *file.parents):
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in docs.heading_anchors(file.read_text(encoding="utf-8")):
            broken.append(f"{target} (no such heading)")
    assert broken == []


# ------------------------------------------------------------------------------- quoted commands exist
def test_python_commands_are_found_in_prose_and_code() -> None:
    page = ("Run `python -m flows.demo`, then `py quickstart.py test -k spec`.\n```\n"
            "python3 deployments\\serve.py --list\n.venv\\Scripts\\python -m pip install -e .\n"
            "python -m flows.pipeline_test my_case.yaml\n```\nInstall python.exe to PATH; Python 3.11 is fine.\n")
    assert docs.python_commands(page) == [("module", "flows.demo"), ("file", "quickstart.py"),
                                          ("file", "deployments/serve.py"), ("module", "pip"),
                                          ("module", "flows.pipeline_test")]


def _command_target_exists(kind: str, name: str) -> bool:
    """A file of the repository; a module of the repository (``flows.demo``: a ``.py`` file or a package), or,
    when its top-level name is not the repository's, an installed one (``pytest``, ``pip``, ``venv``)."""
    if kind == "file":
        return (docs.ROOT / name).is_file()
    path = docs.ROOT.joinpath(*name.split("."))
    top = docs.ROOT / name.split(".")[0]
    if top.is_dir() or top.with_suffix(".py").is_file():
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
    return importlib.util.find_spec(name) is not None


@pytest.mark.parametrize("page", _markdown_pages(), ids=lambda p: p.relative_to(docs.ROOT).as_posix())
def test_every_quoted_python_command_names_a_module_or_file_that_exists(page: Path) -> None:
    commands = docs.python_commands(page.read_text(encoding="utf-8"))
    assert [f"python {'-m ' if kind == 'module' else ''}{name}" for kind, name in commands
            if not _command_target_exists(kind, name)] == []


def test_a_command_naming_nothing_is_caught() -> None:
    assert _command_target_exists("module", "flows.pipeline_test") and _command_target_exists("module", "pytest")
    assert not _command_target_exists("module", "flows.no_such_module")
    assert not _command_target_exists("module", "flows.pipeline_test.sub")
    assert not _command_target_exists("file", "deployments/no_such.py")


def test_the_readme_quotes_its_commands() -> None:
    commands = docs.python_commands(docs.README.read_text(encoding="utf-8"))
    assert ("file", "quickstart.py") in commands and ("module", "flows.pipeline_test") in commands


ROOT = Path(__file__).resolve().parent.parent


def _code_map() -> list[tuple[str, str]]:
    """docs/development.md's code map: (path, the line) per entry; nesting by two spaces a level, an entry may
    name several files ("ssm.py, ssm_restore.py")."""
    page = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    block = page.split("## Code map", 1)[1].split("```", 2)[1]
    entries: list[tuple[str, str]] = []
    parents: list[str] = []
    for line in block.splitlines():
        if not line.strip() or line.startswith(" " * 12):  # a blank line, or a description's continuation
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        names = re.split(r",\s*", re.split(r"\s{2,}", line.strip())[0])
        parents = parents[:depth]
        for name in names:
            entries.append(("".join(parents) + name, line))
        if names[-1].endswith("/"):
            parents.append(names[-1])
    return entries


def test_every_code_map_entry_exists_and_every_module_is_on_it() -> None:
    entries = _code_map()
    missing = [f"{path}  ({line.strip()[:60]})" for path, line in entries
               if not path.startswith(("deployments/,", "prefect.yaml")) and not (ROOT / path).exists()]
    assert not missing, f"code map entries that do not exist: {missing}"
    mapped = {path for path, _ in entries}
    text = (ROOT / "docs" / "development.md").read_text(encoding="utf-8").split("## Code map", 1)[1].split("```", 2)[1]
    unmapped = [str(p.relative_to(ROOT)) for package in ("flows", "tasks") for p in sorted((ROOT / package).rglob("*.py"))
                if p.name != "__init__.py" and str(p.relative_to(ROOT)) not in mapped
                and not (p.parent.relative_to(ROOT).as_posix() + "/" in mapped and p.name in text)]
    assert not unmapped, f"modules the code map does not name: {unmapped}"
