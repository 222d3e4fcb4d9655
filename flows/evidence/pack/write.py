"""Writing an evidence pack: report.json, report.md, the manifest, and :func:`write_pack` (which also writes
report.html from html.py and junit.xml from junit.py). Verifying and uploading a pack, and its CLI, are in
verify.py.

No secret may reach the pack: step results are masked at the source, and :func:`write_pack` masks the run's
known secrets (``secrets``, the run's registry) in the *values* of the result and report before any file is
built (never in a file's finished text, so no file's syntax can break): long secrets inside any string value,
and, in the spec's copy, its validated form and the variables, any value that *is* a secret. The spec's copy
is masked at the YAML value level (parsed, masked, dumped). Names, keys and schema strings are never masked.

The pack is private by default: folders 0700, files 0600, and on Windows an owner-only access list (set
``PIPELINE_TEST_PACK_PRIVATE=false``, or pass ``private=False``, for the process's usual permissions). It is
written whole or not at all, every file in binary mode (the same bytes on every OS): see
:mod:`flows.evidence.pack.folder`.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from flows.evidence.markdown import case_markdown, step_markdown
from flows.evidence.pack import folder as pack_folder
from flows.evidence.pack.files import (
    JUNIT_XML,
    MANIFEST,
    MANIFEST_SCHEMA,
    PRIVATE_ENV,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_MD,
    PackItem,
    _case_slug,
    hashed_items,
    pack_files,
    sha256_bytes,
    sha256_file,
)
from flows.evidence.pack.html import report_html
from flows.evidence.pack.junit import junit_xml
from flows.evidence.report import (
    SCHEMA_VERSION,
    CaseName,
    CaseReport,
    Counts,
    FirstFailure,
    Generator,
    HashedItemRecord,
    RunRecord,
    SpecRecord,
    iso_utc,
)
from flows.evidence.results import CaseResult, StepResult
from tasks.kit import markdown as md
from tasks.kit.secrets import NAMES, mask_document_text, redact, redact_json
from tasks.kit.status import STEP_STATUSES

if TYPE_CHECKING:
    from flows.spec.model import CaseSpec


# ---------------------------------------------------------------------------------------------- redaction
def redact_result(result: CaseResult, secrets: Sequence[str]) -> CaseResult:
    """A copy of the result with known secrets masked in its string values (names kept; the variables, as
    values of the spec, also when one *is* a short secret)."""
    data = result.model_dump(mode="json", fallback=str)
    if not secrets:
        return CaseResult.model_validate(data)
    data = redact_json(data, secrets, keep=NAMES)
    data["variables"] = redact_json(data.get("variables") or {}, secrets, exact=True)
    return CaseResult.model_validate(data)


def _redact_item(item: PackItem, secrets: Sequence[str]) -> PackItem:
    return PackItem(**redact_json(item.to_json(), secrets, keep=NAMES)) if secrets else item


# ------------------------------------------------------------------------------------------------- report.json
def _generator_version() -> str:
    try:
        from importlib.metadata import version

        return version("pipeline-test")
    except Exception:  # running from a checkout that was never installed
        return "unknown"


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def _counts(result: CaseResult) -> Counts:
    counts = {"total": len(result.steps), **{status: 0 for status in STEP_STATUSES}}
    for step in result.steps:
        counts[step.status] += 1
    return Counts.model_validate(counts)


def spec_copy_name(spec_path: str | Path | None) -> str:
    """The name of the spec's copy in the pack: spec.json for a .json spec, else spec.yaml."""
    return "spec.json" if spec_path and str(spec_path).lower().endswith(".json") else "spec.yaml"


