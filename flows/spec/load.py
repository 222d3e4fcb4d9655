"""Reading and validating a case spec: every problem found in one pass (file, step, field), within bounded time,
before anything touches AWS; rendering a step's templates; SpecError.

Validation happens in full before anything touches AWS: the file (bounded: flows/spec/reader.py), credentials
anywhere (flows/spec/credential_guard.py), structure (pydantic, unknown keys rejected), unique step names, variables
used in templates, local files (confined and present: flows/spec/local_files.py), and a trial rendering of every
step (bounded: flows/spec/template_sandbox.py), all within VALIDATION_SECONDS. Every problem names the step (its
number and name) and the field.
"""

from __future__ import annotations

import copy
import time
import typing
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Union

import yaml
from pydantic import BaseModel, Field, ValidationError

from flows.spec import local_files
from flows.spec import reader as spec_file
from flows.spec.credential_guard import credential_problems
from flows.spec.model import (
    CaseSpec,
    ParallelGroup,
    PlacedStep,
    describe,
    iter_steps,
    step_kinds,
    step_union,
)
from flows.spec.template_sandbox import BoundedEnvironment
from flows.spec.template_secrets import Read, may_call, reads_in, template_texts
from flows.spec.templating import (
    BUILTINS,
    TemplateError,
    builtin_values,
    check_template,
    functions_called,
    is_templated,
    render,
    resolve_variables,
    variables_in,
)
from tasks.kit.secrets import MIN_SECRET_CHARS, mask, redact
from tasks.kit.step import REGISTRY, RESOURCE_NAME, StepBase

#: how long validation may take (checked between steps and while templates render)
VALIDATION_SECONDS = 10.0
#: how many problems an error message lists
SHOWN_PROBLEMS = 50
#: template functions whose result is a secret (a name calling one may not be a resource name)
SECRET_FUNCTIONS = frozenset({"secret", "ssm"})


if TYPE_CHECKING:
    # the union of the registered kinds is made at run time; statically, a step is a StepBase
    Step = StepBase
else:
    Step = step_union()


if TYPE_CHECKING:
    CaseStep = Union[StepBase, ParallelGroup]
else:
    CaseStep = Annotated[Union[tuple(k.model for k in step_kinds()) + (ParallelGroup,)], Field(discriminator="kind")]


