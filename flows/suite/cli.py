"""The command line of a suite (a folder of cases or a suite file), called by flows/cli.py: validate every case
first, run with progress shown, print the summary; --rerun-failed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from flows.evidence.pack.files import pack_parent
from flows.evidence.results import carried_result
from flows.run.command import print_result
from flows.run.recover import CouldNotRun
from flows.suite.flow import pipeline_test_suite, suite_key
from flows.suite.pack import (
    SuiteFailed,
    SuiteResult,
)
from flows.suite.progress import PROGRESS, Progress
from flows.suite.rerun import Rerun
from flows.suite.spec import load_suite, suite_name
from tasks.kit.status import short


def format_suite(result: SuiteResult, with_link: bool = True) -> str:
    """A short summary of a suite run (see ``flows.cli.format_result``)."""
    width = max((len(c.case) for c in result.cases), default=10)
    lines = [f"Suite '{result.suite}' {result.status.upper()} in {result.duration_s:.1f} s: {result.counts_text()}"]
    mark = {c.case: short("warned") if c.warnings and c.status == "passed" else short(c.status) for c in result.cases}
    lines += [f"  {mark[c.case]:<7} {c.case:<{width}}  {c.duration_s:6.1f} s  {c.why}" for c in result.cases]
    if result.rerun_of:
        lines.append(f"A re-run of the failed cases of {result.rerun_of.pack} "
                     f"(manifest sha256 {result.rerun_of.manifest_sha256})")
    if with_link and result.ui_url:
        lines.append(f"Evidence: {result.ui_url} (artifacts: {suite_key(result.suite)})")
    if result.evidence_dir:
        lines.append(f"Suite evidence pack: {result.evidence_dir}")
    if result.evidence_error:
        lines.append(f"NO EVIDENCE: {result.evidence_error}")
    return "\n".join(lines)


def suite_result_of(state: Any) -> SuiteResult | None:
    """The SuiteResult carried by a finished suite flow run's state, if any."""
    return carried_result(state, SuiteResult, SuiteFailed)


def exit_code(result: SuiteResult) -> int:
    """0 every case passed; 1 a case failed; 3 no case failed but one could not run; 4 every case passed but an
    evidence pack (the suite's or a case's) could not be written."""
    from flows.run.command import EXIT_COULD_NOT_RUN, EXIT_FAILED, EXIT_NO_EVIDENCE, EXIT_PASSED

    if result.count("failed"):
        return EXIT_FAILED
    if result.count("not run"):
        return EXIT_COULD_NOT_RUN
    return EXIT_NO_EVIDENCE if result.evidence_error else EXIT_PASSED


def rerun_selection(args: Any) -> Rerun | None:
    """With ``--rerun-failed PACK``: what the pack says failed (SpecError when it is no intact suite pack); the
    suite file, when not given, is the one the pack names."""
    from flows.spec.load import SpecError
    from flows.suite.rerun import read_rerun

    if not args.rerun_failed:
        return None
    if args.only:
        raise SpecError("--only", ["--only and --rerun-failed go separately (the pack names the cases to re-run)"])
    rerun = read_rerun(Path(args.rerun_failed))
    if not args.spec:
        if not rerun.source:
            raise SpecError(f"--rerun-failed {args.rerun_failed}", ["the pack does not name its suite file: give "
                                                                     "it (python -m flows.pipeline_test SUITE "
                                                                     "--rerun-failed PACK)"])
        args.spec = rerun.source
    return rerun


def run_suite_cli(args: Any, overrides: dict[str, str]) -> int:
    """The CLI for a folder or suite file (called by ``flows.cli.main``): validate every case (exit 2
    naming file, step and field; nothing runs), then run the suite with its progress shown."""
    from flows.run.command import (
        EXIT_COULD_NOT_RUN,
        EXIT_PASSED,
        check_evidence_dir,
        guarded,
        invalid,
        on_temporary_server,
    )
    from flows.spec.load import SpecError
    from flows.suite.progress import shown

    try:
        rerun = rerun_selection(args)
        if rerun is not None and not rerun.link.cases:
            print(f"Nothing to re-run: every case of suite '{rerun.suite}' passed in {args.rerun_failed}.")
            return EXIT_PASSED
        if rerun is not None and suite_name(Path(args.spec)) != rerun.suite:
            raise SpecError(str(args.spec), [f"--rerun-failed {args.rerun_failed} is a pack of suite "
                                             f"'{rerun.suite}', not of '{suite_name(Path(args.spec))}'"])
        only = rerun.link.cases if rerun is not None else args.only or None
        plan = load_suite(args.spec, args.tag or None, overrides, args.max_parallel, args.files_root, only)
        check_evidence_dir(Path(args.evidence_dir) if args.evidence_dir else None, args.spec,
                           pack_parent(plan.spec.suite, suite=True), writable=not args.validate)
    except SpecError as exc:
        return invalid(exc, "no case started, no AWS call was made")
    except CouldNotRun as exc:
        print(f"Could not run: {exc}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    if args.validate:
        print(f"Suite {args.spec} is valid: suite '{plan.spec.suite}', {len(plan.cases)} case(s)"
              + (f" ({len(plan.skipped)} left out)" if plan.skipped else "")
              + (f"; local files may also lie under {plan.files_root}" if plan.files_root else "") + ".")
        return EXIT_PASSED

    temporary = on_temporary_server()  # links to a temporary server are dead once the run ends

    def run() -> int:
        progress = Progress()
        token = PROGRESS.set(progress)
        try:
            with shown(progress):
                state = pipeline_test_suite(suite=str(args.spec), tags=args.tag or None,
                                            variables={k: SecretStr(v) for k, v in overrides.items()} or None,
                                            max_parallel=args.max_parallel, evidence_dir=args.evidence_dir,
                                            files_root=args.files_root, only=only,
                                            rerun_of=rerun.link.model_dump() if rerun else None,
                                            return_state=True)
        finally:
            PROGRESS.reset(token)
        result = suite_result_of(state)
        if result is None:
            print(f"Could not run: the suite's flow run ended {state.type.value}: {state.message}", file=sys.stderr)
            return EXIT_COULD_NOT_RUN
        print_result(result, format_suite(result, with_link=not temporary), args.json, temporary)
        return exit_code(result)

    return guarded(run)
