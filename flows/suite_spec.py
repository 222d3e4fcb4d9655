"""A suite: many cases run as one, from a folder of cases or a suite file; what it is and how it is validated.

A suite file (YAML or JSON, read with the same bounded reader as a case, :mod:`flows.spec_file`) names its cases
(paths and globs relative to the file), the tags to select, variables for an environment that apply to every case
that declares them, ``max_parallel``, the folder local files may also lie under (``files_root``, as ``--files-root``
does for one case), and how the cases run (in this process, or as runs of a deployment). A folder is a suite of every
``*.yaml``/``*.yml``/``*.json`` case directly in it.

:func:`load_suite` validates every case before any runs: one invalid case makes the suite invalid
(:class:`flows.spec.SpecError`, naming the file, the step and the field).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from flows.credentials import credential_problems
from flows.spec import CaseSpec, SpecError, load_spec, read_spec_file
from tasks.base import SpecModel

#: at most this many cases in one suite (a glob gone wrong must not validate a whole disk)
MAX_CASES = 500
#: file names a folder suite takes as cases
CASE_SUFFIXES = (".yaml", ".yml", ".json")


class DeploymentSettings(SpecModel):
    """Run each case as a flow run of a deployment of the `pipeline-test` flow, so a work pool spreads them over
    its workers; the suite waits for each and collects its result into the suite's evidence."""

    name: str = Field("pipeline-test/suite-case", pattern=r"^[^/]+/[^/]+$",
                      description="The deployment, as `flow-name/deployment-name`; it runs `pipeline-test` "
                      "(flows/pipeline_test.py:pipeline_test). Each run gets the case's path (relative to the "
                      "suite file, as the worker's working folder sees it), the variables and an evidence folder "
                      "as parameters.")
    timeout: float = Field(3600.0, gt=0, le=86400, description="How long (seconds) the suite waits for one "
                           "case's flow run to end (queued time included); then the case counts as not run.")
    poll_interval: float = Field(2.0, gt=0, le=60, description="How often (seconds) the suite asks the Prefect "
                                 "API whether a case's flow run has ended.")


class SuiteSpec(SpecModel):
    """A suite: which cases to run together, for which environment, how many at once."""

    suite: str = Field(..., min_length=1, max_length=100, description="The suite's name (shown in the UI, used "
                       "in its artifact key and evidence folder).")
    description: str = Field("", description="What the suite covers.")
    cases: list[str] = Field(..., min_length=1, max_length=200, description="Case files: paths or globs "
                             "(`cases/*.yaml`, `**/orders_*.yaml`) relative to the suite file. A path that matches "
                             "no file is an error; a case matched twice runs once.")
    tags: list[str] = Field(default_factory=list, description="Run only the cases that have at least one of "
                            "these tags (the case's `tags:`); empty: every case. `--tag` on the command line "
                            "replaces this list.")
    variables: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Values for the environment (bucket names, prefixes), given to every "
        "case that declares the variable (others ignore it); `--var name=value` overrides them.")
    max_parallel: int = Field(4, ge=1, le=64, description="How many cases run at the same time (`--max-parallel` "
                              "overrides). Cases that change the same SSM parameter or S3 prefix still take turns "
                              "on their locks. Against a Prefect server on SQLite keep it at 4 (more cases creating "
                              "their runs at once now and then stall that server for up to a minute); on PostgreSQL, "
                              "more.")
    run_as: Literal["process", "deployment"] = Field(
        "process", description="`process`: every case a subflow run in this process (threads); `deployment`: "
        "every case a flow run of `deployment`, picked up by the work pool's workers.")
    deployment: DeploymentSettings = Field(default_factory=DeploymentSettings,
                                           description="The deployment that runs the cases when `run_as` is "
                                           "`deployment`.")
    files_root: str | None = Field(
        None, min_length=1, max_length=1024,
        description="A folder, relative to the suite file and inside its folder (`data`), that local files named by "
        "every case's steps may also lie under besides the case's own folder (a `cases/` + `data/` layout), as "
        "`--files-root` does for one case. `--files-root DIR` on the command line wins over it.")

    @field_validator("cases")
    @classmethod
    def _relative(cls, v: list[str]) -> list[str]:
        for pattern in v:
            if not pattern.strip() or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
                raise ValueError(f"case path {pattern!r} must be relative to the suite file, inside its folder")
        return v

    @field_validator("files_root")
    @classmethod
    def _root_inside(cls, v: str | None) -> str | None:
        if v is not None and (Path(v).is_absolute() or PureWindowsPath(v).anchor
                              or ".." in Path(v.replace("\\", "/")).parts):
            raise ValueError(f"files_root {v!r} must be relative to the suite file, inside its folder (a folder "
                             "elsewhere: --files-root DIR on the command line)")
        return v