# ---------------------------------------------------------------------------------------------- the errors
class SpecError(Exception):
    """The spec is invalid; ``problems`` are lines that each name the step and the field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        shown = [f"  - {p}" for p in problems[:SHOWN_PROBLEMS]]
        if len(problems) > SHOWN_PROBLEMS:
            shown.append(f"  ... and {len(problems) - SHOWN_PROBLEMS} more problem(s)")
        super().__init__(f"invalid spec {source}:\n" + "\n".join(shown))


class _Deadline:
    """When validation must stop (``time.monotonic()``); checked between steps and while templates render."""

    def __init__(self, source: str, seconds: float) -> None:
        self.source = source
        self.at = time.monotonic() + seconds
        self.seconds = seconds

    def check(self, where: str) -> None:
        if time.monotonic() > self.at:
            raise SpecError(self.source, [f"{where}: validation took longer than {self.seconds:g} s and was "
                                          "stopped (a template or a spec that is too big?)"])


def _where(raw: Any, loc: tuple[Any, ...]) -> tuple[str, str]:
    """Split a pydantic error location into ("step 3.1 'name' (kind)", "field.path")."""
    parts = list(loc)
    if not parts or parts[0] != "steps" or len(parts) < 2 or not isinstance(parts[1], int):
        return "case", ".".join(str(p) for p in parts) or "(top level)"
    steps = raw.get("steps") if isinstance(raw, dict) else None
    number, item = str(parts[1] + 1), _index(steps, parts[1])
    rest = parts[2:]
    if rest and isinstance(item, dict) and rest[0] == item.get("kind"):
        rest = rest[1:]
    if len(rest) >= 2 and rest[0] == "steps" and isinstance(rest[1], int) and isinstance(item, dict) \
            and item.get("kind") == "parallel":
        number += f".{rest[1] + 1}"
        item = _index(item.get("steps"), rest[1])
        rest = rest[2:]
        if rest and isinstance(item, dict) and rest[0] == item.get("kind"):
            rest = rest[1:]
    desc = f"step {number}"
    if isinstance(item, dict):
        if item.get("name"):
            desc += f" {item['name']!r}"
        if item.get("kind"):
            desc += f" ({item['kind']})"
    return desc, ".".join(str(p) for p in rest)


def _index(seq: Any, i: int) -> Any:
    return seq[i] if isinstance(seq, list) and 0 <= i < len(seq) else None


def _pydantic_problems(raw: Any, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        where, fld = _where(raw, tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid":
            kinds = ", ".join(sorted(REGISTRY) + ["parallel"])
            msg = f"unknown kind {err.get('input', {}).get('kind')!r} (known kinds: {kinds})" \
                if isinstance(err.get("input"), dict) else msg
        elif err["type"] == "union_tag_not_found":
            msg = "missing 'kind'"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here; check the spelling)"
        out.append(f"{where}: {('field ' + repr(fld) + ': ') if fld else ''}{msg}")
    return out


# ------------------------------------------------------------------------------------------- the semantics
def _strings(value: Any, path: str, skip: frozenset[str]) -> Iterator[tuple[str, str]]:
    """(field path, string) for every string in a step's data, except the untemplated top-level fields."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="python", exclude_none=True)
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            if not path and k in skip:
                continue
            yield from _strings(v, f"{path}.{k}" if path else str(k), frozenset())
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]", frozenset())


def _semantic_problems(spec: CaseSpec, spec_dir: Path, allowed: tuple[Path, ...], deadline: _Deadline) -> list[str]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(spec.steps, 1):
        if isinstance(item, ParallelGroup) and item.name:
            seen[item.name] = str(i)
    for placed in iter_steps(spec):
        name = placed.step.name
        if name:
            if name in seen:
                problems.append(f"{describe(placed)}: field 'name': {name!r} is already used by step {seen[name]}; "
                                "step names must be unique in a case")
            else:
                seen[name] = placed.number
    known = set(BUILTINS) | set(spec.variables)
    for name, value in spec.variables.items():
        if isinstance(value, str):
            try:
                check_template(value, set(BUILTINS) | set(list(spec.variables)[: list(spec.variables).index(name)]))
            except TemplateError as exc:
                problems.append(f"case: field 'variables.{name}': {exc}")
    for placed in iter_steps(spec):
        deadline.check(describe(placed))
        step = placed.step
        for fld, text in _strings(step, "", step.untemplated):
            deadline.check(describe(placed))
            try:
                check_template(text, known)
            except TemplateError as exc:
                problems.append(f"{describe(placed)}: field {fld!r}: {exc}")
        for fld in sorted(step.template_files):
            rel = getattr(step, fld, None)
            if not rel or is_templated(str(rel)):  # a templated path is checked once rendered
                continue
            try:
                (path,) = local_files.check_path(str(rel), spec_dir, allowed, must_exist=True, glob=False)
                check_template(local_files.read_template_file(path, str(rel)), known)
            except local_files.LocalPathError as exc:
                problems.append(f"{describe(placed)}: field {fld!r}: {exc}")
            except TemplateError as exc:
                problems.append(f"{describe(placed)}: field {fld!r} ({rel}): {exc}")
        for msg in step.case_checks(spec):
            problems.append(f"{describe(placed)}: {msg}")
    return problems


