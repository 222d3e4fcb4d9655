"""The README's spec reference and spec.schema.json are generated from the models: they must be current."""

from __future__ import annotations

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