def build_report(result: CaseResult, case: CaseSpec | None, *, spec_text: str | None, spec_path: str | None,
                 items: Sequence[PackItem], generated_at: datetime, secrets: Sequence[str] = ()) -> CaseReport:
    """The content of report.json (see flows/evidence/pack/report.schema.json); ``result`` is already redacted.

    The spec's hashes are of what the pack shows (the copy, ``spec.validated``), so a reviewer can recompute
    them; without secrets in the spec that is the file itself. Hashing the unmasked text instead would let
    anyone confirm a guess of a weak secret offline.
    """
    validated = case.model_dump(mode="json", exclude_unset=True, fallback=str) if case is not None else None
    validated = redact_json(validated, secrets, keep=NAMES, exact=True) if validated is not None else None
    shown_text = (mask_document_text(spec_text, secrets, spec_copy_name(spec_path) == "spec.json")
                  if spec_text is not None else None)
    failure = result.first_failure
    return CaseReport(
        generated_at=generated_at.replace(microsecond=0),
        generator=Generator(version=_generator_version()),
        case=CaseName(name=result.case, slug=_case_slug(result.case), description=result.description),
        spec=SpecRecord(
            source=spec_path,
            file=spec_copy_name(spec_path) if shown_text is not None else None,
            sha256=sha256_bytes(shown_text.encode("utf-8")) if shown_text is not None else None,
            case_sha256=sha256_bytes(_canonical(validated)) if validated is not None else None,
            redacted=shown_text is not None and shown_text != spec_text,
            validated=validated,
        ),
        run=RunRecord(
            flow_run_id=result.flow_run_id,
            ui_url=result.ui_url,
            started_at=result.started_at.replace(microsecond=0),
            ended_at=result.ended_at.replace(microsecond=0),
            duration_s=result.duration_s,
            locks=result.locks,
            aws=redact_json(case.aws.model_dump(mode="json", exclude_none=True), secrets, keep=NAMES) if case else {},
        ),
        audit=result.audit,
        notice=result.notice,
        status=result.status,
        verdict=result.verdict,
        warnings=result.warnings,
        counts=_counts(result),
        first_failure=None if failure is None else FirstFailure(
            number=failure.number, label=failure.label, status=failure.status,  # type: ignore[arg-type]
            error=failure.error, error_code=failure.error_code,
        ),
        variables=result.variables,
        steps=[s.report() for s in result.steps],
        inputs=[HashedItemRecord.model_validate(i.to_json()) for i in items if i.kind == "input"],
        query_results=[HashedItemRecord.model_validate(i.to_json()) for i in items if i.kind == "query_result"],
    )


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"


# --------------------------------------------------------------------------------------------------- report.md


def _items_markdown(items: Sequence[PackItem]) -> list[str]:
    if not items:
        return []
    rows = []
    for i in items:
        if i.kind == "input":
            what = md.Md("input" + (f" {md.cell(md.code(i.local_path))}" if i.local_path else ""))
        else:
            what = md.Md("query result" + (f" {md.cell(md.code(i.query_id))}" if i.query_id else ""))
        rows.append([f"{i.step} {i.label}", what, md.code(i.location), "–" if i.size is None else f"{i.size} B",
                     md.code(i.sha256)])
    return ["## Files and results hashed by the run", "",
            md.table(["step", "what", "location", "size", "SHA-256"], rows), ""]


def _step_section_md(step: StepResult) -> str:
    """A step's evidence as in the UI, plus its details for passed steps (the UI shows those in its own body)."""
    text = step_markdown(step, None).rstrip("\n") + "\n"
    if step.details and not step.error:
        details = json.dumps(step.details, indent=2, ensure_ascii=False, default=str)
        text += "\n".join(["", "Details:", "", md.code_block(details, "json"), ""])
    return text


def report_markdown(result: CaseResult, report: CaseReport, items: Sequence[PackItem]) -> str:
    """report.md: the case report of the UI, the spec's hashes, hashed inputs, and every step's evidence."""
    spec = report.spec
    facts = [("source", md.code(spec.source or "(given as a model)")),
             ("SHA-256 of the file", md.code(spec.sha256 or "–")),
             ("SHA-256 of the validated case", md.code(spec.case_sha256 or "–"))]
    lines = [case_markdown(result).rstrip("\n"), "", "## Spec", "", md.table(["", ""], facts), ""]
    lines += _items_markdown(items)
    lines += [_step_section_md(s) for s in result.steps]
    lines += ["---", "", f"Written by pipeline-test {md.text(report.generator.version)} at "
              f"{iso_utc(report.generated_at)}. Check this pack with `python -m flows.pipeline_test verify <this "
              "folder>`.", ""]
    return "\n".join(lines)