# ------------------------------------------------------------------------------------------------- loading
def parse_spec(raw: Any, source: str = "<spec>", spec_dir: Path | None = None,
               overrides: dict[str, str] | None = None, files_root: str | Path | None = None) -> CaseSpec:
    """Validate raw spec data in full (credentials, structure, names, variables, local files, a trial
    rendering) within VALIDATION_SECONDS; raise SpecError.

    Local files must lie under ``spec_dir`` (default: the working directory) or ``files_root``.
    """
    deadline = _Deadline(source, VALIDATION_SECONDS)
    if not isinstance(raw, dict):
        raise SpecError(source, ["case: the spec must be a mapping with 'case' and 'steps'"])
    try:
        spec_file.expanded_size(raw, spec_file.json_children, "spec")
    except spec_file.SpecFileError as exc:
        raise SpecError(source, [f"case: {exc}"]) from None
    overrides = overrides or {}
    found = [*credential_problems(raw), *credential_problems(overrides, ("variables",))]
    if found:
        raise SpecError(source, [_located(raw, loc, msg) for loc, msg in found])
    try:
        spec = CaseSpec.model_validate(raw)
    except ValidationError as exc:
        problems = _pydantic_problems(raw, exc)
        if any(err["type"] != "extra_forbidden" for err in exc.errors(include_url=False)):
            raise SpecError(source, problems) from None
        # only unknown fields: check the rest without them, so that one pass reports every problem (unless the
        # spec without them is no longer whole: a misspelt field that another check needed)
        stripped = _without(raw, [tuple(e["loc"]) for e in exc.errors(include_url=False)])
        try:
            CaseSpec.model_validate(stripped)
            parse_spec(stripped, source, spec_dir, overrides, files_root)
        except SpecError as more:
            problems += more.problems
        except ValidationError:
            pass
        raise SpecError(source, problems) from None
    unknown = sorted(set(overrides) - set(spec.variables))
    if unknown:
        raise SpecError(source, [f"--var {n}: no such variable in the case (declared: "
                                 f"{', '.join(spec.variables) or 'none'})" for n in unknown])
    if overrides:
        spec = spec.model_copy(update={"variables": {**spec.variables, **overrides}})
    folder = spec_dir or Path.cwd()
    if files_root and not Path(files_root).expanduser().is_dir():
        raise SpecError(source, [f"--files-root {files_root}: not a folder"])
    allowed = local_files.roots(folder, files_root)
    problems = _semantic_problems(spec, folder, allowed, deadline)
    if not problems:
        problems = _trial_render(spec, folder, allowed, deadline)
    if problems:
        raise SpecError(source, problems)
    return spec


def _without(raw: Any, locations: list[tuple[Any, ...]]) -> Any:
    """A copy of ``raw`` without the fields at ``locations`` (pydantic's, which may hold a union's tag)."""
    data = copy.deepcopy(raw)
    for loc in locations:
        node = data
        for part in loc[:-1]:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            # else: a union's tag (the step's kind), not a level of the data
        if isinstance(node, dict):
            node.pop(loc[-1], None)
    return data


def _located(raw: Any, loc: tuple[Any, ...], msg: str) -> str:
    where, fld = _where(raw, loc)
    return f"{where}: {('field ' + repr(fld) + ': ') if fld else ''}{msg}"


def _trial_render(spec: CaseSpec, spec_dir: Path, allowed: tuple[Path, ...], deadline: _Deadline) -> list[str]:
    """Render every step with placeholder run values, to catch what only shows after templating."""
    try:
        values = resolve_variables(spec.variables, builtin_values(spec.case, "00000000-0000-0000-0000-000000000000",
                                                                   datetime.now(timezone.utc), spec.timezone),
                                   deadline.at)
    except TemplateError as exc:
        return [f"case: field 'variables': {exc}"]
    problems = []
    renderings: list[tuple[PlacedStep, StepBase]] = []
    for placed in iter_steps(spec):
        deadline.check(describe(placed))
        try:
            rendered = render_step(placed.step, values, deadline.at)
            renderings.append((placed, rendered))
            paths = _local_file_problems(placed.step, rendered, spec_dir, allowed)
            checks = rendered.case_checks(spec)
            if not paths:  # the step's own checks may read its files: only once they are known to be allowed
                checks += rendered.rendered_checks(spec_dir, lambda t: render(t, values, deadline.at))
            problems += [f"{describe(placed)}: {msg}" for msg in paths + checks]
        except TemplateError as exc:
            problems.append(f"{describe(placed)}: {exc}")
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                fld = ".".join(str(p) for p in err["loc"])
                problems.append(f"{describe(placed)}: field {fld!r} after templating: "
                                f"{err['msg'].removeprefix('Value error, ')}")
    problems += _secrets_in_names(renderings, values, spec_dir)
    known = _known_secrets(spec, values, deadline)
    return [_masked(problem, known) for problem in problems] if known else problems


