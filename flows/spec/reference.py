"""Generate the spec reference (docs/reference.md) and the JSON Schema files from the models themselves.

    python -m flows.spec.reference          rewrite docs/reference.md's generated section, spec.schema.json,
                                            suite.schema.json, and the evidence packs' report.schema.json and
                                            suite-report.schema.json (flows/evidence/pack/)
    python -m flows.spec.reference --check  exit 1 if any is out of date (the tests run this check)

So the documentation of every field can never drift from the code. Every model the reference links to has
its own heading, linked by the anchor GitHub gives it (``github_anchor``); a link to no heading stops the
generator, and the tests check every anchor and relative link of README.md and docs/*.md with
``heading_anchors`` and ``link_targets``, and that every ``python ...`` command they quote names a module or file
of the repository (``python_commands``).
"""

from __future__ import annotations

import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from flows.evidence.notify import NotifySettings
from flows.evidence.report import SCHEMA_FILE, SUITE_SCHEMA_FILE, case_report_schema, suite_report_schema
from flows.spec.model import (
    EXTRA_STEP_MODULES,
    STEP_MODULES_ENV,
    AwsSettings,
    CaseSpec,
    EvidenceSettings,
    ParallelGroup,
    json_schema,
    step_kinds,
)
from flows.spec.templating import BUILTINS
from flows.suite.spec import DeploymentSettings, MatrixCase, SuiteSpec, suite_json_schema

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "reference.md"  # its section between START and END is generated
SCHEMA = ROOT / "spec.schema.json"
SUITE_SCHEMA = ROOT / "suite.schema.json"
START, END = "<!-- spec-reference:start -->", "<!-- spec-reference:end -->"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:  # the step union (discriminated by kind), or a constrained type
        inner = typing.get_args(args[0]) or (args[0],)
        if all(isinstance(a, type) and issubclass(a, BaseModel) for a in inner):
            return "steps (a kind below)"
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(parts)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_name(args[1])}" if args else "map"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{github_anchor(_heading(annotation))})"
    return getattr(annotation, "__name__", str(annotation))


def _heading(model: type[BaseModel]) -> str:
    """The heading of the reference section that documents a model: links to the model point at its anchor."""
    named: dict[type[BaseModel], str] = {CaseSpec: "The case", AwsSettings: "`aws`", EvidenceSettings: "`evidence`",
                                         NotifySettings: "`notify`", ParallelGroup: "Step `parallel`",
                                         SuiteSpec: "The suite file", DeploymentSettings: "Suite `deployment`",
                                         MatrixCase: "Suite `cases` matrix entry"}
    named.update({kind.model: f"Step `{kind.kind}`" for kind in step_kinds()})
    return named.get(model, model.__name__)


# ------------------------------------------------------------------------------------------ anchors and links
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_ATX_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
_HTML_ID = re.compile(r"<a\s[^>]*\b(?:name|id)=\"([^\"]+)\"")
_INLINE_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\)")
_REF_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# `python -m pkg.mod ...` or `python path/to/file.py ...` (also python3, py, .venv\Scripts\python), prose and code
_PYTHON_COMMAND = re.compile(r"(?<![\w.-])(?:python3?|py)(?:\.exe)?[ \t]+"
                             r"(?:-m[ \t]+([A-Za-z_][\w.]*)|((?:[\w.-]+[/\\])*[\w.-]+\.py)(?![\w.]))")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading (before de-duplication): its text as rendered, lowercased, every
    character but letters, digits, ``_``, ``-`` and spaces dropped, spaces turned into ``-``."""
    text = _CODE_SPAN.sub(lambda m: m.group(2).strip(), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link or image: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"[*~]|(?<!\w)_+|_+(?!\w)", "", text)  # emphasis (an underscore inside a word stays)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _prose_lines(markdown: str):
    """The lines of a markdown text outside fenced code blocks."""
    fence = None
    for line in markdown.splitlines():
        if match := _FENCE.match(line):
            if fence is None:
                fence = match.group(1)
            elif line.strip().startswith(fence):
                fence = None
            continue
        if fence is None:
            yield line


def heading_anchors(markdown: str) -> list[str]:
    """Every anchor a markdown page has on GitHub, in order: its headings' (a repeated one gets ``-1``,
    ``-2``, ...) and explicit ``<a name=...>``/``id=...`` ones."""
    anchors: list[str] = []
    seen: dict[str, int] = {}
    for line in _prose_lines(markdown):
        anchors += _HTML_ID.findall(line)
        if match := _ATX_HEADING.match(line):
            base = anchor = github_anchor(match.group(1))
            while anchor in seen:  # as github-slugger does
                seen[base] += 1
                anchor = f"{base}-{seen[base]}"
            seen[anchor] = 0
            anchors.append(anchor)
    return anchors


def link_targets(markdown: str) -> list[str]:
    """The targets of a markdown page's links and images (inline and reference definitions), outside code."""
    targets: list[str] = []
    for line in _prose_lines(markdown):
        if match := _REF_DEFINITION.match(line):
            targets.append(match.group(1))
            continue
        prose = _CODE_SPAN.sub(lambda m: "x" if m.group(2).strip() else "", line)
        targets += _INLINE_LINK.findall(prose)
    return targets


