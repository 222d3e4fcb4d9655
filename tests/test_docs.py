"""The README's spec reference and spec.schema.json are generated from the models: they must be current."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from flows import docs
from tasks.base import REGISTRY


def test_spec_reference_and_schema_are_current() -> None:
    assert docs.main(["--check"]) == 0, "run `python -m flows.docs` and commit the result"


def test_every_field_of_every_kind_is_documented() -> None:
    readme = docs.README.read_text(encoding="utf-8")
    for kind in REGISTRY.values():
        assert f"### Step `{kind.kind}`" in readme
        for name, info in kind.model.model_fields.items():
            assert f"| `{name}` |" in readme
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
    with pytest.raises(SystemExit, match="#evidencesettings, which is no single heading"):
        docs.updated_readme(f"# Title\n{docs.START}{docs.END}\n")


def _markdown_pages() -> list[Path]:
    return [docs.README, *sorted((docs.ROOT / "docs").glob("**/*.md"))]


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