def _known_secrets(spec: CaseSpec, values: dict[str, Any], deadline: _Deadline) -> set[str]:
    """The secret values the case handles (SecureString values, sensitive fields), rendered: also those of a
    step whose rendering failed, so that no problem quotes one."""
    found = set()
    for placed in iter_steps(spec):
        for secret in placed.step.secrets():
            try:
                found.add(render(secret, values, deadline.at))
            except TemplateError:
                continue
    return {s for s in found if s}


def _masked(text: str, secrets: set[str]) -> str:
    """A problem's text with the case's secrets masked: searched for when long enough, and quoted (a rendered
    value a message shows, such as "(got 'value')") whatever their length."""
    text = redact(text, secrets)
    for secret in secrets:
        text = text.replace(repr(secret), mask(secret))
    return text


# ----------------------------------------------------------------------------------- secrets in resource names
def _marked(annotation: Any) -> bool:
    """Does a type (``S3Key``, ``list[S3Key] | None``, ...) carry the RESOURCE_NAME mark?"""
    if typing.get_origin(annotation) is Annotated:
        base, *extras = typing.get_args(annotation)
        return any(e is RESOURCE_NAME for e in extras) or _marked(base)
    return any(_marked(arg) for arg in typing.get_args(annotation))


def resource_names(model: BaseModel, path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, value) of every field of ``model`` (nested models too) marked RESOURCE_NAME."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name, None)
        where = f"{path}.{name}" if path else name
        if any(m is RESOURCE_NAME for m in info.metadata) or _marked(info.annotation):
            items = value if isinstance(value, list) else [value]
            yield from ((f"{where}[{i}]" if isinstance(value, list) else where, v)
                        for i, v in enumerate(items) if isinstance(v, str))
        elif isinstance(value, BaseModel):
            yield from resource_names(value, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from resource_names(item, f"{where}[{i}]")


def _secrets_in_names(renderings: list[tuple[PlacedStep, StepBase]], values: dict[str, Any],
                      spec_dir: Path) -> list[str]:
    """Refuse a secret (a SecureString value, a sensitive field's value) in a resource name: names travel
    unmasked (console links, lock names, events, the pack's step details), so a secret may not be part of one.

    Found by the variable or the secret function (SECRET_FUNCTIONS) a name's template uses (whatever the secret's
    length), and by value for secrets long enough to be searched for (MIN_SECRET_CHARS)."""
    secrets = {s for _, rendered in renderings for s in rendered.secrets() if s}
    secret_vars = {name for name, value in values.items() if isinstance(value, str) and value in secrets}
    long = [s for s in secrets if len(s) >= MIN_SECRET_CHARS]
    problems = []
    for placed, rendered in renderings:
        written = dict(resource_names(placed.step))
        names = [*resource_names(rendered), *(("(lock name)", r) for r in rendered.resources(spec_dir))]
        for fld, value in names:
            text = written.get(fld, "")
            used = sorted(variables_in(text) & secret_vars | functions_called(text) & SECRET_FUNCTIONS)
            if used or any(s in value for s in long):
                via = f" (through {{{{ {used[0]}{'()' if used[0] in SECRET_FUNCTIONS else ''} }}}})" if used else ""
                problems.append(f"{describe(placed)}: field {fld!r}: holds a secret value{via}: resource names "
                                "(buckets, S3 keys, parameter names, URIs) are never masked (they travel into links, "
                                "lock names, events and the evidence pack), so a secret may not be part of one")
                break
    return problems


def _field(model: Any, dotted: str) -> Any:
    """A field's value by dotted path (``expect.reconcile.file``), None when a part is missing."""
    value = model
    for part in dotted.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _local_file_problems(written: StepBase, rendered: StepBase, spec_dir: Path,
                         allowed: tuple[Path, ...]) -> list[str]:
    """Local paths of a step: confined once rendered; present when written without a template."""
    problems = []
    for fld in sorted(written.local_files | written.template_files):
        before, after = _field(written, fld), _field(rendered, fld)
        if before is None or after is None:
            continue
        pairs = zip(before, after) if isinstance(before, list) else [(before, after)]
        for i, (raw, value) in enumerate(pairs):
            where = f"{fld}[{i}]" if isinstance(before, list) else fld
            try:
                local_files.check_path(str(value), spec_dir, allowed, must_exist=not is_templated(str(raw)),
                                       glob=fld in written.local_files)
            except local_files.LocalPathError as exc:
                problems.append(f"field {where!r}: {exc}")
    return problems


def render_step(step: StepBase, values: dict[str, Any], deadline: float | None = None) -> StepBase:
    """A copy of the step with every templated string rendered (names and kind are left as they are)."""

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, str):
            try:
                return render(value, values, deadline)
            except TemplateError as exc:
                raise TemplateError(f"field {path!r}: {exc}") from None
        if isinstance(value, dict):
            return {k: (v if not path and k in step.untemplated else walk(v, f"{path}.{k}" if path else str(k)))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    data = step.model_dump(mode="python", exclude_unset=True)
    return type(step).model_validate(walk(data, ""))


def read_spec_file(path: Path) -> Any:
    """Read YAML or JSON (by extension; YAML is a superset, so anything else is read as YAML), bounded and
    strict (:mod:`flows.spec.reader`: size, UTF-8, duplicate keys, aliases, nodes, depth)."""
    try:
        text = spec_file.read_text(path)
        return spec_file.load_json(text) if path.suffix.lower() == ".json" else spec_file.load_yaml(text)
    except spec_file.SpecFileError as exc:
        raise SpecError(str(path), [f"case: {exc}"]) from None
    except ValueError as exc:  # json.JSONDecodeError
        raise SpecError(str(path), [f"case: not valid JSON: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [f"case: not valid YAML: {exc}"]) from None
    except OSError as exc:
        raise SpecError(str(path), [f"case: cannot read the spec file: {exc.strerror or exc}"]) from None


def load_spec(path: str | Path, overrides: dict[str, str] | None = None,
              files_root: str | Path | None = None) -> tuple[CaseSpec, Path]:
    """Load and validate a spec file; returns the spec and its folder (local paths are relative to it)."""
    path = Path(path)
    raw = read_spec_file(path)
    folder = path.resolve().parent
    return parse_spec(raw, str(path), folder, overrides, files_root), folder


def case_reads(case: CaseSpec, spec_dir: Path) -> list[Read]:
    """Every secret and parameter the case's templates read: its variables, its steps' fields and the template
    files they name (by a literal path), in order, each once."""
    texts = list(template_texts(case.variables))
    for placed in iter_steps(case):
        step = placed.step
        data = step.model_dump(mode="python", exclude_none=True)
        texts += [t for k, v in data.items() if k not in step.untemplated for t in template_texts(v)]
        for fld in sorted(step.template_files):
            rel = getattr(step, fld, None)
            if rel and "{{" not in str(rel) and "{%" not in str(rel):
                try:
                    texts.append((Path(spec_dir) / str(rel)).read_text(encoding="utf-8"))
                except OSError:
                    pass  # validation names a missing file; the runner reads it again
    parse = BoundedEnvironment().parse  # the templates passed validation: bounded, and they parse
    reads = [r for text in texts if may_call(text) for r in reads_in(parse(text))]
    return list(dict.fromkeys(reads))