# ---------------------------------------------------------------------------------------------- manifest.json
def build_manifest(folder: Path, result: CaseResult, report: CaseReport, items: Sequence[PackItem]
                   ) -> dict[str, Any]:
    """manifest.json: SHA-256 and size of every file of the pack (itself excepted) and the recorded hashes."""
    files = [{"path": name, "size": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
             for name in pack_files(folder) if name != MANIFEST]
    return {
        "schema": MANIFEST_SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "algorithm": "sha256",
        "created_at": iso_utc(report.generated_at),
        "case": result.case,
        "flow_run_id": result.flow_run_id,
        "status": result.status,
        "spec": {"source": report.spec.source, "sha256": report.spec.sha256, "case_sha256": report.spec.case_sha256},
        "files": files,
        "inputs": [i.to_json() for i in items if i.kind == "input"],
        "query_results": [i.to_json() for i in items if i.kind == "query_result"],
    }


# ------------------------------------------------------------------------------------------------- write_pack
#: the folder of the pack holding the files steps wrote (``steps/<step number>/<name>``)
STEP_FILES_DIR = "steps"


def _copy_step_files(result: CaseResult, folder: Path, secrets: Sequence[str], private: bool) -> None:
    """Copy the files the steps wrote (e.g. a reconciliation's differences) into ``steps/<number>/``, line by line
    with the run's secrets masked; a file that is gone (or a name that would leave its folder) is skipped."""
    for step in result.steps:
        for item in step.files:
            parts = Path(item.name).parts
            source = Path(item.local_path)
            if not parts or ".." in parts or Path(item.name).is_absolute() or not source.is_file():
                continue
            target = folder / STEP_FILES_DIR / slug_path(step.number) / Path(*parts)
            for parent in reversed([p for p in target.parents if not p.exists()]):
                parent.mkdir(mode=0o700 if private else 0o777)
            # binary: its line ends stay as the step wrote them, on every OS
            with open(source, encoding="utf-8", newline="") as src, pack_folder.open_for_write(target, private) as dst:
                for line in src:
                    dst.write((redact(line, secrets) if secrets else line).encode("utf-8"))


def slug_path(text: str) -> str:
    """A step number as one safe folder name."""
    return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in text).strip(".") or "step"


def _write_text(path: Path, text: str, private: bool = True) -> None:
    """Write the text as UTF-8 bytes, its LF line ends kept on every OS (binary mode: the hashes must not depend on
    the platform); a private file is created readable by its owner only (0600)."""
    pack_folder.write_bytes(path, text.encode("utf-8"), private)


def private_default() -> bool:
    """Whether packs are private unless said otherwise: yes, unless PIPELINE_TEST_PACK_PRIVATE is false/0/no."""
    return os.environ.get(PRIVATE_ENV, "").strip().lower() not in ("0", "false", "no", "off")


def write_pack(
    result: CaseResult,
    case: CaseSpec | None,
    folder: Path,
    *,
    spec_text: str | None = None,
    spec_path: str | Path | None = None,
    secrets: Iterable[str] = (),
    extra_items: Iterable[PackItem] = (),
    generated_at: datetime | None = None,
    private: bool | None = None,
    claim: pack_folder.PackClaim | None = None,
) -> Path:
    """Write the evidence pack of a finished run into ``folder`` (new or empty) and return the folder.

    ``case`` is the validated spec (None if the run had none); ``spec_text`` is the spec file's text as the
    run read it, best as ``path.read_bytes().decode("utf-8")`` so the copy and its hash match the file byte
    for byte (``spec_path`` is its path, for the record; the text is read from it when not given);
    ``secrets`` are the run's secret values (its registry), masked in the values every file is built from;
    ``extra_items`` are hashed inputs or query results beyond those in the steps' ``items``. ``private`` (default:
    :func:`private_default`) makes folders 0700 and files 0600 (on Windows, an owner-only access list).

    The pack is written whole or not at all: into ``claim``'s temporary folder (the run claimed ``folder`` before
    it changed anything; without a claim, ``folder`` is claimed here), the manifest last, then renamed into place.
    On any failure nothing is left (PackFolderError or OSError says why).
    """
    folder = Path(folder)
    known = [s for s in dict.fromkeys(secrets) if s]
    if spec_text is None and spec_path is not None and Path(spec_path).is_file():
        spec_text = Path(spec_path).read_bytes().decode("utf-8")  # bytes as they are: CRLF stays CRLF
    source = str(spec_path) if spec_path is not None else None
    clean = redact_result(result, known)
    items = [_redact_item(i, known) for i in [*hashed_items(result), *extra_items]]
    report = build_report(clean, case, spec_text=spec_text, spec_path=source, items=items,
                          generated_at=generated_at or datetime.now(timezone.utc), secrets=known)
    files = {
        REPORT_JSON: _json_text(report.to_json()),
        REPORT_MD: report_markdown(clean, report, items),
        REPORT_HTML: report_html(clean, report, items),
        JUNIT_XML: junit_xml(clean, report),
    }
    if spec_text is not None and report.spec.sha256 is not None and report.spec.file is not None:
        # the masking build_report did, which succeeded (it gave the copy's sha256)
        shown = mask_document_text(spec_text, known, report.spec.file == "spec.json")
        if shown is not None:
            files[report.spec.file] = shown
    private = private_default() if private is None else private
    taken = claim if claim is not None else pack_folder.claim(folder, private)
    try:
        staging = taken.staging
        for name, text in files.items():
            _write_text(staging / name, text, private)
        _copy_step_files(result, staging, known, private)
        _write_text(staging / MANIFEST, _json_text(build_manifest(staging, clean, report, items)), private)
        return taken.commit()
    except BaseException:
        taken.abandon()  # no half pack: whatever was written goes
        raise