def python_commands(markdown: str) -> list[tuple[str, str]]:
    """The Python commands a markdown page quotes, anywhere (code blocks included), in order: ``("module", name)``
    for ``python -m name``, ``("file", path)`` for ``python path.py`` (``\\`` turned into ``/``)."""
    return [("module", module) if module else ("file", path.replace("\\", "/"))
            for module, path in _PYTHON_COMMAND.findall(markdown)]


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "see below"
        return f"`{json.dumps(value)}`"
    if info.default is PydanticUndefined or info.default is None:
        return "–"
    return f"`{json.dumps(info.default)}`"


def model_table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> str:
    rows = ["| field | type | default | what it is |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        desc = (info.description or ("Selects the kind of step." if name == "kind" else ""))
        desc = desc.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | {_type_name(info.annotation)} | {_default(info)} | {desc} |")
    return "\n".join(rows)


def _nested_models() -> list[type[BaseModel]]:
    """Models used inside step kinds (e.g. wait settings, expectations), in order of first use."""
    seen: dict[type[BaseModel], None] = {}

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in seen:
                seen[annotation] = None
                for info in annotation.model_fields.values():
                    visit(info.annotation)
            return
        for arg in typing.get_args(annotation):
            visit(arg)

    for kind in step_kinds():
        for info in kind.model.model_fields.values():
            visit(info.annotation)
    return list(seen)


def reference() -> str:
    """The markdown of the spec reference."""
    parts = [
        START,
        "<!-- generated by `python -m flows.spec.reference` from the spec models: edit the models, not this "
        "section -->",
        "",
        f"## {_heading(CaseSpec)}",
        "",
        model_table(CaseSpec),
        "",
        f"## {_heading(AwsSettings)}",
        "",
        model_table(AwsSettings),
        "",
        f"## {_heading(EvidenceSettings)}",
        "",
        model_table(EvidenceSettings),
        "",
        f"## {_heading(NotifySettings)}",
        "",
        model_table(NotifySettings),
        "",
        "## Built-in variables",
        "",
        "| variable | value |",
        "|---|---|",
        *[f"| `{name}` | {text.replace('|', chr(92) + '|')} |" for name, text in BUILTINS.items()],
        "",
        "## Fields of every step",
        "",
        model_table(next(iter(step_kinds())).model, skip=tuple(
            n for n in next(iter(step_kinds())).model.model_fields
            if n not in ("name", "description", "continue_on_failure"))),
        "",
    ]
    for kind in step_kinds():
        doc = (kind.model.__doc__ or "").strip().split("\n")[0]
        parts += [f"## {_heading(kind.model)}", "", doc, "",
                  model_table(kind.model, skip=("name", "description", "continue_on_failure")), ""]
    parts += [f"## {_heading(ParallelGroup)}", "", (ParallelGroup.__doc__ or "").strip(), "",
              model_table(ParallelGroup), ""]
    for model in _nested_models():
        if _heading(model) != model.__name__:  # documented in its own section above
            continue
        parts += [f"## {model.__name__}", "", (model.__doc__ or "").strip().split("\n")[0], "",
                  model_table(model), ""]
    parts += [f"## {_heading(SuiteSpec)}", "", (SuiteSpec.__doc__ or "").strip(), " A folder of cases is a suite "
              "too (every case directly in it, default settings). Schema: `suite.schema.json`.", "",
              model_table(SuiteSpec), "",
              f"## {_heading(MatrixCase)}", "", (MatrixCase.__doc__ or "").strip(), "",
              model_table(MatrixCase), "",
              f"## {_heading(DeploymentSettings)}", "", (DeploymentSettings.__doc__ or "").strip(), "",
              model_table(DeploymentSettings), ""]
    parts.append(END)
    return "\n".join(parts)


def schema_text(schema: dict[str, Any] | None = None) -> str:
    return json.dumps(schema or json_schema(), indent=2, ensure_ascii=False) + "\n"


def updated_page(text: str, name: str = "docs/reference.md") -> str:
    """The page ``text`` with its section between the markers replaced by the current spec reference."""
    if START not in text or END not in text:
        raise SystemExit(f"{name} has no {START} ... {END} section")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    section = reference()
    anchors = heading_anchors(head + section + tail)
    broken = sorted({t for t in link_targets(section) if t.startswith("#")
                     and (t[1:] not in anchors or f"{t[1:]}-1" in anchors)})  # missing, or not the only one
    if broken:
        raise SystemExit(f"the spec reference links to {', '.join(broken)}, which is no single heading of {name}")
    return head + section + tail


def main(argv: list[str]) -> int:
    if EXTRA_STEP_MODULES:  # the generated files document the product's kinds only, never a team's own
        print(f"{STEP_MODULES_ENV} is set ({', '.join(EXTRA_STEP_MODULES)}): the reference and the schemas document "
              "the product's step kinds only; unset it and run again", file=sys.stderr)
        return 2
    page = REFERENCE.read_text(encoding="utf-8")
    wanted = {REFERENCE: updated_page(page), SCHEMA: schema_text(), SUITE_SCHEMA: schema_text(suite_json_schema()),
              SCHEMA_FILE: schema_text(case_report_schema()), SUITE_SCHEMA_FILE: schema_text(suite_report_schema())}
    if "--check" in argv:
        stale = [p.relative_to(ROOT).as_posix() for p, want in wanted.items()
                 if (p.read_text(encoding="utf-8") if p.exists() else "") != want]
        if stale:
            print(f"out of date: {', '.join(stale)}; run `python -m flows.spec.reference`", file=sys.stderr)
            return 1
        return 0
    for path, text in wanted.items():
        path.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {REFERENCE.relative_to(ROOT).as_posix()} (spec and suite reference), {SCHEMA.name}, "
          f"{SUITE_SCHEMA.name} and the reports' schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
