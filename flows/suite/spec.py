"""A suite: many cases run as one, from a folder of cases or a suite file; what it is and how it is validated.

A suite file (YAML or JSON, read with the same bounded reader as a case, :mod:`flows.spec.reader`) names its cases
(paths and globs relative to the file), the tags to select, variables for an environment that apply to every case
that declares them, ``max_parallel``, the folder local files may also lie under (``files_root``, as ``--files-root``
does for one case), and how the cases run (in this process, or as runs of a deployment). A folder is a suite of every
``*.yaml``/``*.yml``/``*.json`` case directly in it.

:func:`load_suite` validates every case before any runs: one invalid case makes the suite invalid
(:class:`flows.spec.load.SpecError`, naming the file, the step and the field).
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import io
import re
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from flows.spec import reader as spec_file
from flows.spec.credential_guard import credential_problems
from flows.spec.load import SpecError, load_spec, read_spec_file
from flows.spec.model import CaseSpec
from flows.spec.slugs import slug
from flows.suite.trends import TREND_RUNS
from tasks.kit.step import SpecModel

#: at most this many cases in one suite (a glob gone wrong must not validate a whole disk)
MAX_CASES = 500
#: file names a folder suite takes as cases
CASE_SUFFIXES = (".yaml", ".yml", ".json")
#: file names a matrix file may have (a CSV table, or a YAML/JSON list of mappings)
MATRIX_SUFFIXES = (".csv", ".yaml", ".yml", ".json")
#: a row id made of the row's values is cut to this many characters
ROW_ID_MAX = 40
#: the columns of a matrix row that are not variables: its id and its tags
ROW_KEYS = ("id", "tags")


def _inside(path: str) -> bool:
    """A path relative to the suite file, inside its folder."""
    return bool(path.strip()) and not Path(path).is_absolute() and not PureWindowsPath(path).anchor \
        and ".." not in Path(path.replace("\\", "/")).parts


class MatrixCase(SpecModel):
    """One case run once per row of a table (a table of sources): each row's values override the case's declared
    variables, and each row is its own case run, named `<case> [<row id>]`."""

    path: str = Field(..., min_length=1, max_length=1024, description="The case file, relative to the suite file "
                      "(no glob). A glob entry of `cases:` that also matches it does not run it a second time "
                      "without a row.")
    matrix: list[dict[str, Any]] | str = Field(
        ..., description="The rows: a list of mappings (`{source: orders, expected_rows: 5}`), or a CSV file (a "
        "header row of column names) or YAML/JSON file (a list of mappings) of them, relative to the suite file. "
        "Every key names a variable the case declares, except `id` (the row's id in its name; default: its values "
        "joined) and `tags` (the row's tags besides the case's, for `--tag`; in a CSV separated by spaces or `;`). "
        "An empty CSV cell leaves the variable as it is.")

    @field_validator("path")
    @classmethod
    def _path_inside(cls, v: str) -> str:
        if not _inside(v) or glob.has_magic(v):
            raise ValueError(f"matrix case path {v!r} must be one file relative to the suite file, inside its folder")
        return v

    @field_validator("matrix")
    @classmethod
    def _rows(cls, v: list[dict[str, Any]] | str) -> list[dict[str, Any]] | str:
        if isinstance(v, str):
            if not _inside(v) or Path(v).suffix.lower() not in MATRIX_SUFFIXES:
                raise ValueError(f"matrix file {v!r} must be a {'/'.join(MATRIX_SUFFIXES)} file relative to the "
                                 "suite file, inside its folder")
        elif not 1 <= len(v) <= MAX_CASES:
            raise ValueError(f"a matrix has 1 to {MAX_CASES} rows")
        return v


@dataclass
class MatrixRow:
    """One row of a matrix: its id, the variables it sets, its own tags and where it was written (for errors)."""

    id: str
    values: dict[str, str]
    tags: list[str]
    where: str


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
    cases: list[str | MatrixCase] = Field(
        ..., min_length=1, max_length=200, description="Case files: paths or globs (`cases/*.yaml`, "
        "`**/orders_*.yaml`) relative to the suite file, or a case run once per row of a table "
        "(`{path: cases/x.yaml, matrix: [...]}`). A path that matches no file is an error; a case matched twice runs "
        "once.")
    tags: list[str] = Field(default_factory=list, description="Run only the cases that have at least one of "
                            "these tags (the case's `tags:`); empty: every case. `--tag` on the command line "
                            "replaces this list.")
    variables: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Values for the environment (bucket names, prefixes), given to every "
        "case that declares the variable (others ignore it); `--var name=value` overrides them.")
    max_parallel: int | None = Field(None, ge=1, le=64, description="How many cases run at the same time "
                                     "(`--max-parallel` overrides); unset: what the Prefect server holds (4 on "
                                     "SQLite, 15 on PostgreSQL with Prefect's default connection pool), and never "
                                     "more (the suite's log says when it runs fewer than asked). Cases that change "
                                     "the same SSM parameter or S3 prefix still take turns on their locks.")
    run_as: Literal["process", "deployment"] = Field(
        "process", description="`process`: every case a subflow run in this process (threads); `deployment`: "
        "every case a flow run of `deployment`, picked up by the work pool's workers.")
    deployment: DeploymentSettings = Field(default_factory=DeploymentSettings,
                                           description="The deployment that runs the cases when `run_as` is "
                                           "`deployment`.")
    trend_runs: int = Field(TREND_RUNS, ge=2, le=100, description="How many runs (this one included) each case's "
                            "trend covers: pass rate, p50/p95 duration, slow and flaky marks, read from the suite's "
                            "earlier evidence packs in the same evidence folder.")
    files_root: str | None = Field(
        None, min_length=1, max_length=1024,
        description="A folder, relative to the suite file and inside its folder (`data`), that local files named by "
        "every case's steps may also lie under besides the case's own folder (a `cases/` + `data/` layout), as "
        "`--files-root` does for one case. `--files-root DIR` on the command line wins over it.")

    @field_validator("cases")
    @classmethod
    def _relative(cls, v: list[str | MatrixCase]) -> list[str | MatrixCase]:
        for pattern in v:
            if isinstance(pattern, str) and (not pattern.strip() or Path(pattern).is_absolute()
                                             or ".." in Path(pattern).parts):
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
    spec: CaseSpec  # a matrix row's: named `<case> [<row id>]`
    variables: dict[str, str] = field(default_factory=dict)
    row: str | None = None  # the matrix row's id

    @property
    def name(self) -> str:
        return self.spec.case


@dataclass
class SuitePlan:
    """A validated suite: its settings and the cases it runs (in order)."""

    spec: SuiteSpec
    source: Path
    folder: Path
    cases: list[SuiteCase]
    skipped: list[Path] = field(default_factory=list)  # cases (and matrix rows: `path [row]`) left out
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


def suite_name(path: Path) -> str:
    """The name of a suite (folder or file); SpecError when it is not a valid suite file."""
    return _suite_of(path)[0].suite


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
    named = {(folder / m.path).resolve() for m in spec.cases if isinstance(m, MatrixCase)}
    for pattern in spec.cases:
        if not isinstance(pattern, str):
            continue
        matches = sorted(Path(m) for m in glob.glob(str(folder / pattern), recursive=True) if Path(m).is_file())
        if not glob.has_magic(pattern):
            matches = [folder / pattern] if (folder / pattern).is_file() else []
        matches = [m for m in matches if m.suffix.lower() in CASE_SUFFIXES and m.resolve() != Path(source).resolve()
                   and m.resolve().is_relative_to(root)]
        if not matches and strict:
            problems.append(f"cases: {pattern!r} matches no case file under {folder}")
        for m in matches:
            if m.resolve() in named:
                continue  # a matrix case runs only as its rows
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


def _raw_rows(entry: MatrixCase, folder: Path, source: str, index: int) -> tuple[list[Any], str]:
    """The matrix's rows as written (inline, or read from its file, bounded as a case file is) and what to call
    them in errors."""
    where = f"cases[{index}].matrix"
    if not isinstance(entry.matrix, str):
        return list(entry.matrix), where
    path = folder / entry.matrix.replace("\\", "/")
    if not path.resolve().is_relative_to(folder.resolve()):
        raise SpecError(source, [f"{where}: {entry.matrix!r} resolves outside the suite file's folder"])
    try:
        if path.suffix.lower() != ".csv":
            text = None
            rows = read_spec_file(path)
        else:
            text = spec_file.read_text(path)
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except SpecError as exc:
        raise SpecError(source, [f"{where}: {entry.matrix}: {p.removeprefix('case: ')}"
                                 for p in exc.problems]) from None
    except (OSError, spec_file.SpecFileError, csv.Error) as exc:
        raise SpecError(source, [f"{where}: {entry.matrix}: cannot read it: {exc}"]) from None
    if text is not None:  # a CSV: an empty cell sets nothing; a cell without a column is an error
        for n, row in enumerate(rows, 1):
            if None in row:
                raise SpecError(source, [f"{where}: {entry.matrix} row {n}: more cells than columns"])
        rows = [{k.strip(): v for k, v in row.items() if k and v not in (None, "")} for row in rows]
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_CASES:
        raise SpecError(source, [f"{where}: {entry.matrix} must hold a list of 1 to {MAX_CASES} rows"])
    return rows, f"{where} ({entry.matrix})"


def matrix_rows(entry: MatrixCase, folder: Path, source: str, index: int) -> list[MatrixRow]:
    """The rows of a matrix entry, each with its id (its ``id``, else its values joined, slugged and capped) and
    tags; SpecError naming the row for a bad one, or two rows with one id."""
    rows, where = _raw_rows(entry, folder, source, index)
    found: list[MatrixRow] = []
    problems: list[str] = []
    for n, row in enumerate(rows, 1):
        at = f"{where} row {n}"
        if not isinstance(row, dict) or not row:
            problems.append(f"{at}: a row is a mapping of variable names to values")
            continue
        bad = [k for k, v in row.items() if not isinstance(k, str)
               or (k != "tags" and not isinstance(v, (str, int, float, bool)))]
        if bad:
            problems.append(f"{at}: field {bad[0]!r}: a value is a string, number or boolean")
            continue
        tags = row.get("tags", [])
        tags = [t for t in re.split(r"[;,\s]+", tags) if t] if isinstance(tags, str) else tags
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            problems.append(f"{at}: field 'tags': a list of tags (or, in a CSV, tags separated by spaces)")
            continue
        values = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in row.items() if k not in ROW_KEYS}
        given = str(row["id"]).strip() if "id" in row else ""
        row_id = given[:ROW_ID_MAX] or slug("-".join(values.values()))[:ROW_ID_MAX].strip("-") or str(n)
        if any(r.id == row_id for r in found):
            problems.append(f"{at}: row id {row_id!r} is also another row's (give each row an 'id')")
        found.append(MatrixRow(row_id, values, tags, at))
    if problems:
        raise SpecError(source, problems)
    return found


def _declared(file: Path) -> set[str]:
    raw = read_spec_file(file)
    declared = raw.get("variables") if isinstance(raw, dict) else None
    return set(declared) if isinstance(declared, dict) else set()


def _case_runs(spec: SuiteSpec, folder: Path, source: str, strict: bool
               ) -> list[tuple[Path, MatrixRow | None]]:
    """Every case run the suite names, in order: each plain case once, each matrix case once per row."""
    runs: list[tuple[Path, MatrixRow | None]] = [(f, None) for f in case_files(spec, folder, source, strict)]
    problems: list[str] = []
    for index, entry in enumerate(spec.cases):
        if isinstance(entry, str):
            continue
        file = folder / entry.path.replace("\\", "/")
        if not file.is_file() or not file.resolve().is_relative_to(folder.resolve()):
            problems.append(f"cases[{index}].path: {entry.path!r} is no case file under {folder}")
            continue
        try:
            runs += [(file, row) for row in matrix_rows(entry, folder, source, index)]
        except SpecError as exc:
            problems += exc.problems
        if len(runs) > MAX_CASES:
            raise SpecError(source, [f"cases: more than {MAX_CASES} case runs (matrix rows included); split the suite"])
    if problems:
        raise SpecError(source, problems)
    return runs


def _load_run(file: Path, row: MatrixRow | None, spec: SuiteSpec, root: Path | None
              ) -> tuple[SuiteCase, list[str], set[str]]:
    """One case run validated: the case (renamed `<case> [<row id>]` for a row), its tags (a row's added) and
    the variables it declares; SpecError naming the file (and the row)."""
    names = _declared(file)
    variables = {k: str(v) for k, v in spec.variables.items() if k in names}
    if row is not None:
        unknown = sorted(set(row.values) - names)
        if unknown:
            raise SpecError(row.where, [f"field {unknown[0]!r}: not a variable of {file} (it declares: "
                                        f"{', '.join(sorted(names)) or 'none'})"])
        variables |= row.values
    try:
        case, _ = load_spec(file, variables, root)
    except SpecError as exc:
        if row is None:
            raise
        raise SpecError(f"{row.where} [{row.id}]: {exc.source}", exc.problems) from None
    if row is None:
        return SuiteCase(file, case, variables), list(case.tags), names
    case = case.model_copy(update={"case": f"{case.case} [{row.id}]"})
    return SuiteCase(file, case, variables, row.id), [*case.tags, *row.tags], names


def _only(cases: list[SuiteCase], only: list[str], source: str) -> tuple[list[SuiteCase], list[SuiteCase]]:
    """The cases whose name (a row's with its id) is one of ``only`` or matches it as a glob, and the others;
    SpecError for a name that matches none."""
    def hit(name: str, pattern: str) -> bool:
        return name == pattern or (glob.has_magic(pattern) and fnmatch.fnmatchcase(name, pattern))

    missing = [p for p in only if not any(hit(c.name, p) for c in cases)]
    if missing:
        raise SpecError(source, [f"--only {p!r}: no case of the suite has this name now (its cases: "
                                 f"{', '.join(repr(c.name) for c in cases)[:1500]})" for p in missing])
    return ([c for c in cases if any(hit(c.name, p) for p in only)],
            [c for c in cases if not any(hit(c.name, p) for p in only)])


def load_suite(path: str | Path, tags: list[str] | None = None, overrides: dict[str, str] | None = None,
               max_parallel: int | None = None, files_root: str | Path | None = None,
               only: list[str] | None = None) -> SuitePlan:
    """Read a suite (folder or file) and validate every case (and every matrix row) it selects; SpecError naming
    every invalid case and row.

    ``tags`` (the CLI's ``--tag``) replace the suite's; ``overrides`` (``--var``) override its variables; each case
    gets the variables it declares (a matrix row's values over them); ``files_root`` (``--files-root``) replaces the
    suite file's; ``only`` (``--only``, ``--rerun-failed``) keeps the cases of these names. Nothing runs here."""
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
    runs = _case_runs(spec, folder, str(path), strict=not path.is_dir())
    cases: list[SuiteCase] = []
    skipped: list[Path] = []
    problems: list[str] = []
    wanted = set(spec.tags)
    declared_anywhere: set[str] = set()
    for file, row in runs:
        try:
            case, case_tags, names = _load_run(file, row, spec, root)
        except SpecError as exc:
            problems += [f"{exc.source}: {p}" for p in exc.problems]
            continue
        declared_anywhere |= names
        if wanted and not wanted & set(case_tags):
            skipped.append(Path(f"{file} [{row.id}]") if row is not None else file)
            continue
        cases.append(case)
    problems += [f"variables: {name!r} is declared by no case of the suite (a typo?)"
                 for name in sorted(set(spec.variables) - declared_anywhere)]
    if problems:
        raise SpecError(str(path), problems)
    first: dict[str, Path] = {}
    for c in cases:
        if c.name in first:
            problems.append(f"{c.path}: case name {c.name!r} is also the name of {first[c.name]}; "
                            "a suite's cases need different names (their evidence and artifacts are by name)")
        first.setdefault(c.name, c.path)
    if problems:
        raise SpecError(str(path), problems)
    if only and cases:
        cases, left_out = _only(cases, only, str(path))
        skipped += [Path(f"{c.path} [{c.row}]") if c.row else c.path for c in left_out]
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
