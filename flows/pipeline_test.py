"""The pipeline-test flow, and its command line.

    python -m flows.pipeline_test SPEC.yaml [--var name=value ...]   run a case (exit 0 passed, 1 failed,
                                                                     2 invalid spec: nothing touched AWS)
    python -m flows.pipeline_test SPEC.yaml --evidence-dir DIR       put the evidence pack in DIR
    python -m flows.pipeline_test SPEC.yaml --validate               only validate
    python -m flows.pipeline_test --schema                           print the spec's JSON Schema
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed

from prefect.artifacts import create_link_artifact
from pydantic import ValidationError

from flows import evidence, evidence_pack
from flows.engine import LIVE, install_redaction, remove_redaction, render_case, run_cleanup, run_steps, undo_hook, undo_now
from flows.notify import NotifySettings, notify as send_notice
from flows.results import CaseFailed, CaseResult, StepResult
from flows.spec import CaseSpec, SpecError, describe, iter_steps, load_spec, parse_spec, read_spec_file, slug
from flows.templating import builtin_values, render, resolve_variables
from tasks.aws import ClientFactory
from tasks.aws import is_real_aws
from tasks.base import StepContext, UndoLog
from tasks.polling import clear_stop, request_stop
from tasks.secrets import redact, redact_json


def _run_name() -> str:
    """Flow run name: the case's slug and the start time, so runs of a case line up in the UI."""
    params = flow_run.parameters or {}
    spec = params.get("spec")
    name = "case"
    try:
        if isinstance(spec, CaseSpec):
            name = spec.case
        elif isinstance(spec, dict):
            name = str(spec.get("case", name))
        elif spec:
            raw = read_spec_file(Path(spec))
            name = str(raw.get("case", name)) if isinstance(raw, dict) else name
    except Exception:
        pass
    return f"{slug(name) or 'case'}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def resolve_spec(spec: str | Path | CaseSpec | dict[str, Any], variables: dict[str, str] | None,
                 base_dir: str | Path | None, files_root: str | Path | None = None) -> tuple[CaseSpec, Path]:
    """Accept a spec as a file path, a dict or a model; validate it in full; return it and its folder."""
    if isinstance(spec, (str, Path)):
        return load_spec(spec, variables, files_root)
    folder = Path(base_dir) if base_dir else Path.cwd()
    raw = spec.model_dump(mode="python", exclude_unset=True) if isinstance(spec, CaseSpec) else spec
    return parse_spec(raw, "<spec>", folder, variables, files_root), folder


def _ui_url() -> str | None:
    """The flow run's page in the Prefect UI, when a UI URL is configured (not with a temporary server)."""
    from prefect.utilities.urls import url_for

    url = url_for("flow-run", obj_id=flow_run.id) if flow_run.id else None
    return url if url and url.startswith("http") else None


@flow(name="pipeline-test", flow_run_name=_run_name, validate_parameters=False, log_prints=False,
      on_crashed=[undo_hook], on_cancellation=[undo_hook])