@dataclass
class SuiteCase:
    """One validated case of a suite."""

    path: Path
    spec: CaseSpec
    variables: dict[str, str] = field(default_factory=dict)


@dataclass
class SuitePlan:
    """A validated suite: its settings and the cases it runs (in order)."""

    spec: SuiteSpec
    source: Path
    folder: Path
    cases: list[SuiteCase]
    skipped: list[Path] = field(default_factory=list)  # cases left out by the tags
    files_root: Path | None = None  # --files-root, else the suite file's files_root (relative to its folder)


def is_suite_file(path: Path) -> bool:
    """A folder, or a file whose top level has ``suite:`` (a case has ``case:``)."""
    if path.is_dir():
        return True
    try:
        raw = read_spec_file(path)
    except SpecError:
        return False
    return isinstance(raw, dict) and "suite" in raw and "case" not in raw


def _suite_of(path: Path) -> tuple[SuiteSpec, Path]:
    if path.is_dir():
        return SuiteSpec.model_validate({"suite": path.resolve().name or "suite",
                                         "cases": [f"*{s}" for s in CASE_SUFFIXES]}), path
    raw = read_spec_file(path)
    if not isinstance(raw, dict):
        raise SpecError(str(path), ["suite: a suite file must be a mapping with 'suite' and 'cases'"])
    found = list(credential_problems(raw))
    if found:
        raise SpecError(str(path), [f"{'.'.join(map(str, loc)) or 'suite'}: {msg}" for loc, msg in found])
    try:
        return SuiteSpec.model_validate(raw), path.parent
    except ValidationError as exc:
        raise SpecError(str(path), [f"suite: field {'.'.join(map(str, e['loc'])) or '(top level)'!r}: {e['msg']}"
                                    for e in exc.errors(include_url=False)]) from None


def case_files(spec: SuiteSpec, folder: Path, source: str, strict: bool = True) -> list[Path]:
    """The files the suite's paths and globs name, in order, each once; SpecError for one that matches none."""
    found: dict[Path, None] = {}
    problems = []
    root = folder.resolve()
    for pattern in spec.cases:
        matches = sorted(Path(m) for m in glob.glob(str(folder / pattern), recursive=True) if Path(m).is_file())
        if not glob.has_magic(pattern):
            matches = [folder / pattern] if (folder / pattern).is_file() else []
        matches = [m for m in matches if m.suffix.lower() in CASE_SUFFIXES and m.resolve() != Path(source).resolve()
                   and m.resolve().is_relative_to(root)]
        if not matches and strict:
            problems.append(f"cases: {pattern!r} matches no case file under {folder}")
        for m in matches:
            found.setdefault(m, None)
            if len(found) > MAX_CASES:
                raise SpecError(source, [f"cases: more than {MAX_CASES} case files; split the suite"])
    if problems:
        raise SpecError(source, problems)
    return list(found)