def pipeline_test(
    spec: str | CaseSpec,
    variables: dict[str, str] | None = None,
    base_dir: str | None = None,
    evidence_dir: str | None = None,
    write_evidence: bool = True,
    notify: dict[str, Any] | None = None,
    files_root: str | None = None,
) -> CaseResult:
    """Run one ingestion test case (a spec file path, or a spec model) and leave its evidence.

    ``variables`` override the case's declared variables; ``base_dir`` is where a spec given as a model finds
    its local files. The evidence pack goes to ``evidence_dir`` (default: ``evidence/<case>/<time>-<run id>/``
    under the working directory) unless ``write_evidence`` is false. ``notify`` overrides the case's Slack
    notice settings (e.g. per deployment). Local files the steps name must lie under the spec's folder or
    ``files_root``. The flow run fails when the case fails; its result is a
    ``CaseResult`` either way.
    """
    logger = get_run_logger()
    clear_stop()
    case, spec_dir = resolve_spec(spec, variables, base_dir, files_root)
    try:
        notice = NotifySettings.model_validate(notify) if notify is not None else case.notify
    except ValidationError as exc:
        raise SpecError("notify", [f"notify: field {'.'.join(map(str, e['loc'])) or '(top level)'!r}: {e['msg']}"
                                   for e in exc.errors(include_url=False)]) from None
    spec_path = Path(spec) if isinstance(spec, (str, Path)) else None
    started = datetime.now(timezone.utc)
    run_id = str(flow_run.id or "local")
    values = resolve_variables(case.variables, builtin_values(case.case, run_id, started, case.timezone))
    rendered = render_case(case, values)
    secrets = tuple(dict.fromkeys(s for p in iter_steps(rendered) for s in p.step.secrets() if s))
    redactor = install_redaction(secrets)
    steps: list[StepResult] = []
    try:
        guard = [f"{describe(p)}: {m}" for p in iter_steps(rendered) for m in p.step.case_checks(case)]
        if guard:  # the guard rails again, with the run's real values
            raise SpecError("<spec>", guard)
        logger.info("Case %r: %d step(s), run date %s", case.case, len(case.steps), values["run_date"])
        ctx = StepContext(clients=ClientFactory(case.aws.target()), case_name=case.case, run_id=run_id, label="",
                          spec_dir=spec_dir, undo=UndoLog(), render=lambda text: render(text, values), logger=logger,
                          secrets=secrets)
        LIVE[run_id] = ctx
        try:
            run_steps(rendered, ctx, steps)
            cleanup = run_cleanup(ctx)
        except BaseException as exc:
            # cancelled (SIGTERM), interrupted or crashed: stop the waits of running steps, undo at once,
            # leave the evidence of what was done, then let Prefect record the end
            request_stop()
            undone = undo_now(ctx, logger)
            stopped = StepResult(number="stop", label="run stopped", kind="stop", status="error",
                                 error=f"the run was stopped ({type(exc).__name__}) before the case ended",
                                 error_code=type(exc).__name__)
            partial = _case_result(case, run_id, started, values, [*steps, stopped, *([undone] if undone else [])],
                                   secrets)
            if write_evidence:
                _write_pack(partial, case, spec_path, evidence_dir, secrets, ctx, logger, upload=False)
            if notice is not None:
                send_notice(partial, notice, ui_url=partial.ui_url)
            raise
        LIVE.pop(run_id, None)
        if cleanup is not None:
            steps.append(cleanup)
        result = _case_result(case, run_id, started, values, steps, secrets)
        evidence.publish_case(result)
        if write_evidence:
            _write_pack(result, case, spec_path, evidence_dir, secrets, ctx, logger)
    finally:
        remove_redaction(redactor)
    if notice is not None:
        send_notice(result, notice, ui_url=result.ui_url)  # logs a Slack failure, never changes the result
    if result.passed:
        logger.info("Case %r passed (%d steps)", case.case, len(steps))
        return result
    failure = CaseFailed(result)
    return Failed(message=str(failure), data=failure)  # type: ignore[return-value]


def _case_result(case: CaseSpec, run_id: str, started: datetime, values: dict[str, Any], steps: list[Any],
                 secrets: tuple[str, ...]) -> CaseResult:
    ended = datetime.now(timezone.utc)
    return CaseResult(
        case=case.case, description=case.description,
        status="passed" if all(s.ok for s in steps) else "failed",
        flow_run_id=run_id, ui_url=_ui_url(), started_at=started, ended_at=ended,
        duration_s=round((ended - started).total_seconds(), 3),
        variables=redact_json({"run_date": values["run_date"], **{k: values[k] for k in case.variables}}, secrets),
        steps=steps,
    )


def _write_pack(result: CaseResult, case: CaseSpec, spec_path: Path | None, evidence_dir: str | None,
                secrets: tuple[str, ...], ctx: StepContext, logger: Any, upload: bool = True) -> None:
    """Write the evidence pack (and upload it when the case asks); its folder goes in ``result.evidence_dir``.
    A failure here is logged, never fatal."""
    try:
        folder = Path(evidence_dir) if evidence_dir else evidence_pack.default_pack_dir(Path("evidence"), result)
        evidence_pack.write_pack(result, case, folder, spec_path=spec_path, secrets=secrets)
        digest = evidence_pack.manifest_sha256(folder)
        result.evidence_dir = str(folder.resolve())
        logger.info("Evidence pack: %s (manifest sha256 %s)", result.evidence_dir, digest)
        if upload and case.evidence is not None:
            settings = case.evidence
            prefix = evidence_pack.pack_prefix(settings.prefix, result)
            evidence_pack.upload_pack(ctx.clients.client("s3"), folder, settings.bucket, prefix, sse=settings.sse,
                                      kms_key_id=settings.kms_key_id)
            endpoint = ctx.clients.endpoint_url("s3")
            url = (evidence_pack.console_url(settings.bucket, prefix, ctx.clients.region) if is_real_aws(endpoint)
                   else f"{endpoint.rstrip('/')}/{settings.bucket}/{prefix}")
            create_link_artifact(link=url, link_text=f"s3://{settings.bucket}/{prefix}",
                                 key=f"{evidence.case_key(result.case)}-evidence"[:100],
                                 description=f"Evidence pack (manifest sha256 {digest})")
            logger.info("Evidence pack uploaded to s3://%s/%s", settings.bucket, prefix)
    except Exception as exc:
        logger.error("Could not write or upload the evidence pack: %s", redact(str(exc), secrets))


# -------------------------------------------------------------------------------------------------- the CLI
STATUS_TEXT = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}


def format_result(result: CaseResult, with_link: bool = True) -> str:
    """A short plain-ASCII summary (Windows consoles may not print emoji)."""
    lines = [f"Case '{result.case}' {'PASSED' if result.passed else 'FAILED'} in {result.duration_s:.1f} s"]
    width = max((len(s.label) for s in result.steps), default=10)
    for s in result.steps:
        detail = s.error if s.error else s.summary
        lines.append(f"  {STATUS_TEXT[s.status]:<5} {s.number:<5} {s.label:<{width}}  {s.duration_s:6.1f} s  {detail}")
    if with_link and result.ui_url:
        lines.append(f"Evidence: {result.ui_url} (artifacts: {evidence.case_key(result.case)})")
    if result.evidence_dir:
        lines.append(f"Evidence pack: {result.evidence_dir}")
    return "\n".join(lines)


def parse_vars(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SpecError("--var", [f"--var {pair!r}: expected name=value"])
        out[name.strip()] = value
    return out


def result_of(state: Any) -> CaseResult | None:
    """The CaseResult carried by a finished flow run's state (passed or failed), if any."""
    value = state.result(raise_on_failure=False)
    if isinstance(value, CaseResult):
        return value
    if isinstance(value, CaseFailed):
        return value.result
    return None


def check_evidence_dir(folder: Path, spec: str) -> None:
    """--evidence-dir must be a new or empty folder: found before the run, not after it."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "is not a folder" if not folder.is_dir() else "is not empty"
        raise SpecError(spec, [f"--evidence-dir {folder} {what}; give a new or empty folder"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline_test", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", help="the test case: a YAML or JSON spec file")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="override a variable declared in the case (repeatable)")
    parser.add_argument("--validate", action="store_true", help="validate the spec and exit")
    parser.add_argument("--schema", action="store_true", help="print the spec's JSON Schema and exit")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--evidence-dir", metavar="DIR", help="write the evidence pack to this (new or empty) "
                        "folder; default: evidence/<case>/<time>-<run id>/")
    parser.add_argument("--no-evidence", action="store_true", help="do not write an evidence pack")
    parser.add_argument("--files-root", metavar="DIR", help="local files named by steps may also lie under DIR "
                        "(default: only under the spec's folder)")
    args = parser.parse_args(argv)
    if args.schema:
        from flows.spec import json_schema

        print(json.dumps(json_schema(), indent=2))
        return 0
    if not args.spec:
        parser.error("a spec file is required")
    try:
        overrides = parse_vars(args.var)
        case, _ = load_spec(args.spec, overrides, args.files_root)
        if args.evidence_dir and not args.no_evidence:
            check_evidence_dir(Path(args.evidence_dir), args.spec)
    except SpecError as exc:
        print(str(exc), file=sys.stderr)
        print("Nothing was run: no AWS call was made.", file=sys.stderr)
        return 2
    if args.validate:
        print(f"Spec {args.spec} is valid: case '{case.case}', {len(case.steps)} step(s).")
        return 0
    state = pipeline_test(spec=str(args.spec), variables=overrides or None, evidence_dir=args.evidence_dir,
                          write_evidence=not args.no_evidence, files_root=args.files_root, return_state=True)
    result = result_of(state)
    if result is None:
        print(f"The flow run ended {state.type.value}: {state.message}", file=sys.stderr)
        return 1
    print(result.model_dump_json(indent=2) if args.json else format_result(result))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