def suite_files_root(spec: SuiteSpec, folder: Path, source: str, files_root: str | Path | None) -> Path | None:
    """The folder every case's local files may also lie under: ``files_root`` (``--files-root``, relative to the
    working folder) when given, else the suite file's ``files_root`` (relative to its folder, and inside it);
    SpecError when it is not a folder."""
    if files_root:
        root = Path(files_root).expanduser()
        if not root.is_dir():
            raise SpecError(source, [f"--files-root {files_root}: not a folder"])
        return root
    if spec.files_root is None:
        return None
    root = folder / spec.files_root.replace("\\", "/")
    if not root.is_dir():
        raise SpecError(source, [f"files_root: {spec.files_root!r} is not a folder (looked for {root})"])
    if not root.resolve().is_relative_to(folder.resolve()):
        raise SpecError(source, [f"files_root: {spec.files_root!r} resolves to {root.resolve()}, outside the suite "
                                 f"file's folder {folder.resolve()} (a folder elsewhere: --files-root DIR)"])
    return root


def load_suite(path: str | Path, tags: list[str] | None = None, overrides: dict[str, str] | None = None,
               max_parallel: int | None = None, files_root: str | Path | None = None) -> SuitePlan:
    """Read a suite (folder or file) and validate every case it selects; SpecError naming every invalid case.

    ``tags`` (the CLI's ``--tag``) replace the suite's; ``overrides`` (``--var``) override its variables; each case
    gets the variables it declares; ``files_root`` (``--files-root``) replaces the suite file's. Nothing runs
    here."""
    path = Path(path)
    spec, folder = _suite_of(path)
    updates: dict[str, Any] = {}
    if tags:
        updates["tags"] = tags
    if overrides:
        updates["variables"] = {**spec.variables, **overrides}
    if max_parallel is not None:
        if max_parallel < 1:
            raise SpecError(str(path), ["--max-parallel: must be at least 1"])
        updates["max_parallel"] = max_parallel
    spec = spec.model_copy(update=updates)
    root = suite_files_root(spec, folder, str(path), files_root)
    files = case_files(spec, folder, str(path), strict=not path.is_dir())
    cases: list[SuiteCase] = []
    skipped: list[Path] = []
    problems: list[str] = []
    wanted = set(spec.tags)
    declared_anywhere: set[str] = set()
    for file in files:
        try:
            raw = read_spec_file(file)
            declared = raw.get("variables") if isinstance(raw, dict) else None
            names = set(declared) if isinstance(declared, dict) else set()
            declared_anywhere |= names
            variables = {k: str(v) for k, v in spec.variables.items() if k in names}
            case, _ = load_spec(file, variables, root)
        except SpecError as exc:
            problems += [f"{exc.source}: {p}" for p in exc.problems]
            continue
        if wanted and not wanted & set(case.tags):
            skipped.append(file)
            continue
        cases.append(SuiteCase(file, case, variables))
    problems += [f"variables: {name!r} is declared by no case of the suite (a typo?)"
                 for name in sorted(set(spec.variables) - declared_anywhere)]
    if problems:
        raise SpecError(str(path), problems)
    first: dict[str, Path] = {}
    for c in cases:
        if c.spec.case in first:
            problems.append(f"{c.path}: case name {c.spec.case!r} is also the name of {first[c.spec.case]}; "
                            "a suite's cases need different names (their evidence and artifacts are by name)")
        first.setdefault(c.spec.case, c.path)
    if problems:
        raise SpecError(str(path), problems)
    if not cases:
        if wanted:
            why = f"cases: no case has any of the tags {sorted(wanted)}"
        elif path.is_dir():
            why = (f"the folder {path} holds no case file ({', '.join('*' + s for s in CASE_SUFFIXES)}); "
                   "give a folder of cases, a suite file or a case file")
        else:
            why = "cases: the suite has no case"
        raise SpecError(str(path), [why])
    return SuitePlan(spec, path, folder, cases, skipped, root)


def suite_json_schema() -> dict[str, Any]:
    """The JSON Schema of a suite file."""
    schema = SuiteSpec.model_json_schema()
    schema["title"] = "Pipeline test suite"
    return schema
